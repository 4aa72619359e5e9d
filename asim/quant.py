"""Quantizers (spec §1.2-1.5): per-tensor scales, rne rounding, straight-through gradients.

Float32 operation order follows the spec exactly; the golden cases depend on it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "EPS",
    "dequantize",
    "fake_quantize",
    "quantize",
    "signed_levels",
    "tensor_scale",
    "divide",
    "unsigned_levels",
]

EPS = 1e-7
"""Added to every scale (spec Q7); Python float, applied in float32 as the reference does."""


def signed_levels(bits: int) -> int:
    """``Ls(b) = 2^(b-1) - 1``: magnitude levels of a signed b-bit value."""
    return (1 << (bits - 1)) - 1


def unsigned_levels(bits: int) -> int:
    """``Lu(b) = 2^b - 1``: levels of an unsigned b-bit value."""
    return (1 << bits) - 1


def divide(
    t: Tensor, divisor: float | int, reciprocal: bool = False, out: Tensor | None = None
) -> Tensor:
    """``t / divisor`` with the spec's division semantics (``MacroConfig.division``, Q10), as
    a new tensor: IEEE division on every device, or (``reciprocal``) multiplication by the
    float32 reciprocal, as the reference on CUDA. The one division helper of the package.
    ``out`` (e.g. ``t`` itself) receives the result instead of a new tensor.

    On CUDA, PyTorch turns division by a Python scalar into multiplication by a float32
    reciprocal; dividing by a 0-dim tensor on the same device keeps true division.
    """
    if reciprocal:
        r = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(divisor, dtype=torch.float32)
        return torch.mul(t, r.item(), out=out)
    if t.device.type == "cpu":
        return torch.div(t, divisor, out=out)
    return torch.div(t, torch.tensor(divisor, dtype=t.dtype, device=t.device), out=out)


def tensor_scale(t: Tensor, signed: bool, per_sample: bool = False) -> Tensor:
    """Quantization scale ``max(|t|) + eps`` (signed) or ``max(t) + eps`` (unsigned).

    Args:
        t: the tensor to quantize.
        signed: take the maximum magnitude (spec §1.2) instead of the maximum (§1.3, Q6).
        per_sample: one scale per leading index (``act_scale="sample"``) instead of one for
            the whole tensor. The result then has shape ``[B, 1, ..., 1]``.
    """
    t = t.detach()
    m = t.abs() if signed else t
    if per_sample and t.dim() > 1:
        return m.reshape(m.shape[0], -1).amax(dim=1).view(-1, *([1] * (t.dim() - 1))) + EPS
    return m.amax() + EPS


def quantize(t: Tensor, bits: int, scale: Tensor, signed: bool) -> Tensor:
    """Integer codes as float32: signed in ``[-Ls, Ls]`` or unsigned in ``[0, Lu]``."""
    t = t.detach()  # the spec's ops in its order, in place on one temporary
    if signed:
        levels = signed_levels(bits)
        return (t.abs() / scale).clamp_(0, 1).mul_(levels).round_().mul_(torch.sign(t))
    levels = unsigned_levels(bits)
    return (t / scale).clamp_(0, 1).mul_(levels).round_()


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _ClampSTE(torch.autograd.Function):
    """Clamp whose gradient passes everywhere, clipped elements included (spec §1.5)."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        return torch.clamp(x, lo, hi)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def fake_quantize(t: Tensor, bits: int, signed: bool, per_sample: bool = False) -> Tensor:
    """Quantize then de-quantize with straight-through gradients (Train mode, spec §1.5)."""
    scale = tensor_scale(t, signed, per_sample)
    if signed:
        levels = signed_levels(bits)
        r = _RoundSTE.apply(_ClampSTE.apply(t.abs() / scale, 0, 1) * levels)
        return r / levels * scale * torch.sign(t).detach()
    levels = unsigned_levels(bits)
    r = _RoundSTE.apply(_ClampSTE.apply(t / scale, 0, 1) * levels)
    return r / levels * scale


def dequantize(
    acc: Tensor,
    w_scale: Tensor,
    x_scale: Tensor,
    w_levels: int,
    x_levels: int,
    reciprocal: bool = False,
    in_place: bool = False,
) -> Tensor:
    """``y = (Y * (s_w * s_x)) / (Lw * Lx)`` in the spec's order (§1.4).

    ``x_scale`` must already broadcast against ``acc`` (per-sample scales). ``reciprocal``
    multiplies by the float32 reciprocal of ``Lw * Lx`` instead, as the reference on CUDA.
    ``in_place`` writes ``y`` over ``acc`` (a float32 tensor the caller owns, of ``y``'s
    shape) instead of a new tensor: the same two operations, and no full-size allocation
    (whose page faults cost more than the arithmetic).
    """
    scale = w_scale * x_scale
    if torch.is_grad_enabled() and (acc.requires_grad or scale.requires_grad):
        return divide(acc * scale, w_levels * x_levels, reciprocal)
    shape = torch.broadcast_shapes(acc.shape, scale.shape)
    dtype = torch.result_type(acc, scale)
    if in_place and acc.shape == shape and acc.dtype == dtype:
        y = acc
    else:  # one new contiguous tensor (``acc`` may be a strided view)
        y = torch.empty(shape, dtype=dtype, device=acc.device)
    torch.mul(acc, scale, out=y)
    return divide(y, w_levels * x_levels, reciprocal, out=y)
