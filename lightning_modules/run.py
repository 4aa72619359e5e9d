"""Running: :func:`simulate` and :func:`train` of a composed config.

Nothing is lost: ``results.json`` is reserved when a run starts (never overwriting another
run's), rewritten after every simulation repeat with ``"complete": false`` until the last, and
an interrupt (Ctrl-C) keeps what finished and raises :class:`RunInterrupted` (the entry points
print its one line and exit 130).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from omegaconf import DictConfig, OmegaConf
from torch import nn

from asim import NoiseConfig, acim_modules, resample_noise, set_mode, set_sample_index
from asim.cost import CostConfig, estimate_cost
from asim.engine import backends_used, describe_backends, reset_backends_used

from .checks import check_run
from .config import (
    build_datamodule,
    build_float_model,
    build_trainer,
    convert_model,
    cost_config,
    job_dirname,
    load_weights,
    macro_config,
    noise_config,
    quiet_lightning,
    resolve_path,
    train_mode,
)
from .lm import ACiMLanguageModel
from .module import ACiMClassifier
from .report import objectives, sense
from .results import (
    TABLE_LOG,
    PassResult,
    ResultsFile,
    RunResult,
    describe_macros,
    describe_noise,
    format_table,
    hparams,
    ideal_parts,
    layer_macros,
    log_summary,
    mean_std,
    tensorboard_hparams,
)
from .resume import (
    ResumeState,
    RunFinished,
    check_resumed_config,
    completed_epochs,
    read_training_checkpoint,
    resume_command,
)

__all__ = ["RunFinished", "RunInterrupted", "simulate", "train", "trial"]

log = logging.getLogger(__name__)

YIELD_MARGIN = 0.01
"""The default yield threshold is quantized inference top-1 minus this (one point)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``str()`` is the one line saying what was kept."""


def _guarded(trainer: L.Trainer, fn, *args, **kwargs):
    """Call a Trainer loop; Lightning turns Ctrl-C into ``sys.exit(1)``: make it a
    KeyboardInterrupt again (and restore Ctrl-C, which Lightning switched off)."""
    try:
        return fn(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None
        raise


def _output_dir(cfg: DictConfig) -> Path:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _ckpt(cfg: DictConfig, required: bool) -> str | None:
    ckpt = cfg.ckpt
    if ckpt is None and required:
        raise ValueError(
            f"model={cfg.model.name} has no default checkpoint: set ckpt=PATH "
            "(ours, torchvision's, the reference's .pkl or a Lightning .ckpt)"
        )
    return ckpt


def _classifier(model: nn.Module, cfg: DictConfig, dm, **kwargs) -> ACiMClassifier:
    """The LightningModule of the DataModule's task: classification or language modelling."""
    lm = getattr(dm, "task", "classification") == "language_modeling"
    return (ACiMLanguageModel if lm else ACiMClassifier)(
        model,
        num_classes=dm.num_classes,
        class_names=dm.class_names,
        model_name=cfg.model.name,
        **kwargs,
    )


# ------------------------------------------------------------------------------------ simulate


