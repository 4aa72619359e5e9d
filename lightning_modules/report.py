"""The design-study report: every job of one or more sweeps side by side.

``write_report(dirs)`` collects the ``results.json`` of every job under ``dirs`` (a Hydra sweep
folder, several of them, or single run folders), skips incomplete runs with a note and writes
into ``out`` (default: the only dir):

- ``sweep.csv``: one row per job, one column per swept key, the metrics of ``METRICS`` and
  the job folder;
- ``report.md``: the same table for people, the Pareto set and the plots;
- PNG plots: accuracy against every swept key (one line per combination of the other swept
  keys, error bars from repeats), accuracy against energy per sample with the Pareto-optimal
  jobs marked, and a per-layer sensitivity chart for every job whose results have one.

A job's swept keys come from its ``.hydra/overrides.yaml`` (Hydra writes it per job); the keys
whose value differs between the collected jobs are the columns. ``python report.py DIR ...``
calls this; ``lightning_modules.callbacks.SweepReport`` calls it at the end of every multirun.
``objectives`` is what ``simulate.py`` returns to Hydra's sweepers.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"
RESULTS_NAME = re.compile(r"results(?:-(\d+))?\.json")  # results.json, results-1.json, ...
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
CSV_FILE = "sweep.csv"
MARKDOWN_FILE = "report.md"

# Metric columns of sweep.csv, in order. Each is a path into results.json.
METRIC_PATHS: dict[str, tuple[str, ...]] = {
    "sim_top1": ("sim_top1",),
    "sim_top1_std": ("sim_top1_std",),
    "sim_top5": ("sim_top5",),
    "float_top1": ("float_top1",),
    "inference_top1": ("inference_top1",),
    "num_samples": ("num_samples",),
    "seconds": ("seconds",),
    "energy_pj": ("cost", "energy_pj"),
    "adc_conversions": ("cost", "adc_conversions"),
}
METRICS = tuple(METRIC_PATHS)
ACCURACY = "sim_top1"
TRAIN_ACCURACY = "val_top1"  # train.py's results.json: a train sweep's accuracy
TRAIN_METRICS = [TRAIN_ACCURACY, "val_top5"]  # extra sweep.csv columns for train.py runs
ENERGY = "energy_pj"
# The Pareto set of the report: maximize accuracy, minimize energy per sample.
PARETO_SENSES = {ACCURACY: "max", ENERGY: "min"}
# Overrides that are repeats of one design, not design dimensions: averaged in the plots.
REPEAT_KEYS = ("seed",)
# More combinations of the other swept keys than this: an accuracy plot shows every design as
# a dot and one line per value of a single second key (the best design at each x).
MAX_LINES = 8
# What an ordinary run returns to Hydra (a sweeper's objective when none is configured).
DEFAULT_OBJECTIVE = ACCURACY
OBJECTIVES_KEY = "optimized_metrics"

# Axis labels for the keys a study usually sweeps; others are labelled with the key itself.
KEY_LABELS = {
    "macro.adc_bits": "ADC resolution (bits)",
    "macro.nrow": "rows read out at once, nrow (rows)",
    "macro.input_enc_bits": "input bits per cycle, input_enc_bits (bits)",
    "macro.hybrid_levels": "digital MSB anti-diagonals, hybrid_levels",
    "macro.vote_levels": "voted MSB anti-diagonals, vote_levels",
    "macro.vote_samples": "conversions per voted cycle, vote_samples",
    "macro.weight_bits": "weight bits (bits)",
    "macro.input_bits": "activation bits (bits)",
    "noise.rand_sigma": "random noise sigma (% of ADC full scale)",
    "noise.nonlinear_sigma": "signal-dependent noise sigma (% of ADC full scale)",
    "noise.cell_sigma": "cell variation sigma (% of a cell's current)",
    "noise.compression_alpha": "gain compression alpha",
}
# How a null value of a key reads in plots.
NULL_LABELS = {"macro.input_enc_bits": "serial"}


@dataclass
class Job:
    """One run: its folder, its overrides (key -> value as written) and its results."""

    folder: Path
    overrides: dict[str, str]
    results: dict[str, Any]
    path: Path | None = None  # the results file; None: folder/results.json

    @property
    def accuracy_key(self) -> str:
        """``sim_top1`` for simulate.py runs, ``val_top1`` for train.py runs (QAT/NAT)."""
        return (
            ACCURACY
            if ACCURACY in self.results or TRAIN_ACCURACY not in self.results
            else TRAIN_ACCURACY
        )

    @property
    def accuracy(self) -> Any:
        return metric(self.results, self.accuracy_key)

    @property
    def accuracy_std(self) -> float:
        std = metric(self.results, f"{self.accuracy_key}_std")
        return float(std) if _is_number(std) else 0.0

    @property
    def location(self) -> Path:
        """The job folder, or its results file when that is not the first (results-1.json)."""
        if self.path is None or self.path.name == RESULTS_FILE:
            return self.folder
        return self.path

    def value(self, key: str) -> str:
        """The value of a key: the override, else the run's resolved config, else ''."""
        if key in self.overrides:
            return self.overrides[key]
        node: Any = self.results.get("config")
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return ""
            node = node[part]
        if isinstance(node, Mapping):  # a config group: its preset's name
            node = node.get("name", "")
        return _yaml_scalar(node)


