"""ACiMClassifier and the simulate/train builders, in process, on digits (fast)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from asim import Calibration, MacroConfig, acim_modules, convert_to_acim
from asim.checkpoint import load_checkpoint
from asim.models import create_model
from lightning_modules import builders
from lightning_modules.data import DigitsDataModule, UnpaddedDistributedSampler
from lightning_modules.module import ACiMClassifier


def _tiny(num_classes: int = 4) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, num_classes))


def _trainer(**kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        inference_mode=False,
        **kw,
    )


def test_fast_dev_run_on_digits():
    """One QAT training and validation step through a converted model (style §7)."""
    dm = DigitsDataModule(batch_size=32, val_batch_size=64)
    model = convert_to_acim(create_model("digits_cnn"), MacroConfig(), mode="train")
    module = ACiMClassifier(
        model, num_classes=10, optimizer=functools.partial(torch.optim.SGD, lr=0.05)
    )
    before = model.conv2.weight.detach().clone()
    _trainer(fast_dev_run=True).fit(module, datamodule=dm)
    assert not torch.equal(before, model.conv2.weight.detach())
    assert module.results["num_samples"] == 64


def test_eval_results_metrics_and_predictions():
    torch.manual_seed(0)
    x, y = torch.randn(50, 1, 4, 4), torch.randint(0, 4, (50,))
    module = ACiMClassifier(
        _tiny(), num_classes=4, class_names=list("abcd"), collect_predictions=True
    )
    _trainer().validate(module, DataLoader(TensorDataset(x, y), batch_size=16), verbose=False)
    r = module.results
    with torch.no_grad():
        logits = module.model(x)
    preds = logits.argmax(1)
    assert r["num_samples"] == 50
    assert r["preds"] == preds.tolist()
    assert r["top1"] == pytest.approx((preds == y).float().mean().item())
    top4 = logits.topk(4, dim=1).indices  # top-k is min(5, num_classes)
    assert r["top5"] == pytest.approx((top4 == y[:, None]).any(1).float().mean().item())
    per_class = [
        ((preds == y) & (y == c)).sum().item() / max(1, (y == c).sum().item()) for c in range(4)
    ]
    assert r["per_class"] == pytest.approx(per_class, abs=1e-6)
    assert r["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)


def test_label_smoothing_matches_the_reference():
    """Reference: true class 1-eps, every other class eps/(K-1) (spec §9.5)."""
    k, eps = 5, 0.1
    module = ACiMClassifier(_tiny(k), num_classes=k, label_smoothing=eps)
    logits, y = torch.randn(7, k), torch.randint(0, k, (7,))
    target = torch.full((7, k), eps / (k - 1))
    target[torch.arange(7), y] = 1 - eps
    ref = -(target * logits.log_softmax(1)).sum(1).mean()
    assert module.criterion(logits, y).item() == pytest.approx(ref.item(), rel=1e-5)


def test_optimizer_and_scheduler_are_hydra_partials(compose_run):
    """conf/optimizer and conf/scheduler: `_partial_` configs; milestones are fractions of
    trainer.max_epochs (spec §9.5)."""
    from hydra.utils import instantiate

    cfg = compose_run("train", "optimizer=adam", "trainer.max_epochs=200")
    module = ACiMClassifier(
        _tiny(),
        num_classes=4,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
    )
    conf = module.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.Adam)
    assert sorted(conf["lr_scheduler"]["scheduler"].milestones) == [120, 180]
    with pytest.raises(ValueError, match="training needs optimizer"):
        ACiMClassifier(_tiny(), num_classes=4).configure_optimizers()


def test_simulate_builder_results(compose_run, tmp_path):
    res = builders.simulate(
        compose_run(
            "simulate", "noise=gaussian", "simulate.repeats=2", "simulate.save_predictions=true"
        )
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    for key in (
        "float_top1",
        "inference_top1",
        "sim_top1",
        "sim_top1_std",
        "sim_top5",
        "num_samples",
        "seconds",
    ):
        assert key in saved and saved[key] is not None, key
        assert saved[key] == pytest.approx(res[key])
    assert saved["num_samples"] == 450
    assert 0.95 <= saved["float_top1"] <= 1 and 0 <= saved["sim_top1"] <= 1
    assert saved["repeats"] == 2 and len(saved["sim_top1_runs"]) == 2
    assert saved["sim_top1_runs"][0] != saved["sim_top1_runs"][1]  # two chips, two seeds
    assert set(saved["per_class"]["sim"]) == {str(i) for i in range(10)}
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert len(preds["float"]) == 450 and len(preds["sim"]) == 2
    assert preds["indices"] == list(range(450))  # dataset order, the global sample index
    dm = builders.build_datamodule(compose_run("simulate"))
    dm.setup("validate")
    assert preds["targets"] == [int(dm.val_set[i][1]) for i in range(450)]
    correct = sum(p == t for p, t in zip(preds["float"], preds["targets"], strict=True))
    assert saved["float_top1"] == correct / 450  # an exact count, not a rounded float
    table = builders.format_table(res)
    assert "simulated (x2)" in table and "±" in table


def test_simulate_is_repeatable_and_skips_passes(compose_run):
    cfg = compose_run(
        "simulate",
        "noise=measured",
        "simulate.float=false",
        "simulate.inference=false",
        "seed=3",
        "dataset.val_batch_size=64",
        "trainer.limit_val_batches=1",
    )
    a, b = builders.simulate(cfg), builders.simulate(cfg)
    assert a["sim_top1"] == b["sim_top1"]  # same seed: same chip, same noise
    assert a["float_top1"] is None and a["inference_top1"] is None


def test_lossless_macro_simulation_equals_inference(compose_run):
    res = builders.simulate(
        compose_run("simulate", "macro=ideal", "simulate.repeats=3", "simulate.float=false")
    )
    assert res["sim_top1"] == res["inference_top1"] and res["sim_top1_std"] == 0.0
    assert res["repeats"] == 3  # noise off: computed once, reported for every repeat


def test_sample_scale_is_independent_of_batching_and_sharding(compose_run):
    """Fast stand-in for the DDP test: with act_scale=sample, two unpadded shards evaluated
    separately in other batch sizes predict exactly what one process does."""
    cfg = compose_run("simulate", "macro=bitparallel_enc4", "macro.act_scale=sample")
    dm = builders.build_datamodule(cfg)
    dm.setup("validate")
    float_model = builders.build_float_model(cfg, dm)
    builders.load_weights(float_model, cfg.ckpt)
    model = builders.convert_model(cfg, float_model, mode="simulate")
    model.eval()
    x = torch.stack([dm.val_set[i][0] for i in range(len(dm.val_set))])
    with torch.no_grad():
        single = model(x).argmax(1)
        sharded = []
        for rank in range(2):
            idx = list(
                UnpaddedDistributedSampler(len(x), num_replicas=2, rank=rank, block_size=100)
            )
            for chunk in DataLoader(Subset(TensorDataset(x), idx), batch_size=37):
                sharded.append(model(chunk[0]).argmax(1))
    sharded = torch.cat(sharded)
    assert len(sharded) == len(x) == 450
    assert torch.equal(single, sharded)
    assert (single != torch.tensor([dm.val_set[i][1] for i in range(len(x))])).any()  # lossy


@pytest.mark.parametrize("fmt", ["reference", "lightning"])
def test_checkpoint_formats_load(compose_run, tmp_path, fmt):
    sd = torch.load(builders.resolve_path("checkpoints/digits_cnn.pt"), weights_only=True)
    if fmt == "reference":  # the reference's .pkl (spec §9.5)
        obj = {"model_state_dict": sd, "optimizer_state_dict": {}, "epoch": 0, "best_acc": 0.9}
    else:
        obj = {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}
    path = tmp_path / f"ckpt.{'pkl' if fmt == 'reference' else 'ckpt'}"
    torch.save(obj, path)
    res = builders.simulate(compose_run("simulate", f"ckpt={path}", "simulate.inference=false"))
    assert res["summary"]["ckpt_format"] == fmt
    assert res["float_top1"] > 0.95


def test_mismatched_checkpoint_is_one_line_error(compose_run, tmp_path):
    torch.save(_tiny().state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError) as err:
        builders.simulate(compose_run("simulate", f"ckpt={tmp_path / 'other.pt'}"))
    msg = str(err.value)
    assert "does not fit digits_cnn" in msg and "missing conv1.weight" in msg
    assert "unexpected 1.weight" in msg and "\n" not in msg


def test_nat_needs_a_checkpoint(compose_run):
    with pytest.raises(ValueError, match="set ckpt=PATH"):
        builders.train(compose_run("train", "trim_noise=20"))


def test_train_builder_writes_checkpoints_and_export(compose_run, tmp_path):
    cfg = compose_run(
        "train",
        "debug=fast",
        "trainer.max_epochs=2",
        "ckpt=checkpoints/digits_cnn.pt",
        "trim_noise=10",
    )
    res = builders.train(cfg)
    assert res["mode"] == "nat" and res["epochs"] == 2
    assert res["best_model_path"].startswith(str(tmp_path / "checkpoints"))
    saved = json.loads((tmp_path / "results.json").read_text())
    # named by what it is (model, mode, run); <model>.pt links to it for older commands
    assert saved["export"] == str(tmp_path / f"digits_cnn-nat-{tmp_path.name}.pt")
    alias = tmp_path / "digits_cnn.pt"
    assert alias.is_symlink() and alias.resolve() == Path(saved["export"])
    # the export and the Lightning checkpoint both load into a fresh model for simulation
    for ckpt in (saved["export"], saved["best_model_path"]):
        model = create_model("digits_cnn")
        report = load_checkpoint(model, ckpt)
        assert report["loaded"] == len(model.state_dict())
    trained = dict(acim_modules(builders.convert_model(cfg, model, mode="train")))
    assert trained["conv1"].digital


# ------------------------------------------------------------------ nothing lost, nothing silent


def test_results_file_is_never_overwritten(compose_run, tmp_path):
    cfg = compose_run("simulate", "simulate.float=false", "trainer.limit_val_batches=1")
    first = builders.simulate(cfg)
    before = (tmp_path / "results.json").read_text()
    second = builders.simulate(cfg)
    assert (tmp_path / "results.json").read_text() == before  # the first run's file is kept
    assert json.loads((tmp_path / "results-1.json").read_text())["sim_top1"] == second["sim_top1"]
    assert first["complete"] and second["complete"]
    # the unique-folder resolver of conf/hydra/default.yaml: two runs in one second
    from omegaconf import OmegaConf

    builders.register_configs()
    a = OmegaConf.create({"d": f"${{unique_dir:{tmp_path / 'run'}}}"}).d
    b = OmegaConf.create({"d": f"${{unique_dir:{tmp_path / 'run'}}}"}).d
    assert a != b and (tmp_path / "run").is_dir() and (tmp_path / "run_2").is_dir()


def test_job_folder_names_use_every_override():
    name = builders.job_dirname(
        ["seed=1", "noise=measured", "noise.file=/data/chips/chipA.csv", "ckpt=runs/a/model.pt"]
    )
    assert name == "seed=1,noise=measured,noise.file=chipA.csv,ckpt=model.pt"
    assert builders.job_dirname(["seed=2"]) != builders.job_dirname(["seed=3"])
    assert "/" not in builders.job_dirname(["dataset.root=/x/y"])
    long = builders.job_dirname([f"k{i}=v" for i in range(80)])
    assert len(long) < 220 and long != builders.job_dirname([f"k{i}=w" for i in range(80)])


def test_two_checkpoints_of_one_file_name_get_two_job_folders(tmp_path):
    """The sweep's sub-folder resolver: a folder that holds another job's overrides is not
    shared (the second gets a digest); the same job run again keeps its folder."""
    from omegaconf import OmegaConf

    from lightning_modules.config import _job_subdir

    first, second = ["ckpt=checkpoints/digits_cnn.pt"], ["ckpt=/tmp/train/digits_cnn.pt"]
    name = _job_subdir(str(tmp_path), first)
    assert name == "ckpt=digits_cnn.pt"
    (tmp_path / name / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(first), tmp_path / name / ".hydra" / "overrides.yaml")
    assert _job_subdir(str(tmp_path), first) == name
    other = _job_subdir(str(tmp_path), second)
    assert other.startswith("ckpt=digits_cnn.pt@") and other != name


def test_a_single_run_folder_says_what_was_changed():
    """hydra.run.dir = outputs/<task>/<date><run_label>: the overrides, quote-free."""
    from lightning_modules.config import _run_label

    label = _run_label(["experiment=train/digits_nat", "trim_noise=10", "hydra.run.dir=x"])
    assert label == "_experiment_digits_nat_trim_noise_10"
    assert _run_label([]) == "" and _run_label(["hydra.job.chdir=true"]) == ""


def test_interrupted_simulation_keeps_finished_repeats(compose_run, tmp_path, monkeypatch):
    """Ctrl-C after two repeats: RunInterrupted with one line; results.json holds the two
    finished repeats and says it is incomplete."""
    from lightning_modules import run

    cfg = compose_run(
        "simulate", "noise=gaussian", "simulate.repeats=5", "trainer.limit_val_batches=1"
    )
    calls = {"n": 0}
    real = run.resample_noise

    def resample(model, seed):  # the third repeat is interrupted
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(model, seed)

    monkeypatch.setattr(run, "resample_noise", resample)
    with pytest.raises(builders.RunInterrupted) as err:
        builders.simulate(cfg)
    msg = str(err.value)
    assert "\n" not in msg and "2 of 5 repeats" in msg and str(tmp_path) in msg
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["complete"] is False and saved["repeats"] == 2
    assert saved["repeats_requested"] == 5 and len(saved["sim_top1_runs"]) == 2
    assert 0.9 < saved["float_top1"] <= 1 and 0.9 < saved["inference_top1"] <= 1  # kept


def test_dataset_class_count_mismatch_blames_the_dataset(compose_run, tmp_path):
    torch.save(create_model("digits_cnn", num_classes=5).state_dict(), tmp_path / "five.pt")
    with pytest.raises(ValueError) as err:
        builders.simulate(compose_run("simulate", f"ckpt={tmp_path / 'five.pt'}"))
    msg = str(err.value)
    assert msg.startswith("dataset=digits has 10 classes but checkpoint five.pt was trained on 5")
    assert "dataset.root" in msg and "\n" not in msg


def test_header_shows_the_macros_actually_used(compose_run):
    res = builders.simulate(
        compose_run(
            "simulate",
            "model.layer_macros=[{match:fc,adc_bits:6}]",
            "simulate.float=false",
            "simulate.inference=false",
            "trainer.limit_val_batches=1",
        )
    )
    header = builders.format_table(res).splitlines()[0]
    assert "bitserial_255(W8A8, nrow=255, adc=8, serial)" in header
    assert "adc=6, serial) on fc" in header and "digital digital_w8a8" in header
    assert res["summary"]["layer_macros"]["bitserial_255(W8A8, nrow=255, adc=6, serial)"] == ["fc"]


def test_simulation_hparams_hold_no_training_keys(compose_run, tmp_path):
    builders.simulate(compose_run("simulate", "trainer.limit_val_batches=1"))
    hparams = (tmp_path / "hparams.yaml").read_text()
    assert "macro.adc_bits: 8" in hparams and "noise.rand_sigma: 0.0" in hparams
    assert "dataset" not in hparams and "trainer" not in hparams  # macro/noise + swept only
    for key in ("optimizer", "lr:", "momentum", "label_smoothing", "milestones", "trim_noise"):
        assert key not in hparams, key


def test_last_checkpoint_is_the_last_epoch_and_resume_continues(compose_run, tmp_path):
    common = ["debug=fast", "ckpt=checkpoints/digits_cnn.pt", "trim_noise=10"]
    res = builders.train(compose_run("train", *common, "trainer.max_epochs=2"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert res["last_model_path"] == str(last)
    assert torch.load(last, weights_only=False)["epoch"] == 1  # the last epoch, best or not
    assert res["last_epoch"] == 1 and 0 <= res["best_epoch"] <= 1
    assert res["validation_noise"].startswith("NAT training noise (trim_noise 10%")
    # resume=auto: the run folder's last.ckpt; epoch, optimizer and scheduler continue
    resumed = builders.train(compose_run("train", *common, "trainer.max_epochs=3", "resume=auto"))
    assert resumed["resumed_from"] == str(last) and resumed["epochs"] == 3
    assert torch.load(last, weights_only=False)["epoch"] == 2
    assert (tmp_path / "results.json").is_file() and (tmp_path / "results-1.json").is_file()
    state = torch.load(last, weights_only=False)
    assert state["optimizer_states"] and state["lr_schedulers"]
    with pytest.raises(FileNotFoundError, match="resume=nowhere.ckpt"):
        builders.train(compose_run("train", *common, "resume=nowhere.ckpt"))


# ------------------------------------------------------------------------- cost, sensitivity
FAST = ["simulate.float=false", "simulate.inference=false", "trainer.limit_val_batches=1"]


def _assert_same_cost(got: dict, want: dict) -> None:
    """Equal fields; energies (per sample of 1 vs 8 samples) up to rounding."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key == "energy_breakdown_pj":
            assert got[key] == pytest.approx(value, rel=1e-12), key
        elif isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-12), key
        else:
            assert got[key] == value, key


