"""The design-study report: every run of one or more sweeps in one pandas table, and its views.

``write_report(dirs)`` loads the ``results*.json`` of every run under ``dirs`` (incomplete
runs are skipped with a note) into one DataFrame (:func:`pandas.json_normalize`, one row per
run, plus the swept keys as written) and writes views of it into ``out``: ``sweep.csv`` (the
swept keys, ``condition``, :data:`METRICS` and the :data:`OPTIONAL` metrics some run has,
``pareto``, ``job``), ``report.md`` (the same in %, mean ± std over seeds, the Pareto set of
each condition, a shmoo grid) and seaborn plots.

Keys are *design choices* (``macro.*``, ``cost.*``, per-layer macros, training options) or
*conditions* a design must survive (:func:`is_condition`): fronts are formed only within one
condition; seeds are repeats, averaged. Perplexity (``*_ppl``) is lower-is-better
(:data:`SENSES`): a language model's fronts and searches minimise it. :func:`objectives` is
what ``simulate.py`` returns to Hydra's sweepers.
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
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

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
NULL_LABELS = {"macro.input_enc_bits": "serial"}  # how a null value reads


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
    values = []
    for name in [names] if isinstance(names, str) else names:
        if (value := metric(results, name)) is None:
            known = ", ".join(METRICS + OPTIONAL)
            hint = f"; choose from {known}" if name not in COST else (
                " (the cost model writes it: keep a cost preset, e.g. cost=zigzag_28nm, not ~cost)"
            )  # fmt: skip
            raise ValueError(f"{OBJECTIVES_KEY}: {name!r} is not in results.json{hint}")
        values.append(float(value))
    return values[0] if len(values) == 1 else tuple(values)


def pareto_mask(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[bool]:
    """True for every point no other point dominates (at least as good in every objective and
    better in one); ``senses`` says per objective "max" or "min"."""
    if any(s not in ("max", "min") for s in senses):
        raise ValueError(f"senses must be 'max' or 'min', got {list(senses)}")
    scored = [[v if s == "max" else -v for s, v in zip(senses, p, strict=True)] for p in points]
    return [not any(all(x >= y for x, y in zip(o, p, strict=True)) and o != p for o in scored)
            for p in scored]  # fmt: skip


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
    """Every results file of every folder under ``dirs`` that has one or a Hydra
    ``overrides.yaml``; unreadable, incomplete and missing results are skipped."""
    folders: dict[Path, None] = {}
    for root in map(Path, dirs):
        if not root.is_dir():
            raise ValueError(f"{root} is not a folder; pass a sweep or run folder")
        found = [p.parent for p in root.rglob("results*.json") if RESULTS_NAME.fullmatch(p.name)]
        found += [p.parent.parent for p in root.rglob(str(OVERRIDES_FILE))]
        folders.update(dict.fromkeys(f.resolve() for f in sorted(found)))
    out = Collection()
    for folder in folders:
        paths = sorted((int(m.group(1) or 0), p) for p in folder.glob("results*.json")
                       if (m := RESULTS_NAME.fullmatch(p.name)))  # fmt: skip
        if not paths and not any(RESULTS_NAME.fullmatch(p.name) for p in folder.rglob("*.json")):
            out.skipped.append((folder, f"no {RESULTS_FILE} (failed or not finished)"))
        overrides = _read_overrides(folder / OVERRIDES_FILE)
        for number, path in paths:
            try:
                res = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                out.skipped.append((path, f"unreadable: {e}"))
                continue
            if not isinstance(res, dict) or res.get("complete") is False:
                why = "incomplete (still running or interrupted)" if isinstance(res, dict) else ""
                out.skipped.append((path, why or "not a JSON object"))
                continue
            out.jobs.append({"location": path if number else folder, "overrides": overrides,
                             "results": res})  # fmt: skip
    return out


def _read_overrides(path: Path) -> dict[str, str]:
    """key -> value as written of the overrides Hydra recorded (parsed by Hydra's own parser;
    deletions dropped, ``+`` prefixes stripped)."""
    if not path.is_file():
        return {}
    lines = [str(x) for x in (OmegaConf.to_container(OmegaConf.load(path)) or [])]
    parsed = OverridesParser.create().parse_overrides(lines)
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
    return "null" if node is None else str(node).lower() if isinstance(node, bool) else str(node)


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


def _order(value: str) -> tuple:
    typed = _typed(value)
    number = isinstance(typed, (int, float))
    return 0 if typed is None else 2 - number, float(typed) if number else 0.0, str(typed)


def _names(key: str, values: Iterable[str]) -> dict[str, str]:
    """Each value of a key as people read it: null by its meaning, a path by its file name, or
    by as many trailing parts as tell it from another path of the same file name."""
    paths = {v: Path(v).parts for v in set(values) if "/" in v}
    names = {v: NULL_LABELS.get(key, "null") if _typed(v) is None else v for v in set(values)}
    for v, parts in paths.items():
        n = 1
        while n < len(parts) and any(o[-n:] == parts[-n:] for o in paths.values() if o != parts):
            n += 1
        names[v] = "/".join(parts[-n:])
    return names


def _label(df: pd.DataFrame, row: pd.Series, keys: Sequence[str]) -> str:
    """'adc_bits=6, rand_sigma=0.2' of a row; '' for no keys."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={df.attrs['names'][k][row[k]]}" for k in keys)


