"""Configuration: the schemas, composing a config, and turning it into objects.

The only place a ``DictConfig`` meets ``asim`` (style §2, §6). :func:`register_configs` stores
one schema per primary config (``simulate_schema``, ``train_schema``), typed with
:class:`asim.MacroConfig`, :class:`asim.NoiseConfig` and :class:`ModelConfig`, so presets list
only deltas and a typo or a wrong type fails when Hydra composes. The builders below give a
DataModule, a float model with its weights, the ACiM conversion (:func:`asim.convert_to_acim`
with the model preset's mapping) and a Trainer.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import inspect
import logging
import os
import re
import sys
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from asim import MacroConfig, NoiseConfig, convert_to_acim
from asim.checkpoint import load_checkpoint
from asim.cost import CostConfig
from asim.mapping import AttentionMacros, FirstLayer, LayerMacro
from asim.models import create_model, is_model, model_entrypoint

from . import data as _data
from . import datasets as _datasets
from .progress import LineProgress

# --- Hydra schemas of the frozen asim configs (engine track) -------------------------------
# MacroConfig and NoiseConfig are frozen (a layer's compiled program is keyed on them), and
# OmegaConf makes a node built from a frozen dataclass read-only, so ``macro.adc_bits=6``
# would fail at compose. The writable schema is derived from the one definition of the
# fields; macro_config/noise_config build (and validate) the frozen config from it.


def _writable(cls: type) -> type:
    """A mutable dataclass with ``cls``'s fields, types and defaults (for Hydra)."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            spec = field(default_factory=f.default_factory)
        else:
            spec = field(default=f.default)
        specs.append((f.name, hints[f.name], spec))
    return dataclasses.make_dataclass(cls.__name__, specs)


def _frozen(cls: type, node) -> Any:
    """The frozen ``cls`` of a (writable) schema node, validated by its ``__post_init__``."""
    values = OmegaConf.to_container(node, resolve=True)
    return cls(**values)


MacroSchema = _writable(MacroConfig)
NoiseSchema = _writable(NoiseConfig)
# --- end of the derived schemas --------------------------------------------------------------

