"""The sweep report: every run of one or more sweeps in one pandas table, and views of it.

:func:`write_report` loads each run's ``results*.json`` into one DataFrame (``json_normalize``,
one row per run, plus the swept keys as written); ``sweep.csv``, ``report.md`` and the seaborn
plots are views of it. Keys are design choices or conditions (:func:`is_condition`): fronts form
within a condition; seeds are repeats, averaged. :func:`objectives` is what sweepers get back.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from .results import unit

RESULTS_FILE, CSV_FILE, MARKDOWN_FILE = "results.json", "sweep.csv", "report.md"
RESULTS_NAME = re.compile(r"results(?:-(\d+))?\.json")  # results.json, results-1.json, ...
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
COST = ("energy_pj", "adc_conversions", "latency_ns", "area_mm2", "throughput_fps", "tops_per_w")
METRICS = ("sim_top1", "sim_top1_std", "sim_top5", "float_top1", "inference_top1",
           "num_samples", "seconds", *COST)  # fmt: skip
"""The metric columns of every sweep.csv (a cost field is ``cost.<name>`` of results.json)."""
OPTIONAL = ("val_top1", "val_top5", "measured_top1", "sim_minus_measured", "float_ppl",
            "inference_ppl", "sim_ppl", "sim_ppl_std", "val_ppl", "yield_top1",
            "worst_chip_top1")  # fmt: skip
"""More metric columns, in sweep.csv when some run has them (train runs, silicon, LMs)."""
SENSES = {"energy_pj": "min", "adc_conversions": "min", "latency_ns": "min",
          "area_mm2": "min", "seconds": "min"}  # fmt: skip
"""Lower-is-better metrics besides ``*_ppl`` and ``*_std``; every other metric: higher."""
ACCURACY, ENERGY, OBJECTIVES_KEY = "sim_top1", "energy_pj", "optimized_metrics"
CONDITION_GROUPS = ("noise", "seed", "ckpt", "dataset", "model", "chip", "chip_seed")
CONDITION_KEYS = ("simulate.chips", "simulate.yield_threshold")  # the chip population
DESIGN_KEYS = ("model.layer_macros", "model.attention")  # per-layer macros: design choices
REPEAT_KEYS = ("seed",)  # conditions that are repeats: averaged (mean ± std), not told apart
STUDY_KEYS = ("hparams_search", "conditions", "condition_objective", "optimized_metrics",
              "hydra")  # fmt: skip
"""How a study ran, neither a design nor a condition: never a swept key of the report."""
SHMOO_NOISE = ("_sigma", "_sigma_lsb")  # a swept noise key ending so: a shmoo grid's noise axis
MAX_LINES = 8  # more curves than this in an accuracy plot: the best design per x only
KEY_LABELS = {
    "macro.adc_bits": "ADC resolution (bits)",
    "macro.nrow": "rows read out at once, nrow",
    "macro.input_enc_bits": "input bits per cycle, input_enc_bits",
    "macro.hybrid_levels": "digital MSB anti-diagonals, hybrid_levels",
    "noise.rand_sigma": "random noise sigma (% of ADC full scale)",
    "noise.nonlinear_sigma": "signal-dependent noise sigma (% of ADC full scale)",
    "noise.rand_sigma_lsb": "random noise sigma (LSB of the layer's ADC)",
    "noise.nonlinear_sigma_lsb": "signal-dependent noise sigma (LSB of the layer's ADC)",
    "noise.cell_sigma": "cell variation sigma (% of a cell's current)",
}
NULLS, NULL_LABELS = ("null", "None", "~"), {"macro.input_enc_bits": "serial"}


def is_condition(key: str) -> bool:
    """Whether a config key is a condition (noise, seed, checkpoint, data, model, chip)."""
    if any(key == k or key.startswith(k + ".") for k in DESIGN_KEYS):
        return False
    return key.split(".", 1)[0] in CONDITION_GROUPS or key in CONDITION_KEYS


def sense(name: str) -> str:
    """``"min"`` for lower-is-better metrics (perplexity, energy, std, ...), else ``"max"``."""
    lower = name.endswith(("_ppl", "_std")) or name.split("/")[-1] == "ppl"
    return "min" if lower or SENSES.get(name) == "min" else "max"


def directions(names: Sequence[str]) -> list[str]:
    """Optuna's ``direction`` of each optimized metric (the ``metric_directions`` resolver)."""
    return [{"max": "maximize", "min": "minimize"}[sense(str(n))] for n in names]


