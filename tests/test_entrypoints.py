"""simulate.py and train.py end to end, in a subprocess, on digits (the offline default)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.entrypoint  # subprocesses: CI runs them in their own step

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
    # named by what it is: model, mode, run (the folder); the old name links to it
    assert Path(res["export"]).name == f"digits_cnn-qat-{tmp_path.name}.pt"
    assert (tmp_path / "digits_cnn.pt").resolve() == Path(res["export"])
    # TensorBoard: the run's HPARAMS say what was changed, the mode and trim_noise; val/acc
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    meta = events.SummaryMetadata("_hparams_/session_start_info")
    start = plugin_data_pb2.HParamsPluginData.FromString(meta.plugin_data.content)
    hp = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.session_start_info.hparams.items()}
    assert hp["debug"] == "fast" and hp["mode"] == "qat" and hp["trim_noise"] == 0.0
    assert hp["macro"].startswith("bitserial_255(")  # the preset's name, not "custom"
    assert "val/acc" in events.Tags()["scalars"]


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
        # a job started in the background by a non-interactive shell inherits SIGINT ignored
        # (and Python keeps it so): give the child Ctrl-C as a terminal user has it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
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


# ---------------------------------------------------------- user mistakes: one line, no work


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    csv = tmp_path / "bad_noise.csv"
    csv.write_text("count;offset;std\n0;0;0.1\n")
    files["csv"] = csv
    trunc = tmp_path / "truncated.pt"
    data = (ROOT / "checkpoints" / "digits_cnn.pt").read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    files["truncated"] = trunc
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    files["text"] = text
    return files


BAD_SIMULATE = [
    (["noise=measured", "noise.rand_sigma=0.3"], "error: noise.file (a measured table) replaces"),
    (["macro.vote_levels=2"], "error: macro.vote_levels=2 votes over macro.vote_samples=1"),
    (["noise=gaussian", "noise.rand_sigma=50"], "error: noise.rand_sigma=50 is 50 % of the ADC"),
    (["macro.nrow=100000"], "error: macro.nrow=100000 rows on one bit line is beyond any"),
    (["+resume=auto"], "error: +resume= is not used by simulate.py"),
    (["noise=measured", "noise.file={csv}"], "error: "),
    (["ckpt={truncated}"], "error: ckpt="),
    (["ckpt={text}"], "error: ckpt="),
    (["simulate.chips=3"], "error: simulate.chips=3: nothing differs between chips"),
    (["simulate.chips=0"], "error: simulate.chips=0 must be an integer >= 1"),
    (["simulate.calibrate=best"], "error: simulate.calibrate=best: choose one of max,"),
    (["calibration={text}", "simulate.calibrate=mse"], "error: simulate.calibrate=mse and"),
    (["calibration=missing.json"], "error: calibration=missing.json: no such file"),
    (["simulate.calibration_granularity=adc"], "error: simulate.calibration_granularity=adc:"),
    (
        ["simulate.calibrate=mse", "simulate.calibration_column_steps=4"],
        "error: simulate.calibration_column_steps=4: an integer >= 1",
    ),
]


@pytest.mark.parametrize(("args", "expected"), BAD_SIMULATE)
def test_bad_input_stops_before_any_pass_in_one_line(args, expected, tmp_path):
    files = _bad_files(tmp_path)
    args = [a.format(**files) for a in args]
    folder = tmp_path / "run"
    proc = run("simulate.py", *args, f"hydra.run.dir={folder}", check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(expected), lines[-3:]
    assert "float:" not in proc.stdout  # no pass started
    assert not folder.exists()  # a refused run leaves no folder behind


def test_resume_with_a_state_dict_is_one_line(tmp_path):
    proc = run("train.py", "resume=checkpoints/digits_cnn.pt", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(r"error: resume=\S*digits_cnn.pt is a weights-only state_dict, not a", last)
    assert "use ckpt=PATH" in last


def test_resume_auto_of_a_finished_run_changes_no_file(tmp_path):
    folder = tmp_path / "run"
    run("train.py", "debug=fast", f"hydra.run.dir={folder}")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    proc = run("train.py", "resume=auto", f"hydra.run.dir={folder}")
    assert "is finished (1 of 1 epochs); nothing changed" in proc.stdout
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    # the printed kind of hint, resume=<last.ckpt>, finds the folder and its overrides itself
    proc = run("train.py", f"resume={folder / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=2")
    res = json.loads((folder / "results-1.json").read_text())
    assert res["epochs"] == 2 and res["config"]["trainer"]["limit_train_batches"] == 3


FAST_SIM = ["simulate.float=false", "simulate.inference=false", "trainer.limit_val_batches=1"]


def test_a_sweep_with_one_bad_value_runs_no_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run(
        "simulate.py",
        "-m",
        "macro.adc_bits=7,8,0",
        *FAST_SIM,
        f"hydra.sweep.dir={sweep}",
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith("error: job 2 (macro.adc_bits=0,")
    assert "MacroConfig.adc_bits=0 must be in 1..24" in errors[0]
    assert errors[-1] == "error: 1 job(s) of the sweep are invalid (listed above); no job ran"
    assert not sweep.exists()


def test_a_job_failing_at_run_time_does_not_stop_the_sweep_report(tmp_path):
    """The digits checkpoint does not fit vit_tiny: found when that job builds its model."""
    sweep = tmp_path / "sweep"
    proc = run(
        "simulate.py",
        "-m",
        "model=digits_cnn,vit_tiny",
        "ckpt=checkpoints/digits_cnn.pt",
        *FAST_SIM,
        "logger=csv",
        f"hydra.sweep.dir={sweep}",
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: 1 job(s) failed" in proc.stderr
    failed = [p.parent for p in sweep.glob("*/error.txt")]
    assert len(failed) == 1 and "model=vit_tiny" in failed[0].name
    assert "does not fit" in (failed[0] / "error.txt").read_text()
    report = (sweep / "report.md").read_text()
    assert failed[0].name in report and len(list(sweep.glob("*/results.json"))) == 1


def test_a_sweep_with_an_unreadable_checkpoint_runs_no_job(tmp_path):
    files = _bad_files(tmp_path)
    sweep = tmp_path / "sweep"
    proc = run(
        "simulate.py",
        "-m",
        f"ckpt=checkpoints/digits_cnn.pt,{files['truncated']}",
        *FAST_SIM,
        f"hydra.sweep.dir={sweep}",
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "is not a readable PyTorch checkpoint" in proc.stderr and not sweep.exists()