__all__ = [
    "PROJECT_ROOT",
    "ModelConfig",
    "SimulateOptions",
    "build_datamodule",
    "build_float_model",
    "build_trainer",
    "compose",
    "convert_model",
    "cost_config",
    "job_dirname",
    "load_weights",
    "macro_config",
    "model_config",
    "noise_config",
    "register_configs",
    "resolve_path",
]

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The repository root: relative paths not found from the working directory are tried here."""


@dataclass
class ModelConfig:
    """A registered float model and how it maps onto the macro (the ``model`` group's schema);
    the mapping fields are the keyword arguments of :func:`asim.convert_to_acim`."""

    name: str = "digits_cnn"
    """Registry name (``asim.models.list_models()``)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra builder arguments; ``num_classes``, ``in_channels`` and ``image_size`` are derived
    from the dataset unless given here."""
    ckpt: str | None = None
    """Default checkpoint of this model preset (used when the run's ``ckpt`` is not set)."""
    first_layer: Optional[FirstLayer] = FirstLayer.digital  # noqa: UP045 (OmegaConf)
    """``digital`` (reference CNNs), ``acim`` or ``float`` (reference ViTs); the first conv is
    found by :func:`asim.mapping.first_conv_name`. null: no special first layer (a language
    model, whose token embedding is a float lookup)."""
    first_layer_bits: int = 8
    """Weight and input bits of a digital first layer (the reference's QuantConv2d: W8A8)."""
    signed_input: bool = False
    """Signed activations in the ACiM layers (reference: False for CNN convs, True for ViTs)."""
    classifier_signed_input: bool = False
    """Signed activations in the classifier (reference: False for CNNs, True for ViTs)."""
    exclude: list[str] = field(default_factory=list)
    """Qualified-name globs of layers kept float."""
    layer_macros: list[LayerMacro] = field(default_factory=list)
    """Per-layer MacroConfig deltas ``{match: GLOB, FIELD: VALUE, ...}`` applied in order,
    after the attention deltas, e.g. ``[{match: "layer4.*", adc_bits: 6}]``."""
    attention: AttentionMacros = field(default_factory=AttentionMacros)
    """MacroConfig deltas for attention projections (``proj``), QK^T (``qk``) and AV (``av``),
    e.g. ``model.attention.qk.input_bits=9``."""


@dataclass
class SimulateOptions:
    """The ``simulate`` block of ``simulate.yaml``."""

    repeats: int = 1
    """Noisy simulation re-run with seeds seed, seed+1, ...: mean ± sample std."""
    float: bool = True
    """Also validate the float model."""
    inference: bool = True
    """Also validate quantized inference (integer MACs, no macro)."""
    save_predictions: bool = False
    """Write predictions.json: per-sample index, true label and argmax of every pass."""
    sensitivity: bool = False
    """Per ACiM layer, top-1 with only that layer on the macro and with every layer but it
    (two simulated passes per layer, noise seeded as repeat 0): ``sensitivity`` in results."""
    measured_top1: Optional[builtins.float] = None  # noqa: UP045 (``float`` is a field here)
    """A chip's measured top-1 (fraction): a predicted-vs-measured row (results, table)."""
    chips: int = 1
    """Chips simulated: chip k (0 .. chips-1) draws its fixed pattern with ``noise.chip_seed``
    = (``noise.chip_seed``, else ``seed``) + k and runs ``repeats`` temporal-noise repeats;
    1: today's single chip (the pattern follows the noise seed)."""
    yield_threshold: Optional[builtins.float] = None  # noqa: UP045
    """A chip passes when its mean top-1 is at least this (fraction); None: quantized
    inference top-1 minus one point."""
    calibrate: Optional[str] = None  # noqa: UP045
    """Calibrate the ADCs (``asim.calibrate_adc``: max, percentile, mse, lloyd_max) on
    ``calibration_batches`` training batches before the passes; saved as calibration.json."""
    calibration_batches: int = 8
    """Training batches the calibration observes."""
    calibration_granularity: str = "layer"
    """``layer``: one ADC full scale per layer; ``column``: one per ADC (column group, spec
    §4.8; not with ``lloyd_max``)."""
    calibration_column_steps: Optional[int] = None  # noqa: UP045
    """With ``calibration_granularity=column``: the settings of each ADC's reference trim
    (every ADC's full scale rounded up to one of that many per layer); None: any."""


@dataclass
class _RunSchema:
    """Keys every primary config has; the groups without a schema stay untyped (``Any``)."""

    task_name: str = "???"
    seed: int = 0
    ckpt: str | None = None
    output_dir: str = "???"
    progress_percent: int = 10
    force: bool = False
    """Run values outside the physics of a macro (e.g. noise above 10 % of full scale)."""
    macro: MacroSchema = field(default_factory=MacroSchema)  # type: ignore[valid-type]
    noise: NoiseSchema = field(default_factory=NoiseSchema)  # type: ignore[valid-type]
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: Any = None
    trainer: Any = None
    logger: Any = None
    cost: Optional[CostConfig] = None  # noqa: UP045 (OmegaConf needs Optional)
    """The cost model's per-operation energies (``conf/cost``); None: no cost estimate."""


@dataclass
class SimulateSchema(_RunSchema):
    """``simulate.yaml``'s schema."""

    simulate: SimulateOptions = field(default_factory=SimulateOptions)
    optimized_metrics: list[str] | None = None
    """What simulate.py returns to a sweeper, e.g. [sim_top1, energy_pj] (hparams_search=);
    None: sim_top1. See lightning_modules.report.objectives."""
    conditions: list[dict[str, Any]] | None = None
    """Conditions every run (a search's trial) is simulated under, each a dict of dotted keys,
    e.g. ``[{noise.rand_sigma: 0.1}, {noise.rand_sigma: 0.3}]``: one sub-folder each; the
    objectives are pooled by ``condition_objective``. None: the run's own condition."""
    condition_objective: str = "worst"
    """How the objectives of several ``conditions`` are pooled: ``worst`` or ``mean``."""
    calibration: str | None = None
    """A saved ADC calibration (``calibration.json`` of a run with ``simulate.calibrate``, or
    ``asim.Calibration.save``) applied to the model before the passes; None: none."""


@dataclass
class TrainSchema(_RunSchema):
    """``train.yaml``'s schema."""

    trim_noise: float = 0.0
    attn_trim_noise: float = 0.0
    export: str | None = None
    resume: str | None = None
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    """Mixup (spec §9.5): lambda ~ Beta(alpha, alpha) mixes each batch with a permutation of
    itself; 0 = off, 1.0 = the reference's."""
    optimizer: Any = None
    scheduler: Any = None
    callbacks: Any = None


def _epochs(fractions: Sequence[float], max_epochs: int | None) -> list[int]:
    """MultiStepLR milestones at ``fractions`` of ``max_epochs`` (spec §9.5)."""
    fractions = list(fractions)
    if any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"milestones {fractions} must be fractions of max_epochs in (0, 1]")
    epochs = max_epochs if max_epochs not in (None, -1) else 1
    return sorted({max(1, int(f * epochs)) for f in fractions})


def _path_name(value: str) -> str:
    return Path(value).name if ("/" in value or os.sep in value) else value


def train_mode(trim_noise: float, attn_trim_noise: float = 0.0) -> str:
    """``nat`` (noise-aware: a training noise > 0) or ``qat``: the mode of a training run."""
    return "nat" if float(trim_noise) > 0 or float(attn_trim_noise) > 0 else "qat"


def _job_subdir(sweep_dir: str, overrides: Sequence[str]) -> str:
    """A sweep job's folder: :func:`job_dirname`, unless a folder of that name already holds
    another job (two checkpoints with one file name, ``a/model.pt`` and ``b/model.pt``): then
    with a digest of the overrides. A job run again (same overrides) shares its folder."""
    name = job_dirname(overrides)
    recorded = Path(sweep_dir) / name / ".hydra" / "overrides.yaml"
    if recorded.is_file() and list(OmegaConf.load(recorded)) != [str(o) for o in overrides]:
        name += "@" + hashlib.sha1("\n".join(map(str, overrides)).encode()).hexdigest()[:8]
    return name


def _file_label(folder: str) -> str:
    """A run folder's name fit for a file name one can pass on the command line unquoted
    (``trim_noise=30,seed=1`` -> ``trim_noise_30_seed_1``)."""
    return re.sub(r"[^\w.+\-@%]+", "_", Path(str(folder)).name)


def _run_label(overrides: Sequence[str]) -> str:
    """``_`` + the overrides of a single run for its folder name (TensorBoard's run name says
    what was changed; ``=`` and ``,`` as ``_`` so that paths into it need no quotes on the
    command line, e.g. ``resume=``), '' for none."""
    name = job_dirname(overrides)
    return "" if name == "job" else f"_{_file_label(name)}"


def job_dirname(overrides: Sequence[str]) -> str:
    """A sweep job's folder name from ALL its command-line overrides: ``k=v`` joined by
    commas, path values by their file name; too long a name is shortened with a hash."""
    parts = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if key.startswith("hydra."):
            continue
        parts.append(f"{key.lstrip('+~')}{sep}{_path_name(value)}" if sep else key)
    name = re.sub(r"[^\w.,=+\-\[\]@%]", "_", ",".join(parts)) or "job"
    if len(name) > 200:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:180]}...{digest}"
    return name


