"""Real sweeps of simulate.py on digits: the report every multirun writes, Hydra's joblib and
submitit launchers, and the Optuna Pareto search (the launchers and the sweeper come with
`pip install -e ".[sweep]"`; their tests are skipped without them)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_modules import report

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FAST = ["debug=fast"]  # two validation batches of 256: all 450 digits, about a second a job


def multirun(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "simulate.py", "-m", *FAST, *overrides, f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"{' '.join(overrides)} failed:\n{proc.stderr[-4000:]}"
    return proc


def job_results(sweep_dir: Path) -> dict[Path, dict]:
    """results.json of every job folder (one with .hydra/overrides.yaml) of a sweep."""
    jobs = [p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")]
    return {job: json.loads((job / "results.json").read_text()) for job in jobs}


def overridden(job: Path) -> dict[str, str]:
    lines = OmegaConf.to_container(OmegaConf.load(job / ".hydra" / "overrides.yaml"))
    return dict(line.split("=", 1) for line in lines)


def assert_one_result_per_job(sweep_dir: Path, key: str, values: set[str]) -> dict[Path, dict]:
    """Every job wrote its own results.json, simulated with its own override."""
    found = job_results(sweep_dir)
    assert {overridden(job)[key] for job in found} == values
    assert len(found) == len(values)
    leaf = key.split(".")
    for job, res in found.items():
        node = res["config"]
        for part in leaf:
            node = node[part]
        assert str(node) == overridden(job)[key], job
        assert res["num_samples"] == 450
    return found


def test_grid_sweep_writes_the_report(tmp_path):
    sweep = tmp_path / "grid"
    proc = multirun(sweep, "macro.adc_bits=5,8", "macro.input_enc_bits=null,2")
    assert "sweep report:" in proc.stdout
    found = job_results(sweep)
    assert len(found) == 4
    rows = report.read_csv(sweep / "sweep.csv")
    assert len(rows) == 4
    assert list(rows[0])[:2] == ["macro.adc_bits", "macro.input_enc_bits"]
    for row in rows:
        res = found[(sweep / row["job"]).resolve()]
        assert overridden(sweep / row["job"])["macro.adc_bits"] == row["macro.adc_bits"]
        for name in report.METRICS:
            value = report.metric(res, name)
            assert row[name] == ("" if value is None else str(value)), name
    # the lossless 8-bit bit-serial macro equals quantized inference; 5 bits loses accuracy
    by_key = {(r["macro.adc_bits"], r["macro.input_enc_bits"]): r for r in rows}
    lossless = by_key["8", "null"]
    assert float(lossless["sim_top1"]) == float(lossless["inference_top1"])
    assert float(by_key["5", "null"]["sim_top1"]) < float(lossless["sim_top1"])
    # bit-parallel e=2 halves the conversions (the default cost preset is on)
    assert float(by_key["8", "2"]["adc_conversions"]) * 2 == float(lossless["adc_conversions"])
    expected = {"sweep.csv", "report.md", "accuracy_vs_energy.png"}
    expected |= {"accuracy_vs_macro.adc_bits.png", "accuracy_vs_macro.input_enc_bits.png"}
    assert expected <= {p.name for p in sweep.iterdir()}
    md = (sweep / "report.md").read_text()
    assert md.count("\n| ") == 1 + 4 and "![accuracy_vs_macro.adc_bits]" in md


def test_sensitivity_sweep_has_a_chart_per_job(tmp_path):
    sweep = tmp_path / "sens"
    multirun(sweep, "macro.adc_bits=6,7", "simulate.sensitivity=true")
    found = job_results(sweep)
    charts = sorted(p.name for p in sweep.glob("sensitivity_*.png"))
    assert len(found) == 2 and len(charts) == 2
    for res in found.values():
        assert [r["layer"] for r in res["sensitivity"]]  # every ACiM layer, by name
    md = (sweep / "report.md").read_text()
    assert all(f"]({name})" in md for name in charts)


def test_joblib_sweep_writes_one_result_per_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "joblib"
    proc = multirun(
        sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "macro.adc_bits=5,6,8"
    )
    assert "Joblib.Parallel" in proc.stderr + proc.stdout
    found = assert_one_result_per_job(sweep, "macro.adc_bits", {"5", "6", "8"})
    tops = {overridden(job)["macro.adc_bits"]: res["sim_top1"] for job, res in found.items()}
    assert tops["5"] < tops["8"]  # each worker simulated its own macro
    assert len(report.read_csv(sweep / "sweep.csv")) == 3


def test_submitit_local_sweep_writes_one_result_per_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "submitit"
    multirun(sweep, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
             "macro.adc_bits=5,8")  # fmt: skip
    assert (sweep / ".submitit").is_dir()
    assert_one_result_per_job(sweep, "macro.adc_bits", {"5", "8"})
    assert len(report.read_csv(sweep / "sweep.csv")) == 2


def assert_fronts_agree(sweep: Path, metrics: tuple[str, str]) -> None:
    """Optuna's Pareto front (optimization_results.yaml) is the report's on the same values."""
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.solutions and all(len(t["values"]) == 2 for t in best.solutions)
    optuna_front = {(t["values"][0], t["values"][1]) for t in best.solutions}
    rows = report.read_csv(sweep / "sweep.csv")
    assert len(rows) == 4  # one per trial (a repeated design: results-1.json, its own row)
    ours = sorted({(float(r[metrics[0]]), float(r[metrics[1]])) for r in rows})
    front = report.pareto_mask(ours, ["max", "min"])
    assert {p for p, keep in zip(ours, front, strict=True) if keep} == optuna_front


def test_optuna_search_returns_the_configured_objectives(tmp_path):
    """The search machinery on two objectives every run has (top-1 up, wall time down)."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "search"
    multirun(
        sweep, "hparams_search=macro_pareto", "hydra.sweeper.n_trials=4",
        "optimized_metrics=[sim_top1,seconds]",
    )  # fmt: skip
    assert_fronts_agree(sweep, ("sim_top1", "seconds"))
    space = {"macro.adc_bits", "macro.input_enc_bits", "macro.hybrid_levels", "macro.nrow"}
    space |= {"macro.hybrid_exact"}
    for job, res in job_results(sweep).items():
        assert space <= set(overridden(job)), job  # every trial drew the whole search space
        assert res["config"]["optimized_metrics"] == ["sim_top1", "seconds"]


