"""Tokens as the unit of a language model's noise and activation scale.

A causal language model runs the same token in different calls: once in a forward over a
whole block, or alone in a decoding step against a KV cache. For the two to agree bit for
bit, nothing a token's computation draws or quantizes may depend on which other tokens share
its call. So every ACiM layer of a converted language model treats each token as its own
*sample* of the counter-based noise stream (:mod:`asim.rng`): its noise is addressed by a
token id that packs the sequence's sample index with the token's position in the sequence,
and with ``MacroConfig.act_scale="sample"`` its activation scale is its own.

:class:`TokenIndex` computes those ids once per model forward (a forward pre-hook on the
model reads ``input_ids``, ``position_ids``, the 2-D ``attention_mask`` or the cache length)
and every token layer of the model reads them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import MacroConfig, NoiseConfig
from ..layers import ACiMLinear

__all__ = ["HEAD_BITS", "POSITION_BITS", "ACiMTokenLinear", "TokenIndex", "token_rows"]

POSITION_BITS = 24
"""Bits of a token position in a token id: sequences up to 16 M tokens."""
HEAD_BITS = 10
"""Bits of an attention head in the id of an attention row: up to 1024 heads."""


class TokenIndex:
    """The token ids ``sample << POSITION_BITS | position`` of the tokens of the current forward.

    Called as a forward pre-hook (``with_kwargs=True``) on the model and its base model (what
    a ``transformers`` head model calls with the same inputs). Positions
    come from ``position_ids`` when given, else from the 2-D ``attention_mask`` (a token's
    position counts the real tokens before it, so left padding does not move it), else from
    the cache length. Samples are the indices given by :func:`asim.set_sample_index` (one
    per batch row), else the batch rows.
    """

    def __init__(self) -> None:
        self.ids: Tensor | None = None  # [B, T] int64
        self.layers: list[nn.Module] = []  # token layers of the model (set_sample_index)

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None or ids.dim() < 2:
            self.ids = None
            return
        B, T = ids.shape[:2]
        device = ids.device
        pos = kwargs.get("position_ids")
        if pos is not None and pos.dim() == 3:  # multimodal rotary (3, B, T): the text axis
            pos = pos[0]
        if pos is None:
            mask = kwargs.get("attention_mask")
            if mask is not None and mask.dim() == 2:
                pos = (mask.to(torch.int64).cumsum(-1) - 1).clamp_(min=0)[:, -T:]
            else:
                cache = kwargs.get("cache", kwargs.get("past_key_values"))
                past = int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else 0
                pos = torch.arange(past, past + T, device=device)
        pos = pos.to(device=device, dtype=torch.int64).expand(B, T)
        self.ids = (self._samples(B, device)[:, None] << POSITION_BITS) | pos

    def _samples(self, batch: int, device) -> Tensor:
        index = next((m._sample_index for m in self.layers if m._sample_index is not None), None)
        if index is None:
            return torch.arange(batch, dtype=torch.int64, device=device)
        if index.numel() != batch:
            raise ValueError(
                f"set_sample_index gave {index.numel()} sample indices for a batch of {batch} "
                "sequences; call asim.set_sample_index(model, indices) with one index per row"
            )
        return index.to(device=device, dtype=torch.int64)

    def of(self, shape: torch.Size, device) -> Tensor:
        """Token ids ``[B, T]`` for activations of ``shape`` ``(B, T, ...)``: the forward's
        (its last ``T`` tokens when a head sees only those, ``logits_to_keep``), else (a layer
        called outside a model forward) samples ``0..B-1`` at positions ``0..T-1``."""
        B, T = shape[0], shape[1]
        ids = self.ids
        if ids is not None and ids.shape[0] == B and ids.shape[1] >= T:
            return ids[:, ids.shape[1] - T :].to(device)
        rows = torch.arange(B, dtype=torch.int64, device=device)[:, None] << POSITION_BITS
        return rows | torch.arange(T, dtype=torch.int64, device=device)


def token_rows(tokens: TokenIndex | None, x: Tensor) -> Tensor:
    """Flat token ids ``[B*T]`` of the rows of ``x`` ``[B, T, F]`` (``[N, F]``: N tokens of
    sample 0)."""
    tokens = tokens or TokenIndex()
    shape = x.shape[:-1] if x.dim() > 2 else (1, x.shape[0])
    return tokens.of(shape, x.device).reshape(-1)


class _TokenLayer:
    """What the token layers share: a :class:`TokenIndex` and the row-wise linear call."""

    tokens: TokenIndex | None = None

    def _token_linear(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``x @ weight.T + bias`` with every token its own sample (noise and, with
        ``act_scale="sample"``, activation scale)."""
        rows = x.reshape(-1, x.shape[-1])  # [tokens, F]
        samples = token_rows(self.tokens, x) if self.mode == "simulate" else None
        y = self._linear(rows, weight, bias, 0, samples)
        return y.reshape(*x.shape[:-1], weight.shape[0])


class ACiMTokenLinear(_TokenLayer, ACiMLinear):
    """An :class:`~asim.ACiMLinear` of a language model: every token is its own sample.

    Same parameters and arguments as :class:`~asim.ACiMLinear`; ``from_float`` shares the
    float layer's parameters (a tied LM head stays tied to the embedding).
    """

    def forward(self, x: Tensor) -> Tensor:
        return self._token_linear(x, self.weight, self.bias)

    @classmethod
    def from_float(
        cls,
        module: nn.Linear,
        macro: MacroConfig | None = None,
        noise: NoiseConfig | None = None,
        **kwargs,
    ) -> ACiMTokenLinear:
        layer = cls(
            module.in_features,
            module.out_features,
            module.bias is not None,
            device="meta",
            dtype=module.weight.dtype,
            macro=macro,
            noise=noise,
            **kwargs,
        )
        layer.weight = module.weight
        layer.bias = module.bias
        return layer