def simulate(cfg: DictConfig) -> dict[str, Any]:
    """Validate float, quantized-inference and simulated models; print a table, write
    ``results.json`` (and ``predictions.json`` with ``simulate.save_predictions``).

    The macro's cost (``cost`` group, :mod:`asim.cost`) is estimated once, from one validation
    sample (counts depend on shapes only). The passes (:func:`plan_passes`: float, quantized
    inference, simulated repeats, per-layer sensitivity) run through one loop, and
    ``results.json`` is rewritten after each.

    Returns:
        The results dict (see README.md, "results.json", for the fields).

    Raises:
        RunInterrupted: Ctrl-C; the finished repeats are in ``results.json``.
    """
    t_start = time.perf_counter()
    quiet_lightning()
    opts = cfg.simulate
    repeats = opts.repeats
    check_run(cfg, "simulate")  # every check that needs no model pass, before any work
    measured = opts.get("measured_top1")
    if measured is not None and not 0.0 <= measured <= 1.0:
        raise ValueError(
            f"simulate.measured_top1={measured} must be a fraction in [0, 1] (e.g. 0.917)"
        )
    macro, noise, cost = macro_config(cfg), noise_config(cfg), cost_config(cfg)
    ckpt = _ckpt(cfg, required=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    dm = build_datamodule(cfg)
    dm.setup("validate")  # fail fast, in one line, when the data is missing
    float_model = build_float_model(cfg, dm)
    report = load_weights(float_model, ckpt, strict_classifier=True, dataset=cfg.dataset.name)
    acim_model = convert_model(cfg, float_model, mode="inference")
    costs = _estimate_cost(acim_model, dm, cost)

    trainer = build_trainer(cfg)
    if isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher):
        raise ValueError(
            f"trainer.strategy={cfg.trainer.strategy}: spawned processes cannot "
            "return simulation results; use trainer.strategy=ddp"
        )
    rank0 = trainer.is_global_zero
    files = ResultsFile(_output_dir(cfg)) if rank0 else None
    calibration, calibration_file = _calibrate(cfg, acim_model, dm, files)
    collect = bool(opts.save_predictions)
    stochastic = noise.enabled or noise.cell_sigma > 0
    used = layer_macros(acim_model)
    layers = [(name, m) for name, m in acim_modules(acim_model) if not m.digital]
    plan = plan_passes(opts, int(cfg.seed), stochastic, [name for name, _ in layers])
    chip_base = int(cfg.seed) if noise.chip_seed is None else noise.chip_seed
    if opts.chips > 1 and not noise.fixed_pattern:
        log.warning(
            "simulate.chips=%d without a fixed pattern (noise.column_offset_lsb, "
            "column_gain_pct, column_sigma_spread): the chips differ only in their noise draws",
            opts.chips,
        )
    # one module per model; every row's noise keyed by its dataset index (results
    # independent of batching)
    modules = {
        model: _classifier(
            net, cfg, dm, log_prefix=model, collect_predictions=collect, log_to_logger=False,
            sample_index_hook=set_sample_index if model == "acim" else None,
        )
        for model, net in (("float", float_model), ("acim", acim_model))
        if model == "acim" or opts.float
    }  # fmt: skip
    passes: dict[str, PassResult] = {}
    sim_runs: list[PassResult] = []
    sim_chips: list[int] = []  # the chip of every entry of sim_runs
    sensitivity: list[dict[str, Any]] | None = [] if opts.sensitivity else None
    sim_backends: set[str] = set()
    alone = None

    def results(complete: bool) -> dict[str, Any]:
        res = _collect_results(
            cfg, passes, sim_runs, dm, macro, noise, ckpt, report, trainer, used, repeats
        )
        _chip_fields(res, sim_runs, sim_chips, opts)
        res.calibration = _calibration_field(calibration, calibration_file, opts)
        res.cost, res.cost_layers = costs["cost"], costs["cost_layers"]
        res.sensitivity = sensitivity
        res.summary["cost_preset"] = None if cost is None else cost.name
        # the engine backend(s) of the simulated passes (asim.engine.describe_backends)
        res.summary["backend"] = describe_backends(sim_backends, trainer.strategy.root_device)
        res.summary.update(ideal_parts(acim_model, noise, res.summary["backend"]))
        res.complete = complete
        res.seconds = time.perf_counter() - t_start
        return res.to_dict()

    def save(complete: bool) -> dict[str, Any]:
        res = results(complete)
        if files is not None:
            files.write(res)
        return res

    if not stochastic and repeats > 1:
        log.info(
            "no temporal noise: the simulation is deterministic, runs once for %d repeats", repeats
        )
    try:
        for step, p in enumerate(plan, 1):  # the one loop: set up, validate, record, save
            module = modules["float" if p.kind == "float" else "acim"]
            if p.kind != "float":
                set_mode(acim_model, "inference" if p.kind == "inference" else "simulate")
            if p.layer is not None:  # sensitivity: this layer alone on the macro, or all but it
                for name, layer in layers:
                    layer.mode = "simulate" if (name == p.layer) == p.alone else "inference"
            if p.kind != "float" and noise.fixed_pattern:  # one chip across its repeats
                _set_chip(acim_model, chip_base + (p.chip or 0))
            if p.seed is not None:
                resample_noise(acim_model, p.seed)
                reset_backends_used()
            module.log_prefix = p.prefix
            t0 = time.perf_counter()
            _guarded(trainer, trainer.validate, module, datamodule=dm, verbose=False)
            res = PassResult.of(p.label, module.results, time.perf_counter() - t0)
            if p.kind == "sim":
                sim_runs += [res] * p.copies
                sim_chips += [p.chip or 0] * p.copies
                sim_backends |= backends_used()
            elif p.kind == "sensitivity":  # a layer's row once both of its passes ran
                alone = res.top1 if p.alone else alone
                if not p.alone:
                    sensitivity.append(
                        {"layer": p.layer, "alone_top1": alone, "without_top1": res.top1}
                    )
            else:
                passes[p.kind] = res
            if rank0:
                log.info(
                    "%s: top-1 %.4f (%d samples, %.1f s)", p.label, res.top1, res.num_samples,
                    res.seconds,
                )  # fmt: skip
            save(step == len(plan))
        set_mode(acim_model, "simulate")
    except KeyboardInterrupt:
        res = save(False)
        where = files.path if files is not None else cfg.output_dir
        kept = [name for name in passes] + ([f"{len(sim_runs)} of {repeats * opts.chips} repeats"])
        if sensitivity:
            kept.append(f"sensitivity of {len(sensitivity)} layers")
        raise RunInterrupted(f"interrupted: kept {', '.join(kept)} in {where}") from None

    res = results(True)
    if rank0:
        if collect:
            preds = {k: v.preds for k, v in passes.items()}
            preds["sim"] = [run_.preds for run_ in sim_runs]
            first = next(iter([*passes.values(), *sim_runs]))
            preds["targets"] = first.targets
            preds["indices"] = first.indices
            files.write(preds, files.sibling("predictions"))
        files.write(res)
        table = format_table(res)
        print(table, flush=True)
        print(f"results: {files.path}", flush=True)
        TABLE_LOG.info("%s\nresults: %s", table, files.path)
        if trainer.logger is not None:
            log_summary(trainer.logger, cfg, _summary_metrics(passes, sim_runs, res),
                        [r.top1 for r in sim_runs])  # fmt: skip
            _write_hparams_yaml(trainer.logger)
    return res


