"""Exact, safe resume of a training run.

A resumed run continues the interrupted one as if it had never stopped:

* :class:`ResumeState` (a Lightning callback every training run has) shuffles epoch ``e`` with
  a generator seeded ``seed + e`` (the convention of torch's ``DistributedSampler``, which
  Lightning gives the epoch under DDP), saves the torch / numpy / Python RNG states and the
  run's configuration in every checkpoint, and restores the RNG states at the start of the
  first resumed epoch. Optimizer, scheduler, epoch and callback states are Lightning's.
* :func:`prepare_resume` runs before Hydra in ``train.py``: it finds the run folder of the
  checkpoint, re-applies the run's own overrides (``.hydra/overrides.yaml``) so the command
  needs none, refuses an override that changes the run (one line naming both values), points
  Hydra at the same folder, and stops a finished run before anything is written.

Exactness holds for ``dataset.num_workers=0`` (the default); with worker processes the
workers' own random augmentations are not part of a checkpoint.
"""

from __future__ import annotations

import random
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import RandomSampler

from asim.checkpoint import read_checkpoint

__all__ = [
    "RESUME_MAY_CHANGE",
    "ResumeState",
    "RunFinished",
    "check_resumed_config",
    "completed_epochs",
    "prepare_resume",
    "read_training_checkpoint",
    "resume_command",
]

RESUME_MAY_CHANGE = (
    "resume",
    "trainer.max_epochs",
    "progress_percent",
    "trainer.enable_progress_bar",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
)
"""Keys a resumed run may set differently from the run it continues (``hydra.*`` too):
where and how long it runs, not what it computes."""


class RunFinished(Exception):
    """``resume`` of a run that has trained all its epochs: nothing to do (exit 0)."""


# ------------------------------------------------------------------------------------ callback


def _rng_states() -> dict[str, Any]:
    """Every global RNG state, as tensors and plain values (a ``weights_only`` checkpoint)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(internal), py_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = states["python"]
    random.setstate((version, tuple(internal), py_gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ResumeState(L.Callback):
    """Per-epoch data order, RNG states and the run's configuration, kept in checkpoints.

    Args:
        seed: the run's seed; epoch ``e`` shuffles with ``torch.Generator().manual_seed(seed
            + e)`` (single process; under DDP Lightning sets the ``DistributedSampler``'s epoch).
        config: the run's configuration as YAML (unresolved), stored in every checkpoint so a
            resumed run can check it continues the same run.
    """

    def __init__(self, seed: int, config: str) -> None:
        self.seed = int(seed)
        self.config = config
        self._restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_states(), "config": self.config}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore = state_dict.get("rng")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        # RandomSampler draws its permutation lazily, at the epoch's first batch: after this
        if isinstance(sampler, RandomSampler):
            epoch = trainer.current_epoch
            sampler.generator = torch.Generator().manual_seed(self.seed + epoch)
        if self._restore is not None:  # the first epoch after a resume
            _set_rng_states(self._restore)
            self._restore = None


# ------------------------------------------------------------------------- checkpoint reading


def read_training_checkpoint(path: str | Path, option: str = "resume") -> dict[str, Any]:
    """A Lightning training checkpoint, or a one-line ValueError naming what the file is."""
    ckpt = read_checkpoint(path, option=option)
    if not isinstance(ckpt, dict) or "loops" not in ckpt or "state_dict" not in ckpt:
        what = (
            "a reference .pkl"
            if isinstance(ckpt, dict) and "model_state_dict" in ckpt
            else (
                "a weights-only state_dict"
                if isinstance(ckpt, dict)
                else f"a {type(ckpt).__name__}"
            )
        )
        raise ValueError(
            f"{option}={path} is {what}, not a Lightning training checkpoint: {option}= takes "
            "a run's checkpoints/last.ckpt; to start from these weights use ckpt=PATH"
        )
    return ckpt


def completed_epochs(ckpt: dict[str, Any]) -> int:
    """Epochs the checkpoint's run has finished (checkpoints are written at epoch ends)."""
    return int(ckpt.get("epoch", -1)) + 1


def saved_config(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The run configuration :class:`ResumeState` stored in the checkpoint (None: an older
    checkpoint without one)."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("ResumeState") and isinstance(state, dict):
            return yaml.safe_load(state.get("config") or "{}")
    return None


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def _may_change(key: str) -> bool:
    return key in ("output_dir", "export") or key in RESUME_MAY_CHANGE or key.startswith("hydra.")


def check_resumed_config(cfg: DictConfig, ckpt: dict[str, Any], path: str) -> None:
    """One-line ValueError when ``cfg`` differs from the configuration the checkpoint's run
    was started with (beyond :data:`RESUME_MAY_CHANGE`); both values are named."""
    saved = saved_config(ckpt)
    if saved is None:
        return
    have = _flat(yaml.safe_load(OmegaConf.to_yaml(cfg)))
    want = _flat(saved)
    for key in sorted(set(have) | set(want)):
        if _may_change(key) or have.get(key) == want.get(key):
            continue
        raise ValueError(
            f"resume={path}: the run was started with {key}={_show(want.get(key))}; this "
            f"command gives {key}={_show(have.get(key))}. A resumed run continues the run as "
            "it was started: drop the override (or start a new run with ckpt=PATH)"
        )


def _show(value: Any) -> str:
    return "(unset)" if value is None else str(value)


# ---------------------------------------------------------------------------- before Hydra


def _split(item: str) -> tuple[str, str | None]:
    key, sep, value = item.partition("=")
    return key.lstrip("+~"), (value if sep else None)


def _find(items: Sequence[str], key: str) -> str | None:
    found = None
    for item in items:
        k, v = _split(item)
        if k == key and v is not None:
            found = v
    return found


def _run_folder(value: str, run_dir: str | None) -> tuple[Path, Path | None]:
    """(checkpoint, run folder or None) of ``resume=VALUE``."""
    from .config import resolve_path

    if value == "auto":
        if run_dir is None:
            raise ValueError(
                "resume=auto continues the run in hydra.run.dir: add hydra.run.dir=<the run "
                "folder>, or pass resume=<the run folder>"
            )
        folder = resolve_path(run_dir)
        ckpt = folder / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"resume=auto: no checkpoints/last.ckpt in {folder}; pass resume=PATH"
            )
        return ckpt, folder
    path = resolve_path(value)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"resume={value}: no such Lightning checkpoint ({path})")
    folder = path.parent.parent
    if path.parent.name == "checkpoints" and (folder / ".hydra").is_dir():
        return path, folder
    return path, None