def metric(results: Mapping[str, Any], name: str) -> Any:
    """A metric of one results.json by column name (``energy_pj`` is ``cost.energy_pj``)."""
    return (results.get("cost") or {}).get(name) if name in COST else results.get(name)


def objectives(results: Mapping[str, Any], cfg: Mapping[str, Any]) -> Any:
    """What a run returns to Hydra: ``sim_top1``, or with ``optimized_metrics: [a, b, ...]``
    (e.g. ``hparams_search=macro_pareto``) the tuple of those metrics. Raises ValueError when
    an optimized metric is not in the results."""
    names = cfg.get(OBJECTIVES_KEY) if hasattr(cfg, "get") else None
    if not names:
        return metric(results, ACCURACY)
    names = [names] if isinstance(names, str) else list(names)
    for name in [n for n in names if metric(results, n) is None]:
        hint = f"; choose from {', '.join(METRICS + OPTIONAL)}" if name not in COST else (
            " (the cost model writes it: keep a cost preset, e.g. cost=zigzag_28nm, not ~cost)"
        )  # fmt: skip
        raise ValueError(f"{OBJECTIVES_KEY}: {name!r} is not in results.json{hint}")
    values = tuple(float(metric(results, n)) for n in names)
    return values[0] if len(values) == 1 else values