def load(collection: Collection, out: Path) -> pd.DataFrame:
    """One row per run: every results.json field flattened (``json_normalize``), the metric
    columns, the swept keys as written, ``accuracy`` (``sim_top1``, or ``val_top1`` for
    train.py runs) and its std, ``score`` (what fronts rank: perplexity for language models),
    ``condition``, ``design``, ``pareto`` and ``job``; sorted by the swept keys."""
    jobs = collection.jobs
    keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    written = pd.DataFrame({k: [_written(j, k) for j in jobs] for k in keys}, dtype=object)
    swept = [k for k in keys if len(jobs) == 1 or written[k].nunique() > 1]
    df = pd.json_normalize([j["results"] for j in jobs])
    df = (
        df.drop(columns=[c for c in [*METRICS, *OPTIONAL] if c in df])
        .assign(
            **{
                m: pd.to_numeric([metric(j["results"], m) for j in jobs])
                for m in METRICS + OPTIONAL
            },
            **{k: written[k] for k in swept},
            job=[_relative(j["location"], out) for j in jobs],
        )
        .copy()
    )  # one block: the columns added below do not fragment a wide frame
    train = df[ACCURACY].isna().all() and df["val_top1"].notna().any()
    acc = "val_top1" if train else ACCURACY
    df["accuracy"] = pd.to_numeric(df[acc], errors="coerce")
    df["accuracy_std"] = pd.to_numeric(df.get(f"{acc}_std"), errors="coerce")
    ppl = next((c for c in ("sim_ppl", "val_ppl") if df[c].notna().any()), None)
    df["score"] = pd.to_numeric(df[ppl], errors="coerce") if ppl else df["accuracy"]
    conditions = [k for k in swept if is_condition(k) and k not in REPEAT_KEYS]
    designs = [k for k in swept if not is_condition(k)]
    df.attrs.update(conditions=conditions, designs=designs, swept=swept, score=ppl or acc,
                    accuracy_name="validation top-1" if train else "simulated top-1")  # fmt: skip
    df.attrs["names"] = {k: _names(k, df[k]) for k in swept}
    df["condition"] = [_label(df, r, conditions) or "all" for _, r in df.iterrows()]
    df["design"] = [_label(df, r, designs) for _, r in df.iterrows()]
    df = df.sort_values("job")
    if swept:
        df = df.sort_values(swept, key=lambda s: s.map(_order), kind="stable")
    df = df.reset_index(drop=True)
    df["pareto"] = _pareto_column(df)
    return df


def _pareto_column(df: pd.DataFrame) -> pd.Series:
    """True for runs whose design (mean over seeds) is on the front of its condition: the best
    score (accuracy, or perplexity) for its energy among the designs of that condition."""
    means = df.dropna(subset=["score", ENERGY]).groupby(["condition", "design"], sort=False)
    means = means[["score", ENERGY]].mean()
    front = set()
    for _, group in means.groupby(level="condition", sort=False):
        keep = pareto_mask(group.to_numpy(float).tolist(), [sense(df.attrs["score"]), "min"])
        front |= {key for key, on in zip(group.index, keep, strict=True) if on}
    return pd.Series(
        [k in front for k in zip(df["condition"], df["design"], strict=True)], df.index
    )


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
def _unit(values: pd.Series, kind: str) -> tuple[float, str]:
    """(size, name) of the unit (results.unit, the one formatter) of a column's median."""
    return unit(pd.to_numeric(values, errors="coerce").abs().median(), kind)


