"""The cycle plan of one call and the ADC arithmetic (spec §4-§6, §8.1-§8.2).

A :class:`Plan` is built from the macro and the noise (once per distinct configuration: calls
with equal settings share one, and with it every table derived from it): which activation
bits each cycle applies, the signed power-of-two weight of every (weight bit, cycle)
conversion, what that conversion does (:data:`ADC`, :data:`EXACT`, :data:`NOISY`,
:data:`VOTED`; the same codes as the C kernel's ``ASIM_CYC_*``), and per cycle:

* ``value_by_count[c][m]``: the noise-free ADC output of integer count ``m``: the spec's
  float32 chain ``fl(fl(rne(fl(m'/F) * A) / A) * F)`` with ``m'`` the compressed count
  (§8.1), evaluated once for every count (the torch backend converts by lookup; the C
  kernel evaluates the same single operations in the same order, which is faster there);
* ``value_by_code[c][k]``: the output ``fl(fl(k/A) * F)`` of ADC code ``k``;
* ``code_table(c)``: the exact distribution of the noisy code of every count
  (:func:`asim.noise.code_table`), sampled with one 32-bit uniform.

Both backends accumulate in the spec's order, so they agree bit for bit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._native import CONST
from ..config import Division, MacroConfig, NoiseConfig, SignCycleCompression
from ..noise import build_noise
from ..quant import divide as div  # the one division helper (spec Q10)

__all__ = [
    "ADC",
    "EXACT",
    "NOISY",
    "VOTED",
    "ANALOG",
    "DIGITAL",
    "VOTED_ANALOG",
    "Cycle",
    "Plan",
    "activation_cycles",
    "adc_value_table",
    "code_value_table",
    "linear_tiles",
]

ADC, EXACT, NOISY, VOTED = (CONST[f"ASIM_CYC_{n}"] for n in ("ADC", "EXACT", "NOISY", "VOTED"))
FINE_BITS, GAIN_BITS, SIGMA_STEPS = (
    CONST[f"ASIM_{n}"] for n in ("FINE_BITS", "GAIN_BITS", "SIGMA_STEPS")
)
"""The fixed pattern's grid (spec §4.7): a patterned ADC converts at the fine index of a grid
of ``2^-FINE_BITS`` counts, its gain in steps of ``2^-(FINE_BITS + GAIN_BITS)``, its noise
sigma in multiples of ``1 / SIGMA_STEPS``."""
"""What one (weight bit, cycle) conversion does: noise-free ADC, digital exact count (Q4),
one noisy code, or K noisy codes and their mode (§8.2)."""

ANALOG, VOTED_ANALOG, DIGITAL = "analog", "voted", "digital"
"""What the macro's design makes of one (weight bit, cycle) pair, whatever the noise: one
analog conversion, ``vote_samples`` analog conversions and a vote (§8.2), or a hybrid
digital partial sum (§6). The cost model counts these (:meth:`Plan.kind`)."""


@dataclass(frozen=True)
class Cycle:
    """One activation cycle of a bit-serial or bit-parallel scheme (spec §4, §5).

    Attributes:
        bits: activation bit positions applied together, ascending.
        shift: activation part of the power-of-two shift.
        sign: True for the separate sign-plane cycle of signed bit-parallel inputs.
    """

    bits: tuple[int, ...]
    shift: int
    sign: bool = False

    @property
    def levels(self) -> int:
        """``2^width - 1``: multi-level input range; the full scale is ``levels * nrow``."""
        return (1 << len(self.bits)) - 1


def activation_cycles(input_bits: int, enc_bits: int | None, signed: bool) -> list[Cycle]:
    """Cycles indexed ``c = 0 .. C-1`` (processed from ``C-1`` down), spec §5.1/§5.2.

    Bit-serial is the special case ``enc_bits = 1``; leftover bits go to the top cycle.
    """
    e = enc_bits or 1
    mag = input_bits - 1 if signed else input_bits
    n, r = -(-mag // e), mag % e
    cycles = []
    for c in range(n):
        width = r if (c == n - 1 and r) else e
        cycles.append(Cycle(tuple(range(c * e, c * e + width)), c * e))
    if signed:
        cycles.append(Cycle((input_bits - 1,), input_bits - 1, sign=True))
    return cycles


def linear_tiles(rows: int, nrow: int) -> list[tuple[int, int]]:
    """Consecutive tiles of ``nrow`` reduction rows (spec §3.2)."""
    return [(s, min(s + nrow, rows)) for s in range(0, rows, nrow)]


@functools.lru_cache(maxsize=256)
def adc_value_table(
    full_scale: int, adc_levels: int, reciprocal: bool, alpha: float, late: bool, top: int
) -> Tensor:
    """Noise-free ADC output of every integer count ``0..top`` (float32, CPU), spec §4.1
    steps 2-5 with current-domain compression (§8.1): on the count (``late=False``) or, for
    the Q28 compatibility sign cycle, on the normalised value (``late=True``)."""
    m = torch.arange(top + 1, dtype=torch.float32)
    if alpha and not late:
        m = m / (m * alpha + 1.0)
    a = div(m, full_scale, reciprocal).clamp_(0, 1)
    if alpha and late:
        a = a / (a * alpha + 1.0)
    q = a.mul_(adc_levels).round_()
    return div(q, adc_levels, reciprocal).mul_(full_scale)


@functools.lru_cache(maxsize=256)
def code_multiplier(full_scale: int, adc_levels: int, top: int) -> float:
    """``fl(A/F)`` if the native kernel's shortcut ``fl(fl(rne(m * fl(A/F)) / A) * F)`` equals
    the spec's noise-free value (:func:`adc_value_table`, no compression, IEEE division) for
    every count ``m`` in ``[0, top]`` (checked exhaustively), else 0: one division fewer
    per conversion."""
    m = torch.arange(top + 1, dtype=torch.float32)
    mul = (torch.tensor(float(adc_levels)) / torch.tensor(float(full_scale))).item()
    fast = (m * mul).round_().div_(adc_levels).mul_(full_scale)
    want = adc_value_table(full_scale, adc_levels, False, 0.0, False, max(top, full_scale))
    return mul if torch.equal(fast, want[: top + 1]) else 0.0


def integer_code_form(mul: float, top: int) -> tuple[int, int, int] | None:
    """``(k, b, s)`` with ``(m * k + b) >> s == rne(fl(m * mul))`` (the native kernel's code of
    count ``m`` with multiplier ``mul`` from :func:`code_multiplier`) for every count ``m``
    in ``[0, top]`` (checked exhaustively, ``m * k + b < 2^32``), or None: the kernel then
    computes codes in integer arithmetic instead of convert, multiply and round."""
    if not mul > 0 or top <= 0:
        return None
    m = torch.arange(top + 1, dtype=torch.int64)
    want = (m.float() * mul).round_().long()
    for s in range(8, 32):
        b = 1 << (s - 1)
        for k in (int(mul * (1 << s)), int(mul * (1 << s)) + 1):
            if k > 0 and top * k + b < 1 << 32 and torch.equal((m * k + b) >> s, want):
                return k, b, s
    return None


@functools.lru_cache(maxsize=256)
def code_value_table(
    full_scale: int, adc_levels: int, reciprocal: bool, values: tuple[float, ...] | None = None
) -> Tensor:
    """Output ``fl(fl(k/A) * F)`` of every ADC code ``k = 0..A`` (float32, CPU), spec §4.1;
    with a table ADC's ``values`` (§4.6) ``fl(fl32(values[k]) * F)``."""
    if values is not None:
        return torch.tensor(values, dtype=torch.float64).float().mul_(full_scale)
    q = torch.arange(adc_levels + 1, dtype=torch.float32)
    return div(q, adc_levels, reciprocal).mul_(full_scale)


