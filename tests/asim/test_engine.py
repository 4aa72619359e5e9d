"""The vectorized engine equals the per-cycle spec oracle bit for bit (noise off), and its
noise matches the spec's analytic model."""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch

from asim import (
    ACiMConv2d,
    ACiMLinear,
    ACiMMultiheadAttention,
    ConvTiling,
    MacroConfig,
    NoiseConfig,
    acim_matmul,
    activation_cycles,
    resample_noise,
)
from asim.engine import linear_tiles

from . import oracle
from .golden import bits


def _random_macro(rng: random.Random, signed: bool, *, allow_enc: bool = True) -> MacroConfig:
    w = rng.randint(2, 6)
    x = rng.randint(2, 6)
    nrow = rng.choice([1, 2, 3, 4, 5, 7, 8, 9, 15, 16])
    lossless = rng.random() < 0.3 and (nrow + 1) & nrow == 0  # 2^b - 1 rows
    adc = int(math.log2(nrow + 1)) if lossless else rng.randint(1, 6)
    enc = None
    if allow_enc and rng.random() < 0.4:
        top = x - 1 if signed else x
        if top >= 1:
            enc = rng.randint(1, top)
    hybrid = rng.choice([0, 0, 1, 2, 3])
    return MacroConfig(
        weight_bits=w,
        input_bits=x,
        nrow=nrow,
        adc_bits=adc,
        input_enc_bits=enc,
        hybrid_levels=hybrid,
        hybrid_exact=hybrid > 0 and rng.random() < 0.5,
    )


def _oracle_kwargs(m: MacroConfig) -> dict:
    return dict(
        wbit=m.weight_bits,
        xbit=m.input_bits,
        adc_prec=m.adc_bits,
        nrow=m.nrow,
        act_enc=m.input_enc_bits,
        hybrid_levels=m.hybrid_levels,
        hybrid_exact=m.hybrid_exact,
    )


def _ints(rng_t: torch.Generator, shape, bits: int, signed: bool) -> torch.Tensor:
    hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    lo = -hi if signed else 0
    return torch.randint(lo, hi + 1, shape, generator=rng_t).float()


@pytest.mark.parametrize("seed", range(150))
def test_matmul_equals_oracle(seed):
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    macro = _random_macro(rng, signed)
    M, R, O = rng.randint(1, 6), rng.randint(1, 40), rng.randint(1, 5)
    x = _ints(g, (M, R), macro.input_bits, signed)
    w = _ints(g, (O, R), macro.weight_bits, True)
    tiles = linear_tiles(R, macro.nrow)
    if rng.random() < 0.2 and len(tiles) > 1:  # drop trailing tiles as conv tiling can
        tiles = tiles[: rng.randint(1, len(tiles) - 1)]
    got = acim_matmul(x, w.t(), macro=macro, signed_input=signed, tiles=tiles)
    want = oracle.oracle_mvm(x, w, signed_act=signed, tiles=tiles, **_oracle_kwargs(macro))
    assert bits(got) == bits(want), (macro, tiles)


