"""Vision Transformers (spec §9.4), float, with torchvision's module layout and names.

``conv_proj``, ``class_token``, ``encoder.pos_embedding``,
``encoder.layers.encoder_layer_{i}.{ln_1, self_attention, ln_2, mlp.0, mlp.3}``, ``encoder.ln``
and ``heads.head`` match torchvision, so torchvision ViT state_dicts load directly;
:func:`asim.checkpoint.load_checkpoint` maps the reference's names (``cls_token``, ``qkv``,
``proj``, ``mlp1``/``mlp2``, ``heads``).

Two numeric differences from torchvision, both following the reference by default:

* ``attn_scale="embed_dim"``: attention logits are scaled by ``embed_dim^-1/2`` (quirk Q13).
* ``norm_eps=1e-5``: the reference's LayerNorms use PyTorch's default eps; torchvision's use
  1e-6. Pass ``attn_scale="head_dim", norm_eps=1e-6`` (and zero dropouts in eval anyway) to get
  torchvision's numbers exactly.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from ._registry import register_model
from .layers import ATTN_SCALES, ScaledMultiheadAttention

__all__ = ["EncoderBlock", "MLPBlock", "VisionTransformer"]


class MLPBlock(nn.Sequential):
    """Linear(D, mlp) - GELU - Dropout - Linear(mlp, D) - Dropout (keys ``0`` and ``3``)."""

    def __init__(self, in_dim: int, mlp_dim: int, dropout: float):
        super().__init__(
            nn.Linear(in_dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, in_dim),
            nn.Dropout(dropout),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):  # torchvision's MLPBlock init
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)


class EncoderBlock(nn.Module):
    """Pre-norm block: ``x + Dropout(MHA(LN1(x)))``, then ``x + MLP(LN2(x))``."""

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
        attn_scale: str = "embed_dim",
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=norm_eps)
        self.self_attention = ScaledMultiheadAttention(
            hidden_dim, num_heads, dropout=attention_dropout, batch_first=True, scale=attn_scale
        )
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=norm_eps)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, N, D)
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Positional embedding, dropout, the blocks and a final LayerNorm."""

    def __init__(
        self,
        seq_length: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
        attn_scale: str = "embed_dim",
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(
            OrderedDict(
                (
                    f"encoder_layer_{i}",
                    EncoderBlock(
                        num_heads,
                        hidden_dim,
                        mlp_dim,
                        dropout,
                        attention_dropout,
                        attn_scale,
                        norm_eps,
                    ),
                )
                for i in range(num_layers)
            )
        )
        self.ln = nn.LayerNorm(hidden_dim, eps=norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """ViT classifier (spec §9.4) with torchvision's names; the head reads the class token.

    Args:
        image_size: input height and width (square).
        patch_size: patch size (the float ``conv_proj`` kernel and stride).
        num_layers: encoder blocks.
        num_heads: attention heads.
        hidden_dim: token width D.
        mlp_dim: MLP hidden width.
        dropout: dropout after embeddings, attention output and in the MLP.
        attention_dropout: dropout on the attention probabilities.
        num_classes: classifier outputs.
        in_channels: input image channels.
        attn_scale: ``"embed_dim"`` (reference, Q13) or ``"head_dim"`` (standard).
        norm_eps: LayerNorm eps (reference 1e-5, torchvision 1e-6).

    Init: class token zeros, positional embedding N(0, 0.02) (spec §9.4); the rest follows
    torchvision (truncated-normal ``conv_proj``, Xavier MLP, torch's MHA init, zero head).
    """

    classifier_name = "heads.head"
    first_conv = "conv_proj"

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        num_layers: int = 12,
        num_heads: int = 12,
        hidden_dim: int = 768,
        mlp_dim: int = 3072,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        num_classes: int = 1000,
        in_channels: int = 3,
        attn_scale: str = "embed_dim",
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"image_size={image_size} is not a multiple of patch_size={patch_size}"
            )
        if attn_scale not in ATTN_SCALES:
            choices = ", ".join(ATTN_SCALES)
            raise ValueError(f"attn_scale={attn_scale!r} is not valid; choose one of {choices}")
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim={hidden_dim} is not a multiple of num_heads={num_heads}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.num_classes = num_classes
        self.attn_scale = attn_scale

        self.conv_proj = nn.Conv2d(
            in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size
        )
        self.seq_length = (image_size // patch_size) ** 2 + 1
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.encoder = Encoder(
            self.seq_length,
            num_layers,
            num_heads,
            hidden_dim,
            mlp_dim,
            dropout,
            attention_dropout,
            attn_scale,
            norm_eps,
        )
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

        fan_in = in_channels * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        nn.init.zeros_(self.heads.head.weight)
        nn.init.zeros_(self.heads.head.bias)

    def _process_input(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(
                f"input is {h}x{w}; this ViT expects {self.image_size}x"
                f"{self.image_size} (image_size)"
            )
        x = self.conv_proj(x)  # (B, D, h/p, w/p)
        return x.reshape(n, self.hidden_dim, -1).permute(0, 2, 1)  # (B, P, D)

    def forward(self, x: Tensor) -> Tensor:
        x = self._process_input(x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, P+1, D)
        x = self.encoder(x)
        return self.heads(x[:, 0])


def _vit(
    patch_size: int,
    num_layers: int,
    num_heads: int,
    hidden_dim: int,
    mlp_dim: int,
    num_classes: int,
    image_size: int,
    attn_scale: str,
    dropout: float,
    attention_dropout: float,
    **kwargs,
) -> VisionTransformer:
    return VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        dropout=dropout,
        attention_dropout=attention_dropout,
        num_classes=num_classes,
        attn_scale=attn_scale,
        **kwargs,
    )


@register_model
def vit_b_16(
    num_classes: int = 1000,
    image_size: int = 224,
    attn_scale: str = "embed_dim",
    dropout: float = 0.1,
    attention_dropout: float = 0.1,
    **kwargs,
) -> VisionTransformer:
    """ViT-B/16: 12 layers, 12 heads, D 768, MLP 3072."""
    return _vit(
        16,
        12,
        12,
        768,
        3072,
        num_classes,
        image_size,
        attn_scale,
        dropout,
        attention_dropout,
        **kwargs,
    )


@register_model
def vit_b_32(
    num_classes: int = 1000,
    image_size: int = 224,
    attn_scale: str = "embed_dim",
    dropout: float = 0.1,
    attention_dropout: float = 0.1,
    **kwargs,
) -> VisionTransformer:
    """ViT-B/32: 12 layers, 12 heads, D 768, MLP 3072."""
    return _vit(
        32,
        12,
        12,
        768,
        3072,
        num_classes,
        image_size,
        attn_scale,
        dropout,
        attention_dropout,
        **kwargs,
    )


@register_model
def vit_l_16(
    num_classes: int = 1000,
    image_size: int = 224,
    attn_scale: str = "embed_dim",
    dropout: float = 0.1,
    attention_dropout: float = 0.1,
    **kwargs,
) -> VisionTransformer:
    """ViT-L/16: 24 layers, 16 heads, D 1024, MLP 4096."""
    return _vit(
        16,
        24,
        16,
        1024,
        4096,
        num_classes,
        image_size,
        attn_scale,
        dropout,
        attention_dropout,
        **kwargs,
    )


@register_model
def vit_l_32(
    num_classes: int = 1000,
    image_size: int = 224,
    attn_scale: str = "embed_dim",
    dropout: float = 0.1,
    attention_dropout: float = 0.1,
    **kwargs,
) -> VisionTransformer:
    """ViT-L/32: 24 layers, 16 heads, D 1024, MLP 4096."""
    return _vit(
        32,
        24,
        16,
        1024,
        4096,
        num_classes,
        image_size,
        attn_scale,
        dropout,
        attention_dropout,
        **kwargs,
    )


@register_model
def vit_h_14(
    num_classes: int = 1000,
    image_size: int = 224,
    attn_scale: str = "embed_dim",
    dropout: float = 0.1,
    attention_dropout: float = 0.1,
    **kwargs,
) -> VisionTransformer:
    """ViT-H/14: 32 layers, 16 heads, D 1280, MLP 5120."""
    return _vit(
        14,
        32,
        16,
        1280,
        5120,
        num_classes,
        image_size,
        attn_scale,
        dropout,
        attention_dropout,
        **kwargs,
    )
