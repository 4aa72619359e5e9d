"""Tests proving the reference oracle (tests/asim/oracle.py) right against the spec's
golden vectors (acim-golden-cases.json) and the spec's stated properties.

The oracle is loaded by file path so that these tests never depend on ``asim``
and work whether or not ``tests`` is a package.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import struct
import sys
from pathlib import Path

import pytest
import torch

_HERE = Path(__file__).resolve().parent


def _load_oracle():
    name = "acim_oracle"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _HERE / "oracle.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


O = _load_oracle()

GOLDEN_PATH = Path(os.environ.get("ACIM_GOLDEN", _HERE.parent / "data" / "acim-golden-cases.json"))
GOLDEN = json.loads(GOLDEN_PATH.read_text())
DET = {c["id"].split("_")[0]: c for c in GOLDEN["deterministic_cases"]}
STAT = GOLDEN["statistical_cases"]


# ----------------------------------------------------------------------------- helpers


def f32(v) -> torch.Tensor:
    """JSON numbers are exact float32 decimals: parse as float64, cast to float32."""
    return torch.tensor(v, dtype=torch.float64).to(torch.float32)


def hexes(t: torch.Tensor) -> list[str]:
    """Big-endian IEEE-754 single bit patterns, row-major (the JSON's *_f32_hex format)."""
    return [struct.pack(">f", v).hex() for v in t.to(torch.float32).flatten().tolist()]


def assert_bits_equal(actual: torch.Tensor, expected: torch.Tensor):
    assert actual.dtype == torch.float32 and expected.dtype == torch.float32
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.equal(actual.view(torch.int32), expected.view(torch.int32)), (
        f"\nactual   {actual.flatten().tolist()}\nexpected {expected.flatten().tolist()}"
    )


def linear_kwargs(cfg):
    return dict(
        signed_act=cfg["signed_act"],
        wbit=cfg["wbit"],
        xbit=cfg["xbit"],
        adc_prec=cfg["adc_prec"],
        nrow=cfg["nrow"],
        act_enc=cfg["act_enc"],
        hybrid_levels=cfg.get("hybrid_levels") or 0,
    )


def conv_kwargs(cfg):
    return dict(linear_kwargs(cfg), stride=cfg["stride"], padding=cfg["padding"])


def attn_kwargs(cfg):
    return dict(
        num_heads=cfg["num_heads"],
        nrow=cfg["nrow"],
        proj_wbit=cfg["proj_wbit"],
        proj_xbit=cfg["proj_xbit"],
        proj_adc=cfg["proj_adc_prec"],
        proj_act_enc=cfg["proj_act_enc"],
        qk_qbit=cfg["qk_qbit"],
        qk_kbit=cfg["qk_kbit"],
        qk_adc=cfg["qk_adc_prec"],
        qk_k_enc=cfg["qk_k_enc"],
        av_vbit=cfg["av_vbit"],
        av_abit=cfg["av_abit"],
        av_adc=cfg["av_adc_prec"],
        av_a_enc=cfg["av_a_enc"],
        hybrid_levels=cfg.get("hybrid_levels") or 0,
    )


def run_case(case, mode="simulate", trace=None, **extra):
    cfg = case["config"]
    bias = f32(case["bias"]) if case.get("bias") is not None else None
    if case["module"] == "ASiMLinear":
        return O.oracle_linear(
            f32(case["input"]),
            f32(case["weight"]),
            bias,
            mode=mode,
            trace=trace,
            **linear_kwargs(cfg),
            **extra,
        )
    if case["module"] == "ASiMConv2d":
        return O.oracle_conv2d(
            f32(case["input"]),
            f32(case["weight"]),
            bias,
            mode=mode,
            trace=trace,
            **conv_kwargs(cfg),
            **extra,
        )
    assert case["module"] == "ASiMMultiheadAttention"
    w = case["weights"]
    return O.oracle_attention(
        f32(case["input"]),
        f32(w["qkv.weight"]),
        f32(w["qkv.bias"]),
        f32(w["proj.weight"]),
        f32(w["proj.bias"]),
        mode=mode,
        **attn_kwargs(cfg),
        **extra,
    )


DET_IDS = ["C1", "C2", "C3", "C4", "C5", "C6", "S1", "S2"]
TRACE_IDS = [k for k in DET_IDS if DET[k].get("trace")]


# ----------------------------------------------------------------------------- golden: outputs


@pytest.mark.parametrize("cid", DET_IDS)
def test_golden_simulation_output_bit_exact(cid):
    case = DET[cid]
    y = run_case(case)
    assert hexes(y) == case["expected_output_f32_hex"]
    assert_bits_equal(y, f32(case["expected_output"]))


@pytest.mark.parametrize("cid", DET_IDS)
def test_golden_inference_output_bit_exact(cid):
    case = DET[cid]
    y = run_case(case, mode="inference")
    assert_bits_equal(y, f32(case["inference_mode_output"]))


def test_golden_c4_all_groups_processed():
    case = DET["C4"]
    y = run_case(case, all_groups=True)
    assert_bits_equal(y, f32(case["expected_output_if_all_channels_processed"]))
    # and the default really drops channel 2 (Q1): its input does not matter
    x = f32(case["input"]).clone()
    x2 = x.clone()
    x2[:, 2] *= 0.5  # keep channel 2 below the global max so the scale is unchanged
    assert x2.abs().max() == x.abs().max()
    cfg = case["config"]
    w = f32(case["weight"])
    y1 = O.oracle_conv2d(x, w, **conv_kwargs(cfg))
    y2 = O.oracle_conv2d(x2, w, **conv_kwargs(cfg))
    assert_bits_equal(y1, y2)


def test_golden_s2_cuda_value_differs_from_cpu():
    # The CPU semantics are canonical; the tie 12.5 rounds to 12 (rne), not 13.
    case = DET["S2"]
    y = run_case(case)
    assert hexes(y) != case["expected_output_cuda_emulated_f32_hex"]


@pytest.mark.parametrize("cid", [k for k in DET_IDS if "quantized" in DET[k]])
def test_golden_quantized_values(cid):
    case = DET[cid]
    cfg, qz = case["config"], case["quantized"]
    quant_x = O.quantize_signed if cfg["signed_act"] else O.quantize_unsigned
    x_int, s_x = quant_x(f32(case["input"]), cfg["xbit"])
    w_int, s_w = O.quantize_signed(f32(case["weight"]), cfg["wbit"])
    assert x_int.tolist() == qz["x_int"]
    assert w_int.tolist() == qz["w_int"]
    assert_bits_equal(s_x, f32(qz["x_scale"]))
    assert_bits_equal(s_w, f32(qz["w_scale"]))
    if "ideal_integer_dot" in qz:
        R = x_int.shape[-1]
        dot = x_int.reshape(-1, R).double() @ w_int.double().T
        assert dot.reshape(*x_int.shape[:-1], -1).tolist() == qz["ideal_integer_dot"]


# ----------------------------------------------------------------------------- golden: traces


@pytest.mark.parametrize("cid", TRACE_IDS)
def test_golden_trace(cid):
    case = DET[cid]
    trace = []
    run_case(case, trace=trace)
    gold = case["trace"]
    assert len(trace) == len(gold)
    for n, (a, g) in enumerate(zip(trace, gold, strict=True)):
        where = f"{cid} cycle {n}"
        for key in ("tile", "w_bit", "x_bits", "negated", "shift", "full_scale"):
            assert a[key] == g[key], (where, key, a[key], g[key])
        # linear outputs are flattened over the leading dims inside the oracle
        assert a["mac"].flatten().tolist() == torch.tensor(g["mac"]).flatten().tolist(), where
        assert a["adc_code"].flatten().tolist() == torch.tensor(g["adc_code"]).flatten().tolist()
        assert hexes(a["rescaled"]) == hexes(f32(g["rescaled"])), where


def test_c1_hand_worked_example_via_oracle_mvm():
    """Spec 4.4: the integer accumulator of C1 is exactly 32 (ideal 26)."""
    x_int = torch.tensor([[7.0, 3.0, 5.0]])
    w_int = torch.tensor([[2.0, -1.0, 3.0]])
    Y = O.oracle_mvm(
        x_int, w_int, signed_act=False, wbit=3, xbit=3, adc_prec=2, nrow=4, tiles=[(0, 3)]
    )
    assert Y.dtype == torch.float32 and Y.tolist() == [[32.0]]
    y = Y * (f32(0.8000001311302185) * f32(0.9000000953674316)) / (3 * 7)
    assert hexes(y) == ["3f8c6f30"]


# ----------------------------------------------------------------------------- statistical


def _stat_case(cid):
    for c in STAT["cases"]:
        if c["id"].startswith(cid):
            return c
    raise KeyError(cid)


@pytest.mark.parametrize("cid", ["N1", "N2", "N3", "N4"])
def test_statistical_moments(cid):
    case = _stat_case(cid)
    cfg = case["config"]
    n = 4000
    x = f32(STAT["input"])
    w, b = f32(STAT["weight"]), f32(STAT["bias"])
    # n identical rows = n independent trials (the per-batch activation scale is unchanged,
    # and the noise is i.i.d. per element)
    xs = x.expand(n, -1).contiguous()
    g = torch.Generator().manual_seed(1234 + int(cid[1]))
    kw = dict(
        signed_act=cfg["signed_act"],
        wbit=cfg["wbit"],
        xbit=cfg["xbit"],
        adc_prec=cfg["adc_prec"],
        nrow=cfg["nrow"],
        act_enc=cfg["act_enc"],
        hybrid_levels=cfg.get("hybrid_levels") or 0,
        voting_levels=cfg.get("voting_levels") or 0,
        num_samp=cfg.get("num_samp") or 1,
    )
    y_free = O.oracle_linear(x, w, b, **kw)
    assert_bits_equal(y_free, f32(case["noise_free_output"]))
    y = O.oracle_linear(
        xs,
        w,
        b,
        rand_noise_sigma=cfg["rand_noise_sigma"],
        non_linear_sigma=cfg["non_linear_sigma"],
        generator=g,
        **kw,
    ).double()
    mean, std = y.mean(0), y.std(0)
    a_mean = torch.tensor(case["analytic_mean"][0], dtype=torch.float64)
    a_std = torch.tensor(case["analytic_std"][0], dtype=torch.float64)
    assert torch.all((mean - a_mean).abs() <= 5 * a_std / math.sqrt(n)), (mean, a_mean)
    assert torch.all((std / a_std - 1).abs() <= 0.10), (std, a_std)


# ----------------------------------------------------------------------------- spec properties


def test_bit_decomposition_table_and_recombination():
    # Spec 2.1 worked table, b = 4: (q, p3, p2, p1, p0)
    table = [
        (-7, 1, 0, 0, 1),
        (-6, 1, 0, 1, 0),
        (-3, 1, 1, 0, 1),
        (-1, 1, 1, 1, 1),
        (0, 0, 0, 0, 0),
        (5, 0, 1, 0, 1),
        (7, 0, 1, 1, 1),
    ]
    q = torch.tensor([float(r[0]) for r in table])
    p = O.signed_bit_planes(q, 4)
    for t in range(4):
        assert p[t].tolist() == [float(r[4 - t]) for r in table]
    for b in (2, 3, 4, 5, 8, 9):
        q = torch.arange(-O.Ls(b), O.Ls(b) + 1, dtype=torch.float32)
        p = O.signed_bit_planes(q, b)
        rec = -(2 ** (b - 1)) * p[b - 1] + sum(2**t * p[t] for t in range(b - 1))
        assert torch.equal(rec, q)
        u = torch.arange(0, O.Lu(b) + 1, dtype=torch.float32)
        pu = O.unsigned_bit_planes(u, b)
        assert torch.equal(sum(2**t * pu[t] for t in range(b)), u)
    # C1's weights 2, -1, 3 at b = 3 decompose as 010, 111, 011; -0.0 counts as positive
    p = O.signed_bit_planes(torch.tensor([2.0, -1.0, 3.0, -0.0]), 3)
    assert [p[2].tolist(), p[1].tolist(), p[0].tolist()] == [
        [0, 1, 0, 0],
        [1, 1, 1, 0],
        [0, 1, 1, 0],
    ]


def test_quantizer_edge_cases():
    # (rne ties are the golden S2 case's; asserting torch.round itself tested torch, not us)
    # epsilon edge case of spec 1.3: max = 1e-6, L = 127 -> top code 115
    q, s = O.quantize_signed(torch.tensor([1e-6, -5e-7]), 8)
    assert q[0].item() == 115.0
    assert s.dtype == torch.float32 and s.item() == (torch.tensor(1e-6) + 1e-7).item()
    # unsigned: max (not max|x|), negatives -> 0, range [0, Lu]; 0.5/(1+eps)*15 = 7.4999...
    # rounds to 7 (the scale includes eps), not to 8
    q, s = O.quantize_unsigned(torch.tensor([-3.0, 0.5, 1.0]), 4)
    assert q.tolist() == [0.0, 7.0, 15.0]
    assert s.item() == (torch.tensor(1.0) + 1e-7).item()
    # all-negative input: negative scale, negatives map to positive codes (Q6), reproduced
    q, s = O.quantize_unsigned(torch.tensor([-2.0, -1.0]), 3)
    assert s.item() < 0 and q.tolist() == [7.0, 7.0]
    # the signed minimum -2^(b-1) is never produced
    q, _ = O.quantize_signed(torch.randn(1000), 4)
    assert q.min() >= -7 and q.max() <= 7


def test_activation_cycles_match_spec():
    cyc = O.activation_cycles(5, False, 2)  # C5: bit 4, bits 3..2, bits 1..0
    assert [c["label"] for c in cyc] == [[4], [3, 2], [1, 0]]
    assert [c["shift"] for c in cyc] == [4, 2, 0] and [c["width"] for c in cyc] == [1, 2, 2]
    cyc = O.activation_cycles(4, True, 2)  # C6: sign, bit 2, bits 1..0
    assert [c["label"] for c in cyc] == [["sign"], [2], [1, 0]]
    assert [c["shift"] for c in cyc] == [3, 2, 0] and [c["index"] for c in cyc] == [2, 1, 0]
    cyc = O.activation_cycles(9, True, 4)  # ViT "9-bit": sign + two 4-bit cycles
    assert [c["label"] for c in cyc] == [["sign"], [7, 6, 5, 4], [3, 2, 1, 0]]
    with pytest.raises(ValueError):
        O.activation_cycles(4, True, 4)  # signed needs e < x


def _rand_ints(shape, b, signed, gen):
    L = O.Ls(b) if signed else O.Lu(b)
    lo = -L if signed else 0
    return torch.randint(lo, L + 1, shape, generator=gen).to(torch.float32)


@pytest.mark.parametrize("signed", [False, True])
def test_enc1_equals_bit_serial(signed):
    g = torch.Generator().manual_seed(0)
    x = _rand_ints((3, 11), 5, signed, g)
    w = _rand_ints((4, 11), 4, True, g)
    kw = dict(
        signed_act=signed, wbit=4, xbit=5, adc_prec=3, nrow=4, tiles=[(0, 4), (4, 8), (8, 11)]
    )
    assert_bits_equal(O.oracle_mvm(x, w, act_enc=1, **kw), O.oracle_mvm(x, w, **kw))


@pytest.mark.parametrize("signed", [False, True])
def test_lossless_adc_simulation_equals_inference(signed):
    """Spec 4.3: A = nrow (here 15 = 2^4 - 1) makes the noise-free model exact."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 37, generator=g)
    w = torch.randn(5, 37, generator=g)
    b = torch.randn(5, generator=g)
    kw = dict(signed_act=signed, wbit=4, xbit=5, adc_prec=4, nrow=15)
    assert_bits_equal(
        O.oracle_linear(x, w, b, **kw), O.oracle_linear(x, w, b, mode="inference", **kw)
    )
    xc = torch.randn(2, 5, 6, 6, generator=g)
    wc = torch.randn(3, 5, 3, 3, generator=g)
    kw = dict(signed_act=signed, wbit=4, xbit=4, adc_prec=4, nrow=15, stride=2, padding=1)
    # 15 rows = 1 channel of 3x3 per tile; T = ceil(45/15) = 3 < 5 groups -> use all groups
    assert_bits_equal(
        O.oracle_conv2d(xc, wc, all_groups=True, **kw),
        O.oracle_conv2d(xc, wc, mode="inference", **kw),
    )


def test_lossless_attention_equals_inference():
    g = torch.Generator().manual_seed(2)
    B, N, C, H = 2, 5, 8, 2
    args = (
        torch.randn(B, N, C, generator=g),
        torch.randn(3 * C, C, generator=g),
        torch.randn(3 * C, generator=g),
        torch.randn(C, C, generator=g),
        torch.randn(C, generator=g),
    )
    kw = dict(
        num_heads=H,
        nrow=3,
        proj_wbit=3,
        proj_xbit=3,
        proj_adc=2,
        qk_qbit=3,
        qk_kbit=3,
        qk_adc=2,
        av_vbit=3,
        av_abit=3,
        av_adc=2,
    )
    assert_bits_equal(
        O.oracle_attention(*args, **kw), O.oracle_attention(*args, mode="inference", **kw)
    )


def test_conv_1x1_matches_linear_path():
    """A 1x1 conv on 1x1 images is the linear MVM with the same tiles (conv vs matmul MAC)."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 10, generator=g)
    w = torch.randn(4, 10, generator=g)
    kw = dict(signed_act=False, wbit=4, xbit=5, adc_prec=3, nrow=4, act_enc=2, hybrid_levels=2)
    yl = O.oracle_linear(x, w, **kw)
    yc = O.oracle_conv2d(x[:, :, None, None], w[:, :, None, None], **kw)
    assert_bits_equal(yc[:, :, 0, 0], yl)


def test_hybrid_digital_cycles_and_hybrid_exact():
    g = torch.Generator().manual_seed(4)
    x = _rand_ints((3, 9), 4, False, g)
    w = _rand_ints((2, 9), 3, True, g)
    base = dict(signed_act=False, wbit=3, xbit=4, adc_prec=3, nrow=5, tiles=[(0, 5), (5, 9)])
    for h, expected_digital in [(0, 0), (1, 1), (2, 3), (3, 6)]:
        tr = []
        O.oracle_mvm(x, w, hybrid_levels=h, trace=tr, **base)
        assert sum(not c["analog"] for c in tr) == 2 * expected_digital  # 2 tiles
    # all cycles digital and exact -> the exact integer product
    exact = x.double() @ w.double().T
    Y = O.oracle_mvm(x, w, hybrid_levels=3 + 4, hybrid_exact=True, **base)
    assert torch.equal(Y.double(), exact)
    # digital cycles draw no noise: all-digital with large sigma == noise-free, RNG untouched
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    Yn = O.oracle_mvm(
        x, w, hybrid_levels=7, rand_noise_sigma=50.0, non_linear_sigma=50.0, generator=gen, **base
    )
    assert_bits_equal(Yn, O.oracle_mvm(x, w, **base))
    assert torch.equal(gen.get_state(), state)


def test_noise_draw_order_and_count():
    """Two draws (z1, z2) per analog cycle, in loop order; hybrid cycles skip them."""
    g = torch.Generator().manual_seed(6)
    x = _rand_ints((2, 6), 3, False, g)
    w = _rand_ints((3, 6), 3, True, g)
    kw = dict(
        signed_act=False,
        wbit=3,
        xbit=3,
        adc_prec=4,
        nrow=6,
        tiles=[(0, 6)],
        rand_noise_sigma=2.0,
        non_linear_sigma=3.0,
    )
    for h, analog in [(0, 9), (2, 6)]:
        gen = torch.Generator().manual_seed(7)
        O.oracle_mvm(x, w, hybrid_levels=h, generator=gen, **kw)
        ref = torch.Generator().manual_seed(7)
        for _ in range(2 * analog):  # z1 and z2, each [2, 3], per analog cycle
            torch.randn(2, 3, generator=ref)
        assert torch.equal(gen.get_state(), ref.get_state())


def test_majority_vote_mode_ties_to_smallest():
    codes = [
        torch.tensor([3.0, 1.0, 5.0, 2.0]),
        torch.tensor([1.0, 1.0, 4.0, 2.0]),
        torch.tensor([2.0, 4.0, 5.0, 2.0]),
    ]
    assert O._mode_smallest(codes).tolist() == [1.0, 1.0, 5.0, 2.0]
    assert O._mode_smallest(codes[:2]).tolist() == [1.0, 1.0, 4.0, 2.0]
    with pytest.raises(ValueError):
        O.oracle_mvm(
            torch.ones(1, 2),
            torch.ones(1, 2),
            signed_act=False,
            wbit=2,
            xbit=2,
            adc_prec=2,
            nrow=2,
            tiles=[(0, 2)],
            act_enc=1,
            voting_levels=1,
            num_samp=3,
        )


def test_compression():
    g = torch.Generator().manual_seed(8)
    x = _rand_ints((3, 12), 4, False, g)
    w = _rand_ints((2, 12), 3, True, g)
    kw = dict(signed_act=False, wbit=3, xbit=4, adc_prec=6, nrow=8, tiles=[(0, 8), (8, 12)])
    assert_bits_equal(O.oracle_mvm(x, w, compression_alpha=0.0, **kw), O.oracle_mvm(x, w, **kw))
    # single-cell check: M = 6 of nrow 8, alpha 0.1 -> M' = 6/1.6 = 3.75, a = 0.46875,
    # code rne(0.46875*63 = 29.53125) = 30, v = 30/63*8
    tr = []
    O.oracle_mvm(
        torch.ones(1, 6) * 1.0,
        torch.ones(1, 6),
        signed_act=False,
        wbit=2,
        xbit=2,
        adc_prec=6,
        nrow=8,
        tiles=[(0, 6)],
        compression_alpha=0.1,
        trace=tr,
    )
    cyc = [c for c in tr if c["w_bit"] == 0 and c["x_bits"] == [0]][0]
    assert cyc["mac"].item() == 6.0 and cyc["adc_code"].item() == 30.0
    assert_bits_equal(cyc["rescaled"], torch.tensor([[30.0]]) / 63 * 8)
    # compression draws only z1
    gen = torch.Generator().manual_seed(9)
    O.oracle_mvm(x, w, compression_alpha=0.05, rand_noise_sigma=1.0, generator=gen, **kw)
    ref = torch.Generator().manual_seed(9)
    for _ in range(2 * 3 * 4):  # tiles * w * x cycles, one [3, 2] draw each
        torch.randn(3, 2, generator=ref)
    assert torch.equal(gen.get_state(), ref.get_state())


def test_weight_full_bit_parallel():
    g = torch.Generator().manual_seed(10)
    x = _rand_ints((4, 10), 4, False, g)
    w = _rand_ints((3, 10), 4, True, g)
    tiles = [(0, 5), (5, 10)]
    exact = (x.double() @ w.double().T).to(torch.float32)
    # literal formula on the exact MAC, F = Lu(4)*Ls(4)*rows
    for rows in (None, 10):
        Fs = 15 * 7 * (5 if rows is None else rows)
        expect = torch.round(torch.clamp(exact / Fs, -1, 1) * 127) / 127 * Fs
        Y = O.oracle_wbp_mvm(
            x, w, wbit=4, xbit=4, adc_prec=8, nrow=5, tiles=tiles, act_enc=2, full_scale_rows=rows
        )
        assert_bits_equal(Y, expect)
    with pytest.raises(ValueError):
        O.oracle_wbp_mvm(x, w, wbit=4, xbit=4, adc_prec=8, nrow=5, tiles=tiles, act_enc=3)
    with pytest.raises(ValueError):
        O.oracle_wbp_mvm(x, w, wbit=4, xbit=4, adc_prec=8, nrow=5, tiles=tiles, act_enc=None)


def test_linear_leading_dims_and_batch_scale():
    """Per-tensor scale over the whole input: [B, L, in] == flattened [B*L, in]."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 7, generator=g)
    w = torch.randn(4, 7, generator=g)
    kw = dict(signed_act=True, wbit=4, xbit=4, adc_prec=3, nrow=3)
    y3 = O.oracle_linear(x, w, **kw)
    y2 = O.oracle_linear(x.reshape(6, 7), w, **kw)
    assert y3.shape == (2, 3, 4)
    assert_bits_equal(y3.reshape(6, 4), y2)


def test_conv_tiling_and_call_count(monkeypatch):
    """Spec 3.1 / 12: T = ceil(C k^2 / nrow) tiles of floor(nrow/k^2) channels (Q1), and
    exactly one F.conv2d per (tile, weight bit, activation bit), bit-parallel included."""
    assert O.conv_channel_tiles(64, 3, 255) == [(0, 28), (28, 56), (56, 64)]
    t256 = O.conv_channel_tiles(256, 3, 256)
    assert len(t256) == 9 and t256[-1] == (224, 252)  # channels 252..255 dropped (Q1)
    assert len(O.conv_channel_tiles(256, 3, 256, all_groups=True)) == 10
    assert len(O.conv_channel_tiles(512, 3, 256)) == 18
    with pytest.raises(ValueError):
        O.conv_channel_tiles(4, 3, 8)  # k^2 > nrow
    calls = []
    real = O.F.conv2d

    def counting(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)

    monkeypatch.setattr(O.F, "conv2d", counting)
    g = torch.Generator().manual_seed(12)
    x = torch.rand(1, 64, 3, 3, generator=g)
    w = torch.randn(2, 64, 3, 3, generator=g)
    for enc in (None, 2):
        calls.clear()
        O.oracle_conv2d(x, w, padding=1, act_enc=enc)
        assert len(calls) == 3 * 8 * 8
        assert [c[1] for c in calls[::64]] == [28, 28, 8]


@pytest.mark.slow
def test_resnet_layer_shape_lossless_equals_inference():
    """Spec 4.3 on a ResNet-18 layer shape at batch 8 (nrow 255, 8-bit ADC: A = nrow)."""
    g = torch.Generator().manual_seed(13)
    x = torch.relu(torch.randn(8, 128, 16, 16, generator=g))
    w = torch.randn(128, 128, 3, 3, generator=g) * 0.05
    y = O.oracle_conv2d(x, w, padding=1)
    assert_bits_equal(y, O.oracle_conv2d(x, w, padding=1, mode="inference"))
