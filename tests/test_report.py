"""The sweep report on synthetic run folders (lightning_modules/report.py, report.py, the
Hydra callback); real sweeps are in tests/test_sweeps.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from lightning_modules import report
from lightning_modules.callbacks import SweepReport

ROOT = Path(__file__).resolve().parents[1]


def make_job(root: Path, overrides: dict[str, object], **results) -> Path:
    """A run folder as Hydra and simulate.py leave it: .hydra/overrides.yaml and results.json."""
    folder = root / ",".join(f"{k}={v}" for k, v in overrides.items())
    (folder / ".hydra").mkdir(parents=True)
    lines = [f"{k}={'null' if v is None else v}" for k, v in overrides.items()]
    (folder / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(lines))
    if results:
        (folder / "results.json").write_text(json.dumps(results))
    return folder


def results(top1: float, *, std: float = 0.0, energy: float | None = None, **extra) -> dict:
    out = {
        "sim_top1": top1,
        "sim_top1_std": std,
        "sim_top1_runs": [top1],
        "sim_top5": min(1.0, top1 + 0.1),
        "float_top1": 0.99,
        "inference_top1": 0.98,
        "num_samples": 450,
        "seconds": 1.25,
        "summary": {"model": "digits_cnn", "dataset": "digits"},
        "config": {
            "macro": {"name": "bitserial_255", "adc_bits": 8, "nrow": 255},
            "noise": {"name": "none", "rand_sigma": 0},
        },
    }
    if energy is not None:
        out["cost"] = {"energy_pj": energy, "adc_conversions": energy * 10}
    out.update(extra)
    return out


@pytest.fixture
def grid_sweep(tmp_path):
    """A 3x2 sweep (adc_bits x rand_sigma) with energies; one job still running, one failed."""
    sweep = tmp_path / "sweep"
    jobs = {}
    for bits in (4, 6, 8):
        for sigma in (0, 0.2):
            top1 = 0.1 * bits + 0.15 - sigma  # 0.55 .. 0.95
            jobs[bits, sigma] = make_job(
                sweep,
                {"macro.adc_bits": bits, "noise.rand_sigma": sigma, "debug": "fast"},
                **results(top1, std=0.01 * bits, energy=1000.0 * 2**bits),
            )
    make_job(sweep, {"macro.adc_bits": 5, "noise.rand_sigma": 0, "debug": "fast"},
             **{**results(0.5), "complete": False})  # fmt: skip
    make_job(sweep, {"macro.adc_bits": 7, "noise.rand_sigma": 0, "debug": "fast"})  # failed
    return sweep, jobs


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 200


def test_sweep_csv_rows_equal_results(grid_sweep):
    sweep, jobs = grid_sweep
    rep = report.write_report([sweep])
    assert rep.csv == sweep / "sweep.csv"
    rows = report.read_csv(rep.csv)
    # 'debug' is the same in every job: not a swept column
    assert list(rows[0]) == [
        "macro.adc_bits",
        "noise.rand_sigma",
        "condition",
        *report.METRICS,
        "pareto",
        "job",
    ]
    assert len(rows) == len(jobs) == 6
    for row in rows:
        folder = jobs[int(row["macro.adc_bits"]), float(row["noise.rand_sigma"])]
        assert (sweep / row["job"]).resolve() == folder.resolve()
        res = json.loads((folder / "results.json").read_text())
        for name in ("sim_top1", "sim_top1_std", "sim_top5", "float_top1", "inference_top1"):
            assert float(row[name]) == res[name], name
        assert int(row["num_samples"]) == res["num_samples"]
        assert float(row["seconds"]) == res["seconds"]
        assert float(row["energy_pj"]) == res["cost"]["energy_pj"]
        assert float(row["adc_conversions"]) == res["cost"]["adc_conversions"]
        assert row["condition"] == f"rand_sigma={row['noise.rand_sigma']}"
    # sorted by the swept keys, numerically
    assert [int(r["macro.adc_bits"]) for r in rows] == [4, 4, 6, 6, 8, 8]


def test_incomplete_and_failed_runs_are_skipped_with_a_note(grid_sweep):
    sweep, _ = grid_sweep
    rep = report.write_report([sweep])
    reasons = {(p if p.is_dir() else p.parent).name: why for p, why in rep.collection.skipped}
    assert len(reasons) == 2
    assert "incomplete" in reasons["macro.adc_bits=5,noise.rand_sigma=0,debug=fast"]
    assert "no results.json" in reasons["macro.adc_bits=7,noise.rand_sigma=0,debug=fast"]
    md = rep.markdown.read_text()
    assert "Skipped 2 folders" in md and "incomplete" in md
    assert all(r["macro.adc_bits"] not in ("5", "7") for r in report.read_csv(rep.csv))


def markdown_table(md: str) -> list[list[str]]:
    """The first Markdown table of report.md as rows of stripped cells (header first)."""
    lines = md[md.index("\n|") + 1 :].split("\n\n")[0].splitlines()
    return [
        [c.strip() for c in line.strip("|").split("|")] for i, line in enumerate(lines) if i != 1
    ]


def test_report_md_and_plots(grid_sweep):
    sweep, _ = grid_sweep
    rep = report.write_report([sweep])
    names = sorted(p.name for p in rep.plots)
    assert names == [
        "accuracy_vs_energy.png",
        "accuracy_vs_macro.adc_bits.png",
        "accuracy_vs_noise.rand_sigma.png",
        "shmoo.png",
    ]
    for plot in rep.plots:
        assert_png(plot)
    md = rep.markdown.read_text()
    for name in names:
        assert f"]({name})" in md
    table = markdown_table(md)
    assert len(table) == 1 + 6  # header and one row per complete job
    head = table[0]
    row = next(r for r in table if r[:2] == ["8", "0"])
    assert row[head.index("sim top-1")] == "95.00 ± 8.00"  # %, with the std of the repeats
    assert row[head.index("energy/sample (nJ)")] == "256"  # 2^8 * 1000 pJ
    assert "Design choices: `macro.adc_bits`" in md and "Conditions" in md
    # the shmoo grid: ADC bits x sigma, the sigma also in LSB rms of each ADC
    grid = report.shmoo(rep.table)
    assert list(grid.index) == [4, 6, 8] and list(grid.columns) == [0.0, 0.2]
    assert grid.loc[6, 0.2] == pytest.approx(0.55)
    assert "| 55.0 (0.13 LSB)" in md  # 0.2 % of 63 steps


def test_a_shmoo_grid_takes_its_noise_in_lsb(tmp_path):
    """noise.rand_sigma_lsb is the noise axis like noise.rand_sigma: columns in LSB rms, each
    cell with the same sigma in % of that ADC's full scale."""
    for bits in (4, 6):
        for sigma in (0, 0.5):
            make_job(tmp_path, {"macro.adc_bits": bits, "noise.rand_sigma_lsb": sigma},
                     **results(0.1 * bits - sigma / 10, energy=100.0 * bits))  # fmt: skip
    rep = report.write_report([tmp_path])
    grid = report.shmoo(rep.table)
    assert list(grid.index) == [4, 6] and list(grid.columns) == [0.0, 0.5]
    assert grid.loc[6, 0.5] == pytest.approx(0.55)
    md = rep.markdown.read_text()
    assert "ADC bits x `noise.rand_sigma_lsb`" in md and "| σ 0.5 LSB" in md
    assert "| 55.0 (0.79 % FS)" in md and "| 35.0 (3.3 % FS)" in md  # 0.5 LSB of 63, 15 steps
    assert "shmoo.png" in {p.name for p in rep.plots}
    assert_png(rep.out / "shmoo.png")


