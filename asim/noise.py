"""Read-out noise models (spec §4.1) and exact ADC code sampling.

A noise model answers one question: for a conversion whose ideal per-level column count is
``m`` (``m = M`` bit-serial, ``M_c / (2^width - 1)`` bit-parallel, spec Q11), what does the
analog read-out do to the ADC code?

* :class:`GaussianNoise` is the reference's model: ``N(0, (rand/100)^2 + (nl/100)^2/(m+1))``
  added to the normalised value. The reference draws two Gaussians; their sum is one
  Gaussian with the summed variance.
* :class:`TableNoise` (``noise=measured``) is a measured characterisation: a CSV with, per
  ideal column count, the mean offset and standard deviation of the read-out in ADC LSB
  (what a silicon or SPICE sweep of one column gives), linearly interpolated in between.
* :class:`HistogramNoise` (``noise=histogram``) is the measured code histogram itself: a CSV
  with, per ideal column count, how often each code offset ``measured - ideal`` (LSB) was
  seen (a transfer-curve measurement: non-Gaussian tails, INL/DNL, offsets).

**Exact code sampling.** For an integer column count the ADC code is a discrete random
variable. :func:`code_table` computes ``P(code = k | m)`` for every count ``m`` of one full
scale from the spec's chain (§4.1: normalise by ``F``, clamp, add noise, clamp, round half
to even; §8.1 gain compression first, or after the noise for Q28's ``normalised`` sign
cycle), in float64, once, and stores it as cumulative 32-bit integer thresholds. A
conversion then takes one uniform 32-bit integer ``u`` from the counter-based stream
(:mod:`asim.rng`) and a few integer comparisons (:func:`sample_codes`, C twin
``asim_sample_code`` in ``asim/_native/sampling.h``), so every backend gives the same
codes. Each code's probability is exact up to the 2^-32 rounding of its thresholds.
:func:`signed_code_table` does the same for the weight-parallel signed ADC (§8.3).
Non-integer counts (weight-cell variation) keep the Gaussian path through
:meth:`ReadoutNoise.moments`.
"""

from __future__ import annotations

import collections
import csv
import ctypes
import dataclasses
import functools
import math
import os
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .config import MacroConfig, NoiseConfig
from .quant import divide as _divide  # the one division helper (spec Q10)
from .rng import CONSTANTS

__all__ = [
    "CodeTable",
    "CodeTableStruct",
    "GaussianNoise",
    "HistogramNoise",
    "OperatingPoint",
    "ReadoutNoise",
    "TableNoise",
    "build_noise",
    "check_operating_point",
    "code_table",
    "sample_codes",
    "signed_code_table",
    "table_codes",
    "table_taus",
    "vote_codes",
]


@dataclass(frozen=True)
class OperatingPoint:
    """Where a measured table or histogram was taken: its file's
    ``# operating_point: adc_bits=8, nrow=255`` line (``docs/noise.md``).

    Attributes:
        adc_bits: the ADC resolution whose LSB the file's numbers are in (None: not stated).
        nrow: the rows per column at the measurement: the counts it covers (None: not stated).
    """

    adc_bits: int | None = None
    nrow: int | None = None

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in dataclasses.asdict(self).items() if v is not None]
        return ", ".join(parts)


def _lsb_levels(model, adc_levels: int) -> int:
    """``2^b - 1`` of the ADC whose LSB the model's numbers are in: the measured one when the
    file states it (the analog noise stays; its size in the layer's LSB scales by
    ``A_layer / A_measured``), else the layer's own (``adc_levels``)."""
    op = model.operating_point
    return adc_levels if op is None or op.adc_bits is None else (1 << op.adc_bits) - 1


def check_operating_point(model, nrow: int) -> None:
    """Refuse (one line) a measured model used beyond the counts it covers (``nrow``)."""
    op = getattr(model, "operating_point", None)
    if op is not None and op.nrow is not None and nrow > op.nrow:
        raise ValueError(
            f"{model.source}: measured at nrow={op.nrow}, it does not cover the counts of "
            f"macro.nrow={nrow}; use macro.nrow<={op.nrow} or a measurement at nrow>={nrow}"
        )


class ReadoutNoise:
    """Base class: the read-out noise as a function of the per-level column count."""

    def constant_sigma(self, adc_levels: int) -> float | None:
        """The sigma if it does not depend on the count, else None."""
        return None

    def moments(self, level_count: Tensor, adc_levels: int) -> tuple[Tensor | None, Tensor]:
        """Offset (or None) and sigma, normalised to full scale, for each element (float32):
        the Gaussian path, used where counts are not integers."""
        raise NotImplementedError

    def moments64(self, level_count: Tensor, adc_levels: int) -> tuple[Tensor, Tensor]:
        """Offset and sigma in full-scale units, float64: what :func:`code_table` uses."""
        raise NotImplementedError

    def cache_key(self) -> tuple:
        """A hashable value equal for models that give the same numbers."""
        raise NotImplementedError


class GaussianNoise(ReadoutNoise):
    """The reference's random + count-dependent ("non-linear") Gaussian noise.

    Args:
        rand_sigma: signal-independent sigma, % of full scale.
        nonlinear_sigma: sigma at count 0, % of full scale, shrinking as 1/sqrt(count+1).
    """

    def __init__(self, rand_sigma: float = 0.0, nonlinear_sigma: float = 0.0):
        self.rand_var = (rand_sigma / 100.0) ** 2
        self.nl_var = (nonlinear_sigma / 100.0) ** 2

    def constant_sigma(self, adc_levels: int) -> float | None:
        return math.sqrt(self.rand_var) if self.nl_var == 0 else None

    def moments(self, level_count: Tensor, adc_levels: int) -> tuple[None, Tensor]:
        var = (level_count + 1.0).reciprocal_().mul_(self.nl_var).add_(self.rand_var)
        return None, var.sqrt_()

    def moments64(self, level_count: Tensor, adc_levels: int) -> tuple[Tensor, Tensor]:
        level = level_count.double()
        sigma = (self.rand_var + self.nl_var / (level + 1.0)).sqrt()
        return torch.zeros_like(level), sigma

    def cache_key(self) -> tuple:
        return ("gaussian", self.rand_var, self.nl_var)

    def __repr__(self) -> str:
        return (
            f"GaussianNoise(rand_sigma={100 * math.sqrt(self.rand_var):g}%, "
            f"nonlinear_sigma={100 * math.sqrt(self.nl_var):g}%)"
        )