def _pct(mean: float, std: float = 0.0) -> str:
    return "" if pd.isna(mean) else f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std > 0 else "")


def _ppl(df: pd.DataFrame) -> bool:
    return df.attrs["score"].endswith("_ppl")


def _score_text(df: pd.DataFrame, value: float) -> str:
    return f"perplexity {value:.3f}" if _ppl(df) else f"{_pct(value)} %"


def _summary(df: pd.DataFrame) -> str:
    """'MODEL on DATASET (N samples)' when every run shares them."""
    cols = ["summary.model", "summary.dataset", "num_samples"]
    if not all(c in df and df[c].nunique(dropna=False) == 1 for c in cols):
        return ""
    model, dataset, n = df[cols].iloc[0]
    return f"{model} on {dataset} ({n} samples)"


def _view(df: pd.DataFrame) -> pd.DataFrame:
    """The runs as people read them: % accuracies, energy and latency in a common unit."""
    view = pd.DataFrame({k: df[k].map(df.attrs["names"][k]) for k in df.attrs["swept"]})
    short = df.attrs["accuracy_name"][:3]
    view[f"{short} top-1"] = [
        _pct(m, s) for m, s in zip(df["accuracy"], df["accuracy_std"], strict=True)
    ]
    view["float top-1"] = df["float_top1"].map(_pct)
    view["inference top-1"] = df["inference_top1"].map(_pct)
    if df["measured_top1"].notna().any():  # silicon correlation
        view["measured top-1"] = df["measured_top1"].map(_pct)
        view["sim - measured (pp)"] = df["sim_minus_measured"].map(
            lambda v: _pct(v) and f"{100 * v:+.2f}"
        )
    if _chips(df).any():  # a chip population
        view["worst chip top-1"] = df["worst_chip_top1"].map(_pct)
        view["yield (%)"] = df["yield_top1"].map(_pct)
    for name in ("sim_ppl", "inference_ppl", "val_ppl"):
        if df[name].notna().any():
            view[name.replace("_", " ")] = df[name].map("{:.3f}".format)
    if df[ENERGY].notna().any():
        for name in (ENERGY, "latency_ns"):
            div, shown = _unit(df[name], name)
            view[f"{name.split('_')[0]}/sample ({shown})"] = (df[name] / div).map("{:.4g}".format)
        view["area (mm²)"] = df["area_mm2"].map("{:.3g}".format)
        view["TOPS/W"] = df["tops_per_w"].map("{:.3g}".format)
        view["Pareto"] = df["pareto"].map({True: "yes", False: ""})
    view["seconds"] = df["seconds"].map("{:.1f}".format)
    view["job"] = "`" + df["job"] + "`"
    return view.replace(["nan", "None"], "")


def _chips(df: pd.DataFrame) -> pd.Series:
    """Whether each run simulated a population of chips (``simulate.chips`` > 1)."""
    chips = df.get("chip_top1", pd.Series([None] * len(df), index=df.index))
    return chips.map(lambda c: isinstance(c, list) and len(c) > 1)


def _fronts(df: pd.DataFrame) -> list[str]:
    """Per condition: its Pareto-optimal designs by energy (mean over seeds, run count)."""
    div, shown = _unit(df[ENERGY], ENERGY)
    lines = []
    for condition, group in df[df["pareto"]].groupby("condition", sort=False):
        lines += [f"Condition {condition}:", ""] if df.attrs["conditions"] else []
        designs = group.groupby("design", sort=False).agg(
            score=("score", "mean"), energy=(ENERGY, "mean"), runs=("job", "size"),
            job=("job", "first"),
        ).sort_values(["energy", "score"])  # fmt: skip
        for number, (design, r) in enumerate(designs.iterrows(), 1):
            runs = f", {r.runs} runs" if r.runs > 1 else ""
            lines.append(f"{number}. {design or 'run'}: {_score_text(df, r.score)} at "
                         f"{r.energy / div:.4g} {shown} (`{r.job}`{runs})")  # fmt: skip
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