def test_fronts_are_drawn_within_each_condition(grid_sweep):
    """Noise is a condition: a noisy design never competes with a noise-free one."""
    sweep, _ = grid_sweep
    rep = report.write_report([sweep])
    front = rep.pareto
    # within each rand_sigma every adc_bits trades accuracy for energy: all on their front
    assert sorted(front["condition"].unique()) == ["rand_sigma=0", "rand_sigma=0.2"]
    assert len(front) == 6
    # the same runs pooled together would drop the noisy designs (dominated by noise-free ones)
    pooled = report.pareto_mask(
        rep.table[["accuracy", "energy_pj"]].to_numpy().tolist(), ["max", "min"]
    )
    assert sum(pooled) == 3
    md = rep.markdown.read_text()
    assert "Condition rand_sigma=0:" in md and "Condition rand_sigma=0.2:" in md
    rows = report.read_csv(rep.csv)
    assert all(r["pareto"] == "True" for r in rows)


def test_conditions_and_design_choices():
    for key in ("noise.rand_sigma", "noise", "seed", "ckpt", "dataset.root", "model", "chip"):
        assert report.is_condition(key), key
    for key in ("macro.adc_bits", "macro", "cost.vdd", "model.layer_macros", "optimizer.lr"):
        assert not report.is_condition(key), key