def trial(cfg: DictConfig) -> Any:
    """What ``simulate.py`` returns to Hydra (:func:`.report.objectives`). With ``conditions``
    (a search evaluating each design under several noise conditions), one simulation per
    condition in a sub-folder named by it (``noise.rand_sigma=0.3/``, with the job's overrides
    and the condition's in ``.hydra/overrides.yaml``, so the report keeps the conditions apart)
    and each objective pooled over them: ``condition_objective=worst`` (the lowest accuracy,
    the highest energy or perplexity: :func:`.report.sense`) or ``mean``."""
    conditions = [dict(c) for c in cfg.get("conditions") or []]
    if not conditions:
        return objectives(simulate(cfg), cfg)
    how = cfg.get("condition_objective", "worst")
    if how not in ("worst", "mean"):
        raise ValueError(f"condition_objective={how} must be worst or mean")
    for key in {k for c in conditions for k in c}:
        if (
            key.startswith(("macro", "cost"))
            or OmegaConf.select(cfg, key, default=KeyError) is KeyError
        ):
            raise ValueError(
                f"conditions: {key!r} is not a condition key of the config (e.g. noise.rand_sigma,"
                " seed, ckpt; design keys macro.* and cost.* are what a search varies)"
            )
    job = [
        o
        for o in _job_overrides()
        if o.split("=", 1)[0] not in ("conditions", "condition_objective")
    ]
    runs = []
    for condition in conditions:
        over = [f"{k}={v}" for k, v in condition.items()]
        c = OmegaConf.merge(
            cfg, {"conditions": None, "output_dir": str(Path(cfg.output_dir) / job_dirname(over))}
        )
        for key, value in condition.items():
            OmegaConf.update(c, key, value)
        (Path(c.output_dir) / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(
            OmegaConf.create(job + over), Path(c.output_dir) / ".hydra" / "overrides.yaml"
        )
        value = objectives(simulate(c), c)
        runs.append(value if isinstance(value, tuple) else (value,))
    names = cfg.get("optimized_metrics") or ["sim_top1"]
    names = [names] if isinstance(names, str) else list(names)
    pooled = []
    for name, values in zip(names, zip(*runs, strict=True), strict=True):
        worst = min if sense(name) == "max" else max
        pooled.append(statistics.fmean(values) if how == "mean" else worst(values))
    return pooled[0] if len(pooled) == 1 else tuple(pooled)


def _job_overrides() -> list[str]:
    """The overrides of this Hydra job (none outside an entry point)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _summary_metrics(passes: dict, sim_runs: list, res: dict[str, Any]) -> dict[str, float]:
    """The run's scalars for the logger: ``<pass>/acc``, ``acc_top5``, ``loss`` (``ppl`` for
    language models) of every pass, the simulated mean over repeats and the cost fields."""
    metrics = {}
    for name, p in passes.items():
        metrics.update({f"{name}/acc": p.top1, f"{name}/acc_top5": p.top5, f"{name}/loss": p.loss})
        if p.ppl is not None:
            metrics[f"{name}/ppl"] = p.ppl
    metrics.update({"sim/acc": res["sim_top1"], "sim/acc_std": res["sim_top1_std"],
                    "sim/acc_top5": res["sim_top5"],
                    "sim/loss": sum(r.loss for r in sim_runs) / len(sim_runs)})  # fmt: skip
    if res.get("sim_ppl") is not None:
        metrics["sim/ppl"] = res["sim_ppl"]
    if res["chips"] > 1:  # a chip population
        metrics["sim/worst_chip_acc"] = res["worst_chip_top1"]
        if res["yield_top1"] is not None:
            metrics["sim/yield"] = res["yield_top1"]
    for key in ("energy_pj", "adc_conversions", "latency_ns", "area_mm2", "tops_per_w"):
        if res["cost"] is not None:
            metrics[f"sim/{key}"] = res["cost"][key]
    return metrics


def _write_hparams_yaml(logger) -> None:
    """TensorBoard's ``hparams.yaml`` is written once, when the first pass starts (empty
    then); rewrite it with the run's hyper-parameters."""
    from lightning.pytorch.core.saving import save_hparams_to_yaml

    log_dir = getattr(logger, "log_dir", None)
    if isinstance(logger, TensorBoardLogger) and log_dir and logger.hparams:
        save_hparams_to_yaml(Path(log_dir) / "hparams.yaml", logger.hparams)


