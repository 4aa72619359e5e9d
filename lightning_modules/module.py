"""ACiMClassifier: one LightningModule for QAT, noise-aware training (NAT) and simulation.

The module does not know about macros: the builder converts the model (``asim``) and sets the
ACiM mode (``train`` for QAT/NAT, ``inference`` or ``simulate`` for evaluation) before calling
``trainer.fit`` or ``trainer.validate``. Evaluation metrics are torchmetrics objects, synced
across processes when they are computed, so under DDP every sample counts once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.aggregation import CatMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["ACiMClassifier"]

OPTIMIZERS = ("sgd", "adam")


class ACiMClassifier(L.LightningModule):
    """Image classification with a (converted) model: train, validate, test.

    Logs ``train/loss``, ``train/acc`` and, per evaluation pass, ``<prefix>/loss``,
    ``<prefix>/acc`` (top-1) and ``<prefix>/acc_top5``. After every validation or test epoch,
    :attr:`results` holds the synced metrics: ``top1``, ``top5``, ``loss``, ``num_samples``,
    ``per_class`` (top-1 per class) and, with ``collect_predictions``, ``preds`` (argmax per
    sample in dataset order).

    Args:
        model: the network (float or ACiM-converted; the builder sets its ACiM mode).
        num_classes: classifier outputs.
        class_names: names for per-class results (default ``"0"``, ``"1"``, ...).
        model_name: registry name, recorded in the hyper-parameters.
        optimizer: ``"sgd"`` (momentum, weight decay; CNNs) or ``"adam"`` (ViTs; spec §9.5).
        lr: initial learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay (SGD; Adam uses none, as the reference).
        milestones: MultiStepLR milestones as fractions of ``trainer.max_epochs``.
        gamma: learning-rate factor at each milestone.
        label_smoothing: the reference's epsilon: target 1-eps for the true class and
            eps/(K-1) for the others.
        log_prefix: metric prefix of evaluation passes (``val``; ``float``/``inference``/``sim``
            in simulation runs).
        collect_predictions: keep per-sample predictions in :attr:`results`.
        log_to_logger: send evaluation metrics to the logger (else progress bar only; the
            simulation builder logs its own summary).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        class_names: Sequence[str] | None = None,
        model_name: str | None = None,
        optimizer: str = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        milestones: Sequence[float] = (0.6, 0.9),
        gamma: float = 0.1,
        label_smoothing: float = 0.0,
        log_prefix: str = "val",
        collect_predictions: bool = False,
        log_to_logger: bool = True,
    ):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optim.name={optimizer!r} is not valid; choose one of {', '.join(OPTIMIZERS)}"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"optim.label_smoothing={label_smoothing} must be in [0, 1)")
        if any(not 0.0 < m <= 1.0 for m in milestones):
            raise ValueError(
                f"optim.milestones={list(milestones)} must be fractions of max_epochs in (0, 1]"
            )
        class_names = (
            list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        )
        self.save_hyperparameters(
            ignore=["model", "class_names", "log_prefix", "collect_predictions", "log_to_logger"]
        )
        self.model = model
        self.class_names = class_names
        self.log_prefix = log_prefix
        self.collect_predictions = collect_predictions
        self.log_to_logger = log_to_logger
        # torch's label_smoothing s gives the true class 1-s+s/K; the reference's eps gives it
        # 1-eps and eps/(K-1) to each other class, i.e. s = eps*K/(K-1).
        smoothing = label_smoothing * num_classes / (num_classes - 1) if num_classes > 1 else 0.0
        self.criterion = nn.CrossEntropyLoss(label_smoothing=smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.eval_metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                "acc_top5": MulticlassAccuracy(
                    num_classes, top_k=min(5, num_classes), average="micro"
                ),
                "acc_class": MulticlassAccuracy(num_classes, top_k=1, average=None),
                "loss": MeanMetric(),
                "count": SumMetric(),
            },
            compute_groups=False,
        )
        self.preds = CatMetric()
        self.results: dict[str, Any] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _step(self, batch, stage: str) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = self.criterion(logits, y)
        if stage == "train":
            self.train_acc(logits, y)
            self.log(
                "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y)
            )
            self.log(
                "train/acc",
                self.train_acc,
                on_step=False,
                on_epoch=True,
                prog_bar=True,
                batch_size=len(y),
            )
            return loss
        m = self.eval_metrics
        for name in ("acc", "acc_top5", "acc_class"):
            m[name].update(logits, y)
        m["loss"].update(loss.detach(), weight=len(y))
        m["count"].update(torch.tensor(float(len(y)), device=logits.device))
        if self.collect_predictions:
            self.preds.update(logits.argmax(dim=1).to(torch.float32))
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "eval")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "eval")

    def on_validation_epoch_end(self) -> None:
        self._finish_eval()

    def on_test_epoch_end(self) -> None:
        self._finish_eval()

    def _finish_eval(self) -> None:
        """Compute the synced metrics, log the scalars, keep everything in ``results``."""
        values = self.eval_metrics.compute()  # all-reduced across processes
        n = int(round(float(values["count"])))

        def exact(acc: Tensor) -> float:  # correct/n in float64, not torchmetrics' float32
            return round(float(acc) * n) / n if n else 0.0

        results = {
            "top1": exact(values["acc"]),
            "top5": exact(values["acc_top5"]),
            "loss": float(values["loss"]),
            "num_samples": n,
            "per_class": [round(float(v), 6) for v in values["acc_class"]],
        }
        if self.collect_predictions:
            preds = self.preds.compute()  # gathered in rank order = dataset order
            results["preds"] = [int(p) for p in preds.reshape(-1).tolist()]
            self.preds.reset()
        self.eval_metrics.reset()
        self.results = results
        p = self.log_prefix
        # The values are already global; sync_dist only keeps Lightning's bookkeeping quiet.
        to_logger = self.log_to_logger and self.logger is not None
        self.log_dict(
            {
                f"{p}/acc": results["top1"],
                f"{p}/acc_top5": results["top5"],
                f"{p}/loss": results["loss"],
            },
            prog_bar=True,
            logger=to_logger,
            sync_dist=True,
        )

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(
                self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
        else:
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr)
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs not in (None, -1) else 1
        milestones = sorted({max(1, int(f * max_epochs)) for f in hp.milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=hp.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
