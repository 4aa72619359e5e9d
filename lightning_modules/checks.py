"""Every check that needs no model pass, run before the first one.

:func:`check_run` validates a composed config: the macro and noise configs (ranges, and
measured noise tables/histograms parsed now, not at the first simulated batch), the checkpoint
file (readable), keys a primary
config does not use, combinations that would silently do nothing, and values outside the
physics of an SRAM macro (``force=true`` runs them anyway). :func:`check_sweep` does it for
every job of a basic multirun before the first job runs. Errors are one-line ValueErrors
(FileNotFoundError for a missing file) the entry points print as ``error: ...``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

from omegaconf import DictConfig

from asim.calibrate import GRANULARITIES, METHODS
from asim.checkpoint import read_checkpoint
from asim.noise import build_noise

from .config import SimulateSchema, TrainSchema, macro_config, noise_config, resolve_path

__all__ = ["MAX_NOISE_PERCENT", "MAX_NROW", "check_run", "check_sweep"]

MAX_NOISE_PERCENT = 10.0
"""Read-out noise above this (% of the ADC full scale, about 25 LSB of an 8-bit ADC) is
beyond any published macro: most likely a fraction typed as a percentage."""
MAX_NROW = 4096
"""Rows summed on one bit line: more than any published SRAM compute-in-memory array."""

_SCHEMAS = {"simulate": SimulateSchema, "train": TrainSchema}
_OTHER = {"simulate": "train.py", "train": "simulate.py"}


def _unknown_keys(cfg: DictConfig, task: str) -> None:
    """Root keys the task's schema does not have (added with ``+KEY=``) would be ignored."""
    known = {f.name for f in dataclasses.fields(_SCHEMAS[task])} | {"hydra"}
    twin = "train" if task == "simulate" else "simulate"
    other = {f.name for f in dataclasses.fields(_SCHEMAS[twin])}
    for key in cfg:
        if key in known:
            continue
        hint = f"it is a {_OTHER[task]} option" if key in other else "no option has that name"
        if key == "resume" and task == "simulate":
            hint = "a simulation has no training state to continue; run it again instead"
        raise ValueError(f"+{key}= is not used by {task}.py ({hint}): drop it")


def _plausible(cfg: DictConfig, macro, noise) -> None:
    """Values outside the physics stop the run unless ``force=true``."""
    if cfg.get("force"):
        return
    percent = noise.at_adc(macro.adc_bits)  # LSB sigmas as % of full scale
    for name in ("rand_sigma", "nonlinear_sigma"):
        value = getattr(percent, name)
        if getattr(noise, f"{name}_lsb") > 0 and value > MAX_NOISE_PERCENT:
            lsb = getattr(noise, f"{name}_lsb")
            raise ValueError(
                f"noise.{name}_lsb={lsb:g} is {value:.3g} % of the {macro.adc_bits}-bit ADC's "
                f"full scale (above {MAX_NOISE_PERCENT:g} %): did you mean less? If meant, "
                "add force=true"
            )
        if value > MAX_NOISE_PERCENT:
            raise ValueError(
                f"noise.{name}={value:g} is {value:g} % of the ADC full scale (above "
                f"{MAX_NOISE_PERCENT:g} %; one 8-bit LSB is 0.392 %): did you mean "
                f"noise.{name}={value / 100:g}? If meant, add force=true"
            )
    if noise.cell_sigma > 100:
        raise ValueError(
            f"noise.cell_sigma={noise.cell_sigma:g} is above 100 % of a cell's unit current: "
            "did you mean a fraction of it? If meant, add force=true"
        )
    if macro.nrow > MAX_NROW:
        raise ValueError(
            f"macro.nrow={macro.nrow} rows on one bit line is beyond any SRAM array "
            f"(> {MAX_NROW}); if meant, add force=true"
        )


def _no_ops(macro, noise) -> None:
    """Settings that would be ignored or do nothing."""
    if noise.file is not None and (
        noise.rand_sigma > 0
        or noise.nonlinear_sigma > 0
        or noise.rand_sigma_lsb > 0
        or noise.nonlinear_sigma_lsb > 0
    ):
        raise ValueError(
            f"noise.file (a measured table) replaces the Gaussian terms: "
            f"noise.rand_sigma={noise.rand_sigma:g}, noise.nonlinear_sigma="
            f"{noise.nonlinear_sigma:g} (or their _lsb forms) would be ignored; set them to 0, "
            "or use noise=gaussian"
        )
    if macro.vote_levels > 0 and macro.vote_samples == 1:
        raise ValueError(
            f"macro.vote_levels={macro.vote_levels} votes over macro.vote_samples=1 draw, "
            "which changes nothing: set macro.vote_samples=3 (or another odd count > 1), or "
            "macro.vote_levels=0"
        )
    if macro.vote_samples > 1 and macro.vote_levels == 0:
        raise ValueError(
            f"macro.vote_samples={macro.vote_samples} with macro.vote_levels=0 votes on no "
            "cycle: set macro.vote_levels=N (the MSB cycles to vote on), or vote_samples=1"
        )


@functools.lru_cache(maxsize=8)
def _readable(path: str, mtime_ns: int, size: int) -> None:
    read_checkpoint(path)


def _check_ckpt(cfg: DictConfig) -> None:
    """``ckpt`` names a readable PyTorch file (whether it fits the model is checked when the
    model is built, still before the first pass)."""
    ckpt = cfg.get("ckpt")
    if ckpt is None:
        return
    path = resolve_path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: ckpt={ckpt} ({path})")
    stat = path.stat()
    _readable(str(path), stat.st_mtime_ns, stat.st_size)