def _markdown(df: pd.DataFrame, dirs, plots: list[Path], skipped) -> str:
    conditions, designs, swept = df.attrs["conditions"], df.attrs["designs"], df.attrs["swept"]
    repeats = set(REPEAT_KEYS) & set(swept)
    intro = f"{len(df)} runs from {', '.join(f'`{d}`' for d in dirs)}"
    intro += f": {_summary(df)}." if _summary(df) else "."
    intro += f" Design choices: {', '.join(f'`{k}`' for k in designs)}." if designs else ""
    if conditions:
        named = ", ".join(f"`{k}`" for k in conditions)
        intro += f" Conditions (fronts are drawn within each): {named}."
    intro += " Seeds are repeats: averaged." if repeats else ""
    lines = ["# Sweep report", "", intro, ""]
    if df.get("summary.hybrid_quantized", pd.Series(dtype=object)).fillna(False).astype(bool).any():
        lines += ["Hybrid cycles pass the ADC in some runs (quirk Q4, `macro.hybrid_exact=false`): "
                  "noise-free but still quantized, and charged a conversion; "
                  "`macro.hybrid_exact=true` makes them exact.", ""]  # fmt: skip
    lines += [f"Accuracies in %; `{CSV_FILE}` has the same in fractions and pJ/ns.", ""]
    lines += [_view(df).to_markdown(index=False, disable_numparse=True), ""]
    if repeats:
        stats = df.groupby(["condition", "design"], sort=False)["accuracy"].agg(
            ["mean", "std", "size"]
        )
        stats["top-1 (%)"] = [
            _pct(m, s) for m, s in zip(stats["mean"], stats["std"].fillna(0), strict=True)
        ]
        stats = stats.reset_index().rename(columns={"size": "seeds"})
        stats = stats[["condition", "design", "top-1 (%)", "seeds"]]
        lines += [
            "## Mean ± std over seeds",
            "",
            stats.to_markdown(index=False, disable_numparse=True),
        ]
        lines.append("")
    if df[ENERGY].notna().any():
        best = "lowest perplexity" if _ppl(df) else "highest accuracy"
        lines += [f"## Pareto fronts ({best} for its energy, within a condition)", "", *_fronts(df)]
    else:
        lines += ["No energy in these results (the cost model's `cost.energy_pj`): no fronts.", ""]
    if (grid := shmoo(df)) is not None:
        shown = grid.copy().astype(object)
        for sigma in grid.columns:
            shown[sigma] = [
                f"{100 * v:.1f} ({_lsb(sigma, b):.2g} LSB)" for b, v in grid[sigma].items()
            ]
        shown.columns = [f"σ {s:g} % FS" for s in grid.columns]
        title = f"{df.attrs['accuracy_name']} (%), ADC bits x `{grid.attrs['noise']}`"
        lines += [f"## Shmoo grid: {title}", "", shown.rename_axis("ADC bits").to_markdown(
            disable_numparse=True), "", "(in brackets: the same sigma in LSB rms of that ADC, "
            "% FS x (2^B - 1) / 100)", ""]  # fmt: skip
    lines += [f"![{p.stem}]({p.name})\n" for p in plots]
    if skipped:
        lines += [f"Skipped {len(skipped)} folders:"] + [f"- `{f}`: {why}" for f, why in skipped]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots
def _plots(df: pd.DataFrame, out: Path) -> list[Path]:
    """accuracy_vs_<key>.png per swept key, accuracy_vs_energy.png, shmoo.png, sensitivity."""
    scored = df.dropna(subset=["score"])
    if scored.empty:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    keys = [k for k in df.attrs["designs"] + df.attrs["conditions"] if scored[k].nunique() > 1]
    plots = [_plot_vs(scored, key, out / f"accuracy_vs_{key}.png") for key in keys]
    if scored[ENERGY].notna().any():
        plots.append(_plot_fronts(scored.dropna(subset=[ENERGY]), out / "accuracy_vs_energy.png"))
    if (grid := shmoo(scored)) is not None:
        plots.append(_plot_shmoo(grid, scored, out / "shmoo.png"))
    if _chips(scored).any():
        chips = scored[_chips(scored)]
        plots.append(_plot_chips(chips, out / "chips_cdf.png"))
        keys = [k for k in df.attrs["designs"] if chips[k].nunique() > 1]
        plots += [_plot_yield(chips, key, out / f"yield_vs_{key}.png") for key in keys]
    calibrated = df.get("calibration.layers", pd.Series(dtype=object)).map(
        lambda c: isinstance(c, list) and bool(c)
    )
    if calibrated.any():
        plots += _plot_calibration(df[calibrated], out)
    rows = [i for i, s in df.get("sensitivity", pd.Series(dtype=object)).items()
            if isinstance(s, list) and s]  # fmt: skip
    for i in rows:
        name = (
            "sensitivity_" + re.sub(r"[^\w.=,-]+", "_", df["job"][i])
            if len(rows) > 1
            else "sensitivity"
        )
        plots.append(_plot_sensitivity(df.loc[i], out / f"{name}.png"))
    return plots


