"""The design-study report: every run of one or more sweeps in one pandas table, and its views.

``write_report(dirs)`` loads the ``results*.json`` of every run under ``dirs`` (incomplete runs
are skipped with a note) into one DataFrame (:func:`pandas.json_normalize` of the records, one
row per run, plus the swept keys as written); ``sweep.csv`` (swept keys, ``condition``,
:data:`METRICS`, the :data:`OPTIONAL` metrics some run has, ``pareto``, ``job``), ``report.md``
(the runs in %, mean ± std over seeds, each condition's Pareto set, a shmoo grid) and the seaborn
plots are views of it. Keys are *design choices* or *conditions* a design must survive
(:func:`is_condition`): fronts form only within a condition; seeds are repeats, averaged.
Perplexity is lower-is-better (:func:`sense`). :func:`objectives` is what ``simulate.py``
returns to Hydra's sweepers.
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
SHMOO_NOISE = ("_sigma", "_sigma_lsb")  # a swept noise key ending so is a shmoo grid's x axis
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
    values = []
    for name in [names] if isinstance(names, str) else names:
        if (value := metric(results, name)) is None:
            hint = f"; choose from {', '.join(METRICS + OPTIONAL)}" if name not in COST else (
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
        paths = sorted((int(m[1] or 0), p) for p in folder.glob("results*.json")
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
            if isinstance(res, dict) and res.get("complete") is not False:
                out.jobs.append({"location": path if number else folder, "overrides": overrides,
                                 "results": res})  # fmt: skip
            else:
                why = "incomplete (still running or interrupted)" if isinstance(res, dict) else ""
                out.skipped.append((path, why or "not a JSON object"))
    return out


def _read_overrides(path: Path) -> dict[str, str]:
    """key -> value as written of the overrides Hydra recorded (parsed by Hydra's own parser;
    deletions dropped, ``+`` prefixes stripped)."""
    if not path.is_file():
        return {}
    lines = list(map(str, OmegaConf.to_container(OmegaConf.load(path)) or []))
    return {o.get_key_element().lstrip("+"): o.get_value_element_as_str()
            for o in OverridesParser.create().parse_overrides(lines) if not o.is_delete()}  # fmt: skip


def _written(job: dict[str, Any], key: str) -> str:
    """A key's value as written: the override, else the run's config (a group: its name)."""
    if key in job["overrides"]:
        return job["overrides"][key]
    node: Any = job["results"].get("config")
    for part in key.split("."):
        node = node.get(part, "") if isinstance(node, Mapping) else ""
    node = node.get("name", "") if isinstance(node, Mapping) else node
    return json.dumps(node) if node is None or isinstance(node, bool) else str(node)


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
    written = pd.DataFrame({k: [_written(j, k) for j in jobs] for k in keys}, range(len(jobs)))
    swept = [k for k in keys if len(jobs) == 1 or written[k].nunique() > 1]
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
    df.attrs.update(conditions=conditions, designs=designs, swept=swept, score=ppl or acc,
                    accuracy_name="validation top-1" if acc != ACCURACY else "simulated top-1",
                    names={k: _names(k, df[k]) for k in swept})  # fmt: skip
    df = df.assign(accuracy=df[acc], accuracy_std=df.get(f"{acc}_std", np.nan),
                   score=df[ppl or acc], condition=_label(df, conditions).replace("", "all"),
                   design=_label(df, designs))  # fmt: skip
    df = df.sort_values([*swept, "job"], key=lambda s: s.map(_order)).reset_index(drop=True)
    means = df.dropna(subset=["score", ENERGY]).groupby(["condition", "design"], sort=False)
    front: set[tuple[str, str]] = set()
    for _, group in means[["score", ENERGY]].mean().groupby(level="condition", sort=False):
        front |= set(group.index[pareto_mask(group.to_numpy(), [sense(df.attrs["score"]), "min"])])
    df["pareto"] = [key in front for key in zip(df["condition"], df["design"], strict=True)]
    return df


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
        raise ValueError(f"no complete {RESULTS_FILE} under {', '.join(map(str, dirs))}{notes}; "
                         "run a sweep first (python simulate.py -m KEY=A,B)")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    df = load(collection, out)
    optional = [c for c in OPTIONAL if df[c].notna().any()]
    df[[*df.attrs["swept"], "condition", *METRICS, *optional, "pareto", "job"]].to_csv(
        out / CSV_FILE, index=False
    )
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


def _pct(mean: pd.Series, std: pd.Series | None = None) -> pd.Series:
    """Fractions in % with two decimals, '± std' where a std > 0; '' where there is none."""
    text = (100 * mean).map("{:.2f}".format)
    if std is not None:
        text += np.where(std > 0, " ± " + (100 * std).map("{:.2f}".format), "")
    return text.mask(mean.isna(), "")


def _ppl(df: pd.DataFrame) -> bool:
    return df.attrs["score"].endswith("_ppl")


def _summary(df: pd.DataFrame) -> str:
    """'MODEL on DATASET (N samples)' when every run shares them."""
    cols = ["summary.model", "summary.dataset", "num_samples"]
    if not all(c in df and df[c].nunique(dropna=False) == 1 for c in cols):
        return ""
    model, dataset, n = df[cols].iloc[0]
    return f"{model} on {dataset} ({n} samples)"


def _chips(df: pd.DataFrame) -> pd.Series:
    """Whether each run simulated a population of chips (``simulate.chips`` > 1)."""
    chips = df.get("chip_top1", pd.Series(None, df.index, dtype=object))
    return chips.map(lambda c: isinstance(c, list) and len(c) > 1).astype(bool)


def _view(df: pd.DataFrame) -> pd.DataFrame:
    """The runs as people read them: % accuracies, energy and latency in a common unit."""
    view = pd.DataFrame({k: df[k].map(df.attrs["names"][k]) for k in df.attrs["swept"]})
    view[f"{df.attrs['accuracy_name'][:3]} top-1"] = _pct(df["accuracy"], df["accuracy_std"])
    view["float top-1"], view["inference top-1"] = _pct(df.float_top1), _pct(df.inference_top1)
    if df["measured_top1"].notna().any():  # silicon correlation
        view["measured top-1"] = _pct(df["measured_top1"])
        view["sim - measured (pp)"] = (100 * df["sim_minus_measured"]).map("{:+.2f}".format)
    if _chips(df).any():  # a chip population
        view["worst chip top-1"], view["yield (%)"] = _pct(df.worst_chip_top1), _pct(df.yield_top1)
    for name in [n for n in ("sim_ppl", "inference_ppl", "val_ppl") if df[n].notna().any()]:
        view[name.replace("_", " ")] = df[name].map("{:.3f}".format)
    if df[ENERGY].notna().any():
        for name in (ENERGY, "latency_ns"):
            div, shown = _unit(df[name], name)
            view[f"{name.split('_')[0]}/sample ({shown})"] = (df[name] / div).map("{:.4g}".format)
        view["area (mm²)"] = df["area_mm2"].map("{:.3g}".format)
        view["TOPS/W"] = df["tops_per_w"].map("{:.3g}".format)
        view["Pareto"] = df["pareto"].map({True: "yes", False: ""})
    view["seconds"] = df["seconds"].map("{:.1f}".format)
    return view.assign(job="`" + df["job"] + "`").replace(["nan", "+nan", "None"], "")


def _fronts(df: pd.DataFrame) -> list[str]:
    """Per condition: its Pareto-optimal designs by energy (mean over seeds, run count)."""
    div, shown = _unit(df[ENERGY], ENERGY)
    blocks = []
    for condition, group in df[df["pareto"]].groupby("condition", sort=False):
        blocks += [f"Condition {condition}:"] if df.attrs["conditions"] else []
        designs = group.groupby("design", sort=False).agg(
            score=("score", "mean"), energy=(ENERGY, "mean"), runs=("job", "size"),
            job=("job", "first")).sort_values(["energy", "score"])  # fmt: skip
        blocks.append("\n".join(
            f"{i}. {d or 'run'}: " + (f"perplexity {r.score:.3f}" if _ppl(df) else
            f"{100 * r.score:.2f} %") + f" at {r.energy / div:.4g} {shown} (`{r.job}`"
            + (f", {r.runs} runs)" if r.runs > 1 else ")")
            for i, (d, r) in enumerate(designs.iterrows(), 1)))  # fmt: skip
    return blocks


def shmoo(df: pd.DataFrame) -> pd.DataFrame | None:
    """Accuracy by ADC bits (rows) x noise sigma (columns; in % of full scale, or in LSB for a
    ``*_sigma_lsb`` key): the mean over seeds, the best over any other design key; None
    unless both were swept."""
    noise = next((k for k in df.attrs["conditions"] if k.endswith(SHMOO_NOISE)), None)
    if "macro.adc_bits" not in df.attrs["designs"] or noise is None:
        return None
    grid = df.assign(bits=df["macro.adc_bits"].astype(int), sigma=df[noise].astype(float))
    means = grid.pivot_table("accuracy", ["bits", "sigma"], "design", aggfunc="mean")
    table = means.max(axis=1).unstack("sigma").sort_index()
    table.attrs["noise"] = noise
    return table


def _cells(grid: pd.DataFrame, fmt: str) -> pd.DataFrame:
    """Each shmoo cell: ``fmt`` of its accuracy in % and its sigma in the other unit, LSB rms
    of that ADC (``% FS x (2^B - 1) / 100``) or % of full scale."""
    steps = 2.0 ** grid.index.to_numpy()[:, None] - 1
    lsb = grid.attrs["noise"].endswith("_lsb")
    other = 100 * grid.columns.to_numpy() / steps if lsb else grid.columns.to_numpy() * steps / 100
    cells = np.vectorize(lambda v, o: fmt.format(100 * v, o, "% FS" if lsb else "LSB"))
    return pd.DataFrame(cells(grid.to_numpy(), other), grid.index, grid.columns)


def _markdown(df: pd.DataFrame, dirs, plots: list[Path], skipped) -> str:
    conditions, designs, swept = df.attrs["conditions"], df.attrs["designs"], df.attrs["swept"]
    repeats, names = set(REPEAT_KEYS) & set(swept), lambda keys: ", ".join(f"`{k}`" for k in keys)
    intro = f"{len(df)} runs from {names(dirs)}" + (f": {_summary(df)}." if _summary(df) else ".")
    intro += f" Design choices: {names(designs)}." if designs else ""
    intro += f" Conditions (fronts are drawn within each): {names(conditions)}." if conditions else ""  # noqa: E501  # fmt: skip
    intro += " Seeds are repeats: averaged." if repeats else ""
    blocks = ["# Sweep report", intro]
    if df.get("summary.hybrid_quantized", pd.Series(dtype=object)).fillna(False).astype(bool).any():
        blocks.append("Hybrid cycles pass the ADC in some runs (quirk Q4, `macro.hybrid_exact="
                      "false`): noise-free but still quantized, and charged a conversion; "
                      "`macro.hybrid_exact=true` makes them exact.")  # fmt: skip
    blocks += [f"Accuracies in %; `{CSV_FILE}` has the same in fractions and pJ/ns.",
               _view(df).to_markdown(index=False, disable_numparse=True)]  # fmt: skip
    if repeats:
        stats = df.groupby(["condition", "design"], sort=False)["accuracy"].agg(["mean", "std", "size"])  # noqa: E501  # fmt: skip
        stats = stats.reset_index().assign(**{"top-1 (%)": _pct(stats["mean"].reset_index(drop=True), stats["std"].fillna(0).reset_index(drop=True))})  # noqa: E501  # fmt: skip
        blocks += ["## Mean ± std over seeds", stats.rename(columns={"size": "seeds"})[
            ["condition", "design", "top-1 (%)", "seeds"]].to_markdown(index=False, disable_numparse=True)]  # noqa: E501  # fmt: skip
    if df[ENERGY].notna().any():
        best = "lowest perplexity" if _ppl(df) else "highest accuracy"
        blocks += [f"## Pareto fronts ({best} for its energy, within a condition)", *_fronts(df)]
    else:
        blocks.append("No energy in these results (the cost model's `cost.energy_pj`): no fronts.")
    if (grid := shmoo(df)) is not None:
        lsb = grid.attrs["noise"].endswith("_lsb")
        shown = _cells(grid, "{:.1f} ({:.2g} {})").rename_axis("ADC bits")
        shown.columns = [f"σ {s:g} {'LSB' if lsb else '% FS'}" for s in grid.columns]
        blocks += [f"## Shmoo grid: {df.attrs['accuracy_name']} (%), ADC bits x `{grid.attrs['noise']}`",  # noqa: E501  # fmt: skip
                   shown.to_markdown(disable_numparse=True),
                   "(in brackets: the same sigma in % of ADC full scale, LSB x 100 / (2^B - 1))" if lsb else  # noqa: E501  # fmt: skip
                   "(in brackets: the same sigma in LSB rms of that ADC, % FS x (2^B - 1) / 100)"]
    blocks += [f"![{p.stem}]({p.name})" for p in plots]
    if skipped:
        blocks.append("\n".join([f"Skipped {len(skipped)} folders:", *(f"- `{f}`: {why}" for f, why in skipped)]))  # noqa: E501  # fmt: skip
    return "\n\n".join(blocks) + "\n"


# --------------------------------------------------------------------------- plots
def _plots(df: pd.DataFrame, out: Path) -> list[Path]:
    """accuracy_vs_<key>.png per swept key, accuracy_vs_energy.png, shmoo.png, the chips' CDF
    and yield, the calibration's clip rates and codes, the per-layer sensitivity."""
    df = df.dropna(subset=["score"])
    if df.empty:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    if _ppl(df):
        y, label = df["score"], f"{df.attrs['score'].replace('_', ' ')} (lower is better)"
    else:
        y, label = 100 * df["accuracy"], f"{df.attrs['accuracy_name']} (%)"
    ref = df["inference_top1"].dropna().unique()
    ref = ref[0] if len(ref) == 1 and not _ppl(df) else None  # quantized inference, dashed
    keys = [k for k in df.attrs["designs"] + df.attrs["conditions"] if df[k].nunique() > 1]
    plots = [_plot_vs(df, k, y, label, f"{label.split(' (')[0]} vs", ref, out / f"accuracy_vs_{k}.png") for k in keys]  # noqa: E501  # fmt: skip
    if df[ENERGY].notna().any():
        plots.append(_plot_fronts(df.dropna(subset=[ENERGY]), y, label, ref, out))
    if (grid := shmoo(df)) is not None:
        ax = _axes((1.2 * len(grid.columns) + 2.6, 0.7 * len(grid) + 1.8))
        sns.heatmap(100 * grid, annot=_cells(grid, "{:.1f}\n{:.2g} {}"), fmt="", cmap="RdYlGn",
                    vmin=0, vmax=100, ax=ax, cbar_kws={"label": "accuracy (%)"},
                    annot_kws={"fontsize": "small"})  # fmt: skip
        unit_name = "LSB of the layer's ADC" if grid.attrs["noise"].endswith("_lsb") else "% of ADC full scale"  # noqa: E501  # fmt: skip
        ax.invert_yaxis()
        ax.set(xlabel=f"{grid.attrs['noise']} ({unit_name})", ylabel="ADC resolution (bits)")
        ax.set_xticklabels([f"{s:g}" for s in grid.columns])
        plots.append(_save(ax, out / "shmoo.png", f"Shmoo: {df.attrs['accuracy_name']} (%)", df))
    if _chips(df).any():
        chips = df[_chips(df)]
        plots.append(_plot_chips(chips, out / "chips_cdf.png"))
        plots += [_plot_vs(chips, k, 100 * chips["yield_top1"], "chips at or above the threshold (%)", "Yield vs", None, out / f"yield_vs_{k}.png", ylim=(-3, 103)) for k in df.attrs["designs"] if chips[k].nunique() > 1]  # noqa: E501  # fmt: skip
    calibrated = df.get("calibration.layers", pd.Series(None, df.index, dtype=object))
    if (calibrated := calibrated.map(lambda c: isinstance(c, list) and bool(c))).any():
        plots += _plot_calibration(df[calibrated.astype(bool)], out)
    sens = df.get("sensitivity", pd.Series(None, df.index, dtype=object))
    sens = df[sens.map(lambda s: isinstance(s, list) and bool(s)).astype(bool)]
    for _, row in sens.iterrows():
        name = "sensitivity_" + re.sub(r"[^\w.=,-]+", "_", row["job"]) if len(sens) > 1 else "sensitivity"  # noqa: E501  # fmt: skip
        plots.append(_plot_sensitivity(row, out / f"{name}.png"))
    return plots