def _example_input(dm) -> torch.Tensor:
    """One validation sample as a batch of one (the cost model needs only its shape)."""
    sample = dm.val_set[0]
    x = sample[0] if isinstance(sample, (tuple, list)) else sample
    return torch.as_tensor(x).unsqueeze(0)


def _estimate_cost(model: nn.Module, dm, cost: CostConfig | None) -> dict[str, Any]:
    """``{"cost": per-sample totals, "cost_layers": [...]}`` of ``model`` (None values with
    ``cost`` off or a model without ACiM layers)."""
    if cost is None or next(acim_modules(model), None) is None:
        return {"cost": None, "cost_layers": None}
    return estimate_cost(model, _example_input(dm), cost).to_dict()


@dataclass(frozen=True)
class Pass:
    """One validation pass of a simulation run, as :func:`simulate`'s loop runs it."""

    kind: str  # "float", "inference", "sim" (a repeat) or "sensitivity"
    label: str  # in the log
    prefix: str  # of the pass's metrics (``float/acc``, ``sim/acc``, ...)
    seed: int | None = None  # the noise seed of a simulated pass
    copies: int = 1  # noise off: one deterministic pass stands for every repeat
    chip: int | None = None  # simulate.chips > 1: the chip k (its chip_seed: base + k)
    layer: str | None = None  # sensitivity: the layer
    alone: bool = False  # sensitivity: only it on the macro (else every layer but it)


def plan_passes(opts, seed: int, stochastic: bool, layers: list[str]) -> list[Pass]:
    """The passes of a run in order: float, quantized inference, the simulated repeats (noise
    seeds ``seed``, ``seed + 1``, ...; one pass when noise is off) and, with
    ``opts.sensitivity``, two passes per ACiM layer noise-seeded as repeat 0: only it on the
    macro (the others ideal integer ``inference``) and every layer but it, so they compare
    with ``sim_top1_runs[0]``. With ``opts.chips`` = N > 1 the repeats run per chip k = 0 ..
    N-1 (noise seeds ``seed + k * repeats + r``: chip 0's are the single chip's) and the
    sensitivity passes on chip 0."""
    plan = [Pass(k, k, k) for k in ("float", "inference") if opts[k]]
    repeats = opts.repeats if stochastic else 1
    copies = 1 if stochastic else opts.repeats
    chips = opts.get("chips", 1)
    for k in range(chips):
        chip = k if chips > 1 else None
        first = seed + k * opts.repeats
        plan += [Pass("sim", f"simulate{'' if chip is None else f' chip {k}'} (seed "
                             f"{first + r})", "sim", first + r, copies, chip)
                 for r in range(repeats)]  # fmt: skip
    if opts.sensitivity:
        plan += [
            Pass("sensitivity", f"sensitivity {name} {'alone' if alone else 'without'}",
                 f"sensitivity {name}", seed, layer=name, alone=alone,
                 chip=0 if chips > 1 else None)
            for name in layers for alone in (True, False)
        ]  # fmt: skip
    return plan