def test_pareto_search_completes(tmp_path):
    """hparams_search=macro_pareto: 4 trials on (sim_top1 up, energy_pj down)."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "pareto"
    multirun(sweep, "hparams_search=macro_pareto", "hydra.sweeper.n_trials=4")
    assert_fronts_agree(sweep, ("sim_top1", "energy_pj"))
    assert (sweep / "accuracy_vs_energy.png").is_file()
    md = (sweep / "report.md").read_text()
    assert "Pareto fronts" in md and re.search(r"\| yes +\|", md)


def test_fronts_within_each_noise_level(tmp_path):
    """A 2x2 sweep (ADC bits x noise): each noise level has its own front, computed on its
    runs only; pooled, the noise-free designs would push the noisy ones off."""
    sweep = tmp_path / "grid"
    multirun(sweep, "macro.adc_bits=4,8", "noise.rand_sigma=0,0.4")
    rows = report.read_csv(sweep / "sweep.csv")
    assert {r["condition"] for r in rows} == {"rand_sigma=0", "rand_sigma=0.4"}

    def front(subset):
        points = [(float(r["sim_top1"]), float(r["energy_pj"])) for r in subset]
        return [
            r["job"]
            for r, keep in zip(subset, report.pareto_mask(points, ["max", "min"]), strict=True)
            if keep
        ]

    marked = sorted(r["job"] for r in rows if r["pareto"] == "True")
    per_condition = sorted(
        job
        for c in ("rand_sigma=0", "rand_sigma=0.4")
        for job in front([r for r in rows if r["condition"] == c])
    )
    assert marked == per_condition
    assert len(front(rows)) < len(marked)
    assert (sweep / "shmoo.png").is_file()
    assert "Shmoo grid" in (sweep / "report.md").read_text()


def test_qat_and_nat_checkpoints_are_two_rows_with_a_ckpt_column(tmp_path):
    """A NAT run's export is named by what it is; through its <model>.pt link it has the
    shipped QAT checkpoint's file name, yet the sweep gives each its own job folder and row."""
    run = tmp_path / "train"
    proc = subprocess.run(
        [sys.executable, "train.py", "experiment=train/digits_nat", "debug=fast",
         f"hydra.run.dir={run}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    export = json.loads((run / "results.json").read_text())["export"]
    assert Path(export).name == "digits_cnn-nat-train.pt"
    assert (run / "digits_cnn.pt").resolve() == Path(export)
    sweep = tmp_path / "ckpts"
    multirun(
        sweep, f"ckpt=checkpoints/digits_cnn.pt,{run / 'digits_cnn.pt'}", "noise.rand_sigma=0.2"
    )
    found = job_results(sweep)
    assert len(found) == 2  # two job folders, one results.json each
    rows = report.read_csv(sweep / "sweep.csv")
    assert len(rows) == 2 and all(r["ckpt"] for r in rows)
    assert {r["condition"] for r in rows} == {
        "ckpt=checkpoints/digits_cnn.pt", "ckpt=train/digits_cnn.pt",
    }  # fmt: skip
    tops = {Path(r["ckpt"]).parent.name: float(r["sim_top1"]) for r in rows}
    assert tops["train"] != tops["checkpoints"]  # each job simulated its own checkpoint


def test_pareto_search_over_several_noise_conditions(tmp_path):
    """Each trial simulated at two noise levels (a sub-folder each); Optuna gets the worst of
    each objective: the lowest top-1 and the highest energy over the two."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "conds"
    multirun(sweep, "hparams_search=macro_pareto", "hydra.sweeper.n_trials=2",
             "conditions=[{noise.rand_sigma:0},{noise.rand_sigma:0.4}]")  # fmt: skip
    rows = report.read_csv(sweep / "sweep.csv")
    assert len(rows) == 4 and {r["condition"] for r in rows} == {"rand_sigma=0", "rand_sigma=0.4"}
    pooled = set()
    for trial in {Path(r["job"]).parent for r in rows}:
        mine = [r for r in rows if Path(r["job"]).parent == trial]
        worst = min(float(r["sim_top1"]) for r in mine)
        pooled.add((worst, max(float(r["energy_pj"]) for r in mine)))
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert {(t["values"][0], t["values"][1]) for t in best.solutions} <= pooled
