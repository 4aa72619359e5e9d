"""Config -> objects: the only place a ``DictConfig`` meets ``asim`` (style §2, §6).

``register_configs()`` stores the schemas (``macro/schema`` = :class:`asim.MacroConfig`,
``noise/schema`` = :class:`asim.NoiseConfig`, ``model/schema`` = :class:`ModelConfig`), so YAML
presets list only deltas and a typo or a wrong type fails when Hydra composes. The builders
below turn a composed config into a DataModule, a converted model, a Trainer, and run
:func:`simulate` or :func:`train`; the entry points only call them, and tests call them with a
config from Hydra's compose API.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from omegaconf import DictConfig, OmegaConf
from torch import nn

from asim import MacroConfig, NoiseConfig, convert_to_acim, resample_noise, set_mode
from asim.checkpoint import load_checkpoint
from asim.models import create_model, is_model, model_entrypoint

from .data import build_datamodule as _build_datamodule
from .module import ACiMClassifier

__all__ = [
    "AttentionConfig",
    "FirstLayer",
    "ModelConfig",
    "build_datamodule",
    "build_float_model",
    "build_trainer",
    "compose",
    "convert_model",
    "flatten_config",
    "format_table",
    "load_weights",
    "macro_config",
    "noise_config",
    "register_configs",
    "resolve_path",
    "simulate",
    "train",
]

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The repository root: relative paths not found from the working directory are tried here."""

_MACRO_FIELDS = {f.name for f in dataclasses.fields(MacroConfig)}


class FirstLayer(str, Enum):
    """How the network's first layer is mapped (spec §1.7, §9.2-9.4)."""

    digital = "digital"  # the reference's QuantConv2d: fake-quantized, signed input, not simulated
    acim = "acim"  # on the macro like every other layer
    float = "float"  # kept float (the ViT patch embedding: vit_quant_conv_proj=False)


@dataclass
class AttentionConfig:
    """MacroConfig deltas for the parts of every attention layer (spec §7.2), applied on top of
    the run's ``macro``; e.g. ``qk: {input_bits: 9}`` is the reference's ``qk_kbit=9``."""

    proj: dict[str, Any] = field(default_factory=dict)
    """qkv and output projections (ASiM ``proj_wbit``, ``proj_xbit``, ``proj_adc_prec``)."""
    qk: dict[str, Any] = field(default_factory=dict)
    """QK^T: ``weight_bits`` = q bits, ``input_bits`` = k bits (``qk_qbit``, ``qk_kbit``)."""
    av: dict[str, Any] = field(default_factory=dict)
    """AV: ``weight_bits`` = v bits, ``input_bits`` = score bits (``av_vbit``, ``av_abit``)."""


