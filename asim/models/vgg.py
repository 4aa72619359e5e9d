"""VGG-11/13/16/19 with and without BN (spec §9.3), float.

The first conv (3->64, bias) is followed by BN (``_bn`` variants) and a plain in-place ReLU;
every later conv, and the two hidden classifier layers, use **one activation instance shared by
the whole model** (PACT: one alpha). The reference goes further and shares one module-level
alpha across every VGG built in the process (quirk Q20); we do not reproduce that cross-model
sharing. The state_dict repeats the shared alpha under each position (``features.3.alpha``,
``classifier.1.alpha``, ...), exactly like the reference's checkpoints.

With ``stem="imagenet"`` the layer indices equal torchvision's, so torchvision VGG state_dicts
load (alphas then keep their init).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._registry import register_model
from .layers import PACT
from .resnet import _check_stem

__all__ = ["VGG", "VGG_CFGS", "make_layers"]

# Layer tables after the separate first 3->64 conv (spec §9.3); "M" is a 2x2 max-pool.
VGG_CFGS: dict[str, dict[str, list[int | str]]] = {
    "imagenet": {
        "A": ["M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
        "B": [64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
        "D": [64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
        "E": [
            64,
            "M",
            128,
            128,
            "M",
            256,
            256,
            256,
            256,
            "M",
            512,
            512,
            512,
            512,
            "M",
            512,
            512,
            512,
            512,
            "M",
        ],
    },
    "cifar": {  # only two poolings: 32x32 -> 8x8
        "A": [128, "M", 256, 256, 512, 512, 512, 512, "M"],
        "B": [64, 128, 128, "M", 256, 256, 512, 512, 512, 512, "M"],
        "D": [64, 128, 128, "M", 256, 256, 256, 512, 512, 512, 512, 512, 512, "M"],
        "E": [64, 128, 128, "M", 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512, "M"],
    },
}


def make_layers(
    cfg: Sequence[int | str], act: nn.Module, batch_norm: bool = False, in_channels: int = 3
) -> nn.Sequential:
    """Features: first conv (3->64, bias) [+BN] + ReLU, then ``cfg`` with the shared ``act``."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, padding=1, bias=True)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(64))
    layers.append(nn.ReLU(inplace=True))
    channels = 64
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(channels, int(v), 3, padding=1, bias=True))
        if batch_norm:
            layers.append(nn.BatchNorm2d(int(v)))
        layers.append(act)
        channels = int(v)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG with AdaptiveAvgPool(7) and a 3-linear classifier (spec §9.3).

    Args:
        cfg: table key ``"A"``, ``"B"``, ``"D"`` or ``"E"`` (VGG11/13/16/19).
        batch_norm: BN after every conv.
        num_classes: classifier outputs.
        stem: ``"cifar"`` or ``"imagenet"`` layer table.
        pact: one PACT (alpha 6.0) shared by all non-first activations; False uses ReLU.
        in_channels: input image channels.
        dropout: dropout probability in the classifier.
    """

    classifier_name = "classifier.6"
    first_conv = "features.0"

    def __init__(
        self,
        cfg: str,
        batch_norm: bool = False,
        num_classes: int = 10,
        stem: str = "cifar",
        pact: bool = True,
        in_channels: int = 3,
        dropout: float = 0.5,
    ):
        super().__init__()
        _check_stem(stem)
        if cfg not in VGG_CFGS[stem]:
            raise ValueError(f"cfg={cfg!r} is not valid; choose one of A, B, D, E")
        self.stem = stem
        act = PACT() if pact else nn.ReLU(inplace=True)
        self.features = make_layers(VGG_CFGS[stem][cfg], act, batch_norm, in_channels)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            act,
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            act,
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def _vgg(cfg: str, batch_norm: bool, num_classes: int, stem: str, pact: bool, **kwargs) -> VGG:
    return VGG(cfg, batch_norm, num_classes, stem, pact, **kwargs)


@register_model
def vgg11(num_classes: int = 10, stem: str = "cifar", pact: bool = True, **kwargs) -> VGG:
    """VGG-11 (table A)."""
    return _vgg("A", False, num_classes, stem, pact, **kwargs)


@register_model
def vgg11_bn(num_classes: int = 10, stem: str = "cifar", pact: bool = True, **kwargs) -> VGG:
    """VGG-11 with BN (table A)."""
    return _vgg("A", True, num_classes, stem, pact, **kwargs)


@register_model
def vgg13(num_classes: int = 10, stem: str = "cifar", pact: bool = True, **kwargs) -> VGG:
    """VGG-13 (table B)."""
    return _vgg("B", False, num_classes, stem, pact, **kwargs)


@register_model
def vgg13_bn(num_classes: int = 10, stem: str = "cifar", pact: bool = True, **kwargs) -> VGG:
    """VGG-13 with BN (table B)."""
    return _vgg("B", True, num_classes, stem, pact, **kwargs)


@register_model
def vgg16(num_classes: int = 10, stem: str = "cifar", pact: bool = True, **kwargs) -> VGG:
    """VGG-16 (table D)."""
    return _vgg("D", False, num_classes, stem, pact, **kwargs)


@register_model
def vgg16_bn(num_classes: int = 10, stem: str = "cifar", pact: bool = True, **kwargs) -> VGG:
    """VGG-16 with BN (table D)."""
    return _vgg("D", True, num_classes, stem, pact, **kwargs)


@register_model
def vgg19(num_classes: int = 10, stem: str = "cifar", pact: bool = True, **kwargs) -> VGG:
    """VGG-19 (table E)."""
    return _vgg("E", False, num_classes, stem, pact, **kwargs)


@register_model
def vgg19_bn(num_classes: int = 10, stem: str = "cifar", pact: bool = True, **kwargs) -> VGG:
    """VGG-19 with BN (table E)."""
    return _vgg("E", True, num_classes, stem, pact, **kwargs)