def _y(df: pd.DataFrame) -> tuple[pd.Series, str]:
    """What the plots draw: accuracy in %, or a language model's perplexity."""
    if _ppl(df):
        return df["score"], f"{df.attrs['score'].replace('_', ' ')} (lower is better)"
    return 100 * df["accuracy"], f"{df.attrs['accuracy_name']} (%)"


def _figure(title: str, df: pd.DataFrame, size=(6.6, 4.4)):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    ax.set_title(title + (f"\n{_summary(df)}" if _summary(df) else ""))
    return fig, ax


def _save(fig, ax, path: Path, df: pd.DataFrame | None = None, legend: str | None = None) -> Path:
    import matplotlib.pyplot as plt

    values = [] if df is None or _ppl(df) else df["inference_top1"].dropna().unique()
    if len(values) == 1:
        ax.axhline(100 * values[0], color="0.4", ls="--", lw=1, label="quantized inference")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title=legend, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _plot_vs(df: pd.DataFrame, key: str, path: Path) -> Path:
    """The score against one key: a line per condition and other design (mean ± sd over
    seeds); with more than MAX_LINES, every run a dot and the best design per x a line."""
    import seaborn as sns

    others = [k for k in (*df.attrs["designs"], *df.attrs["conditions"]) if k != key]
    order = sorted(df[key].unique(), key=_order)
    numeric = all(isinstance(_typed(v), (int, float)) for v in order)
    y, label = _y(df)
    data = df.assign(x=df[key].map(_typed if numeric else order.index), y=y,
                     line=[_label(df, r, others) for _, r in df.iterrows()])  # fmt: skip
    fig, ax = _figure(f"{label.split(' (')[0]} vs {key.rsplit('.', 1)[-1]}", df)
    if data["line"].nunique() > MAX_LINES:  # a search: dots, the best design per x a line
        sns.scatterplot(data=data, x="x", y="y", color="0.6", s=18, ax=ax, label="every run")
        several = data["condition"].nunique() > 1
        sns.lineplot(data=data, x="x", y="y", hue="condition" if several else None, marker="o",
                     estimator=sense(df.attrs["score"]), errorbar=None, ax=ax,
                     **({} if several else {"label": "best design"}))  # fmt: skip
    else:
        sns.lineplot(data=data, x="x", y="y", hue="line" if data["line"].nunique() > 1 else None,
                     marker="o", errorbar="sd", err_style="bars", ax=ax)  # fmt: skip
    if not numeric:
        ax.set_xticks(range(len(order)), [df.attrs["names"][key][v] for v in order])
    elif len(order) <= 12:
        ax.set_xticks(sorted(data["x"].unique()))
    ax.set(xlabel=KEY_LABELS.get(key, key), ylabel=label)
    return _save(fig, ax, path, df)


