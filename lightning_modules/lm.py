"""ACiMLanguageModel: the language-modelling counterpart of :class:`ACiMClassifier`.

Batches are ``(tokens, next_tokens)`` blocks ``(B, T)`` (:class:`~lightning_modules.data.
TextDataModule`); the model returns logits ``(B, T, V)``. Every token position is one
next-token prediction: the loss is the mean cross-entropy per token, perplexity its
exponential, ``top1``/``top5`` the next-token accuracy. As in the classifier, sums are
torchmetrics objects synced across processes, and the sample index hook gets one index per
block (its dataset index), so noise depends on the block, not on the batch it lands in.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.aggregation import SumMetric

from .module import ACiMClassifier

__all__ = ["ACiMLanguageModel"]


class ACiMLanguageModel(ACiMClassifier):
    """Next-token prediction with a (converted) causal language model: train, validate, test.

    Takes :class:`ACiMClassifier`'s arguments (``num_classes`` is the vocabulary size). Logs
    ``train/loss``, ``train/acc`` and, per evaluation pass, ``<prefix>/loss`` (mean NLL per
    token, nats), ``<prefix>/ppl``, ``<prefix>/acc`` and ``<prefix>/acc_top5`` (next-token
    accuracy). After every evaluation epoch :attr:`results` holds ``ppl``, ``loss``, ``top1``,
    ``top5``, ``correct``, ``correct_top5``, ``num_tokens``, ``num_samples`` (blocks) and
    ``per_class`` (None: the classes are the vocabulary).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_metrics = MetricCollection(
            {k: SumMetric() for k in ("nll", "correct", "correct_top5", "tokens", "blocks")},
            compute_groups=False,
        ).set_dtype(torch.float64)

    def _flat(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = self(x)  # (B, T, V)
        return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        logits, targets = self._flat(x, y)
        loss = self.criterion(logits, targets)
        self.train_acc(logits, targets)
        n = targets.numel()
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/acc", self.train_acc, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    def _eval_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        if self.sample_index_hook is not None:
            self.sample_index_hook(self.model, self.batch_indices(batch_idx, len(y), y.device))
        logits, targets = self._flat(x, y)
        top = logits.topk(self.top_k, dim=1).indices
        m = self.eval_metrics
        m["nll"].update(F.cross_entropy(logits.double(), targets, reduction="sum"))
        m["correct"].update((top[:, 0] == targets).sum())
        m["correct_top5"].update((top == targets[:, None]).any(dim=1).sum())
        m["tokens"].update(torch.tensor(targets.numel(), device=logits.device))
        m["blocks"].update(torch.tensor(len(y), device=logits.device))

    def _finish_eval(self) -> None:
        values = self.eval_metrics.compute()  # all-reduced across processes
        n = int(values["tokens"])
        correct, correct5 = int(values["correct"]), int(values["correct_top5"])
        loss = float(values["nll"]) / n if n else float("nan")
        results = {
            "ppl": math.exp(loss) if n else float("nan"),
            "loss": loss,
            "top1": correct / n if n else 0.0,
            "top5": correct5 / n if n else 0.0,
            "correct": correct,
            "correct_top5": correct5,
            "num_tokens": n,
            "num_samples": int(values["blocks"]),
            "per_class": None,
        }
        self.eval_metrics.reset()
        self.results = results
        p = self.log_prefix
        self.log_dict(
            {
                f"{p}/acc": results["top1"],
                f"{p}/acc_top5": results["top5"],
                f"{p}/loss": results["loss"],
                f"{p}/ppl": results["ppl"],
            },
            prog_bar=True,
            logger=self.log_to_logger and self.logger is not None,
            sync_dist=True,
        )