@pytest.mark.filterwarnings("ignore:ACiMLinear got negative inputs")  # quirk Q6 inputs
@pytest.mark.parametrize("seed", range(60))
def test_linear_layer_equals_oracle(seed):
    rng, g = random.Random(1000 + seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    macro = _random_macro(rng, signed)
    fin, fout = rng.randint(1, 30), rng.randint(1, 6)
    lead = rng.choice([(3,), (2, 3), (1,), (2, 2, 2)])
    layer = ACiMLinear(fin, fout, bias=rng.random() < 0.5, macro=macro, signed_input=signed)
    x = torch.randn(*lead, fin, generator=g)
    with torch.no_grad():
        got = layer(x)
    want = oracle.oracle_linear(
        x, layer.weight.detach(), layer.bias, signed_act=signed, **_oracle_kwargs(macro)
    )
    assert bits(got) == bits(want)


@pytest.mark.parametrize("seed", range(60))
def test_conv_layer_equals_oracle(seed):
    rng, g = random.Random(2000 + seed), torch.Generator().manual_seed(seed)
    k = rng.choice([1, 2, 3])
    signed = rng.random() < 0.4
    macro = _random_macro(rng, signed=signed, allow_enc=not signed)
    nrow = max(macro.nrow, k * k) if rng.random() < 0.7 else rng.choice([k * k, 2 * k * k + 1])
    all_groups = rng.random() < 0.3
    macro = macro.replace(
        nrow=nrow,
        adc_bits=min(macro.adc_bits, 8),
        conv_tiling=ConvTiling.all_groups if all_groups else "reference",
    )
    cin, cout = rng.randint(1, 7), rng.randint(1, 4)
    stride, pad = rng.choice([1, 2]), rng.choice([0, 1, 2])
    size = rng.randint(max(k, 2), 7)
    layer = ACiMConv2d(
        cin,
        cout,
        k,
        stride=stride,
        padding=pad,
        bias=rng.random() < 0.5,
        macro=macro,
        signed_input=signed,
    )
    x = torch.randn(rng.randint(1, 3), cin, size, size + rng.randint(0, 2), generator=g)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropped-channel warning is expected here
        got = layer(x)
    want = oracle.oracle_conv2d(
        x,
        layer.weight.detach(),
        layer.bias,
        stride=stride,
        padding=pad,
        signed_act=signed,
        all_groups=all_groups,
        **_oracle_kwargs(macro),
    )
    assert bits(got) == bits(want), macro


@pytest.mark.parametrize("seed", range(25))
def test_attention_equals_oracle(seed):
    rng, g = random.Random(3000 + seed), torch.Generator().manual_seed(seed)
    heads = rng.choice([1, 2])
    C = heads * rng.choice([2, 3, 4])
    nrow = rng.choice([2, 3, 4, 7])
    proj = _random_macro(rng, signed=True, allow_enc=False).replace(
        nrow=nrow, hybrid_levels=0, hybrid_exact=False
    )
    qk = _random_macro(rng, signed=True).replace(nrow=nrow, hybrid_levels=0, hybrid_exact=False)
    av = _random_macro(rng, signed=False).replace(nrow=nrow, hybrid_levels=0, hybrid_exact=False)
    layer = ACiMMultiheadAttention(
        C, heads, batch_first=True, macro=proj, qk_macro=qk, av_macro=av, attn_scale="embed_dim"
    ).eval()
    x = torch.randn(rng.randint(1, 2), rng.randint(1, 5), C, generator=g)
    with torch.no_grad():
        got, _ = layer(x)
    want = oracle.oracle_attention(
        x,
        layer.in_proj_weight.detach(),
        layer.in_proj_bias.detach(),
        layer.out_proj.weight.detach(),
        layer.out_proj.bias.detach(),
        num_heads=heads,
        nrow=nrow,
        proj_wbit=proj.weight_bits,
        proj_xbit=proj.input_bits,
        proj_adc=proj.adc_bits,
        qk_qbit=qk.weight_bits,
        qk_kbit=qk.input_bits,
        qk_adc=qk.adc_bits,
        qk_k_enc=qk.input_enc_bits,
        av_vbit=av.weight_bits,
        av_abit=av.input_bits,
        av_adc=av.adc_bits,
        av_a_enc=av.input_enc_bits,
    )
    assert bits(got) == bits(want)


@pytest.mark.parametrize("seed", range(10))
def test_compression_and_weight_parallel_equal_oracle(seed):
    rng, g = random.Random(4000 + seed), torch.Generator().manual_seed(seed)
    M, R, O = 3, rng.randint(4, 30), 3
    macro = MacroConfig(weight_bits=4, input_bits=4, nrow=rng.choice([4, 7, 8]), adc_bits=4)
    x, w = _ints(g, (M, R), 4, False), _ints(g, (O, R), 4, True)
    tiles = linear_tiles(R, macro.nrow)
    alpha = rng.choice([0.01, 0.05, 0.2])
    got = acim_matmul(
        x,
        w.t(),
        macro=macro,
        signed_input=False,
        tiles=tiles,
        noise=NoiseConfig(compression_alpha=alpha),
    )
    want = oracle.oracle_mvm(
        x, w, signed_act=False, tiles=tiles, compression_alpha=alpha, **_oracle_kwargs(macro)
    )
    assert bits(got) == bits(want)
    wp = macro.replace(input_enc_bits=2, weight_parallel=True, adc_bits=rng.choice([4, 6, 8]))
    got = acim_matmul(x, w.t(), macro=wp, signed_input=False, tiles=tiles)
    want = oracle.oracle_wbp_mvm(
        x, w, wbit=4, xbit=4, adc_prec=wp.adc_bits, nrow=wp.nrow, tiles=tiles, act_enc=2
    )
    assert bits(got) == bits(want)


@pytest.mark.parametrize("mode", ["counts", "normalised"])
@pytest.mark.parametrize("seed", range(6))
def test_sign_cycle_compression_modes_equal_oracle(seed, mode):
    """Signed bit-parallel inputs with gain compression: the sign cycle compresses its raw
    count (default) or, for compatibility (Q28), its normalised value after the noise."""
    rng, g = random.Random(4200 + seed), torch.Generator().manual_seed(seed)
    macro = MacroConfig(
        weight_bits=4,
        input_bits=5,
        nrow=rng.choice([4, 7, 8]),
        adc_bits=4,
        input_enc_bits=rng.choice([1, 2, 3]),
    )
    x, w = _ints(g, (5, 23), 5, True), _ints(g, (3, 23), 4, True)
    tiles = linear_tiles(23, macro.nrow)
    noise = NoiseConfig(compression_alpha=rng.choice([0.05, 0.2]), sign_cycle_compression=mode)
    got = acim_matmul(x, w.t(), macro=macro, signed_input=True, tiles=tiles, noise=noise)
    want = oracle.oracle_mvm(
        x,
        w,
        signed_act=True,
        tiles=tiles,
        compression_alpha=noise.compression_alpha,
        sign_compression_after_noise=mode == "normalised",
        **_oracle_kwargs(macro),
    )
    assert bits(got) == bits(want)


@pytest.mark.parametrize("seed", range(8))
def test_weight_parallel_per_cycle_compat_equals_oracle(seed):
    """weight_parallel_adc="per_cycle": the reference linear's cumulative re-quantization."""
    rng, g = random.Random(4100 + seed), torch.Generator().manual_seed(seed)
    M, R, O = 4, rng.randint(4, 30), 3
    macro = MacroConfig(
        weight_bits=4,
        input_bits=4,
        nrow=rng.choice([4, 7, 8]),
        adc_bits=rng.choice([4, 6, 8]),
        input_enc_bits=rng.choice([1, 2, 4]),
        weight_parallel=True,
        weight_parallel_adc="per_cycle",
    )
    x, w = _ints(g, (M, R), 4, False), _ints(g, (O, R), 4, True)
    tiles = linear_tiles(R, macro.nrow)
    got = acim_matmul(x, w.t(), macro=macro, signed_input=False, tiles=tiles)
    want = oracle.oracle_wbp_per_cycle_mvm(
        x,
        w,
        wbit=4,
        xbit=4,
        adc_prec=macro.adc_bits,
        nrow=macro.nrow,
        tiles=tiles,
        act_enc=macro.input_enc_bits,
    )
    assert bits(got) == bits(want)
    single = acim_matmul(
        x, w.t(), macro=macro.replace(weight_parallel_adc="output"), signed_input=False, tiles=tiles
    )
    assert got.shape == single.shape
    noisy = acim_matmul(
        x,
        w.t(),
        macro=macro,
        signed_input=False,
        tiles=tiles,
        noise=NoiseConfig(rand_sigma=1.0),
        generator=g,
    )
    assert torch.isfinite(noisy).all()
    with pytest.raises(ValueError, match="weight_parallel_adc"):
        MacroConfig(weight_parallel_adc="per_tile")


def test_lossless_simulation_equals_inference_bit_exactly():
    torch.manual_seed(0)
    for layer, x in [
        (ACiMConv2d(64, 32, 3, padding=1), torch.relu(torch.randn(2, 64, 8, 8))),
        (ACiMLinear(600, 20, signed_input=True), torch.randn(4, 600)),
        (ACiMLinear(300, 7, signed_input=False), torch.relu(torch.randn(5, 300))),
    ]:
        with torch.no_grad():
            sim = layer(x)
            layer.mode = "inference"
            inf = layer(x)
        assert bits(sim) == bits(inf)


def test_fast_path_equals_cycle_path():
    """The lossless shortcut returns what the full cycle computation returns."""
    g = torch.Generator().manual_seed(5)
    x = _ints(g, (20, 600), 8, False)
    w = _ints(g, (600, 9), 8, True)
    macro = MacroConfig()
    fast = acim_matmul(x, w, macro=macro, signed_input=False)
    # A zero-sigma noise table forces the cycle path without changing any value.
    slow = acim_matmul(
        x,
        w,
        macro=macro,
        signed_input=False,
        noise=NoiseConfig(compression_alpha=0.0, cell_sigma=0.0, rand_sigma=1e-30),
    )
    assert bits(fast) == bits(slow)


# ------------------------------------------------------------------------------------ noise


def _normal_cdf(t: float) -> float:
    return 0.5 * (1 + math.erf(t / math.sqrt(2)))


def _code_moments(a0: float, sigma: float, A: int) -> tuple[float, float]:
    """Mean and variance of rne(clamp(a0 + sigma Z, 0, 1) * A) (ties have measure 0)."""
    mean = var2 = 0.0
    for k in range(A + 1):
        lo = -math.inf if k == 0 else (k - 0.5) / A
        hi = math.inf if k == A else (k + 0.5) / A
        p = _normal_cdf((hi - a0) / sigma) - _normal_cdf((lo - a0) / sigma)
        mean += p * k
        var2 += p * k * k
    return mean, var2 - mean * mean


def _analytic(x_int, w_int, macro: MacroConfig, signed: bool, rand: float, nl: float):
    """Mean and std of Y per output from the spec's noise model, cycle by cycle."""
    cycles = activation_cycles(macro.input_bits, macro.input_enc_bits, signed)
    A, wb, n = macro.adc_levels, macro.weight_bits, len(cycles)
    wcode = torch.where(w_int < 0, w_int + (1 << wb), w_int).long()
    xcode = torch.where(x_int < 0, x_int + (1 << macro.input_bits), x_int).long()
    M, O = x_int.shape[0], w_int.shape[1]
    mean = torch.zeros(M, O, dtype=torch.float64)
    var = torch.zeros(M, O, dtype=torch.float64)
    for r0, r1 in linear_tiles(x_int.shape[1], macro.nrow):
        for i in range(wb):
            pw = ((wcode[r0:r1] >> i) & 1).double()
            for c, cyc in enumerate(cycles):
                cnt = sum(
                    ((xcode[:, r0:r1] >> b) & 1).double() @ pw * (1 << k)
                    for k, b in enumerate(cyc.bits)
                )
                fs = cyc.levels * macro.nrow
                negate = (i != wb - 1) if cyc.sign else (i == wb - 1)
                coef = (-1 if negate else 1) * 2.0 ** (i + cyc.shift) * fs / A
                digital = (wb - 1 - i) + (n - 1 - c) < macro.hybrid_levels
                for m in range(M):
                    for o in range(O):
                        a0 = cnt[m, o].item() / fs
                        level = a0 * macro.nrow
                        s = math.sqrt((rand / 100) ** 2 + (nl / 100) ** 2 / (level + 1))
                        if digital:
                            q, v = round(a0 * A), 0.0  # python round is half-even too
                        else:
                            q, v = _code_moments(a0, s, A)
                        mean[m, o] += coef * q
                        var[m, o] += coef * coef * v
    return mean, var.sqrt()


@pytest.mark.parametrize(
    "cfg",
    [
        dict(
            macro=MacroConfig(weight_bits=3, input_bits=3, nrow=8, adc_bits=4),
            signed=False,
            rand=3.0,
            nl=6.0,
        ),
        dict(
            macro=MacroConfig(weight_bits=4, input_bits=4, nrow=5, adc_bits=3, input_enc_bits=2),
            signed=True,
            rand=2.0,
            nl=0.0,
        ),
        dict(
            macro=MacroConfig(weight_bits=3, input_bits=4, nrow=7, adc_bits=5, hybrid_levels=2),
            signed=False,
            rand=1.0,
            nl=4.0,
        ),
        dict(
            macro=MacroConfig(weight_bits=4, input_bits=3, nrow=6, adc_bits=6),
            signed=True,
            rand=0.0,
            nl=8.0,
        ),
    ],
    ids=["serial", "parallel_signed", "hybrid", "nonlinear_only"],
)
def test_noise_moments_match_analytic_model(cfg):
    g = torch.Generator().manual_seed(11)
    macro, signed = cfg["macro"], cfg["signed"]
    x = _ints(g, (1, 10), macro.input_bits, signed)
    w = _ints(g, (10, 2), macro.weight_bits, True)
    n = 6000
    noise = NoiseConfig(rand_sigma=cfg["rand"], nonlinear_sigma=cfg["nl"])
    gen = torch.Generator().manual_seed(3)
    ys = acim_matmul(
        x.expand(n, -1), w, macro=macro, signed_input=signed, noise=noise, generator=gen
    ).double()
    mean, std = _analytic(x, w, macro, signed, cfg["rand"], cfg["nl"])
    assert ((ys.mean(0, keepdim=True) - mean).abs() <= 5 * std / math.sqrt(n)).all()
    assert ((ys.std(0, keepdim=True) / std - 1).abs() <= 0.1).all()


def test_noise_is_repeatable_per_seed_and_fresh_per_call():
    layer = ACiMLinear(20, 4, macro=MacroConfig(adc_bits=6), noise=NoiseConfig(rand_sigma=0.5))
    x = torch.randn(3, 20)
    with torch.no_grad():
        resample_noise(layer, 7)
        a, b = layer(x), layer(x)
        resample_noise(layer, 7)
        c = layer(x)
    assert not torch.equal(a, b)
    assert torch.equal(a, c)


def test_noise_under_inference_mode_uses_the_parallel_generator():
    """Large noisy calls fill normals from worker threads; inference mode must carry over."""
    layer = ACiMLinear(300, 64, macro=MacroConfig(adc_bits=6), noise=NoiseConfig(rand_sigma=0.4))
    with torch.inference_mode():
        y = layer(torch.randn(64, 300))
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("seed", range(40))
def test_native_epilogue_equals_torch_epilogue(seed, monkeypatch):
    """The fused C epilogue and the torch epilogue give identical bits (noise off) and the
    same noise distribution."""
    from asim import engine

    rng, g = random.Random(5000 + seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    macro = _random_macro(rng, signed).replace(division=rng.choice(["true", "reciprocal"]))
    x = _ints(g, (rng.randint(1, 3), rng.randint(1, 9), 37), macro.input_bits, signed)
    w = _ints(g, (37, rng.randint(1, 7)), macro.weight_bits, True)
    noise = NoiseConfig(compression_alpha=rng.choice([0.0, 0.0, 0.03]))
    native = acim_matmul(x, w, macro=macro, signed_input=signed, noise=noise)
    monkeypatch.setattr(engine._CyclePath, "_native_args", lambda self: None)
    plain = acim_matmul(x, w, macro=macro, signed_input=signed, noise=noise)
    assert bits(native) == bits(plain)


@pytest.mark.parametrize(
    "nrow,enc,adc,signed",
    [
        (255, None, 6, False),  # fl(A/F) gives every code: the kernel's one-division path
        (16, 3, 5, False),  # F = 112, A = 31: it does not (ties), so the kernel divides
        (100, None, 6, True),
        (64, 2, 8, False),
    ],
)
def test_native_kernel_at_array_scale_equals_torch_path(nrow, enc, adc, signed, monkeypatch):
    """Realistic sizes: several 64-row words per tile, row blocks and output ranges split
    over threads, M not a multiple of the kernel's block, 8-bit compact codes."""
    from asim import engine
    from asim.engine import _code_multiplier, compact_codes

    macro = MacroConfig(nrow=nrow, adc_bits=adc, input_enc_bits=enc)
    g = torch.Generator().manual_seed(nrow + adc)
    x = _ints(g, (203, 700), 8, signed)
    w = _ints(g, (700, 37), 8, True)
    native = acim_matmul(x, w, macro=macro, signed_input=signed)
    compact = acim_matmul(compact_codes(x, 8, signed), w, macro=macro, signed_input=signed)
    monkeypatch.setattr(engine._CyclePath, "_native_args", lambda self: None)
    plain = acim_matmul(x, w, macro=macro, signed_input=signed)
    assert bits(native) == bits(plain) == bits(compact)
    full_scale = ((1 << (enc or 1)) - 1) * nrow
    assert (_code_multiplier(full_scale, (1 << adc) - 1) == 0.0) == (nrow == 16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.int32, torch.int16])
def test_patches_read_in_place_equal_the_unfolded_matrix(dtype, monkeypatch):
    """A strided patch view (the conv's im2col without the copy) gives the same bits as its
    materialised matrix, on the native path (read in place) and the torch path."""
    from asim import engine
    from asim.engine import Patches

    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (2, 5, 9, 8), generator=g).to(dtype)  # B, C, H, W
    view = x.as_strided(
        (2, 4, 3, 5, 3, 3),
        (x.stride(0), 2 * x.stride(2), 2 * x.stride(3), x.stride(1), x.stride(2), x.stride(3)),
    )
    patches = Patches(view, row_dims=3)
    assert patches.shape == (24, 45)
    dense = view.reshape(24, 45)
    w = _ints(g, (45, 6), 8, True)
    macro = MacroConfig(nrow=18, adc_bits=4)
    tiles = [(0, 18), (18, 36)]  # the last channel is dropped, as conv tiling can
    want = acim_matmul(dense.float(), w, macro=macro, signed_input=False, tiles=tiles)
    got = acim_matmul(patches, w, macro=macro, signed_input=False, tiles=tiles)
    monkeypatch.setattr(engine._CyclePath, "_native_args", lambda self: None)
    plain = acim_matmul(patches, w, macro=macro, signed_input=False, tiles=tiles)
    assert bits(got) == bits(want) == bits(plain)


