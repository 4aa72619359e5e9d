"""CUDA runs the same arithmetic as the CPU (run with ``pytest -m gpu`` on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from asim import ACiMConv2d, ACiMLinear, ACiMMultiheadAttention, MacroConfig, NoiseConfig

from .golden import bits

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

MACROS = [
    MacroConfig(),
    MacroConfig(adc_bits=6),
    MacroConfig(input_enc_bits=2),
    MacroConfig(adc_bits=5, hybrid_levels=3),
    MacroConfig(nrow=600, adc_bits=9),
]


@pytest.mark.parametrize("macro", MACROS, ids=lambda m: m.describe())
def test_noise_free_simulation_is_identical_on_cuda(macro):
    torch.manual_seed(0)
    conv = ACiMConv2d(40, 16, 3, padding=1, macro=macro)
    lin = ACiMLinear(700, 12, macro=macro)
    x, xl = torch.relu(torch.randn(3, 40, 9, 9)), torch.randn(5, 700)
    with torch.no_grad():
        cpu = conv(x), lin(xl)
        gpu = conv.cuda()(x.cuda()), lin.cuda()(xl.cuda())
    for a, b in zip(cpu, gpu, strict=True):
        assert bits(a) == bits(b.cpu())


def test_attention_and_noise_run_on_cuda():
    mha = ACiMMultiheadAttention(
        32,
        4,
        batch_first=True,
        macro=MacroConfig(adc_bits=6),
        noise=NoiseConfig(rand_sigma=0.4, nonlinear_sigma=0.4),
    ).cuda()
    with torch.no_grad():
        y, _ = mha(torch.randn(2, 7, 32, device="cuda"))
    assert y.is_cuda and torch.isfinite(y).all()
