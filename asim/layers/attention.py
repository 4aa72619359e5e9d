"""ACiMMultiheadAttention: ``nn.MultiheadAttention`` as a unit on ACiM macros (spec §7.2).

The qkv and output projections are ACiM linears (signed inputs); QK^T and AV are matmuls
with two dynamic operands, each simulated on its own macro: for QK, q plays the weight role
and k the activation role (signed); for AV, v plays the weight role and the softmax scores
the activation role (unsigned). Softmax, scaling, masking and dropout stay digital (float).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention_common import ATTN_SCALES, merge_masks
from ..config import MacroConfig, NoiseConfig
from ..engine import acim_matmul
from .base import ACiMLayer, Lowered
from .linear import ACiMLinear

__all__ = ["ACiMMultiheadAttention", "ATTN_SCALES"]


def _matmul(x: Tensor, w: Tensor, bias: None) -> Tensor:
    return torch.matmul(x, w)


class ACiMMultiheadAttention(ACiMLayer, nn.MultiheadAttention):
    """Multi-head attention whose projections and QK/AV matmuls run on ACiM macros.

    Keeps torch's parameters (``in_proj_weight``, ``in_proj_bias``, ``out_proj.*``), so a
    ``nn.MultiheadAttention`` state_dict loads unchanged.

    Args:
        macro: macro of the qkv and output projections.
        noise: read-out noise of the projections.
        qk_macro: macro of QK^T: ``weight_bits`` = q bits, ``input_bits`` = k bits,
            ``input_enc_bits`` = k encoding (ASiM ``qk_qbit``, ``qk_kbit``, ``qk_k_enc``,
            ``qk_adc_prec``). Default: ``macro``.
        av_macro: macro of AV: ``weight_bits`` = v bits, ``input_bits`` = score bits
            (ASiM ``av_vbit``, ``av_abit``, ``av_a_enc``, ``av_adc_prec``). Default: ``macro``.
        qk_noise, av_noise: read-out noise of QK and AV. Default: ``noise``.
        mode: ``"train"``, ``"inference"`` or ``"simulate"`` (also set on ``out_proj``).
        trim_noise: noise-aware-training perturbation of the projections, % (``proj_trim_noise``).
        attn_trim_noise: the same for QK and AV, % (ASiM ``attn_trim_noise``).
        attn_scale: ``"head_dim"`` (torch) or ``"embed_dim"`` (the reference, quirk Q13).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim=None,
        vdim=None,
        batch_first: bool = False,
        device=None,
        dtype=None,
        *,
        macro: MacroConfig | None = None,
        noise: NoiseConfig | None = None,
        qk_macro: MacroConfig | None = None,
        av_macro: MacroConfig | None = None,
        qk_noise: NoiseConfig | None = None,
        av_noise: NoiseConfig | None = None,
        signed_input: bool = True,
        mode: str = "simulate",
        trim_noise: float = 0.0,
        attn_trim_noise: float = 0.0,
        attn_scale: str = "head_dim",
        digital: bool = False,
    ):
        if add_bias_kv or add_zero_attn:
            raise ValueError(
                "ACiMMultiheadAttention: add_bias_kv/add_zero_attn are not "
                "supported; keep this attention layer float (exclude it)"
            )
        if (kdim not in (None, embed_dim)) or (vdim not in (None, embed_dim)):
            raise ValueError(
                "ACiMMultiheadAttention: kdim/vdim different from embed_dim are "
                "not supported; keep this attention layer float (exclude it)"
            )
        if attn_scale not in ATTN_SCALES:
            raise ValueError(
                f"attn_scale={attn_scale!r} is not valid; choose one of {', '.join(ATTN_SCALES)}"
            )
        if not signed_input:
            raise ValueError(
                "ACiMMultiheadAttention: projections take signed inputs; signed_input must be True"
            )
        super().__init__(
            embed_dim, num_heads, dropout, bias, batch_first=batch_first, device=device, dtype=dtype
        )
        self._init_acim(macro, noise, True, mode, trim_noise, digital)
        old = self.out_proj
        self.out_proj = ACiMLinear(
            embed_dim,
            embed_dim,
            bias,
            device=device,
            dtype=dtype,
            macro=self.macro,
            noise=noise,
            signed_input=True,
            mode=mode,
            trim_noise=trim_noise,
            digital=digital,
        )
        self.out_proj.load_state_dict(old.state_dict())
        self.qk_macro = qk_macro or self.macro
        self.av_macro = av_macro or self.macro
        self._check_encoding(self.qk_macro, True, "key (QK)")
        self._check_encoding(self.av_macro, False, "score (AV)")
        self.qk_noise = noise if qk_noise is None else qk_noise
        self.av_noise = noise if av_noise is None else av_noise
        self.attn_trim_noise = float(attn_trim_noise)
        self.attn_scale = attn_scale

    @ACiMLayer.mode.setter
    def mode(self, value: str) -> None:
        ACiMLayer.mode.fset(self, value)
        if "out_proj" in self._modules:
            self.out_proj.mode = value

    def reseed(self, seed: int | None) -> None:
        super().reseed(seed)
        self.out_proj.reseed(None if seed is None else seed + 1)

    # ------------------------------------------------------------------------------ forward
    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        key = query if key is None else key  # self-attention when key/value are omitted
        value = key if value is None else value
        if not self.batch_first:
            same = query is key and key is value
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
            if same:
                key = value = query
        B, Nq, C = query.shape
        H, d = self.num_heads, C // self.num_heads
        w, b = self.in_proj_weight, self.in_proj_bias
        samples = self._batch_samples(B, query.device)  # engine calls 0-4 share them
        if query is key and key is value:
            qkv = self._linear(query, w, b, 0, samples)  # one packed projection (reference)
            q, k, v = qkv.chunk(3, dim=-1)
        else:
            bs = (None, None, None) if b is None else b.chunk(3)
            parts = zip((query, key, value), w.chunk(3), bs, strict=True)
            q, k, v = (self._linear(t, wi, bi, n, samples) for n, (t, wi, bi) in enumerate(parts))
        q, k, v = (t.reshape(B, -1, H, d).transpose(1, 2) for t in (q, k, v))  # (B, H, N, d)

        # QK^T: k is the activation role, q the weight role -> (B, H, Nk, Nq), transposed.
        logits = self._dynamic(
            k, q.transpose(-2, -1), self.qk_macro, self.qk_noise, True, 3, samples
        ).transpose(-2, -1)
        scale = (C if self.attn_scale == "embed_dim" else d) ** -0.5
        logits = logits * scale
        mask = merge_masks(
            attn_mask,
            key_padding_mask,
            is_causal,
            B,
            H,
            Nq,
            k.shape[-2],
            logits.dtype,
            logits.device,
        )
        if mask is not None:
            logits = logits + mask
        attn = logits.softmax(dim=-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, p=self.dropout)
        out = self._dynamic(attn, v, self.av_macro, self.av_noise, False, 4, samples)
        out = out.transpose(1, 2).reshape(B, Nq, C)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        weights = None
        if need_weights:
            weights = attn.mean(dim=1) if average_attn_weights else attn
        return out, weights

    def _dynamic(
        self,
        x: Tensor,
        w: Tensor,
        macro: MacroConfig,
        noise: NoiseConfig | None,
        signed_x: bool,
        sub: int = 3,
        samples: Tensor | None = None,
    ) -> Tensor:
        """``x @ w`` of two activation tensors ``[B, H, N, .]``; ``w`` is the weight role
        (always signed). Engine call ``sub`` of the forward; a sample's rows are its heads'
        rows, ``pos = head * N + row``."""

        def engine(x_int: Tensor, w_int: Tensor) -> Tensor:
            R, O = x.shape[-1], w.shape[-1]
            idx = self._batch_samples(x.shape[0], x.device) if samples is None else samples
            return acim_matmul(
                x_int,
                w_int,
                program=self._program(sub, R, O, macro=macro, noise=noise, signed=signed_x),
                stream=self._stream(idx, x_int.shape[1:-1].numel(), sub),
            )

        return self._run(
            Lowered(x, w, None, _matmul, engine, macro=macro, signed=signed_x, trim=self._attn_trim)
        )

    def _attn_trim(self, y: Tensor) -> Tensor:
        if self.attn_trim_noise <= 0:
            return y
        z = torch.randn(y.shape, dtype=y.dtype, device=y.device, generator=self.generator(y.device))
        return y + z * (self.attn_trim_noise / 100.0 * y)

    # ------------------------------------------------------------------------- conversion
    @classmethod
    def from_float(
        cls,
        module: nn.MultiheadAttention,
        macro: MacroConfig | None = None,
        noise: NoiseConfig | None = None,
        **kwargs,
    ) -> ACiMMultiheadAttention:
        """Replace a whole ``nn.MultiheadAttention`` (or a subclass with a ``scale`` string
        attribute such as ``asim.models.layers.ScaledMultiheadAttention``)."""
        if not module._qkv_same_embed_dim:
            raise ValueError(
                "ACiMMultiheadAttention: kdim/vdim different from embed_dim are "
                "not supported; keep this attention layer float (exclude it)"
            )
        scale = getattr(module, "scale", "head_dim")
        kwargs.setdefault("attn_scale", scale if scale in ATTN_SCALES else "head_dim")
        layer = cls(
            module.embed_dim,
            module.num_heads,
            module.dropout,
            module.in_proj_bias is not None,
            module.bias_k is not None,
            module.add_zero_attn,
            batch_first=module.batch_first,
            device=module.in_proj_weight.device,
            dtype=module.in_proj_weight.dtype,
            macro=macro,
            noise=noise,
            **kwargs,
        )
        layer.load_state_dict(module.state_dict())
        layer._float_cls = type(module)
        return layer

    def to_float(self) -> nn.MultiheadAttention:
        cls = getattr(self, "_float_cls", None)
        if cls is None:
            cls = nn.MultiheadAttention
            if self.attn_scale == "embed_dim":
                from ..models.layers import ScaledMultiheadAttention

                cls = ScaledMultiheadAttention
        kwargs = {"scale": self.attn_scale} if cls is not nn.MultiheadAttention else {}
        layer = cls(
            self.embed_dim,
            self.num_heads,
            self.dropout,
            self.in_proj_bias is not None,
            batch_first=self.batch_first,
            device=self.in_proj_weight.device,
            dtype=self.in_proj_weight.dtype,
            **kwargs,
        )
        layer.load_state_dict(self.state_dict())
        return layer

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
            f"{self.acim_repr()}, qk={self.qk_macro.describe()}, "
            f"av={self.av_macro.describe()}, attn_scale={self.attn_scale}"
        )