@dataclass
class Collection:
    """The complete jobs found and the folders skipped, with the reason."""

    jobs: list[Job] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class Report:
    """What ``write_report`` wrote."""

    out: Path
    csv: Path
    markdown: Path
    plots: list[Path]
    collection: Collection
    swept: list[str]
    pareto: list[Job]


def metric(results: Mapping[str, Any], name: str) -> Any:
    """A metric of one results.json by column name (``energy_pj`` is ``cost.energy_pj``);
    None when absent."""
    node: Any = results
    for part in METRIC_PATHS.get(name, tuple(name.split("."))):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def objectives(results: Mapping[str, Any], cfg: Mapping[str, Any]) -> Any:
    """What a run returns to Hydra: ``sim_top1``, or with ``optimized_metrics: [a, b, ...]`` in
    the config (a multi-objective sweeper, e.g. ``hparams_search=macro_pareto``) the tuple of
    those metrics. Raises ValueError when an optimized metric is not in the results."""
    names = cfg.get(OBJECTIVES_KEY) if hasattr(cfg, "get") else None
    if not names:
        return metric(results, DEFAULT_OBJECTIVE)
    if isinstance(names, str):
        names = [names]
    values = []
    for name in names:
        value = metric(results, name)
        if value is None:
            hint = (
                " (the cost model writes cost.energy_pj: keep a cost preset, e.g. "
                "cost=zigzag_28nm, not ~cost)"
                if name in ("energy_pj", "adc_conversions")
                else f"; choose from {', '.join(METRICS)}"
            )
            raise ValueError(f"{OBJECTIVES_KEY}: {name!r} is not in results.json{hint}")
        values.append(float(value))
    return values[0] if len(values) == 1 else tuple(values)


