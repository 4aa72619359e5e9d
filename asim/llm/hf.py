"""Hugging Face ``transformers`` causal LMs on the macro: what :func:`asim.convert_to_acim`
adds for them (GPT-2's ``Conv1D``, the ``"asim"`` attention implementation, token ids).

Imported only when a ``transformers`` model is converted, so ``asim`` itself never needs
``transformers`` (``pip install -e ".[llm]"`` adds it).
"""

from __future__ import annotations

import warnings

import torch
import transformers
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.pytorch_utils import Conv1D

from ..config import ActScale, MacroConfig, NoiseConfig
from ..layers import ACiMLayer
from .attention import ACiMAttention, attention_forward
from .tokens import ACiMTokenLinear, TokenIndex, _TokenLayer

__all__ = ["ATTENTION", "ACiMConv1D", "attach", "attention_modules", "decode", "prepare"]

ATTENTION = "asim"
"""The name of :func:`~asim.llm.attention.attention_forward` in ``AttentionInterface`` (and of
its mask, ``transformers``' additive ``eager_mask``: causal and padding in one)."""

AttentionInterface.register(ATTENTION, attention_forward)
AttentionMaskInterface.register(ATTENTION, eager_mask)


class ACiMConv1D(_TokenLayer, ACiMLayer, Conv1D):
    """GPT-2's ``Conv1D`` (``y = x @ weight + bias``, ``weight`` stored ``[in, out]``) on an
    ACiM macro; every token is its own sample. Keeps ``Conv1D``'s parameters (shared with the
    float layer by ``from_float``), so GPT-2 checkpoints load unchanged.

    Args:
        nf, nx: output and input features, as ``Conv1D``.
        macro, noise, signed_input, mode, trim_noise, digital: as :class:`asim.ACiMLinear`.
    """

    def __init__(
        self,
        nf: int,
        nx: int,
        *,
        macro: MacroConfig | None = None,
        noise: NoiseConfig | None = None,
        signed_input: bool = True,
        mode: str = "simulate",
        trim_noise: float = 0.0,
        digital: bool = False,
    ):
        Conv1D.__init__(self, nf, nx)
        self._init_acim(macro, noise, signed_input, mode, trim_noise, digital)

    def forward(self, x: Tensor) -> Tensor:
        return self._token_linear(x, self.weight.t(), self.bias)

    @classmethod
    def from_float(
        cls,
        module: Conv1D,
        macro: MacroConfig | None = None,
        noise: NoiseConfig | None = None,
        **kwargs,
    ) -> ACiMConv1D:
        with torch.device("meta"):
            layer = cls(module.nf, module.nx, macro=macro, noise=noise, **kwargs)
        layer.weight = module.weight
        layer.bias = module.bias
        return layer

    def to_float(self) -> Conv1D:
        with torch.device("meta"):
            layer = Conv1D(self.nf, self.nx)
        layer.weight = self.weight
        layer.bias = self.bias
        return layer

    def cost_tallies(self, args, kwargs, output, cost):
        """One ``[tokens, nx] @ [nx, nf]`` matmul (:mod:`asim.cost`)."""
        from ..cost import _digital_tally, _matmul_tally
        from ..engine import linear_tiles

        x = args[0] if args else kwargs["x"]
        rows = x.numel() // self.nx
        if self.digital:
            return [("", _digital_tally(rows * self.nx * self.nf, cost))]
        tiles = linear_tiles(self.nx, self.macro.nrow)
        return [("", _matmul_tally(rows, self.nf, tiles, self.macro, self.signed_input, cost))]

    __repr__ = nn.Module.__repr__

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}, {self.acim_repr()}"


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The self-attention modules of a ``transformers`` model, by qualified name: modules
    named ``*Attention`` with a ``layer_idx`` that read ``config._attn_implementation``
    (cross-attention keeps float)."""
    return {
        name: m
        for name, m in model.named_modules()
        if type(m).__name__.endswith("Attention")
        and hasattr(m, "layer_idx")
        and hasattr(m, "config")
        and not getattr(m, "is_cross_attention", False)
    }


LAYER_MAP: dict[type[nn.Module], type[ACiMLayer]] = {
    nn.Linear: ACiMTokenLinear,
    Conv1D: ACiMConv1D,
}
"""What a ``transformers`` model's matmul layers become (on top of :data:`asim.LAYER_MAP`)."""


def prepare(model: nn.Module, macro: MacroConfig, attn_trim_noise: float = 0.0) -> None:
    """Checks before converting a ``transformers`` model (raises ValueError)."""
    if attn_trim_noise:
        raise ValueError(
            "attn_trim_noise: noise-aware training of a language model's QK^T and AV is not "
            "supported; pass attn_trim_noise=0"
        )
    if macro.act_scale == ActScale.batch:
        warnings.warn(
            "asim: MacroConfig.act_scale='batch' gives a language model's activations one scale "
            "per call, so a token's result depends on the other tokens of its call (KV-cache "
            "generation then differs from re-running the sequence); act_scale='sample' scales "
            "every token on its own",
            stacklevel=3,
        )


def attach(
    model: nn.Module,
    names: dict[str, nn.Module],
    macro_for,
    noise: NoiseConfig | None,
    mode: str,
    excluded,
) -> list[str]:
    """Give every self-attention module in ``names`` an :class:`ACiMAttention` (child
    ``acim``; macros ``macro_for(NAME.qk)``, ``macro_for(NAME.av)``), switch the model to the
    ``"asim"`` attention, and let every token layer read the model's token ids. Returns the
    names of the attention modules whose QK^T and AV now run on the macro."""
    done = []
    for name, module in names.items():
        if excluded(name):
            continue
        qk = macro_for(name + ".qk", module)
        av = macro_for(name + ".av", module)
        module.acim = ACiMAttention(macro=qk, noise=noise, av_macro=av, mode=mode)
        done.append(name)
    tokens = TokenIndex()
    for m in model.modules():
        if isinstance(m, (_TokenLayer, ACiMAttention)):
            m.tokens = tokens
            tokens.layers.append(m)
    for top in {model, getattr(model, "base_model", model)}:  # sim(...) or sim.model(...)
        top.register_forward_pre_hook(tokens, with_kwargs=True)
    model.set_attn_implementation(ATTENTION)
    return done


def decode(model: nn.Module, prompt: Tensor, steps: int) -> None:
    """The forwards of generating with a KV cache: the prompt ``[B, T]`` in one forward, then
    ``steps`` forwards of one token each (token 0: only shapes matter to the cost model)."""
    name = "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"
    cache = getattr(model(input_ids=prompt, use_cache=True), name)
    B = prompt.shape[0]
    for _ in range(steps):
        step = torch.zeros(B, 1, dtype=prompt.dtype, device=prompt.device)
        cache = getattr(model(input_ids=step, use_cache=True, **{name: cache}), name)