def _interp(counts: Tensor, values: Tensor, level: Tensor) -> Tensor:
    """Piecewise-linear interpolation of ``values`` (rows) at ``level``; nearest row outside
    ``counts``. ``values`` may be 1-D or 2-D (one row per count)."""
    counts = counts.to(level.device, level.dtype)
    values = values.to(level.device, level.dtype)
    if counts.numel() == 1:
        return values[0].expand(*level.shape, *values.shape[1:]).clone()
    m = level.clamp(counts[0], counts[-1])
    hi = torch.searchsorted(counts, m.contiguous()).clamp_(1, counts.numel() - 1)
    lo = hi - 1
    frac = (m - counts[lo]) / (counts[hi] - counts[lo])
    if values.dim() > 1:
        frac = frac.unsqueeze(-1)
    return torch.lerp(values[lo], values[hi], frac)


class TableNoise(ReadoutNoise):
    """Measured read-out noise per ideal column count, in ADC LSB.

    Args:
        counts: ideal column counts at which the read-out was measured (ascending).
        offset: mean of (measured code - ideal code) at each count, LSB.
        std: standard deviation of the measured code at each count, LSB.
        source: where the numbers came from (shown in ``repr`` and errors).
    """

    def __init__(
        self,
        counts,
        offset,
        std,
        source: str = "table",
        operating_point: OperatingPoint | None = None,
    ):
        self.operating_point = operating_point
        self.counts64 = torch.as_tensor(counts, dtype=torch.float64).flatten()
        self.offset64 = torch.as_tensor(offset, dtype=torch.float64).flatten()
        self.std64 = torch.as_tensor(std, dtype=torch.float64).flatten()
        self.counts, self.offset, self.std = (
            t.float() for t in (self.counts64, self.offset64, self.std64)
        )
        self.source = source
        n = self.counts.numel()
        if n == 0 or self.offset.numel() != n or self.std.numel() != n:
            raise ValueError(f"noise table {source}: needs >= 1 row with count, offset and std")
        for name, t in (("count", self.counts64), ("offset", self.offset64)):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"noise table {source}: every {name} must be a finite number")
        if bool((self.counts64[1:] <= self.counts64[:-1]).any()):
            raise ValueError(f"noise table {source}: counts must be strictly increasing")
        if not bool(((self.std64 >= 0) & torch.isfinite(self.std64)).all()):
            raise ValueError(f"noise table {source}: every std must be finite and >= 0")

    @classmethod
    def from_csv(cls, path: str | Path) -> TableNoise:
        """Read a CSV with header ``count,offset,std`` (``#`` lines are comments)."""
        return _load_table(*_file_key(path))

    def moments(self, level_count: Tensor, adc_levels: int) -> tuple[Tensor, Tensor]:
        lsb = _lsb_levels(self, adc_levels)
        offset = _interp(self.counts, self.offset, level_count).div_(lsb)
        std = _interp(self.counts, self.std, level_count).div_(lsb)
        return offset, std

    def moments64(self, level_count: Tensor, adc_levels: int) -> tuple[Tensor, Tensor]:
        level = level_count.double()
        lsb = _lsb_levels(self, adc_levels)
        offset = _interp(self.counts64, self.offset64, level) / lsb
        return offset, _interp(self.counts64, self.std64, level) / lsb

    def cache_key(self) -> tuple:
        if getattr(self, "_key", None) is None:  # one model per file version: built once
            self._key = (
                "table",
                self.operating_point,
                *(t.numpy().tobytes() for t in (self.counts64, self.offset64, self.std64)),
            )
        return self._key

    def __repr__(self) -> str:
        return f"TableNoise({self.source}, {self.counts.numel()} counts)"


class HistogramNoise(ReadoutNoise):
    """The measured ADC code histogram per ideal column count.

    At ideal count ``m`` the code is ``clamp(ideal_code + delta, 0, A)`` with probability
    proportional to the measured frequency of ``delta``; the ideal code is the noise-free
    conversion ``rne(fl(m'/F) * A)`` of the same count. Between measured counts the two
    neighbouring histograms are mixed linearly (a count 30 % of the way from 16 to 32 takes
    70 % of the histogram at 16 and 30 % of the one at 32); outside, the nearest one is used.

    Args:
        counts: the measured ideal counts, strictly increasing.
        delta_min: the code offset (LSB) of column 0 of ``weights``.
        weights: ``[len(counts), D]`` non-negative frequencies of offsets
            ``delta_min .. delta_min + D - 1``; each row must have a positive sum.
        source: where the numbers came from.
    """

    def __init__(
        self,
        counts,
        delta_min: int,
        weights,
        source: str = "histogram",
        operating_point: OperatingPoint | None = None,
    ):
        self.operating_point = operating_point
        self.counts64 = torch.as_tensor(counts, dtype=torch.float64).flatten()
        w = torch.as_tensor(weights, dtype=torch.float64)
        self.source = source
        n = self.counts64.numel()
        if n == 0 or w.dim() != 2 or w.shape[0] != n or w.shape[1] == 0:
            raise ValueError(f"noise histogram {source}: needs one row of weights per count")
        if not bool(torch.isfinite(self.counts64).all()):
            raise ValueError(f"noise histogram {source}: every count must be a finite number")
        if bool((self.counts64[1:] <= self.counts64[:-1]).any()):
            raise ValueError(f"noise histogram {source}: counts must be strictly increasing")
        if not bool(((w >= 0) & torch.isfinite(w)).all()):
            raise ValueError(f"noise histogram {source}: weights must be finite and >= 0")
        if bool((w.sum(1) <= 0).any()):
            raise ValueError(f"noise histogram {source}: every count needs a positive weight")
        self.delta_min = int(delta_min)
        self.pmf = w / w.sum(1, keepdim=True)
        d = torch.arange(w.shape[1], dtype=torch.float64) + self.delta_min
        self.mean_lsb = self.pmf @ d
        self.m2_lsb = self.pmf @ (d * d)

    @classmethod
    def from_csv(cls, path: str | Path) -> HistogramNoise:
        """Read a CSV with header ``count,delta,weight`` (``#`` lines are comments)."""
        return _load_histogram(*_file_key(path))

    def delta_pmf(self, level_count: Tensor) -> tuple[int, Tensor]:
        """``(delta_min, P)``: ``P[..., j]`` is the probability of code offset
        ``delta_min + j`` at each (float64) per-level count."""
        return self.delta_min, _interp(self.counts64, self.pmf, level_count.double())

    def moments64(self, level_count: Tensor, adc_levels: int) -> tuple[Tensor, Tensor]:
        level = level_count.double()
        mean = _interp(self.counts64, self.mean_lsb, level)
        var = (_interp(self.counts64, self.m2_lsb, level) - mean * mean).clamp_(min=0)
        lsb = _lsb_levels(self, adc_levels)
        return mean / lsb, var.sqrt() / lsb

    def moments(self, level_count: Tensor, adc_levels: int) -> tuple[Tensor, Tensor]:
        """The histogram's mean and standard deviation as a Gaussian (non-integer counts
        only: integer counts sample the histogram exactly through :func:`code_table`)."""
        offset, sigma = self.moments64(level_count, adc_levels)
        return offset.float(), sigma.float()

    def cache_key(self) -> tuple:
        if getattr(self, "_key", None) is None:  # one model per file version: built once
            self._key = (
                "histogram",
                self.operating_point,
                self.delta_min,
                self.counts64.numpy().tobytes(),
                self.pmf.numpy().tobytes(),
            )
        return self._key

    def __repr__(self) -> str:
        return f"HistogramNoise({self.source}, {self.counts64.numel()} counts)"


