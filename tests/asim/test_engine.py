"""The vectorized engine equals the per-cycle spec oracle bit for bit (noise off), and its
noise matches the spec's analytic model."""

from __future__ import annotations

import dataclasses
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


def test_noise_under_inference_mode_runs():
    """Large noisy calls (threads inside the native kernel) under inference mode draw the
    same noise as under no_grad: the mode changes nothing but autograd bookkeeping."""
    layer = ACiMLinear(300, 64, macro=MacroConfig(adc_bits=6), noise=NoiseConfig(rand_sigma=0.4))
    x = torch.randn(64, 300)
    resample_noise(layer, 5)
    with torch.inference_mode():
        y = layer(x)
    resample_noise(layer, 5)
    with torch.no_grad():
        ref = layer(x)
    assert torch.equal(y, ref)
    assert not torch.equal(y, layer(x).detach())  # and it is noisy indeed


# ------------------------------------------------------------ backends: identical bits


def _torch_only(monkeypatch) -> None:
    """Make every following engine call take the torch backend."""
    from asim.engine import core

    monkeypatch.setitem(core.PREFERENCE, "cpu", (core.TORCH,))


def _native_or_skip() -> None:
    from asim._native import engine_lib

    if engine_lib() is None:
        pytest.skip("no C compiler (or ASIM_NATIVE=0): only the torch backend runs")