def check_run(cfg: DictConfig, task: str) -> None:
    """Validate ``cfg`` for ``task`` (``simulate`` or ``train``) without running a model.

    Raises:
        ValueError: one line naming the override to change.
        FileNotFoundError: a file named by the config is missing.
    """
    _unknown_keys(cfg, task)
    macro, noise = macro_config(cfg), noise_config(cfg)
    build_noise(noise, macro)  # parse measured tables and histograms now (cached for the run)
    _no_ops(macro, noise)
    _plausible(cfg, macro, noise)
    _check_ckpt(cfg)
    if task == "simulate":
        repeats = cfg.simulate.repeats
        if repeats < 1:
            raise ValueError(f"simulate.repeats={repeats!r} must be an integer >= 1")
        _check_chips_and_calibration(cfg, noise)
    else:
        plain = type(noise)()
        if changed := [f for f in dataclasses.fields(noise) if getattr(noise, f.name) !=
                       getattr(plain, f.name)]:  # fmt: skip
            given = ", ".join(f"noise.{f.name}={getattr(noise, f.name)}" for f in changed[:2])
            raise ValueError(
                f"{given}: the read-out noise is simulate.py's; train.py does not use it (QAT "
                "trains noise-free, NAT with trim_noise=PERCENT): drop the noise overrides"
            )
        for key in ("trim_noise", "attn_trim_noise"):
            if cfg[key] < 0:
                raise ValueError(f"{key}={cfg[key]} must be >= 0 (percent)")
        if cfg.mixup_alpha < 0:
            raise ValueError(
                f"mixup_alpha={cfg.mixup_alpha} must be >= 0 (0: off; 1.0: the reference's)"
            )


def _check_chips_and_calibration(cfg: DictConfig, noise) -> None:
    """``simulate.chips``: a positive count, and chips that can differ; ``simulate.calibrate``
    a method, ``calibration`` a file, not both."""
    opts = cfg.simulate
    chips = opts.get("chips", 1)
    if chips < 1:
        raise ValueError(f"simulate.chips={chips!r} must be an integer >= 1")
    if chips > 1 and not (noise.fixed_pattern or noise.enabled or noise.cell_sigma):
        raise ValueError(
            f"simulate.chips={chips}: nothing differs between chips (no fixed pattern, no "
            "noise); set noise.column_offset_lsb=0.5 (or column_gain_pct, noise.rand_sigma) "
            "or simulate.chips=1"
        )
    method, path = opts.get("calibrate"), cfg.get("calibration")
    if method is not None and method not in METHODS:
        raise ValueError(f"simulate.calibrate={method}: choose one of {', '.join(METHODS)}")
    if method is not None and path is not None:
        raise ValueError(
            f"simulate.calibrate={method} and calibration={path}: calibrate anew or apply "
            "the saved calibration, not both (drop one)"
        )
    granularity = opts.get("calibration_granularity", "layer")
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"simulate.calibration_granularity={granularity}: choose one of "
            f"{', '.join(GRANULARITIES)}"
        )
    if granularity == "column" and method == "lloyd_max":
        raise ValueError(
            "simulate.calibrate=lloyd_max fits one level table per layer; set "
            "simulate.calibration_granularity=layer or calibrate with max, percentile or mse"
        )
    steps = opts.get("calibration_column_steps")
    if steps is not None and (granularity != "column" or steps < 1):
        raise ValueError(
            f"simulate.calibration_column_steps={steps}: an integer >= 1 (the settings of "
            "each ADC's reference trim), with simulate.calibration_granularity=column"
        )
    if opts.get("calibration_batches", 1) < 1:
        raise ValueError(
            f"simulate.calibration_batches={opts.calibration_batches} must be an integer >= 1"
        )
    if path is not None and not resolve_path(path).is_file():
        raise FileNotFoundError(f"calibration={path}: no such file (a run's calibration.json)")


def _job_overrides(overrides: Sequence[str]) -> list[list[str]] | None:
    """Every job's overrides of a basic multirun (Hydra's own sweep expansion), or None when
    another sweeper (e.g. Optuna) chooses the jobs."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    chooser = ("hparams_search", "hydra/sweeper")
    if any(o.split("=", 1)[0].lstrip("+~") in chooser for o in overrides):
        return None
    parsed = OverridesParser.create().parse_overrides(
        [o for o in overrides if not o.split("=", 1)[0].startswith("hydra.")]
    )
    jobs: list[list[str]] = []
    for batch in BasicSweeper.split_arguments(parsed, None):
        jobs.extend(list(job) for job in batch)
    return jobs


def check_sweep(task: str, overrides: Sequence[str]) -> list[str]:
    """Compose and :func:`check_run` every job of ``python TASK.py -m OVERRIDES``; returns one
    line per bad job (``job N (k=v,...): error``), empty when all are fine."""
    from hydra.errors import HydraException

    from .config import compose

    jobs = _job_overrides(list(overrides))
    if jobs is None:
        return []
    bad: list[str] = []
    for n, job in enumerate(jobs):
        try:
            cfg = compose(task, [*job, "output_dir=/nonexistent/sweep-check"])
            check_run(cfg, task)
        except (ValueError, FileNotFoundError, HydraException) as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            bad.append(f"job {n} ({','.join(job) or 'defaults'}): {msg}")
    return bad