def pareto_mask(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[bool]:
    """True for every point no other point dominates (at least as good in every objective and
    better in one); ``senses`` says per objective "max" or "min"."""
    signs = [1.0 if s == "max" else -1.0 for s in senses]
    if any(s not in ("max", "min") for s in senses):
        raise ValueError(f"senses must be 'max' or 'min', got {list(senses)}")
    scored = [[sign * v for sign, v in zip(signs, p, strict=True)] for p in points]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and any(
            x > y for x, y in zip(a, b, strict=True)
        )

    return [not any(dominates(other, p) for other in scored) for p in scored]


# --------------------------------------------------------------------------- collecting


def results_files(folder: Path) -> list[Path]:
    """The results files of one run folder: results.json, then results-1.json, ... (a run
    repeated in the same folder never overwrites the earlier one's file)."""
    numbered = []
    for path in folder.glob("results*.json"):
        match = RESULTS_NAME.fullmatch(path.name)
        if match:
            numbered.append((int(match.group(1) or 0), path))
    return [path for _, path in sorted(numbered)]


def collect(dirs: Iterable[str | os.PathLike]) -> Collection:
    """Every run under ``dirs``: each results file (``results.json``, ``results-1.json``, ...)
    of every folder that has one or a ``.hydra/overrides.yaml``. A folder without results, an
    unreadable file or one marked ``"complete": false`` is skipped with the reason."""
    found: dict[Path, None] = {}
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise ValueError(f"{root} is not a folder; pass a sweep or run folder")
        candidates = [
            p.parent for p in root.rglob("results*.json") if RESULTS_NAME.fullmatch(p.name)
        ]
        candidates += [p.parent.parent for p in root.rglob(str(OVERRIDES_FILE))]
        for folder in sorted(candidates):
            found.setdefault(folder.resolve(), None)
    collection = Collection()
    for folder in found:
        paths = results_files(folder)
        if not paths:
            collection.skipped.append((folder, f"no {RESULTS_FILE} (failed or not finished)"))
            continue
        overrides = _read_overrides(folder)
        for path in paths:
            try:
                results = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                collection.skipped.append((path, f"unreadable: {e}"))
                continue
            if not isinstance(results, dict):
                collection.skipped.append((path, "not a JSON object"))
            elif results.get("complete") is False:
                collection.skipped.append((path, "incomplete (still running or interrupted)"))
            else:
                collection.jobs.append(Job(folder, overrides, results, path))
    return collection


def _read_overrides(folder: Path) -> dict[str, str]:
    """key -> value of the task overrides Hydra recorded for a job ('~key' deletions and
    '+'/'++' prefixes dropped); {} for a folder without them."""
    path = folder / OVERRIDES_FILE
    if not path.is_file():
        return {}
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    lines = [str(x) for x in (OmegaConf.to_container(OmegaConf.load(path)) or [])]
    out = {}
    for override in OverridesParser.create().parse_overrides(lines):
        if override.is_delete():
            continue
        out[override.get_key_element().lstrip("+")] = override.get_value_element_as_str()
    return out


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """The override keys whose value differs between jobs (all keys of a single job), in the
    order they first appear."""
    keys: dict[str, None] = {}
    for job in jobs:
        for key in job.overrides:
            keys.setdefault(key, None)
    if len(jobs) <= 1:
        return list(keys)
    return [k for k in keys if len({job.value(k) for job in jobs}) > 1]


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _typed(value: str) -> Any:
    """An override value as a number where it is one; null as None; else the string."""
    if value in ("null", "None", "~"):
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _sort_key(value: str) -> tuple:
    typed = _typed(value)
    if typed is None:
        return (0, 0.0, "")
    if isinstance(typed, (int, float)):
        return (1, float(typed), "")
    return (2, 0.0, str(typed))


# --------------------------------------------------------------------------- writing


def write_report(dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None) -> Report:
    """Collect the jobs under ``dirs`` and write sweep.csv, report.md and the PNG plots into
    ``out`` (default: the only dir). Raises ValueError when no complete run is found."""
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise ValueError("no folder given: pass one or more sweep or run folders")
    if out is None:
        if len(dirs) > 1:
            raise ValueError("several folders: say where the merged report goes (out=DIR)")
        out = dirs[0]
    out = Path(out)
    collection = collect(dirs)
    if not collection.jobs:
        notes = "".join(f"; {f}: {why}" for f, why in collection.skipped[:3])
        raise ValueError(
            f"no complete {RESULTS_FILE} under {', '.join(map(str, dirs))}{notes}; "
            "run a sweep first (python simulate.py -m KEY=A,B)"
        )
    out.mkdir(parents=True, exist_ok=True)
    swept = swept_keys(collection.jobs)
    jobs = sorted(
        collection.jobs,
        key=lambda j: (tuple(_sort_key(j.value(k)) for k in swept), str(j.location)),
    )
    pareto = _pareto_jobs(jobs)
    csv_path = _write_csv(out / CSV_FILE, jobs, swept, out)
    plots = _write_plots(out, jobs, swept, pareto)
    md_path = out / MARKDOWN_FILE
    md_path.write_text(_markdown(dirs, jobs, swept, pareto, plots, collection.skipped, out))
    return Report(out, csv_path, md_path, plots, collection, swept, pareto)


def _pareto_jobs(jobs: Sequence[Job]) -> list[Job]:
    names = list(PARETO_SENSES)
    scored = [j for j in jobs if all(_is_number(metric(j.results, n)) for n in names)]
    mask = pareto_mask(
        [[float(metric(j.results, n)) for n in names] for j in scored],
        [PARETO_SENSES[n] for n in names],
    )
    return [j for j, keep in zip(scored, mask, strict=True) if keep]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _relative(folder: Path, out: Path) -> str:
    try:
        return os.path.relpath(folder, out.resolve())
    except ValueError:  # another drive (Windows)
        return str(folder)


def _write_csv(path: Path, jobs: Sequence[Job], swept: Sequence[str], out: Path) -> Path:
    columns = list(METRICS)
    if any(TRAIN_ACCURACY in j.results for j in jobs):  # train.py runs
        columns += TRAIN_METRICS
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*swept, *columns, "job"])
        for job in jobs:
            values = [metric(job.results, m) for m in columns]
            writer.writerow(
                [job.value(k) for k in swept]
                + ["" if v is None else v for v in values]
                + [_relative(job.location, out)]
            )
    return path


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a sweep.csv as dicts (values as written; blank for absent)."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def _pct(value: Any, std: Any = None) -> str:
    if not _is_number(value):
        return ""
    text = f"{100 * value:.2f}"
    if _is_number(std) and std > 0:
        text += f" ± {100 * std:.2f}"
    return text


