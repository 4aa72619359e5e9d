"""ADC range calibration from data (issue 16, item 2; ``docs/calibration.md``).

Most column counts are small, so an ADC whose full scale is ``nrow`` (spec §4.1 step 2)
spends its top codes on counts that never occur. :func:`calibrate_adc` runs a model over
calibration batches, observes every ACiM layer's column counts (the exact, pre-noise ``M``
of every (tile, weight bit, activation cycle) conversion), and chooses per layer the ADC's
full scale (``MacroConfig.adc_full_scale``, a column count) by one of

* ``max``: the largest observed count (no clipping on the calibration data);
* ``percentile``: the ``percentile``-th percentile of the observed counts (default 99.99);
* ``mse``: the integer full scale in ``1 .. max(nrow, max count)`` minimising the ADC's
  mean-squared error on the counts, clipping included;
* ``lloyd_max``: non-uniform levels (``MacroConfig.adc_thresholds`` / ``adc_values``):
  Lloyd-Max (1-D k-means) with ``2^adc_bits`` levels, thresholds at the midpoints,
  started from the ``mse`` uniform ADC (so it never does worse on the data).

Counts of a bit-parallel cycle (full scale ``levels * nrow``, spec §5) are normalised by the
cycle's ``levels``, so one full scale in column counts serves every cycle, as the engine's
``levels_c * adc_full_scale`` does. Only a histogram of the counts is kept per layer.

With ``granularity="column"`` the counts of every ADC (tile ``t``, ADC ``j = (o * weight_bits
+ i) // adc_group``, spec §4.7, ``adc_group`` from the layer's noise, default 1) are kept
apart and each ADC gets its own full scale by the same method (spec §4.8); the layer's
``adc_full_scale`` becomes the largest of them and the layer keeps the rest as
:class:`~asim.engine.pattern.ColumnRanges` (``layer.adc_ranges``). It applies to the weight
matmul of conv and linear layers; attention's products of two activations (``NAME.qk``,
``NAME.av``) and multi-head attention layers keep one range per layer. ``lloyd_max`` fits
one level table per layer and is refused per column.

The result is a :class:`Calibration`: per layer the method, full scale, clip rate, mean-
squared error and the calibrated ADC's code histogram on the observed counts; it saves to
and loads from JSON (the macro it was made for and a format version inside) and applies to
a model. Torch only.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import MacroConfig
from .convert import acim_modules
from .engine.pattern import ColumnRanges
from .engine.plan import EXACT, activation_cycles, build_plan, linear_tiles
from .layers import ACiMConv2d, ACiMLinear
from .layers.conv import conv_tiles
from .quant import quantize, tensor_scale

__all__ = [
    "CALIBRATION_FORMAT",
    "CALIBRATION_VERSION",
    "GRANULARITIES",
    "METHODS",
    "Calibration",
    "CountHistogram",
    "LayerCalibration",
    "calibrate_adc",
    "observe_counts",
]

METHODS = ("max", "percentile", "mse", "lloyd_max")
"""The calibration methods of :func:`calibrate_adc`."""

GRANULARITIES = ("layer", "column")
"""One full scale per layer, or one per ADC (column group, spec §4.8)."""

CALIBRATION_FORMAT = "asim-adc-calibration"
CALIBRATION_VERSION = 2
"""Version 2 adds each layer's per-ADC full scales (``column_full_scale``, ``adc_group``);
version 1 files (per layer only) still load."""
_READABLE_VERSIONS = (1, 2)

_CALIBRATED_FIELDS = ("adc_full_scale", "adc_thresholds", "adc_values", "adc_levels_csv")
_PARTS = ("macro", "qk_macro", "av_macro")  # the attributes of a layer that hold a macro
_SUFFIX = {"macro": "", "qk_macro": ".qk", "av_macro": ".av"}  # as results' layer_macros


# ----------------------------------------------------------------------------- observing


@dataclass
class CountHistogram:
    """Observed column counts of one macro of a layer, per cycle kind.

    Attributes:
        nrow: the macro's rows per tile.
        adc_bits: the macro's ADC resolution.
        counts: ``{levels: n}``; ``n[M]`` is how many conversions of a cycle with
            ``levels = 2^width - 1`` (1 bit-serial) saw count ``M`` (``0 .. levels*nrow``).
        group: with per-ADC counts, the columns per ADC (else None).
        columns: per-ADC counts ``{levels: n}``, ``n[t, j, M]`` for tile ``t`` and ADC ``j``
            (only with ``group``).
    """

    nrow: int
    adc_bits: int
    counts: dict[int, Tensor] = field(default_factory=dict)
    group: int | None = None
    columns: dict[int, Tensor] = field(default_factory=dict)

    def add_columns(
        self, levels: int, tile: int, shape: tuple[int, int], m: Tensor, adc: Tensor
    ) -> None:
        """Add counts ``m [..., n, O]`` of tile ``tile`` whose columns belong to ADCs
        ``adc [n, O]``; ``shape``: (tiles, ADCs)."""
        bins = levels * self.nrow + 1
        tiles, n_adc = shape
        have = self.columns.get(levels)
        if have is None:
            have = self.columns[levels] = torch.zeros(tiles, n_adc, bins, dtype=torch.int64)
        at = adc.to(m.device) * bins + m.long()
        have[tile] += torch.bincount(at.reshape(-1), minlength=n_adc * bins).cpu().view(n_adc, -1)

    def add(self, levels: int, m: Tensor) -> None:
        n = torch.bincount(m.reshape(-1).to(torch.int32), minlength=levels * self.nrow + 1).cpu()
        have = self.counts.get(levels)
        self.counts[levels] = n if have is None else have + n

    @property
    def total(self) -> int:
        return int(sum(int(n.sum()) for n in self.counts.values()))

    def points(self) -> tuple[Tensor, Tensor]:
        """``(v, w)``: the observed normalised counts ``M / levels`` (float64, ascending)
        and how often each was seen."""
        vs, ws = [], []
        for levels, n in self.counts.items():
            seen = n > 0
            vs.append(torch.arange(n.numel(), dtype=torch.float64)[seen] / levels)
            ws.append(n[seen].double())
        if not vs:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
        v, w = torch.cat(vs), torch.cat(ws)
        order = torch.argsort(v, stable=True)
        return v[order], w[order]


def _bits(codes: Tensor, bits: int) -> Tensor:
    """Two's-complement pattern of integer codes in ``bits`` bits (int64): bit ``t`` is the
    spec's plane ``t`` (§2; the sign plane is bit ``bits - 1``)."""
    return codes.long() & ((1 << bits) - 1)


