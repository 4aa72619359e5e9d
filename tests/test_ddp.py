"""Distributed simulation: 2 CPU processes (gloo) count every validation sample once and, with
per-sample activation scales, predict exactly what one process predicts: noise off, and noise
on (each row's noise is keyed by its dataset index, whatever the batch or the process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    "simulate.sensitivity=true",
    "logger=csv",
]


def _ddp(args: list[str], out: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "simulate.py",
            *args,
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.strategy=ddp",
            f"hydra.run.dir={out}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # two processes: 20-40 s
@pytest.mark.ddp
def test_ddp_two_processes_match_single_process(tmp_path):
    _ddp(ARGS, tmp_path / "ddp")
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
    assert ddp["sensitivity"] == single["sensitivity"] and len(ddp["sensitivity"]) == 3
    assert single["sim_top1"] < single["inference_top1"]  # the macro is lossy indeed


NOISY = [
    "macro=bitserial_255",
    "macro.act_scale=sample",
    "noise=gaussian",
    # a chip's fixed pattern (spec §4.7): the same chip on every rank and batch size
    "noise.column_offset_lsb=0.5",
    "noise.column_gain_pct=1.0",
    "noise.column_sigma_spread=0.2",
    "noise.adc_group=2",
    "simulate.chips=2",  # two chips, one repeat each
    "simulate.calibrate=mse",  # per-ADC ranges calibrated in every process alike
    "simulate.calibration_granularity=column",
    "simulate.float=false",
    "simulate.save_predictions=true",
    "dataset.val_fraction=0.06",  # 108 samples: the default suite's budget
    "logger=csv",
]
NOISY_SAMPLES = 108


@pytest.mark.ddp  # two processes
def test_noisy_results_do_not_depend_on_batch_size_or_processes(tmp_path):
    """noise=gaussian with a chip's fixed pattern and per-ADC calibrated ranges,
    act_scale=sample: batch 16 in one process, batch 32 in one process and batch 32 on 2 DDP
    ranks (two blocks each) give the same calibration and predictions, bit for bit, for every
    chip."""
    _ddp([*NOISY, "dataset.val_batch_size=32"], tmp_path / "ddp")
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    ddp_preds = json.loads((tmp_path / "ddp" / "predictions.json").read_text())
    assert ddp["summary"]["world_size"] == 2 and ddp["num_samples"] == NOISY_SAMPLES
    for batch in (16, 32):
        out = tmp_path / f"single{batch}"
        single = builders.simulate(
            builders.compose(
                "simulate",
                [
                    *NOISY,
                    f"dataset.val_batch_size={batch}",
                    "trainer.enable_progress_bar=false",
                    f"output_dir={out}",
                ],
            )
        )
        preds = json.loads((out / "predictions.json").read_text())
        assert preds["sim"] == ddp_preds["sim"], batch
        assert preds["indices"] == ddp_preds["indices"] == list(range(NOISY_SAMPLES))
        assert single["sim_top1_runs"] == ddp["sim_top1_runs"], batch
        assert single["calibration"]["layers"] == ddp["calibration"]["layers"], batch
    assert ddp_preds["sim"][0] != ddp_preds["sim"][1]  # two chips: the pattern is real
    assert len(ddp["chip_top1"]) == 2
    assert ddp["sim_top1"] < ddp["inference_top1"]