@dataclass
class ModelConfig:
    """A registered float model and how it maps to the macro (the ``model`` group's schema)."""

    name: str = "digits_cnn"
    """Registry name (``asim.models.list_models()``)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra builder arguments; ``num_classes``, ``in_channels`` and ``image_size`` are derived
    from the dataset unless given here."""
    ckpt: str | None = None
    """Default checkpoint of this model preset (used when the run's ``ckpt`` is not set)."""
    first_layer: FirstLayer = FirstLayer.digital
    """``digital`` (reference CNNs), ``acim`` or ``float`` (reference ViTs)."""
    first_layer_name: str = "conv1"
    """Qualified name of the first layer."""
    first_layer_bits: int = 8
    """Weight and input bits of a digital first layer (the reference's QuantConv2d: W8A8)."""
    signed_input: bool = False
    """Signed activations in the ACiM layers (reference: False for CNN convs, True for ViTs)."""
    classifier_signed_input: bool = False
    """Signed activations in the classifier (reference: False for CNNs, True for ViTs)."""
    exclude: list[str] = field(default_factory=list)
    """Qualified-name globs of layers kept float."""
    layer_macros: list[dict[str, Any]] = field(default_factory=list)
    """Per-layer MacroConfig deltas: entries ``{match: GLOB, FIELD: VALUE, ...}`` applied in
    order, after the attention deltas, to the layers whose qualified name matches GLOB, e.g.
    ``[{match: "layer4.*", adc_bits: 6}, {match: "*.qk", adc_bits: 6}]``."""
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    """MacroConfig deltas for attention projections, QK^T and AV."""


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (call before composing)."""
    cs = ConfigStore.instance()
    cs.store(group="macro", name="schema", node=MacroConfig)
    cs.store(group="noise", name="schema", node=NoiseConfig)
    cs.store(group="model", name="schema", node=ModelConfig)


def compose(config_name: str = "simulate", overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with command-line style overrides, outside an entry
    point (tests, notebooks): ``simulate(compose("simulate", ["macro=ideal"]))``.

    ``output_dir`` (the Hydra run dir in an entry point) defaults to
    ``outputs/<config_name>/compose``; pass ``output_dir=DIR`` to choose it.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    register_configs()
    overrides = list(overrides)
    if not any(o.lstrip("+~").split("=", 1)[0] == "output_dir" for o in overrides):
        overrides.append(f"output_dir={PROJECT_ROOT / 'outputs' / config_name / 'compose'}")
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=overrides)
    finally:
        restore_gh_from_backup(backup)


# ------------------------------------------------------------------------------ config -> asim


def resolve_path(path: str | os.PathLike) -> Path:
    """An absolute path: as given, else from the working directory, else from the repository
    root (so shipped files resolve from anywhere); a missing file keeps the first form."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if p.exists() or not (PROJECT_ROOT / p).exists():
        return p.resolve()
    return PROJECT_ROOT / p


def macro_config(cfg: DictConfig) -> MacroConfig:
    """The validated :class:`MacroConfig` of ``cfg.macro`` (one-line ValueError if invalid)."""
    return OmegaConf.to_object(cfg.macro)


def noise_config(cfg: DictConfig) -> NoiseConfig:
    """The validated :class:`NoiseConfig` of ``cfg.noise``, its table path made absolute."""
    noise = OmegaConf.to_object(cfg.noise)
    if noise.file is not None:
        path = resolve_path(noise.file)
        if not path.is_file():
            raise FileNotFoundError(
                f"noise.file={noise.file} not found; set noise.file=PATH to a "
                "CSV with columns count,offset,std (see "
                "conf/noise/measured_example.csv)"
            )
        noise = noise.replace(file=str(path))
    return noise


def model_config(cfg: DictConfig) -> ModelConfig:
    """The validated :class:`ModelConfig` of ``cfg.model``."""
    return OmegaConf.to_object(cfg.model)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """The DataModule named by ``cfg.dataset.name``, its other keys as arguments."""
    kwargs = OmegaConf.to_container(cfg.dataset, resolve=True)
    name = kwargs.pop("name")
    if "root" in kwargs:
        kwargs["root"] = str(resolve_path(kwargs["root"]))
    try:
        return _build_datamodule(name, seed=int(cfg.seed), **kwargs)
    except TypeError as e:
        raise ValueError(f"dataset={name}: {e}") from None


def build_float_model(cfg: DictConfig, datamodule: L.LightningDataModule) -> nn.Module:
    """``create_model(model.name)`` sized by the dataset (classes, channels, image size)."""
    mcfg = model_config(cfg)
    kwargs: dict[str, Any] = {"num_classes": datamodule.num_classes}
    kwargs.update(_derived_kwargs(mcfg.name, datamodule))
    kwargs.update(mcfg.kwargs)
    try:
        return create_model(mcfg.name, **kwargs)
    except TypeError as e:
        raise ValueError(f"model={mcfg.name}: {e}; check model.kwargs") from None


