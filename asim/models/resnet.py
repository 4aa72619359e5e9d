"""ResNet-18/34/50/101/152 (spec §9.2), float, with PACT activations and a CIFAR or ImageNet stem.

Module names follow torchvision (``conv1``, ``bn1``, ``layerS.B.{conv1,bn1,...}``,
``layerS.0.downsample.{0,1}``, ``fc``), so torchvision state_dicts load into
``stem="imagenet"`` models (PACT alphas then keep their init). Unlike the reference, which
always builds both stems (``conv1`` 3x3 CIFAR, ``conv2`` 7x7 ImageNet), only the chosen stem
exists and it is always named ``conv1``; :func:`asim.checkpoint.load_checkpoint` maps the
reference's two stems.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._registry import register_model
from .layers import PACT

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "STEMS"]

STEMS = ("cifar", "imagenet")


def _act(pact: bool) -> nn.Module:
    return PACT() if pact else nn.ReLU(inplace=True)


def _check_stem(stem: str) -> str:
    if stem not in STEMS:
        raise ValueError(f"stem={stem!r} is not valid; choose one of {', '.join(STEMS)}")
    return stem


class BasicBlock(nn.Module):
    """Two 3x3 convs; one activation module used after ``bn1`` and after the residual add."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        pact: bool = True,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride
        self.relu = _act(pact)  # shared by both activations of the block (Q20)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 (strided) - 1x1 convs, expansion 4; one activation module used three times."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        pact: bool = True,
    ):
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.downsample = downsample
        self.stride = stride
        self.relu = _act(pact)  # shared by all three activations of the block (Q20)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with one stem, PACT (or ReLU) activations and an ``fc`` head (spec §9.2).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage.
        num_classes: classifier outputs.
        stem: ``"cifar"`` (3x3 stride 1 conv, no max-pool) or ``"imagenet"`` (7x7 stride 2 conv
            and 3x3 stride 2 max-pool); either way the conv is ``conv1`` (no bias) then ``bn1``.
        pact: PACT activations (alpha 6.0); False uses in-place ReLU.
        in_channels: input image channels.
        widths: channels of the stages (the stem has ``widths[0]``); the first block of every
            stage after the first has stride 2.
        zero_init_residual: zero the last BN of every block (torchvision's option; off in the
            reference).
    """

    classifier_name = "fc"
    first_conv = "conv1"

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        num_classes: int = 10,
        stem: str = "cifar",
        pact: bool = True,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if len(widths) != len(layers):
            raise ValueError(f"widths {tuple(widths)} and layers {tuple(layers)} differ in length")
        self.stem = _check_stem(stem)
        self.pact = pact
        self.inplanes = widths[0]
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = _act(pact)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        for i, (width, n) in enumerate(zip(widths, layers, strict=True)):
            self.add_module(
                f"layer{i + 1}", self._make_layer(block, width, n, stride=1 if i == 0 else 2)
            )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)
        self.num_stages = len(layers)

        # Spec §9.2: Kaiming-normal (fan_out) convs, BN 1/0, Linear keeps PyTorch's init.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, pact=self.pact)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, pact=self.pact) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


@register_model
def resnet18(num_classes: int = 10, stem: str = "cifar", pact: bool = True, **kwargs) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2])."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, stem, pact, **kwargs)


@register_model
def resnet34(num_classes: int = 10, stem: str = "cifar", pact: bool = True, **kwargs) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3])."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, stem, pact, **kwargs)


@register_model
def resnet50(num_classes: int = 10, stem: str = "cifar", pact: bool = True, **kwargs) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3])."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, stem, pact, **kwargs)


@register_model
def resnet101(num_classes: int = 10, stem: str = "cifar", pact: bool = True, **kwargs) -> ResNet:
    """ResNet-101 (Bottleneck, [3, 4, 23, 3])."""
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, stem, pact, **kwargs)


@register_model
def resnet152(num_classes: int = 10, stem: str = "cifar", pact: bool = True, **kwargs) -> ResNet:
    """ResNet-152 (Bottleneck, [3, 8, 36, 3])."""
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes, stem, pact, **kwargs)


@register_model
def resnet20(num_classes: int = 10, stem: str = "cifar", pact: bool = True, **kwargs) -> ResNet:
    """ResNet-20 for CIFAR (He et al. 2016): BasicBlock, [3, 3, 3], widths 16/32/64.

    Not in the reference; a small CNN for quick experiments. Downsampling uses a 1x1 conv + BN
    (option B), like the other ResNets here.
    """
    kwargs.setdefault("widths", (16, 32, 64))
    return ResNet(BasicBlock, [3, 3, 3], num_classes, stem, pact, **kwargs)