def test_native_portable_build_gives_the_same_bits(tmp_path):
    """The plain-C loops (no AVX-512) build and agree with the torch path."""
    import os
    import pathlib
    import subprocess
    import sys

    code = """
import torch
from asim import MacroConfig, NoiseConfig, acim_matmul
from asim._native import epilogue_lib
assert epilogue_lib() is not None and epilogue_lib().acim_simd() == 0
g = torch.Generator().manual_seed(1)
x = torch.randint(0, 256, (77, 530), generator=g).float()
w = torch.randint(-127, 128, (530, 21), generator=g).float()
for adc in (5, 6):
    y = acim_matmul(x, w, macro=MacroConfig(adc_bits=adc), signed_input=False)
    torch.save(y, f"{adc}.pt")
"""
    root = str(pathlib.Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "ASIM_NATIVE_MARCH": "x86-64",
        "PYTHONPATH": root,
        "ASIM_NATIVE": "1",
        "ASIM_CACHE_DIR": str(tmp_path / "cache"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "no C compiler" in proc.stderr:
        pytest.skip("no C compiler")
    assert proc.returncode == 0, proc.stderr[-2000:]
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (77, 530), generator=g).float()
    w = torch.randint(-127, 128, (530, 21), generator=g).float()
    for adc in (5, 6):
        want = acim_matmul(x, w, macro=MacroConfig(adc_bits=adc), signed_input=False)
        assert bits(torch.load(tmp_path / f"{adc}.pt")) == bits(want)


def test_native_normals_are_standard_normal():
    from asim._native import epilogue_lib

    lib = epilogue_lib()
    if lib is None:
        pytest.skip("no C compiler: the torch path draws torch.randn")
    n = 1_000_001
    z = torch.empty(n)
    lib.acim_fill_normals(z.data_ptr(), n, 987654321, 0)
    assert abs(z.mean().item()) < 5 / n**0.5
    assert abs(z.std().item() - 1) < 0.005
    kurtosis = (z.pow(4).mean() / z.pow(2).mean().pow(2)).item()
    assert abs(kurtosis - 3) < 0.05
    for t, p in [(1, 0.3173105), (2, 0.0455003), (3, 0.0026998)]:
        frac = (z.abs() > t).float().mean().item()
        assert abs(frac - p) < 5 * (p * (1 - p) / n) ** 0.5
    assert abs(torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1].item()) < 5 / n**0.5