def _unique_dir(path: str) -> str:
    """``path``, or ``path_2``, ``path_3``, ... : the first that did not exist, created now so
    two runs started in the same second never share a folder."""
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        candidate = base if k == 1 else base.with_name(f"{base.name}_{k}")
        try:
            candidate.mkdir()
            return str(candidate)
        except FileExistsError:
            continue
    raise RuntimeError(f"no free run folder next to {base}")


def register_configs() -> None:
    """Store the schemas and resolvers (call before composing; the entry points do)."""
    cs = ConfigStore.instance()
    cs.store(name="simulate_schema", node=SimulateSchema)
    cs.store(name="train_schema", node=TrainSchema)
    for key in _data.SCHEMAS:  # the dataset presets' bases (typed deltas)
        cs.store(name=f"dataset_schema_{key}".rstrip("_"), node=_data.dataset_schema(key))
    for name, fn in (
        ("epochs", _epochs),
        ("job_dirname", job_dirname),
        ("unique_dir", _unique_dir),
        ("job_subdir", _job_subdir),
        ("run_label", _run_label),
        ("train_mode", train_mode),
        ("file_label", _file_label),
        ("vocab_size", _datasets.vocab_size),  # text presets' num_classes
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)
    if not OmegaConf.has_resolver("metric_directions"):  # Optuna's direction per metric
        OmegaConf.register_new_resolver("metric_directions", _metric_directions)


