"""The design-study report: every run of one or more sweeps in one pandas table, and its views.

``write_report(dirs)`` collects the ``results.json`` of every run under ``dirs`` (a sweep
folder, several, or run folders; incomplete runs are skipped with a note), loads them into one
DataFrame (:func:`pandas.json_normalize`, one row per run, plus the swept keys) and writes into
``out`` (default: the only dir) views of it:

- ``sweep.csv``: the swept keys, ``condition``, the metrics of :data:`METRIC_PATHS`,
  ``pareto`` and the run folder (``job``);
- ``report.md``: the same in % (``to_markdown``), mean ± std over seeds, the Pareto set of each
  condition and a shmoo grid (accuracy by ADC bits x noise);
- seaborn plots: accuracy against each swept design key, accuracy against energy with one front
  per condition, the shmoo grid, per-layer sensitivity.

Keys are *design choices* (``macro.*``, ``cost.*``, per-layer macros, training options) or
*conditions* a design must survive (``noise.*``, ``seed``, ``ckpt``, ``dataset.*``,
``model.*``, ``chip``; :func:`is_condition`): designs are compared, and Pareto fronts formed,
only within one condition; seeds are repeats, averaged. ``python report.py DIR ...`` and
:class:`lightning_modules.callbacks.SweepReport` call this; :func:`objectives` is what
``simulate.py`` returns to Hydra's sweepers.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .results import unit

RESULTS_FILE = "results.json"
RESULTS_NAME = re.compile(r"results(?:-(\d+))?\.json")  # results.json, results-1.json, ...
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
CSV_FILE = "sweep.csv"
MARKDOWN_FILE = "report.md"

# Metric columns of sweep.csv, in order: column -> path into results.json.
METRIC_PATHS: dict[str, tuple[str, ...]] = {
    **{k: (k,) for k in ("sim_top1", "sim_top1_std", "sim_top5", "float_top1")},
    **{k: (k,) for k in ("inference_top1", "num_samples", "seconds")},
    **{k: ("cost", k) for k in ("energy_pj", "adc_conversions", "latency_ns", "area_mm2")},
    **{k: ("cost", k) for k in ("throughput_fps", "tops_per_w")},
}
METRICS = tuple(METRIC_PATHS)
ACCURACY = "sim_top1"
TRAIN_ACCURACY = "val_top1"  # train.py's results.json: a train sweep's accuracy
TRAIN_METRICS = [TRAIN_ACCURACY, "val_top5"]  # extra sweep.csv columns for train.py runs
ENERGY = "energy_pj"
DEFAULT_OBJECTIVE = ACCURACY  # what an ordinary run returns to Hydra
OBJECTIVES_KEY = "optimized_metrics"
CONDITION_GROUPS = ("noise", "seed", "ckpt", "dataset", "model", "chip", "chip_seed")
"""Keys (or groups of keys) a design must survive rather than choose."""
DESIGN_KEYS = ("model.layer_macros", "model.attention")
"""Per-layer macros: design choices although they live in the model group."""
REPEAT_KEYS = ("seed",)
"""Conditions that are repeats of one experiment: averaged (mean ± std), not told apart."""
MAX_LINES = 8  # more curves than this in an accuracy plot: the best design per x only
KEY_LABELS = {
    "macro.adc_bits": "ADC resolution (bits)",
    "macro.nrow": "rows read out at once, nrow",
    "macro.input_enc_bits": "input bits per cycle, input_enc_bits",
    "macro.hybrid_levels": "digital MSB anti-diagonals, hybrid_levels",
    "macro.vote_levels": "voted MSB anti-diagonals, vote_levels",
    "noise.rand_sigma": "random noise sigma (% of ADC full scale)",
    "noise.nonlinear_sigma": "signal-dependent noise sigma (% of ADC full scale)",
    "noise.rand_sigma_lsb": "random noise sigma (LSB of the layer's ADC)",
    "noise.nonlinear_sigma_lsb": "signal-dependent noise sigma (LSB of the layer's ADC)",
    "noise.cell_sigma": "cell variation sigma (% of a cell's current)",
}
NULL_LABELS = {"macro.input_enc_bits": "serial"}  # how a null value reads


def is_condition(key: str) -> bool:
    """Whether a config key is a condition (noise, seed, checkpoint, data, model, chip) rather
    than a design choice."""
    if any(key == k or key.startswith(k + ".") for k in DESIGN_KEYS):
        return False
    return key.split(".", 1)[0] in CONDITION_GROUPS


@dataclass
class Job:
    """One run: its folder, its overrides (key -> value as written) and its results."""

    folder: Path
    overrides: dict[str, str]
    results: dict[str, Any]
    path: Path | None = None  # the results file; None: folder/results.json

    @property
    def location(self) -> Path:
        """The folder, or its results file when that is not the first (results-1.json)."""
        return self.folder if self.path is None or self.path.name == RESULTS_FILE else self.path

    def value(self, key: str) -> str:
        """The value of a key as written: the override, else the resolved config, else ''."""
        if key in self.overrides:
            return self.overrides[key]
        node: Any = self.results.get("config")
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return ""
            node = node[part]
        if isinstance(node, Mapping):  # a config group: its preset's name
            node = node.get("name", "")
        if node is None or isinstance(node, bool):
            return {None: "null", True: "true", False: "false"}[node]
        return str(node)


@dataclass
class Collection:
    """The complete jobs found and the folders skipped, with the reason."""

    jobs: list[Job] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class Report:
    """What ``write_report`` wrote; ``table`` is the DataFrame every file is a view of."""

    out: Path
    csv: Path
    markdown: Path
    plots: list[Path]
    collection: Collection
    swept: list[str]
    table: pd.DataFrame

    @property
    def pareto(self) -> pd.DataFrame:
        """The rows on the front of their condition."""
        return self.table[self.table["pareto"]]


def metric(results: Mapping[str, Any], name: str) -> Any:
    """A metric of one results.json by column name (``energy_pj`` is ``cost.energy_pj``)."""
    node: Any = results
    for part in METRIC_PATHS.get(name, tuple(name.split("."))):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def objectives(results: Mapping[str, Any], cfg: Mapping[str, Any]) -> Any:
    """What a run returns to Hydra: ``sim_top1``, or with ``optimized_metrics: [a, b, ...]``
    (a multi-objective sweeper, e.g. ``hparams_search=macro_pareto``) the tuple of those
    metrics. Raises ValueError when an optimized metric is not in the results."""
    names = cfg.get(OBJECTIVES_KEY) if hasattr(cfg, "get") else None
    if not names:
        return metric(results, DEFAULT_OBJECTIVE)
    values = []
    for name in [names] if isinstance(names, str) else names:
        value = metric(results, name)
        if value is None:
            hint = (
                " (the cost model writes it: keep a cost preset, e.g. cost=zigzag_28nm, not ~cost)"
                if METRIC_PATHS.get(name, ("",))[0] == "cost"
                else f"; choose from {', '.join(METRICS)}"
            )
            raise ValueError(f"{OBJECTIVES_KEY}: {name!r} is not in results.json{hint}")
        values.append(float(value))
    return values[0] if len(values) == 1 else tuple(values)


def pareto_mask(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[bool]:
    """True for every point no other point dominates (at least as good in every objective and
    better in one); ``senses`` says per objective "max" or "min"."""
    if any(s not in ("max", "min") for s in senses):
        raise ValueError(f"senses must be 'max' or 'min', got {list(senses)}")
    scored = [[v if s == "max" else -v for s, v in zip(senses, p, strict=True)] for p in points]
    return [
        not any(all(x >= y for x, y in zip(o, p, strict=True)) and o != p for o in scored)
        for p in scored
    ]


# --------------------------------------------------------------------------- collecting
def results_files(folder: Path) -> list[Path]:
    """results.json, then results-1.json, ... of one run folder."""
    found = [(int(m.group(1) or 0), p) for p in folder.glob("results*.json")
             if (m := RESULTS_NAME.fullmatch(p.name))]  # fmt: skip
    return [p for _, p in sorted(found)]


def collect(dirs: Iterable[str | os.PathLike]) -> Collection:
    """Every results file of every folder under ``dirs`` that has one or a
    ``.hydra/overrides.yaml``; unreadable, incomplete and missing results are skipped."""
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
    """key -> value of the overrides Hydra recorded for a job (parsed by Hydra's own parser;
    deletions dropped, ``+`` prefixes stripped)."""
    path = folder / OVERRIDES_FILE
    if not path.is_file():
        return {}
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    lines = [str(x) for x in (OmegaConf.to_container(OmegaConf.load(path)) or [])]
    return {
        o.get_key_element().lstrip("+"): o.get_value_element_as_str()
        for o in OverridesParser.create().parse_overrides(lines)
        if not o.is_delete()
    }


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """The override keys whose value differs between jobs (all keys of a single job)."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    return keys if len(jobs) <= 1 else [k for k in keys if len({j.value(k) for j in jobs}) > 1]