def test_a_dominated_design_is_off_its_conditions_front(tmp_path):
    for ckpt, shift in (("qat.pt", 0.0), ("nat.pt", 0.1)):
        for bits, top1, energy in ((4, 0.5, 100.0), (6, 0.4, 200.0), (8, 0.9, 400.0)):
            make_job(
                tmp_path,
                {"macro.adc_bits": bits, "ckpt": f"/runs/{ckpt}"},
                **results(top1 + shift, energy=energy),
            )
    rep = report.write_report([tmp_path])
    rows = report.read_csv(rep.csv)
    assert {r["ckpt"] for r in rows} == {"/runs/qat.pt", "/runs/nat.pt"}
    on = {(r["condition"], r["macro.adc_bits"]) for r in rows if r["pareto"] == "True"}
    assert on == {(f"ckpt={c}", b) for c in ("qat.pt", "nat.pt") for b in ("4", "8")}


def test_a_rerun_in_the_same_folder_is_its_own_row(tmp_path):
    """simulate.py never overwrites results.json: a second run writes results-1.json."""
    run = make_job(tmp_path, {"macro.adc_bits": 6}, **results(0.5))
    (run / "results-1.json").write_text(json.dumps(results(0.6)))
    (run / "results-2.json.tmp").write_text("{")  # a write in progress: not a results file
    (run / "predictions-1.json").write_text("[]")
    rep = report.write_report([tmp_path])
    rows = report.read_csv(rep.csv)
    assert [(r["sim_top1"], r["job"]) for r in rows] == [
        ("0.5", "macro.adc_bits=6"),
        ("0.6", "macro.adc_bits=6/results-1.json"),
    ]


def test_pareto_hand_case():
    # (accuracy, energy): b dominates a; c and d trade off; e duplicates d; f worse than d
    points = {
        "a": (0.5, 30.0),
        "b": (0.6, 20.0),
        "c": (0.9, 50.0),
        "d": (0.7, 10.0),
        "e": (0.7, 10.0),
        "f": (0.6, 10.0),
    }
    mask = report.pareto_mask(list(points.values()), ["max", "min"])
    assert {k for k, keep in zip(points, mask, strict=True) if keep} == {"c", "d", "e"}
    assert report.pareto_mask([(1.0, 2.0), (2.0, 1.0)], ["min", "min"]) == [True, True]
    with pytest.raises(ValueError, match="'max' or 'min'"):
        report.pareto_mask([(1.0,)], ["maximize"])


def test_report_marks_the_pareto_jobs(tmp_path):
    sweep = tmp_path / "s"
    for bits, top1, energy in ((4, 0.5, 100.0), (6, 0.8, 200.0), (7, 0.7, 300.0), (8, 0.9, 400.0)):
        make_job(sweep, {"macro.adc_bits": bits}, **results(top1, energy=energy))
    make_job(sweep, {"macro.adc_bits": 3}, **results(0.2))  # no energy: not on any front
    rep = report.write_report([sweep])
    assert sorted(rep.pareto["macro.adc_bits"]) == ["4", "6", "8"]
    table = markdown_table(rep.markdown.read_text())
    column = table[0].index("Pareto")
    assert {row[0] for row in table[1:] if row[column] == "yes"} == {"4", "6", "8"}
    md = rep.markdown.read_text()
    assert "Pareto fronts" in md
    listed = [line for line in md.splitlines() if line[:3] in ("1. ", "2. ", "3. ")]
    assert [line.split(":")[0] for line in listed] == [
        "1. adc_bits=4",
        "2. adc_bits=6",
        "3. adc_bits=8",
    ]