@pytest.mark.parametrize("seed", range(40))
def test_native_kernel_equals_torch_backend_noise_free(seed, monkeypatch):
    """The fused C kernel and the torch backend give identical bits with noise off."""
    rng, g = random.Random(5000 + seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    macro = _random_macro(rng, signed).replace(division=rng.choice(["true", "reciprocal"]))
    x = _ints(g, (rng.randint(1, 3), rng.randint(1, 9), 37), macro.input_bits, signed)
    w = _ints(g, (37, rng.randint(1, 7)), macro.weight_bits, True)
    noise = NoiseConfig(compression_alpha=rng.choice([0.0, 0.0, 0.03]))
    native = acim_matmul(x, w, macro=macro, signed_input=signed, noise=noise)
    _torch_only(monkeypatch)
    plain = acim_matmul(x, w, macro=macro, signed_input=signed, noise=noise)
    assert bits(native) == bits(plain)


def _histogram_csv(path) -> str:
    rows = ["# count,delta,weight: code offset histogram per ideal count", "count,delta,weight"]
    for count, weights in [(0, [0, 3, 1]), (4, [1, 6, 2]), (9, [2, 5, 0])]:
        rows += [f"{count},{d - 1},{wt}" for d, wt in enumerate(weights)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _measured_csv(path) -> str:
    path.write_text("count,offset,std\n0,0.3,0.8\n5,-0.2,0.5\n15,0.1,1.2\n")
    return str(path)


NOISE_KINDS = {
    "gaussian": (MacroConfig(nrow=15, adc_bits=3), dict(rand_sigma=3.0, nonlinear_sigma=4.0)),
    "parallel": (
        MacroConfig(nrow=9, adc_bits=4, input_enc_bits=2, hybrid_levels=2),
        dict(rand_sigma=2.0),
    ),
    "voting": (
        MacroConfig(nrow=15, adc_bits=4, vote_levels=2, vote_samples=3),
        dict(rand_sigma=5.0),
    ),
    "compression": (
        MacroConfig(nrow=12, adc_bits=4, input_enc_bits=2),
        dict(rand_sigma=2.0, compression_alpha=0.02),
    ),
    "late_sign": (
        MacroConfig(nrow=12, adc_bits=4, input_enc_bits=2),
        dict(rand_sigma=2.0, compression_alpha=0.02, sign_cycle_compression="normalised"),
    ),
    "measured": (MacroConfig(nrow=15, adc_bits=4), dict(file="measured")),
    "histogram": (MacroConfig(nrow=15, adc_bits=4), dict(histogram="histogram")),
}


def _noise(kind: str, tmp_path) -> tuple[MacroConfig, NoiseConfig]:
    macro, kw = NOISE_KINDS[kind]
    kw = dict(kw)
    if "file" in kw:
        kw["file"] = _measured_csv(tmp_path / "measured.csv")
    if "histogram" in kw:
        kw["histogram"] = _histogram_csv(tmp_path / "histogram.csv")
    return macro, NoiseConfig(**kw)


@pytest.mark.parametrize("kind", list(NOISE_KINDS))
@pytest.mark.parametrize("signed", [False, True])
def test_noisy_native_kernel_equals_torch_backend(kind, signed, tmp_path, monkeypatch):
    """Every noise kind gives the same bits on the C kernel and the torch backend: both
    draw from the counter-based stream and the same exact code tables."""
    _native_or_skip()
    from asim.engine import NoiseStream

    macro, noise = _noise(kind, tmp_path)
    g = torch.Generator().manual_seed(7)
    x = _ints(g, (2, 37, 40), macro.input_bits, signed)
    w = _ints(g, (40, 11), macro.weight_bits, True)
    stream = NoiseStream(0xDEADBEEF12345678, torch.tensor([5, 3]), 37)
    kw = dict(macro=macro, signed_input=signed, noise=noise, stream=stream)
    native = acim_matmul(x, w, **kw)
    _torch_only(monkeypatch)
    plain = acim_matmul(x, w, **kw)
    assert bits(native) == bits(plain)
    assert not torch.equal(native, acim_matmul(x, w, macro=macro, signed_input=signed))


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_noise_does_not_depend_on_threads_or_chunks(backend, monkeypatch):
    """1 or 2 threads and any chunk size give the same noisy bits (conv + voting + measured
    noise paths all draw by address, not by order)."""
    from asim.engine import backend as engine_backend

    if backend == "native":
        _native_or_skip()
    else:
        _torch_only(monkeypatch)
    conv = ACiMConv2d(
        20,
        9,
        3,
        padding=1,
        macro=MacroConfig(adc_bits=6, vote_levels=2, vote_samples=3),
        noise=NoiseConfig(rand_sigma=0.5, nonlinear_sigma=0.5),
    )
    x = torch.relu(torch.randn(3, 20, 7, 7))
    threads = torch.get_num_threads()
    outs = []
    try:
        default = engine_backend.CHUNK_ELEMENTS
        for n, chunk in [(1, default), (2, default), (2, 5000), (1, 777)]:
            torch.set_num_threads(n)
            monkeypatch.setattr(engine_backend, "CHUNK_ELEMENTS", chunk)
            resample_noise(conv, 3)
            with torch.no_grad():
                outs.append(conv(x))
    finally:
        torch.set_num_threads(threads)
    for out in outs[1:]:
        assert bits(out) == bits(outs[0])


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_sample_noise_does_not_depend_on_batch_composition(backend, monkeypatch):
    """With act_scale=sample and set_sample_index, a sample's noisy output is the same
    whichever samples share its batch, and in whatever order."""
    from asim import set_sample_index

    if backend == "native":
        _native_or_skip()
    else:
        _torch_only(monkeypatch)
    macro = MacroConfig(adc_bits=6, act_scale="sample")
    noise = NoiseConfig(rand_sigma=0.6, nonlinear_sigma=0.4)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        ACiMConv2d(3, 8, 3, padding=1, macro=macro, noise=noise),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        ACiMLinear(8 * 25, 5, macro=macro, noise=noise, signed_input=False),
    )
    x = torch.randn(6, 3, 5, 5)
    idx = torch.arange(100, 106)
    resample_noise(model, 11)
    with torch.no_grad(), set_sample_index(model, idx):
        full = model(x)
    perm = torch.tensor([4, 1, 5])
    with torch.no_grad(), set_sample_index(model, idx[perm]):
        part = model(x[perm])
    assert bits(part) == bits(full[perm])
    # the default numbers rows since the last reseed: two batches equal one
    resample_noise(model, 11)
    with torch.no_grad():
        halves = torch.cat([model(x[:2]), model(x[2:])])
    resample_noise(model, 11)
    with torch.no_grad():
        whole = model(x)
        again = model(x)
    assert bits(halves) == bits(whole)
    assert not torch.equal(whole, again)  # fresh noise for the next rows
    with pytest.raises(ValueError, match="one index per batch row"), set_sample_index(model, idx):
        model(x[:2])


def test_sample_identity_of_attention_and_token_linears():
    """Attention (QK, AV, projections) and a linear on [B, T, F] follow the sample index."""
    from asim import set_sample_index

    macro = MacroConfig(adc_bits=6, act_scale="sample")
    noise = NoiseConfig(rand_sigma=0.8)
    torch.manual_seed(1)
    mha = ACiMMultiheadAttention(16, 2, batch_first=True, macro=macro, noise=noise)
    x = torch.randn(4, 5, 16)
    resample_noise(mha, 2)
    with torch.no_grad(), set_sample_index(mha, [7, 8, 9, 10]):
        full, _ = mha(x, need_weights=False)
    with torch.no_grad(), set_sample_index(mha, [9]):
        one, _ = mha(x[2:3], need_weights=False)
    assert bits(one) == bits(full[2:3])


def test_seeds_give_independent_chips():
    layer = ACiMLinear(40, 6, macro=MacroConfig(adc_bits=5), noise=NoiseConfig(rand_sigma=1.0))
    x = torch.randn(200, 40)
    with torch.no_grad():
        resample_noise(layer, 1)
        a = layer(x)
        resample_noise(layer, 2)
        b = layer(x)
        layer.mode = "inference"
        ideal = layer(x)
    da, db = (a - ideal).flatten(), (b - ideal).flatten()
    assert da.std() > 0 and db.std() > 0
    assert abs(torch.corrcoef(torch.stack([da, db]))[0, 1].item()) < 0.1


# ------------------------------------------------------------ programmed arrays


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_programmed_weights_never_go_stale(kind):
    """Weights are quantized and packed once and reused; an in-place change (which does not
    bump ``_version`` through ``.data``) reprograms: the output equals a fresh layer's."""
    torch.manual_seed(0)
    macro = MacroConfig(adc_bits=6)
    if kind == "conv":
        layer = ACiMConv2d(6, 5, 3, padding=1, macro=macro)
        x = torch.relu(torch.randn(2, 6, 6, 6))
    else:
        layer = ACiMLinear(30, 5, macro=macro)
        x = torch.randn(4, 30)
    with torch.no_grad():
        layer(x)
        prog = layer._programs[0][3]
        layer(x)
        assert layer._programs[0][3] is prog  # reused, not rebuilt
        layer.weight.data.mul_(0.5)
        layer.weight.data[0].neg_()
        got = layer(x)
        assert layer._programs[0][3] is not prog
        fresh = type(layer).from_float(layer.to_float(), macro=macro)
        assert bits(got) == bits(fresh(x))


# ------------------------------------------------------------ ADC tables


@pytest.mark.parametrize(
    "F,A,rec,alpha,late",
    [
        (255, 63, False, 0.0, False),
        (255, 255, False, 0.0, False),
        (765, 127, True, 0.0, False),
        (112, 31, False, 0.0, False),
        (36, 15, False, 0.02, False),
        (36, 15, True, 0.02, True),
    ],
)
def test_value_tables_equal_the_spec_chain(F, A, rec, alpha, late):
    """value_by_count[m] is, for every count, the spec's per-conversion float32 chain
    (spec §4.1 steps 2-5, §8.1), computed element by element as the oracle does."""
    from asim.engine.plan import adc_value_table, code_value_table

    table = adc_value_table(F, A, rec, alpha, late, F)
    f32 = torch.float32
    for m in range(F + 1):
        v = torch.tensor(float(m), dtype=f32)
        if alpha and not late:
            v = v / (v * torch.tensor(alpha, dtype=f32) + 1)
        a = v * (torch.tensor(1.0) / torch.tensor(float(F))) if rec else v / F
        a = a.clamp(0, 1)
        if alpha and late:
            a = a / (a * torch.tensor(alpha, dtype=f32) + 1)
        q = torch.round(a * A)
        out = (q * (torch.tensor(1.0) / torch.tensor(float(A))) if rec else q / A) * F
        assert bits(out.view(1)) == bits(table[m : m + 1]), m
    codes = code_value_table(F, A, rec)
    q = torch.arange(A + 1, dtype=f32)
    want = (q * (torch.tensor(1.0) / torch.tensor(float(A))) if rec else q / A) * F
    assert bits(codes) == bits(want)


@pytest.mark.parametrize(
    "nrow,enc,adc,signed",
    [(255, None, 6, False), (16, 3, 5, False), (100, None, 6, True), (64, 2, 8, False)],
)
def test_native_kernel_at_array_scale_equals_torch_path(nrow, enc, adc, signed, monkeypatch):
    """Realistic sizes: several 64-row words per tile, row blocks and output ranges split
    over threads, M not a multiple of the kernel's block, 8-bit compact codes."""
    from asim.engine import compact_codes

    macro = MacroConfig(nrow=nrow, adc_bits=adc, input_enc_bits=enc)
    g = torch.Generator().manual_seed(nrow + adc)
    x = _ints(g, (203, 700), 8, signed)
    w = _ints(g, (700, 37), 8, True)
    native = acim_matmul(x, w, macro=macro, signed_input=signed)
    compact = acim_matmul(compact_codes(x, 8, signed), w, macro=macro, signed_input=signed)
    _torch_only(monkeypatch)
    plain = acim_matmul(x, w, macro=macro, signed_input=signed)
    assert bits(native) == bits(plain) == bits(compact)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.int32, torch.int16])