def _energy_unit(values_pj: Iterable[float]) -> tuple[float, str]:
    """(divisor, unit) that shows the median energy in pJ, nJ, uJ or mJ as 1 to 999."""
    values = [abs(v) for v in values_pj]
    middle = statistics.median(values) if values else 0.0
    for divisor, unit in ((1e9, "mJ"), (1e6, "µJ"), (1e3, "nJ")):
        if middle >= divisor:
            return divisor, unit
    return 1.0, "pJ"


def _markdown(
    dirs: Sequence[Path],
    jobs: Sequence[Job],
    swept: Sequence[str],
    pareto: Sequence[Job],
    plots: Sequence[Path],
    skipped: Sequence[tuple[Path, str]],
    out: Path,
) -> str:
    energies = [metric(j.results, ENERGY) for j in jobs]
    has_energy = any(_is_number(e) for e in energies)
    divisor, unit = _energy_unit(e for e in energies if _is_number(e))
    on_front = {id(j) for j in pareto}
    lines = ["# Sweep report", ""]
    intro = f"{len(jobs)} runs from {', '.join(f'`{d}`' for d in dirs)}"
    summary = _common_summary(jobs)
    intro += f": {summary}." if summary else "."
    if swept:
        intro += f" Swept: {', '.join(f'`{k}`' for k in swept)}."
    lines += [intro, ""]
    lines.append(
        f"Accuracies in %, energy per sample; `{CSV_FILE}` has the same in fractions and pJ."
    )
    lines.append("")
    short = "val" if _accuracy_name(jobs).startswith("validation") else "sim"
    header = [f"`{k}`" for k in swept] + [
        f"{short} top-1",
        f"{short} top-5",
        "float top-1",
        "inference top-1",
    ]
    if has_energy:
        header += [f"energy/sample ({unit})", "ADC conversions/sample", "Pareto"]
    header += ["samples", "seconds", "job"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for job in jobs:
        r = job.results
        row = [job.value(k) for k in swept] + [
            _pct(job.accuracy, job.accuracy_std),
            _pct(metric(r, job.accuracy_key.replace("top1", "top5"))),
            _pct(metric(r, "float_top1")),
            _pct(metric(r, "inference_top1")),
        ]
        if has_energy:
            e, conv = metric(r, ENERGY), metric(r, "adc_conversions")
            row += [
                f"{e / divisor:.4g}" if _is_number(e) else "",
                f"{conv:,.0f}" if _is_number(conv) else "",
                "yes" if id(job) in on_front else "",
            ]
        n, s = metric(r, "num_samples"), metric(r, "seconds")
        row += [
            str(n) if n is not None else "",
            f"{s:.1f}" if _is_number(s) else "",
            f"`{_relative(job.location, out)}`",
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if has_energy:
        lines.append(
            f"Pareto set (highest simulated top-1 for its energy per sample): {len(pareto)} of "
            f"{sum(_is_number(e) for e in energies)} runs with an energy, by energy:"
        )
        lines.append("")
        design_keys = [k for k in swept if k not in REPEAT_KEYS]
        for number, (job, count) in enumerate(_front(pareto, design_keys), 1):
            e, top1 = metric(job.results, ENERGY), job.accuracy
            runs = f", {count} runs" if count > 1 else ""
            lines.append(
                f"{number}. {_design(job, design_keys) or 'run'}: {_pct(top1)} % at "
                f"{e / divisor:.4g} {unit} (`{_relative(job.location, out)}`{runs})"
            )
    else:
        lines.append(
            "No energy in these results (`cost.energy_pj` in results.json, from the cost "
            "model): no Pareto set."
        )
    lines.append("")
    for plot in plots:
        lines += [f"![{plot.stem}]({plot.name})", ""]
    if skipped:
        lines.append(f"Skipped {len(skipped)} folders:")
        lines += [f"- `{_relative(f, out)}`: {why}" for f, why in skipped]
        lines.append("")
    return "\n".join(lines)


def _by_energy(jobs: Sequence[Job]) -> list[Job]:
    return sorted(jobs, key=lambda j: (metric(j.results, ENERGY), j.accuracy))


def _front(pareto: Sequence[Job], design_keys: Sequence[str]) -> list[tuple[Job, int]]:
    """The Pareto set by energy, each design and result once (an Optuna search may run one
    design several times), with how many runs it stands for."""
    seen: dict[tuple, list] = {}
    for job in _by_energy(pareto):
        key = (tuple(job.value(k) for k in design_keys), metric(job.results, ENERGY), job.accuracy)
        seen.setdefault(key, [job, 0])[1] += 1
    return [(job, count) for job, count in seen.values()]


def _design(job: Job, keys: Sequence[str]) -> str:
    """'adc_bits=6, nrow=127': a job's values of ``keys``, short names."""
    return ", ".join(f"{_short(k)}={_display(k, job.value(k))}" for k in keys)


def _common_summary(jobs: Sequence[Job]) -> str:
    """'MODEL on DATASET (N samples)' when every job shares them."""
    parts = []
    for key in ("model", "dataset"):
        values = {str((j.results.get("summary") or {}).get(key, "")) for j in jobs}
        if len(values) != 1 or values == {""}:
            return ""
        parts.append(values.pop())
    samples = {metric(j.results, "num_samples") for j in jobs}
    text = f"{parts[0]} on {parts[1]}"
    if len(samples) == 1 and None not in samples:
        text += f" ({samples.pop()} samples)"
    return text


# --------------------------------------------------------------------------- plots


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,-]+", "_", text).strip("_")[:120] or "run"


def _label(key: str) -> str:
    return KEY_LABELS.get(key, key)


def _display(key: str, value: str) -> str:
    return NULL_LABELS.get(key, value) if _typed(value) is None else value


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _runs(job: Job) -> list[float]:
    """The per-repeat top-1 of a job (one value when the list is absent)."""
    runs = job.results.get(f"{job.accuracy_key}_runs")
    if isinstance(runs, list) and runs and all(_is_number(v) for v in runs):
        return [float(v) for v in runs]
    return [float(job.accuracy)] if _is_number(job.accuracy) else []


def _point(jobs: Sequence[Job]) -> tuple[float, float]:
    """Mean and sample std of the top-1 over every repeat of ``jobs``."""
    if len(jobs) == 1:
        return float(jobs[0].accuracy), jobs[0].accuracy_std
    runs = [v for j in jobs for v in _runs(j)]
    return statistics.fmean(runs), statistics.stdev(runs) if len(runs) > 1 else 0.0


def _accuracy_name(jobs: Sequence[Job]) -> str:
    """'simulated top-1' or, for a sweep of train.py runs, 'validation top-1'."""
    train = all(j.accuracy_key == TRAIN_ACCURACY for j in jobs)
    return "validation top-1" if train else "simulated top-1"


def _write_plots(out: Path, jobs: Sequence[Job], swept: Sequence[str], pareto: Sequence[Job]):
    scored = [j for j in jobs if _is_number(j.accuracy)]
    plots = []
    if scored:
        plt = _pyplot()
        design_keys = [k for k in swept if k not in REPEAT_KEYS]
        for key in design_keys:
            if len({j.value(key) for j in scored}) > 1:  # a single run has no curve
                plots.append(_plot_accuracy_vs(plt, out, scored, key, design_keys))
        if any(_is_number(metric(j.results, ENERGY)) for j in scored):
            plots.append(_plot_pareto(plt, out, scored, design_keys, pareto))
        with_sens = [j for j in jobs if j.results.get("sensitivity")]
        for job in with_sens:
            name = (
                "sensitivity"
                if len(with_sens) == 1
                else f"sensitivity_{_safe_name(job.folder.name)}"
            )
            plots.append(_plot_sensitivity(plt, out / f"{name}.png", job, swept))
    return plots


def _reference_line(ax, jobs: Sequence[Job]) -> None:
    """A dashed line at the quantized-inference top-1 when every job shares it."""
    values = {metric(j.results, "inference_top1") for j in jobs}
    if len(values) == 1 and _is_number(next(iter(values))):
        ax.axhline(
            100 * values.pop(),
            color="0.4",
            linestyle="--",
            linewidth=1,
            label="quantized inference (no macro)",
        )


def _finish(plt, fig, ax, path: Path, legend_title: str | None = None, outside=False) -> Path:
    """Grid, legend (right of the axes when ``outside``: one entry per line), save, close."""
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        where = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0}
        ax.legend(title=legend_title, fontsize="small", **(where if outside else {}))
    _save(plt, fig, path)
    return path