def _typed(value: str) -> Any:
    """An override value as a number where it is one, None for null, else the string."""
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
    return (1, float(typed), "") if isinstance(typed, (int, float)) else (2, 0.0, str(typed))


def _display(key: str, value: str) -> str:
    """A value for people: a path by its file name, null by its meaning."""
    if _typed(value) is None:
        return NULL_LABELS.get(key, "null")
    return Path(value).name if "/" in value else value


def _label(keys: Sequence[str], values: Sequence[str]) -> str:
    """'adc_bits=6, rand_sigma=0.2'; '' for no keys."""
    return ", ".join(
        f"{k.rsplit('.', 1)[-1]}={_display(k, v)}" for k, v in zip(keys, values, strict=True)
    )


def load(collection: Collection, out: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per run: every results.json field flattened (``json_normalize``: ``cost.
    energy_pj``, ``config.macro.adc_bits``, ...), the swept keys as written, ``accuracy``
    (``sim_top1``, or ``val_top1`` for train.py runs) and its std, ``condition``, ``design``,
    ``pareto`` and ``job``; sorted by the swept keys."""
    jobs = collection.jobs
    swept = swept_keys(jobs)
    jobs = sorted(jobs, key=lambda j: ([_sort_key(j.value(k)) for k in swept], str(j.location)))
    df = pd.json_normalize([j.results for j in jobs])
    for name, path in METRIC_PATHS.items():
        df[name] = df[".".join(path)] if ".".join(path) in df else None
    for k in swept:
        df[k] = [j.value(k) for j in jobs]
    train = ACCURACY not in df or df[ACCURACY].isna().all()
    acc = TRAIN_ACCURACY if train and TRAIN_ACCURACY in df else ACCURACY
    df["accuracy"] = pd.to_numeric(df.get(acc), errors="coerce")
    std = df[f"{acc}_std"] if f"{acc}_std" in df else pd.Series(0.0, df.index)
    df["accuracy_std"] = pd.to_numeric(std, errors="coerce").fillna(0.0)
    df.attrs["accuracy_name"] = "validation top-1" if acc == TRAIN_ACCURACY else "simulated top-1"
    conditions = [k for k in swept if is_condition(k) and k not in REPEAT_KEYS]
    designs = [k for k in swept if not is_condition(k)]
    df.attrs.update(conditions=conditions, designs=designs, swept=swept)
    df["condition"] = [_label(conditions, [j.value(k) for k in conditions]) or "all" for j in jobs]
    df["design"] = [_label(designs, [j.value(k) for k in designs]) for j in jobs]
    df["job"] = [_relative(j.location, out) for j in jobs]
    df["pareto"] = _pareto_column(df)
    return df, swept


def _pareto_column(df: pd.DataFrame) -> pd.Series:
    """True for runs whose design (mean over seeds) is on the front of its condition: highest
    accuracy for its energy, among designs run under the same condition."""
    scored = df.dropna(subset=["accuracy", ENERGY])
    means = scored.groupby(["condition", "design"], sort=False)[["accuracy", ENERGY]].mean()
    front = set()
    for _, group in means.groupby(level="condition", sort=False):
        mask = pareto_mask(group.to_numpy(float).tolist(), ["max", "min"])
        front |= {key for key, keep in zip(group.index, mask, strict=True) if keep}
    return pd.Series(
        [(c, d) in front for c, d in zip(df["condition"], df["design"], strict=True)], df.index
    )


def _relative(folder: Path, out: Path) -> str:
    try:
        return os.path.relpath(folder, out.resolve())
    except ValueError:  # another drive (Windows)
        return str(folder)


# --------------------------------------------------------------------------- writing
def write_report(dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None) -> Report:
    """Collect the runs under ``dirs`` and write sweep.csv, report.md and the plots into
    ``out`` (default: the only dir). Raises ValueError when no complete run is found."""
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise ValueError("no folder given: pass one or more sweep or run folders")
    if out is None and len(dirs) > 1:
        raise ValueError("several folders: say where the merged report goes (out=DIR)")
    out = Path(out if out is not None else dirs[0])
    collection = collect(dirs)
    if not collection.jobs:
        notes = "".join(f"; {f}: {why}" for f, why in collection.skipped[:3])
        raise ValueError(
            f"no complete {RESULTS_FILE} under {', '.join(map(str, dirs))}{notes}; "
            "run a sweep first (python simulate.py -m KEY=A,B)"
        )
    out.mkdir(parents=True, exist_ok=True)
    df, swept = load(collection, out)
    columns = [*swept, "condition", *METRICS]
    columns += [c for c in TRAIN_METRICS if c in df]
    df[[*columns, "pareto", "job"]].to_csv(out / CSV_FILE, index=False)
    plots = _plots(df, out)
    markdown = out / MARKDOWN_FILE
    markdown.write_text(_markdown(df, dirs, plots, collection.skipped))
    return Report(out, out / CSV_FILE, markdown, plots, collection, swept, df)


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a sweep.csv as dicts of strings (blank for absent)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")


# --------------------------------------------------------------------------- views
def _unit(values: pd.Series, kind: str) -> tuple[float, str]:
    """(size, name) of the unit that shows the median of a column as 1 to 999."""
    return unit(values.abs().median(), kind)


def _pct(mean: float, std: float = 0.0) -> str:
    if pd.isna(mean):
        return ""
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std > 0 else "")


def _summary(df: pd.DataFrame) -> str:
    """'MODEL on DATASET (N samples)' when every run shares them."""
    cols = ["summary.model", "summary.dataset", "num_samples"]
    if not all(c in df and df[c].nunique(dropna=False) == 1 for c in cols):
        return ""
    model, dataset, n = df[cols].iloc[0]
    return f"{model} on {dataset} ({n} samples)"


def _view(df: pd.DataFrame) -> pd.DataFrame:
    """The runs as people read them: % accuracies, energy and latency in a common unit."""
    view = pd.DataFrame({k: [_display(k, v) for v in df[k]] for k in df.attrs["swept"]})
    short = "val" if df.attrs["accuracy_name"].startswith("validation") else "sim"
    view[f"{short} top-1"] = [
        _pct(m, s) for m, s in zip(df["accuracy"], df["accuracy_std"], strict=True)
    ]
    for name, col in (("float top-1", "float_top1"), ("inference top-1", "inference_top1")):
        view[name] = [_pct(v) for v in pd.to_numeric(df[col], errors="coerce")]
    if df[ENERGY].notna().any():
        for name in (ENERGY, "latency_ns"):
            values = pd.to_numeric(df[name], errors="coerce")
            div, unit = _unit(values.dropna(), name)
            view[f"{name.split('_')[0]}/sample ({unit})"] = (values / div).map("{:.4g}".format)
        view["area (mm²)"] = pd.to_numeric(df["area_mm2"], errors="coerce").map("{:.3g}".format)
        view["TOPS/W"] = pd.to_numeric(df["tops_per_w"], errors="coerce").map("{:.3g}".format)
        view["Pareto"] = df["pareto"].map({True: "yes", False: ""})
    view["seconds"] = pd.to_numeric(df["seconds"], errors="coerce").map("{:.1f}".format)
    view["job"] = "`" + df["job"] + "`"
    return view.replace("nan", "")


def _fronts(df: pd.DataFrame) -> list[str]:
    """Per condition: its Pareto-optimal designs by energy (mean over seeds, run count)."""
    on = df[df["pareto"]]
    div, unit = _unit(pd.to_numeric(df[ENERGY], errors="coerce").dropna(), ENERGY)
    lines = []
    for condition, group in on.groupby("condition", sort=False):
        if df.attrs["conditions"]:
            lines += [f"Condition {condition}:", ""]
        designs = group.groupby("design", sort=False).agg(
            accuracy=("accuracy", "mean"), energy=(ENERGY, "mean"),
            latency=("latency_ns", "mean"), runs=("job", "size"), job=("job", "first"),
        ).sort_values(["energy", "accuracy"])  # fmt: skip
        for number, (design, row) in enumerate(designs.iterrows(), 1):
            runs = f", {row.runs} runs" if row.runs > 1 else ""
            lines.append(
                f"{number}. {design or 'run'}: {_pct(row.accuracy)} % at "
                f"{row.energy / div:.4g} {unit} (`{row.job}`{runs})"
            )
        lines.append("")
    return lines


def shmoo(df: pd.DataFrame) -> pd.DataFrame | None:
    """Accuracy by ADC bits (rows) x noise sigma (% of full scale, columns): the mean over
    seeds, the best over any other design key; None unless both were swept."""
    noise = next((k for k in df.attrs["conditions"] if k.endswith("_sigma")), None)
    if "macro.adc_bits" not in df.attrs["designs"] or noise is None:
        return None
    grid = df.assign(bits=df["macro.adc_bits"].map(int), sigma=df[noise].map(float))
    mean = grid.groupby(["bits", "sigma", "design"])["accuracy"].mean()
    table = mean.groupby(["bits", "sigma"]).max().unstack("sigma").sort_index()
    table.attrs["noise"] = noise
    return table


def _lsb(sigma_pct: float, bits: int) -> float:
    """A sigma in % of the ADC full scale in LSB rms of a ``bits``-bit ADC (2^B - 1 steps)."""
    return sigma_pct / 100 * (2**bits - 1)


def _markdown(df, dirs, plots, skipped) -> str:
    conditions, designs = df.attrs["conditions"], df.attrs["designs"]
    intro = f"{len(df)} runs from {', '.join(f'`{d}`' for d in dirs)}"
    intro += f": {_summary(df)}." if _summary(df) else "."
    if designs:
        intro += f" Design choices: {', '.join(f'`{k}`' for k in designs)}."
    if conditions:
        named = ", ".join(f"`{k}`" for k in conditions)
        intro += f" Conditions (fronts are drawn within each): {named}."
    if set(REPEAT_KEYS) & set(df.attrs["swept"]):
        intro += " Seeds are repeats: averaged."
    lines = ["# Sweep report", "", intro, ""]
    quantized = df.get("summary.hybrid_quantized")
    if quantized is not None and quantized.fillna(False).astype(bool).any():
        lines += [
            "Hybrid cycles pass the ADC in some runs (quirk Q4, `macro.hybrid_exact=false`): "
            "noise-free but still quantized, and charged a conversion; "
            "`macro.hybrid_exact=true` makes them exact.",
            "",
        ]
    lines += [f"Accuracies in %; `{CSV_FILE}` has the same in fractions and pJ/ns.", ""]
    lines += [_view(df).to_markdown(index=False, disable_numparse=True), ""]
    if set(REPEAT_KEYS) & set(df.attrs["swept"]):
        by = df.groupby(["condition", "design"], sort=False)["accuracy"]
        stats = by.agg(["mean", "std", "size"]).reset_index()
        stats["top-1 (%)"] = [
            _pct(m, s if s == s else 0.0) for m, s in zip(stats["mean"], stats["std"], strict=True)
        ]
        stats = stats.rename(columns={"size": "seeds"})[
            ["condition", "design", "top-1 (%)", "seeds"]
        ]
        lines += [
            "## Mean ± std over seeds",
            "",
            stats.to_markdown(index=False, disable_numparse=True),
            "",
        ]
    if df[ENERGY].notna().any():
        lines += ["## Pareto fronts (highest accuracy for its energy, within a condition)", ""]
        lines += _fronts(df)
    else:
        lines += ["No energy in these results (the cost model's `cost.energy_pj`): no fronts.", ""]
    grid = shmoo(df)
    if grid is not None:
        noise = grid.attrs["noise"]
        lines += [f"## Shmoo grid: {df.attrs['accuracy_name']} (%), ADC bits x `{noise}`", ""]
        shown = grid.map(lambda v: f"{100 * v:.1f}")
        for sigma in grid.columns:
            shown[sigma] = [
                f"{text} ({_lsb(sigma, bits):.2g} LSB)" for bits, text in shown[sigma].items()
            ]
        shown.columns = [f"σ {s:g} % FS" for s in grid.columns]
        lines += [shown.rename_axis("ADC bits").to_markdown(disable_numparse=True), ""]
        lines += [
            "(in brackets: the same sigma in LSB rms of that ADC, % FS x (2^B - 1) / 100)",
            "",
        ]
    lines += [f"![{p.stem}]({p.name})\n" for p in plots]
    if skipped:
        lines += [f"Skipped {len(skipped)} folders:"] + [f"- `{f}`: {why}" for f, why in skipped]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots
def _plots(df: pd.DataFrame, out: Path) -> list[Path]:
    scored = df.dropna(subset=["accuracy"])
    if scored.empty:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    plots = []
    designs = df.attrs["designs"]
    for key in designs + df.attrs["conditions"]:
        if scored[key].nunique() > 1:
            plots.append(_plot_accuracy_vs(scored, key, out / f"accuracy_vs_{key}.png"))
    if scored[ENERGY].notna().any():
        plots.append(_plot_fronts(scored.dropna(subset=[ENERGY]), out / "accuracy_vs_energy.png"))
    grid = shmoo(scored)
    if grid is not None:
        plots.append(_plot_shmoo(grid, scored, out / "shmoo.png"))
    with_sens = [i for i, s in df.get("sensitivity", pd.Series(dtype=object)).items()
                 if isinstance(s, list) and s]  # fmt: skip
    for i in with_sens:
        name = (
            "sensitivity"
            if len(with_sens) == 1
            else "sensitivity_" + re.sub(r"[^\w.=,-]+", "_", df["job"][i])
        )
        plots.append(_plot_sensitivity(df.loc[i], out / f"{name}.png"))
    return plots


def _figure(title: str, df: pd.DataFrame, size=(6.6, 4.4)):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    summary = _summary(df)
    ax.set_title(title + (f"\n{summary}" if summary else ""))
    return fig, ax


def _save(fig, ax, path: Path, legend_title: str | None = None) -> Path:
    import matplotlib.pyplot as plt

    if ax.get_legend_handles_labels()[0]:
        ax.legend(title=legend_title, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _inference_line(ax, df: pd.DataFrame) -> None:
    values = pd.to_numeric(df["inference_top1"], errors="coerce").dropna().unique()
    if len(values) == 1:
        ax.axhline(100 * values[0], color="0.4", ls="--", lw=1, label="quantized inference")


def _plot_accuracy_vs(df: pd.DataFrame, key: str, path: Path) -> Path:
    """Accuracy against one key: a line per condition and other design (mean ± sd over
    seeds); with more than MAX_LINES, every run a dot and the best design per x a line."""
    import seaborn as sns

    others = [k for k in (*df.attrs["designs"], *df.attrs["conditions"]) if k != key]
    data = df.assign(
        x=[_typed(v) if _typed(v) is not None else NULL_LABELS.get(key, "null") for v in df[key]],
        acc=100 * df["accuracy"],
        line=[_label(others, vals) for vals in zip(*(df[k] for k in others), strict=True)]
        if others
        else "",
    )
    numeric = all(isinstance(v, (int, float)) for v in data["x"])
    if not numeric:
        order = sorted(df[key].unique(), key=_sort_key)
        data["x"] = [order.index(v) for v in df[key]]
    name = df.attrs["accuracy_name"]
    fig, ax = _figure(f"{name} vs {key.rsplit('.', 1)[-1]}", df)
    many = data["line"].nunique() > MAX_LINES
    if many:  # a search: dots, and the best design per x under each condition
        sns.scatterplot(data=data, x="x", y="acc", color="0.6", s=18, ax=ax, label="every run")
        best = data.groupby(["condition", "x"], as_index=False)["acc"].max()
        hue = "condition" if best["condition"].nunique() > 1 else None
        sns.lineplot(data=best, x="x", y="acc", hue=hue, marker="o", ax=ax,
                     **({} if hue else {"label": "best design"}))  # fmt: skip
    else:
        hue = "line" if data["line"].nunique() > 1 else None
        sns.lineplot(data=data, x="x", y="acc", hue=hue, marker="o", errorbar="sd",
                     err_style="bars", ax=ax)  # fmt: skip
    _inference_line(ax, df)
    if not numeric:
        ax.set_xticks(range(len(order)), [_display(key, v) for v in order])
    elif data["x"].nunique() <= 12:
        ax.set_xticks(sorted(data["x"].unique()))
    ax.set(xlabel=KEY_LABELS.get(key, key), ylabel=f"{name} (%)")
    return _save(fig, ax, path)


def _plot_fronts(df: pd.DataFrame, path: Path) -> Path:
    """Accuracy against energy: every design (mean over seeds), one colour and one front per
    condition, the Pareto-optimal designs starred and named."""
    import seaborn as sns

    div, unit = _unit(pd.to_numeric(df[ENERGY]), ENERGY)
    points = df.groupby(["condition", "design"], sort=False).agg(
        acc=("accuracy", "mean"), sd=("accuracy", "std"), energy=(ENERGY, "mean"),
        pareto=("pareto", "any"),
    ).reset_index()  # fmt: skip
    points = points.assign(acc=100 * points["acc"], energy=points["energy"] / div)
    several = points["condition"].nunique() > 1
    name = df.attrs["accuracy_name"]
    fig, ax = _figure(
        f"{name} vs energy per sample" + (", a front per condition" if several else ""),
        df,
        (7.2, 4.8),
    )
    hue = "condition" if several else None
    sns.scatterplot(data=points[~points["pareto"]], x="energy", y="acc", hue=hue, alpha=0.5,
                    color=None if several else "0.55", ax=ax, legend=False)  # fmt: skip
    front = points[points["pareto"]].sort_values("energy")
    sns.lineplot(data=front, x="energy", y="acc", hue=hue, marker="*", markersize=14,
                 drawstyle="steps-post", ax=ax, color=None if several else "tab:red",
                 **({} if several else {"label": "Pareto-optimal"}))  # fmt: skip
    if len(front) <= 12:
        for row in front.itertuples():
            ax.annotate(row.design, (row.energy, row.acc), textcoords="offset points",
                        xytext=(6, -10), fontsize="x-small")  # fmt: skip
    if points["energy"].max() / max(points["energy"].min(), 1e-30) > 20:
        ax.set_xscale("log")
    _inference_line(ax, df)
    ax.set(xlabel=f"energy per sample ({unit})", ylabel=f"{name} (%)")
    return _save(fig, ax, path, "condition" if several else None)


def _plot_shmoo(grid: pd.DataFrame, df: pd.DataFrame, path: Path) -> Path:
    """The shmoo grid as a heat map: accuracy by ADC bits x noise, each cell with its sigma in
    LSB rms of that ADC."""
    import seaborn as sns

    labels = grid.copy().astype(object)
    for sigma in grid.columns:
        labels[sigma] = [f"{100 * v:.1f}\n{_lsb(sigma, b):.2g} LSB" for b, v in grid[sigma].items()]
    fig, ax = _figure(
        f"Shmoo: {df.attrs['accuracy_name']} (%)",
        df,
        (1.2 * len(grid.columns) + 2.6, 0.7 * len(grid) + 1.8),
    )
    sns.heatmap(100 * grid, annot=labels, fmt="", cmap="RdYlGn", vmin=0, vmax=100, ax=ax,
                cbar_kws={"label": "accuracy (%)"}, annot_kws={"fontsize": "small"})  # fmt: skip
    ax.invert_yaxis()
    ax.set(xlabel=f"{grid.attrs['noise']} (% of ADC full scale)", ylabel="ADC resolution (bits)")
    ax.set_xticklabels([f"{s:g}" for s in grid.columns])
    return _save(fig, ax, path)


def _plot_sensitivity(row: pd.Series, path: Path) -> Path:
    """Per ACiM layer: top-1 with only it on the macro and with every layer but it."""
    sens = pd.DataFrame(row["sensitivity"]).melt("layer", var_name="pass", value_name="top1")
    sens["pass"] = sens["pass"].map(
        {"alone_top1": "only this layer on the macro", "without_top1": "every layer but this one"}
    )
    sens["top1"] = 100 * sens["top1"]
    import seaborn as sns

    title = "Per-layer sensitivity" + (f", {row['design']}" if row.get("design") else "")
    fig, ax = _figure(title, pd.DataFrame([row]), (6.4, 1.3 + 0.4 * len(row["sensitivity"])))
    sns.pointplot(data=sens, x="top1", y="layer", hue="pass", linestyles="none", ax=ax)
    lines = (
        (row.get("accuracy"), "every layer on the macro", ":"),
        (row.get("inference_top1"), "no layer (inference)", "--"),
    )
    for value, label, style in lines:
        if value is not None and not pd.isna(value):
            ax.axvline(100 * value, color="0.3", ls=style, label=label)
    ax.set(xlabel="simulated top-1 accuracy (%)", ylabel="ACiM layer")
    return _save(fig, ax, path)
