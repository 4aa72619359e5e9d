"""QK^T and AV of a language model on their macros, with the KV cache as the array operand.

On a compute-in-memory chip the KV cache is what the array holds: every token's key and value
are quantized once, when the token is computed, and *written* into the array; later queries
stream through it as activations. :class:`ACiMAttention` models that:

* ``QK^T``: the keys are the weight role (signed ``k`` codes, ``qk_macro.weight_bits``, one
  scale per key token and head, written once), the queries the activation role (signed,
  ``qk_macro.input_bits``, one scale per query token and head);
* ``AV``: the values are the weight role (signed ``v`` codes, ``av_macro.weight_bits``, one
  scale per value token and head); each value's scale is folded into the scores before they
  are quantized (``p_s * s_v``, unsigned, ``av_macro.input_bits``, one scale per query row),
  so a value never needs re-writing when later tokens arrive.

Softmax, the attention scale, the masks (causal, padding, given by ``transformers``) and
dropout stay digital (float). Grouped-query attention maps every query head of a group onto
its key/value head's array. A row of either matmul is one (query token, head): its noise is
addressed by the token id (:mod:`asim.llm.tokens`) and the head, its output columns by the
cache slot (QK) or the head dimension (AV), so a token's result does not depend on the batch
or on whether it is computed in one forward or step by step with a cache.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import Division, MacroConfig, NoiseConfig
from ..engine import linear_tiles
from ..layers import ACiMLayer
from ..quant import EPS, dequantize, quantize, signed_levels, unsigned_levels
from .tokens import HEAD_BITS, TokenIndex

__all__ = ["ACiMAttention", "attention_forward"]


def _row_scale(t: Tensor, signed: bool) -> Tensor:
    """One quantization scale per row (last dim reduced): ``max|t| + eps`` or ``max t + eps``."""
    t = t.detach()
    return (t.abs() if signed else t).amax(dim=-1, keepdim=True) + EPS


def _ste(x: Tensor, value: Tensor) -> Tensor:
    """``value`` in the forward, ``x``'s gradient in the backward (straight-through)."""
    return x + (value - x).detach()


