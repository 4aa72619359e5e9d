"""simulate.py and train.py end to end, in a subprocess, on digits (the offline default)."""

from __future__ import annotations

import json
import os
import shutil
import signal
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
    # the default cost preset: energy and conversions per sample in results.json and the table
    assert res["summary"]["cost_preset"] == "zigzag_28nm" and res["cost"]["energy_pj"] > 0
    assert [x["name"] for x in res["cost_layers"]] == ["conv1", "conv2", "conv3", "fc"]
    assert "energy/sample" in proc.stdout and "ADC conv./sample" in proc.stdout
    assert list(tmp_path.glob("events.out.tfevents.*"))  # TensorBoard, in the run dir
    # stdout is a pipe: progress as whole lines (one per 10 %), no carriage-return bar
    assert "\r" not in proc.stdout and "\r" not in proc.stderr
    assert "sim: 100% (2/2 batches" in proc.stdout
    # the table is in the run's log too
    log = (tmp_path / "simulate.log").read_text()
    assert "quantized inference" in log and "results: " in log


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
    """Every job gets a folder named by all its overrides (seed and paths included)."""
    chips = tmp_path / "chips"
    chips.mkdir()
    for chip in ("chipA", "chipB"):
        shutil.copy(ROOT / "conf" / "noise" / "measured_example.csv", chips / f"{chip}.csv")
    sweep = tmp_path / "sweep"
    proc = run(
        "simulate.py",
        "-m",
        "noise=measured",
        f"noise.file={chips / 'chipA.csv'},{chips / 'chipB.csv'}",
        "seed=0,1",
        "simulate.float=false",
        "trainer.limit_val_batches=1",
        "logger=csv",
        f"hydra.sweep.dir={sweep}",
    )
    assert "Launching 4 jobs" in proc.stdout + proc.stderr
    runs = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}
    rest = "simulate.float=False,trainer.limit_val_batches=1,logger=csv"
    assert set(runs) == {
        f"noise=measured,noise.file={chip}.csv,seed={seed},{rest}"
        for chip in ("chipA", "chipB")
        for seed in (0, 1)
    }
    job = runs[f"noise=measured,noise.file=chipB.csv,seed=1,{rest}"]
    assert job["config"]["seed"] == 1 and job["config"]["noise"]["file"].endswith("chipB.csv")
    # hparams: the swept keys first (as given), then the macro/noise fields, nothing else
    import yaml

    folder = sweep / f"noise=measured,noise.file=chipB.csv,seed=1,{rest}"
    hp = yaml.safe_load((folder / "hparams.yaml").read_text())
    assert list(hp)[:6] == [
        "noise",
        "noise.file",
        "seed",
        "simulate.float",
        "trainer.limit_val_batches",
        "logger",
    ]
    assert hp["noise"] == "measured" and hp["seed"] == 1 and hp["macro.adc_bits"] == 8
    assert all(k in list(hp)[:6] or k.startswith(("macro.", "noise.")) for k in hp)


@pytest.mark.slow
def test_ctrl_c_keeps_finished_repeats_and_exits_130(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "simulate.py",
            "noise=gaussian",
            "simulate.repeats=500",
            "simulate.float=false",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    results = tmp_path / "results.json"
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for a finished repeat
        if results.is_file() and results.stat().st_size:
            if json.loads(results.read_text())["repeats"] >= 1:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1 and "of 500 repeats" in lines[0] and str(results) in lines[0]
    assert "Traceback" not in err
    saved = json.loads(results.read_text())
    assert saved["complete"] is False and 1 <= saved["repeats"] < 500
    assert len(saved["sim_top1_runs"]) == saved["repeats"]


@pytest.mark.slow
def test_train_default_reproduces_shipped_accuracy(tmp_path):
    """`python train.py` with its defaults is how checkpoints/digits_cnn.pt is made."""
    run("train.py", f"hydra.run.dir={tmp_path}")
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["best_val_acc"] >= 0.97
    proc = run("simulate.py", f"ckpt={res['export']}", f"hydra.run.dir={tmp_path / 'sim'}")
    assert json.loads((tmp_path / "sim" / "results.json").read_text())["float_top1"] >= 0.97
    assert proc.returncode == 0