def test_results_hold_the_cost_of_the_simulated_model(compose_run, tmp_path):
    """results.json's cost/cost_layers are asim.estimate_cost of the converted model; the
    table shows energy and conversions per sample; the logger gets sim/energy_pj."""
    from asim import estimate_cost

    cfg = compose_run("simulate", "macro=bitserial_255_hybrid", *FAST)
    res = builders.simulate(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    dm = builders.build_datamodule(cfg)
    dm.setup("validate")
    model = builders.build_float_model(cfg, dm)
    builders.load_weights(model, cfg.ckpt)
    model = builders.convert_model(cfg, model, mode="simulate")
    batch = torch.stack([dm.val_set[i][0] for i in range(8)])
    expected = estimate_cost(model, batch, builders.cost_config(cfg)).to_dict()
    assert [x["name"] for x in saved["cost_layers"]] == ["conv1", "conv2", "conv3", "fc"]
    _assert_same_cost(saved["cost"], expected["cost"])
    assert len(saved["cost_layers"]) == len(expected["cost_layers"])
    for got, want in zip(saved["cost_layers"], expected["cost_layers"], strict=True):
        _assert_same_cost(got, want)
    for key in ("adc_conversions", "digital_partial_sums", "digital_macs", "binary_macs"):
        assert saved["cost"][key] == expected["cost"][key]  # counts: exact integers
    assert saved["cost"]["digital_partial_sums"] > 0  # the hybrid preset: digital MSB cycles
    assert saved["summary"]["cost_preset"] == "zigzag_28nm"
    table = builders.format_table(res)
    header = table.splitlines()[2]
    sim_row = next(r for r in table.splitlines() if r.startswith("simulated"))
    assert "energy/sample" in header and "ADC conv./sample" in header
    energy = builders.format_energy(saved["cost"]["energy_pj"])
    assert energy.endswith(" nJ") and energy in sim_row
    assert builders.format_conversions(saved["cost"]["adc_conversions"]) in sim_row
    metrics = (tmp_path / "metrics.csv").read_text().splitlines()
    assert "sim/energy_pj" in metrics[0] and "sim/adc_conversions" in metrics[0]


def test_adc_bits_change_energy_not_conversions(compose_run):
    eight = builders.simulate(compose_run("simulate", *FAST))["cost"]
    six = builders.simulate(compose_run("simulate", "macro.adc_bits=6", *FAST))["cost"]
    assert six["adc_conversions"] == eight["adc_conversions"] > 0
    assert six["energy_breakdown_pj"]["adc"] < eight["energy_breakdown_pj"]["adc"]
    assert six["energy_pj"] < eight["energy_pj"]
    other = {k: v for k, v in six["energy_breakdown_pj"].items() if k != "adc"}
    assert other == {k: eight["energy_breakdown_pj"][k] for k in other}


def test_cost_off_leaves_the_fields_empty(compose_run):
    res = builders.simulate(compose_run("simulate", "~cost", *FAST))
    assert res["cost"] is None and res["cost_layers"] is None
    assert res["summary"]["cost_preset"] is None
    sim_row = next(r for r in builders.format_table(res).splitlines() if r.startswith("simulated"))
    assert sim_row.split()[-2:] == ["-", "-"]


def test_cost_preset_field_is_validated_in_one_line(compose_run):
    with pytest.raises(ValueError, match=r"CostConfig.vdd=-1.0 must be a finite voltage > 0"):
        builders.simulate(compose_run("simulate", "cost.vdd=-1"))


def _acim_names(res) -> list[str]:
    return [n for desc, names in res["summary"]["layer_macros"].items() for n in names
            if not desc.startswith("digital ")]  # fmt: skip


def test_sensitivity_on_a_lossless_macro_equals_inference(compose_run, tmp_path):
    res = builders.simulate(
        compose_run("simulate", "macro=ideal", "simulate.sensitivity=true", "simulate.float=false")
    )
    rows = res["sensitivity"]
    assert [r["layer"] for r in rows] == ["conv2", "conv3", "fc"] == _acim_names(res)
    for r in rows:  # the lossless shortcut is exact: every mix of modes is inference
        assert r["alone_top1"] == r["without_top1"] == res["inference_top1"], r
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["sensitivity"] == rows and saved["complete"]
    table = builders.format_table(res)
    assert "per-layer sensitivity" in table and "only it on the macro" in table


def test_sensitivity_on_a_lossy_macro_tells_the_layers_apart(compose_run):
    res = builders.simulate(
        compose_run("simulate", "macro.adc_bits=4", "simulate.sensitivity=true")
    )
    rows = res["sensitivity"]
    assert [r["layer"] for r in rows] == _acim_names(res)
    for r in rows:
        assert r["alone_top1"] != r["without_top1"], r
        assert res["sim_top1"] <= r["without_top1"] or res["sim_top1"] <= r["alone_top1"]
    assert len({r["alone_top1"] for r in rows}) > 1  # layers differ in sensitivity
    assert res["sensitivity"] is not None and res["complete"]


def test_sensitivity_noise_is_seeded_as_repeat_0(compose_run):
    """With noise, every sensitivity pass uses repeat 0's seed: the rows do not depend on how
    many repeats ran, and they change with the seed."""
    common = ["noise=gaussian", "noise.rand_sigma=2", "simulate.sensitivity=true", *FAST]
    common.append("dataset.val_batch_size=64")  # one batch of 64 samples
    one = builders.simulate(compose_run("simulate", *common))
    two = builders.simulate(compose_run("simulate", *common, "simulate.repeats=2"))
    other = builders.simulate(compose_run("simulate", *common, "seed=5"))
    assert one["sensitivity"] == two["sensitivity"]
    assert one["sim_top1_runs"][0] == two["sim_top1_runs"][0]
    assert one["sensitivity"] != other["sensitivity"]


def test_mixup_loss_is_the_references():
    """lam ~ Beta(a, a) from the global RNG, one permutation pairs the rows; the loss is
    lam * CE(y) + (1 - lam) * CE(y[perm]) on the mixed batch (spec §9.5)."""
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    module = ACiMClassifier(net, 3, mixup_alpha=1.0)
    torch.manual_seed(1)
    loss = module.training_step((x, y), 0)
    torch.manual_seed(1)
    a = torch.tensor(1.0, dtype=torch.float64)
    lam = float(torch.distributions.Beta(a, a).sample())
    perm = torch.randperm(6)
    logits = net(lam * x + (1 - lam) * x[perm])
    ce = nn.functional.cross_entropy
    assert 0 < lam < 1 and not torch.equal(perm, torch.arange(6))
    assert torch.equal(loss, lam * ce(logits, y) + (1 - lam) * ce(logits, y[perm]))
    plain = ACiMClassifier(net, 3).training_step((x, y), 0)
    assert torch.equal(plain, ce(net(x), y))


def test_one_summary_line_per_epoch(tmp_path, capsys):
    """Without a terminal: one line per epoch with train loss and val/acc."""
    overrides = ["debug=fast", "trainer.max_epochs=2", "logger=csv", f"output_dir={tmp_path}"]
    builders.train(builders.compose("train", overrides))
    lines = [x for x in capsys.readouterr().out.splitlines() if " done (" in x]
    assert [x.split(":")[0] for x in lines] == ["epoch 0 done (1 of 2)", "epoch 1 done (2 of 2)"]
    assert all("train/loss " in x and "val/acc " in x for x in lines)


def test_simulation_hparams_yaml_is_written_with_tensorboard(tmp_path):
    """TensorBoard writes hparams.yaml when the first pass starts; the run rewrites it with
    its hyper-parameters (it was left as {})."""
    import yaml

    cfg = builders.compose(
        "simulate",
        [*FAST, "macro.adc_bits=7", "trainer.enable_progress_bar=false", f"output_dir={tmp_path}"],
    )
    builders.simulate(cfg)
    hp = yaml.safe_load((tmp_path / "hparams.yaml").read_text())
    assert "adc=7" in hp["macro"] and hp["noise"] == "none"


def test_the_passes_of_a_run_are_one_plan():
    """simulate() runs float, inference, the repeats and the sensitivity passes as one list."""
    from omegaconf import OmegaConf

    from lightning_modules.run import plan_passes

    opts = OmegaConf.create({"float": True, "inference": False, "repeats": 3, "sensitivity": True})
    plan = plan_passes(opts, 5, stochastic=True, layers=["conv1", "fc"])
    assert [(p.kind, p.seed, p.layer, p.alone) for p in plan] == [
        ("float", None, None, False),
        ("sim", 5, None, False),
        ("sim", 6, None, False),
        ("sim", 7, None, False),
        ("sensitivity", 5, "conv1", True),
        ("sensitivity", 5, "conv1", False),
        ("sensitivity", 5, "fc", True),
        ("sensitivity", 5, "fc", False),
    ]
    # noise off: one deterministic simulated pass stands for the three repeats
    opts.sensitivity = False
    quiet = plan_passes(opts, 5, stochastic=False, layers=[])
    assert [(p.kind, p.copies) for p in quiet] == [("float", 1), ("sim", 3)]


@pytest.mark.parametrize("how", ["worst", "mean"])
def test_a_trial_pools_its_objectives_over_the_conditions(compose_run, tmp_path, how):
    """conditions=[...]: one simulation per noise condition, each in its own sub-folder that
    the report keeps apart; the objective is the worst (or mean) over them, by direction."""
    from lightning_modules import report, run

    fast = ["simulate.float=false", "simulate.inference=false", "trainer.limit_val_batches=1"]
    cfg = compose_run(
        "simulate", *fast, "macro.adc_bits=6", "optimized_metrics=[sim_top1,energy_pj]",
        "conditions=[{noise.rand_sigma:0},{noise.rand_sigma:0.6}]", f"condition_objective={how}",
    )  # fmt: skip
    top1, energy = run.trial(cfg)
    subs = {p.name: json.loads((p / "results.json").read_text()) for p in tmp_path.iterdir()
            if (p / "results.json").is_file()}  # fmt: skip
    assert set(subs) == {"noise.rand_sigma=0", "noise.rand_sigma=0.6"}
    clean, noisy = subs["noise.rand_sigma=0"], subs["noise.rand_sigma=0.6"]
    assert noisy["config"]["noise"]["rand_sigma"] == 0.6 and noisy["sim_top1"] < clean["sim_top1"]
    pooled = noisy["sim_top1"] if how == "worst" else (clean["sim_top1"] + noisy["sim_top1"]) / 2
    assert top1 == pytest.approx(pooled) and energy == clean["cost"]["energy_pj"]
    rows = report.read_csv(report.write_report([tmp_path]).csv)
    assert {r["condition"] for r in rows} == {"rand_sigma=0", "rand_sigma=0.6"}
    with pytest.raises(ValueError, match="not a condition key"):
        run.trial(compose_run("simulate", "conditions=[{macro.adc_bits:4}]"))


def test_a_chip_population_has_one_result_per_chip_and_a_yield(compose_run, tmp_path):
    """simulate.chips=3: three chips (chip_seed seed, seed+1, seed+2), each its own fixed
    column pattern; chip_top1, worst chip and yield follow from them."""
    cfg = compose_run(
        "simulate", "noise.column_offset_lsb=0.25", "simulate.chips=3",
        "simulate.float=false", "seed=2",
    )  # fmt: skip
    res = builders.simulate(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["chips"] == 3 and saved["repeats"] == 3
    tops = saved["chip_top1"]
    assert tops == saved["sim_top1_runs"] and len(set(tops)) == 3  # three different chips
    assert saved["worst_chip_top1"] == min(tops)
    assert saved["yield_threshold"] == pytest.approx(saved["inference_top1"] - 0.01)
    passing = sum(t >= saved["yield_threshold"] for t in tops)
    assert saved["yield_top1"] == passing / 3
    assert "worst of 3 chips" in builders.format_table(res)
    # chip 0 is chip_seed = seed: the same chip as a one-chip run of noise.chip_seed=2
    one = builders.simulate(
        compose_run("simulate", "noise.column_offset_lsb=0.25",
                    "noise.chip_seed=2", "seed=2", "simulate.float=false",
                    "simulate.inference=false")
    )  # fmt: skip
    assert one["chip_top1"] == [tops[0]] and one["yield_top1"] is None


def test_repeats_of_one_chip_keep_its_fixed_pattern(compose_run):
    """simulate.chips=1 with temporal noise: every repeat runs on the same chip (chip_seed =
    seed), so the runs equal those of an explicit noise.chip_seed=seed, not one chip per
    repeat's noise seed."""
    common = ["noise.column_offset_lsb=0.25", "noise.rand_sigma=0.2", "simulate.repeats=2",
              "seed=2", "simulate.float=false", "simulate.inference=false"]  # fmt: skip
    implicit = builders.simulate(compose_run("simulate", *common))
    explicit = builders.simulate(compose_run("simulate", *common, "noise.chip_seed=2"))
    assert implicit["sim_top1_runs"] == explicit["sim_top1_runs"]
    other = builders.simulate(compose_run("simulate", *common, "noise.chip_seed=3"))
    assert other["sim_top1_runs"] != implicit["sim_top1_runs"]


def test_calibration_file_gives_the_calibrated_result(compose_run, tmp_path):
    """simulate.calibrate=mse saves calibration.json; calibration=PATH applies it: the same
    simulated top-1, and better than the uncalibrated 5-bit ADC."""
    fast = ["macro.adc_bits=5", "simulate.float=false", "simulate.inference=false"]
    made = builders.simulate(
        compose_run("simulate", *fast, "simulate.calibrate=mse", "simulate.calibration_batches=2")
    )
    path = tmp_path / "calibration.json"
    assert path.is_file() and made["calibration"]["file"] == str(path)
    layers = made["calibration"]["layers"]
    assert [c["layer"] for c in layers] == ["conv2", "conv3", "fc"]  # conv1 is digital
    assert all(0 < c["full_scale"] < c["nrow"] and 0 <= c["clip_rate"] < 0.01 for c in layers)
    assert all(len(c["code_histogram"]) == 32 for c in layers)
    applied = builders.simulate(compose_run("simulate", *fast, f"calibration={path}"))
    assert applied["sim_top1"] == made["sim_top1"]
    assert applied["calibration"]["layers"] == layers and not applied["calibration"]["made"]
    plain = builders.simulate(compose_run("simulate", *fast))
    assert plain["calibration"] is None and made["sim_top1"] > plain["sim_top1"] + 0.5


def test_per_adc_calibration_through_the_app(compose_run):
    """simulate.calibration_granularity=column calibrates one full scale per ADC (results
    say so) and beats the uncalibrated 4-bit ADC."""
    fast = ["macro.adc_bits=4", "simulate.float=false", "simulate.inference=false"]
    made = builders.simulate(
        compose_run(
            "simulate", *fast, "simulate.calibrate=max", "simulate.calibration_granularity=column",
            "simulate.calibration_batches=2",
        )
    )  # fmt: skip
    assert made["calibration"]["granularity"] == "column"
    assert made["calibration"]["column_steps"] is None
    assert all(c["clip_rate"] == 0 for c in made["calibration"]["layers"])
    plain = builders.simulate(compose_run("simulate", *fast))
    assert made["sim_top1"] > plain["sim_top1"] + 0.2
    trimmed = builders.simulate(
        compose_run(
            "simulate", *fast, "simulate.calibrate=max", "simulate.calibration_granularity=column",
            "simulate.calibration_batches=2", "simulate.calibration_column_steps=2",
        )
    )  # fmt: skip
    assert trimmed["calibration"]["column_steps"] == 2
    from lightning_modules.results import format_table

    assert "calibrated (max per ADC, 2 trim settings, 2 batches)" in format_table(trimmed)
    assert "calibrated (max per ADC, 2 batches)" in format_table(made)
    saved = Calibration.load(trimmed["calibration"]["file"])
    for lc in saved.layers.values():
        if lc.column_full_scale is not None:
            assert len({n for row in lc.column_full_scale for n in row}) <= 2
    assert all(c["clip_rate"] == 0 for c in trimmed["calibration"]["layers"])


def test_chips_are_passes_of_the_one_plan():
    """simulate.chips=2: each chip runs the repeats with its own noise seeds (chip 0's are the
    single chip's); noise off: one pass per chip stands for its repeats."""
    from omegaconf import OmegaConf

    from lightning_modules.run import plan_passes

    opts = OmegaConf.create(
        {"float": False, "inference": True, "repeats": 2, "sensitivity": False, "chips": 2}
    )
    plan = plan_passes(opts, 5, stochastic=True, layers=[])
    assert [(p.kind, p.chip, p.seed, p.copies) for p in plan] == [
        ("inference", None, None, 1),
        ("sim", 0, 5, 1),
        ("sim", 0, 6, 1),
        ("sim", 1, 7, 1),
        ("sim", 1, 8, 1),
    ]
    quiet = plan_passes(opts, 5, stochastic=False, layers=[])
    assert [(p.chip, p.copies) for p in quiet if p.kind == "sim"] == [(0, 2), (1, 2)]
