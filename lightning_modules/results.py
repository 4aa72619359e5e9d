"""Results: ``results.json`` (never overwritten, written after every repeat), the table, the
TensorBoard/CSV summary.

Field names of ``results.json`` are a contract (README "results.json", the sweep report):
extend them, never rename them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from asim import MacroConfig, NoiseConfig, acim_modules

__all__ = [
    "PassResult",
    "ResultsFile",
    "RunResult",
    "field_table",
    "describe_macros",
    "describe_noise",
    "format_conversions",
    "format_energy",
    "format_table",
    "format_unit",
    "hparams",
    "ideal_parts",
    "tensorboard_hparams",
    "log_summary",
    "mean_std",
    "swept_keys",
]

TABLE_LOG = logging.getLogger("asim.results")
"""The results table goes to this logger too; the Hydra run's log file keeps it
(``conf/hydra/default.yaml``)."""


class ResultsFile:
    """``results.json`` of one run. An existing file is never overwritten: the first
    :meth:`write` claims the first free name (``results.json``, else ``results-1.json``, ...,
    created exclusively, so concurrent runs cannot take the same one); later writes replace
    that file atomically, so a reader never sees half a file. A run that fails before its
    first result leaves no file."""

    def __init__(self, folder: str | os.PathLike, stem: str = "results") -> None:
        self.folder = Path(folder)
        self.stem = stem
        self.path: Path | None = None
        self.suffix = ""

    def _claim(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        for k in range(10_000):
            path = self.folder / (f"{self.stem}.json" if k == 0 else f"{self.stem}-{k}.json")
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            self.path, self.suffix = path, "" if k == 0 else f"-{k}"
            return path
        raise RuntimeError(f"no free results file name in {self.folder}")  # pragma: no cover

    def sibling(self, stem: str) -> Path:
        """A companion file with the same numbering, e.g. ``predictions-1.json``."""
        path = self.path or self._claim()
        return path.with_name(f"{stem}{self.suffix}.json")

    def write(self, results: dict[str, Any], path: Path | None = None) -> Path:
        path = path or self.path or self._claim()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, path)
        return path


def _field(doc: str, default: Any = None, factory=None):
    """A results field with its documentation (README's results.json table is made of it)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"doc": doc})
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclass
class PassResult:
    """One validation pass (float, quantized inference, one simulated repeat, a sensitivity
    pass): what :class:`~lightning_modules.module.ACiMClassifier` measured, and its time.
    Fields are global (all processes); a new metric (e.g. perplexity) is one more field."""

    name: str
    top1: float
    top5: float
    loss: float
    correct: int
    num_samples: int
    per_class: list[float] | None
    seconds: float = 0.0
    ppl: float | None = None  # language models: perplexity of the pass
    num_tokens: int | None = None  # language models: tokens scored
    correct_top5: int | None = None
    preds: list[int] | None = None
    targets: list[int] | None = None
    indices: list[int] | None = None

    @classmethod
    def of(cls, name: str, measured: dict[str, Any], seconds: float) -> PassResult:
        """From the module's ``results`` dict."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(name=name, seconds=seconds, **{k: v for k, v in measured.items() if k in known})


@dataclass
class RunResult:
    """``results.json`` of a simulation run: ``asdict`` of this record. Field names are a
    contract: add fields (one line each, with their doc), never rename them."""

    float_top1: float | None = _field(
        "float model top-1, a fraction in [0, 1] (null with `simulate.float=false`)"
    )
    float_top5: float | None = _field("float model top-5")
    inference_top1: float | None = _field(
        "quantized inference top-1 (null with `simulate.inference=false`)"
    )
    inference_top5: float | None = _field("quantized inference top-5")
    sim_top1: float | None = _field("simulated top-1, mean over repeats")
    sim_top1_std: float | None = _field("sample std of `sim_top1` over repeats (0 for one repeat)")
    sim_top5: float | None = _field("simulated top-5, mean over repeats")
    sim_top5_std: float | None = _field("sample std of `sim_top5` over repeats")
    sim_top1_runs: list[float] = _field("top-1 of every repeat", factory=list)
    sim_correct_runs: list[int] = _field(
        "correct samples of every repeat (exact counts)", factory=list
    )
    repeats: int = _field("repeats finished", 0)
    repeats_requested: int = _field("`simulate.repeats` x `simulate.chips`", 0)
    complete: bool = _field(
        "false while passes are missing (written after every pass; Ctrl-C keeps them)", False
    )
    num_samples: int | None = _field("validation samples counted (all processes together)")
    seconds: float | None = _field("wall time of the run after start-up")
    seconds_float: float | None = _field("seconds of the float pass")
    seconds_inference: float | None = _field("seconds of the quantized-inference pass")
    seconds_sim: float | None = _field("seconds of the simulated passes (every repeat run)")
    per_class: dict[str, Any] = _field(
        "top-1 per class name for `float`, `inference` and `sim` (mean over repeats)", factory=dict
    )
    summary: dict[str, Any] = _field(
        "model, dataset, classes, macro (with every per-layer macro in use; `layer_macros`: "
        "macro -> layers) and noise in words, checkpoint path and format, seed, world size, "
        "batch size, `cost_preset`, `backend` (engine backends of the simulated pass), "
        "`ideal` (what the simulated pass left ideal: ADC, noise, exact shortcut, float "
        "layers) and "
        "`hybrid_quantized` (hybrid cycles still pass the ADC, quirk Q4)",
        factory=dict,
    )
    cost: dict[str, Any] | None = _field(
        "the cost model per sample: counts, `energy_pj`, `energy_breakdown_pj`, `latency_ns`, "
        "`throughput_fps`, `area_mm2`, `tops_per_w`, `macs` (docs/cost.md); null with `~cost`"
    )
    cost_layers: list[dict[str, Any]] | None = _field("the same per layer, `[{name, ...}]`")
    sensitivity: list[dict[str, Any]] | None = _field(
        "`[{layer, alone_top1, without_top1}]` with `simulate.sensitivity=true`, else null"
    )
    float_ppl: float | None = _field(
        "language models: float perplexity (`*_top1`: next-token accuracy)"
    )
    inference_ppl: float | None = _field("language models: quantized-inference perplexity")
    sim_ppl: float | None = _field("language models: simulated perplexity, mean over repeats")
    sim_ppl_std: float | None = _field("language models: sample std of `sim_ppl`")
    sim_ppl_runs: list[float] | None = _field("language models: perplexity of every repeat")
    num_tokens: int | None = _field("language models: tokens scored (null for classifiers)")
    measured_top1: float | None = _field(
        "a chip's measured top-1 (`simulate.measured_top1`), else null"
    )
    sim_minus_measured: float | None = _field(
        "`sim_top1 - measured_top1`: the prediction error against silicon"
    )
    chips: int = _field("chips simulated (`simulate.chips`; chip k has `chip_seed` seed + k)", 1)
    chip_top1: list[float] = _field(
        "simulated top-1 of every chip, the mean over its repeats", factory=list
    )
    worst_chip_top1: float | None = _field("the lowest of `chip_top1`")
    yield_threshold: float | None = _field(
        "top-1 a chip must reach (`simulate.yield_threshold`, default quantized inference "
        "top-1 minus 0.01)"
    )
    yield_top1: float | None = _field(
        "fraction of chips with `chip_top1` at or above `yield_threshold`"
    )
    calibration: dict[str, Any] | None = _field(
        "the ADC calibration applied (`simulate.calibrate` or `calibration=PATH`): `method`, "
        "`percentile`, `granularity`, `column_steps`, `batches`, `made` (calibrated in this run), "
        "`file`, `layers` "
        "`[{layer, full_scale, nrow, adc_bits, clip_rate, code_histogram}]`; else null"
    )
    config: dict[str, Any] = _field("the resolved config", factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_table(record: type = RunResult) -> str:
    """The Markdown table of a record's fields and their docs (README, "results.json")."""
    rows = [f"| `{f.name}` | {f.metadata['doc']} |" for f in dataclasses.fields(record)]
    return "\n".join(["| field | meaning |", "|---|---|", *rows])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def describe_noise(noise: NoiseConfig, adc_bits: int | None = None) -> str:
    """The noise in words; Gaussian sigmas both as % of full scale and in LSB of an
    ``adc_bits`` ADC (the run's macro) when it is given."""
    parts = []
    if noise.histogram is not None:
        parts.append(f"histogram({Path(noise.histogram).name})")
    elif noise.file is not None:
        parts.append(f"measured({Path(noise.file).name})")
    elif adc_bits is not None and noise.enabled:
        pct, lsb = noise.at_adc(adc_bits), ((1 << adc_bits) - 1) / 100
        parts.append(
            f"gaussian(rand={pct.rand_sigma:.3g}% = {pct.rand_sigma * lsb:.3g} LSB, "
            f"nonlinear={pct.nonlinear_sigma:.3g}% = {pct.nonlinear_sigma * lsb:.3g} LSB; "
            f"LSB of the {adc_bits}-bit ADC)"
        )
    elif noise.rand_sigma_lsb or noise.nonlinear_sigma_lsb:
        parts.append(
            f"gaussian(rand={noise.rand_sigma_lsb:g} LSB, "
            f"nonlinear={noise.nonlinear_sigma_lsb:g} LSB)"
        )
    elif noise.rand_sigma or noise.nonlinear_sigma:
        parts.append(f"gaussian(rand={noise.rand_sigma:g}%, nonlinear={noise.nonlinear_sigma:g}%)")
    if noise.cell_sigma:
        parts.append(f"cells={noise.cell_sigma:g}% {noise.cell_variation.value}")
    if noise.compression_alpha:
        parts.append(f"compression={noise.compression_alpha:g}")
    if noise.fixed_pattern:  # a chip's fixed column pattern (spec §4.7)
        trim = "" if noise.column_trim_lsb is None else f", trim {noise.column_trim_lsb:g} LSB"
        chip = "the run's seed" if noise.chip_seed is None else noise.chip_seed
        parts.append(
            f"chip pattern(offset {noise.column_offset_lsb:g} LSB, gain {noise.column_gain_pct:g}%,"
            f" sigma spread {noise.column_sigma_spread:g}, {noise.adc_group} column(s) per ADC"
            f"{trim}; chip {chip})"
        )
    return ", ".join(parts) or "none"


def layer_macros(model: nn.Module) -> dict[str, list[str]]:
    """``{macro.describe(): [layer names]}`` of every ACiM layer (attention parts as
    ``NAME.qk`` / ``NAME.av``), in model order: the macros actually used."""
    used: dict[str, list[str]] = {}
    for name, layer in acim_modules(model):
        kind = "digital " if layer.digital else ""
        used.setdefault(kind + layer.macro.describe(), []).append(name)
        for part in ("qk", "av"):
            m = getattr(layer, f"{part}_macro", None)
            if isinstance(m, MacroConfig):
                used.setdefault(kind + m.describe(), []).append(f"{name}.{part}")
    return used


def describe_macros(used: dict[str, list[str]], run_macro: MacroConfig) -> str:
    """The header's macro: the run's macro, plus every other macro in use with its layers."""
    main = run_macro.describe()
    parts = [main]
    for desc, names in used.items():
        if desc == main:
            continue
        shown = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
        parts.append(f"{desc} on {shown}")
    return "; ".join(parts)


def ideal_parts(model: nn.Module, noise: NoiseConfig, backend: str | None) -> dict[str, Any]:
    """What the simulated pass left ideal, in words (``summary.ideal``), and whether hybrid
    cycles still pass the ADC (``summary.hybrid_quantized``, quirk Q4): so that a number
    that looks too good explains itself."""
    ideal, quantized = [], False
    macros = [m for _, layer in acim_modules(model) if not layer.digital for m in _macros(layer)]
    if macros and all(_lossless(m) for m in macros):
        ideal.append("lossless ADC (it resolves every column count)")
    if not (noise.enabled or noise.cell_sigma):
        ideal.append("no read-out noise")
    if "exact shortcut" in (backend or ""):
        ideal.append("exact shortcut (integer MACs)")
    acim = {id(m) for _, m in acim_modules(model)}
    parts = {id(p) for _, m in acim_modules(model) for p in m.modules()}
    floats = [n for n, m in model.named_modules()
              if isinstance(m, (nn.Conv2d, nn.Linear, nn.MultiheadAttention))
              and id(m) not in acim and id(m) not in parts]  # fmt: skip
    if floats:
        ideal.append(f"float layers: {', '.join(floats[:3])}" + (" ..." if len(floats) > 3 else ""))
    quantized = any(m.hybrid_levels > 0 and not m.hybrid_exact for m in macros)
    return {"ideal": ideal, "hybrid_quantized": quantized}


def _macros(layer) -> list[MacroConfig]:
    return [layer.macro] + [
        m
        for part in ("qk", "av")
        if isinstance(m := getattr(layer, f"{part}_macro", None), MacroConfig)
    ]


def _lossless(macro: MacroConfig) -> bool:
    """Whether the ADC has a code for every column count (bit-parallel: nrow x (2^e - 1))."""
    levels = macro.nrow * (2 ** (macro.input_enc_bits or 1) - 1)
    return 2**macro.adc_bits - 1 >= levels


UNITS: dict[str, tuple[tuple[str, float], ...]] = {
    "energy_pj": (("mJ", 1e9), ("µJ", 1e6), ("nJ", 1e3), ("pJ", 1.0)),
    "latency_ns": (("ms", 1e6), ("µs", 1e3), ("ns", 1.0)),
    "count": (("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1.0)),
}
"""Readable units of a quantity, largest first, with their size in the base unit: the one
unit formatter of the results table and the sweep report."""


def unit(value: float, kind: str) -> tuple[float, str]:
    """``(size, name)`` of the largest unit of ``kind`` that ``value`` reaches (else the
    smallest)."""
    units = UNITS[kind]
    return next(((s, u) for u, s in units if abs(value) >= s), units[-1][::-1])


def format_unit(value: float | None, kind: str, digits: int = 3) -> str:
    """``value`` in its readable unit: ``1.23 µJ``, ``19 µs``, ``262.8 k``; ``-`` for None."""
    if value is None:
        return "-"
    size, name = unit(value, kind)
    return f"{value / size:.{digits}g} {name}".rstrip()


def format_energy(pj: float | None) -> str:
    """Energy in readable units: ``1.234 µJ``, ``56.7 nJ``, ``890 pJ``."""
    return format_unit(pj, "energy_pj")


def format_conversions(count: float | None) -> str:
    """A count in readable units: ``164.1 M``, ``52.3 k``, ``980``."""
    return format_unit(count, "count", 4)


def format_table(results: dict[str, Any]) -> str:
    """A small aligned text table of a simulation result: accuracy and seconds per pass, the
    macro's energy and ADC conversions per sample on the simulated row (the cost model), and
    the per-layer sensitivity when it was run."""
    s = results["summary"]
    n = results["num_samples"]
    cost = results.get("cost")

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
            "-",
            "-",
        ),
        (
            "quantized inference",
            pct(results["inference_top1"]),
            pct(results["inference_top5"]),
            secs(results["seconds_inference"]),
            "-",
            "-",
        ),
    ]
    if results["repeats"]:
        sim1, sim5 = pct(results["sim_top1"]), pct(results["sim_top5"])
        if results["repeats"] > 1:
            sim1 += f" ± {100 * results['sim_top1_std']:.2f}"
            sim5 += f" ± {100 * results['sim_top5_std']:.2f}"
        label = "simulated" + (f" (x{results['repeats']})" if results["repeats"] > 1 else "")
        chips = results.get("chips", 1)
        if chips > 1:
            label = f"simulated ({chips} chips x {results['repeats'] // chips})"
        energy = format_energy(cost["energy_pj"]) if cost else "-"
        conversions = format_conversions(cost["adc_conversions"]) if cost else "-"
        rows.append((label, sim1, sim5, secs(results["seconds_sim"]), energy, conversions))
    if len(results.get("chip_top1") or []) > 1:
        rows.append((f"worst of {chips} chips", pct(results["worst_chip_top1"]), "-", "-",
                     "-", "-"))  # fmt: skip
        if results.get("yield_top1") is not None:
            rows.append((f"yield (chips >= {pct(results['yield_threshold'])})",
                         pct(results["yield_top1"]), "-", "-", "-", "-"))  # fmt: skip
    measured = results.get("measured_top1")
    if measured is not None:
        rows.append(("measured (silicon)", pct(measured), "-", "-", "-", "-"))
        delta = results.get("sim_minus_measured")
        if delta is not None:
            rows.append(("simulated - measured", f"{100 * delta:+.2f}", "-", "-", "-", "-"))
    header = ("pass", "top-1", "top-5", "seconds", "energy/sample", "ADC conv./sample")
    if results.get("num_tokens") is not None:  # a language model
        header, rows = _with_perplexity(results, header, rows)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r) -> str:
        return "  ".join(
            [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, len(header))]
        )

    title = f"{s['model']} on {s['dataset']} ({n} samples), macro {s['macro']}, noise {s['noise']}"
    if results.get("num_tokens") is not None:  # language model: n blocks of tokens
        title = title.replace(f"({n} samples)", f"({n} blocks, {results['num_tokens']} tokens)")
    rule = "-" * len(line(header))
    total = results.get("seconds")
    footer = f"total {total:.1f} s" if total is not None else "total -"
    if not results.get("complete", True):
        footer += f" (interrupted: {results['repeats']} of {results['repeats_requested']} repeats)"
    preset = s.get("cost_preset")
    if cost and preset:
        footer += f"; cost model {preset} (macro only: compare designs, not absolute energy)"
    if cost and cost.get("latency_ns"):
        footer += (
            f"\nmacro per sample: latency {format_unit(cost['latency_ns'], 'latency_ns')} "
            f"({cost['throughput_fps']:.3g} samples/s), area {cost['area_mm2']:.3g} mm², "
            f"{cost['tops_per_w']:.3g} TOPS/W"
        )
    cal = results.get("calibration")
    if cal:
        method = cal["method"] + (" per ADC" if cal.get("granularity") == "column" else "")
        if cal.get("column_steps"):
            method += f", {cal['column_steps']} trim settings"
        how = (f"calibrated ({method}, {cal['batches']} batches)" if cal["made"]
               else f"calibration {cal['file']} ({method})")  # fmt: skip
        scales = ", ".join(
            f"{c['layer']} {c['full_scale']}/{c['nrow']} (clip {100 * c['clip_rate']:.2g}%)"
            for c in cal["layers"][:4]
        )
        more = f" +{len(cal['layers']) - 4}" if len(cal["layers"]) > 4 else ""
        footer += f"\nADC full scales {how}: {scales}{more}"
        if cal["made"] and cal["file"]:
            footer += f"; saved to {cal['file']}"
    if s.get("ideal"):
        footer += f"\nideal in this simulation: {'; '.join(s['ideal'])}"
    if s.get("hybrid_quantized"):
        footer += (
            "\nhybrid cycles are noise-free but still pass the ADC (quirk Q4) and are charged "
            "a conversion; macro.hybrid_exact=true makes them exact"
        )
    lines = [title, rule, line(header), rule, *[line(r) for r in rows], rule, footer]
    sens = results.get("sensitivity")
    if sens:
        head = ("layer", "only it on the macro", "all but it on the macro")
        body = [(r["layer"], pct(r["alone_top1"]), pct(r["without_top1"])) for r in sens]
        w = [max(len(r[i]) for r in [head, *body]) for i in range(3)]
        rows = [
            "  ".join([r[0].ljust(w[0]), r[1].rjust(w[1]), r[2].rjust(w[2])]) for r in [head, *body]
        ]
        title = f"per-layer sensitivity: simulated top-1 (noise seed {s['seed']}, as repeat 0)"
        lines += ["", title, "-" * len(rows[0]), rows[0], "-" * len(rows[0]), *rows[1:]]
    return "\n".join(lines)


