"""Exact, safe resume: an interrupted and resumed run equals the uninterrupted one bit for bit."""

from __future__ import annotations

import csv
import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lightning_modules import builders
from lightning_modules.module import ACiMClassifier
from lightning_modules.resume import RunFinished, prepare_resume, resume_command

# 4 epochs of 4 batches; mixup draws from the global RNG, the scheduler steps at epochs 2 and 3
TINY = [
    "trainer.max_epochs=4",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "mixup_alpha=1.0",
    "logger=csv",
    "trainer.enable_progress_bar=false",
]


def _train(folder: Path, *extra: str) -> dict:
    return builders.train(builders.compose("train", [*TINY, *extra, f"output_dir={folder}"]))


def _interrupt_at(monkeypatch, epoch: int, batch: int) -> None:
    def stop(self, batch_, batch_idx):
        if self.current_epoch == epoch and batch_idx == batch:
            raise KeyboardInterrupt

    monkeypatch.setattr(ACiMClassifier, "on_train_batch_start", stop, raising=False)


def _same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("whole")
    return folder, _train(folder)


def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(
    uninterrupted, tmp_path, monkeypatch
):
    whole, want = uninterrupted
    _interrupt_at(monkeypatch, epoch=2, batch=1)
    with pytest.raises(builders.RunInterrupted, match=r"continue with: python \S+ resume=\S+"):
        _train(tmp_path)
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    monkeypatch.undo()
    got = _train(tmp_path, "resume=auto")

    for key in ("best_val_acc", "best_epoch", "last_val_acc", "val_top1", "val_top5", "epochs"):
        assert got[key] == want[key], key
    _same_tensors(torch.load(got["export"]), torch.load(want["export"]))
    a = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=False)
    _same_tensors(a["state_dict"], b["state_dict"])
    assert a["lr_schedulers"] == b["lr_schedulers"]
    # the per-epoch validation accuracy of every epoch, before and after the interruption
    assert _val_acc(tmp_path) == _val_acc(whole)


def _val_acc(folder: Path) -> list[tuple[str, str]]:
    """(epoch, val/acc) of every validation, from metrics.csv and the kept metrics-1.csv."""
    rows = []
    for name in ("metrics-1.csv", "metrics.csv"):
        if (folder / name).is_file():
            with open(folder / name) as f:
                rows += [(r["epoch"], r["val/acc"]) for r in csv.DictReader(f) if r["val/acc"]]
    return rows


def test_the_epoch_shuffle_depends_on_seed_and_epoch_only(tmp_path):
    """Two epochs see different orders; the same epoch of another run the same order."""
    from torch.utils.data import RandomSampler

    from lightning_modules.resume import ResumeState

    cb = ResumeState(seed=3, config="")

    class Trainer:
        current_epoch = 0
        train_dataloader = type("L", (), {"sampler": RandomSampler(range(50))})()

    orders = []
    for epoch in (0, 1, 0):
        Trainer.current_epoch = epoch
        cb.on_train_epoch_start(Trainer, None)
        orders.append(list(Trainer.train_dataloader.sampler))
    assert orders[0] == orders[2] and orders[0] != orders[1]


def test_resume_restores_the_runs_own_overrides_and_folder(uninterrupted):
    whole, _ = uninterrupted
    hydra = whole / ".hydra"
    hydra.mkdir(exist_ok=True)
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(["trainer.max_epochs=6", "seed=0"]))
    last = whole / "checkpoints" / "last.ckpt"
    argv = prepare_resume([f"resume={last}"])
    assert "trainer.max_epochs=6" in argv and "seed=0" in argv
    assert f"hydra.run.dir={whole}" in argv
    with pytest.raises(ValueError, match=r"started with seed=0; this command gives seed=1"):
        prepare_resume([f"resume={last}", "seed=1"])
    with pytest.raises(ValueError, match=r"started without optimizer.lr=0.1"):
        prepare_resume([f"resume={last}", "optimizer.lr=0.1"])


def test_resume_of_a_finished_run_changes_no_file(uninterrupted):
    whole, _ = uninterrupted
    hydra = whole / ".hydra"
    hydra.mkdir(exist_ok=True)
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(TINY))
    before = {p: p.read_bytes() for p in whole.rglob("*") if p.is_file()}
    for argv in (["resume=auto", f"hydra.run.dir={whole}"], [f"resume={whole}"]):
        with pytest.raises(RunFinished, match=r"is finished \(4 of 4 epochs\); nothing changed"):
            prepare_resume(argv)
    with pytest.raises(ValueError, match="trained 4 epochs already"):
        prepare_resume([f"resume={whole}", "trainer.max_epochs=3"])
    # train() refuses it too (the Python API has no Hydra step before it)
    with pytest.raises(RunFinished):
        _train(whole, "resume=auto")
    after = {p: p.read_bytes() for p in whole.rglob("*") if p.is_file()}
    assert after.keys() - before.keys() <= {whole / "train.log"} and all(
        after[p] == before[p] for p in before
    )


def test_the_resume_command_of_a_sweep_job_can_be_pasted(uninterrupted, tmp_path):
    """A sweep job's folder has `=` and `,` (here a space too): the printed command is one
    shell word per argument, and what goes on to Hydra parses back to the same paths."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    whole, _ = uninterrupted
    job = tmp_path / "sweep" / "seed=0,optimizer.lr=0.05 b"
    shutil.copytree(whole / "checkpoints", job / "checkpoints")
    (job / ".hydra").mkdir()
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(TINY))
    last = job / "checkpoints" / "last.ckpt"
    argv = shlex.split(resume_command(str(last)))[2:]  # as a shell hands it to train.py
    assert argv == [f"resume={last}"]
    hydra_argv = prepare_resume([*argv, "trainer.max_epochs=6"])
    parsed = OverridesParser.create().parse_overrides(hydra_argv)
    values = {o.key_or_group: o.value() for o in parsed}
    assert values["resume"] == str(last) and values["hydra.run.dir"] == str(job)
    assert values["trainer.max_epochs"] == 6


def test_resume_checks_the_config_in_the_checkpoint(uninterrupted):
    whole, _ = uninterrupted
    with pytest.raises(ValueError, match=r"started with optimizer.lr=0.05; this command gives"):
        _train(whole, "resume=auto", "trainer.max_epochs=5", "optimizer.lr=0.1")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"PK\x03\x04truncated", "is not a readable PyTorch checkpoint: truncated"),
        (b"hello, I am a text file\n", "is not a readable PyTorch checkpoint"),
        (None, "is a weights-only state_dict, not a Lightning training checkpoint"),
    ],
)
def test_wrong_resume_files_are_one_line(tmp_path, content, expected):
    path = tmp_path / "x.ckpt"
    if content is None:
        torch.save({"w": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=expected) as info:
        prepare_resume([f"resume={path}"])
    assert "\n" not in str(info.value)


def test_an_export_of_another_run_is_not_overwritten(tmp_path):
    other = tmp_path / "other.pt"
    other.write_bytes(b"another run's model")
    with pytest.raises(ValueError, match="exists and belongs to another run"):
        _train(tmp_path / "run", f"export={other}")
    assert other.read_bytes() == b"another run's model"


def test_results_record_the_resume(uninterrupted):
    whole, want = uninterrupted
    results = json.loads((whole / "results.json").read_text())
    assert results["resumed_from"] is None and results["epochs"] == want["epochs"] == 4