def _derived_kwargs(name: str, datamodule) -> dict[str, Any]:
    import inspect

    if not is_model(name):
        return {}
    params = inspect.signature(model_entrypoint(name)).parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out = {}
    if "in_channels" in params or var_kw:
        out["in_channels"] = datamodule.in_channels
    if "image_size" in params:
        out["image_size"] = datamodule.image_size
    return out


def load_weights(
    model: nn.Module, ckpt: str | None, *, strict_classifier: bool = False
) -> dict[str, Any] | None:
    """Load a checkpoint into the float model; None leaves it as initialised.

    With ``strict_classifier`` a checkpoint whose classifier has another class count is an
    error (simulation); otherwise the model keeps its fresh head (fine-tuning, a warning).
    """
    if ckpt is None:
        return None
    path = resolve_path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: ckpt={ckpt} ({path})")
    report = load_checkpoint(model, path, strict_classifier=strict_classifier)
    log.info(
        "loaded %s (%s, %s names): %d tensors%s",
        path,
        report["format"],
        report["naming"],
        report["loaded"],
        "; classifier re-initialised" if report["classifier"] == "reset" else "",
    )
    if report["classifier"] == "reset":
        warnings.warn(
            f"checkpoint {path}: {next(iter(report['ignored'].values()), '')}; "
            "the classifier is untrained",
            stacklevel=2,
        )
    return report


def _macro_delta(macro: MacroConfig, delta: dict[str, Any], where: str) -> MacroConfig:
    unknown = sorted(set(delta) - _MACRO_FIELDS)
    if unknown:
        raise ValueError(
            f"{where}: unknown MacroConfig field(s) {unknown}; valid fields: "
            f"{', '.join(sorted(_MACRO_FIELDS))}"
        )
    if not delta:
        return macro
    try:
        return macro.replace(**delta)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def convert_model(
    cfg: DictConfig,
    float_model: nn.Module,
    *,
    mode: str,
    trim_noise: float = 0.0,
    attn_trim_noise: float = 0.0,
) -> nn.Module:
    """Convert a float model as the reference maps it (spec §9): a digital W8A8 first layer with
    signed inputs (or float/ACiM, ``model.first_layer``), unsigned CNN activations, the
    classifier signedness of ``model.classifier_signed_input``, attention parts with their own
    macros, per-layer deltas from ``model.layer_macros``."""
    macro, noise, mcfg = macro_config(cfg), noise_config(cfg), model_config(cfg)
    names = dict(float_model.named_modules())
    first = mcfg.first_layer_name
    if first not in names:
        raise ValueError(
            f"model.first_layer_name={first!r} is not a module of {mcfg.name}; "
            f"module names look like {list(names)[1:6]}"
        )
    classifier = getattr(float_model, "classifier_name", None)
    exclude = list(mcfg.exclude) + ([first] if mcfg.first_layer == FirstLayer.float else [])
    part_macros = {
        part: _macro_delta(macro, getattr(mcfg.attention, part), f"model.attention.{part}")
        for part in ("proj", "qk", "av")
    }
    layer_macros = []
    for i, entry in enumerate(mcfg.layer_macros):
        delta = dict(entry)
        glob = delta.pop("match", None)
        if not isinstance(glob, str):
            raise ValueError(
                f"model.layer_macros[{i}] needs match: GLOB (a qualified layer "
                "name or glob) next to its MacroConfig fields"
            )
        _macro_delta(macro, delta, f"model.layer_macros[{i}]")  # validate early
        layer_macros.append((glob, delta))
    matched: set[str] = set()
    stem_macro = MacroConfig(
        name=f"digital_w{mcfg.first_layer_bits}a{mcfg.first_layer_bits}",
        weight_bits=mcfg.first_layer_bits,
        input_bits=mcfg.first_layer_bits,
        act_scale=macro.act_scale,
        division=macro.division,
    )

    def macro_for(name: str, module: nn.Module) -> MacroConfig:
        base = macro
        if isinstance(module, nn.MultiheadAttention):
            part = name.rsplit(".", 1)[-1] if name.endswith((".qk", ".av")) else "proj"
            base = part_macros[part]
        for glob, delta in layer_macros:
            if fnmatch.fnmatchcase(name, glob):
                matched.add(glob)
                base = base.replace(**delta)
        return base

    def options_for(name: str, module: nn.Module) -> dict[str, Any]:
        if name == first and mcfg.first_layer == FirstLayer.digital:
            return {"digital": True, "signed_input": True, "macro": stem_macro, "noise": None}
        if isinstance(module, nn.MultiheadAttention):
            return {"trim_noise": trim_noise, "attn_trim_noise": attn_trim_noise}
        signed = mcfg.classifier_signed_input if name == classifier else mcfg.signed_input
        return {"signed_input": signed, "trim_noise": trim_noise}

    model = convert_to_acim(
        float_model,
        macro,
        noise,
        exclude=exclude,
        macro_for=macro_for,
        options_for=options_for,
        mode=mode,
    )
    unused = [glob for glob, _ in layer_macros if glob not in matched]
    if unused:  # typo guard, as for exclude
        raise ValueError(
            f"model.layer_macros: match {unused} selects no ACiM layer; names look "
            f"like {[n for n in names if n][:5]}"
        )
    return model