def prepare_resume(argv: Sequence[str]) -> list[str]:
    """The command-line overrides of ``train.py`` with a resumed run's own ones restored.

    Without ``resume=`` the overrides come back unchanged. With it: the checkpoint is read
    (a one-line error for an unreadable or wrong-kind file), its run folder becomes
    ``hydra.run.dir`` and the run's ``.hydra/overrides.yaml`` is applied first; an override
    that gives another value to one of them, or sets a key the run did not, is a ValueError
    (except :data:`RESUME_MAY_CHANGE`). A run that has finished its ``trainer.max_epochs``
    raises :class:`RunFinished`, unless the command raises ``trainer.max_epochs``.
    """
    argv = list(argv)
    items = [a for a in argv if not a.startswith("-") and "=" in a]
    value = _find(items, "resume")
    if value in (None, "null"):
        return argv
    run_dir = _find(items, "hydra.run.dir")
    ckpt_path, folder = _run_folder(value, run_dir)
    ckpt = read_training_checkpoint(ckpt_path)

    restored: list[str] = []
    if folder is not None and (folder / ".hydra" / "overrides.yaml").is_file():
        saved = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or []
        given = {_split(i)[0]: i for i in items}
        saved_keys = {_split(str(s))[0] for s in saved}
        for item in saved:
            key, old = _split(str(item))
            if key == "resume" or key.startswith("hydra."):
                continue
            if key in given:
                new = _split(given[key])[1]
                if new != old and key not in RESUME_MAY_CHANGE:
                    raise ValueError(
                        f"resume: the run in {folder} was started with {key}={old}; this "
                        f"command gives {key}={new}. A resumed run continues the run as it was "
                        "started: drop the override (or start a new run with ckpt=PATH)"
                    )
                continue
            restored.append(str(item))
        for key, item in given.items():
            if key not in saved_keys and not _may_change(key) and key != "resume":
                raise ValueError(
                    f"resume: the run in {folder} was started without {item}; a resumed run "
                    "continues the run as it was started: drop it (or start a new run with "
                    "ckpt=PATH)"
                )

    done = completed_epochs(ckpt)
    asked = _find(items, "trainer.max_epochs")
    planned = asked if asked is not None else _find(restored, "trainer.max_epochs")
    if planned is None:
        cfg = saved_config(ckpt)
        if cfg is None and folder is not None and (folder / ".hydra" / "config.yaml").is_file():
            cfg = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
        planned = ((cfg or {}).get("trainer") or {}).get("max_epochs")
    if planned is not None and str(planned) not in ("-1", "null") and done >= int(planned):
        where = folder or ckpt_path
        if asked is not None:
            raise ValueError(
                f"resume: the run in {where} has trained {done} epochs already; "
                f"trainer.max_epochs={asked} adds none: give more than {done}"
            )
        raise RunFinished(
            f"the run in {where} is finished ({done} of {planned} epochs); nothing changed. "
            f"To train on, add trainer.max_epochs=N with N > {done}"
        )
    out = [*restored, *argv]
    if folder is not None and run_dir is None:
        out.append(f"hydra.run.dir={_hydra_quoted(folder)}")
    if value != "auto":
        resume = f"resume={_hydra_quoted(ckpt_path)}"
        out = [a if _split(a)[0] != "resume" else resume for a in out]
    return out


def _hydra_quoted(value: Any) -> str:
    """A path as a value of Hydra's override grammar: quoted when it has a character the
    grammar reads (a sweep job's folder has ``=`` and ``,``)."""
    text = str(value)
    return text if re.fullmatch(r"[\w/.+@%-]*", text) else "'" + text.replace("'", "\\'") + "'"


def resume_command(last: str | None) -> str:
    """The command that continues an interrupted run (printed on Ctrl-C), quoted for a shell."""
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0].endswith(".py") else "train.py"
    if not last:
        return "no checkpoint yet: start it again"
    return f"python {script} {shlex.quote(f'resume={last}')}"