def test_patches_read_in_place_equal_the_unfolded_matrix(dtype, monkeypatch):
    """A strided patch view (the conv's im2col without the copy) gives the same bits as its
    materialised matrix, on the native path (read in place) and the torch path."""
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
    _torch_only(monkeypatch)
    plain = acim_matmul(patches, w, macro=macro, signed_input=False, tiles=tiles)
    assert bits(got) == bits(want) == bits(plain)


@pytest.mark.parametrize("noisy", [False, True])
def test_out_receives_y_in_any_layout(noisy, monkeypatch):
    """``acim_matmul(..., out=)`` writes the same bits as the returned ``Y``: a conv's rows
    into a permuted view of an NCHW buffer (native: in place at row offsets; torch: through
    a copy), a plain ``[M, O]`` transposed view, and through the exact shortcut."""
    from asim.engine import NoiseStream, Patches

    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (2, 5, 9, 8), generator=g).to(torch.uint8)
    view = x.as_strided(
        (2, 4, 3, 5, 3, 3),
        (x.stride(0), 2 * x.stride(2), 2 * x.stride(3), x.stride(1), x.stride(2), x.stride(3)),
    )
    w = _ints(g, (45, 6), 8, True)
    noise = NoiseConfig(rand_sigma=0.5) if noisy else None
    stream = NoiseStream(11, torch.arange(2), 12)
    kw = dict(macro=MacroConfig(nrow=18, adc_bits=4), signed_input=False, noise=noise)
    for backend in ("native", "torch"):
        if backend == "torch":
            _torch_only(monkeypatch)
        want = acim_matmul(Patches(view, 3), w, stream=stream, **kw)  # (24, 6) rows (b, h, w)
        nchw = torch.full((2, 6, 4, 3), float("nan"))
        got = acim_matmul(Patches(view, 3), w, stream=stream, out=nchw.permute(0, 2, 3, 1), **kw)
        assert got.data_ptr() == nchw.data_ptr()
        assert bits(nchw.permute(0, 2, 3, 1).reshape(24, 6)) == bits(want)
        dense = view.reshape(24, 45)
        t = torch.full((6, 24), float("nan"))
        acim_matmul(dense, w, stream=stream, out=t.t(), **kw)
        assert bits(t.t()) == bits(want)
    lossless = dict(macro=MacroConfig(), signed_input=False)
    want = acim_matmul(Patches(view, 3), w, **lossless)
    nchw = torch.empty(2, 6, 4, 3)
    acim_matmul(Patches(view, 3), w, out=nchw.permute(0, 2, 3, 1), **lossless)
    assert bits(nchw.permute(0, 2, 3, 1).reshape(24, 6)) == bits(want)
    with pytest.raises(ValueError, match="out must be a float32 tensor"):
        acim_matmul(dense, w, out=torch.empty(24, 5), **kw)