def _set_chip(model: nn.Module, chip_seed: int) -> None:
    """Every ACiM layer's fixed column pattern (``NoiseConfig.chip_seed``, spec §4.7) becomes
    that of chip ``chip_seed``."""
    for _, layer in acim_modules(model):
        for attr in ("noise", "qk_noise", "av_noise"):
            noise = getattr(layer, attr, None)
            if isinstance(noise, NoiseConfig) and noise.fixed_pattern:
                setattr(layer, attr, dataclasses.replace(noise, chip_seed=chip_seed))


def _calibrate(cfg: DictConfig, model: nn.Module, dm, files: ResultsFile | None):
    """``simulate.calibrate=METHOD``: calibrate the model's ADCs on
    ``simulate.calibration_batches`` training batches and save the calibration next to
    results.json (``calibration.json``); ``calibration=PATH``: load a saved one. Applied to
    ``model``; returns ``(Calibration, where)`` or ``(None, None)``."""
    method, path = cfg.simulate.get("calibrate"), cfg.get("calibration")
    if method is None and path is None:
        return None, None
    from asim import Calibration, calibrate_adc

    if path is not None:
        cal, where = Calibration.load(resolve_path(path)), str(resolve_path(path))
    else:
        dm.setup("fit")
        t0 = time.perf_counter()
        cal = calibrate_adc(
            model, dm.train_dataloader(), method=method,
            max_batches=int(cfg.simulate.calibration_batches),
            granularity=cfg.simulate.get("calibration_granularity", "layer"),
            column_steps=cfg.simulate.get("calibration_column_steps"),
        )  # fmt: skip
        log.info("calibrated the ADCs (%s, %d batches, %.1f s)", method, cal.batches,
                 time.perf_counter() - t0)  # fmt: skip
        where = None
        if files is not None:
            where = str(cal.save(files.sibling("calibration")))
    cal.apply(model)
    return cal, where


