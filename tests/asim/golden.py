"""Build asim layers from the golden-case JSON (reference parameter names -> asim's)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

from asim import (
    ACiMConv2d,
    ACiMLinear,
    ACiMMultiheadAttention,
    MacroConfig,
    NoiseConfig,
)

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "acim-golden-cases.json"


@lru_cache(maxsize=1)
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def f32(values) -> torch.Tensor:
    """JSON floats are exact float32 decimals: parse as float64, then cast."""
    return torch.tensor(values, dtype=torch.float64).to(torch.float32)


def deterministic(prefix: str) -> dict:
    return next(c for c in golden()["deterministic_cases"] if c["id"].startswith(prefix))


def macro_of(cfg: dict, **extra) -> MacroConfig:
    return MacroConfig(
        weight_bits=cfg["wbit"],
        input_bits=cfg["xbit"],
        nrow=cfg["nrow"],
        adc_bits=cfg["adc_prec"],
        input_enc_bits=cfg.get("act_enc"),
        hybrid_levels=cfg.get("hybrid_levels") or 0,
        vote_levels=cfg.get("voting_levels") or 0,
        vote_samples=cfg.get("num_samp") or 1,
        **extra,
    )


def noise_of(cfg: dict) -> NoiseConfig:
    return NoiseConfig(
        rand_sigma=cfg.get("rand_noise_sigma", 0.0),
        nonlinear_sigma=cfg.get("non_linear_sigma", 0.0),
    )


def build_layer(case: dict, mode: str = "simulate", **macro_extra):
    """The asim layer of a golden case with its weights loaded."""
    cfg = case["config"]
    if case["module"].endswith("MultiheadAttention"):
        w = case["weights"]
        nrow = cfg["nrow"]
        proj = MacroConfig(
            weight_bits=cfg["proj_wbit"],
            input_bits=cfg["proj_xbit"],
            nrow=nrow,
            adc_bits=cfg["proj_adc_prec"],
            input_enc_bits=cfg["proj_act_enc"],
            **macro_extra,
        )
        qk = MacroConfig(
            weight_bits=cfg["qk_qbit"],
            input_bits=cfg["qk_kbit"],
            nrow=nrow,
            adc_bits=cfg["qk_adc_prec"],
            input_enc_bits=cfg["qk_k_enc"],
            **macro_extra,
        )
        av = MacroConfig(
            weight_bits=cfg["av_vbit"],
            input_bits=cfg["av_abit"],
            nrow=nrow,
            adc_bits=cfg["av_adc_prec"],
            input_enc_bits=cfg["av_a_enc"],
            **macro_extra,
        )
        layer = ACiMMultiheadAttention(
            cfg["embed_dim"],
            cfg["num_heads"],
            batch_first=True,
            macro=proj,
            qk_macro=qk,
            av_macro=av,
            mode=mode,
            attn_scale="embed_dim",
        )
        with torch.no_grad():
            layer.in_proj_weight.copy_(f32(w["qkv.weight"]))
            layer.in_proj_bias.copy_(f32(w["qkv.bias"]))
            layer.out_proj.weight.copy_(f32(w["proj.weight"]))
            layer.out_proj.bias.copy_(f32(w["proj.bias"]))
        return layer.eval()
    macro, noise = macro_of(cfg, **macro_extra), noise_of(cfg)
    weight = f32(case["weight"])
    has_bias = case.get("bias") is not None
    if case["module"].endswith("Conv2d"):
        layer = ACiMConv2d(
            cfg["in_channels"],
            cfg["out_channels"],
            cfg["kernel_size"],
            stride=cfg["stride"],
            padding=cfg["padding"],
            bias=has_bias,
            macro=macro,
            noise=noise,
            signed_input=cfg["signed_act"],
            mode=mode,
        )
    else:
        layer = ACiMLinear(
            weight.shape[1],
            weight.shape[0],
            bias=has_bias,
            macro=macro,
            noise=noise,
            signed_input=cfg["signed_act"],
            mode=mode,
        )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if has_bias:
            layer.bias.copy_(f32(case["bias"]))
    return layer.eval()


def bits(t: torch.Tensor) -> list[int]:
    return t.detach().to(torch.float32).contiguous().view(torch.int32).flatten().tolist()