def test_in_place_dequantize_gives_the_same_bits():
    from asim.quant import dequantize

    g = torch.Generator().manual_seed(2)
    acc = torch.randint(-5000, 5000, (3, 4, 5, 5), generator=g).float()
    ws, xs = torch.tensor(0.0123), torch.rand(3, 1, 1, 1, generator=g) + 0.5
    for rec in (False, True):
        want = dequantize(acc, ws, xs, 127, 255, rec)
        mine = acc.clone()
        got = dequantize(mine, ws, xs, 127, 255, rec, in_place=True)
        assert got.data_ptr() == mine.data_ptr() and bits(got) == bits(want)


def test_plans_are_shared_per_configuration_and_never_stale():
    from asim.engine.plan import build_plan

    macro, noise = MacroConfig(adc_bits=5), NoiseConfig(rand_sigma=0.3)
    plan = build_plan(macro, noise, False)
    assert build_plan(MacroConfig(adc_bits=5), NoiseConfig(rand_sigma=0.3), False) is plan
    assert build_plan(macro, noise, True) is not plan
    with pytest.raises(dataclasses.FrozenInstanceError):
        macro.adc_bits = 6  # configs are frozen: a changed setting is a new config
    assert build_plan(macro.replace(adc_bits=6), noise, False).macro.adc_bits == 6
    assert plan.macro.adc_bits == 5 and build_plan(macro, noise, False) is plan