def _collect_results(
    cfg, passes, sim_runs, dm, macro, noise, ckpt, report, trainer, used, requested
) -> RunResult:
    def get(name: str, key: str):
        return getattr(passes[name], key) if name in passes else None

    names = list(dm.class_names)

    def by_class(values):
        return None if values is None else dict(zip(names, values, strict=True))

    res = RunResult(
        float_top1=get("float", "top1"),
        float_top5=get("float", "top5"),
        inference_top1=get("inference", "top1"),
        inference_top5=get("inference", "top5"),
        sim_top1_runs=[r.top1 for r in sim_runs],
        sim_correct_runs=[r.correct for r in sim_runs],
        repeats=len(sim_runs),
        repeats_requested=requested,
        num_samples=max((r.num_samples for r in [*passes.values(), *sim_runs]), default=None),
        seconds_float=get("float", "seconds"),
        seconds_inference=get("inference", "seconds"),
        seconds_sim=sum(r.seconds for r in {id(r): r for r in sim_runs}.values()),
        summary={
            "model": cfg.model.name,
            "dataset": cfg.dataset.name,
            "num_classes": dm.num_classes,
            "macro": describe_macros(used, macro),
            "macro_preset": macro.describe(),
            "layer_macros": used,
            "noise": describe_noise(noise, macro.adc_bits),
            "ckpt": None if ckpt is None else str(resolve_path(ckpt)),
            "ckpt_format": None if report is None else report["format"],
            "seed": int(cfg.seed),
            "world_size": trainer.world_size,
            "val_batch_size": cfg.dataset.get("val_batch_size"),
        },
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    per_class = None
    if sim_runs:
        res.sim_top1, res.sim_top1_std = mean_std([r.top1 for r in sim_runs])
        res.sim_top5, res.sim_top5_std = mean_std([r.top5 for r in sim_runs])
        if sim_runs[0].per_class is not None:  # language models have no classes
            n_cls = len(sim_runs[0].per_class)
            per_class = [
                sum(r.per_class[c] for r in sim_runs) / len(sim_runs) for c in range(n_cls)
            ]
    res.per_class = {
        "float": by_class(get("float", "per_class")),
        "inference": by_class(get("inference", "per_class")),
        "sim": by_class(per_class),
    }
    _ppl_fields(res, passes, sim_runs)
    res.measured_top1 = cfg.simulate.get("measured_top1")
    if res.measured_top1 is not None and res.sim_top1 is not None:
        res.sim_minus_measured = res.sim_top1 - res.measured_top1
    return res


def _chip_fields(res: RunResult, sim_runs: list, sim_chips: list[int], opts) -> None:
    """The chip population: ``chip_top1`` (each chip's mean over its repeats), its worst, and
    ``yield_top1``, the fraction of chips at or above ``yield_threshold`` (default: quantized
    inference top-1 minus one point; no yield without either)."""
    res.chips = int(opts.chips)
    res.repeats_requested = int(opts.repeats) * res.chips
    by_chip: dict[int, list[float]] = {}
    for r, k in zip(sim_runs, sim_chips, strict=True):
        by_chip.setdefault(k, []).append(r.top1)
    res.chip_top1 = [statistics.fmean(v) for _, v in sorted(by_chip.items())]
    res.worst_chip_top1 = min(res.chip_top1, default=None)
    threshold = opts.get("yield_threshold")
    if threshold is None and res.inference_top1 is not None:
        threshold = res.inference_top1 - YIELD_MARGIN
    res.yield_threshold = threshold
    if threshold is not None and res.chip_top1:
        res.yield_top1 = sum(t >= threshold for t in res.chip_top1) / len(res.chip_top1)


def _calibration_field(cal, where: str | None, opts) -> dict[str, Any] | None:
    """``results.json``'s ``calibration``: how it was made and per layer full scale, clip
    rate and code histogram."""
    if cal is None:
        return None
    return {
        "method": cal.method,
        "percentile": cal.percentile,
        "granularity": cal.granularity,
        "column_steps": cal.column_steps,
        "batches": cal.batches,
        "made": opts.get("calibrate") is not None,
        "file": where,
        "layers": [
            {"layer": name, "full_scale": lc.full_scale, "nrow": lc.macro.nrow,
             "adc_bits": lc.macro.adc_bits, "clip_rate": lc.clip_rate,
             "code_histogram": list(lc.code_histogram)}
            for name, lc in cal.layers.items()
        ],
    }  # fmt: skip


def _ppl_fields(res: RunResult, passes: dict, sim_runs: list) -> None:
    """Language models: ``float_ppl``, ``inference_ppl``, ``sim_ppl`` (mean over repeats) with
    ``sim_ppl_std``, ``sim_ppl_runs`` and ``num_tokens``; left null for classifiers (whose
    passes carry no ``ppl``). ``*_top1`` is then the next-token accuracy."""
    runs = [*passes.values(), *sim_runs]
    if not runs or runs[0].ppl is None:
        return
    if sim_runs:
        res.sim_ppl, res.sim_ppl_std = mean_std([r.ppl for r in sim_runs])
    res.float_ppl = passes["float"].ppl if "float" in passes else None
    res.inference_ppl = passes["inference"].ppl if "inference" in passes else None
    res.sim_ppl_runs = [r.ppl for r in sim_runs]
    res.num_tokens = max(r.num_tokens for r in runs)


# --------------------------------------------------------------------------------------- train


def _reinit_zero_classifier(model: nn.Module) -> None:
    """Xavier-initialise an all-zero classifier weight (torchvision's ViT head init).

    Fake quantization passes no gradient to weights that are exactly 0 (spec §1.5: the
    straight-through estimator is multiplied by sign(0) = 0), so QAT could never train a
    zero-initialised head; the reference's converters give the head a Xavier init too (§9.5).
    """
    name = getattr(model, "classifier_name", None)
    head = model.get_submodule(name) if name else None
    if isinstance(head, nn.Linear) and not bool(head.weight.detach().any()):
        nn.init.xavier_uniform_(head.weight)
        log.info("%s.weight was all zero: Xavier-initialised for quantization-aware training", name)


def _resume_path(cfg: DictConfig) -> str | None:
    resume = cfg.get("resume")
    if resume is None:
        return None
    if resume == "auto":
        path = Path(cfg.output_dir) / "checkpoints" / "last.ckpt"
        if not path.is_file():
            raise FileNotFoundError(
                f"resume=auto: no checkpoints/last.ckpt in {cfg.output_dir}; run in the "
                "interrupted run's folder (hydra.run.dir=DIR) or pass resume=PATH"
            )
        return str(path)
    path = resolve_path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"resume={resume}: no such Lightning checkpoint ({path})")
    return str(path)


