"""The exact shortcut (spec §4.3): skip the cycles when they provably return the integer
product.

With no noise, no compression and an ADC that returns every count unchanged (e.g. nrow 255
with an 8-bit ADC), every conversion is exact, and the spec's float32 accumulation of the
``+-M * 2^(i+j)`` terms is the exact integer product as long as no prefix sum leaves
float32's exact integers (2^24). :func:`exact_product` checks a cheap bound and returns the
product, or None when the cycles must run. The engine alone decides (``Plan.lossless``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..config import MacroConfig, NoiseConfig
from .operands import Patches
from .plan import build_plan

__all__ = ["exact_product", "shortcut_applies", "try_shortcut"]

_EXACT_LIMIT = float(1 << 24)  # float32 represents every integer up to 2^24


def _magnitude_bound(codes: Tensor, bits: int, signed: bool) -> Tensor:
    """V(q): |q| for q >= 0 and 2^(b-1) for q < 0. Summed products V(w)V(x) bound every
    prefix sum of the spec's cycle accumulation (see :func:`_accumulation_is_exact`)."""
    if not signed:
        return codes
    return torch.where(codes < 0, torch.full_like(codes, float(1 << (bits - 1))), codes)


def _max_magnitude_bound(codes: Tensor, bits: int, signed: bool) -> Tensor:
    """``max V(q)`` over ``codes`` (0-dim) with two reductions instead of building V: any
    negative code makes it ``2^(b-1)``, which exceeds every non-negative code."""
    top = codes.amax()
    if signed and codes.numel() and bool(codes.amin() < 0):
        return torch.full_like(top, float(1 << (bits - 1)))
    return top


def _accumulation_is_exact(bound: Tensor, signed_input: bool) -> bool:
    """True if no prefix sum of the cycle accumulation can leave float32's exact integers.

    The positive and the negative terms are each bounded by ``bound = sum V(w) V(x)`` (twice
    that with signed inputs). ``bound`` comes from non-negative operands, so float rounding
    can only push it up: a computed value below the limit proves the true one is.
    """
    if bound.numel() == 0:
        return True
    factor = 2.0 if signed_input else 1.0
    return bool(bound.amax() * factor < _EXACT_LIMIT)


def shortcut_applies(macro: MacroConfig, noise: NoiseConfig | None, signed_input: bool) -> bool:
    """Whether every cycle returns its exact count (lossless ADC, no noise, spec §4.3), so
    the cycles can be skipped for the integer product (subject to the 2^24 bound)."""
    return build_plan(macro, noise, signed_input).lossless()


def exact_product(
    x: Tensor,
    w: Tensor,
    macro: MacroConfig,
    signed_input: bool,
    product: Callable[[Tensor, Tensor], Tensor] = torch.matmul,
    row_sums: Callable[[Tensor], Tensor] | None = None,
) -> Tensor | None:
    """``product(x, w)`` of integer codes, or None when the float32 cycle accumulation could
    round (then the cycles must run). Valid only where :func:`shortcut_applies`.

    Args:
        product: the bilinear op (``torch.matmul``; a conv for a :class:`Patches` source).
        row_sums: per-output sums of an operand's rows under ``product`` (default: sums
            over the last dim); with ``max V(w)`` they give a cheap first bound.
    """
    if not x.dtype.is_floating_point:  # compact integer codes
        x = x.float()
    vx = _magnitude_bound(x, macro.input_bits, signed_input)
    sums = vx.sum(-1, keepdim=True) if row_sums is None else row_sums(vx)
    vw_max = _max_magnitude_bound(w, macro.weight_bits, True)
    if not _accumulation_is_exact(sums * vw_max, signed_input):  # >= sum V(x)V(w)
        vw = _magnitude_bound(w, macro.weight_bits, True)
        if not _accumulation_is_exact(product(vx, vw), signed_input):
            return None
    return product(x, w)


def rows_used(tiles, rows: int, device) -> slice | Tensor:
    """The reduction rows some tile covers: a prefix slice when they are contiguous."""
    spans = sorted(tiles)
    contiguous = all(spans[k][1] == spans[k + 1][0] for k in range(len(spans) - 1))
    if spans[0][0] == 0 and contiguous:
        return slice(0, spans[-1][1])
    idx = sorted({r for a, b in tiles for r in range(a, b)})
    return torch.tensor(idx, dtype=torch.long, device=device)


def select_rows(t: Tensor, used, dim: int = -1) -> Tensor:
    if isinstance(used, slice):
        return t[..., used] if dim == -1 else t[..., used, :]
    return t.index_select(t.dim() + dim, used)


def try_shortcut(x3, w3: Tensor, macro: MacroConfig, signed: bool, tiles) -> Tensor | None:
    """The exact product ``[B, M, O]`` over the tiles' rows, or None if the bound fails.
    A :class:`Patches` from a conv runs as a conv over the mapped channels; its product is
    returned as the conv's output seen as ``(B, Ho, Wo, O)`` (rows in order, no copy)."""
    rows = w3.shape[-2]
    used = rows_used(tiles, rows, w3.device)
    if isinstance(x3, Patches) and x3.source is not None and isinstance(used, slice):
        src = x3.source
        kh, kw = src.kernel
        ch = used.stop // (kh * kw)
        if ch * kh * kw == used.stop:
            x = src.x[:, :ch].float()
            w = w3[0].t().reshape(w3.shape[-1], -1, kh, kw)[:, :ch]
            ones = torch.ones((1, *w.shape[1:]), dtype=x.dtype, device=x.device)
            y = exact_product(
                x,
                w,
                macro,
                signed,
                product=src.conv,
                row_sums=lambda v: src.conv(v, ones),
            )
            if y is None:
                return None
            return y.permute(0, 2, 3, 1)  # rows (b, ho, wo)
    if isinstance(x3, Patches):
        x3 = x3.materialize()[None]
    return exact_product(select_rows(x3, used), select_rows(w3, used, dim=-2), macro, signed)