def test_native_portable_build_gives_the_same_bits(tmp_path):
    """The plain-C loops (no AVX-512) build and agree with the default build, noisy too."""
    import os
    import pathlib
    import subprocess
    import sys

    code = """
import torch
from asim import MacroConfig, NoiseConfig, acim_matmul
from asim._native import engine_lib
from asim.engine import NoiseStream
assert engine_lib() is not None and engine_lib().asim_simd() == 0
g = torch.Generator().manual_seed(1)
x = torch.randint(0, 256, (77, 530), generator=g).float()
w = torch.randint(-127, 128, (530, 21), generator=g).float()
s = NoiseStream(99, torch.arange(77), 1)
for adc in (5, 6):
    y = acim_matmul(x, w, macro=MacroConfig(adc_bits=adc), signed_input=False)
    torch.save(y, f"{adc}.pt")
y = acim_matmul(x, w, macro=MacroConfig(adc_bits=6), signed_input=False,
                noise=NoiseConfig(rand_sigma=0.5), stream=s)
torch.save(y, "noisy.pt")
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
    from asim.engine import NoiseStream

    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (77, 530), generator=g).float()
    w = torch.randint(-127, 128, (530, 21), generator=g).float()
    for adc in (5, 6):
        want = acim_matmul(x, w, macro=MacroConfig(adc_bits=adc), signed_input=False)
        assert bits(torch.load(tmp_path / f"{adc}.pt")) == bits(want)
    want = acim_matmul(
        x,
        w,
        macro=MacroConfig(adc_bits=6),
        signed_input=False,
        noise=NoiseConfig(rand_sigma=0.5),
        stream=NoiseStream(99, torch.arange(77), 1),
    )
    assert bits(torch.load(tmp_path / "noisy.pt")) == bits(want)


def test_native_struct_mirrors_the_header():
    """The ctypes struct is parsed from engine.h, and the C side agrees on its size."""
    import ctypes

    from asim._native import CONST, RunArgs, engine_lib

    assert CONST["ASIM_MAXBITS"] == 32 and CONST["ASIM_CYC_VOTED"] == 3
    names = [f[0] for f in RunArgs._fields_]
    assert names[0] == "codes" and "call_key" in names and len(names) == len(set(names))
    lib = engine_lib()
    if lib is None:
        pytest.skip("no C compiler")
    assert lib.asim_run_size() == ctypes.sizeof(RunArgs)


@pytest.mark.parametrize(
    "F,A,top",
    [(255, 63, 255), (765, 31, 765), (3825, 15, 3825), (127, 63, 127), (65025, 15, 65025)],
)
def test_integer_code_form_gives_the_spec_values(F, A, top):
    """The native table path's integer codes ``(m*k + b) >> s``, looked up in the code-value
    table, give the spec's noise-free value of every count."""
    from asim.engine.plan import (
        adc_value_table,
        code_multiplier,
        code_value_table,
        integer_code_form,
    )

    mul = code_multiplier(F, A, top)
    assert mul
    k, b, s = integer_code_form(mul, top)
    m = torch.arange(top + 1, dtype=torch.int64)
    got = code_value_table(F, A, False)[(m * k + b) >> s]
    assert bits(got) == bits(adc_value_table(F, A, False, 0.0, False, top)[: top + 1])
    assert integer_code_form(0.0, top) is None