def _check_resume(cfg: DictConfig, resume: str) -> None:
    """The checkpoint is a Lightning training checkpoint of this very run configuration, and
    the run has epochs left (else :class:`RunFinished`)."""
    ckpt = read_training_checkpoint(resume)
    check_resumed_config(cfg, ckpt, resume)
    done, planned = completed_epochs(ckpt), cfg.trainer.get("max_epochs")
    if planned not in (None, -1) and done >= int(planned):
        raise RunFinished(
            f"the run of {resume} is finished ({done} of {planned} epochs); nothing changed. "
            f"To train on, add trainer.max_epochs=N with N > {done}"
        )


def _keep_csv_metrics(folder: Path) -> None:
    """Lightning's CSV logger deletes an existing ``metrics.csv``: a resumed run first moves
    the interrupted run's to ``metrics-1.csv`` (``-2``, ... for later resumes)."""
    old = folder / "metrics.csv"
    if not old.is_file():
        return
    for k in range(1, 10_000):
        kept = folder / f"metrics-{k}.csv"
        if not kept.exists():
            old.rename(kept)
            log.info("resume: the interrupted run's metrics.csv is kept as %s", kept.name)
            return


def _export_path(cfg: DictConfig, resume: str | None) -> Path | None:
    """Where the best model's state_dict goes; one that exists and is not this run's own (in
    its folder, or named by its results) is refused before any work."""
    if not cfg.get("export"):
        return None
    export = Path(cfg.export).expanduser().resolve()
    out = Path(cfg.output_dir).resolve()
    if not export.exists() or export.is_relative_to(out):
        return export
    if resume is not None:
        for old in out.glob("results*.json"):
            try:
                if json.loads(old.read_text()).get("export") == str(export):
                    return export
            except (OSError, ValueError):
                continue
    raise ValueError(
        f"export={cfg.export} exists and belongs to another run: pass export=NEW_PATH "
        "(or remove the file first to replace it)"
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """QAT (every ACiM layer in ``train`` mode) or NAT (``trim_noise`` > 0, from ``ckpt``);
    ``resume=PATH|auto`` continues a run from a Lightning checkpoint (epoch, optimizer,
    scheduler).

    Returns:
        The results dict: ``best_model_path``, ``best_val_acc``, ``best_epoch``,
        ``last_model_path``, ``last_val_acc``, ``export`` and the final metrics.
    """
    t_start = time.perf_counter()
    quiet_lightning()
    check_run(cfg, "train")  # every check that needs no model pass, before any work
    resume = _resume_path(cfg)
    if resume is not None:
        _check_resume(cfg, resume)
    export = _export_path(cfg, resume)
    ckpt = _ckpt(cfg, required=False)
    nat = train_mode(cfg.trim_noise, cfg.attn_trim_noise) == "nat"
    if ckpt is None and nat and resume is None:
        raise ValueError(
            "noise-aware training (trim_noise > 0) fine-tunes a trained model: set ckpt=PATH"
        )
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    dm = build_datamodule(cfg)
    dm.setup("fit")
    task = getattr(dm, "task", "classification")
    if cfg.mixup_alpha > 0 and task != "classification":
        raise ValueError(
            f"mixup_alpha={cfg.mixup_alpha:g} mixes images of a classification dataset; "
            f"dataset={cfg.dataset.name} is {task}: set mixup_alpha=0"
        )
    float_model = build_float_model(cfg, dm)
    if resume is None:
        load_weights(float_model, ckpt)
    _reinit_zero_classifier(float_model)
    model = convert_model(
        cfg,
        float_model,
        mode="train",
        trim_noise=float(cfg.trim_noise),
        attn_trim_noise=float(cfg.attn_trim_noise),
    )
    module = _classifier(
        model,
        cfg,
        dm,
        log_prefix="val",
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        label_smoothing=float(cfg.label_smoothing),
        mixup_alpha=float(cfg.mixup_alpha),
    )

    callbacks: list = [ResumeState(int(cfg.seed), OmegaConf.to_yaml(cfg))]
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if cb_cfg is None or (name == "lr_monitor" and not cfg.get("logger")):
            continue
        callbacks.append(instantiate(cb_cfg))
    if resume is not None:
        _keep_csv_metrics(Path(cfg.output_dir))
    trainer = build_trainer(cfg, callbacks=callbacks)
    files = ResultsFile(_output_dir(cfg)) if trainer.is_global_zero else None
    if trainer.logger is not None:  # TensorBoard's HPARAMS tab needs the metric declared
        if isinstance(trainer.logger, TensorBoardLogger):
            trainer.logger.log_hyperparams(tensorboard_hparams(cfg), {"val/acc": 0.0})
        else:
            trainer.logger.log_hyperparams(hparams(cfg))
    try:
        _guarded(trainer, trainer.fit, module, datamodule=dm, ckpt_path=resume)
    except KeyboardInterrupt:
        last = _last_checkpoint(trainer)
        raise RunInterrupted(
            f"interrupted at epoch {trainer.current_epoch}: last checkpoint {last or 'none'}; "
            f"continue with: {resume_command(last)}"
        ) from None
    last_epoch_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}

    best_cb = _best_callback(trainer)
    best = best_cb.best_model_path if best_cb is not None else ""
    if best:  # export the best weights, not the last
        state = torch.load(best, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"])
        best_epoch = int(state.get("epoch", -1))
    else:
        best_epoch = trainer.current_epoch - 1
    _guarded(trainer, trainer.validate, module, datamodule=dm, verbose=False)
    final = dict(module.results)
    validation_noise = (
        f"NAT training noise (trim_noise {cfg.trim_noise:g}%, attn {cfg.attn_trim_noise:g}%)"
        if nat
        else "none (fake quantization, train mode)"
    )
    results = {
        "best_model_path": best or None,
        "best_val_acc": (
            float(best_cb.best_model_score)
            if best_cb is not None and best_cb.best_model_score is not None
            else final["top1"]
        ),
        "best_epoch": best_epoch,
        "last_model_path": _last_checkpoint(trainer),
        "last_val_acc": last_epoch_metrics.get("val/acc"),
        "last_epoch": trainer.current_epoch - 1,
        "validation_noise": validation_noise,
        "export": None,
        "val_top1": final["top1"],
        "val_top5": final["top5"],
        "num_samples": final["num_samples"],
        "per_class": (
            None
            if final["per_class"] is None
            else dict(zip(dm.class_names, final["per_class"], strict=True))
        ),
        **({"val_ppl": final["ppl"]} if "ppl" in final else {}),
        "epochs": trainer.current_epoch,
        "resumed_from": resume,
        "mode": "nat" if nat else "qat",
        "seconds": None,
        "complete": True,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if files is not None:
        if export is not None:
            export.parent.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            tmp = export.with_suffix(export.suffix + ".tmp")
            torch.save(state, tmp)
            shutil.move(tmp, export)
            results["export"] = str(export)
            _alias(export, Path(cfg.output_dir).resolve() / f"{cfg.model.name}.pt")
        results["seconds"] = time.perf_counter() - t_start
        files.write(results)
        last_acc = results["last_val_acc"]
        summary = (
            f"{results['mode'].upper()} {cfg.model.name} on {cfg.dataset.name} "
            f"({results['epochs']} epochs, {results['seconds']:.0f} s; validation noise: "
            f"{validation_noise})\n"
            f"best: val top-1 {100 * results['best_val_acc']:.2f}% at epoch "
            f"{results['best_epoch']}: {best or '-'}\n"
            f"last: val top-1 "
            f"{'-' if last_acc is None else f'{100 * last_acc:.2f}%'} at epoch "
            f"{results['last_epoch']}: {results['last_model_path'] or '-'}\n"
            f"float state_dict (best): {results['export']}\n"
            f"results: {files.path}"
        )
        print(summary, flush=True)
        TABLE_LOG.info("%s", summary)
    return results


def _alias(export: Path, alias: Path) -> None:
    """``<model>.pt`` in the run folder, a link to the export's descriptive name
    (``digits_cnn-nat-<run>.pt``), so commands written for the old name keep working."""
    if export.parent != alias.parent or export.name == alias.name or alias.exists():
        return
    try:
        alias.symlink_to(export.name)
    except OSError:  # no symlinks (some Windows setups): a copy
        shutil.copyfile(export, alias)


def _best_callback(trainer: L.Trainer):
    """The ModelCheckpoint that monitors a metric (best), if any."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor is not None:
            return cb
    return None


def _last_checkpoint(trainer: L.Trainer) -> str | None:
    """Path of the newest every-epoch checkpoint (``last.ckpt``), if written."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor is None:
            path = cb.last_model_path or cb.best_model_path
            return path or None
    return None