def _axes(size: tuple[float, float] = (6.6, 4.4)):
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)[1]


def _save(ax, path: Path, title: str, df: pd.DataFrame, ref=None, legend=None) -> Path:
    """Title (with the model and data every run shares), the quantized-inference line
    ``ref``, the legend outside on the right; saved and closed."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if ref is not None:
        ax.axhline(100 * ref, color="0.4", ls="--", lw=1, label="quantized inference")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title=legend, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    elif ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    ax.set_title(title + (f"\n{_summary(df)}" if _summary(df) else ""))
    ax.figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(ax.figure)
    return path


def _plot_vs(df, key, y, label, title, ref, path: Path, **axes) -> Path:
    """``y`` against one key: a line per condition and other design (mean ± sd over seeds);
    with more than MAX_LINES, every run a dot and the best design per x a line."""
    import seaborn as sns

    order = sorted(df[key].unique(), key=_order)
    numeric = pd.to_numeric(pd.Series(order), errors="coerce").notna().all()
    data = df.assign(x=df[key].map(float if numeric else order.index), y=y,
                     line=_label(df, [k for k in (*df.attrs["designs"], *df.attrs["conditions"]) if k != key]))  # noqa: E501  # fmt: skip
    ax = _axes()
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
    ax.set(xlabel=KEY_LABELS.get(key, key), ylabel=label, **axes)
    return _save(ax, path, f"{title} {key.rsplit('.', 1)[-1]}", df, ref)


def _plot_fronts(df: pd.DataFrame, y: pd.Series, label: str, ref, out: Path) -> Path:
    """The score against energy: every design (mean over seeds), one colour and one front per
    condition, the Pareto-optimal designs starred and named."""
    import seaborn as sns

    div, shown = _unit(df[ENERGY], ENERGY)
    points = df.assign(y=y, energy=df[ENERGY] / div).groupby(["condition", "design"], sort=False)
    points = points.agg(y=("y", "mean"), energy=("energy", "mean"), pareto=("pareto", "any"))
    points, several = points.reset_index(), df["condition"].nunique() > 1
    hue = {"hue": "condition", "hue_order": list(points["condition"].unique())} if several else {}
    ax = _axes((7.2, 4.8))
    sns.scatterplot(data=points[~points["pareto"]], x="energy", y="y", alpha=0.5, ax=ax,
                    legend=False, **(hue or {"color": "0.55"}))  # fmt: skip
    front = points[points["pareto"]].sort_values("energy")
    sns.lineplot(data=front, x="energy", y="y", marker="*", markersize=14, ax=ax,
                 drawstyle="steps-post", **(hue or {"color": "tab:red", "label": "Pareto-optimal"}))  # noqa: E501  # fmt: skip
    for row in front.itertuples() if len(front) <= 12 else ():
        ax.annotate(row.design, (row.energy, row.y), textcoords="offset points",
                    xytext=(6, -10), fontsize="x-small")  # fmt: skip
    if points["energy"].max() / max(points["energy"].min(), 1e-30) > 20:
        ax.set_xscale("log")
    ax.set(xlabel=f"energy per sample ({shown})", ylabel=label)
    title = f"{label.split(' (')[0]} vs energy per sample" + (", a front per condition" if several else "")  # noqa: E501  # fmt: skip
    return _save(ax, out / "accuracy_vs_energy.png", title, df, ref, "condition" if several else None)  # noqa: E501  # fmt: skip


def _run_label(df: pd.DataFrame) -> pd.Series:
    """A run in a legend: its design and condition (without the chip keys), else its job."""
    keys = [k for k in (*df.attrs["designs"], *df.attrs["conditions"]) if k not in CONDITION_KEYS]
    return _label(df, keys).replace("", np.nan).fillna(df["job"])


def _plot_chips(df: pd.DataFrame, path: Path) -> Path:
    """The chips' accuracy distribution: the empirical CDF of each run's chip top-1 (one
    curve per design and condition), with the yield threshold of each run dotted."""
    import seaborn as sns

    chips = df.assign(run=_run_label(df)).explode("chip_top1")
    chips["top1"], n = 100 * chips["chip_top1"].astype(float), df["chip_top1"].map(len)
    ax = _axes()
    sns.ecdfplot(data=chips, x="top1", hue="run" if chips["run"].nunique() > 1 else None, ax=ax)
    for value in df["yield_threshold"].dropna().unique():
        ax.axvline(100 * value, color="0.4", ls=":", lw=1)
    ax.set(xlabel="simulated top-1 of a chip (%), dotted: yield threshold",
           ylabel="fraction of chips at or below")  # fmt: skip
    count = f"{n.iloc[0]} chips" if n.nunique() == 1 else "chips"
    return _save(ax, path, f"Chip population: top-1 of {count} per run (CDF)", df)


def _plot_sensitivity(row: pd.Series, path: Path) -> Path:
    """Per ACiM layer: top-1 with only it on the macro and with every layer but it."""
    import seaborn as sns

    sens = pd.DataFrame(row["sensitivity"]).melt("layer", var_name="pass", value_name="top1")
    sens["pass"] = sens["pass"].map({"alone_top1": "only this layer on the macro",
                                     "without_top1": "every layer but this one"})  # fmt: skip
    ax = _axes((6.4, 1.3 + 0.4 * len(row["sensitivity"])))
    sns.pointplot(data=sens.assign(top1=100 * sens["top1"]), x="top1", y="layer", hue="pass",
                  linestyles="none", ax=ax)  # fmt: skip
    for value, label, style in ((row["accuracy"], "every layer on the macro", ":"),
                                (row["inference_top1"], "no layer (inference)", "--")):  # fmt: skip
        if pd.notna(value):
            ax.axvline(100 * value, color="0.3", ls=style, label=label)
    ax.set(xlabel="simulated top-1 accuracy (%)", ylabel="ACiM layer")
    title = "Per-layer sensitivity" + (f", {row['design']}" if row["design"] else "")
    return _save(ax, path, title, pd.DataFrame([row]))


def _plot_calibration(df: pd.DataFrame, out: Path) -> list[Path]:
    """Calibrated ADCs: ``calibration_clip.png``, per layer the clip rate of each run, and
    ``calibration_codes.png``, the ADC code histogram on the calibration data (share of
    conversions per code) per layer, a panel per run."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    layers = pd.DataFrame([{"run": run, **c} for run, cal in zip(_run_label(df), df["calibration.layers"], strict=True) for c in cal])  # noqa: E501  # fmt: skip
    codes = layers.assign(share=layers["code_histogram"].map(lambda h: np.array(h) / max(sum(h), 1)),  # noqa: E501  # fmt: skip
                          code=layers["code_histogram"].map(lambda h: np.arange(len(h)))).explode(["code", "share"])  # noqa: E501  # fmt: skip
    runs = layers["run"].nunique()
    ax = _axes((6.4, 1.4 + 0.25 * len(layers)))
    sns.barplot(data=layers.assign(clip=100 * layers["clip_rate"]), x="clip", y="layer",
                hue="run" if runs > 1 else None, ax=ax)  # fmt: skip
    if runs == 1:  # the calibrated full scale beside each layer
        ax.set_yticks(range(len(layers)), [f"{c.layer}\nFS {c.full_scale}/{c.nrow}" for c in layers.itertuples()])  # noqa: E501  # fmt: skip
    ax.set(xlabel="clipped conversions (% of calibration counts)", ylabel="ACiM layer")
    clip = _save(ax, out / "calibration_clip.png", "Calibrated ADCs: clip rate at the calibrated full scale", df, legend="run")  # noqa: E501  # fmt: skip
    grid = sns.relplot(data=codes.astype({"code": int, "share": float}), x="code", y="share",
                       hue="layer", col="run", col_wrap=min(runs, 4), kind="line",
                       drawstyle="steps-mid", height=2.6, aspect=1.2, facet_kws={"sharex": False})  # noqa: E501  # fmt: skip
    grid.set(yscale="log").set_titles("{col_name}", size="small")
    grid.set_axis_labels("ADC output code", "share of conversions")
    title = "Calibrated ADCs: output code histogram on the calibration data"
    grid.figure.suptitle(title + (f", {_summary(df)}" if _summary(df) else ""), y=1.02)
    grid.savefig(out / "calibration_codes.png", dpi=110, bbox_inches="tight")
    plt.close(grid.figure)
    return [clip, out / "calibration_codes.png"]