def test_weight_bound_from_reductions_equals_the_bound_tensor():
    """The shortcut's cheap ``max V(w)`` (two reductions) equals the max of ``V(w)`` itself,
    with and without negative codes."""
    from asim.engine.shortcut import _magnitude_bound, _max_magnitude_bound

    g = torch.Generator().manual_seed(4)
    for nbits in (2, 4, 8):
        top = (1 << (nbits - 1)) - 1
        for lo in (-top, 0, 1):
            w = torch.randint(lo, top + 1, (37, 5), generator=g).float()
            want = _magnitude_bound(w, nbits, True).amax()
            assert _max_magnitude_bound(w, nbits, True).item() == want.item()


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


@pytest.mark.parametrize(
    "model,F,A,levels,nrow,alpha",
    [
        ("gauss", 255, 255, 1, 255, 0.0),
        ("gauss", 255, 63, 1, 255, 0.0),
        ("gauss_wide", 36, 15, 3, 12, 0.02),
        ("table", 15, 15, 1, 15, 0.0),
    ],
)
def test_kernel_bucket_tables_give_the_sampler_codes(model, F, A, levels, nrow, alpha, tmp_path):
    """The kernel's bucket re-indexing of a code table gives, for every count and uniforms
    on and next to every threshold, exactly the torch sampler's code."""
    import ctypes

    from asim._native import engine_lib
    from asim.engine.native import _bucket_struct, bucket_table
    from asim.noise import GaussianNoise, TableNoise, code_table, sample_codes

    lib = engine_lib()
    if lib is None:
        pytest.skip("no C compiler")
    noise = {
        "gauss": GaussianNoise(0.39, 0.39),
        "gauss_wide": GaussianNoise(8.0, 3.0),
        "table": TableNoise([0, 5, 15], [0.3, -0.2, 0.1], [0.8, 0.5, 1.2]),
    }[model]
    table = code_table(noise, F, A, levels, nrow, alpha)
    g = torch.Generator().manual_seed(0)
    m, u = [], []
    for r in range(table.n_m):
        thr = table.thr[table.start[r] : table.start[r + 1]]
        edges = torch.cat([thr, thr - 1, (thr + 1).clamp(max=2**32 - 1)])
        rand = torch.randint(0, 2**32, (64,), generator=g)
        both = torch.cat([edges, rand, torch.tensor([0, 2**32 - 1])])
        m.append(torch.full_like(both, table.m_min + r))
        u.append(both)
    m, u = torch.cat(m), torch.cat(u)
    want = sample_codes(table, m, u)
    m32 = m.to(torch.int32).contiguous()
    u32 = torch.where(u >= 2**31, u - 2**32, u).to(torch.int32).contiguous()
    for use_buckets in (True, False):
        b = bucket_table(table) if use_buckets else None
        if use_buckets:
            assert b is not None
        bt = _bucket_struct(b)
        got = torch.empty_like(m32)
        lib.asim_draw_codes(
            ctypes.byref(bt), ctypes.byref(table.native()), m32.data_ptr(), u32.data_ptr(),
            got.data_ptr(), m32.numel(),
        )  # fmt: skip
        assert torch.equal(got, want.to(torch.int32))