def _save(plt, fig, path: Path) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _accuracy_axis(ax, values: Iterable[float], name: str) -> None:
    values = list(values)
    low, high = min(values), max(values)
    pad = max(2.0, 0.08 * (high - low))
    ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad) + 0.5)
    ax.set_ylabel(f"{name} accuracy (%)")


def _plot_accuracy_vs(plt, out: Path, jobs: Sequence[Job], key: str, design_keys: Sequence[str]):
    """Accuracy against one swept key: one line per combination of the other swept keys, or,
    when those are more than ``MAX_LINES`` (a random or Optuna search), one colour per value
    of the other key with the fewest values, every design a dot and a line through the best
    design at each x."""
    others = [k for k in design_keys if k != key]
    values = sorted({j.value(key) for j in jobs}, key=_sort_key)
    numeric = all(isinstance(_typed(v), (int, float)) for v in values)
    position = {v: (float(_typed(v)) if numeric else i) for i, v in enumerate(values)}
    designs: dict[tuple[str, ...], list[Job]] = {}  # repeats (seeds) of one design together
    for job in jobs:
        designs.setdefault(tuple(job.value(k) for k in (key, *others)), []).append(job)
    combos = {d[1:] for d in designs}
    many = len(combos) > MAX_LINES
    if many:
        second = min(others, key=lambda k: len({j.value(k) for j in jobs}))
        rest = [k for k in others if k != second]
        legend_keys = [second]
    else:
        legend_keys = others
    groups: dict[tuple[str, ...], dict[str, list[tuple[float, float]]]] = {}
    for design in sorted(designs, key=lambda d: tuple(_sort_key(v) for v in d[1:])):
        line = tuple(design[1 + others.index(k)] for k in legend_keys)
        groups.setdefault(line, {}).setdefault(design[0], []).append(_point(designs[design]))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = plt.get_cmap("viridis" if len(groups) > 10 else "tab10")
    shown = []
    for i, (line, series) in enumerate(groups.items()):
        xs = sorted(series, key=_sort_key)
        color = colors(i / max(1, len(groups) - 1)) if len(groups) > 10 else colors(i % 10)
        if len(legend_keys) == 1:  # the legend's title names the key
            label = _display(legend_keys[0], line[0])
        else:
            pairs = zip(legend_keys, line, strict=True)
            label = ", ".join(f"{_short(k)}={_display(k, v)}" for k, v in pairs) or None
        if many:
            dots = [(position[x], 100 * m) for x in xs for m, _ in series[x]]
            ax.scatter(*zip(*dots, strict=True), color=color, alpha=0.45, s=18)
            shown += [y for _, y in dots]
        best = [max(series[x]) for x in xs]
        ys = [100 * m for m, _ in best]
        shown += ys
        ax.errorbar(
            [position[x] for x in xs],
            ys,
            yerr=[100 * sd for _, sd in best],
            marker="o",
            capsize=3,
            label=label,
            color=color,
        )
    _reference_line(ax, jobs)
    if not numeric:
        ax.set_xticks(range(len(values)), [_display(key, v) for v in values])
        ax.set_xlim(-0.5, len(values) - 0.5)
    elif len(values) <= 12:
        ax.set_xticks([position[v] for v in values], [_display(key, v) for v in values])
    ax.set_xlabel(_label(key))
    inference = metric(jobs[0].results, "inference_top1")
    _accuracy_axis(
        ax, shown + ([100 * inference] if _is_number(inference) else []), _accuracy_name(jobs)
    )
    ax.set_title(_title(f"{_accuracy_name(jobs)} vs {_short(key)}", jobs))
    title = _short(legend_keys[0]) if len(legend_keys) == 1 else None
    if many and rest:
        title += f"\n(dots: every design;\nline: best over {', '.join(map(_short, rest))})"
    name = f"accuracy_vs_{_safe_name(key)}.png"
    return _finish(plt, fig, ax, out / name, title, outside=bool(others))


