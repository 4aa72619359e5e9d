"""Progress for logs: one line per N % of an epoch instead of carriage-return bars.

:func:`lightning_modules.config.build_trainer` uses :class:`LineProgress` in place of
Lightning's progress bar when stdout is not a terminal (a log file, CI, a batch job).
"""

from __future__ import annotations

import sys
import time

import lightning as L

__all__ = ["LineProgress"]


class LineProgress(L.Callback):
    """Print ``<stage> <epoch>: 30% (3/10 batches, 1.2 s)`` each time another ``percent`` % of
    the batches is done, and after every training epoch one summary line
    ``epoch 2 done (3 of 30): train/loss 0.1234, train/acc 96.10%, val/loss 0.1023, val/acc
    97.33% (4.1 s)`` (epochs count from 0, as in checkpoint names) (rank 0 only)."""

    def __init__(self, percent: int = 10, stream=None) -> None:
        if not 1 <= int(percent) <= 100:
            raise ValueError(f"progress_percent={percent} must be in 1..100")
        self.percent = int(percent)
        self.stream = stream
        self._next = 0
        self._t0 = 0.0
        self._epoch_t0 = 0.0

    def _start(self) -> None:
        self._next = self.percent
        self._t0 = time.perf_counter()

    def _report(self, trainer: L.Trainer, stage: str, done: int, total) -> None:
        if not trainer.is_global_zero or not total or total == float("inf"):
            return
        pct = 100 * done / total
        if pct + 1e-9 < self._next and done < total:
            return
        while self._next <= pct + 1e-9:
            self._next += self.percent
        label = f"{stage} epoch {trainer.current_epoch}" if stage == "train" else stage
        print(
            f"{label}: {pct:3.0f}% ({done}/{int(total)} batches, "
            f"{time.perf_counter() - self._t0:.1f} s)",
            file=self.stream or sys.stdout,
            flush=True,
        )

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start()
        self._epoch_t0 = self._t0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        parts = []
        for key, shown in (
            ("train/loss_epoch", "train/loss"),
            ("train/acc", "train/acc"),
            ("val/loss", "val/loss"),
            ("val/acc", "val/acc"),
        ):
            if key in metrics:
                value = float(metrics[key])
                parts.append(
                    f"{shown} {100 * value:.2f}%" if "acc" in key else f"{shown} {value:.4f}"
                )
        total = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?"
        print(
            f"epoch {trainer.current_epoch} done ({trainer.current_epoch + 1} of {total}): "
            f"{', '.join(parts) or 'no metrics'} "
            f"({time.perf_counter() - self._epoch_t0:.1f} s)",
            file=self.stream or sys.stdout,
            flush=True,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._report(trainer, "train", batch_idx + 1, trainer.num_training_batches)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        total = trainer.num_sanity_val_batches if trainer.sanity_checking else None
        if total is None:
            total = trainer.num_val_batches
        total = total[dataloader_idx] if isinstance(total, list) else total
        stage = getattr(pl_module, "log_prefix", "validate")
        self._report(
            trainer, "sanity check" if trainer.sanity_checking else stage, batch_idx + 1, total
        )