class ACiMAttention(ACiMLayer, nn.Module):
    """QK^T and AV of one ``transformers`` attention layer on ACiM macros.

    :func:`asim.convert_to_acim` adds one as the child ``acim`` of every self-attention
    module of a Hugging Face causal LM, and the model's attention implementation ``"asim"``
    (:func:`attention_forward`) runs it.

    Args:
        macro: macro of QK^T: ``weight_bits`` = key bits (the cache), ``input_bits`` = query
            bits. (The reference's ViT attention has them the other way round.)
        noise: read-out noise of QK^T (None: noise-free).
        av_macro: macro of AV: ``weight_bits`` = value bits, ``input_bits`` = score bits.
            Default: ``macro``.
        av_noise: read-out noise of AV. Default: ``noise``.
        mode: ``"train"`` (fake quantization, straight-through gradients), ``"inference"``
            (integer matmuls) or ``"simulate"`` (the macros).
    """

    def __init__(
        self,
        *,
        macro: MacroConfig | None = None,
        noise: NoiseConfig | None = None,
        av_macro: MacroConfig | None = None,
        av_noise: NoiseConfig | None = None,
        mode: str = "simulate",
    ):
        nn.Module.__init__(self)
        self._init_acim(macro, noise, True, mode, 0.0, False)
        self.av_macro = av_macro or self.macro
        self._check_encoding(self.av_macro, False, "score (AV)")
        self.av_noise = noise if av_noise is None else av_noise
        self.tokens: TokenIndex | None = None

    @property
    def qk_macro(self) -> MacroConfig:
        return self.macro

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None = None,
        scaling: float | None = None,
        dropout: float = 0.0,
        is_causal: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """``softmax(q k^T * scaling + mask) v`` of ``query`` ``[B, H, L, d]`` and the cache's
        ``key``/``value`` ``[B, H_kv, S, d]``; returns ``(out [B, L, H, d], scores [B, H, L, S])``
        as ``transformers``' attention functions do."""
        B, H, L, d = query.shape
        Hkv, S = key.shape[1], key.shape[2]
        if H % Hkv:
            raise ValueError(f"ACiMAttention: {H} query heads do not group onto {Hkv} kv heads")
        g = H // Hkv
        scaling = d**-0.5 if scaling is None else scaling
        dtype = query.dtype  # codes and accumulators in float32 (exact), whatever the model's
        query, key, value = (t.float() for t in (query, key, value))
        q = query.reshape(B, Hkv, g * L, d)  # a group's query heads share its kv head's array
        rows = self._row_ids(B, H, L, Hkv, g, query.device)

        logits = self._qk(q, key, rows).view(B, H, L, S) * scaling
        mask = self._mask(attention_mask, is_causal, B, L, S, logits)
        if mask is not None:
            logits = logits + mask
        scores = logits.softmax(dim=-1)
        if dropout > 0 and self.training:
            scores = nn.functional.dropout(scores, p=dropout)
        out = self._av(scores.view(B, Hkv, g * L, S), value, rows)
        return out.view(B, H, L, d).transpose(1, 2).to(dtype), scores.to(dtype)

    # ------------------------------------------------------------------ the two matmuls
    def _qk(self, q: Tensor, k: Tensor, rows: Tensor | None) -> Tensor:
        m = self.macro
        sq, sk = _row_scale(q, True), _row_scale(k, True)  # per query row / per key token
        if self.mode == "train":
            qf = _ste(q, quantize(q, m.input_bits, sq, True) * (sq / signed_levels(m.input_bits)))
            kf = _ste(k, quantize(k, m.weight_bits, sk, True) * (sk / signed_levels(m.weight_bits)))
            return qf @ kf.transpose(-2, -1)
        with torch.no_grad():
            q_int = quantize(q, m.input_bits, sq, True)
            k_int = quantize(k, m.weight_bits, sk, True).transpose(-2, -1)  # [B, Hkv, d, S]
            acc = self._matmul(q_int, k_int, m, self.noise, True, rows, 0)
            return dequantize(
                acc,
                sk.transpose(-2, -1),
                sq,
                signed_levels(m.weight_bits),
                signed_levels(m.input_bits),
                m.division == Division.reciprocal,
                in_place=True,
            )

    def _av(self, p: Tensor, v: Tensor, rows: Tensor | None) -> Tensor:
        m = self.av_macro
        sv = _row_scale(v, True)  # [B, Hkv, S, 1]: one scale per value token, written once
        pv = p * sv.transpose(-2, -1)  # the value scales folded into the scores
        sp = _row_scale(pv, False)
        if self.mode == "train":
            pf = _ste(
                pv, quantize(pv, m.input_bits, sp, False) * (sp / unsigned_levels(m.input_bits))
            )
            vf = _ste(v / sv, quantize(v, m.weight_bits, sv, True) / signed_levels(m.weight_bits))
            return pf @ vf
        with torch.no_grad():
            p_int = quantize(pv, m.input_bits, sp, False)
            v_int = quantize(v, m.weight_bits, sv, True)
            acc = self._matmul(p_int, v_int, m, self.av_noise, False, rows, 1)
            return dequantize(
                acc,
                sp,
                torch.ones((), dtype=acc.dtype, device=acc.device),
                signed_levels(m.weight_bits),
                unsigned_levels(m.input_bits),
                m.division == Division.reciprocal,
                in_place=True,
            )

    def _matmul(self, x_int, w_int, macro, noise, signed, rows, sub) -> Tensor:
        if self.mode == "inference":
            return torch.matmul(x_int, w_int)
        return self._mvm(
            x_int,
            w_int,
            tiles=linear_tiles(x_int.shape[-1], macro.nrow),
            macro=macro,
            noise=noise,
            signed=signed,
            stream=self._stream(rows, 1, sub),
        )

    def _row_ids(self, B, H, L, Hkv, g, device) -> Tensor | None:
        """Noise id of every (query token, head) row, in the matmuls' row order
        ``(b, kv head, head in group, token)``."""
        if self.mode != "simulate":
            return None
        tokens = (self.tokens or TokenIndex()).of((B, L), device)  # [B, L]
        heads = torch.arange(H, dtype=torch.int64, device=device).view(1, Hkv, g, 1)
        return ((tokens.view(B, 1, 1, L) << HEAD_BITS) | heads).reshape(-1)

    @staticmethod
    def _mask(mask: Tensor | None, is_causal: bool, B, L, S, like: Tensor) -> Tensor | None:
        """The additive mask broadcastable to ``[B, H, L, S]``: ``transformers``' (float, or
        boolean with True = attend), else the causal one for the last ``L`` of ``S`` tokens."""
        if mask is None:
            if not is_causal or L == 1:
                return None
            allowed = torch.ones(L, S, dtype=torch.bool, device=like.device).tril(S - L)
            mask = allowed
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill_(
                ~mask, torch.finfo(like.dtype).min
            )
        return mask[..., -S:].to(like.dtype)

    # ------------------------------------------------------------------ conversion
    def to_float(self) -> nn.Module:
        """A placeholder: the model's attention then runs float (``sdpa``)."""
        return FloatAttention()

    def extra_repr(self) -> str:
        qk = self.acim_repr().replace("macro=", "qk=", 1)
        return f"{qk}, av={self.av_macro.describe()}, kv_cache=array"

    # ------------------------------------------------------------------ cost model
    def cost_tallies(self, args, kwargs, output, cost):
        """QK^T, AV and the cache writes of one call (:mod:`asim.cost`): this call's ``L``
        new tokens write their keys and values (``H_kv * d`` codes each) into the arrays."""
        from ..cost import _matmul_tally, write_tally

        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs["key"]
        B, H, L, d = query.shape
        Hkv, S = key.shape[1], key.shape[2]
        qk, av = self.macro, self.av_macro
        t_qk = _matmul_tally(B * H * L, S, linear_tiles(d, qk.nrow), qk, True, cost)
        t_qk.add(write_tally(B * L * Hkv * d * qk.weight_bits, qk, cost))
        t_av = _matmul_tally(B * H * L, d, linear_tiles(S, av.nrow), av, False, cost)
        t_av.add(write_tally(B * L * Hkv * d * av.weight_bits, av, cost))
        return [(".qk", t_qk), (".av", t_av)]


class FloatAttention(nn.Module):
    """Where an :class:`ACiMAttention` was, after :func:`asim.to_float`: attention runs float."""


def attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, Tensor | None]:
    """The ``"asim"`` attention implementation registered with ``transformers``'
    ``AttentionInterface``: the module's :class:`ACiMAttention` (child ``acim``), or float
    ``sdpa`` where it has none (cross-attention, a model back from :func:`asim.to_float`)."""
    core = getattr(module, "acim", None)
    if isinstance(core, ACiMAttention):
        return core(
            query,
            key,
            value,
            attention_mask,
            scaling,
            dropout,
            is_causal=getattr(module, "is_causal", True),
        )
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )
