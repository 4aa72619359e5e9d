"""Hydra callbacks (wired in conf/hydra/default.yaml under ``hydra.callbacks``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lightning_modules import report

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """At the end of every multirun, write the sweep report (sweep.csv, report.md, plots) into
    the sweep folder. Runs on the launching machine, after every job of any launcher."""

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Resolved once here, before any job: the folder name holds the start time.
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = self.sweep_dir or Path(str(config.hydra.sweep.dir))
        try:
            written = report.write_report([sweep_dir])
        except (ValueError, OSError) as e:
            log.warning("no sweep report: %s (python report.py %s to retry)", e, sweep_dir)
            return
        skipped = len(written.collection.skipped)
        log.info(
            "sweep report: %s (%d runs%s)",
            written.markdown,
            len(written.collection.jobs),
            f", {skipped} skipped" if skipped else "",
        )
        print(f"sweep report: {written.markdown}")