def _metric_directions(names: Sequence[str]) -> list[str]:
    from .report import directions

    return directions(list(names))


def compose(config_name: str = "simulate", overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with command-line style overrides, outside an entry
    point (tests, notebooks): ``simulate(compose("simulate", ["macro=ideal"]))``.

    ``output_dir`` (the Hydra run dir in an entry point) defaults to
    ``outputs/<config_name>/compose``; pass ``output_dir=DIR`` to choose it.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    overrides = list(overrides)
    if not any(o.lstrip("+~").split("=", 1)[0] == "output_dir" for o in overrides):
        overrides.append(f"output_dir={PROJECT_ROOT / 'outputs' / config_name / 'compose'}")
    if GlobalHydra.instance().is_initialized():  # inside a Hydra app: compose with its loader
        return hydra_compose(config_name=config_name, overrides=overrides)
    # initialize_config_dir restores the previous (empty) global state on exit
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


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
    """The validated :class:`MacroConfig` of ``cfg.macro`` (one-line ValueError if invalid).

    A preset whose fields were overridden is named by the preset and the changed fields
    (``bitserial_255+adc_bits=7,nrow=63(W8A8, nrow=63, adc=7, ...)``), not as a preset it no
    longer is."""
    node = cfg.macro
    if node.get("adc_levels_csv"):  # a levels CSV resolves like a noise file
        node = OmegaConf.merge(node, {"adc_levels_csv": str(resolve_path(node.adc_levels_csv))})
    macro = _frozen(MacroConfig, node)
    preset = PROJECT_ROOT / "conf" / "macro" / f"{macro.name}.yaml"
    if preset.is_file():
        fields = OmegaConf.merge(OmegaConf.structured(MacroSchema), OmegaConf.load(preset))
        base = _frozen(MacroConfig, fields)
        skip = {"name", "adc_thresholds", "adc_values"}  # long: describe() says adc_levels=table
        names = [f.name for f in dataclasses.fields(macro) if f.name not in skip]
        changed = [
            f"{k}={getattr(macro, k)}" for k in names if getattr(macro, k) != getattr(base, k)
        ]
        if changed:
            macro = macro.replace(name=f"{base.name}+{','.join(changed)}")
    return macro


def cost_config(cfg: DictConfig) -> CostConfig | None:
    """The validated :class:`asim.CostConfig` of ``cfg.cost`` (None: ``cost=null``, no cost
    estimate)."""
    if cfg.get("cost") is None:
        return None
    cost = OmegaConf.to_object(cfg.cost)
    if not isinstance(cost, CostConfig):  # an untyped node (a schema without the cost group)
        cost = CostConfig(**cost)
    return cost


def noise_config(cfg: DictConfig) -> NoiseConfig:
    """The validated :class:`NoiseConfig` of ``cfg.noise``, its table path made absolute."""
    noise = _frozen(NoiseConfig, cfg.noise)
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


def build_datamodule(cfg: DictConfig, **overrides: Any) -> L.LightningDataModule:
    """The DataModule of ``cfg.dataset`` (:func:`lightning_modules.data.instantiate_datamodule`);
    a relative ``dataset.root`` is resolved here (working directory, then the repository root)
    and passed as ``root=``; ``dataset.seed`` (the run's ``seed`` unless set) as ``seed``."""
    dataset = cfg.dataset
    if dataset.get("root") is not None and "root" not in overrides:
        overrides["root"] = str(resolve_path(dataset.root))
    seed = int(dataset.seed) if "seed" in dataset else int(cfg.seed)
    return _data.instantiate_datamodule(dataset, seed=seed, **overrides)


def build_float_model(cfg: DictConfig, datamodule: L.LightningDataModule) -> nn.Module:
    """``create_model(model.name)`` sized by the dataset (classes, channels, image size)."""
    mcfg = cfg.model
    kwargs: dict[str, Any] = {"num_classes": datamodule.num_classes}
    kwargs.update(_derived_kwargs(mcfg.name, datamodule))
    kwargs.update(OmegaConf.to_container(mcfg.kwargs, resolve=True))
    try:
        return create_model(mcfg.name, **kwargs)
    except TypeError as e:
        raise ValueError(f"model={mcfg.name}: {e}; check model.kwargs") from None


def _derived_kwargs(name: str, datamodule) -> dict[str, Any]:
    if not is_model(name):
        return {}
    params = inspect.signature(model_entrypoint(name)).parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out = {}
    if "in_channels" in params or var_kw:
        out["in_channels"] = datamodule.in_channels
    if "image_size" in params:
        out["image_size"] = datamodule.image_size
    if "block_size" in params and getattr(datamodule, "block_size", None):  # language models
        out["block_size"] = datamodule.block_size
    return out


def load_weights(
    model: nn.Module,
    ckpt: str | None,
    *,
    strict_classifier: bool = False,
    dataset: str | None = None,
) -> dict[str, Any] | None:
    """Load a checkpoint into the float model; None leaves it as initialised.

    With ``strict_classifier`` a checkpoint whose classifier has another class count than the
    dataset is an error that names the dataset (simulation); otherwise the model keeps its
    fresh head (fine-tuning, a warning).
    """
    if ckpt is None:
        return None
    path = resolve_path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: ckpt={ckpt} ({path})")
    report = load_checkpoint(model, path)
    if report["classifier"] == "reset" and strict_classifier:
        have = report.get("classifier_classes")
        if have is None:
            raise ValueError(f"checkpoint {path} has no classifier for this model; pass ckpt=PATH")
        want = _head_outputs(model)
        raise ValueError(
            f"dataset={dataset} has {want} classes but checkpoint {path.name} was trained on "
            f"{have}: check dataset= and dataset.root (or pass the checkpoint trained on this "
            "dataset)"
        )
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


def _head_outputs(model: nn.Module) -> int | None:
    from asim.mapping import classifier_name

    name = classifier_name(model)
    head = model.get_submodule(name) if name else None
    return getattr(head, "out_features", None)


def convert_model(
    cfg: DictConfig,
    float_model: nn.Module,
    *,
    mode: str,
    trim_noise: float = 0.0,
    attn_trim_noise: float = 0.0,
) -> nn.Module:
    """:func:`asim.convert_to_acim` with the model preset's mapping (spec §9)."""
    mcfg = model_config(cfg)
    try:
        return convert_to_acim(
            float_model,
            macro_config(cfg),
            noise_config(cfg),
            first_layer=mcfg.first_layer,
            first_layer_bits=mcfg.first_layer_bits,
            signed_input=mcfg.signed_input,
            classifier_signed_input=mcfg.classifier_signed_input,
            layer_macros=mcfg.layer_macros,
            attention=mcfg.attention,
            exclude=mcfg.exclude,
            trim_noise=trim_noise,
            attn_trim_noise=attn_trim_noise,
            mode=mode,
        )
    except ValueError as e:
        msg = str(e)
        for key in ("layer_macros", "attention"):
            if msg.startswith(key):
                msg = f"model.{msg}"
        raise ValueError(msg) from None


# ----------------------------------------------------------------------------- Lightning side


def build_trainer(
    cfg: DictConfig, *, callbacks: list | None = None, logger: bool = True
) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with the configured logger (or none). When stdout is
    not a terminal the progress bar becomes one line per ``progress_percent`` %."""
    lg = instantiate(cfg.logger) if logger and cfg.get("logger") else False
    callbacks = list(callbacks or [])
    overrides: dict[str, Any] = {}
    if cfg.trainer.get("enable_progress_bar", True) and not sys.stdout.isatty():
        overrides["enable_progress_bar"] = False
        callbacks.append(LineProgress(int(cfg.get("progress_percent", 10))))
    trainer = instantiate(cfg.trainer, logger=lg, callbacks=callbacks, **overrides)
    # trainer.deterministic turns on torch's NaN-filling of torch.empty, a debugging aid that
    # makes the engine's large scratch buffers ~15x slower; results do not depend on it.
    torch.utils.deterministic.fill_uninitialized_memory = False
    return trainer


def quiet_lightning() -> None:
    """Lightning's start-up chatter off; float layers without TF32 (spec Q35)."""
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
    # TF32 convs/matmuls on GPU change float layers (the stem, excluded layers) by ulps against
    # CPU, which can flip quantization boundaries. Simulation stays exact.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
