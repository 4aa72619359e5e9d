"""acim_matmul (asim.engine.core): the engine call equals the per-cycle oracle, its noise the
spec's model, and no bit depends on threads, chunks or the output layout."""

from __future__ import annotations

import math
import random

import pytest
import torch

from asim import (
    ACiMConv2d,
    ACiMLinear,
    MacroConfig,
    NoiseConfig,
    acim_matmul,
    resample_noise,
)
from asim.engine import linear_tiles

from .. import oracle
from ..golden import bits
from .helpers import (
    _analytic,
    _ints,
    _native_or_skip,
    _oracle_kwargs,
    _random_macro,
    _torch_only,
)


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