@functools.lru_cache(maxsize=256)
def table_value_table(
    full_scale: int,
    adc_levels: int,
    reciprocal: bool,
    alpha: float,
    late: bool,
    top: int,
    thresholds: tuple[float, ...],
    values: tuple[float, ...],
) -> Tensor:
    """Noise-free output of every count ``0..top`` of a table ADC (spec §4.6): the chain of
    :func:`adc_value_table` up to ``x = fl(a * A)``, then the table's code and value."""
    from ..noise import table_codes, table_taus

    m = torch.arange(top + 1, dtype=torch.float32)
    if alpha and not late:
        m = m / (m * alpha + 1.0)
    a = div(m, full_scale, reciprocal).clamp_(0, 1)
    if alpha and late:
        a = a / (a * alpha + 1.0)
    codes = table_codes(a.mul_(adc_levels), table_taus(thresholds, adc_levels))
    return code_value_table(full_scale, adc_levels, reciprocal, values)[codes]


@dataclass(frozen=True)
class PatternSpec:
    """A chip's fixed per-ADC pattern (spec §4.7), from :class:`~asim.NoiseConfig`."""

    offset_lsb: float
    gain_pct: float
    sigma_spread: float
    group: int
    trim_lsb: float | None

    @classmethod
    def of(cls, noise: NoiseConfig | None) -> PatternSpec | None:
        if noise is None or not noise.fixed_pattern:
            return None
        return cls(
            noise.column_offset_lsb,
            noise.column_gain_pct,
            noise.column_sigma_spread,
            noise.adc_group,
            noise.column_trim_lsb,
        )


