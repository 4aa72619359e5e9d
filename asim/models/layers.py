"""Float building blocks shared by the model zoo: PACT and attention with a selectable scale.

Both are plain float modules. :class:`ScaledMultiheadAttention` subclasses
``nn.MultiheadAttention`` and keeps its parameter names, so torch/torchvision checkpoints load
and the converter can swap it for an ACiM attention layer as a unit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention_common import ATTN_SCALES, merge_masks

__all__ = ["PACT", "ScaledMultiheadAttention", "pact"]


class _PACTFunction(torch.autograd.Function):
    """clamp(x, 0, alpha) with PACT's gradients (spec §1.5)."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor) -> Tensor:
        ctx.save_for_backward(x, alpha)
        return torch.minimum(x.clamp_min(0), alpha.to(x.dtype))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        x, alpha = ctx.saved_tensors
        a = alpha.to(x.dtype)
        # x: pass where 0 <= x <= alpha (both ends included); alpha: sum where x > alpha.
        grad_x = grad * ((x >= 0) & (x <= a)).to(grad.dtype)
        grad_alpha = (grad * (x > a).to(grad.dtype)).sum().reshape(alpha.shape).to(alpha.dtype)
        return grad_x, grad_alpha


def pact(x: Tensor, alpha: Tensor) -> Tensor:
    """Functional PACT: ``clamp(x, 0, alpha)`` with the gradients of spec §1.5."""
    return _PACTFunction.apply(x, alpha)


class PACT(nn.Module):
    """Parameterized clipping activation: ``clamp(x, 0, alpha)`` with a learnable alpha.

    Gradients follow spec §1.5: ``dx`` is the incoming gradient where ``0 <= x <= alpha`` and 0
    elsewhere; ``dalpha`` is the sum of incoming gradients over elements with ``x > alpha``.
    Alpha is an ordinary parameter (weight decay applies, as in the reference).

    Args:
        alpha: initial clipping level (the reference uses 6.0).
    """

    def __init__(self, alpha: float = 6.0, *, device=None, dtype=None):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha), device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return _PACTFunction.apply(x, self.alpha)

    def extra_repr(self) -> str:
        if self.alpha.is_meta:
            return "alpha=<meta>"
        return f"alpha={self.alpha.detach().item():.4g}"


class ScaledMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose logits are scaled by ``embed_dim`` or ``head_dim``.

    The reference ViT scales ``QK^T`` by ``embed_dim^-1/2`` instead of ``head_dim^-1/2``
    (spec §7.2 step 3, quirk Q13); its checkpoints were fine-tuned that way. Parameters are
    torch's (``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``), so
    torch and torchvision state_dicts load unchanged.

    Args:
        embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim,
            batch_first, device, dtype: as ``nn.MultiheadAttention``.
        scale: ``"embed_dim"`` (reference, Q13) or ``"head_dim"`` (standard; delegates to
            torch's forward). Kept as the string attribute ``self.scale``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
        *,
        scale: str = "embed_dim",
    ) -> None:
        if scale not in ATTN_SCALES:
            choices = ", ".join(ATTN_SCALES)
            raise ValueError(f"scale={scale!r} is not valid; choose one of {choices}")
        if scale == "embed_dim" and (add_bias_kv or add_zero_attn):
            raise ValueError(
                "add_bias_kv/add_zero_attn are only supported with scale='head_dim' "
                "(torch's implementation)"
            )
        super().__init__(
            embed_dim,
            num_heads,
            dropout=dropout,
            bias=bias,
            add_bias_kv=add_bias_kv,
            add_zero_attn=add_zero_attn,
            kdim=kdim,
            vdim=vdim,
            batch_first=batch_first,
            device=device,
            dtype=dtype,
        )
        self.scale = scale

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"batch_first={self.batch_first}, scale={self.scale!r}"
        )

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if self.scale == "head_dim":
            return super().forward(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        return self._forward_scaled(
            query,
            key,
            value,
            key_padding_mask,
            need_weights,
            attn_mask,
            average_attn_weights,
            is_causal,
        )

    def _forward_scaled(
        self,
        query,
        key,
        value,
        key_padding_mask,
        need_weights,
        attn_mask,
        average_attn_weights,
        is_causal,
    ):
        """Float attention with logits ``(q k^T) * embed_dim^-1/2`` (spec §7.2); masks as
        the ACiM attention (``is_causal`` without a mask builds the causal one)."""
        is_batched = query.dim() == 3
        if not is_batched:  # (L, E): add a batch dim of 1
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:  # (L, B, E) -> (B, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)

        B, L, E = query.shape
        S = key.shape[1]
        H, d = self.num_heads, self.head_dim
        if E != self.embed_dim:
            raise ValueError(f"query has embed dim {E}, expected {self.embed_dim}")
        if key.shape[:2] != value.shape[:2]:
            raise ValueError(
                f"key {tuple(key.shape)} and value {tuple(value.shape)} differ in "
                "batch or sequence length"
            )

        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).view(B, L, H, d).transpose(1, 2)  # (B, H, L, d)
        k = F.linear(key, w_k, b_k).view(B, S, H, d).transpose(1, 2)  # (B, H, S, d)
        v = F.linear(value, w_v, b_v).view(B, S, H, d).transpose(1, 2)  # (B, H, S, d)

        attn = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(E))  # (B, H, L, S)
        mask = merge_masks(
            attn_mask, key_padding_mask, is_causal, B, H, L, S, attn.dtype, attn.device
        )
        if mask is not None:
            attn = attn + mask
        attn = attn.softmax(dim=-1)
        attn = F.dropout(attn, p=self.dropout, training=self.training)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(B, L, E)  # (B, L, E)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)

        if not is_batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = attn.mean(dim=1) if average_attn_weights else attn
        return out, (weights.squeeze(0) if not is_batched else weights)