def _with_perplexity(results: dict[str, Any], header: tuple, rows: list) -> tuple[tuple, list]:
    """A language model's table: perplexity first, top-1/top-5 as next-token accuracy."""
    ppl = [results.get("float_ppl"), results.get("inference_ppl")]
    if results["repeats"]:
        sim = results.get("sim_ppl")
        text = "-" if sim is None else f"{sim:.3f}"
        if sim is not None and results["repeats"] > 1:
            text += f" ± {results['sim_ppl_std']:.3f}"
    cells = ["-" if v is None else f"{v:.3f}" for v in ppl] + ([text] if results["repeats"] else [])
    cells += ["-"] * (len(rows) - len(cells))  # chips, yield, silicon: accuracy rows
    rows = [(r[0], c, *r[1:]) for r, c in zip(rows, cells, strict=True)]
    return (header[0], "perplexity", "next-token top-1", *header[2:]), rows


def _plain(value: Any) -> Any:
    value = getattr(value, "value", value)  # enums
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def swept_keys(cfg: DictConfig) -> list[str]:
    """The command-line overrides of this run or sweep job (Hydra's ``overrides.task``), as
    config keys; empty outside an entry point."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    keys = []
    for item in HydraConfig.get().overrides.task:
        key = str(item).split("=", 1)[0].lstrip("+~")
        if not key.startswith("hydra.") and key not in keys:
            keys.append(key)
    return keys


def _swept_values(cfg: DictConfig) -> dict[str, Any]:
    """The swept (overridden) keys and their values, flat; a group override (``macro=ideal``)
    as its option name, a list or dict as JSON."""
    from hydra.core.hydra_config import HydraConfig

    from .config import train_mode

    out: dict[str, Any] = {}
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    for key in swept_keys(cfg):
        value = choices[key] if key in choices else OmegaConf.select(cfg, key, default=None)
        if isinstance(value, DictConfig) or OmegaConf.is_list(value):
            value = json.dumps(OmegaConf.to_container(value, resolve=True))
        out[key] = _plain(value)
    if cfg.get("task_name") == "train":  # QAT vs NAT at a glance
        out.setdefault("mode", train_mode(cfg.trim_noise, cfg.attn_trim_noise))
        out.setdefault("trim_noise", float(cfg.trim_noise))
    return out


def hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's hyper-parameter record (``hparams.yaml`` of the CSV logger): the swept keys
    first, then every ``macro.*`` and ``noise.*`` field; flat ``{"macro.adc_bits": 8, ...}``."""
    out = _swept_values(cfg)
    for group in ("macro", "noise"):
        for name, value in OmegaConf.to_container(cfg[group], resolve=True).items():
            out.setdefault(f"{group}.{name}", _plain(value))
    return out


