"""What the float and the ACiM attention share: the scale names and torch's mask conventions.

:class:`asim.models.layers.ScaledMultiheadAttention` (float) and
:class:`asim.layers.ACiMMultiheadAttention` (on the macro) both scale ``QK^T`` by one of
:data:`ATTN_SCALES` and add the same additive mask, built here once (spec §7.2).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ATTN_SCALES", "merge_masks"]

ATTN_SCALES = ("head_dim", "embed_dim")
"""``head_dim``: torch's ``1/sqrt(d_head)``; ``embed_dim``: the reference's ``1/sqrt(C)`` (Q13).
The first is the default of both attention layers' own constructors."""


def _additive(mask: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Boolean masks (True = not allowed) become additive -inf masks; float masks pass."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(
            mask.to(device), float("-inf")
        )
    if not torch.is_floating_point(mask):
        raise TypeError(f"attention masks must be bool or float, got {mask.dtype}")
    return mask.to(device=device, dtype=dtype)


def merge_masks(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    is_causal: bool,
    B: int,
    H: int,
    L: int,
    S: int,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor | None:
    """``attn_mask`` (L, S) or (B*H, L, S) plus ``key_padding_mask`` (B, S) as one additive
    mask broadcastable to (B, H, L, S), torch's conventions. ``is_causal`` without a mask
    builds the causal mask (torch treats it as a hint when a mask is given)."""
    mask = None
    if is_causal and attn_mask is None:
        attn_mask = torch.ones(L, S, dtype=torch.bool, device=device).triu(1)
    if attn_mask is not None:
        m = _additive(attn_mask, dtype, device)
        if m.dim() == 2 and m.shape == (L, S):
            mask = m.view(1, 1, L, S)
        elif m.dim() == 3 and m.shape == (B * H, L, S):
            mask = m.view(B, H, L, S)
        else:
            raise ValueError(
                f"attn_mask has shape {tuple(m.shape)}; expected ({L}, {S}) or ({B * H}, {L}, {S})"
            )
    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (B, S):
            raise ValueError(
                f"key_padding_mask has shape {tuple(key_padding_mask.shape)}; expected ({B}, {S})"
            )
        kpm = _additive(key_padding_mask, dtype, device).view(B, 1, 1, S)
        mask = kpm if mask is None else mask + kpm
    return mask
