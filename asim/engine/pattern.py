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
* its noise sigma is the model's times ``scales[cls]``, a multiple of ``1/SIGMA_STEPS``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import rng
from .plan import FINE_BITS, GAIN_BITS, SIGMA_STEPS, Plan

__all__ = ["ColumnPattern", "draw_pattern"]


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
        cls: int64 ``[T, w, O]`` index into ``scales`` of each column's noise multiple.
        scales: the distinct noise multiples, ascending.
    """

    offset: Tensor
    gain: Tensor
    sigma: Tensor
    adc: Tensor
    G: Tensor
    D: Tensor
    cls: Tensor
    scales: tuple[float, ...]


def draw_pattern(plan: Plan, tiles, outputs: int, chip: int) -> ColumnPattern:
    """The pattern of chip key ``chip`` for a program of ``plan`` (module docstring)."""
    spec, macro = plan.pattern, plan.macro
    w, T, A = macro.weight_bits, len(tiles), macro.adc_levels
    n_adc = -(-(outputs * w) // spec.group)
    t = torch.arange(T, dtype=torch.int64).view(-1, 1)
    g = torch.arange(n_adc, dtype=torch.int64).view(1, -1)
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
    G = torch.round((1.0 + gain) * unit).long()  # [T, n_adc]
    D = torch.stack(
        [
            torch.round(offset * f / A * unit).long() + (1 << (GAIN_BITS - 1))
            for f in plan.full_scale
        ],
        dim=1,
    )  # [T, ncyc, n_adc]
    scales = tuple(sorted({float(v) for v in sigma.flatten().tolist()}))
    lookup = torch.tensor(scales, dtype=torch.float64)
    cls_adc = torch.searchsorted(lookup, sigma.contiguous())
    return ColumnPattern(
        offset=offset,
        gain=gain,
        sigma=sigma,
        adc=adc,
        G=G[:, adc],
        D=D[:, :, adc],
        cls=cls_adc[:, adc],
        scales=scales,
    )
