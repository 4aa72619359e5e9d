"""ACiMConv2d: ``nn.Conv2d`` on an ACiM macro, lowered to a matmul by unfold (spec §3.1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import ConvTiling, MacroConfig, NoiseConfig
from ..engine import ConvSource, NoiseStream, Patches, acim_matmul, compact_codes
from .base import ACiMLayer, Lowered

__all__ = ["ACiMConv2d", "conv_tiles"]

_UNFOLD_BUDGET = 1 << 24  # unfolded input elements per chunk of images (16-64 MiB)


def conv_tiles(
    in_channels: int, kernel_area: int, nrow: int, tiling: ConvTiling = ConvTiling.reference
) -> tuple[list[tuple[int, int]], int]:
    """Row ranges of the unfolded input loaded per tile, and the number of dropped channels.

    Tiles hold whole k x k kernels: ``floor(nrow / k^2)`` channels each. The reference runs
    ``ceil(C k^2 / nrow)`` tiles, which can be fewer than the channel groups; the channels of
    the groups left over are not computed (quirk Q1) unless ``tiling="all_groups"``.
    """
    per_tile = nrow // kernel_area
    if per_tile == 0:
        raise ValueError(
            f"kernel area {kernel_area} exceeds MacroConfig.nrow={nrow}: a k x k "
            "kernel must fit in one column; raise nrow or exclude this layer"
        )
    groups = -(-in_channels // per_tile)
    n = groups if tiling == ConvTiling.all_groups else -(-in_channels * kernel_area // nrow)
    tiles = [
        (g * per_tile * kernel_area, min((g + 1) * per_tile, in_channels) * kernel_area)
        for g in range(n)
    ]
    dropped = in_channels - min(in_channels, n * per_tile)
    return tiles, dropped


def _add_channel_bias(y: Tensor, bias: Tensor) -> Tensor:
    return y + bias.view(1, -1, 1, 1)


def _patches(x: Tensor, kernel, stride, pad, dilation, out_hw, bits: int, signed: bool) -> Patches:
    """Input patches as a ``(B*Ho*Wo, C*kh*kw)`` matrix, columns in channel-major kernel order
    (the order of ``F.unfold`` and of ``weight.reshape(O, -1)``), as a strided view of the
    compact codes, built only if a backend needs it: the native engine reads it in place,
    the other paths copy it once. The patches name their conv, so the engine's exact
    shortcut runs as a conv on ``x`` instead."""
    source = ConvSource(x, tuple(kernel), tuple(stride), tuple(pad), tuple(dilation))

    def view() -> tuple[Tensor, int]:
        if pad[0] or pad[1]:  # compact codes in a zeroed, padded buffer: one conversion pass
            B, C, H, W = x.shape
            dtype = compact_codes(x[:0], bits, signed).dtype
            xc = x.new_zeros((B, C, H + 2 * pad[0], W + 2 * pad[1]), dtype=dtype)
            xc[:, :, pad[0] : pad[0] + H, pad[1] : pad[1] + W] = x
        else:
            xc = compact_codes(x, bits, signed).contiguous()
        B, C = xc.shape[:2]
        sb, sc, sh, sw = xc.stride()
        strided = xc.as_strided(
            (B, *out_hw, C, *kernel),
            (sb, sh * stride[0], sw * stride[1], sc, sh * dilation[0], sw * dilation[1]),
        )
        return strided, 3

    rows = x.shape[0] * out_hw[0] * out_hw[1]
    return Patches.lazy((rows, x.shape[1] * kernel[0] * kernel[1]), view, source)


class ACiMConv2d(ACiMLayer, nn.Conv2d):
    """A 2-D convolution whose MACs run on an ACiM macro.

    Torch's arguments are unchanged; the ACiM ones are keyword-only. ``groups`` must be 1
    and ``padding_mode`` ``"zeros"`` (the array maps one dense conv). Rectangular kernels,
    tuple strides and dilation are supported as an extension of the reference (square
    kernels, dilation 1), tiling by whole kernels of ``kh*kw`` rows.

    Args:
        macro: the macro (default: ``MacroConfig()``).
        noise: read-out noise; None is noise-free.
        signed_input: quantize activations signed; the default, as in the reference, is
            unsigned (inputs after a ReLU). The reference allows only unsigned inputs with
            bit-parallel encoding; here both work.
        mode: ``"train"``, ``"inference"`` or ``"simulate"``.
        trim_noise: noise-aware-training output perturbation in % (spec §1.6).
        digital: always fake-quantized, never simulated (the reference's ``QuantConv2d``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        macro: MacroConfig | None = None,
        noise: NoiseConfig | None = None,
        signed_input: bool = False,
        mode: str = "simulate",
        trim_noise: float = 0.0,
        digital: bool = False,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device=device,
            dtype=dtype,
        )
        if groups != 1:
            raise ValueError(
                f"ACiMConv2d: groups={groups} (grouped/depthwise conv) cannot be "
                "mapped to one array; keep this layer digital (exclude it)"
            )
        if padding_mode != "zeros":
            raise ValueError(
                f"ACiMConv2d: padding_mode={padding_mode!r} is not supported; only 'zeros'"
            )
        self._init_acim(macro, noise, signed_input, mode, trim_noise, digital)
        self._explicit_padding()

    def _explicit_padding(self) -> tuple[int, int]:
        if isinstance(self.padding, str):
            if self.padding == "valid":
                return (0, 0)
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
            if any(t % 2 for t in total):
                raise ValueError(
                    "ACiMConv2d: padding='same' with an even kernel pads "
                    "asymmetrically, which is not supported; pad explicitly"
                )
            return (total[0] // 2, total[1] // 2)
        return tuple(self.padding)

    def _validate_macro(self, macro: MacroConfig) -> None:
        super()._validate_macro(macro)
        conv_tiles(
            self.in_channels,
            self.kernel_size[0] * self.kernel_size[1],
            macro.nrow,
            macro.conv_tiling,
        )

    def forward(self, x: Tensor) -> Tensor:
        return self._run(self.lower(x))

    def lower(self, x: Tensor) -> Lowered:
        """The conv as one matmul of the unfolded input (spec §3.1), for :meth:`_run`."""
        O = self.out_channels
        return Lowered(
            x,
            self.weight,
            self.bias,
            self._conv_forward,
            self._simulate,
            layout=lambda q: q.reshape(O, -1).t(),
            add_bias=_add_channel_bias,
        )

    def _simulate(self, x_int: Tensor, prog) -> Tensor:
        """The engine on the unfolded input, a chunk of images at a time; ``prog`` holds the
        weight programmed as ``(R, O)``, rows in unfold order (channel-major)."""
        B, C, H, W = x_int.shape
        kh, kw = self.kernel_size
        pad = self._explicit_padding()
        tiles, dropped = conv_tiles(C, kh * kw, self.macro.nrow, self.macro.conv_tiling)
        if dropped:
            self._warn_once(
                "dropped",
                f"ACiMConv2d({C}->{self.out_channels}, k={kh}x{kw}): "
                f"nrow={self.macro.nrow} drops the last {dropped} input channels, "
                "as the reference does (quirk Q1); set macro.conv_tiling="
                "all_groups to map them",
            )
        Ho = (H + 2 * pad[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        Wo = (W + 2 * pad[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        L, R, O = Ho * Wo, C * kh * kw, self.out_channels
        program = self._program(0, R, O, tuple(tiles))
        cells = self._cell_noise(R, O, x_int.device)  # one draw per forward, shared by images
        samples = self._batch_samples(B, x_int.device)
        stream = self._stream(samples, L)
        acc = torch.empty(B, O, Ho, Wo, dtype=torch.float32, device=x_int.device)
        rows = acc.permute(0, 2, 3, 1)  # Y's rows (b, ho, wo): the engine writes NCHW
        step = max(1, _UNFOLD_BUDGET // max(1, L * R))
        bits, signed = self.macro.input_bits, self.signed_input
        for b0 in range(0, B, step):
            b1 = min(B, b0 + step)
            cols = _patches(
                x_int[b0:b1], (kh, kw), self.stride, pad, self.dilation, (Ho, Wo), bits, signed
            )  # (b*L, R)
            part = NoiseStream(stream.key, samples[b0:b1], L)
            acim_matmul(cols, prog, program=program, cell_noise=cells, stream=part, out=rows[b0:b1])
        return acc

    @classmethod
    def from_float(
        cls,
        module: nn.Conv2d,
        macro: MacroConfig | None = None,
        noise: NoiseConfig | None = None,
        **kwargs,
    ) -> ACiMConv2d:
        """An ACiMConv2d with ``module``'s weights."""
        layer = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            module.bias is not None,
            module.padding_mode,
            device=module.weight.device,
            dtype=module.weight.dtype,
            macro=macro,
            noise=noise,
            **kwargs,
        )
        layer.load_state_dict(module.state_dict())
        return layer

    def to_float(self) -> nn.Conv2d:
        layer = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.bias is not None,
            self.padding_mode,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        layer.load_state_dict(self.state_dict())
        return layer

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.acim_repr()}"