def _plot_fronts(df: pd.DataFrame, path: Path) -> Path:
    """The score against energy: every design (mean over seeds), one colour and one front per
    condition, the Pareto-optimal designs starred and named."""
    import seaborn as sns

    div, shown = _unit(df[ENERGY], ENERGY)
    y, label = _y(df)
    points = df.assign(y=y, energy=df[ENERGY] / div).groupby(["condition", "design"], sort=False)
    points = points.agg(y=("y", "mean"), energy=("energy", "mean"), pareto=("pareto", "any"))
    points = points.reset_index()
    several = points["condition"].nunique() > 1
    title = f"{label.split(' (')[0]} vs energy per sample" + (
        ", a front per condition" if several else ""
    )
    fig, ax = _figure(title, df, (7.2, 4.8))
    hue = "condition" if several else None
    sns.scatterplot(data=points[~points["pareto"]], x="energy", y="y", hue=hue, alpha=0.5,
                    color=None if several else "0.55", ax=ax, legend=False)  # fmt: skip
    front = points[points["pareto"]].sort_values("energy")
    sns.lineplot(data=front, x="energy", y="y", hue=hue, marker="*", markersize=14,
                 drawstyle="steps-post", ax=ax, color=None if several else "tab:red",
                 **({} if several else {"label": "Pareto-optimal"}))  # fmt: skip
    for row in front.itertuples() if len(front) <= 12 else ():
        ax.annotate(row.design, (row.energy, row.y), textcoords="offset points",
                    xytext=(6, -10), fontsize="x-small")  # fmt: skip
    if points["energy"].max() / max(points["energy"].min(), 1e-30) > 20:
        ax.set_xscale("log")
    ax.set(xlabel=f"energy per sample ({shown})", ylabel=label)
    return _save(fig, ax, path, df, "condition" if several else None)


def _plot_shmoo(grid: pd.DataFrame, df: pd.DataFrame, path: Path) -> Path:
    """The shmoo grid as a heat map, each cell with its sigma in LSB rms of that ADC."""
    import seaborn as sns

    labels = grid.copy().astype(object)
    for sigma in grid.columns:
        labels[sigma] = [f"{100 * v:.1f}\n{_lsb(sigma, b):.2g} LSB" for b, v in grid[sigma].items()]
    size = (1.2 * len(grid.columns) + 2.6, 0.7 * len(grid) + 1.8)
    fig, ax = _figure(f"Shmoo: {df.attrs['accuracy_name']} (%)", df, size)
    sns.heatmap(100 * grid, annot=labels, fmt="", cmap="RdYlGn", vmin=0, vmax=100, ax=ax,
                cbar_kws={"label": "accuracy (%)"}, annot_kws={"fontsize": "small"})  # fmt: skip
    ax.invert_yaxis()
    ax.set(xlabel=f"{grid.attrs['noise']} (% of ADC full scale)", ylabel="ADC resolution (bits)")
    ax.set_xticklabels([f"{s:g}" for s in grid.columns])
    return _save(fig, ax, path)


def _plot_sensitivity(row: pd.Series, path: Path) -> Path:
    """Per ACiM layer: top-1 with only it on the macro and with every layer but it."""
    import seaborn as sns

    sens = pd.DataFrame(row["sensitivity"]).melt("layer", var_name="pass", value_name="top1")
    sens["pass"] = sens["pass"].map({"alone_top1": "only this layer on the macro",
                                     "without_top1": "every layer but this one"})  # fmt: skip
    title = "Per-layer sensitivity" + (f", {row['design']}" if row.get("design") else "")
    size = (6.4, 1.3 + 0.4 * len(row["sensitivity"]))
    fig, ax = _figure(title, pd.DataFrame([row]), size)
    sns.pointplot(data=sens.assign(top1=100 * sens["top1"]), x="top1", y="layer", hue="pass",
                  linestyles="none", ax=ax)  # fmt: skip
    lines = [(row.get("accuracy"), "every layer on the macro", ":"),
             (row.get("inference_top1"), "no layer (inference)", "--")]  # fmt: skip
    for value, label, style in lines:
        if value is not None and not pd.isna(value):
            ax.axvline(100 * value, color="0.3", ls=style, label=label)
    ax.set(xlabel="simulated top-1 accuracy (%)", ylabel="ACiM layer")
    return _save(fig, ax, path)


def _run_label(df: pd.DataFrame, row: pd.Series) -> str:
    """A run in a legend: its design and condition (without the chip keys), else its job."""
    keys = [k for k in (*df.attrs["designs"], *df.attrs["conditions"]) if k not in CONDITION_KEYS]
    return _label(df, row, keys) or row["job"]