# ----------------------------------------------------------------------------- Lightning side


def build_trainer(
    cfg: DictConfig, *, callbacks: list | None = None, logger: bool = True
) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with the configured logger (or none)."""
    lg = instantiate(cfg.logger) if logger and cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, logger=lg, callbacks=callbacks or [])
    # trainer.deterministic turns on torch's NaN-filling of torch.empty, a debugging aid that
    # makes the engine's large scratch buffers ~15x slower; results do not depend on it.
    torch.utils.deterministic.fill_uninitialized_memory = False
    # Quirk Q35: TF32 convs/matmuls on GPU change float layers (the stem, excluded layers) by
    # ulps against CPU, which can flip quantization boundaries. Simulation stays exact.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return trainer


def flatten_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as ``{"macro.adc_bits": 8, ...}`` for TensorBoard's HPARAMS."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    flat: dict[str, Any] = {}

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                visit(v, f"{prefix}{k}." if not prefix.endswith("_target_.") else prefix)
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix[:-1]] = node
        else:  # None, lists, empty dicts
            flat[prefix[:-1]] = str(node)

    visit(container, "")
    return {k: v for k, v in flat.items() if not k.endswith("_target_")}


def _quiet_lightning() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",
        ".*sync_dist=True.*",
        ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
        ".*directory .* exists and is not empty.*",
        ".*GPU available but not used.*",
    ):
        warnings.filterwarnings("ignore", pattern)
    # Float layers without TF32, so GPU and CPU agree on quantization boundaries (spec Q35).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


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


def _classifier_module(
    model: nn.Module, cfg: DictConfig, num_classes: int, class_names: list[str], **kwargs
) -> ACiMClassifier:
    return ACiMClassifier(
        model, num_classes=num_classes, class_names=class_names, model_name=cfg.model.name, **kwargs
    )


# ------------------------------------------------------------------------------------ simulate


def simulate(cfg: DictConfig) -> dict[str, Any]:
    """Validate float, quantized-inference and simulated models; print a table, write
    ``results.json`` (and ``predictions.json`` with ``simulate.save_predictions``).

    Returns:
        The results dict (see README.md, "results.json", for the fields).
    """
    t_start = time.perf_counter()
    _quiet_lightning()
    opts = cfg.simulate
    repeats = opts.repeats
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"simulate.repeats={repeats!r} must be an integer >= 1")
    macro, noise = macro_config(cfg), noise_config(cfg)
    ckpt = _ckpt(cfg, required=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    dm = build_datamodule(cfg)
    dm.setup("validate")  # fail fast, in one line, when the data is missing
    float_model = build_float_model(cfg, dm)
    report = load_weights(float_model, ckpt, strict_classifier=True)
    acim_model = convert_model(cfg, float_model, mode="inference")

    trainer = build_trainer(cfg)
    if isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher):
        raise ValueError(
            f"trainer.strategy={cfg.trainer.strategy}: spawned processes cannot "
            "return simulation results; use trainer.strategy=ddp"
        )
    collect = bool(opts.save_predictions)
    common = {"collect_predictions": collect, "log_to_logger": False}
    passes: dict[str, dict[str, Any]] = {}

    def run(module: ACiMClassifier, label: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        trainer.validate(module, datamodule=dm, verbose=False)
        res = dict(module.results)
        res["seconds"] = time.perf_counter() - t0
        if trainer.is_global_zero:
            log.info(
                "%s: top-1 %.4f (%d samples, %.1f s)",
                label,
                res["top1"],
                res["num_samples"],
                res["seconds"],
            )
        return res

    if opts.float:
        passes["float"] = run(
            _classifier_module(
                float_model, cfg, dm.num_classes, dm.class_names, log_prefix="float", **common
            ),
            "float",
        )
    module = _classifier_module(
        acim_model, cfg, dm.num_classes, dm.class_names, log_prefix="inference", **common
    )
    if opts.inference:
        set_mode(acim_model, "inference")
        passes["inference"] = run(module, "inference")

    set_mode(acim_model, "simulate")
    module.log_prefix = "sim"
    stochastic = noise.enabled or noise.cell_sigma > 0
    sim_runs = []
    for r in range(repeats if stochastic else 1):
        resample_noise(acim_model, int(cfg.seed) + r)
        sim_runs.append(run(module, f"simulate (seed {int(cfg.seed) + r})"))
    if not stochastic and repeats > 1:
        log.info(
            "noise is off: the simulation is deterministic, ran it once for %d repeats", repeats
        )
        sim_runs = sim_runs * repeats

    results = _collect_results(cfg, passes, sim_runs, dm, macro, noise, ckpt, report, trainer)
    results["seconds"] = time.perf_counter() - t_start
    if trainer.is_global_zero:
        out = _output_dir(cfg)
        if collect:
            preds = {k: v.get("preds") for k, v in passes.items()}
            preds["sim"] = [run_.get("preds") for run_ in sim_runs]
            (out / "predictions.json").write_text(json.dumps(preds))
        (out / "results.json").write_text(json.dumps(results, indent=2))
        print(format_table(results), flush=True)
        print(f"results: {out / 'results.json'}", flush=True)
        if trainer.logger is not None:
            _log_summary(trainer.logger, cfg, passes, sim_runs, results)
    return results


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


def _log_summary(logger, cfg, passes, sim_runs, results) -> None:
    """Per-pass metrics, one point per repeat, and the resolved config in HPARAMS."""
    metrics = {}
    for name, res in passes.items():
        metrics.update(
            {
                f"{name}/acc": res["top1"],
                f"{name}/acc_top5": res["top5"],
                f"{name}/loss": res["loss"],
            }
        )
    metrics.update(
        {
            "sim/acc": results["sim_top1"],
            "sim/acc_std": results["sim_top1_std"],
            "sim/acc_top5": results["sim_top5"],
            "sim/loss": sum(r["loss"] for r in sim_runs) / len(sim_runs),
        }
    )
    for r, run_ in enumerate(sim_runs):
        logger.log_metrics({"sim/acc_repeat": run_["top1"]}, step=r)
    _log_hparams(logger, cfg, metrics)
    logger.finalize("success")


def _log_hparams(logger, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """The flattened config with metrics: TensorBoard's HPARAMS tab compares runs by them."""
    if isinstance(logger, TensorBoardLogger):
        logger.log_hyperparams(flatten_config(cfg), metrics)
    else:
        logger.log_hyperparams(flatten_config(cfg))
        logger.log_metrics(metrics, step=0)


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def _collect_results(cfg, passes, sim_runs, dm, macro, noise, ckpt, report, trainer) -> dict:
    top1, top1_std = _mean_std([r["top1"] for r in sim_runs])
    top5, top5_std = _mean_std([r["top5"] for r in sim_runs])
    n_cls = len(sim_runs[0]["per_class"])
    per_class = [sum(r["per_class"][c] for r in sim_runs) / len(sim_runs) for c in range(n_cls)]
    names = list(dm.class_names)

    def get(name: str, key: str):
        return passes[name][key] if name in passes else None

    def by_class(values):
        return None if values is None else dict(zip(names, values, strict=True))

    counts = {r["num_samples"] for r in [*passes.values(), *sim_runs]}
    return {
        "float_top1": get("float", "top1"),
        "float_top5": get("float", "top5"),
        "inference_top1": get("inference", "top1"),
        "inference_top5": get("inference", "top5"),
        "sim_top1": top1,
        "sim_top1_std": top1_std,
        "sim_top5": top5,
        "sim_top5_std": top5_std,
        "sim_top1_runs": [r["top1"] for r in sim_runs],
        "repeats": len(sim_runs),
        "num_samples": max(counts),
        "seconds": None,
        "seconds_float": get("float", "seconds"),
        "seconds_inference": get("inference", "seconds"),
        "seconds_sim": sum(r["seconds"] for r in {id(r): r for r in sim_runs}.values()),
        "per_class": {
            "float": by_class(get("float", "per_class")),
            "inference": by_class(get("inference", "per_class")),
            "sim": by_class(per_class),
        },
        "summary": {
            "model": cfg.model.name,
            "dataset": cfg.dataset.name,
            "num_classes": dm.num_classes,
            "macro": macro.describe(),
            "noise": _describe_noise(noise),
            "ckpt": None if ckpt is None else str(resolve_path(ckpt)),
            "ckpt_format": None if report is None else report["format"],
            "seed": int(cfg.seed),
            "world_size": trainer.world_size,
            "val_batch_size": cfg.dataset.get("val_batch_size"),
        },
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def _describe_noise(noise: NoiseConfig) -> str:
    parts = []
    if noise.file is not None:
        parts.append(f"measured({Path(noise.file).name})")
    elif noise.rand_sigma or noise.nonlinear_sigma:
        parts.append(f"gaussian(rand={noise.rand_sigma:g}%, nonlinear={noise.nonlinear_sigma:g}%)")
    if noise.cell_sigma:
        parts.append(f"cells={noise.cell_sigma:g}% {noise.cell_variation.value}")
    if noise.compression_alpha:
        parts.append(f"compression={noise.compression_alpha:g}")
    return ", ".join(parts) or "none"


def format_table(results: dict[str, Any]) -> str:
    """A small aligned text table of a :func:`simulate` result."""
    s = results["summary"]
    n = results["num_samples"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    def secs(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    rows = [
        (
            "float",
            pct(results["float_top1"]),
            pct(results["float_top5"]),
            secs(results["seconds_float"]),
        ),
        (
            "quantized inference",
            pct(results["inference_top1"]),
            pct(results["inference_top5"]),
            secs(results["seconds_inference"]),
        ),
    ]
    sim1, sim5 = pct(results["sim_top1"]), pct(results["sim_top5"])
    if results["repeats"] > 1:
        sim1 += f" ± {100 * results['sim_top1_std']:.2f}"
        sim5 += f" ± {100 * results['sim_top5_std']:.2f}"
    label = "simulated" + (f" (x{results['repeats']})" if results["repeats"] > 1 else "")
    rows.append((label, sim1, sim5, secs(results["seconds_sim"])))
    header = ("pass", "top-1", "top-5", "seconds")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(r) -> str:
        return "  ".join([r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in (1, 2, 3)])

    title = f"{s['model']} on {s['dataset']} ({n} samples), macro {s['macro']}, noise {s['noise']}"
    rule = "-" * len(line(header))
    return "\n".join(
        [
            title,
            rule,
            line(header),
            rule,
            *[line(r) for r in rows],
            rule,
            f"total {results['seconds']:.1f} s",
        ]
    )


# --------------------------------------------------------------------------------------- train


def train(cfg: DictConfig) -> dict[str, Any]:
    """QAT (every ACiM layer in ``train`` mode) or NAT (``trim_noise`` > 0, from ``ckpt``).

    Returns:
        The results dict: ``best_model_path``, ``best_val_acc``, ``export`` and final metrics.
    """
    t_start = time.perf_counter()
    _quiet_lightning()
    macro_config(cfg), noise_config(cfg)  # validate before any work
    for key in ("trim_noise", "attn_trim_noise"):
        if cfg[key] < 0:
            raise ValueError(f"{key}={cfg[key]} must be >= 0 (percent)")
    ckpt = _ckpt(cfg, required=False)
    if ckpt is None and (cfg.trim_noise > 0 or cfg.attn_trim_noise > 0):
        raise ValueError(
            "noise-aware training (trim_noise > 0) fine-tunes a trained model: set ckpt=PATH"
        )
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    dm = build_datamodule(cfg)
    dm.setup("fit")
    float_model = build_float_model(cfg, dm)
    load_weights(float_model, ckpt)
    _reinit_zero_classifier(float_model)
    model = convert_model(
        cfg,
        float_model,
        mode="train",
        trim_noise=float(cfg.trim_noise),
        attn_trim_noise=float(cfg.attn_trim_noise),
    )
    o = cfg.optim
    module = _classifier_module(
        model,
        cfg,
        dm.num_classes,
        dm.class_names,
        log_prefix="val",
        optimizer=o.name,
        lr=o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        milestones=list(o.milestones),
        gamma=o.gamma,
        label_smoothing=o.label_smoothing,
    )

    callbacks = []
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if name == "lr_monitor" and not cfg.get("logger"):
            continue
        callbacks.append(instantiate(cb_cfg))
    trainer = build_trainer(cfg, callbacks=callbacks)
    if trainer.logger is not None:
        _log_hparams(trainer.logger, cfg, {"val/acc": 0.0})
    trainer.fit(module, datamodule=dm)

    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if ckpt_cb is not None else ""
    if best:  # export the best weights, not the last
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    trainer.validate(module, datamodule=dm, verbose=False)
    final = dict(module.results)
    results = {
        "best_model_path": best or None,
        "best_val_acc": (
            round(float(ckpt_cb.best_model_score), 6)
            if ckpt_cb is not None and ckpt_cb.best_model_score is not None
            else final["top1"]
        ),
        "last_model_path": (ckpt_cb.last_model_path or None) if ckpt_cb is not None else None,
        "export": None,
        "val_top1": final["top1"],
        "val_top5": final["top5"],
        "num_samples": final["num_samples"],
        "per_class": dict(zip(dm.class_names, final["per_class"], strict=True)),
        "epochs": trainer.current_epoch,
        "mode": "nat" if cfg.trim_noise > 0 or cfg.attn_trim_noise > 0 else "qat",
        "seconds": None,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if trainer.is_global_zero:
        if cfg.get("export"):
            export = Path(cfg.export).expanduser().resolve()
            export.parent.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            tmp = export.with_suffix(export.suffix + ".tmp")
            torch.save(state, tmp)
            shutil.move(tmp, export)
            results["export"] = str(export)
        results["seconds"] = time.perf_counter() - t_start
        out = _output_dir(cfg)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        print(
            f"{results['mode'].upper()} {cfg.model.name} on {cfg.dataset.name}: best val top-1 "
            f"{100 * results['best_val_acc']:.2f}%, final {100 * final['top1']:.2f}% "
            f"({results['epochs']} epochs, {results['seconds']:.0f} s)\n"
            f"best checkpoint: {best}\nfloat state_dict: {results['export']}\n"
            f"results: {out / 'results.json'}",
            flush=True,
        )
    return results