def test_noise_does_not_depend_on_thread_count():
    layer = ACiMConv2d(
        20,
        9,
        3,
        padding=1,
        macro=MacroConfig(adc_bits=6),
        noise=NoiseConfig(rand_sigma=0.5, nonlinear_sigma=0.5),
    )
    x = torch.relu(torch.randn(3, 20, 7, 7))
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            resample_noise(layer, 3)
            with torch.no_grad():
                outs.append(layer(x))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


def test_lossless_conv_whose_bound_fails_runs_the_cycles_exactly():
    """12-bit inputs push sum V(w)V(x) past 2^24: the shortcut must decline, and the cycle
    path (tried once, not again per chunk) must still equal the oracle."""
    torch.manual_seed(8)
    macro = MacroConfig(input_bits=12)
    conv = ACiMConv2d(64, 3, 3, padding=1, macro=macro)
    x = torch.rand(1, 64, 4, 4) + 0.5
    with torch.no_grad():
        got = conv(x)
        conv.mode = "inference"
        inference = conv(x)
    want = oracle.oracle_conv2d(
        x, conv.weight.detach(), conv.bias, padding=1, **_oracle_kwargs(macro)
    )
    assert bits(got) == bits(want)
    assert not torch.equal(got, inference)  # the float32 accumulation rounded: no shortcut
