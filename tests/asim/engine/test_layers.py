"""The ACiM layers through the engine: conv, linear and attention equal the oracle layers, and
a sample's noise depends on (seed, layer, sample) only."""

from __future__ import annotations

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
    resample_noise,
)
from asim.engine import linear_tiles

from .. import oracle
from ..golden import bits
from .helpers import (
    _ints,
    _native_or_skip,
    _oracle_kwargs,
    _random_macro,
    _torch_only,
)


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