# ----------------------------------------------------------------------------- CSV input


def _read_rows(p: Path, columns: tuple[str, ...], what: str, option: str) -> list[tuple[int, dict]]:
    """``(line number, {column: text})`` for each data line of a CSV with ``#`` comments."""
    if not p.is_file():
        raise FileNotFoundError(
            f"{what} not found: {p}; set {option}=PATH to a CSV with columns {','.join(columns)}"
        )
    lines = [
        (i, line)
        for i, line in enumerate(p.read_text(encoding="utf-8-sig").splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise ValueError(f"{what} {p}: no header; the first line must be {','.join(columns)}")
    head_no, head = lines[0]
    names = [c.strip() for c in next(csv.reader([head]))]
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(
            f"{what} {p}, line {head_no}: header {','.join(names)!r} lacks "
            f"{','.join(missing)}; the header must be {','.join(columns)}"
        )
    if len(lines) == 1:
        raise ValueError(f"{what} {p}: no data rows after the header; add at least one row")
    rows = []
    for no, line in lines[1:]:
        cells = [c.strip() for c in next(csv.reader([line]))]
        if len(cells) != len(names):
            raise ValueError(
                f"{what} {p}, line {no}: {len(cells)} fields, the header has {len(names)}; "
                f"write one value per column ({','.join(names)})"
            )
        rows.append((no, dict(zip(names, cells, strict=True))))
    return rows


def _number(p: Path, what: str, no: int, name: str, text: str, *, minimum=None) -> float:
    where = f"{what} {p}, line {no}"
    try:
        v = float(text)
    except ValueError:
        raise ValueError(
            f"{where}: {name}={text!r} is not a number; write a plain decimal number"
        ) from None
    if not math.isfinite(v):
        raise ValueError(
            f"{where}: {name}={text!r} is not a finite number; write the measured value or "
            "drop the row"
        )
    if minimum is not None and v < minimum:
        raise ValueError(f"{where}: {name}={text} is negative; {name} must be >= {minimum:g}")
    return v


def _file_key(path: str | Path) -> tuple[str, int, int]:
    """The resolved path with its modification time and size: a changed file is re-read."""
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
        return str(p), st.st_mtime_ns, st.st_size
    except OSError:
        return str(p), 0, -1


@functools.lru_cache(maxsize=16)
def _load_table(path: str, mtime_ns: int = 0, size: int = -1) -> TableNoise:
    p, what = Path(path), "noise table"
    counts, offset, std = [], [], []
    for no, row in _read_rows(p, ("count", "offset", "std"), what, "noise.file"):
        c = _number(p, what, no, "count", row["count"], minimum=0)
        if counts and c <= counts[-1]:
            raise ValueError(
                f"{what} {p}, line {no}: count {c:g} follows {counts[-1]:g}; "
                "sort the rows by strictly increasing count"
            )
        counts.append(c)
        offset.append(_number(p, what, no, "offset", row["offset"]))
        std.append(_number(p, what, no, "std", row["std"], minimum=0))
    return TableNoise(counts, offset, std, source=str(p), operating_point=_operating_point(p, what))


@functools.lru_cache(maxsize=16)
def _load_histogram(path: str, mtime_ns: int = 0, size: int = -1) -> HistogramNoise:
    p, what = Path(path), "noise histogram"
    per_count: dict[float, dict[int, float]] = {}
    last: tuple[float, int] | None = None
    for no, row in _read_rows(p, ("count", "delta", "weight"), what, "noise.histogram"):
        c = _number(p, what, no, "count", row["count"], minimum=0)
        d = _number(p, what, no, "delta", row["delta"])
        if d != int(d):
            raise ValueError(
                f"{what} {p}, line {no}: delta={row['delta']} must be a whole number of LSB"
            )
        w = _number(p, what, no, "weight", row["weight"], minimum=0)
        if last is not None and (c, int(d)) <= last:
            raise ValueError(
                f"{what} {p}, line {no}: (count {c:g}, delta {int(d)}) follows (count "
                f"{last[0]:g}, delta {last[1]}); sort rows by count, then by strictly "
                "increasing delta"
            )
        last = (c, int(d))
        per_count.setdefault(c, {})[int(d)] = w
    for c, hist in per_count.items():
        if sum(hist.values()) <= 0:
            raise ValueError(
                f"{what} {p}: count {c:g} has no positive weight; give it at least one "
                "observed code"
            )
    lo = min(min(h) for h in per_count.values())
    hi = max(max(h) for h in per_count.values())
    weights = torch.zeros(len(per_count), hi - lo + 1, dtype=torch.float64)
    for r, hist in enumerate(per_count.values()):
        for d, w in hist.items():
            weights[r, d - lo] = w
    op = _operating_point(p, what)
    return HistogramNoise(list(per_count), lo, weights, source=str(p), operating_point=op)


_OP_LINE = re.compile(r"^\s*#\s*operating[_ ]point\s*:(.*)$", re.IGNORECASE)


def _operating_point(p: Path, what: str) -> OperatingPoint | None:
    """The file's ``# operating_point: adc_bits=B, nrow=N`` line (either key may be left
    out), or None with one warning saying what is assumed."""
    for no, line in enumerate(p.read_text(encoding="utf-8-sig").splitlines(), start=1):
        hit = _OP_LINE.match(line)
        if hit is None:
            continue
        values = {}
        for item in filter(None, re.split(r"[,\s]+", hit.group(1).strip())):
            key, _, text = item.partition("=")
            if key not in ("adc_bits", "nrow") or not text.isdigit() or int(text) < 1:
                raise ValueError(
                    f"{what} {p}, line {no}: {item!r} in the operating point; write "
                    "'# operating_point: adc_bits=B, nrow=N' with positive integers"
                )
            values[key] = int(text)
        if not values:
            raise ValueError(
                f"{what} {p}, line {no}: an empty operating point; write "
                "'# operating_point: adc_bits=B, nrow=N'"
            )
        return OperatingPoint(**values)
    warnings.warn(
        f"{what} {p} states no operating point: its LSB are taken as LSB of each layer's own "
        "ADC (whatever its adc_bits) and its counts as measured at the layer's nrow; add a "
        "line '# operating_point: adc_bits=B, nrow=N' to convert it to other ADCs",
        stacklevel=4,
    )
    return None


def build_noise(cfg: NoiseConfig | None, macro: MacroConfig | None = None) -> ReadoutNoise | None:
    """The read-out noise model a :class:`NoiseConfig` describes on ``macro``, or None when
    it is off. The macro's ADC resolution converts LSB sigmas (:meth:`NoiseConfig.at_adc`)
    and its ``nrow`` is checked against a measurement's operating point; without a macro,
    LSB sigmas are an error and no operating point is checked."""
    if cfg is None:
        return None
    if cfg.histogram is not None:
        model = HistogramNoise.from_csv(cfg.histogram)
    elif cfg.file is not None:
        model = TableNoise.from_csv(cfg.file)
    else:
        if macro is not None:
            cfg = cfg.at_adc(macro.adc_bits)
        elif cfg.rand_sigma_lsb > 0 or cfg.nonlinear_sigma_lsb > 0:
            raise ValueError(
                "build_noise: noise.rand_sigma_lsb/nonlinear_sigma_lsb are in LSB of the "
                "layer's ADC; pass the macro (build_noise(noise, macro))"
            )
        if cfg.rand_sigma > 0 or cfg.nonlinear_sigma > 0:
            return GaussianNoise(cfg.rand_sigma, cfg.nonlinear_sigma)
        return None
    if macro is not None:
        check_operating_point(model, macro.nrow)
    return model


def file_version(cfg: NoiseConfig | None) -> tuple:
    """(path, modification time, size) of the file ``cfg``'s noise is read from (the
    histogram before the table, as :func:`build_noise` reads them), or ``()`` when none: what
    something built from that file must still match to be reused. One ``stat``, no path
    resolution: it is checked on every layer call."""
    path = None if cfg is None else cfg.histogram if cfg.histogram is not None else cfg.file
    if path is None:
        return ()
    try:
        st = os.stat(path)
    except OSError:
        return path, 0, -1
    return path, st.st_mtime_ns, st.st_size


# ----------------------------------------------------------------------------- code tables

_TWO32 = 1 << 32
_Z_WINDOW = 7.0  # codes beyond 7 sigma have probability < 2^-39: their thresholds round away


class CodeTableStruct(ctypes.Structure):
    """ctypes mirror of ``asim_code_table`` in ``asim/_native/sampling.h`` (same order)."""

    _fields_ = [
        ("thr", ctypes.POINTER(ctypes.c_uint32)),
        ("start", ctypes.POINTER(ctypes.c_int32)),
        ("k_lo", ctypes.POINTER(ctypes.c_int32)),
        ("guide", ctypes.POINTER(ctypes.c_int32)),
        ("m_min", ctypes.c_int32),
        ("n_m", ctypes.c_int32),
        ("guide_bits", ctypes.c_int32),
        ("max_code", ctypes.c_int32),
    ]


ROW_CHUNK = 1 << 20
"""Entries (rows x buckets) of a code table's re-indexing built at once
(:meth:`CodeTable.bucket_search`: its guide, its buckets, the C kernel's bucket arrays): bounds
the int64 temporaries of a large table (a chip's blocks) to some tens of MB."""


class CodeTable:
    """``P(code | count)`` for the counts ``m_min .. m_min + n_m - 1`` of one conversion
    kind, as cumulative 32-bit thresholds (built by :func:`code_table`).

    Row ``r = m - m_min`` holds thresholds ``thr[start[r]:start[r+1]]`` (non-decreasing, in
    ``[1, 2^32 - 1]``) and ``code = k_lo[r] + #{j : u >= thr[j]}`` for a uniform ``u`` in
    ``[0, 2^32)``: code ``k_lo[r] + i`` has probability ``(thr[i] - thr[i-1]) / 2^32`` (with
    ``thr[-1] = 0`` and ``2^32`` after the last). All tensors are CPU; :meth:`to` gives the
    torch lookup tensors on a device and :meth:`native` the C view.
    """

    def __init__(self, thr: Tensor, start: Tensor, k_lo: Tensor, m_min: int, max_code: int):
        self.thr = thr.to(torch.int64).contiguous()
        self.start = start.to(torch.int32).contiguous()
        self.k_lo = k_lo.to(torch.int32).contiguous()
        self.m_min, self.n_m, self.max_code = int(m_min), int(k_lo.numel()), int(max_code)
        rows = torch.repeat_interleave(
            torch.arange(self.n_m, dtype=torch.int64), self.start.diff().long()
        )
        # the torch twin: one sorted key per threshold, ``row << 32 | thr``
        self.keys = (rows << 32) | self.thr
        self.base = self.k_lo.long() - self.start[:-1].long()
        width = int(self.start.diff().max()) if self.n_m else 0
        bits = max(1, min(CONSTANTS["ASIM_GUIDE_MAX_BITS"], math.ceil(math.log2(width + 1)) + 1))
        while bits > 1 and (self.n_m << bits) > (1 << CONSTANTS["ASIM_GUIDE_MAX_LOG2"]):
            bits -= 1
        self.guide_bits = bits
        guide = [
            (at - self.start[r0:r1].long().unsqueeze(1)).to(torch.int32).flatten()
            for r0, r1, at, _ in self.bucket_search(bits, inside=False)
        ]
        self.guide = torch.cat(guide) if guide else torch.zeros(0, dtype=torch.int32)
        self._devices: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self._native: CodeTableStruct | None = None
        self._buckets: tuple[int, Tensor, Tensor] | None = None
        self._forms: dict = {}
        self._lock = threading.Lock()

    @property
    def n_thresholds(self) -> int:
        return self.thr.numel()

    def bucket_search(self, bits: int, inside: bool = True):
        """The thresholds around every bucket ``b`` (the top ``bits`` bits of ``u``, its
        smallest ``u`` is ``b << (32 - bits)``) of every row, a chunk of rows at a time
        (:data:`ROW_CHUNK` entries): ``(r0, r1, at, n)`` for rows ``r0 .. r1 - 1``, ``at[r, b]``
        the index in ``thr`` of the first threshold above the bucket's smallest ``u`` (the code
        there is ``base[r] + at``) and ``n[r, b]`` how many lie inside the bucket (None unless
        ``inside``)."""
        low = 32 - bits
        lo = torch.arange(1 << bits, dtype=torch.int64) << low
        step = max(1, ROW_CHUNK >> bits)
        for r0 in range(0, self.n_m, step):
            r1 = min(r0 + step, self.n_m)
            r = torch.arange(r0, r1, dtype=torch.int64).unsqueeze(1) << 32
            at = torch.searchsorted(self.keys, (r | lo).flatten(), right=True).view(r1 - r0, -1)
            n = None
            if inside:
                hi = (r | (lo + (1 << low) - 1)).flatten()
                n = torch.searchsorted(self.keys, hi, right=True).view(r1 - r0, -1) - at
            yield r0, r1, at, n

    def to(self, device) -> tuple[Tensor, Tensor]:
        """``(keys, base)`` on ``device``: what :func:`sample_codes` needs (cached)."""
        device = torch.device(device)
        with self._lock:
            if device not in self._devices:
                self._devices[device] = (self.keys.to(device), self.base.to(device))
            return self._devices[device]

    def native(self) -> CodeTableStruct:
        """The ``asim_code_table`` view for C (valid while this table lives; cached)."""
        with self._lock:
            if self._native is None:
                thr32 = torch.where(self.thr >= 1 << 31, self.thr - _TWO32, self.thr).int()
                self._keep = (thr32.contiguous(), self.start, self.k_lo, self.guide)

                def ptr(t: Tensor, ctype):
                    return ctypes.cast(ctypes.c_void_p(t.data_ptr()), ctypes.POINTER(ctype))

                self._native = CodeTableStruct(
                    ptr(self._keep[0], ctypes.c_uint32),
                    ptr(self.start, ctypes.c_int32),
                    ptr(self.k_lo, ctypes.c_int32),
                    ptr(self.guide, ctypes.c_int32),
                    self.m_min,
                    self.n_m,
                    self.guide_bits,
                    self.max_code,
                )
            return self._native

    def form(self, key, build: Callable[[], object]):
        """The derived encoding ``key`` of this table (e.g. a kernel's re-indexing), built by
        ``build()`` on first use and kept with the table, so every program sharing the table
        shares it."""
        hit = self._forms.get(key, self._forms)  # the dict itself: not built yet (None is a form)
        if hit is self._forms:
            built = build()  # outside the lock: build may use the table's cached views
            with self._lock:
                hit = self._forms.setdefault(key, built)
        return hit

    def buckets(self) -> tuple[int, Tensor, Tensor]:
        """``(bits, code, hard)`` (CPU, cached): for row ``r`` and bucket ``b`` (the top
        ``bits`` bits of ``u``), entry ``r << bits | b`` holds the code of the bucket's
        smallest ``u`` and whether a threshold lies inside the bucket."""
        with self._lock:
            if self._buckets is None:
                bits = 12
                while bits > 1 and (self.n_m << bits) > (1 << 22):
                    bits -= 1
                code = [torch.zeros(0, dtype=torch.int32)]
                hard = [torch.zeros(0, dtype=torch.bool)]
                for r0, r1, at, n in self.bucket_search(bits):
                    code.append((self.base[r0:r1].unsqueeze(1) + at).to(torch.int32).flatten())
                    hard.append(n.flatten() > 0)
                self._buckets = (bits, torch.cat(code), torch.cat(hard))
            return self._buckets

    def probabilities(self) -> Tensor:
        """Dense ``[n_m, max_code + 1]`` float64 matrix of ``P(code = k | m_min + r)`` as the
        thresholds encode it (rows sum to 1 exactly)."""
        p = torch.zeros(self.n_m, self.max_code + 1, dtype=torch.float64)
        start, length = self.start.long(), self.start.diff().long()
        rows = torch.repeat_interleave(torch.arange(self.n_m), length)
        i = torch.arange(self.n_thresholds) - start[rows]  # position inside the row
        prev = torch.where(i == 0, 0, self.thr.roll(1))
        k_lo = self.k_lo.long()
        p.index_put_((rows, k_lo[rows] + i), (self.thr - prev).double(), accumulate=True)
        padded = torch.cat([torch.zeros(1, dtype=torch.int64), self.thr])
        last = torch.where(length > 0, padded[start[1:]], 0)  # the row's last threshold
        p.index_put_(
            (torch.arange(self.n_m), k_lo + length), (_TWO32 - last).double(), accumulate=True
        )
        return p / _TWO32

    def __repr__(self) -> str:
        return (
            f"CodeTable(counts {self.m_min}..{self.m_min + self.n_m - 1}, codes 0.."
            f"{self.max_code}, {self.n_thresholds} thresholds)"
        )


def _thresholds(c0: Tensor, cdf: Tensor, m_min: int, max_code: int) -> CodeTable:
    """A table from per-row cumulative probabilities ``cdf[r, j] = P(code <= c0[r] + j)``
    (non-decreasing along j, last column 1)."""
    thr = torch.round(cdf.clamp(0.0, 1.0) * float(_TWO32)).long()
    thr = torch.cummax(thr, dim=1).values
    thr[:, -1] = _TWO32
    j = torch.arange(cdf.shape[1]).unsqueeze(0)
    j_lo = (thr == 0).sum(1, keepdim=True)  # codes of probability 0 below the window
    j_hi = (thr < _TWO32).sum(1, keepdim=True)  # index of the first threshold at 2^32
    keep = (j >= j_lo) & (j < j_hi)
    start = torch.zeros(c0.numel() + 1, dtype=torch.int64)
    start[1:] = torch.cumsum(keep.sum(1), 0)
    return CodeTable(thr[keep], start, c0 + j_lo.squeeze(1), m_min, max_code)


_TABLES: collections.OrderedDict[tuple, CodeTable] = collections.OrderedDict()
_TABLES_LOCK = threading.Lock()
_TABLES_MAX = 64


def code_table(
    model: ReadoutNoise,
    full_scale: int,
    adc_levels: int,
    levels: int,
    nrow: int,
    alpha: float = 0.0,
    late_compression: bool = False,
    *,
    reciprocal: bool = False,
    adc_rows: int | None = None,
    thresholds: tuple[float, ...] | None = None,
    fine: int = 1,
    sigma_scales: tuple[float, ...] = (1.0,),
    range_ratios: tuple[float, ...] | None = None,
) -> CodeTable:
    """The exact code distribution of one conversion kind, for every count ``0..top``.

    The chain (spec §4.1, §4.5-§4.7, §5, §8.1, Q11, Q28) for integer count ``m``, in float32
    up to the noise-free value and exact (float64) for the noise:
    ``m' = m / (m * alpha + 1)`` (when ``alpha > 0`` and not ``late_compression``);
    ``a = clamp(fl(m' / F), 0, 1)``; the model's offset and sigma at the per-level count
    ``fl(clamp(fl(m' / (levels * nrow)), 0, 1) * nrow)`` (``fl(a * nrow)`` when the ADC's
    full scale is ``nrow``), scaled by ``nrow / adc_rows`` into the ADC's units (§4.5);
    ``y = clamp(a + offset + sigma * Z, 0, 1)``; ``y <- y / (alpha y + 1)`` when
    ``late_compression`` (Q28's ``normalised`` sign cycle); ``code = rne(y * A)``, or with
    ``thresholds`` the table ADC's code of ``y * A`` (§4.6).
    For :class:`HistogramNoise`: ``code = clamp(c(a) + delta, 0, A)`` with ``c(a)`` the
    noise-free code (then compressed like ``y = code / A`` when ``late_compression``).

    Rows: counts ``0 .. max(F, levels * nrow)`` (counts above ``F`` clip, §4.5). With
    ``fine = S > 1`` (a chip's fixed pattern, §4.7) the rows are instead the fine indices
    ``n = 0 .. S * F`` of the grid of ``1/S`` counts (``a = fl(n / (S * F))``), once per
    entry of ``sigma_scales`` (the sigma multiples of the chip's ADCs), stacked: row
    ``j * (S * F + 1) + n``. Block ``j`` of an ADC with its own full scale ``N_j`` (§4.8,
    ``range_ratios[j] = r = fl64(N / N_j)``) takes the model's offset and sigma at the
    column's per-level count ``level / r`` and scales them by ``r`` as well: the noise keeps its
    analog size, ``nrow / N_j`` in the column's units (a histogram's delta is read in LSB as
    given, §4.5, at the column's count).

    Args:
        model: the noise model.
        full_scale: ``F = levels * adc_rows``, the cycle's ADC full scale in counts.
        adc_levels: ``A = 2^adc_bits - 1``.
        levels: ``2^width - 1`` of the cycle (1 bit-serial).
        nrow: rows per tile.
        alpha: current-domain gain compression (NoiseConfig.compression_alpha).
        late_compression: compress the normalised value after the noise instead of the
            count (NoiseConfig.sign_cycle_compression="normalised", the sign cycle only).
        reciprocal: MacroConfig.division="reciprocal" (Q10) for ``fl(m' / F)``.
        adc_rows: MacroConfig.adc_full_scale (None: ``nrow``).
        thresholds: MacroConfig.adc_thresholds (None: the uniform ADC).
        fine: the fixed pattern's grid, ``2^ASIM_FINE_BITS`` (1: plain counts).
        sigma_scales: per stacked block, the multiple of the model's sigma.
        range_ratios: per stacked block, ``N / N_j`` of its ADCs (§4.8; None: all 1).

    Deterministic (no random numbers) and cached. Raises ValueError when the table would
    need more than ``2^ASIM_TABLE_MAX_LOG2`` thresholds (huge ADCs with large noise).
    """
    rows_per_level = nrow if adc_rows is None else int(adc_rows)
    if full_scale != levels * rows_per_level or full_scale < 1 or adc_levels < 1:
        raise ValueError(
            f"code_table: full_scale={full_scale} must equal levels*nrow={levels}*{nrow} "
            f"(levels*adc_rows when adc_rows is set) >= 1 and adc_levels={adc_levels} must be >= 1"
        )
    alpha = float(alpha)
    late = bool(late_compression) and alpha > 0
    if thresholds is not None:
        thresholds = tuple(float(t) for t in thresholds)
        if len(thresholds) != adc_levels:
            raise ValueError(f"code_table: {len(thresholds)} thresholds for A={adc_levels}")
    sigma_scales = tuple(float(x) for x in sigma_scales)
    ratios = (1.0,) * len(sigma_scales) if range_ratios is None else tuple(map(float, range_ratios))
    if len(ratios) != len(sigma_scales) or min(ratios) < 1.0:
        raise ValueError(
            f"code_table: range_ratios {ratios} must be >= 1, one per sigma scale {sigma_scales}"
        )
    key = (
        model.cache_key(), full_scale, adc_levels, nrow, alpha, late, bool(reciprocal),
        rows_per_level, thresholds, int(fine), sigma_scales, ratios,
    )  # fmt: skip
    with _TABLES_LOCK:
        if key in _TABLES:
            _TABLES.move_to_end(key)
            return _TABLES[key]
    spec = _Chain(
        full_scale, adc_levels, levels, nrow, rows_per_level, alpha, late, bool(reciprocal),
        thresholds,
    )  # fmt: skip
    parts = [
        _build_rows(model, spec, int(fine), scale, ratio)
        for scale, ratio in zip(sigma_scales, ratios, strict=True)
    ]
    if len(parts) == 1:
        c0, cdf = parts[0]
    else:
        width = max(p[1].shape[1] for p in parts)
        c0 = torch.cat([p[0] for p in parts])
        cdf = torch.cat(
            [torch.nn.functional.pad(p[1], (0, width - p[1].shape[1]), value=1.0) for p in parts]
        )
    if len(parts) > 1 and cdf.shape[0] * cdf.shape[1] > 1 << CONSTANTS["ASIM_TABLE_MAX_LOG2"]:
        raise ValueError(
            f"code_table: {len(parts)} noise blocks (the distinct noise multiples and per-ADC "
            f"full scales of one layer's ADCs) x {cdf.shape[0] // len(parts)} fine indices x "
            f"{cdf.shape[1]} codes exceed {1 << CONSTANTS['ASIM_TABLE_MAX_LOG2']} thresholds; "
            "use fewer distinct per-ADC full scales (calibrate per layer) or a smaller "
            "noise.column_sigma_spread"
        )
    _check_size(cdf.shape[0], cdf.shape[1])
    table = _thresholds(c0, cdf, 0, adc_levels)
    with _TABLES_LOCK:
        _TABLES[key] = table
        while len(_TABLES) > _TABLES_MAX:
            _TABLES.popitem(last=False)
    return table


def _check_size(rows: int, width: int) -> None:
    limit = 1 << CONSTANTS["ASIM_TABLE_MAX_LOG2"]
    if rows * width > limit:
        raise ValueError(
            f"code_table: {rows} counts x {width} codes exceeds {limit} thresholds; use a "
            "smaller ADC or less noise for exact sampling"
        )


class _Chain:
    """The noise-free part of one conversion kind's chain (see :func:`code_table`)."""

    def __init__(self, F, A, levels, nrow, adc_rows, alpha, late, rec, thresholds):
        self.F, self.A, self.levels, self.nrow, self.adc_rows = F, A, levels, nrow, adc_rows
        self.alpha, self.late, self.rec = alpha, late, rec
        self.taus = None if thresholds is None else table_taus(thresholds, A)

    def compress(self, y: Tensor) -> Tensor:
        return y / (self.alpha * y + 1.0) if self.late else y

    def code64(self, x: Tensor) -> Tensor:
        """The noise-free code of ``x = y * A`` (float64): rne, or the table rule (§4.6)."""
        if self.taus is None:
            return torch.round(x).long()
        return table_codes(x, self.taus.double())


def table_taus(thresholds: tuple[float, ...], adc_levels: int) -> Tensor:
    """The table ADC's thresholds in code units, ``τ_k = fl32(θ_k * A)`` (spec §4.6)."""
    return (torch.tensor(thresholds, dtype=torch.float64) * adc_levels).float()


def table_codes(x: Tensor, taus: Tensor) -> Tensor:
    """The table ADC's code of ``x = a * A`` (spec §4.6): the number of thresholds ``τ_k``
    below ``x``, plus those equal to it with ``k`` even (the tie rule of ``rne``, so uniform
    thresholds ``τ_k = k - 1/2`` give ``rne(x)``). int64, ``x``'s shape."""
    xs = x.unsqueeze(-1)
    k = torch.arange(1, taus.numel() + 1, device=x.device)
    even = (k % 2 == 0).to(x.device)
    return ((xs > taus) | ((xs == taus) & even)).sum(-1)


def _build_table(model, F: int, A: int, nrow: int, alpha: float, late: bool, rec: bool):
    """The uncached table of :func:`code_table` at full scale ``F = levels * nrow``."""
    spec = _Chain(F, A, F // nrow, nrow, nrow, alpha, late, rec, None)
    return _thresholds(*_build_rows(model, spec, 1, 1.0), 0, A)


def _build_rows(
    model, spec: _Chain, fine: int, sigma_scale: float, ratio: float = 1.0
) -> tuple[Tensor, Tensor]:
    """``(c0, cdf)`` of every row of one block (see :func:`code_table`); ``ratio`` is the
    block's ``N / N_j`` (§4.8)."""
    F, A, nrow, alpha, late, rec = spec.F, spec.A, spec.nrow, spec.alpha, spec.late, spec.rec
    f_array = spec.levels * nrow
    if fine > 1:
        n = torch.arange(fine * F + 1, dtype=torch.float32)
        a32 = _divide(n, float(fine * F), rec).clamp_(0, 1)
        level = (_divide(n, float(fine * f_array), rec).clamp_(0, 1) * nrow).double()
    else:
        m = torch.arange(max(F, f_array) + 1, dtype=torch.float32)
        if alpha > 0 and not late:
            m = m / (m * alpha + 1.0)
        a32 = _divide(m, float(F), rec).clamp_(0, 1)
        if f_array == F:
            level = (a32 * nrow).double()  # the per-level count (Q11), as the engine computes it
        else:
            level = (_divide(m, float(f_array), rec).clamp_(0, 1) * nrow).double()
    if ratio != 1.0:  # §4.8: the column's own count per level
        level = level / ratio
    a = a32.double()
    compress = spec.compress

    if isinstance(model, HistogramNoise):
        d0, pmf = model.delta_pmf(level)
        _check_size(a.numel(), pmf.shape[1])
        if spec.taus is None:
            ideal = torch.round(a32 * A).long()  # the noise-free code rne(fl(a * A))
        else:
            ideal = table_codes(a32 * A, spec.taus)
        codes = (ideal.unsqueeze(1) + d0 + torch.arange(pmf.shape[1])).clamp_(0, A)
        lsb = _lsb_levels(model, A)
        if lsb != A:  # measured at another ADC: the analog offset delta / A_m, converted at A
            shift = (d0 + torch.arange(pmf.shape[1])).double() * (A / lsb)
            codes = spec.code64(a.unsqueeze(1) * A + shift).clamp_(0, A)
        if late:
            codes = spec.code64(compress(codes.double() / A) * A)
        c0 = codes[:, :1]
        dense = torch.zeros_like(pmf).scatter_add_(1, codes - c0, pmf)
        return c0.squeeze(1), dense.cumsum(1)

    offset, sigma = model.moments64(level, A)
    ns = f_array / F  # the noise in units of the ADC's full scale (§4.5)
    if ns != 1.0:
        offset, sigma = offset * ns, sigma * ns
    if ratio != 1.0:  # §4.8: the analog noise in units of the column's full scale
        offset, sigma = offset * ratio, sigma * ratio
    if sigma_scale != 1.0:
        sigma = sigma * sigma_scale
    mu = a + offset
    y_lo = (mu - _Z_WINDOW * sigma).clamp(0, 1)
    y_hi = (mu + _Z_WINDOW * sigma).clamp(0, 1)
    if spec.taus is None:
        c_lo = (torch.floor(compress(y_lo) * A) - 1).clamp(0, A).long()
        c_hi = (torch.ceil(compress(y_hi) * A) + 1).clamp(0, A).long()
    else:
        c_lo = (spec.code64(compress(y_lo) * A) - 1).clamp(0, A)
        c_hi = (spec.code64(compress(y_hi) * A) + 1).clamp(0, A)
    width = int((c_hi - c_lo).max()) + 1
    _check_size(a.numel(), width)
    k = c_lo.unsqueeze(1) + torch.arange(width)
    if spec.taus is None:
        edge = (k.double() + 0.5) / A  # code k <=> compress(y) < edge
    else:  # code k <=> compress(y) * A < tau_{k+1}; none above the top code
        ext = torch.cat([spec.taus.double(), torch.tensor([math.inf], dtype=torch.float64)])
        edge = ext[k.clamp(max=A)] / A
    if late:
        edge = torch.where(alpha * edge < 1, edge / (1 - alpha * edge), math.inf)
    s = sigma.unsqueeze(1)
    z = (edge - mu.unsqueeze(1)) / torch.where(s > 0, s, 1.0)
    cdf = torch.where(edge > 1, 1.0, torch.special.ndtr(z))
    exact = spec.code64(compress(mu.clamp(0, 1)) * A).unsqueeze(1)  # sigma == 0
    cdf = torch.where(s > 0, cdf, (k >= exact).double())
    cdf = torch.where(k >= c_hi.unsqueeze(1), 1.0, cdf)
    return c_lo, cdf


def signed_code_table(
    model: GaussianNoise, full_scale: int, half_levels: int, *, reciprocal: bool = False
) -> CodeTable:
    """The exact code distribution of the weight-parallel signed ADC (spec §8.3) for every
    integer MAC ``y`` in ``[-F, F]`` (clamp larger ones: they convert like ``+-F``):
    ``a = clamp(fl(y / F), -1, 1)``, ``clamp(a + sigma Z, -1, 1)``, ``q = rne(. * H)``.

    Codes are stored shifted, ``code = q + H`` in ``[0, 2H]`` (``m_min = -F``), so
    :func:`sample_codes` and ``asim_sample_code`` serve it unchanged; subtract ``H``.
    Random Gaussian noise only (the mode has no count-dependent term). Cached.
    """
    if not isinstance(model, GaussianNoise) or model.nl_var > 0:
        raise ValueError(
            "signed_code_table: the weight-parallel ADC models random Gaussian noise only; "
            "set noise.nonlinear_sigma=0 and noise.file=null"
        )
    if full_scale < 1 or half_levels < 1:
        raise ValueError(
            f"signed_code_table: full_scale={full_scale} and half_levels={half_levels} must be >= 1"
        )
    key = ("signed", model.cache_key(), full_scale, half_levels, bool(reciprocal))
    with _TABLES_LOCK:
        if key in _TABLES:
            _TABLES.move_to_end(key)
            return _TABLES[key]
    F, H = full_scale, half_levels
    y = torch.arange(-F, F + 1, dtype=torch.float32)
    a = _divide(y, float(F), bool(reciprocal)).clamp_(-1, 1).double()
    sigma = math.sqrt(model.rand_var)
    lo = torch.floor((a - _Z_WINDOW * sigma).clamp(-1, 1) * H) - 1
    hi = torch.ceil((a + _Z_WINDOW * sigma).clamp(-1, 1) * H) + 1
    q_lo, q_hi = lo.clamp(-H, H).long(), hi.clamp(-H, H).long()
    width = int((q_hi - q_lo).max()) + 1
    _check_size(2 * F + 1, width)
    q = q_lo.unsqueeze(1) + torch.arange(width)
    edge = (q.double() + 0.5) / H  # q <=> value < edge
    if sigma > 0:
        cdf = torch.where(edge > 1, 1.0, torch.special.ndtr((edge - a.unsqueeze(1)) / sigma))
    else:
        cdf = (q >= torch.round(a * H).long().unsqueeze(1)).double()
    cdf = torch.where(q >= q_hi.unsqueeze(1), 1.0, cdf)
    table = _thresholds(q_lo + H, cdf, -F, 2 * H)
    with _TABLES_LOCK:
        _TABLES[key] = table
        while len(_TABLES) > _TABLES_MAX:
            _TABLES.popitem(last=False)
    return table


# ----------------------------------------------------------------------------- sampling


def sample_codes(table: CodeTable, m: Tensor, u: Tensor) -> Tensor:
    """The ADC code (int32) of each integer count ``m`` (in the table's range) for uniforms
    ``u`` in ``[0, 2^32)`` (int64, e.g. :func:`asim.rng.draw_u32`), broadcast; torch twin of
    ``asim_sample_code``: ``code = k_lo[r] + #{j in row r : u >= thr[j]}``.

    On CPU most draws take one lookup in a bucket table (the code at the start of ``u``'s
    bucket); the few whose bucket holds a threshold, and every draw on other devices, are
    counted by a binary search. Both give the same code."""
    keys, base = table.to(u.device)
    r = m.to(device=u.device, dtype=torch.int64) - table.m_min
    r, u = torch.broadcast_tensors(r, u)
    if u.device.type != "cpu" or u.numel() < _BUCKET_MIN_DRAWS:
        idx = torch.searchsorted(keys, ((r << 32) | u).contiguous(), right=True)
        return (base[r] + idx).to(torch.int32)
    bits, code_at, hard_at = table.buckets()
    b = (r << bits) | (u >> (32 - bits))
    code = code_at[b]
    hard = hard_at[b].nonzero(as_tuple=True)
    if hard[0].numel():
        rh, uh = r[hard], u[hard]
        code[hard] = (base[rh] + torch.searchsorted(keys, (rh << 32) | uh, right=True)).int()
    return code


_BUCKET_MIN_DRAWS = 4096


def vote_codes(codes: Tensor) -> Tensor:
    """The mode over dim 0 of ``[K, ...]`` codes; ties go to the smallest code (spec §8.2).
    Torch twin of ``asim_vote``."""
    count = torch.zeros_like(codes, dtype=torch.int32)
    for k in range(codes.shape[0]):
        count += codes == codes[k]
    best = count.max(0, keepdim=True).values
    big = torch.iinfo(codes.dtype).max if not codes.is_floating_point() else math.inf
    return torch.where(count == best, codes, big).min(0).values