def pareto_mask(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[bool]:
    """True for every point no other point dominates (at least as good in every objective and
    better in one); ``senses`` says per objective "max" or "min"."""
    if any(s not in ("max", "min") for s in senses):
        raise ValueError(f"senses must be 'max' or 'min', got {list(senses)}")
    p = np.asarray(points, float).reshape(len(points), len(senses))
    p = p * [1 if s == "max" else -1 for s in senses]  # every objective: higher is better
    beats = (p[:, None] >= p[None]).all(-1) & (p[:, None] > p[None]).any(-1)  # [i, j]: i beats j
    return (~beats.any(0)).tolist()


# --------------------------------------------------------------------------- the table
@dataclass
class Collection:
    """The complete runs found (``{location, overrides, results}``) and the skipped ones."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
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


def collect(dirs: Iterable[str | os.PathLike]) -> Collection:
    """Every results file under ``dirs`` (a run folder's ``results.json``, ``results-1.json``,
    ...) and the run folders (with a Hydra ``overrides.yaml``) that have none; unreadable and
    incomplete results are skipped with a note."""
    roots, out = [Path(d) for d in dirs], Collection()
    if missing := [r for r in roots if not r.is_dir()]:
        raise ValueError(f"{missing[0]} is not a folder; pass a sweep or run folder")
    found = {p.resolve(): p.name for r in roots for p in r.rglob("*.json")}
    runs = {p.parent.parent.resolve() for r in roots for p in r.rglob(str(OVERRIDES_FILE))}
    files = sorted(p for p, name in found.items() if RESULTS_NAME.fullmatch(name))
    for folder in sorted(runs - {f for p in files for f in p.parents}):
        out.skipped.append((folder, f"no {RESULTS_FILE} (failed or not finished)"))
    for path in files:
        try:
            res, why = json.loads(path.read_text()), "not a JSON object"
        except (OSError, ValueError) as e:
            res, why = None, f"unreadable: {e}"
        if isinstance(res, dict) and res.get("complete") is not False:
            overrides = _read_overrides(path.parent / OVERRIDES_FILE)
            location = path.parent if path.name == RESULTS_FILE else path
            out.jobs.append({"location": location, "overrides": overrides, "results": res})
        else:
            out.skipped.append((path, "incomplete (still running or interrupted)"
                                if isinstance(res, dict) else why))  # fmt: skip
    return out


def _read_overrides(path: Path) -> dict[str, str]:
    """key -> value as written of the overrides Hydra recorded (parsed by Hydra's own parser;
    deletions dropped, ``+`` prefixes stripped)."""
    lines = yaml.safe_load(path.read_text()) if path.is_file() else None
    parsed = OverridesParser.create().parse_overrides(list(map(str, lines or [])))
    return {o.get_key_element().lstrip("+"): o.get_value_element_as_str()
            for o in parsed if not o.is_delete()}  # fmt: skip


def _written(job: dict[str, Any], key: str) -> str:
    """A key's value as written: the override, else the run's config (a group: its name)."""
    if key in job["overrides"]:
        return job["overrides"][key]
    node: Any = job["results"].get("config")
    for part in key.split("."):
        node = node.get(part, "") if isinstance(node, Mapping) else ""
    node = node.get("name", "") if isinstance(node, Mapping) else node
    return json.dumps(node) if node is None or isinstance(node, bool) else str(node)


def _spelled_once(values: list[str]) -> list[str]:
    """One spelling per value: numbers equal as numbers ('0' on a command line, '0.0' from
    another sweep's config) take the shortest of their spellings."""
    numbers = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
    keys = [v if pd.isna(n) else float(n) for v, n in zip(values, numbers, strict=True)]
    shortest: dict[Any, str] = {}
    for k, v in zip(keys, values, strict=True):
        shortest[k] = min(shortest.get(k, v), v, key=len)
    return [shortest[k] for k in keys]


def _order(value: str) -> tuple:
    """Sort key of a value as written: null first, then numbers by value, then text."""
    n = pd.to_numeric(value, errors="coerce")
    return 0 if value in NULLS else 2 - pd.notna(n), 0.0 if pd.isna(n) else float(n), value


def _names(key: str, values: Iterable[str]) -> dict[str, str]:
    """Each value of a key as people read it: null by its meaning, a path by as many trailing
    parts as tell it from the other paths."""
    names = {v: NULL_LABELS.get(key, "null") if v in NULLS else v for v in set(values)}
    paths = {v: Path(v).parts for v in names if "/" in v}
    for v, parts in paths.items():
        n = 1
        while n < len(parts) and any(o[-n:] == parts[-n:] for o in paths.values() if o != parts):
            n += 1
        names[v] = "/".join(parts[-n:])
    return names


def _label(df: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """'adc_bits=6, rand_sigma=0.2' per row; '' for no keys."""
    parts = [k.rsplit(".", 1)[-1] + "=" + df[k].map(df.attrs["names"][k]) for k in keys]
    return pd.concat(parts, axis=1).agg(", ".join, axis=1) if parts else pd.Series("", df.index)


def load(collection: Collection, out: Path) -> pd.DataFrame:
    """One row per run: every results.json field flattened (``json_normalize``), the metric
    columns, the swept keys as written, ``accuracy`` (``sim_top1``, or ``val_top1`` for
    train.py runs) and its std, ``score`` (what fronts rank: perplexity for language models),
    ``condition``, ``design``, ``pareto`` and ``job``; sorted by the swept keys."""
    jobs, names = collection.jobs, [*METRICS, *OPTIONAL]
    keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    written = pd.DataFrame({k: _spelled_once([_written(j, k) for j in jobs]) for k in keys},
                           range(len(jobs)))  # fmt: skip
    swept = [k for k in keys if (len(jobs) == 1 or written[k].nunique() > 1)
             and k.split(".", 1)[0] not in STUDY_KEYS]  # fmt: skip
    raw = pd.json_normalize([j["results"] for j in jobs])
    metrics = raw.reindex(columns=[f"cost.{m}" if m in COST else m for m in names])
    df = pd.concat([raw.drop(columns=[*names, *swept], errors="ignore"),
                    metrics.set_axis(names, axis=1).apply(pd.to_numeric, errors="coerce"),
                    written[swept].assign(job=[_relative(j["location"], out) for j in jobs])],
                   axis=1).copy()  # fmt: skip
    acc = "val_top1" if df[ACCURACY].isna().all() and df["val_top1"].notna().any() else ACCURACY
    ppl = next((c for c in ("sim_ppl", "val_ppl") if df[c].notna().any()), None)
    conditions = [k for k in swept if is_condition(k) and k not in REPEAT_KEYS]
    designs = [k for k in swept if not is_condition(k)]
    shared = raw.reindex(columns=["summary.model", "summary.dataset", "num_samples"])
    shared = shared.drop_duplicates()  # one row: 'MODEL on DATASET (N samples)' of every run
    df.attrs.update(conditions=conditions, designs=designs, swept=swept, score=ppl or acc,
                    ppl=ppl is not None, names={k: _names(k, df[k]) for k in swept},
                    accuracy_name="validation top-1" if acc != ACCURACY else "simulated top-1",
                    summary="{} on {} ({} samples)".format(*shared.iloc[0]) if len(shared) == 1
                    and shared.notna().all(axis=None) else "")  # fmt: skip
    df = df.assign(accuracy=df[acc], accuracy_std=df.get(f"{acc}_std", np.nan),
                   score=df[ppl or acc], condition=_label(df, conditions).replace("", "all"),
                   design=_label(df, designs))  # fmt: skip
    df = df.sort_values([*swept, "job"], key=lambda s: s.map(_order)).reset_index(drop=True)
    means = df.dropna(subset=["score", ENERGY]).groupby(["condition", "design"], sort=False)
    front: set[tuple[str, str]] = set()  # per condition: the designs (mean over seeds) on it
    for _, group in means[["score", ENERGY]].mean().groupby(level="condition", sort=False):
        front |= set(group.index[pareto_mask(group.to_numpy(), [sense(df.attrs["score"]), "min"])])
    return df.assign(pareto=[k in front for k in zip(df["condition"], df["design"], strict=True)])


def _relative(location: Path, out: Path) -> str:
    try:
        return os.path.relpath(location, out.resolve())
    except ValueError:  # another drive (Windows)
        return str(location)


def write_report(dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None) -> Report:
    """Collect the runs under ``dirs`` and write sweep.csv, report.md and the plots into
    ``out`` (default: the only dir). Raises ValueError when no complete run is found."""
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise ValueError("no folder given: pass one or more sweep or run folders")
    if out is None and len(dirs) > 1:
        raise ValueError(
            "several folders: say where the merged report goes (out=DIR; report.py --out DIR)"
        )
    out, collection = Path(out if out is not None else dirs[0]), collect(dirs)
    if not collection.jobs:
        notes = "".join(f"; {f}: {why}" for f, why in collection.skipped[:3])
        raise ValueError(f"no complete {RESULTS_FILE} under {', '.join(map(str, dirs))}{notes}; "
                         "run a sweep first (python simulate.py -m KEY=A,B)")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    df = load(collection, out)
    optional = [c for c in OPTIONAL if df[c].notna().any()]
    columns = [*df.attrs["swept"], "condition", *METRICS, *optional, "pareto", "job"]
    df[columns].to_csv(out / CSV_FILE, index=False)
    plots = _plots(df, out)
    (out / MARKDOWN_FILE).write_text(_markdown(df, dirs, plots, collection.skipped))
    return Report(out, out / CSV_FILE, out / MARKDOWN_FILE, plots, collection,
                  df.attrs["swept"], df)  # fmt: skip


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a sweep.csv as dicts of strings (blank for absent)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")


# --------------------------------------------------------------------------- views
def _pct(mean: pd.Series, std: pd.Series | None = None, fmt: str = "{:.2f}") -> pd.Series:
    """Fractions in % (``fmt``), '± std' where a std > 0; '' where there is no value."""
    text = (100 * mean).map(fmt.format)
    if std is not None:
        text += np.where(std > 0, " ± " + (100 * std).map(fmt.format), "")
    return text.mask(mean.isna(), "")


def _lists(df: pd.DataFrame, column: str, least: int = 1) -> pd.Series:
    """Whether each run's ``column`` is a list of at least ``least`` entries."""
    cells = df.get(column, pd.Series(None, df.index, dtype=object))
    return cells.map(lambda c: isinstance(c, list) and len(c) >= least).astype(bool)


def _view(df: pd.DataFrame) -> pd.DataFrame:
    """The runs as people read them: % accuracies, energy and latency in a common unit."""
    view = pd.DataFrame({k: df[k].map(df.attrs["names"][k]) for k in df.attrs["swept"]})
    view[f"{df.attrs['accuracy_name'][:3]} top-1"] = _pct(df["accuracy"], df["accuracy_std"])
    view["float top-1"], view["inference top-1"] = _pct(df.float_top1), _pct(df.inference_top1)
    if df["measured_top1"].notna().any():  # silicon correlation
        view["measured top-1"] = _pct(df["measured_top1"])
        view["sim - measured (pp)"] = _pct(df["sim_minus_measured"], fmt="{:+.2f}")
    if _lists(df, "chip_top1", 2).any():  # a chip population
        view["worst chip top-1"], view["yield (%)"] = _pct(df.worst_chip_top1), _pct(df.yield_top1)
    for name in [n for n in ("sim_ppl", "inference_ppl", "val_ppl") if df[n].notna().any()]:
        view[name.replace("_", " ")] = df[name].map("{:.3f}".format)
    if df[ENERGY].notna().any():
        for name in (ENERGY, "latency_ns"):
            div, shown = unit(df[name].abs().median(), name)
            view[f"{name.split('_')[0]}/sample ({shown})"] = (df[name] / div).map("{:.4g}".format)
        view["area (mm²)"] = df["area_mm2"].map("{:.3g}".format)
        view["TOPS/W"] = df["tops_per_w"].map("{:.3g}".format)
        view["Pareto"] = df["pareto"].map({True: "yes", False: ""})
    view["seconds"] = df["seconds"].map("{:.1f}".format)
    return view.assign(job="`" + df["job"] + "`").replace(["nan", "None"], "")


def _fronts(df: pd.DataFrame) -> list[str]:
    """The fronts' section: per condition its Pareto-optimal designs by energy (mean over
    seeds, with the run count)."""
    if df[ENERGY].isna().all():
        return ["No energy in these results (the cost model's `cost.energy_pj`): no fronts."]
    best = "lowest perplexity" if df.attrs["ppl"] else "highest accuracy"
    blocks = [f"## Pareto fronts ({best} for its energy, within a condition)"]
    div, shown = unit(df[ENERGY].median(), ENERGY)
    score = "perplexity {:.3f}".format if df.attrs["ppl"] else lambda v: f"{100 * v:.2f} %"
    for condition, group in df[df["pareto"]].groupby("condition", sort=False):
        designs = group.groupby("design", sort=False).agg(
            score=("score", "mean"), energy=(ENERGY, "mean"), runs=("job", "size"),
            job=("job", "first")).sort_values(["energy", "score"])  # fmt: skip
        lines = [f"{i}. {r.Index or 'run'}: {score(r.score)} at {r.energy / div:.4g} {shown} "
                 f"(`{r.job}`{f', {r.runs} runs' if r.runs > 1 else ''})"
                 for i, r in enumerate(designs.itertuples(), 1)]  # fmt: skip
        blocks += [f"Condition {condition}:"] * bool(df.attrs["conditions"]) + ["\n".join(lines)]
    return blocks


def shmoo(df: pd.DataFrame) -> pd.DataFrame | None:
    """Accuracy by ADC bits (rows) x noise sigma (columns: % of full scale, or LSB for a
    ``*_sigma_lsb`` key): the mean over seeds, the best over any other design key; None
    unless both were swept. ``attrs["cells"]``: each cell's text, its sigma in the other unit
    too."""
    noise = next((k for k in df.attrs["conditions"] if k.endswith(SHMOO_NOISE)), None)
    if "macro.adc_bits" not in df.attrs["designs"] or noise is None:
        return None
    grid = df.assign(bits=df["macro.adc_bits"].astype(int), sigma=df[noise].astype(float))
    means = grid.pivot_table("accuracy", ["bits", "sigma"], "design", aggfunc="mean")
    table = means.max(axis=1).unstack("sigma").sort_index()
    steps, sigma = 2.0 ** table.index.to_numpy()[:, None] - 1, table.columns.to_numpy()
    lsb = noise.endswith("_lsb")  # LSB rms of a B-bit ADC = % of full scale x (2^B - 1) / 100
    other = pd.DataFrame(100 * sigma / steps if lsb else sigma * steps / 100, *table.axes)
    other = other.map(f"{{:.2g}} {'% FS' if lsb else 'LSB'}".format)
    cells = (100 * table).map("{:.1f}\n".format) + other  # the plot's; report.md: 'a (b)'
    table.attrs.update(noise=noise, unit="LSB" if lsb else "% FS", cells=cells)
    return table


def _markdown(df: pd.DataFrame, dirs: Sequence[Path], plots: list[Path], skipped: list) -> str:
    """report.md: what was swept, the runs, mean ± std over seeds, the fronts, the shmoo grid,
    the plots and the skipped folders, in blocks."""
    conditions, designs, swept = df.attrs["conditions"], df.attrs["designs"], df.attrs["swept"]
    repeats = set(REPEAT_KEYS) & set(swept)
    summary = f": {df.attrs['summary']}." if df.attrs["summary"] else "."
    intro = [f"{len(df)} runs from {_quoted(dirs)}{summary}",
             f"Design choices: {_quoted(designs)}." * bool(designs),
             f"Conditions (fronts are drawn within each): {_quoted(conditions)}."
             * bool(conditions), "Seeds are repeats: averaged." * bool(repeats)]  # fmt: skip
    blocks = ["# Sweep report", " ".join(filter(None, intro))]
    if df.get("summary.hybrid_quantized", pd.Series(dtype=object)).fillna(False).astype(bool).any():
        blocks.append("Hybrid cycles pass the ADC in some runs (quirk Q4, `macro.hybrid_exact="
                      "false`): noise-free but still quantized, and charged a conversion; "
                      "`macro.hybrid_exact=true` makes them exact.")  # fmt: skip
    blocks += [f"Accuracies in %; `{CSV_FILE}` has the same in fractions and pJ/ns.",
               _md(_view(df), index=False)]  # fmt: skip
    if repeats:
        stats = df.groupby(["condition", "design"], sort=False)["accuracy"]
        stats = stats.agg(["mean", "std", "size"]).reset_index().rename(columns={"size": "seeds"})
        stats["top-1 (%)"] = _pct(stats["mean"], stats["std"].fillna(0))
        table = stats[["condition", "design", "top-1 (%)", "seeds"]]
        blocks += ["## Mean ± std over seeds", _md(table, index=False)]
    blocks += _fronts(df)
    if (grid := shmoo(df)) is not None:
        cells = grid.attrs["cells"].replace(r"\n(.*)", r" (\1)", regex=True)
        cells.columns = [f"σ {s:g} {grid.attrs['unit']}" for s in grid.columns]
        cells.index.name = "ADC bits"
        title = f"{df.attrs['accuracy_name']} (%), ADC bits x `{grid.attrs['noise']}`"
        other = ("% of ADC full scale, LSB x 100 / (2^B - 1)" if grid.attrs["unit"] == "LSB"
                 else "LSB rms of that ADC, % FS x (2^B - 1) / 100")  # fmt: skip
        blocks += [f"## Shmoo grid: {title}", _md(cells),
                   f"(in brackets: the same sigma in {other})"]  # fmt: skip
    blocks += [f"![{p.stem}]({p.name})" for p in plots]
    if skipped:
        blocks.append("\n".join([f"Skipped {len(skipped)} folders:",
                                 *(f"- `{f}`: {why}" for f, why in skipped)]))  # fmt: skip
    return "\n\n".join(blocks) + "\n"


def _quoted(keys: Iterable) -> str:
    return ", ".join(f"`{k}`" for k in keys)


def _md(table: pd.DataFrame, index: bool = True) -> str:
    return table.to_markdown(index=index, disable_numparse=True)


# --------------------------------------------------------------------------- plots
def _plots(df: pd.DataFrame, out: Path) -> list[Path]:
    """The plots (README "A sweep and its report"), seaborn figures of the table's rows."""
    df = df.dropna(subset=["score"])
    if df.empty:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    if df.attrs["ppl"]:
        y, label = df["score"], f"{df.attrs['score'].replace('_', ' ')} (lower is better)"
    else:
        y, label = 100 * df["accuracy"], f"{df.attrs['accuracy_name']} (%)"
    keys = [k for k in df.attrs["designs"] + df.attrs["conditions"] if df[k].nunique() > 1]
    plots = [_plot_vs(df, k, y, label, out / f"accuracy_vs_{k}.png") for k in keys]
    if df[ENERGY].notna().any():
        plots.append(_plot_fronts(df.dropna(subset=[ENERGY]), label, out))
    if (grid := shmoo(df)) is not None:
        plots.append(_plot_shmoo(grid, df, out / "shmoo.png"))
    if len(chips := df[_lists(df, "chip_top1", 2)]):
        plots.append(_plot_chips(chips, out / "chips_cdf.png"))
        yields = 100 * chips["yield_top1"], "chips at or above the threshold (%)"
        plots += [_plot_vs(chips, k, *yields, out / f"yield_vs_{k}.png", "Yield")
                  for k in df.attrs["designs"] if chips[k].nunique() > 1]  # fmt: skip
    if len(calibrated := df[_lists(df, "calibration.layers")]):
        plots += _plot_calibration(calibrated, out)
    sens = df[_lists(df, "sensitivity")]
    for i, job in sens["job"].items():
        name = "sensitivity" + ("_" + re.sub(r"[^\w.=,-]+", "_", job) if len(sens) > 1 else "")
        plots.append(_plot_sensitivity(sens.loc[[i]], out / f"{name}.png"))
    return plots


def _save(g, path: Path, title: str, df: pd.DataFrame, ylabel: str | None = None) -> Path:
    """A seaborn grid (or a figure) titled with the model and data every run shares, with
    quantized inference dashed where ``ylabel`` is an accuracy; saved and closed."""
    import matplotlib.pyplot as plt

    inference = df["inference_top1"].dropna().unique()
    if ylabel and len(inference) == 1 and not df.attrs["ppl"]:
        g.refline(y=100 * inference[0], color="0.4", ls="--", lw=1)
        g.set_ylabels(f"{ylabel}, dashed: quantized inference")
    fig = getattr(g, "figure", g)
    summary = f"\n{df.attrs['summary']}" if df.attrs["summary"] else ""
    fig.suptitle(title + summary, y=1.0, va="bottom")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _plot_vs(df, key: str, y: pd.Series, label: str, path: Path, what: str = "") -> Path:
    """``y`` against one key: a line per condition and other design (mean ± sd over seeds);
    with more than MAX_LINES (a search), every run a dot and the best design per x a line."""
    import seaborn as sns

    order = sorted(df[key].unique(), key=_order)
    numeric = pd.to_numeric(pd.Series(order), errors="coerce").notna().all()
    others = [k for k in (*df.attrs["designs"], *df.attrs["conditions"]) if k != key]
    data = df.assign(x=df[key].map(float if numeric else order.index), y=y)
    data["line"] = _label(data, others)
    search = data["line"].nunique() > MAX_LINES
    hue = "condition" if search else "line"
    g = sns.relplot(data=data, x="x", y="y", hue=hue if data[hue].nunique() > 1 else None,
                    kind="line", marker="o", errorbar=None if search else "sd", err_style="bars",
                    estimator=sense(df.attrs["score"]) if search else "mean", height=4.4,
                    aspect=1.5, facet_kws={"legend_out": True})  # fmt: skip
    if search:
        sns.scatterplot(data=data, x="x", y="y", color="0.6", s=18, ax=g.ax, zorder=0)
    if not numeric or len(order) <= 12:
        ticks = sorted(data["x"].unique()) if numeric else range(len(order))
        g.set(xticks=ticks, xticklabels=[df.attrs["names"][key][v] for v in order])
    g.set(xlabel=KEY_LABELS.get(key, key), ylabel=label, **({"ylim": (-3, 103)} if what else {}))
    if g.legend:
        g.legend.set_title("")
    title = f"{what or label.split(' (')[0]} vs {key.rsplit('.', 1)[-1]}"
    title += ": a dot per run, a line through the best design per x" if search else ""
    return _save(g, path, title, df, None if what else label)


def _plot_fronts(df: pd.DataFrame, label: str, out: Path) -> Path:
    """The score against energy: every design (mean over seeds) a dot, one colour and one
    front per condition, the Pareto-optimal designs starred and named."""
    import seaborn as sns

    div, shown = unit(df[ENERGY].median(), ENERGY)
    y = df["score"] if df.attrs["ppl"] else 100 * df["accuracy"]
    points = df.assign(y=y, energy=df[ENERGY] / div).groupby(["condition", "design"], sort=False)
    points = points.agg(y=("y", "mean"), energy=("energy", "mean"), pareto=("pareto", "any"))
    points, several = points.reset_index(), df["condition"].nunique() > 1
    hue = {"hue": "condition", "hue_order": list(points["condition"].unique())} if several else {}
    g = sns.relplot(data=points, x="energy", y="y", alpha=0.6, height=4.6, aspect=1.4,
                    **(hue or {"color": "0.55"}))  # fmt: skip
    front = points[points["pareto"]]
    sns.scatterplot(data=front, x="energy", y="y", marker="*", s=220, ax=g.ax, legend=False,
                    **(hue or {"color": "tab:red"}))  # fmt: skip
    sns.lineplot(data=front, x="energy", y="y", drawstyle="steps-post", ax=g.ax, legend=False,
                 **(hue or {"color": "tab:red"}))  # fmt: skip
    for row in front.itertuples() if len(front) <= 12 else ():
        g.ax.annotate(row.design, (row.energy, row.y), textcoords="offset points",
                      xytext=(6, -10), fontsize="x-small")  # fmt: skip
    if points["energy"].max() > 20 * points["energy"].min():
        g.set(xscale="log")
    g.set_axis_labels(f"energy per sample ({shown})", label)
    title = f"{label.split(' (')[0]} vs energy per sample, "
    title += "a front per condition" if several else "the Pareto-optimal designs starred"
    return _save(g, out / "accuracy_vs_energy.png", title, df, label)


def _plot_shmoo(grid: pd.DataFrame, df: pd.DataFrame, path: Path) -> Path:
    """The shmoo grid as a heat map, each cell with its sigma in the other unit."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.2 * len(grid.columns) + 2.6, 0.7 * len(grid) + 1.8))
    sns.heatmap(100 * grid, annot=grid.attrs["cells"], fmt="", cmap="RdYlGn", vmin=0,
                vmax=100, ax=ax, cbar_kws={"label": "accuracy (%)"},
                annot_kws={"fontsize": "small"})  # fmt: skip
    ax.invert_yaxis()
    ax.set(xlabel=KEY_LABELS.get(grid.attrs["noise"], grid.attrs["noise"]),
           ylabel=KEY_LABELS["macro.adc_bits"],
           xticklabels=[f"{s:g}" for s in grid.columns])  # fmt: skip
    return _save(fig, path, f"Shmoo: {df.attrs['accuracy_name']} (%)", df)


def _run_label(df: pd.DataFrame) -> pd.Series:
    """A run in a legend: its design and condition (without the chip keys), else its job."""
    keys = [k for k in (*df.attrs["designs"], *df.attrs["conditions"]) if k not in CONDITION_KEYS]
    return _label(df, keys).replace("", np.nan).fillna(df["job"])


def _plot_chips(df: pd.DataFrame, path: Path) -> Path:
    """The chips' accuracy distribution: the empirical CDF of each run's chip top-1 (one
    curve per design and condition), with the yield threshold of each run dotted."""
    import seaborn as sns

    chips = df.assign(run=_run_label(df)).explode("chip_top1", ignore_index=True)
    chips["top1"] = 100 * chips["chip_top1"].astype(float)
    several = chips["run"].nunique() > 1
    g = sns.displot(data=chips, x="top1", hue="run" if several else None, kind="ecdf",
                    height=4.4, aspect=1.4)  # fmt: skip
    for threshold in df["yield_threshold"].dropna().unique():
        g.refline(x=100 * threshold, color="0.4", ls=":", lw=1)
    g.set_axis_labels("simulated top-1 of a chip (%), dotted: yield threshold",
                      "fraction of chips at or below")  # fmt: skip
    n = df["chip_top1"].map(len)
    count = f"{n.iloc[0]} chips" if n.nunique() == 1 else "chips"
    return _save(g, path, f"Chip population: top-1 of {count} per run (CDF)", df)


def _plot_sensitivity(run: pd.DataFrame, path: Path) -> Path:
    """Per ACiM layer: top-1 with only it on the macro and with every layer but it."""
    import seaborn as sns

    row = run.iloc[0]
    sens = pd.DataFrame(row["sensitivity"]).melt("layer", var_name="pass", value_name="top1")
    sens["pass"] = sens["pass"].map({"alone_top1": "only this layer on the macro",
                                     "without_top1": "every layer but this one"})  # fmt: skip
    height = 1.3 + 0.4 * len(row["sensitivity"])
    g = sns.catplot(data=sens.assign(top1=100 * sens["top1"]), x="top1", y="layer", hue="pass",
                    kind="point", linestyles="none", height=height,
                    aspect=6.4 / height)  # fmt: skip
    for value, style in ((row["accuracy"], ":"), (row["inference_top1"], "--")):
        if pd.notna(value):
            g.refline(x=100 * value, color="0.3", ls=style)
    g.set_axis_labels("simulated top-1 (%); dotted: every layer on the macro, dashed: none",
                      "ACiM layer")  # fmt: skip
    title = "Per-layer sensitivity" + (f", {row['design']}" if row["design"] else "")
    return _save(g, path, title, run)


def _plot_calibration(df: pd.DataFrame, out: Path) -> list[Path]:
    """Calibrated ADCs: ``calibration_clip.png``, per layer the clip rate of each run, and
    ``calibration_codes.png``, the ADC code histogram on the calibration data (share of
    conversions per code) per layer, a panel per run."""
    import seaborn as sns

    layers = pd.DataFrame([{"run": run, **layer} for run, cal in
                           zip(_run_label(df), df["calibration.layers"], strict=True)
                           for layer in cal])  # fmt: skip
    runs = layers["run"].nunique()
    bars = layers.assign(clip=100 * layers["clip_rate"])
    if runs == 1:  # the calibrated full scale beside each layer
        bars["layer"] += "\nFS " + bars["full_scale"].astype(str) + "/" + bars["nrow"].astype(str)
    height = 1.4 + 0.25 * len(layers)
    g = sns.catplot(data=bars, x="clip", y="layer", hue="run", kind="bar", height=height,
                    aspect=6.4 / height)  # fmt: skip
    g.set_axis_labels("clipped conversions (% of calibration counts)", "ACiM layer")
    clip = _save(g, out / "calibration_clip.png", "Calibrated ADCs: clip rate at the "
                 "calibrated full scale", df)  # fmt: skip
    share = layers["code_histogram"].map(lambda h: np.divide(h, max(sum(h), 1)))
    codes = layers.assign(share=share, code=share.map(lambda s: np.arange(len(s))))
    codes = codes.explode(["code", "share"], ignore_index=True).astype({"share": float})
    g = sns.relplot(data=codes, x="code", y="share", hue="layer", col="run", kind="line",
                    col_wrap=min(runs, 4), drawstyle="steps-mid", height=2.6, aspect=1.2,
                    facet_kws={"sharex": False})  # fmt: skip
    g.set(yscale="log").set_titles("{col_name}", size="small")
    g.set_axis_labels("ADC output code", "share of conversions")
    title = "Calibrated ADCs: output code histogram on the calibration data"
    return [clip, _save(g, out / "calibration_codes.png", title, df)]
