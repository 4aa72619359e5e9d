"""Small models for the offline digits dataset (8x8 grayscale) and for fast tests.

Both train on a 2-core CPU in about a minute and stay cheap to simulate bit by bit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._registry import register_model
from .layers import PACT
from .vit import VisionTransformer

__all__ = ["DigitsCNN"]


class DigitsCNN(nn.Module):
    """Three 3x3 conv-BN-act stages, one 2x2 max-pool, global average pool and ``fc``.

    ``conv1`` is the first layer and ``fc`` the head, as in :class:`~asim.models.ResNet`, so the
    same ``exclude`` globs work in conversion. About 24k parameters for 10 classes.

    Args:
        num_classes: classifier outputs.
        in_channels: input image channels.
        pact: PACT activations (one alpha per activation, init 6.0); False uses ReLU.
        widths: channels of the three convs.
    """

    classifier_name = "fc"
    first_conv = "conv1"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        pact: bool = True,
        widths: tuple[int, int, int] = (16, 32, 64),
    ):
        super().__init__()
        c1, c2, c3 = widths

        def act() -> nn.Module:
            return PACT() if pact else nn.ReLU(inplace=True)

        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu1 = act()
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = act()
        self.maxpool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3)
        self.relu3 = act()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c3, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, 8, 8)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.maxpool(self.relu2(self.bn2(self.conv2(x))))  # (B, c2, 4, 4)
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model
def digits_cnn(
    num_classes: int = 10, in_channels: int = 1, pact: bool = True, **kwargs
) -> DigitsCNN:
    """Small CNN for 8x8 digits: conv16-conv32-pool-conv64-avgpool-fc (the default model)."""
    return DigitsCNN(num_classes, in_channels, pact, **kwargs)


@register_model
def vit_tiny(
    num_classes: int = 10,
    image_size: int = 8,
    patch_size: int = 2,
    in_channels: int = 1,
    attn_scale: str = "embed_dim",
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    **kwargs,
) -> VisionTransformer:
    """Tiny ViT for 8x8 digits: D 64, 2 layers, 4 heads, MLP 128, 2x2 patches (17 tokens).

    For 32x32 RGB use ``image_size=32, patch_size=4, in_channels=3``.
    """
    kwargs.setdefault("num_layers", 2)
    kwargs.setdefault("num_heads", 4)
    kwargs.setdefault("hidden_dim", 64)
    kwargs.setdefault("mlp_dim", 128)
    return VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        dropout=dropout,
        attention_dropout=attention_dropout,
        num_classes=num_classes,
        in_channels=in_channels,
        attn_scale=attn_scale,
        **kwargs,
    )
