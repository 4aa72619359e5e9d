"""The weight-parallel (W4A4) mode (asim.engine.weight_parallel) against the oracle."""

from __future__ import annotations

import math
import random

import pytest
import torch

from asim import (
    MacroConfig,
    NoiseConfig,
    acim_matmul,
)
from asim.engine import NoiseStream, linear_tiles

from .. import oracle
from ..golden import bits
from .helpers import (
    _ints,
)


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
    with pytest.raises(ValueError, match="weight_parallel_adc"):
        MacroConfig(weight_parallel_adc="per_tile")


def test_weight_parallel_per_cycle_noise_is_addressed_and_averages_out():
    """The noisy ``per_cycle`` mode: the same stream gives the same bits, another stream
    other bits, and the noise averages out: the mean over many streams is much closer to
    the noise-free result than one draw (not equal to it: the noise dithers the rounding
    that every cycle's re-quantization applies)."""
    g = torch.Generator().manual_seed(7)
    macro = MacroConfig(
        weight_bits=4, input_bits=4, nrow=8, adc_bits=8, input_enc_bits=2,
        weight_parallel=True, weight_parallel_adc="per_cycle",
    )  # fmt: skip
    x, w = _ints(g, (6, 16), 4, False), _ints(g, (16, 5), 4, True)
    noise = NoiseConfig(rand_sigma=1.0)

    def run(key):
        stream = NoiseStream(key, torch.arange(1), 6)
        return acim_matmul(x, w, macro=macro, signed_input=False, noise=noise, stream=stream)

    free = acim_matmul(x, w, macro=macro, signed_input=False)
    assert bits(run(1)) == bits(run(1)) and bits(run(1)) != bits(run(2))
    draws = torch.stack([run(k) for k in range(64)])
    one = (draws[0] - free).abs().mean()
    mean = (draws.mean(0) - free).abs().mean()
    assert one > 0 and mean < one / 2


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
