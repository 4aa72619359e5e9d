"""Results: ``results.json`` (never overwritten, written after every repeat), the table, the
TensorBoard/CSV summary.

Field names of ``results.json`` are a contract (README "results.json", the sweep report):
extend them, never rename them.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from asim import MacroConfig, NoiseConfig, acim_modules

__all__ = [
    "ResultsFile",
    "describe_macros",
    "describe_noise",
    "format_conversions",
    "format_energy",
    "format_table",
    "hparams",
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


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def describe_noise(noise: NoiseConfig) -> str:
    parts = []
    if noise.histogram is not None:
        parts.append(f"histogram({Path(noise.histogram).name})")
    elif noise.file is not None:
        parts.append(f"measured({Path(noise.file).name})")
    elif noise.rand_sigma or noise.nonlinear_sigma:
        parts.append(f"gaussian(rand={noise.rand_sigma:g}%, nonlinear={noise.nonlinear_sigma:g}%)")
    if noise.cell_sigma:
        parts.append(f"cells={noise.cell_sigma:g}% {noise.cell_variation.value}")
    if noise.compression_alpha:
        parts.append(f"compression={noise.compression_alpha:g}")
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


def _scaled(value: float | None, units, digits: int, base: str) -> str:
    """``value`` in the first of ``units`` (``(name, scale)``, largest first) it reaches,
    else in ``base``; ``-`` for None."""
    if value is None:
        return "-"
    for unit, scale in units:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g} {unit}"
    return f"{value:.{digits}g}{base}"


def format_energy(pj: float | None) -> str:
    """Energy in readable units: ``1.234 µJ``, ``56.7 nJ``, ``890 pJ``."""
    return _scaled(pj, (("mJ", 1e9), ("µJ", 1e6), ("nJ", 1e3)), 3, " pJ")


def format_conversions(count: float | None) -> str:
    """A count in readable units: ``164.1 M``, ``52.3 k``, ``980``."""
    return _scaled(count, (("G", 1e9), ("M", 1e6), ("k", 1e3)), 4, "")


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
        energy = format_energy(cost["energy_pj"]) if cost else "-"
        conversions = format_conversions(cost["adc_conversions"]) if cost else "-"
        rows.append((label, sim1, sim5, secs(results["seconds_sim"]), energy, conversions))
    header = ("pass", "top-1", "top-5", "seconds", "energy/sample", "ADC conv./sample")
    if "sim_ppl" in results:  # a language model
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


def hparams(cfg: DictConfig) -> dict[str, Any]:
    """What TensorBoard's HPARAMS compares: the swept (overridden) keys first, then every
    ``macro.*`` and ``noise.*`` field; flat ``{"macro.adc_bits": 8, ...}``. A group override
    (``macro=ideal``) is logged as its option name."""
    from hydra.core.hydra_config import HydraConfig

    out: dict[str, Any] = {}
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    for key in swept_keys(cfg):
        if key in choices:
            out[key] = _plain(choices[key])
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, DictConfig) or OmegaConf.is_list(value):
            value = json.dumps(OmegaConf.to_container(value, resolve=True))
        out[key] = _plain(value)
    for group in ("macro", "noise"):
        for name, value in OmegaConf.to_container(cfg[group], resolve=True).items():
            out.setdefault(f"{group}.{name}", _plain(value))
    return out


def log_summary(logger, cfg: DictConfig, metrics: dict[str, float], per_repeat=()) -> None:
    """Metrics with the config in HPARAMS (TensorBoard) or hparams.yaml + metrics.csv."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for r, value in enumerate(per_repeat):
        logger.log_metrics({"sim/acc_repeat": value}, step=r)
    # sim/* first: TensorBoard's HPARAMS table shows the metrics in this order
    metrics = dict(sorted(metrics.items(), key=lambda kv: not kv[0].startswith("sim/")))
    if isinstance(logger, TensorBoardLogger):
        logger.log_hyperparams(hparams(cfg), metrics)
    else:
        logger.log_hyperparams(hparams(cfg))
        logger.log_metrics(metrics, step=0)
    logger.finalize("success")
