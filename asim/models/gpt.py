"""A small GPT-style causal language model built from the ViT's blocks.

Pre-norm blocks as :class:`~asim.models.vit.EncoderBlock` (LayerNorm, multi-head self-attention,
LayerNorm, MLP) whose attention is :class:`ScaledMultiheadAttention` with a causal mask, so
:func:`asim.convert_to_acim` maps it like the ViT: every projection and MLP linear, QK^T and AV
on the macro (the ACiM attention applies the same boolean mask, spec §7.2), the token and
position embeddings float (a lookup, not a matmul), the ``lm_head`` the classifier. Nothing
here needs ``transformers``.

Inputs are token ids ``(B, T)`` (``T <= block_size``), outputs next-token logits
``(B, T, vocab_size)``: position ``t`` sees tokens ``0..t`` only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._registry import register_model
from .layers import ATTN_SCALES
from .vit import EncoderBlock

__all__ = ["GPT"]


class CausalBlock(EncoderBlock):
    """:class:`~asim.models.vit.EncoderBlock` whose attention sees only earlier positions."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # (B, T, D)
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False, attn_mask=mask)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only transformer: token + learned position embeddings, causal pre-norm blocks,
    a final LayerNorm and an untied linear head.

    Args:
        vocab_size: tokens (256 for bytes); the head's outputs.
        block_size: longest context (the position table's length).
        num_layers: blocks.
        num_heads: attention heads.
        hidden_dim: token width D.
        mlp_dim: MLP hidden width.
        dropout: dropout after embeddings, attention output and in the MLP.
        attn_scale: ``"head_dim"`` (standard) or ``"embed_dim"`` (the reference ViT's, Q13).
        norm_eps: LayerNorm eps.
    """

    classifier_name = "lm_head"

    def __init__(
        self,
        vocab_size: int = 256,
        block_size: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        hidden_dim: int = 128,
        mlp_dim: int = 384,
        dropout: float = 0.0,
        attn_scale: str = "head_dim",
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if attn_scale not in ATTN_SCALES:
            choices = ", ".join(ATTN_SCALES)
            raise ValueError(f"attn_scale={attn_scale!r} is not valid; choose one of {choices}")
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim={hidden_dim} is not a multiple of num_heads={num_heads}")
        self.vocab_size = vocab_size
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, hidden_dim)
        self.pos_emb = nn.Parameter(torch.zeros(1, block_size, hidden_dim))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            CausalBlock(num_heads, hidden_dim, mlp_dim, dropout, dropout, attn_scale, norm_eps)
            for _ in range(num_layers)
        )
        self.ln_f = nn.LayerNorm(hidden_dim, eps=norm_eps)
        self.lm_head = nn.Linear(hidden_dim, vocab_size, bias=False)
        # True = may not attend (torch's boolean convention): position t sees 0..t
        causal = torch.ones(block_size, block_size, dtype=torch.bool).triu(1)
        self.register_buffer("causal_mask", causal, persistent=False)
        for name, p in self.named_parameters():  # GPT-2's init
            if (name.endswith("weight") and p.dim() == 2) or name == "pos_emb":
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: Tensor) -> Tensor:
        T = idx.shape[-1]
        if T > self.block_size:
            raise ValueError(
                f"sequence of {T} tokens; this model's block_size is {self.block_size}"
            )
        x = self.dropout(self.tok_emb(idx) + self.pos_emb[:, :T])  # (B, T, D)
        mask = self.causal_mask[:T, :T]
        for block in self.blocks:
            x = block(x, mask)
        return self.lm_head(self.ln_f(x))  # (B, T, V)


@register_model
def gpt_tiny(
    num_classes: int = 256,
    block_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    hidden_dim: int = 128,
    mlp_dim: int = 384,
    dropout: float = 0.0,
    attn_scale: str = "head_dim",
) -> GPT:
    """Byte-level GPT: 2 layers, 4 heads, D 128, MLP 384 (~0.4 M parameters, 1.6 MB).

    ``num_classes`` is the vocabulary (the DataModule's, 256 bytes), ``block_size`` the
    DataModule's context.
    """
    return GPT(
        vocab_size=num_classes,
        block_size=block_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        dropout=dropout,
        attn_scale=attn_scale,
    )
