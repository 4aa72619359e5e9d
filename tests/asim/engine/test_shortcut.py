"""The exact shortcut (asim.engine.shortcut): taken only where it returns the cycles' bits."""

from __future__ import annotations

import torch

from asim import (
    ACiMConv2d,
    ACiMLinear,
    MacroConfig,
    NoiseConfig,
    acim_matmul,
)

from .. import oracle
from ..golden import bits
from .helpers import (
    _ints,
    _oracle_kwargs,
)


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
