"""simulate.py and train.py end to end, in a subprocess, on digits (the offline default)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIELDS = (
    "float_top1",
    "inference_top1",
    "sim_top1",
    "sim_top1_std",
    "sim_top5",
    "num_samples",
    "seconds",
)


def run(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc


def test_simulate_default(tmp_path):
    """`python simulate.py` with no arguments: digits, the shipped checkpoint, the table."""
    t0 = time.perf_counter()
    proc = run("simulate.py", f"hydra.run.dir={tmp_path}")
    assert time.perf_counter() - t0 < 120
    assert "quantized inference" in proc.stdout and "simulated" in proc.stdout
    res = json.loads((tmp_path / "results.json").read_text())
    for key in FIELDS:
        assert res[key] is not None, key
    assert res["num_samples"] == 450
    assert 0.97 <= res["float_top1"] <= 1.0
    assert res["sim_top1"] == res["inference_top1"]  # lossless macro, no noise
    assert list(tmp_path.glob("events.out.tfevents.*"))  # TensorBoard, in the run dir


def test_train_fast(tmp_path):
    run("train.py", "debug=fast", f"hydra.run.dir={tmp_path}")
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["mode"] == "qat" and Path(res["best_model_path"]).is_file()
    state = torch.load(res["export"], weights_only=True)
    assert "conv1.weight" in state and "fc.weight" in state


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["macro.adc_bits=0"], "error: MacroConfig.adc_bits=0 must be in 1..24"),
        (
            ["dataset=cifar10", "dataset.root=/nonexistent/cifar"],
            "error: CIFAR-10 data not found at /nonexistent/cifar: expected",
        ),
    ],
)
def test_bad_value_is_one_line(args, expected, tmp_path):
    proc = run("simulate.py", *args, f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(expected)


def test_typo_is_hydra_compose_error(tmp_path):
    proc = run("simulate.py", "macro.adcbits=6", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode != 0
    assert "Could not override 'macro.adcbits'" in proc.stderr
    assert "Key 'adcbits' not in 'MacroConfig'" in proc.stderr
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_multirun_sweep(tmp_path):
    proc = run(
        "simulate.py",
        "-m",
        "macro.adc_bits=6,8",
        "noise.rand_sigma=0.1",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert "Launching 2 jobs" in proc.stdout + proc.stderr
    runs = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("*/results.json")}
    assert set(runs) == {
        "macro.adc_bits=6,noise.rand_sigma=0.1",
        "macro.adc_bits=8,noise.rand_sigma=0.1",
    }
    assert runs["macro.adc_bits=6,noise.rand_sigma=0.1"]["config"]["macro"]["adc_bits"] == 6


@pytest.mark.slow
def test_train_default_reproduces_shipped_accuracy(tmp_path):
    """`python train.py` with its defaults is how checkpoints/digits_cnn.pt is made."""
    run("train.py", f"hydra.run.dir={tmp_path}")
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["best_val_acc"] >= 0.97
    proc = run("simulate.py", f"ckpt={res['export']}", f"hydra.run.dir={tmp_path / 'sim'}")
    assert json.loads((tmp_path / "sim" / "results.json").read_text())["float_top1"] >= 0.97
    assert proc.returncode == 0