def test_repeats_by_seed_average_into_one_point_and_null_values(tmp_path):
    """Jobs that differ only in seed are repeats; null (bit-serial) sorts first."""
    sweep = tmp_path / "s"
    for enc in (None, 2):
        for seed, top1 in ((0, 0.6), (1, 0.8)):
            make_job(
                sweep,
                {"macro.input_enc_bits": enc, "seed": seed},
                **results(top1 + (enc or 0) / 100, energy=100.0 + (enc or 0)),
            )
    rep = report.write_report([sweep])
    assert rep.swept == ["macro.input_enc_bits", "seed"]
    rows = report.read_csv(rep.csv)
    assert [r["macro.input_enc_bits"] for r in rows] == ["null", "null", "2", "2"]
    assert {r["condition"] for r in rows} == {"all"}  # seeds are repeats, not conditions
    assert [p.name for p in rep.plots] == [
        "accuracy_vs_macro.input_enc_bits.png",
        "accuracy_vs_energy.png",
    ]
    means = rep.table.groupby("design")["accuracy"].agg(["mean", "std"])
    assert means.loc["input_enc_bits=serial"].tolist() == pytest.approx([0.7, math.sqrt(0.02)])
    # both designs on the front by their means over seeds (0.7 at 100 pJ, 0.72 at 102 pJ)
    assert rep.table["pareto"].all()
    assert "1. input_enc_bits=serial: 70.00 % at 100 pJ" in rep.markdown.read_text()


def test_sensitivity_chart(tmp_path):
    sens = [
        {"layer": "conv1", "alone_top1": 0.9, "without_top1": 0.6},
        {"layer": "conv2", "alone_top1": 0.7, "without_top1": 0.8},
        {"layer": "fc", "alone_top1": 0.95, "without_top1": 0.5},
    ]
    run = make_job(tmp_path, {"macro.adc_bits": 6}, **results(0.5, sensitivity=sens))
    rep = report.write_report([run])
    assert rep.swept == ["macro.adc_bits"]  # a single run: its overrides
    assert [p.name for p in rep.plots] == ["sensitivity.png"]  # one run: no accuracy curve
    assert_png(rep.out / "sensitivity.png")