def _title(title: str, jobs: Sequence[Job]) -> str:
    title = title[:1].upper() + title[1:]
    summary = _common_summary(jobs)
    return f"{title}\n{summary}" if summary else title


def _plot_pareto(plt, out: Path, jobs: Sequence[Job], design_keys: Sequence[str], pareto):
    with_energy = [j for j in jobs if _is_number(metric(j.results, ENERGY))]
    divisor, unit = _energy_unit(metric(j.results, ENERGY) for j in with_energy)
    front = {id(j) for j in pareto}
    front_designs = _front(pareto, design_keys)
    inline = len(design_keys) <= 2 and len(front_designs) <= 10  # else numbers, as in report.md
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    for on_front in (False, True):
        group = [j for j in with_energy if (id(j) in front) == on_front]
        if not group:
            continue
        ax.errorbar(
            [metric(j.results, ENERGY) / divisor for j in group],
            [100 * j.accuracy for j in group],
            yerr=[100 * j.accuracy_std for j in group],
            linestyle="none",
            marker="*" if on_front else "o",
            markersize=12 if on_front else 6,
            color="tab:red" if on_front else "0.55",
            capsize=2,
            label=(
                f"Pareto-optimal ({len(front_designs)}"
                + (")" if inline else "; numbered in report.md)")
                if on_front
                else "dominated"
            ),
            zorder=3 if on_front else 2,
        )
    ordered = _by_energy(pareto)
    if len(ordered) > 1:
        ax.step(
            [metric(j.results, ENERGY) / divisor for j in ordered],
            [100 * j.accuracy for j in ordered],
            where="post",
            color="tab:red",
            alpha=0.4,
            linewidth=1,
        )
    top = max(metric(j.results, ENERGY) for j in with_energy)
    for number, (job, _) in enumerate(front_designs, 1):
        text = _design(job, design_keys) if inline else str(number)
        energy = metric(job.results, ENERGY)
        left = inline and energy > 0.6 * top  # right of the axes' middle: label to the left
        if text:
            ax.annotate(
                text,
                (energy / divisor, 100 * job.accuracy),
                textcoords="offset points",
                xytext=((-7 if left else 7), -11) if inline else (5, 4),
                ha="right" if left else "left",
                fontsize="x-small" if inline else "small",
                color="tab:red",
            )
    energies = [metric(j.results, ENERGY) for j in with_energy]
    if min(energies) > 0 and max(energies) / min(energies) > 20:
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax.set_xscale("log")  # plain numbers at 1, 2, 5 x 10^k, not powers of ten
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    _reference_line(ax, with_energy)
    ax.set_xlabel(f"energy per sample ({unit})")
    _accuracy_axis(ax, [100 * j.accuracy for j in with_energy], _accuracy_name(with_energy))
    ax.set_title(_title(f"{_accuracy_name(with_energy)} vs energy per sample", with_energy))
    return _finish(plt, fig, ax, out / "accuracy_vs_energy.png")


