"""ACiMLinear: ``nn.Linear`` on an ACiM macro (spec §3.2, §7.1)."""

from __future__ import annotations

from torch import Tensor, nn

from ..config import MacroConfig, NoiseConfig
from .base import ACiMLayer

__all__ = ["ACiMLinear"]


class ACiMLinear(ACiMLayer, nn.Linear):
    """A linear layer whose MACs run on an ACiM macro.

    Torch's arguments are unchanged; the ACiM ones are keyword-only. Inputs may have any
    number of leading dims; ``in_features`` is tiled over ``nrow`` rows.

    Args:
        macro: the macro (default: ``MacroConfig()``, the lossless W8A8 nrow-255 macro).
        noise: read-out noise; None is noise-free.
        signed_input: quantize activations signed (default, as the reference's linear) or
            unsigned (inputs after a ReLU; negatives become 0).
        mode: ``"train"``, ``"inference"`` or ``"simulate"``.
        trim_noise: noise-aware-training output perturbation in % (spec §1.6).
        digital: always fake-quantized, never simulated (a digital layer).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        macro: MacroConfig | None = None,
        noise: NoiseConfig | None = None,
        signed_input: bool = True,
        mode: str = "simulate",
        trim_noise: float = 0.0,
        digital: bool = False,
    ):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_acim(macro, noise, signed_input, mode, trim_noise, digital)

    def forward(self, x: Tensor) -> Tensor:
        return self._linear(x, self.weight, self.bias)

    @classmethod
    def from_float(
        cls,
        module: nn.Linear,
        macro: MacroConfig | None = None,
        noise: NoiseConfig | None = None,
        **kwargs,
    ) -> ACiMLinear:
        """An ACiMLinear with ``module``'s weights (shared storage is not kept)."""
        layer = cls(
            module.in_features,
            module.out_features,
            module.bias is not None,
            device=module.weight.device,
            dtype=module.weight.dtype,
            macro=macro,
            noise=noise,
            **kwargs,
        )
        layer.load_state_dict(module.state_dict())
        return layer

    def to_float(self) -> nn.Linear:
        layer = nn.Linear(
            self.in_features,
            self.out_features,
            self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        layer.load_state_dict(self.state_dict())
        return layer

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.acim_repr()}"
