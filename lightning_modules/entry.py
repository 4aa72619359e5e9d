"""What ``simulate.py`` and ``train.py`` do around their Hydra main: user mistakes as one line.

* :func:`preflight` runs before Hydra: ``train.py``'s resume (:func:`.resume.prepare_resume`)
  and, for a multirun, every job's config checked before the first job runs.
* :func:`run_task` runs the task in a job: a user mistake becomes ``error: ...`` and exit 1 (a
  refused single run leaves no output folder behind); in a multirun the failed job writes
  ``error.txt`` into its folder and the sweep goes on to its report; :func:`exit_status`
  then says how many failed.

A user mistake is a ``ValueError`` raised on purpose (a ``raise`` statement: the checks of
``asim``, of this app, of Hydra) or a missing file. A ``ValueError`` that a Python builtin
raised inside our code (``zip(..., strict=True)``, ``int("x")``, ...) is a bug: it keeps its
traceback (in a multirun: printed and written to the job's ``error.txt``).
"""

from __future__ import annotations

import math
import shutil
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .checks import check_sweep
from .resume import RunFinished, prepare_resume
from .run import RunInterrupted

__all__ = ["USER_ERRORS", "exit_status", "preflight", "run_task"]

USER_ERRORS = (ValueError, FileNotFoundError)
"""Exceptions that are a user's mistake: reported in one line, never as a traceback."""

_FAILED: list[str] = []


def _user_mistake(e: BaseException) -> bool:
    """Whether ``e`` (one of USER_ERRORS) is a user's mistake rather than a bug (module doc)."""
    if isinstance(e, FileNotFoundError):
        return True
    frames = traceback.extract_tb(e.__traceback__)
    return not frames or (frames[-1].line or "").lstrip().startswith("raise")


def _multirun(argv: Sequence[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in argv)


def _overrides(argv: Sequence[str]) -> list[str]:
    return [a for a in argv if not a.startswith("-") and "=" in a]


def preflight(task: str, argv: Sequence[str]) -> list[str]:
    """The command line for Hydra, or SystemExit with one line: exit 0 for a finished run
    given ``resume=``, 1 for a bad resume or sweep (nothing is written in either case)."""
    argv = list(argv)
    try:
        if task == "train" and not _multirun(argv):
            argv = prepare_resume(argv)
        if _multirun(argv) and not any(a.startswith("--") and a != "--multirun" for a in argv):
            bad = check_sweep(task, _overrides(argv))
            if bad:
                for line in bad:
                    print(f"error: {line}", file=sys.stderr)
                raise SystemExit(
                    f"error: {len(bad)} job(s) of the sweep are invalid (listed above); no job ran"
                )
    except RunFinished as e:
        print(e, flush=True)
        raise SystemExit(0) from None
    except USER_ERRORS as e:
        if not _user_mistake(e):
            raise
        raise SystemExit(f"error: {e}") from None
    return argv


def _discard_if_empty(folder: Path) -> None:
    """Remove a run folder that holds nothing but Hydra's bookkeeping and logs."""
    if not folder.is_dir():
        return
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if path.is_dir() or rel.parts[0] == ".hydra" or path.suffix == ".log":
            continue
        return
    shutil.rmtree(folder, ignore_errors=True)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_task(fn: Callable[[DictConfig], Any], cfg: DictConfig, failed_value: Any = math.nan):
    """``fn(cfg)`` with user mistakes and Ctrl-C turned into one line (see the module doc);
    in a multirun a failed job returns ``failed_value`` so the sweep and its report go on."""
    try:
        return fn(cfg)
    except RunFinished as e:
        print(e, flush=True)
        raise SystemExit(0) from None
    except USER_ERRORS as e:
        line, mistake = f"error: {e}", _user_mistake(e)
        folder = Path(str(cfg.output_dir))
        if not _in_multirun():
            if not mistake:
                raise
            _discard_if_empty(folder)
            raise SystemExit(line) from None
        text = line if mistake else "".join(traceback.format_exception(e)).rstrip()
        print(text, file=sys.stderr, flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "error.txt").write_text(text + "\n")
        _FAILED.append(f"{folder.name}: {line}")
        return failed_value
    except RunInterrupted as e:  # Ctrl-C: one line saying what was kept
        print(e, file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def exit_status() -> int:
    """After a multirun: 0, or 1 with one line per failed job on stderr."""
    if not _FAILED:
        return 0
    for line in _FAILED:
        print(f"failed job {line}", file=sys.stderr)
    print(
        f"error: {len(_FAILED)} job(s) failed (error.txt in their folders); the report lists them",
        file=sys.stderr,
    )
    return 1