@pytest.mark.parametrize(
    "macro,noise,oracle_noise",
    [
        (
            MacroConfig(
                weight_bits=3, input_bits=3, nrow=7, adc_bits=3, vote_levels=2, vote_samples=3
            ),
            dict(rand_sigma=9.0),
            dict(rand_noise_sigma=9.0, voting_levels=2, num_samp=3),
        ),
        (
            MacroConfig(weight_bits=3, input_bits=4, nrow=6, adc_bits=4, input_enc_bits=2),
            dict(rand_sigma=4.0, compression_alpha=0.05),
            dict(rand_noise_sigma=4.0, compression_alpha=0.05),
        ),
    ],
    ids=["voting", "compression"],
)
def test_sampled_noise_matches_the_per_cycle_oracle_in_distribution(macro, noise, oracle_noise):
    """Exact code sampling (one draw per conversion, K draws and the mode when voting) has
    the distribution of the oracle's per-cycle Gaussian model: the noisy outputs of many
    repeats of one input agree in mean and spread."""
    g = torch.Generator().manual_seed(4)
    x = _ints(g, (1, 9), macro.input_bits, False)
    w = _ints(g, (9, 3), macro.weight_bits, True)
    n = 4000
    tiles = linear_tiles(9, macro.nrow)
    ours = acim_matmul(
        x.expand(n, -1), w, macro=macro, signed_input=False, tiles=tiles, noise=NoiseConfig(**noise)
    ).double()
    ref = oracle.oracle_mvm(
        x.expand(n, -1),
        w.t(),
        signed_act=False,
        tiles=tiles,
        generator=torch.Generator().manual_seed(5),
        **_oracle_kwargs(macro),
        **oracle_noise,
    ).double()
    spread = ref.std(0)
    assert (spread > 0).all()
    assert ((ours.mean(0) - ref.mean(0)).abs() <= 5 * spread * math.sqrt(2 / n)).all()
    assert ((ours.std(0) / spread - 1).abs() <= 0.1).all()


def test_weight_parallel_sampled_noise_matches_the_oracle_in_distribution():
    """The weight-parallel signed ADC draws its code exactly (signed code table): its noisy
    outputs have the oracle's Gaussian-model mean and spread."""
    macro = MacroConfig(weight_bits=4, input_bits=4, nrow=8, adc_bits=4, input_enc_bits=2)
    macro = macro.replace(weight_parallel=True)
    g = torch.Generator().manual_seed(8)
    x = _ints(g, (1, 12), 4, False)
    w = _ints(g, (12, 3), 4, True)
    n, tiles = 20000, linear_tiles(12, 8)
    ours = acim_matmul(
        x.expand(n, -1),
        w,
        macro=macro,
        signed_input=False,
        tiles=tiles,
        noise=NoiseConfig(rand_sigma=6.0),
    ).double()
    ref = oracle.oracle_wbp_mvm(
        x.expand(n, -1),
        w.t(),
        wbit=4,
        xbit=4,
        adc_prec=4,
        nrow=8,
        tiles=tiles,
        act_enc=2,
        rand_noise_sigma=6.0,
        generator=torch.Generator().manual_seed(9),
    ).double()
    spread = ref.std(0)
    assert (spread > 0).all()
    assert ((ours.mean(0) - ref.mean(0)).abs() <= 5 * spread * math.sqrt(2 / n)).all()
    assert ((ours.std(0) / spread - 1).abs() <= 0.05).all()
