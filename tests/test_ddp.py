"""Distributed simulation: 2 CPU processes (gloo) count every validation sample once and, with
per-sample activation scales and noise off, predict exactly what one process predicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lightning_modules import builders

ROOT = Path(__file__).resolve().parents[1]
# A lossy macro, so predictions depend on every bit of the computation; small batches, so each
# rank runs several; per-sample scales, so sharding cannot change any sample's result.
ARGS = [
    "macro=bitparallel_enc4",
    "macro.act_scale=sample",
    "noise=none",
    "dataset.val_batch_size=64",
    "simulate.save_predictions=true",
    "logger=csv",
]


def test_ddp_two_processes_match_single_process(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "simulate.py",
            *ARGS,
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.strategy=ddp",
            f"hydra.run.dir={tmp_path / 'ddp'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    ddp_preds = json.loads((tmp_path / "ddp" / "predictions.json").read_text())
    assert ddp["summary"]["world_size"] == 2
    assert ddp["num_samples"] == 450  # no padded duplicates

    single = builders.simulate(
        builders.compose(
            "simulate",
            [*ARGS, "trainer.enable_progress_bar=false", f"output_dir={tmp_path / 'single'}"],
        )
    )
    single_preds = json.loads((tmp_path / "single" / "predictions.json").read_text())
    for key in ("float", "inference", "sim"):
        assert ddp_preds[key] == single_preds[key], key
    for key in ("float_top1", "inference_top1", "sim_top1", "sim_top5", "num_samples"):
        assert ddp[key] == single[key], key
    assert ddp["per_class"] == single["per_class"]
    assert single["sim_top1"] < single["inference_top1"]  # the macro is lossy indeed