def _plot_sensitivity(plt, path: Path, job: Job, swept: Sequence[str]) -> Path:
    """Per ACiM layer: top-1 with only that layer on the macro, and with every layer but it;
    the all-layers and no-layer accuracies as vertical lines."""
    rows = [r for r in job.results["sensitivity"] if isinstance(r, Mapping)]
    layers = [str(r.get("layer", "?")) for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 1.3 + 0.4 * len(rows)))
    ys = list(range(len(rows)))
    # a dot plot, not bars: the axis starts near the lowest accuracy, not at 0
    series = {}
    for field_name in ("alone_top1", "without_top1"):
        series[field_name] = [
            100 * r[field_name] if _is_number(r.get(field_name)) else math.nan for r in rows
        ]
    for y, a, b in zip(ys, series["alone_top1"], series["without_top1"], strict=True):
        ax.plot([a, b], [y, y], color="0.75", linewidth=2, zorder=1)
    for field_name, label, color, marker in (
        ("alone_top1", "only this layer on the macro", "tab:orange", "o"),
        ("without_top1", "every layer but this one", "tab:blue", "s"),
    ):
        ax.scatter(series[field_name], ys, color=color, marker=marker, s=45, label=label, zorder=3)
    shown = [v for values in series.values() for v in values if not math.isnan(v)]
    sim, inference = metric(job.results, ACCURACY), metric(job.results, "inference_top1")
    if _is_number(sim):
        shown.append(100 * sim)
        ax.axvline(100 * sim, color="tab:red", linestyle=":", label="every layer on the macro")
    if _is_number(inference):
        shown.append(100 * inference)
        ax.axvline(100 * inference, color="0.3", linestyle="--", label="no layer (inference)")
    ax.set_yticks(ys, layers)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first layer on top
    low = min(shown, default=0.0)
    ax.set_xlim(max(0.0, low - max(2.0, 0.1 * (100 - low))), 100.5)
    ax.set_xlabel("simulated top-1 accuracy (%)")
    ax.set_ylabel("ACiM layer")
    design = [k for k in swept if not k.startswith("simulate.")]  # run options: not the design
    where = _design(job, design)
    ax.set_title("Per-layer sensitivity" + (f"\n{where}" if where else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    _save(plt, fig, path)
    return path
