"""A chip's fixed column pattern (spec §4.7): per-ADC offset, gain and noise spread.

Drawn once per chip from the counter-based stream (:mod:`asim.rng`): ADC ``g`` of tile ``t``
takes its three standard normals from the element key ``element_keys(chip, t, g, 0)``, draws
0 (offset), 1 (gain) and 2 (noise spread), so the pattern is a pure function of (chip key,
tile, ADC) and the same on every backend, thread count, batch, process and call. It is
computed once, on the CPU, in float64, into integer per-column constants that every backend
applies with integer arithmetic:

* physical column ``p = o * weight_bits + i`` of a tile (output ``o``, weight bit ``i``),
  its ADC ``g = p // adc_group``;
* ``G = rne((1 + gain) * 2^(FINE_BITS + GAIN_BITS))`` and, per cycle ``c``,
  ``D_c = rne(offset * F_c / A * 2^(FINE_BITS + GAIN_BITS)) + 2^(GAIN_BITS - 1)``;
* a count ``m`` converts at the fine index ``n = min(max(m*G + D_c, 0) >> GAIN_BITS, S*F_c)``
  with ``S = 2^FINE_BITS`` (:meth:`Plan.fine_values`, :meth:`Plan.fine_code_table`);
* its noise sigma is the model's times its ADC's multiple, a multiple of ``1/SIGMA_STEPS``;
  its conversions draw from block ``cls`` of the fine code table, one block per distinct
  ``(multiple, N / N_g)`` (``blocks``, :meth:`Plan.fine_code_table`).

With per-ADC full scales (:class:`ColumnRanges`, spec §4.8) ADC ``g`` of full scale ``N_g``
(column counts, ``N_g <= N``, ``N`` the layer's) converts on the same grid with its gain
scaled by ``N / N_g``: ``G = rne(fl64((1 + gain) * fl64(N / N_g)) * 2^(FINE_BITS +
GAIN_BITS))``, ``D_c`` as above; its code's value uses its own full scale
``levels_c * N_g`` (:meth:`Plan.value_by_code`, one value class per distinct ``N_g``), and
its noise keeps its analog size: ``N / N_g`` times the layer's in its normalised units, at its
own count (:func:`asim.noise.code_table`'s ``range_ratios``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import rng
from .plan import FINE_BITS, GAIN_BITS, SIGMA_STEPS, PatternSpec, Plan

__all__ = ["ColumnPattern", "ColumnRanges", "draw_pattern"]


@dataclass(frozen=True)
class ColumnRanges:
    """Calibrated full scales of each ADC of one engine call (spec §4.8); hashable, so
    equal ranges give equal program keys.

    Attributes:
        group: columns per ADC (``adc_group``: ADC ``j = (o * weight_bits + i) // group``).
        full_scale: per tile, per ADC, its full scale in column counts per input level
            (``1 .. adc_full_scale``), like ``MacroConfig.adc_full_scale``.
    """

    group: int
    full_scale: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, full_scale: Tensor | Sequence[Sequence[int]], group: int = 1) -> ColumnRanges:
        """Ranges from a ``[T, n_adc]`` tensor or nested sequence of column counts."""
        if isinstance(full_scale, Tensor):
            full_scale = full_scale.tolist()
        rows = tuple(tuple(int(v) for v in row) for row in full_scale)
        if int(group) < 1 or not rows or any(not r or min(r) < 1 for r in rows):
            raise ValueError(
                "ColumnRanges: full scales must be [tiles, ADCs] column counts >= 1 and "
                f"group >= 1 (got group={group})"
            )
        return cls(int(group), rows)

    def tensor(self) -> Tensor:
        """int64 ``[T, n_adc]``."""
        return torch.tensor(self.full_scale, dtype=torch.int64)

    def check(self, tiles: int, outputs: int, weight_bits: int, full_scale: int) -> None:
        """One-line error unless these ranges fit a program of ``tiles`` tiles and
        ``outputs`` outputs whose layer full scale is ``full_scale`` column counts."""
        n_adc = -(-(outputs * weight_bits) // self.group)
        shape = (len(self.full_scale), {len(r) for r in self.full_scale})
        if shape != (tiles, {n_adc}):
            raise ValueError(
                f"ColumnRanges: {shape[0]} tiles x {sorted(shape[1])} ADCs do not fit a "
                f"matmul of {tiles} tiles x {n_adc} ADCs ({outputs} outputs, {weight_bits} "
                f"weight bits, adc_group {self.group}); calibrate this layer again"
            )
        top = max(max(r) for r in self.full_scale)
        if top > full_scale:
            raise ValueError(
                f"ColumnRanges: an ADC's full scale {top} exceeds the layer's "
                f"adc_full_scale {full_scale}; set macro.adc_full_scale >= {top}"
            )


@dataclass(frozen=True)
class ColumnPattern:
    """One chip's pattern for one program (read-only; built by :func:`draw_pattern`).

    Attributes:
        offset: float64 ``[T, n_adc]`` offset of each ADC in LSB (after the trim).
        gain: float64 ``[T, n_adc]`` relative gain error of each ADC.
        sigma: float64 ``[T, n_adc]`` multiple of the noise sigma of each ADC.
        adc: int64 ``[w, O]`` the ADC of each column (weight bit, output) of a tile.
        G: int64 ``[T, w, O]`` per-column gain of the fine transform.
        D: int64 ``[T, ncyc, w, O]`` per-column, per-cycle offset of the fine transform.
        cls: int64 ``[T, w, O]`` index into ``blocks`` of each column's noise block.
        blocks: the distinct ``(noise multiple, N / N_g)`` of the ADCs, ascending: the blocks
            of the fine code table (the ratio is 1.0 without ``full_scale``).
        full_scale: int64 ``[T, n_adc]`` each ADC's full scale in column counts (§4.8), or
            None (every ADC has the layer's).
        vcls: int64 ``[T, w, O]`` each column's value class: the index into ``classes`` of
            its ADC's full scale; None without ``full_scale``.
        classes: the distinct ADC full scales, ascending (empty without ``full_scale``).
    """

    offset: Tensor
    gain: Tensor
    sigma: Tensor
    adc: Tensor
    G: Tensor
    D: Tensor
    cls: Tensor
    blocks: tuple[tuple[float, float], ...] = ((1.0, 1.0),)
    full_scale: Tensor | None = None
    vcls: Tensor | None = None
    classes: tuple[int, ...] = ()

    @property
    def scales(self) -> tuple[float, ...]:
        """The distinct noise multiples of the ADCs, ascending."""
        return tuple(sorted({s for s, _ in self.blocks}))


def draw_pattern(
    plan: Plan, tiles, outputs: int, chip: int | None, ranges: ColumnRanges | None = None
) -> ColumnPattern:
    """The pattern of chip key ``chip`` for a program of ``plan``, with the per-ADC full
    scales ``ranges`` (module docstring). Without a drawn pattern (``plan.pattern`` None)
    every ADC is ideal (no offset, no gain error, noise multiple 1) but keeps its range."""
    spec, macro = plan.pattern, plan.macro
    if spec is None:
        spec = PatternSpec(0.0, 0.0, 0.0, ranges.group, None)
    w, T, A = macro.weight_bits, len(tiles), macro.adc_levels
    n_adc = -(-(outputs * w) // spec.group)
    t = torch.arange(T, dtype=torch.int64).view(-1, 1)
    g = torch.arange(n_adc, dtype=torch.int64).view(1, -1)
    if plan.pattern is None:
        z_off = z_gain = z_sig = torch.zeros(T, n_adc, dtype=torch.float64)
    else:
        keys = rng.element_keys(chip, t, g, 0)
        z_off, z_gain, z_sig = (rng.normal_from(keys, d).double() for d in range(3))
    offset = z_off * spec.offset_lsb
    if spec.trim_lsb is not None:
        offset = offset - spec.trim_lsb * torch.round(offset / spec.trim_lsb)
    gain = z_gain * (spec.gain_pct / 100.0)
    sigma = torch.ones_like(z_sig)
    if spec.sigma_spread:
        sigma = torch.round((1.0 + spec.sigma_spread * z_sig).clamp(min=0) * SIGMA_STEPS)
        sigma = sigma / SIGMA_STEPS
    o = torch.arange(outputs, dtype=torch.int64).view(1, -1)
    i = torch.arange(w, dtype=torch.int64).view(-1, 1)
    adc = (o * w + i) // spec.group  # [w, O]
    unit = float(1 << (FINE_BITS + GAIN_BITS))
    scale, ratio = None, torch.ones_like(sigma)
    if ranges is not None:  # §4.8: the gain scaled by N / N_j, exactly 1 where N_j = N
        scale = ranges.tensor()
        ratio = float(macro.adc_rows) / scale.double()  # fl64(N / N_j)
    G = torch.round((1.0 + gain) * ratio * unit).long()  # [T, n_adc]; x * 1.0 is x
    D = torch.stack(
        [
            torch.round(offset * f / A * unit).long() + (1 << (GAIN_BITS - 1))
            for f in plan.full_scale
        ],
        dim=1,
    )  # [T, ncyc, n_adc]
    pairs = list(zip(sigma.flatten().tolist(), ratio.flatten().tolist(), strict=True))
    blocks = tuple(sorted(set(pairs)))
    index = {b: k for k, b in enumerate(blocks)}
    cls_adc = torch.tensor([index[b] for b in pairs], dtype=torch.int64).view(sigma.shape)
    vcls, classes = None, ()
    if scale is not None:
        classes = tuple(sorted({int(v) for v in scale.flatten().tolist()}))
        vcls = torch.searchsorted(torch.tensor(classes, dtype=torch.int64), scale)[:, adc]
    return ColumnPattern(
        offset=offset,
        gain=gain,
        sigma=sigma,
        adc=adc,
        G=G[:, adc],
        D=D[:, :, adc],
        cls=cls_adc[:, adc],
        blocks=blocks,
        full_scale=scale,
        vcls=vcls,
        classes=classes,
    )