@dataclass
class Plan:
    """Everything an engine call derives from the macro and the noise, built once per
    distinct configuration (:func:`build_plan` caches it; treat it as read-only).

    Attributes:
        cycles: the activation cycles.
        coef: ``coef[i][c] = +-2^(i + shift_c)``, the shift-and-add weight (spec §4.2).
        mode: ``mode[i][c]``, one of :data:`ADC`, :data:`EXACT`, :data:`NOISY`, :data:`VOTED`.
        kind: ``kind[i][c]``, the design's :data:`ANALOG`, :data:`VOTED_ANALOG` or
            :data:`DIGITAL` (the same with noise on or off; ``mode`` follows from it).
        full_scale: per cycle, the ADC's full scale in counts (``levels * adc_rows``, §4.5).
        array_scale: per cycle, the array's full scale in counts (``levels * nrow``).
        pattern: the chip's fixed per-ADC pattern (§4.7), or None.
        readout: the read-out noise model (None: noise-free).
        alpha: current-domain compression (0: off); ``late_sign``: the sign cycle is
            compressed after the noise (Q28 compatibility).
        votes: K, conversions per voted cycle (1 without voting); it also numbers the draws.
    """

    macro: MacroConfig
    signed: bool
    cycles: list[Cycle]
    coef: list[list[float]]
    mode: list[list[int]]
    kind: list[list[str]]
    full_scale: list[int]
    array_scale: list[int]
    pattern: PatternSpec | None
    readout: object | None
    alpha: float
    late_sign: bool
    cell_sigma: float
    votes: int
    reciprocal: bool
    _tables: dict = field(default_factory=dict, repr=False)

    @property
    def ncyc(self) -> int:
        return len(self.cycles)

    @functools.cached_property
    def noisy(self) -> bool:
        """Does any conversion draw a random code? (Asked on every call: computed once.)"""
        return any(m in (NOISY, VOTED) for row in self.mode for m in row)

    def late(self, c: int) -> bool:
        return self.late_sign and c == self.ncyc - 1

    def table_key(self, c: int) -> tuple:
        """What cycle ``c``'s tables depend on: cycles with equal keys (every cycle of a
        bit-serial macro) share one table, so a call's cycles read the same memory."""
        return (self.full_scale[c], self.cycles[c].levels, self.late(c))

    def value_by_count(self, c: int, top: int) -> Tensor:
        """Noise-free output of every count ``0..max(top, F_c)`` of cycle ``c``."""
        f, macro = self.full_scale[c], self.macro
        if macro.adc_thresholds is not None:
            return table_value_table(
                f, macro.adc_levels, self.reciprocal, self.alpha, self.late(c), max(top, f),
                macro.adc_thresholds, macro.adc_values,
            )  # fmt: skip
        return adc_value_table(
            f, macro.adc_levels, self.reciprocal, self.alpha, self.late(c), max(top, f)
        )

    def value_by_code(self, c: int, column_scale: int | None = None) -> Tensor:
        """Output of every ADC code of cycle ``c`` (full scale ``F_c``), or in a column whose
        ADC has its own full scale ``column_scale`` (a column count, spec §4.8:
        ``F_{j,c} = levels_c * column_scale``)."""
        f = (
            self.full_scale[c]
            if column_scale is None
            else self.cycles[c].levels * int(column_scale)
        )
        return code_value_table(f, self.macro.adc_levels, self.reciprocal, self.macro.adc_values)

    def code_values(self, classes: tuple[int, ...] = ()) -> list[Tensor]:
        """:meth:`value_by_code` of every cycle; with per-ADC full scales (spec §4.8) every
        cycle of every class in ``classes`` (column counts), laid out ``[class][cycle]``."""
        if not classes:
            return [self.value_by_code(c) for c in range(self.ncyc)]
        return [self.value_by_code(c, n) for n in classes for c in range(self.ncyc)]

    @property
    def fine(self) -> int:
        """The fixed pattern's grid: fine indices per count (spec §4.7)."""
        return 1 << FINE_BITS

    def fine_codes(self, c: int) -> Tensor:
        """The noise-free code (int64) of every fine index ``n = 0..S*F_c`` of cycle ``c`` (a
        patterned ADC, spec §4.7): ``a = clamp(fl(n / (S*F)), 0, 1)``, then §4.1 step 4 or
        §4.6."""
        key = ("fine_codes", self.full_scale[c])
        if key not in self._tables:
            from ..noise import table_codes, table_taus

            f, macro, S = self.full_scale[c], self.macro, self.fine
            n = torch.arange(S * f + 1, dtype=torch.float32)
            x = div(n, S * f, self.reciprocal).clamp_(0, 1).mul_(macro.adc_levels)
            if macro.adc_thresholds is None:
                codes = x.round_().long()
            else:
                codes = table_codes(x, table_taus(macro.adc_thresholds, macro.adc_levels))
            self._tables[key] = codes
        return self._tables[key]

    def fine_values(self, c: int) -> Tensor:
        """Noise-free output of every fine index ``n = 0..S*F_c`` of cycle ``c`` (a patterned
        ADC, spec §4.7): the value of its code (:meth:`fine_codes`)."""
        key = ("fine_values", self.full_scale[c])
        if key not in self._tables:
            self._tables[key] = self.value_by_code(c)[self.fine_codes(c)]
        return self._tables[key]

    def fine_code_table(self, c: int, blocks: tuple[tuple[float, float], ...]):
        """The exact code distribution of every fine index of cycle ``c``, one block of rows
        per ``(sigma multiple, N / N_j)`` in ``blocks`` (spec §4.7, §4.8,
        :func:`asim.noise.code_table`)."""
        scales, ratios = (tuple(b[k] for b in blocks) for k in (0, 1))
        return self._code_table(
            ("fine_code", *self.table_key(c), blocks),
            c,
            fine=self.fine,
            sigma_scales=scales,
            range_ratios=ratios,
        )

    def code_table(self, c: int):
        """The exact code distribution of every count ``0..F_c`` of cycle ``c``."""
        return self._code_table(
            ("code", *self.table_key(c)), c, alpha=self.alpha, late_compression=self.late(c)
        )

    def _code_table(self, key, c: int, **extra):
        """:func:`asim.noise.code_table` of cycle ``c`` with ``extra`` arguments, kept at ``key``
        (equal keys: one table)."""
        from ..noise import code_table

        if key not in self._tables:
            self._tables[key] = code_table(
                self.readout,
                full_scale=self.full_scale[c],
                adc_levels=self.macro.adc_levels,
                levels=self.cycles[c].levels,
                nrow=self.macro.nrow,
                reciprocal=self.reciprocal,
                adc_rows=self.macro.adc_rows,
                thresholds=self.macro.adc_thresholds,
                **extra,
            )
        return self._tables[key]

    def lossless(self) -> bool:
        """Every conversion returns its exact count: no noise, no compression, and each ADC
        cycle's table is the identity (spec §4.3), so the cycles can be skipped."""
        if self.noisy or self.alpha or self.cell_sigma or self.macro.weight_parallel:
            return False
        if self.pattern is not None:
            return False
        for c in range(self.ncyc):
            if any(self.mode[i][c] == ADC for i in range(self.macro.weight_bits)):
                if self.full_scale[c] != self.array_scale[c] or self.macro.adc_thresholds:
                    f = self.array_scale[c]
                    want = torch.arange(f + 1, dtype=torch.float32)
                    if not torch.equal(self.value_by_count(c, f)[: f + 1], want):
                        return False
                elif not _is_identity(self.full_scale[c], self.macro.adc_levels, self.reciprocal):
                    return False
        return True


