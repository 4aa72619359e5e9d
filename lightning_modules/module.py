"""ACiMClassifier: one LightningModule for QAT, noise-aware training (NAT) and simulation.

The module does not know about macros: the builder converts the model (``asim``) and sets the
ACiM mode (``train`` for QAT/NAT, ``inference`` or ``simulate`` for evaluation) before calling
``trainer.fit`` or ``trainer.validate``. Evaluation metrics are torchmetrics objects, synced
across processes when they are computed, so under DDP every sample counts once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.aggregation import CatMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["ACiMClassifier"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class ACiMClassifier(L.LightningModule):
    """Image classification with a (converted) model: train, validate, test.

    Logs ``train/loss``, ``train/acc`` and, per evaluation pass, ``<prefix>/loss``,
    ``<prefix>/acc`` (top-1) and ``<prefix>/acc_top5``. After every validation or test epoch,
    :attr:`results` holds the synced metrics: ``top1``, ``top5`` (exact correct counts over
    ``num_samples``), ``loss``, ``num_samples``, ``per_class`` (top-1 per class) and, with
    ``collect_predictions``, ``preds``, ``targets`` and ``indices`` (argmax, true label and
    dataset index per sample, in dataset order).

    Args:
        model: the network (float or ACiM-converted; the builder sets its ACiM mode).
        num_classes: classifier outputs.
        class_names: names for per-class results (default ``"0"``, ``"1"``, ...).
        model_name: registry name, recorded in the hyper-parameters.
        optimizer: ``optimizer(params) -> Optimizer``, e.g. the Hydra ``_partial_`` config
            ``conf/optimizer/sgd.yaml`` instantiated; None for evaluation only.
        scheduler: ``scheduler(optimizer) -> LRScheduler`` stepped every epoch, or None.
        label_smoothing: the reference's epsilon: target 1-eps for the true class and
            eps/(K-1) for the others.
        mixup_alpha: mixup in training (spec §9.5): ``lam ~ Beta(alpha, alpha)`` mixes the
            batch with a random permutation of itself, the loss is ``lam * L(y) + (1 - lam) *
            L(y[perm])``; training accuracy counts the original labels. 0 = off; the
            reference uses 1.0. Draws from torch's global RNG (restored on resume).
        log_prefix: metric prefix of evaluation passes (``val``; ``float``/``inference``/``sim``
            in simulation runs).
        collect_predictions: keep per-sample predictions in :attr:`results`.
        log_to_logger: send evaluation metrics to the logger (else progress bar only; the
            simulation runner logs its own summary).
        sample_index_hook: called as ``hook(model, indices)`` before every evaluation batch
            with the global dataset index of each row (e.g. to make noise depend on the
            sample, not on the batch it lands in); None: not called.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        *,
        class_names: Sequence[str] | None = None,
        model_name: str | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        log_prefix: str = "val",
        collect_predictions: bool = False,
        log_to_logger: bool = True,
        sample_index_hook: Callable[[nn.Module, Tensor], None] | None = None,
    ):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
        if mixup_alpha < 0:
            raise ValueError(f"mixup_alpha={mixup_alpha} must be >= 0 (0: off)")
        class_names = (
            list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        )
        # Kept in checkpoints, never sent to the logger: the runners log the config themselves.
        self.save_hyperparameters(
            ignore=[
                "model",
                "class_names",
                "optimizer",
                "scheduler",
                "log_prefix",
                "collect_predictions",
                "log_to_logger",
                "sample_index_hook",
            ],
            logger=False,
        )
        self.model = model
        self.class_names = class_names
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.mixup_alpha = float(mixup_alpha)
        self.log_prefix = log_prefix
        self.collect_predictions = collect_predictions
        self.log_to_logger = log_to_logger
        self.sample_index_hook = sample_index_hook
        # torch's label_smoothing s gives the true class 1-s+s/K; the reference's eps gives it
        # 1-eps and eps/(K-1) to each other class, i.e. s = eps*K/(K-1).
        smoothing = label_smoothing * num_classes / (num_classes - 1) if num_classes > 1 else 0.0
        self.criterion = nn.CrossEntropyLoss(label_smoothing=smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.top_k = min(5, num_classes)
        self.eval_metrics = MetricCollection(
            {
                "correct": SumMetric(),
                "correct_top5": SumMetric(),
                "count": SumMetric(),
                "acc_class": MulticlassAccuracy(num_classes, top_k=1, average=None),
                "loss": MeanMetric(),
            },
            compute_groups=False,
        )
        self.preds = CatMetric()
        self.targets = CatMetric()
        self.indices = CatMetric()
        self.results: dict[str, Any] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        if self.mixup_alpha > 0:
            alpha = torch.tensor(self.mixup_alpha, dtype=torch.float64)
            lam = float(torch.distributions.Beta(alpha, alpha).sample())
            perm = torch.randperm(len(y)).to(y.device)
            logits = self(lam * x + (1.0 - lam) * x[perm])
            loss = lam * self.criterion(logits, y) + (1.0 - lam) * self.criterion(logits, y[perm])
        else:
            logits = self(x)
            loss = self.criterion(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log(
            "train/acc",
            self.train_acc,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(y),
        )
        return loss

    def batch_indices(self, batch_idx: int, batch_size: int, device) -> Tensor:
        """Global dataset index of each row of evaluation batch ``batch_idx``: evaluation
        loaders yield consecutive samples (each rank a contiguous block), so it is the rank's
        first sample + ``batch_idx * loader.batch_size`` + the row."""
        from .sampler import first_sample_index

        trainer = self._trainer
        loaders = trainer.test_dataloaders if trainer.testing else trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        start = first_sample_index(loader) + batch_idx * int(loader.batch_size)
        return torch.arange(start, start + batch_size, device=device)

    def _eval_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        need_index = self.collect_predictions or self.sample_index_hook is not None
        idx = self.batch_indices(batch_idx, len(y), y.device) if need_index else None
        if self.sample_index_hook is not None:
            self.sample_index_hook(self.model, idx)
        logits = self(x)
        loss = self.criterion(logits, y)
        m = self.eval_metrics
        top = logits.topk(self.top_k, dim=1).indices
        m["correct"].update((top[:, 0] == y).sum())
        m["correct_top5"].update((top == y[:, None]).any(dim=1).sum())
        m["count"].update(torch.tensor(len(y), device=logits.device))
        m["acc_class"].update(logits, y)
        m["loss"].update(loss.detach(), weight=len(y))
        if self.collect_predictions:
            self.preds.update(top[:, 0].to(torch.float64))
            self.targets.update(y.to(torch.float64))
            self.indices.update(idx.to(torch.float64))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._finish_eval()

    def on_test_epoch_end(self) -> None:
        self._finish_eval()

    def _finish_eval(self) -> None:
        """Compute the synced metrics, log the scalars, keep everything in ``results``."""
        values = self.eval_metrics.compute()  # all-reduced across processes
        n = int(values["count"])
        correct, correct5 = int(values["correct"]), int(values["correct_top5"])
        results = {
            "top1": correct / n if n else 0.0,
            "top5": correct5 / n if n else 0.0,
            "correct": correct,
            "correct_top5": correct5,
            "loss": float(values["loss"]),
            "num_samples": n,
            "per_class": [round(float(v), 6) for v in values["acc_class"]],
        }
        if self.collect_predictions:  # gathered in rank order = dataset order
            for key, metric in (("preds", self.preds), ("targets", self.targets)):
                results[key] = [int(v) for v in metric.compute().reshape(-1).tolist()]
                metric.reset()
            results["indices"] = [int(v) for v in self.indices.compute().reshape(-1).tolist()]
            self.indices.reset()
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
        if self.optimizer_factory is None:
            raise ValueError("ACiMClassifier: training needs optimizer=(a partial optimizer)")
        opt = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
