"""W4A4 weight full bit-parallel mode (spec §8.3): one signed ADC on the exact MAC.

Random read-out noise: the per-output ADC sees an integer MAC, so its code is drawn from
the exact distribution (:func:`asim.noise.signed_code_table`) with one counter-based
uniform, like every other integer conversion. The ``per_cycle`` compatibility mode converts
a rescaled running sum (not an integer), so it, and tables too large to build, take the
Gaussian path on the same stream (:func:`asim.rng.normal_from`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import rng
from ..config import Division, MacroConfig, WeightParallelADC
from ..noise import GaussianNoise, sample_codes, signed_code_table
from .plan import activation_cycles, div
from .shortcut import rows_used, select_rows

__all__ = ["weight_parallel"]


def _codes(t: Tensor, bits: int, signed: bool) -> Tensor:
    q = t.to(torch.int32)
    return torch.where(q < 0, q + (1 << bits), q) if signed else q


def weight_parallel(x3: Tensor, w3: Tensor, plan, tiles, ekeys) -> Tensor:
    """``Y [B, M, O]``; follows the fix of quirk Q30: the conv's semantics for every layer,
    with the ADC full scale ``Lu(x) * Ls(w) * rows`` where ``rows = weight_parallel_rows
    or nrow``. ``ekeys``: the element keys ``[B, M, O]`` (None when noise-free)."""
    macro, readout = plan.macro, plan.readout
    if plan.signed:
        raise ValueError(
            "MacroConfig.weight_parallel=true needs unsigned inputs; set "
            "signed_input=False on this layer"
        )
    if readout is not None and (not isinstance(readout, GaussianNoise) or readout.nl_var > 0):
        raise ValueError(
            "MacroConfig.weight_parallel=true models random Gaussian noise "
            "only; set noise.nonlinear_sigma=0 and noise.file=null"
        )
    if macro.weight_parallel_adc == WeightParallelADC.per_cycle:
        return _per_cycle(x3, w3, macro, tiles, readout, ekeys)
    used = rows_used(tiles, x3.shape[-1], x3.device)
    xs = select_rows(x3, used).double()
    ws = select_rows(w3, used, dim=-2).double()
    y = torch.matmul(xs, ws).float()  # exact integer MAC
    if readout is not None:
        sampled = _sampled_adc(y, macro, readout, ekeys)
        if sampled is not None:
            return sampled
    return _signed_adc(y, macro, readout, ekeys, 0, final_division=False)


def _full_scale(macro: MacroConfig) -> int:
    rows = macro.weight_parallel_rows or macro.nrow
    return ((1 << macro.input_bits) - 1) * ((1 << (macro.weight_bits - 1)) - 1) * rows


def _sampled_adc(y: Tensor, macro: MacroConfig, readout, ekeys) -> Tensor | None:
    """The per-output signed ADC with its code drawn exactly (draw 0 of each element), or
    None when the code table would be too large (then the Gaussian path runs)."""
    full, half = _full_scale(macro), (1 << (macro.adc_bits - 1)) - 1
    try:
        table = signed_code_table(
            readout, full, half, reciprocal=macro.division == Division.reciprocal
        )
    except ValueError:
        return None
    m = y.to(torch.int64).clamp_(-full, full)  # |y| > F converts like +-F
    q = sample_codes(table, m, rng.draw_u32(ekeys, 0)).float() - half
    return div(q, half, False).mul_(float(full))  # fl(fl(q / H) * F), IEEE as noise-free


def _signed_adc(
    y: Tensor, macro: MacroConfig, readout, ekeys, draw: int, final_division: bool = True
) -> Tensor:
    """Normalise by the full scale ``Lu(x) * Ls(w) * rows``, clamp to [-1, 1], add the random
    noise, clamp, round to ``2^(adc-1)-1`` levels and rescale. ``final_division=False``
    divides by the levels with IEEE division even under ``division="reciprocal"`` (the
    per-output ADC has always done so)."""
    full = float(_full_scale(macro))
    half = (1 << (macro.adc_bits - 1)) - 1
    rec = macro.division == Division.reciprocal
    a = div(y, full, rec).clamp_(-1, 1)
    if readout is not None:
        z = rng.normal_from(ekeys, draw)
        a.add_(z, alpha=readout.rand_var**0.5).clamp_(-1, 1)
    q = a.mul_(half).round_()
    return div(q, half, rec and final_division).mul_(full)


def _per_cycle(x3, w3, macro, tiles, readout, ekeys) -> Tensor:
    """``weight_parallel_adc="per_cycle"`` (the reference linear): after every tile, weight
    bit and cycle (bits and cycles descending) the running sum ``S`` takes the cycle's exact
    MAC ``+-2^(i+c*e) * M``, then passes the signed ADC."""
    wb = macro.weight_bits
    cycles = activation_cycles(macro.input_bits, macro.input_enc_bits, False)
    xc = _codes(x3, macro.input_bits, False)
    wc = _codes(w3, wb, True)
    S = torch.zeros(x3.shape[0], x3.shape[1], w3.shape[-1], dtype=torch.float32, device=x3.device)
    for t, (r0, r1) in enumerate(tiles):
        wplanes = [((wc[:, r0:r1] >> i) & 1).float() for i in range(wb)]
        levels = [
            sum(((xc[..., r0:r1] >> b) & 1) << k for k, b in enumerate(cyc.bits)).float()
            for cyc in cycles
        ]  # each cycle's multi-level input
        for i in range(wb - 1, -1, -1):
            for c in range(len(cycles) - 1, -1, -1):
                mac = torch.matmul(levels[c], wplanes[i])  # exact: small integers
                if i == wb - 1:
                    mac = -mac
                draw = (t * wb + i) * len(cycles) + c
                S = _signed_adc(
                    S + mac * float(2 ** (i + cycles[c].shift)), macro, readout, ekeys, draw
                )
    return S