def test_merging_sweeps_fills_keys_from_the_config(tmp_path):
    """A key overridden in one sweep only takes the other jobs' value from their config."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_job(a, {"macro.adc_bits": 6}, **results(0.5))
    make_job(a, {"macro.adc_bits": 7}, **results(0.6))
    make_job(b, {"macro.nrow": 127}, **results(0.7))
    make_job(b, {"macro.nrow": 127, "noise.rand_sigma": 0.2}, **results(0.6))
    rep = report.write_report([a, b, a], out=tmp_path / "merged")  # a twice: once each job
    rows = report.read_csv(rep.csv)
    assert len(rows) == 4
    assert {(r["macro.adc_bits"], r["macro.nrow"], r["condition"]) for r in rows} == {
        ("6", "255", "rand_sigma=0"),
        ("7", "255", "rand_sigma=0"),
        ("8", "127", "rand_sigma=0"),
        ("8", "127", "rand_sigma=0.2"),  # the merged report keeps the conditions apart
    }
    assert (tmp_path / "merged" / "report.md").is_file()
    with pytest.raises(ValueError, match="out=DIR"):
        report.write_report([a, b])


def test_one_value_written_two_ways_is_one_value(tmp_path):
    """An override '0' and a config's 0.0 (another sweep) are one condition, one tick; the
    search that ran one sweep is not a key of the merged report."""
    a, b = tmp_path / "a", tmp_path / "b"
    for sigma in ("0", "0.3"):
        make_job(a, {"macro.adc_bits": 6, "noise.rand_sigma": sigma}, **results(0.5, energy=9.0))
    float_config = results(0.6, energy=8.0)
    float_config["config"]["noise"]["rand_sigma"] = 0.0
    make_job(b, {"macro.adc_bits": 5, "hparams_search": "macro_pareto"}, **float_config)
    make_job(b, {"macro.adc_bits": 4, "noise.rand_sigma": "0.30"}, **results(0.4, energy=7.0))
    rep = report.write_report([a, b], out=tmp_path / "merged")
    rows = report.read_csv(rep.csv)
    assert sorted(r["noise.rand_sigma"] for r in rows) == ["0", "0", "0.3", "0.3"]
    assert sorted(set(rep.table["condition"])) == ["rand_sigma=0", "rand_sigma=0.3"]
    assert rep.swept == ["macro.adc_bits", "noise.rand_sigma"]  # how b ran is not a design
    assert_png(tmp_path / "merged" / "accuracy_vs_noise.rand_sigma.png")


def test_no_complete_run_is_an_error(tmp_path):
    make_job(tmp_path, {"macro.adc_bits": 6})
    with pytest.raises(ValueError, match="no complete results.json"):
        report.write_report([tmp_path])
    with pytest.raises(ValueError, match="is not a folder"):
        report.write_report([tmp_path / "missing"])


def test_objectives():
    res = results(0.75, energy=1234.0)
    assert report.objectives(res, OmegaConf.create({})) == 0.75
    cfg = OmegaConf.create({"optimized_metrics": ["sim_top1", "energy_pj"]})
    assert report.objectives(res, cfg) == (0.75, 1234.0)
    assert report.objectives(res, OmegaConf.create({"optimized_metrics": "energy_pj"})) == 1234.0
    with pytest.raises(ValueError, match="cost model"):
        report.objectives(results(0.75), cfg)
    with pytest.raises(ValueError, match="choose from"):
        report.objectives(res, OmegaConf.create({"optimized_metrics": ["top1"]}))


def test_callback_writes_the_report_into_the_sweep_folder(grid_sweep):
    sweep, _ = grid_sweep
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    callback = SweepReport()
    callback.on_multirun_start(cfg)
    callback.on_multirun_end(cfg)
    assert (sweep / "sweep.csv").is_file() and (sweep / "report.md").is_file()


def test_callback_is_wired_in_the_hydra_config():
    """conf/hydra/default.yaml (the `hydra` group of simulate.yaml and train.yaml) names it."""
    from hydra.utils import instantiate

    hydra_cfg = OmegaConf.load(ROOT / "conf" / "hydra" / "default.yaml")
    callbacks = [instantiate(c) for c in hydra_cfg.callbacks.values()]
    assert any(isinstance(c, SweepReport) for c in callbacks)


def test_report_cli(grid_sweep, tmp_path):
    sweep, _ = grid_sweep
    other = tmp_path / "other"
    make_job(other, {"macro.adc_bits": 3, "noise.rand_sigma": 0}, **results(0.3))
    out = tmp_path / "merged"
    proc = subprocess.run(
        [sys.executable, "report.py", str(sweep), str(other), "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "7 runs" in proc.stdout and "2 skipped" in proc.stdout
    assert len(report.read_csv(out / "sweep.csv")) == 7
    proc = subprocess.run(
        [sys.executable, "report.py", str(tmp_path / "missing")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_train_sweep_reports_validation_accuracy(tmp_path):
    """train.py's results.json has val_top1 and no simulation: the report uses it."""
    for lr, top1 in ((0.01, 0.9), (0.05, 0.95)):
        make_job(tmp_path, {"optim.lr": lr}, val_top1=top1, val_top5=1.0, mode="qat", seconds=3.0)
    rep = report.write_report([tmp_path])
    rows = report.read_csv(rep.csv)
    assert [(r["optim.lr"], r["val_top1"], r["sim_top1"]) for r in rows] == [
        ("0.01", "0.9", ""),
        ("0.05", "0.95", ""),
    ]
    assert [p.name for p in rep.plots] == ["accuracy_vs_optim.lr.png"]
    table = markdown_table(rep.markdown.read_text())
    assert table[0][1] == "val top-1" and table[2][:2] == ["0.05", "95.00"]