@functools.lru_cache(maxsize=256)
def _is_identity(full_scale: int, adc_levels: int, reciprocal: bool) -> bool:
    t = adc_value_table(full_scale, adc_levels, reciprocal, 0.0, False, full_scale)
    return bool(torch.equal(t, torch.arange(full_scale + 1, dtype=torch.float32)))


_PLANS: dict = {}
_PLANS_MAX = 256


def build_plan(macro: MacroConfig, noise: NoiseConfig | None, signed: bool) -> Plan:
    """The :class:`Plan` of ``macro`` with ``noise`` for signed or unsigned inputs: one per
    distinct (frozen) configuration and noise file contents, reused by every call with them."""
    # the macro converts LSB sigmas and checks a measurement's operating point (issue 16)
    readout = build_noise(noise, macro)  # file-backed models are cached by path and mtime
    key = (macro, noise, bool(signed), None if readout is None else readout.cache_key())
    plan = _PLANS.get(key)
    if plan is None:
        plan = _new_plan(macro, noise, bool(signed), readout)
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def _new_plan(macro: MacroConfig, noise: NoiseConfig | None, signed: bool, readout) -> Plan:
    w = macro.weight_bits
    cycles = activation_cycles(macro.input_bits, macro.input_enc_bits, signed)
    n = len(cycles)
    if readout is not None and readout.constant_sigma(macro.adc_levels) == 0.0:
        readout = None
    coef, mode, kind = [], [], []
    for i in range(w):
        row_c, row_m, row_k = [], [], []
        for c, cyc in enumerate(cycles):
            msb_w = i == w - 1
            negate = (not msb_w) if cyc.sign else msb_w
            row_c.append((-1.0 if negate else 1.0) * float(2 ** (i + cyc.shift)))
            d = (w - 1 - i) + (n - 1 - c)  # anti-diagonal distance from the MSB x MSB corner
            if d < macro.hybrid_levels:
                row_k.append(DIGITAL)
            elif d < macro.vote_levels and macro.vote_samples > 1:
                row_k.append(VOTED_ANALOG)
            else:
                row_k.append(ANALOG)
            if row_k[-1] == DIGITAL:
                row_m.append(EXACT if macro.hybrid_exact else ADC)
            elif readout is None:
                row_m.append(ADC)
            elif row_k[-1] == VOTED_ANALOG:
                row_m.append(VOTED)
            else:
                row_m.append(NOISY)
        coef.append(row_c)
        mode.append(row_m)
        kind.append(row_k)
    alpha = noise.compression_alpha if noise is not None else 0.0
    late_sign = bool(
        alpha
        and signed
        and macro.input_enc_bits is not None
        and noise.sign_cycle_compression == SignCycleCompression.normalised
    )
    voting = any(m == VOTED for row in mode for m in row)
    pattern = PatternSpec.of(noise)
    full_scale = [c.levels * macro.adc_rows for c in cycles]
    if pattern is not None:
        if macro.weight_parallel:
            raise ValueError(
                "NoiseConfig: the fixed column pattern (column_*) is not modelled for "
                "macro.weight_parallel; set the column_* fields to 0"
            )
        if pattern.sigma_spread and noise.histogram is not None:
            raise ValueError(
                "NoiseConfig: column_sigma_spread cannot scale a measured histogram; set "
                "column_sigma_spread=0 or use noise.file / the Gaussian sigmas"
            )
        if max(full_scale) << FINE_BITS >= 1 << 24:
            raise ValueError(
                f"NoiseConfig: the fixed column pattern needs a full scale below "
                f"{(1 << 24) >> FINE_BITS} counts (got {max(full_scale)}); reduce nrow, "
                "adc_full_scale or input_enc_bits"
            )
    return Plan(
        macro=macro,
        signed=signed,
        cycles=cycles,
        coef=coef,
        mode=mode,
        kind=kind,
        full_scale=full_scale,
        array_scale=[c.levels * macro.nrow for c in cycles],
        pattern=pattern,
        readout=readout,
        alpha=alpha,
        late_sign=late_sign,
        cell_sigma=noise.cell_sigma if noise is not None else 0.0,
        votes=macro.vote_samples if voting else 1,
        reciprocal=macro.division == Division.reciprocal,
    )