def _weight_planes(w_int: Tensor, bits: int, dim: int) -> Tensor:
    """The weight bit planes stacked along ``dim`` (float32 0/1, bit 0 first)."""
    u = _bits(w_int, bits)
    return torch.cat([((u >> i) & 1).float() for i in range(bits)], dim=dim)


class _Observer:
    """Accumulates the count histograms of the layers' calls (see :func:`observe_counts`)."""

    def __init__(self, columns: bool = False):
        self.hists: dict[str, CountHistogram] = {}
        self.columns = columns

    def record(self, name: str, layer, mm) -> None:
        macro = mm.macro or layer.macro
        signed = layer.signed_input if mm.signed is None else mm.signed
        part = _part(layer, mm, signed)
        key = name + _SUFFIX[part]
        group = None
        if self.columns and part == "macro" and mm.layout is not None and _per_column(layer):
            group = layer.noise.adc_group if layer.noise is not None else 1
        hist = self.hists.setdefault(key, CountHistogram(macro.nrow, macro.adc_bits, group=group))
        x_int, _ = layer._quantize_input(mm.x, macro, signed)
        if mm.layout is None:  # a dynamic operand (attention): quantized per call, [..., R, O]
            w_scale = tensor_scale(mm.w, True, layer._per_sample)
            w = quantize(mm.w, macro.weight_bits, w_scale, True)
        else:  # a programmed weight: the layer's cached codes, laid out [R, O]
            w = mm.layout(layer._programmed(mm.w, mm.sub, mm.layout)[0])
        planes = _weight_planes(w, macro.weight_bits, dim=-1)  # [..., R, wb * O]
        R = planes.shape[-2]
        if isinstance(layer, ACiMConv2d) and mm.layout is not None:
            kh, kw = layer.kernel_size
            tiles, _ = conv_tiles(x_int.shape[1], kh * kw, macro.nrow, macro.conv_tiling)
            for rows in _unfolded(layer, x_int, R):  # [b * Ho * Wo, R], channel-major rows
                self._count(hist, macro, signed, rows, planes, tiles)
        else:
            rows = x_int if mm.layout is None else x_int.reshape(-1, R)
            self._count(hist, macro, signed, rows, planes, linear_tiles(R, macro.nrow))

    def record_codes(self, key: str, macro: MacroConfig, signed: bool, x_int, w_int) -> None:
        """The counts of ``x_int [..., M, R] @ w_int [..., R, O]``, both already codes: a
        ``transformers`` attention's QK^T or AV (:class:`asim.llm.ACiMAttention`)."""
        hist = self.hists.setdefault(key, CountHistogram(macro.nrow, macro.adc_bits))
        planes = _weight_planes(w_int, macro.weight_bits, dim=-1)
        self._count(hist, macro, signed, x_int, planes, linear_tiles(w_int.shape[-2], macro.nrow))

    @staticmethod
    def _count(hist, macro: MacroConfig, signed: bool, x_int, planes, tiles) -> None:
        """Add the counts ``M`` of every (tile, weight bit, cycle) conversion of
        ``x_int [..., M, R] @ W [..., R, O]`` (``planes``: W's bit planes side by side), per
        ADC too when ``hist.group`` is set (ADC ``(o * wb + i) // group``, spec §4.7)."""
        plan = build_plan(macro, None, signed)
        xu = _bits(x_int, macro.input_bits)
        wb = macro.weight_bits
        O = planes.shape[-1] // wb
        adc = None
        if hist.group is not None:
            o = torch.arange(O).view(1, -1)
            adc = (o * wb + torch.arange(wb).view(-1, 1)) // hist.group  # [wb, O]
        for c, cyc in enumerate(activation_cycles(macro.input_bits, macro.input_enc_bits, signed)):
            xc = ((xu >> cyc.bits[0]) & cyc.levels).float()  # the cycle's multi-level input
            analog = [i for i in range(wb) if plan.mode[i][c] != EXACT]
            pick = torch.tensor(analog, device=xc.device)
            for t, (s, e) in enumerate(tiles):
                m = (xc[..., s:e] @ planes[..., s:e, :]).unflatten(-1, (wb, -1))  # [.., wb, O]
                if len(analog) < wb:  # hybrid exact cycles never reach the ADC (spec §6)
                    m = m.index_select(-2, pick)
                hist.add(cyc.levels, m)
                if adc is not None:
                    shape = (len(tiles), -(-(O * wb) // hist.group))
                    hist.add_columns(cyc.levels, t, shape, m, adc[analog])


_UNFOLD_BUDGET = 1 << 24  # unfolded input elements per chunk of images


def _unfolded(layer, x_int: Tensor, R: int):
    """A conv's input patches ``[b * Ho * Wo, R]``, a chunk of images at a time."""
    pad = layer._explicit_padding()
    B = x_int.shape[0]
    per_image = None
    b0 = 0
    while b0 < B:
        step = 1 if per_image is None else max(1, _UNFOLD_BUDGET // per_image)
        cols = nn.functional.unfold(
            x_int[b0 : b0 + step], layer.kernel_size, layer.dilation, pad, layer.stride
        )  # [b, R, L]
        per_image = cols.shape[1] * cols.shape[2]
        yield cols.transpose(1, 2).reshape(-1, R)
        b0 += step


def _per_column(layer) -> bool:
    """Does ``granularity="column"`` give this layer per-ADC full scales? (Its weight matmul
    is its one engine call 0, which :attr:`ACiMLayer.adc_ranges` applies to.)"""
    return isinstance(layer, (ACiMConv2d, ACiMLinear))


def _part(layer, mm, signed: bool) -> str:
    """Which of the layer's macros a lowered matmul runs on (attention: QK or AV)."""
    if mm.layout is not None or mm.macro is None:
        return "macro"
    hits = [p for p in ("qk_macro", "av_macro") if getattr(layer, p, None) is mm.macro]
    if len(hits) == 1:
        return hits[0]
    if hits:  # the same macro object: QK has the signed (key) operand, AV the scores
        return "qk_macro" if signed else "av_macro"
    return "macro"


def _inputs(batch):
    if isinstance(batch, (tuple, list)):
        return batch[0]
    if isinstance(batch, dict):
        raise TypeError(
            "calibrate_adc: batches must be input tensors or (x, y) tuples, not dicts; "
            "pass (batch['x'], ...) instead"
        )
    return batch


def observe_counts(
    model: nn.Module, batches: Iterable, max_batches: int | None = None, columns: bool = False
) -> tuple[dict[str, CountHistogram], int]:
    """The column-count histograms of every non-digital ACiM layer of ``model`` over
    ``batches`` (input tensors or ``(x, y)`` tuples), and the number of batches seen; with
    ``columns`` also per ADC (:attr:`CountHistogram.columns`) for conv and linear layers.

    The model runs in eval mode without gradients, its layers as the ideal integer macro
    (mode ``inference``) with the training perturbation off: the counts are exact and
    pre-noise. Layers, modes and the model's training flag are restored afterwards.
    Keys are layer names, attention's QK and AV macros as ``NAME.qk`` / ``NAME.av`` (a
    ``transformers`` attention, :class:`asim.llm.ACiMAttention`, whose QK^T macro is its
    ``macro``: QK^T as ``NAME``, AV as ``NAME.av``).
    """
    layers = [(n, m) for n, m in acim_modules(model) if not m.digital]
    if not layers:
        raise ValueError(
            "calibrate_adc: the model has no (non-digital) ACiM layer; convert "
            "it first with asim.convert_to_acim"
        )
    for name, layer in layers:
        for part in _PARTS:
            macro = getattr(layer, part, None)
            if isinstance(macro, MacroConfig) and macro.weight_parallel:
                raise ValueError(
                    f"calibrate_adc: layer {name!r} uses macro.weight_parallel (its signed ADC "
                    "ranges over weight_parallel_rows, not adc_full_scale); exclude it"
                )
    observer = _Observer(columns)
    saved = [
        (layer, layer.mode, layer.trim_noise, getattr(layer, "attn_trim_noise", None))
        for _, layer in layers
    ]
    training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen = 0
    try:
        model.eval()
        for name, layer in layers:
            layer.mode = "inference"
            layer.trim_noise = 0.0
            if hasattr(layer, "attn_trim_noise"):
                layer.attn_trim_noise = 0.0
            original = layer._run

            def run(mm, name=name, layer=layer, original=original):
                observer.record(name, layer, mm)
                return original(mm)

            layer._run = run
            if hasattr(layer, "_matmul"):  # a transformers attention: QK^T is its macro
                codes = layer._matmul

                def matmul(x_int, w_int, macro, noise, signed, rows, sub, name=name, codes=codes):
                    observer.record_codes(name + ("", ".av")[sub], macro, signed, x_int, w_int)
                    return codes(x_int, w_int, macro, noise, signed, rows, sub)

                layer._matmul = matmul
        with torch.no_grad():
            for batch in batches:
                if max_batches is not None and seen >= max_batches:
                    break
                model(_inputs(batch).to(device))
                seen += 1
    finally:
        for layer, mode, trim, attn_trim in saved:
            layer.__dict__.pop("_run", None)
            layer.__dict__.pop("_matmul", None)
            layer.mode = mode
            layer.trim_noise = trim
            if attn_trim is not None:
                layer.attn_trim_noise = attn_trim
        model.train(training)
    if seen == 0:
        raise ValueError("calibrate_adc: no calibration batch; pass at least one")
    return observer.hists, seen


# ----------------------------------------------------------------------------- fitting


def _uniform(v: Tensor, fs: int, adc_levels: int) -> tuple[Tensor, Tensor]:
    """Codes and outputs (normalised counts) of the uniform ADC of full scale ``fs``."""
    code = torch.round((v / fs).clamp(0, 1) * adc_levels)
    return code.long(), code / adc_levels * fs


def _mse_search(v: Tensor, w: Tensor, top: int, adc_levels: int) -> Tensor:
    """Mean-squared error of the uniform ADC at every full scale ``1 .. top``."""
    fs = torch.arange(1, top + 1, dtype=torch.float64).unsqueeze(1)
    out = torch.round((v / fs).clamp(0, 1) * adc_levels) / adc_levels * fs
    return ((v - out) ** 2 * w).sum(1) / w.sum()


def _lloyd_max(v: Tensor, w: Tensor, fs: int, adc_levels: int, iters: int = 200) -> Tensor:
    """Lloyd-Max levels (ascending, ``adc_levels + 1``) of the weighted points, started from
    the uniform levels of full scale ``fs``: each step assigns points to the nearest level
    and moves levels to their cell's mean, so the error never grows; empty cells keep
    their level (levels stay strictly ascending)."""
    levels = torch.arange(adc_levels + 1, dtype=torch.float64) / adc_levels * fs
    for _ in range(iters):
        thr = (levels[1:] + levels[:-1]) / 2
        cell = torch.searchsorted(thr, v, right=True)
        mass = torch.zeros_like(levels).index_add_(0, cell, w)
        moment = torch.zeros_like(levels).index_add_(0, cell, w * v)
        new = torch.where(mass > 0, moment / mass.clamp(min=1e-300), levels)
        if torch.equal(new, levels):
            break
        levels = new
    return levels


@dataclass
class LayerCalibration:
    """The calibrated ADC of one macro of one layer.

    Attributes:
        method: ``max``, ``percentile``, ``mse`` or ``lloyd_max``.
        full_scale: ``adc_full_scale`` in column counts.
        clip_rate: fraction of the observed counts above ``full_scale``.
        mse: the calibrated ADC's mean-squared error on the observed counts (column counts^2).
        mse_full_scale: the same for the uncalibrated ADC (full scale ``nrow``).
        code_histogram: how often each code ``0 .. 2^adc_bits - 1`` comes out of the
            calibrated ADC on the observed counts.
        thresholds, values: ``adc_thresholds`` / ``adc_values`` (``lloyd_max``), fractions
            of the full scale; None for uniform levels.
        macro: the macro it was made for (without the calibrated fields).
        layer_type: the layer's class name; shape: its weight's shape.
        count_histogram: the observed counts, ``{levels: [n(M) for M = 0 ..]}`` (trailing
            zeros dropped).
        column_full_scale: with ``granularity="column"``, each ADC's full scale
            ``[tile][ADC]`` in column counts (``full_scale`` is the largest), else None.
        adc_group: the columns per ADC of ``column_full_scale`` (else None).
    """

    method: str
    full_scale: int
    clip_rate: float
    mse: float
    mse_full_scale: float
    code_histogram: list[int]
    thresholds: tuple[float, ...] | None
    values: tuple[float, ...] | None
    macro: MacroConfig
    layer_type: str
    shape: tuple[int, ...]
    count_histogram: dict[int, list[int]]
    column_full_scale: list[list[int]] | None = None
    adc_group: int | None = None

    @property
    def observed(self) -> int:
        return sum(sum(n) for n in self.count_histogram.values())

    def changes(self) -> dict:
        """The fields this calibration sets on a macro."""
        return {
            "adc_full_scale": self.full_scale,
            "adc_thresholds": self.thresholds,
            "adc_values": self.values,
            "adc_levels_csv": None,  # a levels file is replaced by the fitted (or no) table
        }

    def ranges(self) -> ColumnRanges | None:
        """The per-ADC full scales as the layer's ``adc_ranges`` (None: one per layer)."""
        if self.column_full_scale is None:
            return None
        return ColumnRanges.of(self.column_full_scale, self.adc_group)


def _fit(
    hist: CountHistogram,
    macro: MacroConfig,
    method: str,
    percentile: float,
    search: int | None = None,
):
    """``(full_scale, thresholds, values, mse, clip_rate, code_histogram, mse_full_scale)``;
    ``mse`` searches full scales ``1 .. search`` (default ``max(nrow, max count)``)."""
    A = macro.adc_levels
    v, w = hist.points()
    total = float(w.sum())
    if total == 0:  # nothing observed: keep a 1-count range, nothing to measure
        return 1, None, None, 0.0, 0.0, [0] * (A + 1), 0.0
    vmax = float(v[-1])
    top = max(1, math.ceil(vmax - 1e-9))
    thresholds = values = None
    if method == "max":
        fs = top
    elif method == "percentile":
        cum = torch.cumsum(w, 0)
        idx = int(torch.searchsorted(cum, torch.tensor(percentile / 100 * total).double()))
        fs = max(1, math.ceil(float(v[min(idx, v.numel() - 1)]) - 1e-9))
    else:
        errors = _mse_search(v, w, search or max(top, macro.nrow), A)  # above max can align
        fs = int(torch.argmin(errors)) + 1
    if method == "lloyd_max":
        levels = _lloyd_max(v, w, fs, A)
        fs = max(1, math.ceil(float(levels[-1]) - 1e-9))
        thr = (levels[1:] + levels[:-1]) / 2
        code = torch.searchsorted(thr, v, right=True)
        out = levels[code]
        thresholds = tuple(float(t) for t in thr / fs)
        values = tuple(float(x) for x in levels / fs)
    else:
        code, out = _uniform(v, fs, A)
    mse = float(((v - out) ** 2 * w).sum() / total)
    clip = float(w[v > fs].sum() / total)
    codes = torch.zeros(A + 1, dtype=torch.float64).index_add_(0, code, w)
    _, out_fs = _uniform(v, macro.nrow, A)
    mse_fs = float(((v - out_fs) ** 2 * w).sum() / total)
    return fs, thresholds, values, mse, clip, [int(c) for c in codes], mse_fs


_FIT_BUDGET = 1 << 23
"""Elements (ADCs x distinct counts, or x full scales) of one chunk of :func:`_fit_columns`'s
arrays: a few float64 / int64 arrays of this size, under 0.5 GB at the peak."""

_TIE = 1e-9
"""Relative gap under which two full scales' ``mse`` errors count as tied in
:func:`_fit_columns`: far above the rounding of any order of summing an ADC's ``g``
non-negative terms (at most ``g * 2^-53`` relative, 1e-11 for 10^5 distinct counts), so
errors further apart come out in the same order as :func:`_fit`'s."""


def _grid(columns: dict[int, Tensor]) -> tuple[Tensor, dict[int, Tensor]]:
    """The distinct normalised counts ``M / levels`` of every cycle width (float64,
    ascending, as :meth:`CountHistogram.points` computes them) and, per width, where each
    of its bins lies in that grid."""
    vals = [torch.arange(n.shape[-1], dtype=torch.float64) / lv for lv, n in columns.items()]
    u, where = torch.unique(torch.cat(vals), sorted=True, return_inverse=True)
    return u, dict(zip(columns, where.split([v.numel() for v in vals]), strict=True))


def _column_scales(
    n: Tensor, u: Tensor, macro: MacroConfig, method: str, percentile: float, search: int
) -> tuple[Tensor, Tensor]:
    """Every ADC's full scale as :func:`_fit` fits it from its counts ``n [C, G]`` (int64,
    every ADC saw something) at the normalised counts ``u [G]`` (ascending), and which ADCs'
    ``mse`` search ended in a tie (their float errors order them by rounding: the caller
    refits them)."""
    seen = n > 0
    last = torch.where(seen, torch.arange(u.numel()), -1).amax(1)  # the largest count
    top = torch.ceil(u[last] - 1e-9).clamp(min=1)
    tied = torch.zeros(n.shape[0], dtype=torch.bool)
    if method == "max":
        return top, tied
    if method == "percentile":  # the first count whose cumulative weight reaches the target
        total = n.sum(1).double()
        # as _fit: the target goes through a tensor of the default dtype
        target = (percentile / 100 * total).to(torch.get_default_dtype()).double()
        hit = (n.cumsum(1).double() >= target.unsqueeze(1)) & seen
        at = torch.where(hit.any(1), hit.int().argmax(1), last)
        return torch.ceil(u[at] - 1e-9).clamp(min=1), tied
    # mse: every full scale's summed squared error (count 0 adds nothing)
    keep = u > 0
    v = u[keep]
    fs = torch.arange(1, search + 1, dtype=torch.float64).unsqueeze(1)
    A = macro.adc_levels
    sq = (v - torch.round((v / fs).clamp(0, 1) * A) / A * fs) ** 2  # [search, g], as _mse_search
    errors = n[:, keep].double() @ sq.T  # [C, search]
    best, pick = errors.min(1)  # the first minimum, as torch.argmin
    near = (errors <= best.unsqueeze(1) * (1 + _TIE)).sum(1)
    return (pick + 1).double(), (best > 0) & (near > 1)


def _column_summary(w: Tensor, v: Tensor, fs: Tensor, macro: MacroConfig):
    """Summed over the ADCs of counts ``w [C, G]`` (at the normalised counts ``v [G]``) at
    their full scales ``fs [C]``, as :func:`_fit_columns` sums :func:`_fit`'s per-ADC
    figures: ``(mse * count, clip * count, codes [A + 1] int64, mse at nrow * count)``."""
    A = macro.adc_levels
    code = torch.round((v / fs.unsqueeze(1)).clamp(0, 1) * A)
    out = code / A * fs.unsqueeze(1)
    mse = ((v - out) ** 2 * w).sum()
    clip = (w * (v > fs.unsqueeze(1))).sum().double()
    codes = torch.zeros(A + 1, dtype=torch.int64).index_add_(0, code.long().view(-1), w.view(-1))
    out_fs = torch.round((v / macro.nrow).clamp(0, 1) * A) / A * macro.nrow
    mse_fs = ((v - out_fs) ** 2 * w).sum()
    return float(mse), float(clip), codes, float(mse_fs)


def _snap(ranges: Tensor, steps: int) -> Tensor:
    """Each full scale rounded up to the nearest of ``ceil(k * N / steps)``, ``k = 1 ..
    steps``, ``N`` the largest: a reference trim with ``steps`` settings."""
    top = int(ranges.max())
    k = torch.arange(1, steps + 1, dtype=torch.int64)
    grid = torch.unique((k * top + steps - 1) // steps)
    return grid[torch.searchsorted(grid, ranges)]


def _fit_columns(
    hist: CountHistogram,
    macro: MacroConfig,
    method: str,
    percentile: float,
    steps: int | None = None,
):
    """Every ADC's full scale by ``method`` (as :func:`_fit` on its own counts; ``mse`` over
    the layer's search range, so no ADC does worse than the layer's best range), rounded up
    to one of ``steps`` settings when ``steps`` is set (:func:`_snap`), and the layer's
    summary: ``(ranges [T, n_adc], full_scale, mse, clip_rate, code_histogram,
    mse_full_scale)``, the errors and clip rate over all conversions at those ranges, the full
    scale the largest ADC's. An ADC that saw nothing (every cycle of its columns exact) gets
    it too.

    All ADCs at once, a chunk of ADCs at a time (:data:`_FIT_BUDGET`), on the grid of the
    distinct normalised counts: the ranges equal :func:`_fit`'s, the summary up to the order
    of summation. An ADC whose ``mse`` search ends in a tie (two full scales' errors within
    :data:`_TIE`, so rounding picks one) is refitted by :func:`_fit` itself."""
    A = macro.adc_levels
    v, _ = hist.points()
    search = max(macro.nrow, math.ceil(float(v[-1]) - 1e-9) if v.numel() else 1)
    T, n_adc = next(iter(hist.columns.values())).shape[:2]
    flat = {lv: n.reshape(T * n_adc, -1) for lv, n in hist.columns.items()}
    u, where = _grid(hist.columns)
    step = max(1, _FIT_BUDGET // max(u.numel(), search))

    def chunks():
        """``(r0, rows, n, uc)`` per chunk: the ADCs that saw something, their counts at the
        normalised counts the chunk saw."""
        for r0 in range(0, T * n_adc, step):
            if len(flat) == 1:  # one cycle width: its bins are the grid
                n = next(iter(flat.values()))[r0 : r0 + step]
            else:
                n = torch.zeros(min(step, T * n_adc - r0), u.numel(), dtype=torch.int64)
                for lv, counts in flat.items():
                    n.index_add_(1, where[lv], counts[r0 : r0 + step])
            rows = n.sum(1).nonzero().view(-1)  # ADCs that saw nothing keep a range of 0 here
            if rows.numel():
                seen = (n > 0).any(0)  # the counts this chunk saw (the rest weigh nothing)
                yield r0, rows, n[:, seen][rows], u[seen]

    sums = [0, 0.0, 0.0, torch.zeros(A + 1, dtype=torch.int64), 0.0]  # n, mse, clip, codes, mse_fs

    def add(n: Tensor, uc: Tensor, fs: Tensor) -> None:
        for k, x in enumerate((int(n.sum()), *_column_summary(n, uc, fs.double(), macro))):
            sums[k] = sums[k] + x

    ranges = torch.zeros(T * n_adc, dtype=torch.int64)
    for r0, rows, n, uc in chunks():
        fs, tied = _column_scales(n, uc, macro, method, percentile, search)
        for i in tied.nonzero().view(-1).tolist():
            r = r0 + int(rows[i])
            one = CountHistogram(hist.nrow, hist.adc_bits, {lv: c[r] for lv, c in flat.items()})
            fs[i] = _fit(one, macro, method, percentile, search)[0]
        ranges[r0 + rows] = fs.long()
        if steps is None:  # the summary at these ranges, in the same pass
            add(n, uc, fs)
    full_scale = max(1, int(ranges.max()))
    ranges[ranges == 0] = full_scale
    if steps is not None:  # the summary at the rounded ranges: a second pass
        ranges = _snap(ranges, steps)
        for r0, rows, n, uc in chunks():
            add(n, uc, ranges[r0 + rows])
    total, mse, clip, codes, mse_fs = sums
    total = max(total, 1.0)
    summary = (mse / total, clip / total, [int(c) for c in codes], mse_fs / total)
    return ranges.view(T, n_adc), full_scale, *summary


# ----------------------------------------------------------------------------- result


def _base_macro(macro: MacroConfig) -> MacroConfig:
    """The macro without its calibrated fields (what a calibration is made for)."""
    return dataclasses.replace(macro, **{f: None for f in _CALIBRATED_FIELDS})


def _macro_to_json(macro: MacroConfig) -> dict:
    out = {}
    for f in dataclasses.fields(macro):
        value = getattr(macro, f.name)
        out[f.name] = value.value if hasattr(value, "value") else value
    return out


def _macro_from_json(data: dict) -> MacroConfig:
    data = dict(data)
    for f in _CALIBRATED_FIELDS:
        if isinstance(data.get(f), list):
            data[f] = tuple(data[f])
    return MacroConfig(**data)


def _weight_shape(layer) -> tuple[int, ...]:
    w = getattr(layer, "weight", None)
    if not isinstance(w, Tensor):
        w = getattr(layer, "in_proj_weight", None)
    return tuple(w.shape) if isinstance(w, Tensor) else ()


@dataclass
class Calibration:
    """A model's calibrated ADCs (:func:`calibrate_adc`): an artifact a lab keeps.

    Attributes:
        method, percentile, granularity, column_steps: how it was made.
        batches: calibration batches observed.
        layers: per layer (``NAME``; attention parts ``NAME.qk`` / ``NAME.av``) its
            :class:`LayerCalibration`.
    """

    method: str
    percentile: float | None
    granularity: str
    batches: int
    layers: dict[str, LayerCalibration]
    column_steps: int | None = None

    def save(self, path: str | Path) -> Path:
        """Write the calibration as indented JSON (with its format name and version)."""
        doc = {
            "format": CALIBRATION_FORMAT,
            "version": CALIBRATION_VERSION,
            "method": self.method,
            "percentile": self.percentile,
            "granularity": self.granularity,
            "column_steps": self.column_steps,
            "batches": self.batches,
            "layers": {},
        }
        for key, lc in self.layers.items():
            entry = dataclasses.asdict(lc)
            entry["macro"] = _macro_to_json(lc.macro)
            entry["count_histogram"] = {str(k): n for k, n in lc.count_histogram.items()}
            doc["layers"][key] = entry
        path = Path(path)
        path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a file written by :meth:`save` (one-line error on another format/version)."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"calibration {path}: cannot be read as JSON ({err})") from None
        if not isinstance(doc, dict) or doc.get("format") != CALIBRATION_FORMAT:
            raise ValueError(f"calibration {path}: not an {CALIBRATION_FORMAT} file")
        if doc.get("version") not in _READABLE_VERSIONS:
            raise ValueError(
                f"calibration {path}: format version {doc.get('version')!r}, this asim reads "
                f"version {CALIBRATION_VERSION}; calibrate again"
            )
        layers = {}
        for key, e in doc["layers"].items():
            layers[key] = LayerCalibration(
                method=e["method"],
                full_scale=int(e["full_scale"]),
                clip_rate=float(e["clip_rate"]),
                mse=float(e["mse"]),
                mse_full_scale=float(e["mse_full_scale"]),
                code_histogram=[int(c) for c in e["code_histogram"]],
                thresholds=None if e["thresholds"] is None else tuple(e["thresholds"]),
                values=None if e["values"] is None else tuple(e["values"]),
                macro=_macro_from_json(e["macro"]),
                layer_type=e["layer_type"],
                shape=tuple(e["shape"]),
                count_histogram={int(k): list(n) for k, n in e["count_histogram"].items()},
                column_full_scale=e.get("column_full_scale"),
                adc_group=e.get("adc_group"),
            )
        return cls(
            doc["method"],
            doc["percentile"],
            doc["granularity"],
            doc["batches"],
            layers,
            doc.get("column_steps"),
        )

    def apply(self, model: nn.Module) -> nn.Module:
        """Set each calibrated layer's ADC (``adc_full_scale``, and ``adc_thresholds`` /
        ``adc_values`` for ``lloyd_max``; with ``granularity="column"`` the per-ADC full
        scales, ``layer.adc_ranges``, spec §4.8) in place; returns ``model``.

        Refuses (one line, nothing changed) a model whose non-digital ACiM layers, their
        types, weight shapes or macros (calibrated fields aside) differ from the ones the
        calibration was made for."""
        layers = {n: m for n, m in acim_modules(model) if not m.digital}
        wanted = {name for name, _ in (_split(k) for k in self.layers)}
        missing = sorted(wanted - set(layers))
        extra = sorted(set(layers) - wanted)
        if missing or extra:
            what = f"lacks {missing[0]!r}" if missing else f"has {extra[0]!r} not calibrated"
            raise ValueError(
                f"Calibration.apply: the model {what}; apply a calibration to the model it "
                "was made for, or calibrate this model"
            )
        for key, lc in self.layers.items():
            name, part = _split(key)
            layer = layers[name]
            if type(layer).__name__ != lc.layer_type or _weight_shape(layer) != lc.shape:
                raise ValueError(
                    f"Calibration.apply: layer {name!r} is {type(layer).__name__}"
                    f"{list(_weight_shape(layer))}, the calibration was made for "
                    f"{lc.layer_type}{list(lc.shape)}; calibrate this model"
                )
            have, made = _base_macro(getattr(layer, part)), _base_macro(lc.macro)
            if have != made:
                diff = next(
                    f.name
                    for f in dataclasses.fields(made)
                    if getattr(have, f.name) != getattr(made, f.name)
                )
                raise ValueError(
                    f"Calibration.apply: layer {key!r} has macro.{diff}="
                    f"{_show(getattr(have, diff))}, the calibration was made for "
                    f"{_show(getattr(made, diff))}; calibrate with the macro it will run"
                )
            group = layer.noise.adc_group if layer.noise is not None else 1
            if lc.adc_group is not None and lc.adc_group != group:
                raise ValueError(
                    f"Calibration.apply: layer {name!r} has noise.adc_group={group}, the "
                    f"calibration's ADCs group {lc.adc_group} columns; calibrate with the "
                    "noise it will run"
                )
        for key, lc in self.layers.items():
            name, part = _split(key)
            layer = layers[name]
            setattr(layer, part, dataclasses.replace(getattr(layer, part), **lc.changes()))
            if part == "macro" and _per_column(layer):
                layer.adc_ranges = lc.ranges()
        return model

    def table(self) -> str:
        """A Markdown table: per layer the full scale, clip rate and error."""
        lines = [
            "| layer | full scale | of nrow | clipped | MSE (counts^2) | MSE at nrow |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for key, lc in self.layers.items():
            fs = str(lc.full_scale)
            if lc.column_full_scale is not None:  # per ADC: the layer's and the smallest
                low = min(min(r) for r in lc.column_full_scale)
                fs = f"{low}..{lc.full_scale} per ADC"
            lines.append(
                f"| {key} | {fs} | {lc.macro.nrow} | {100 * lc.clip_rate:.3f} % | "
                f"{lc.mse:.4g} | {lc.mse_full_scale:.4g} |"
            )
        return "\n".join(lines)


def _show(value) -> str:
    return repr(value.value if hasattr(value, "value") else value)


def _split(key: str) -> tuple[str, str]:
    for part, suffix in _SUFFIX.items():
        if suffix and key.endswith(suffix):
            return key[: -len(suffix)], part
    return key, "macro"


def calibrate_adc(
    model: nn.Module,
    batches: Iterable,
    method: str = "percentile",
    percentile: float = 99.99,
    granularity: str = "layer",
    max_batches: int | None = None,
    column_steps: int | None = None,
) -> Calibration:
    """Calibrate every ACiM layer's ADC range on data (``docs/calibration.md``).

    Args:
        model: a converted model (:func:`asim.convert_to_acim`); not modified (use
            :meth:`Calibration.apply`).
        batches: calibration inputs: tensors or ``(x, y)`` tuples (a DataLoader works).
        method: ``max``, ``percentile``, ``mse`` or ``lloyd_max`` (see the module docs).
        percentile: for ``percentile``: the percentile of the observed counts, in (0, 100].
        granularity: ``layer`` (one range per layer) or ``column`` (one per ADC, i.e. per
            group of ``noise.adc_group`` columns, spec §4.8; conv and linear layers, not with
            ``lloyd_max``).
        max_batches: stop after this many batches (None: all).
        column_steps: with ``granularity="column"``, the settings of each ADC's reference
            trim: every ADC's full scale is rounded up to the nearest of ``ceil(k * N /
            column_steps)``, ``k = 1 .. column_steps`` (``N`` the layer's largest), so a layer
            has at most that many distinct ranges (None: any column count).

    Returns:
        The :class:`Calibration` (apply it with :meth:`Calibration.apply`).
    """
    if method not in METHODS:
        raise ValueError(f"calibrate_adc: method={method!r}; choose one of {', '.join(METHODS)}")
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"calibrate_adc: granularity={granularity!r}; choose one of {', '.join(GRANULARITIES)}"
        )
    if granularity == "column" and method == "lloyd_max":
        raise ValueError(
            "calibrate_adc: lloyd_max fits one level table per layer; use granularity='layer' "
            "with it, or max, percentile or mse per column"
        )
    whole = isinstance(column_steps, int) and not isinstance(column_steps, bool)
    if column_steps is not None and (granularity != "column" or not whole or column_steps < 1):
        raise ValueError(
            f"calibrate_adc: column_steps={column_steps!r} needs granularity='column' and an "
            "integer >= 1 (the settings of each ADC's reference trim), or None"
        )
    if not (isinstance(percentile, (int, float)) and 0 < percentile <= 100):
        raise ValueError(f"calibrate_adc: percentile={percentile!r} must be in (0, 100]")
    hists, seen = observe_counts(model, batches, max_batches, columns=granularity == "column")
    modules = dict(acim_modules(model))
    layers = {}
    for key, hist in hists.items():
        name, part = _split(key)
        layer = modules[name]
        macro = _base_macro(getattr(layer, part))
        columns = None
        if hist.columns:  # per ADC (spec §4.8)
            ranges, fs, mse, clip, codes, mse_fs = _fit_columns(
                hist, macro, method, float(percentile), column_steps
            )
            thr = val = None
            columns = ranges.tolist()
        else:
            fs, thr, val, mse, clip, codes, mse_fs = _fit(hist, macro, method, float(percentile))
        layers[key] = LayerCalibration(
            method=method,
            full_scale=fs,
            clip_rate=clip,
            mse=mse,
            mse_full_scale=mse_fs,
            code_histogram=codes,
            thresholds=thr,
            values=val,
            macro=macro,
            layer_type=type(layer).__name__,
            shape=_weight_shape(layer),
            count_histogram={lv: _trim_zeros(n.tolist()) for lv, n in sorted(hist.counts.items())},
            column_full_scale=columns,
            adc_group=hist.group if columns is not None else None,
        )
    return Calibration(
        method,
        float(percentile) if method == "percentile" else None,
        granularity,
        seen,
        layers,
        column_steps,
    )


def _trim_zeros(n: list[int]) -> list[int]:
    end = len(n)
    while end > 1 and n[end - 1] == 0:
        end -= 1
    return n[:end]