def test_a_design_run_twice_is_listed_once_in_the_pareto_set(tmp_path):
    """An Optuna search may draw one design twice (results.json and results-1.json)."""
    run = make_job(tmp_path, {"macro.adc_bits": 6}, **results(0.5, energy=100.0))
    (run / "results-1.json").write_text(json.dumps(results(0.5, energy=100.0)))
    make_job(tmp_path, {"macro.adc_bits": 8}, **results(0.9, energy=300.0))
    rep = report.write_report([tmp_path])
    assert len(rep.pareto) == 3  # both runs of adc_bits=6 are on the front
    listed = [line for line in rep.markdown.read_text().splitlines() if line[:3] in ("1. ", "2. ")]
    assert len(listed) == 2
    assert listed[0].startswith("1. adc_bits=6: 50.00 % at 100 pJ") and ", 2 runs)" in listed[0]
    assert listed[1].startswith("2. adc_bits=8: 90.00 % at 300 pJ") and "runs" not in listed[1]


# ----------------------------------------------------------------------- results.json records
def test_readme_results_table_is_the_field_docs():
    from lightning_modules.results import RunResult, field_table

    assert field_table() in (ROOT / "README.md").read_text()
    assert list(RunResult().to_dict())[:4] == [
        "float_top1",
        "float_top5",
        "inference_top1",
        "inference_top5",
    ]


