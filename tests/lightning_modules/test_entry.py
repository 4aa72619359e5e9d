"""run_task: a user's mistake is one line, a bug keeps its traceback."""

from __future__ import annotations

import math

import pytest
from omegaconf import OmegaConf

from lightning_modules.entry import run_task


def _mistake(cfg):
    raise ValueError("macro.adc_bits=0 must be >= 1")


def _missing_file(cfg):
    with open(cfg.output_dir + "/no/such/file.csv") as f:
        return f.read()


def _bug(cfg):
    return list(zip([1, 2], [3], strict=True))


def test_a_mistake_is_one_line_and_leaves_no_folder(tmp_path):
    cfg = OmegaConf.create({"output_dir": str(tmp_path / "run")})
    with pytest.raises(SystemExit) as e:
        run_task(_mistake, cfg)
    assert str(e.value.code) == "error: macro.adc_bits=0 must be >= 1"
    with pytest.raises(SystemExit) as e:
        run_task(_missing_file, cfg)
    assert str(e.value.code).startswith("error: [Errno 2] No such file or directory")
    assert not (tmp_path / "run").exists()


def test_a_bug_keeps_its_traceback(tmp_path):
    """A ValueError raised by a builtin inside the code is not the user's: it propagates."""
    cfg = OmegaConf.create({"output_dir": str(tmp_path / "run")})
    with pytest.raises(ValueError, match="zip\\(\\) argument 2 is shorter") as e:
        run_task(_bug, cfg)
    assert e.traceback[-1].name == "_bug"


def test_in_a_sweep_a_failed_job_says_why_and_the_sweep_goes_on(tmp_path, monkeypatch):
    from lightning_modules import entry

    monkeypatch.setattr(entry, "_in_multirun", lambda: True)
    monkeypatch.setattr(entry, "_FAILED", [])
    mistake = OmegaConf.create({"output_dir": str(tmp_path / "a")})
    bug = OmegaConf.create({"output_dir": str(tmp_path / "b")})
    assert math.isnan(run_task(_mistake, mistake)) and math.isnan(run_task(_bug, bug))
    assert (tmp_path / "a/error.txt").read_text() == "error: macro.adc_bits=0 must be >= 1\n"
    text = (tmp_path / "b/error.txt").read_text()
    assert text.startswith("Traceback") and "zip() argument 2 is shorter" in text
    assert entry.exit_status() == 1 and len(entry._FAILED) == 2