def _plot_chips(df: pd.DataFrame, path: Path) -> Path:
    """The chips' accuracy distribution: the empirical CDF of each run's chip top-1 (one
    curve per design and condition), with the yield threshold of each run dotted."""
    import seaborn as sns

    chips = pd.DataFrame(
        [{"run": _run_label(df, r), "top1": 100 * t} for _, r in df.iterrows()
         for t in r["chip_top1"]]
    )  # fmt: skip
    n = df["chip_top1"].map(len)
    count = f"{n.iloc[0]} chips" if n.nunique() == 1 else "chips"
    fig, ax = _figure(f"Chip population: top-1 of {count} per run (CDF)", df)
    several = chips["run"].nunique() > 1
    sns.ecdfplot(data=chips, x="top1", hue="run" if several else None, ax=ax)
    for value in df["yield_threshold"].dropna().unique():
        ax.axvline(100 * value, color="0.4", ls=":", lw=1)
    ax.set(xlabel="simulated top-1 of a chip (%), dotted: yield threshold",
           ylabel="fraction of chips at or below")  # fmt: skip
    if several:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), title="run",
                        fontsize="small")  # fmt: skip
    return _save(fig, ax, path)


def _plot_yield(df: pd.DataFrame, key: str, path: Path) -> Path:
    """Yield (fraction of chips at or above the threshold) against one design key, a line
    per condition and other design."""
    import seaborn as sns

    others = [k for k in (*df.attrs["designs"], *df.attrs["conditions"]) if k != key]
    order = sorted(df[key].unique(), key=_order)
    numeric = all(isinstance(_typed(v), (int, float)) for v in order)
    data = df.assign(x=df[key].map(_typed if numeric else order.index),
                     y=100 * df["yield_top1"],
                     line=[_label(df, r, others) for _, r in df.iterrows()])  # fmt: skip
    fig, ax = _figure(f"Yield vs {key.rsplit('.', 1)[-1]}", df)
    sns.lineplot(data=data, x="x", y="y", hue="line" if data["line"].nunique() > 1 else None,
                 marker="o", errorbar=None, ax=ax)  # fmt: skip
    if not numeric:
        ax.set_xticks(range(len(order)), [df.attrs["names"][key][v] for v in order])
    elif len(order) <= 12:
        ax.set_xticks(sorted(data["x"].unique()))
    ax.set(xlabel=KEY_LABELS.get(key, key), ylabel="chips at or above the threshold (%)",
           ylim=(-3, 103))  # fmt: skip
    return _save(fig, ax, path)


def _plot_calibration(df: pd.DataFrame, out: Path) -> list[Path]:
    """Calibrated ADCs: ``calibration_clip.png``, per layer the clip rate of each run, and
    ``calibration_codes.png``, the ADC code histogram on the calibration data (share of
    conversions per code) per layer, a panel per run."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    layers = pd.DataFrame(
        [{"run": _run_label(df, r) or r["calibration.method"], **c}
         for _, r in df.iterrows() for c in r["calibration.layers"]]
    )  # fmt: skip
    codes = pd.DataFrame(
        [{"run": c.run, "layer": c.layer, "code": k, "share": n / max(sum(c.code_histogram), 1)}
         for c in layers.itertuples() for k, n in enumerate(c.code_histogram)]
    )  # fmt: skip
    runs = layers["run"].nunique()
    size = (6.4, 1.4 + 0.25 * len(layers))
    fig, ax = _figure("Calibrated ADCs: clip rate at the calibrated full scale", df, size)
    sns.barplot(data=layers.assign(clip=100 * layers["clip_rate"]), x="clip", y="layer",
                hue="run" if runs > 1 else None, ax=ax)  # fmt: skip
    if runs == 1:  # the calibrated full scale beside each layer
        ax.set_yticks(range(len(layers)), [f"{c.layer}\nFS {c.full_scale}/{c.nrow}"
                                           for c in layers.itertuples()])  # fmt: skip
    ax.set(xlabel="clipped conversions (% of calibration counts)", ylabel="ACiM layer")
    clip = _save(fig, ax, out / "calibration_clip.png", legend="run")
    grid = sns.relplot(data=codes, x="code", y="share", hue="layer", col="run",
                       col_wrap=min(runs, 4), kind="line", drawstyle="steps-mid",
                       height=2.6, aspect=1.2, facet_kws={"sharex": False})  # fmt: skip
    grid.set(yscale="log").set_titles("{col_name}", size="small")
    grid.set_axis_labels("ADC output code", "share of conversions")
    title = "Calibrated ADCs: output code histogram on the calibration data"
    grid.figure.suptitle(title + (f", {_summary(df)}" if _summary(df) else ""), y=1.02)
    grid.savefig(out / "calibration_codes.png", dpi=110, bbox_inches="tight")
    plt.close(grid.figure)
    return [clip, out / "calibration_codes.png"]