def test_measured_row_ideal_header_and_q4_note(compose_run, tmp_path):
    from lightning_modules import builders

    fast = ["simulate.float=false", "simulate.inference=false", "trainer.limit_val_batches=1"]
    cfg = compose_run("simulate", "macro=bitserial_255_hybrid", "simulate.measured_top1=0.5", *fast)
    res = builders.simulate(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["measured_top1"] == 0.5
    assert saved["sim_minus_measured"] == pytest.approx(saved["sim_top1"] - 0.5)
    assert saved["summary"]["hybrid_quantized"] is True
    assert saved["summary"]["ideal"] == [
        "lossless ADC (it resolves every column count)",
        "no read-out noise",
        "exact shortcut (integer MACs)",
    ]
    table = builders.format_table(res)
    assert "measured (silicon)" in table and "simulated - measured" in table
    assert "quirk Q4" in table and "macro.hybrid_exact=true" in table
    assert "latency" in table and "TOPS/W" in table
    with pytest.raises(ValueError, match=r"simulate.measured_top1=91.7 must be a fraction"):
        builders.simulate(compose_run("simulate", "simulate.measured_top1=91.7"))


# ----------------------------------------------------------------------- TensorBoard
def _session_hparams(folder: Path) -> tuple[dict, list[str]]:
    """The HPARAMS session start of a run folder's event file, and its scalar tags."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    meta = events.SummaryMetadata("_hparams_/session_start_info")
    start = plugin_data_pb2.HParamsPluginData.FromString(meta.plugin_data.content)
    hp = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in
          start.session_start_info.hparams.items()}  # fmt: skip
    return hp, events.Tags()["scalars"]


@pytest.fixture(scope="module")
def tb_sweep(tmp_path_factory):
    """A 2-job simulate.py sweep with the TensorBoard logger (debug=fast: a few seconds)."""
    sweep = tmp_path_factory.mktemp("tb") / "sweep"
    proc = subprocess.run(
        [sys.executable, "simulate.py", "-m", "debug=fast", "noise.rand_sigma=0,0.3",
         "macro.adc_bits=6", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def test_tensorboard_event_files_carry_the_swept_keys(tb_sweep):
    folder = tb_sweep / "debug=fast,noise.rand_sigma=0.3,macro.adc_bits=6"
    hp, scalars = _session_hparams(folder)
    assert hp == {"debug": "fast", "noise.rand_sigma": 0.3, "macro.adc_bits": 6.0}
    for tag in ("sim/acc", "sim/energy_pj", "sim/latency_ns", "sim/area_mm2", "inference/acc"):
        assert tag in scalars, tag
    rows = report.read_csv(tb_sweep / "sweep.csv")
    assert {r["condition"] for r in rows} == {"rand_sigma=0", "rand_sigma=0.3"}


@pytest.mark.browser
def test_hparams_tab_in_a_real_browser(tb_sweep, tmp_path):
    """TensorBoard's HPARAMS tab, rendered by headless Chromium, lists the swept keys and the
    sim/* metrics as columns (the screenshot is kept in tmp_path to look at)."""
    import shutil
    import socket
    import time
    import urllib.request

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tb = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tb_sweep),
         "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        shot = tmp_path / "hparams.png"
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1600,1000",
             "--virtual-time-budget=15000", f"--screenshot={shot}", f"{url}/#hparams"],
            capture_output=True, timeout=180, check=True,
        )  # fmt: skip
        # what the tab renders (its table lives in shadow DOM, out of --dump-dom's reach)
        request = urllib.request.Request(
            f"{url}/data/plugin/hparams/experiment",
            data=json.dumps({"experimentName": ""}).encode(),
            headers={"Content-Type": "application/json", "X-TensorBoard-Feature-Flags": "{}"},
        )
        experiment = json.loads(urllib.request.urlopen(request, timeout=30).read())
    finally:
        tb.terminate()
        tb.wait(timeout=30)
    assert_png(shot)
    with Image.open(shot) as im:  # a rendered page, not a blank one
        assert len(im.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50
    hparams = [h["name"] for h in experiment["hparamInfos"]]
    assert sorted(hparams) == ["debug", "macro.adc_bits", "noise.rand_sigma"]
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert metrics == ["sim/acc", "sim/acc_std", "sim/energy_pj", "sim/latency_ns", "sim/area_mm2"]


def test_measured_top1_is_a_column_when_a_run_has_it(tmp_path):
    """simulate.measured_top1: sweep.csv and report.md carry the silicon row's numbers."""
    for bits, top1 in ((6, 0.90), (8, 0.95)):
        make_job(tmp_path, {"macro.adc_bits": bits},
                 **results(top1, measured_top1=0.917, sim_minus_measured=top1 - 0.917))  # fmt: skip
    rep = report.write_report([tmp_path])
    rows = report.read_csv(rep.csv)
    assert [float(r["measured_top1"]) for r in rows] == [0.917, 0.917]
    assert [float(r["sim_minus_measured"]) for r in rows] == pytest.approx([-0.017, 0.033])
    table = markdown_table(rep.markdown.read_text())
    assert [r[table[0].index("sim - measured (pp)")] for r in table[1:]] == ["-1.70", "+3.30"]
    # absent from a sweep without silicon (test_sweep_csv_rows_equal_results: exact columns)
    plain = make_job(tmp_path / "plain", {"macro.adc_bits": 6}, **results(0.9))
    assert "measured_top1" not in report.read_csv(report.write_report([plain]).csv)[0]


def test_perplexity_is_lower_is_better(tmp_path):
    """A language model's fronts minimise sim_ppl; Optuna's directions follow the metric."""
    points = ((4, 40.0, 100.0), (6, 30.0, 200.0), (7, 35.0, 300.0), (8, 8.0, 400.0))
    for bits, ppl, energy in points:
        make_job(tmp_path, {"model.attention.av.adc_bits": bits},
                 **results(0.3, energy=energy, sim_ppl=ppl, sim_ppl_std=0.0))  # fmt: skip
    rep = report.write_report([tmp_path])
    rows = report.read_csv(rep.csv)
    on = {r["model.attention.av.adc_bits"] for r in rows if r["pareto"] == "True"}
    assert on == {"4", "6", "8"}  # 7 bits: more energy and a higher perplexity than 6
    assert "lowest perplexity" in rep.markdown.read_text()
    assert [float(r["sim_ppl"]) for r in rows] == [40.0, 30.0, 35.0, 8.0]
    assert report.directions(["sim_top1", "sim_ppl", "energy_pj", "tops_per_w"]) == [
        "maximize", "minimize", "minimize", "maximize",
    ]  # fmt: skip


def test_search_directions_follow_the_metrics():
    """hparams_search=macro_pareto: Optuna's direction per optimized metric (report.sense)."""
    from hydra import compose, initialize_config_dir

    from lightning_modules import builders

    builders.register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        metrics = "optimized_metrics=[sim_ppl,tops_per_w,latency_ns]"
        search = "hparams_search=macro_pareto"
        cfg = compose("simulate", [search, metrics], return_hydra_config=True)
        default = compose("simulate", [search], return_hydra_config=True)
        assert list(cfg.hydra.sweeper.direction) == ["minimize", "maximize", "minimize"]
        assert list(default.hydra.sweeper.direction) == ["maximize", "minimize"]


def test_two_checkpoints_with_one_file_name_stay_two_conditions(tmp_path):
    """ckpt=a/train/digits_cnn.pt,checkpoints/digits_cnn.pt: told apart by their folders."""
    for ckpt, top1 in (("checkpoints/digits_cnn.pt", 0.9), ("/runs/nat/digits_cnn.pt", 0.8)):
        make_job(tmp_path / ckpt.split("/")[-2], {"ckpt": ckpt}, **results(top1))
    rep = report.write_report([tmp_path])
    rows = report.read_csv(rep.csv)
    assert sorted(r["condition"] for r in rows) == [
        "ckpt=checkpoints/digits_cnn.pt", "ckpt=nat/digits_cnn.pt",
    ]  # fmt: skip
    assert [r["ckpt"] for r in rows] == ["/runs/nat/digits_cnn.pt", "checkpoints/digits_cnn.pt"]


def test_a_chip_population_reports_yield_worst_chip_and_its_plots(tmp_path):
    """simulate.chips is a condition; yield and worst chip are sweep.csv columns and the
    report draws the chips' CDF and yield against the design key."""
    sweep = tmp_path / "sweep"
    chips = {4: [0.90, 0.97, 0.985], 8: [0.98, 0.985, 0.99]}
    for bits, tops in chips.items():
        make_job(sweep, {"macro.adc_bits": bits, "simulate.chips": 3},
                 **results(sum(tops) / 3, energy=10.0 * bits, chips=3, chip_top1=tops,
                           worst_chip_top1=min(tops), yield_threshold=0.97,
                           yield_top1=sum(t >= 0.97 for t in tops) / 3))  # fmt: skip
    make_job(sweep, {"macro.adc_bits": 8, "simulate.chips": 1},
             **results(0.98, energy=80.0, chips=1, chip_top1=[0.98], worst_chip_top1=0.98,
                       yield_threshold=0.97, yield_top1=1.0))  # fmt: skip
    rep = report.write_report([sweep])
    assert report.is_condition("simulate.chips") and rep.table.attrs["conditions"] == [
        "simulate.chips"
    ]
    rows = report.read_csv(rep.csv)
    got = {(r["macro.adc_bits"], r["simulate.chips"]): r for r in rows}
    assert float(got[("4", "3")]["yield_top1"]) == pytest.approx(2 / 3)
    assert float(got[("4", "3")]["worst_chip_top1"]) == 0.90
    assert {r["condition"] for r in rows} == {"chips=1", "chips=3"}
    names = {p.name for p in rep.plots}
    assert {"chips_cdf.png", "yield_vs_macro.adc_bits.png"} <= names
    for name in ("chips_cdf.png", "yield_vs_macro.adc_bits.png"):
        assert_png(rep.out / name)
    md = rep.markdown.read_text()
    assert "yield (%)" in md and "66.67" in md and "![chips_cdf](chips_cdf.png)" in md


def test_calibrated_runs_plot_clip_rates_and_code_histograms(tmp_path):
    layer = {"nrow": 255, "adc_bits": 4}
    cal = {"method": "mse", "percentile": None, "batches": 8, "made": True,
           "file": "calibration.json",
           "layers": [{"layer": "conv2", "full_scale": 40, "clip_rate": 0.002,
                       "code_histogram": [50, 30, 10, 5, 3, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                       **layer},
                      {"layer": "fc", "full_scale": 60, "clip_rate": 0.0,
                       "code_histogram": [70, 20, 5, 5] + [0] * 12, **layer}]}  # fmt: skip
    make_job(tmp_path, {"simulate.calibrate": "mse"}, **results(0.97, calibration=cal))
    make_job(tmp_path, {"simulate.calibrate": "null"}, **results(0.5))
    rep = report.write_report([tmp_path])
    names = [p.name for p in rep.plots if p.name.startswith("calibration")]
    assert names == ["calibration_clip.png", "calibration_codes.png"]
    for name in names:
        assert_png(rep.out / name)
    assert not report.is_condition("simulate.calibrate")  # calibrating is a design choice