def tensorboard_hparams(cfg: DictConfig) -> dict[str, Any]:
    """What TensorBoard's HPARAMS tab compares: the swept keys (training: also the mode and
    ``trim_noise``), else the macro's and the noise's description: every column is shown
    with no box to tick (the tab lists only the first few hyper-parameters)."""
    out = _swept_values(cfg)
    if not any(k == "macro" or k.startswith("macro.") for k in out):
        from .config import macro_config  # the preset's name, or it + the changed fields

        out["macro"] = macro_config(cfg).describe()
    if not any(k == "noise" or k.startswith("noise.") for k in out):
        out["noise"] = describe_noise(
            NoiseConfig(**OmegaConf.to_container(cfg.noise, resolve=True)), cfg.macro.adc_bits
        )
    return out


HPARAMS_METRICS = ("sim/acc", "sim/acc_std", "sim/energy_pj", "sim/latency_ns", "sim/area_mm2")
"""The metrics TensorBoard's HPARAMS tab compares (it shows 5 without a box to tick); every
other metric is an ordinary scalar of the run."""


def log_summary(logger, cfg: DictConfig, metrics: dict[str, float], per_repeat=()) -> None:
    """Metrics with the config in HPARAMS (TensorBoard) or hparams.yaml + metrics.csv."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for r, value in enumerate(per_repeat):
        logger.log_metrics({"sim/acc_repeat": value}, step=r)
    # sim/* first: TensorBoard's HPARAMS table shows the metrics in this order
    metrics = dict(sorted(metrics.items(), key=lambda kv: not kv[0].startswith("sim/")))
    if isinstance(logger, TensorBoardLogger):  # the tab ticks only 5 metrics: declare those
        declared = {k: metrics[k] for k in HPARAMS_METRICS if k in metrics}
        logger.log_hyperparams(tensorboard_hparams(cfg), declared)
        logger.log_metrics({k: v for k, v in metrics.items() if k not in declared}, step=0)
    else:
        logger.log_hyperparams(hparams(cfg))
        logger.log_metrics(metrics, step=0)
    logger.finalize("success")
