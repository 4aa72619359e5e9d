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


@pytest.mark.parametrize(
    "macro,noise",
    [
        (MacroConfig(adc_bits=6), NoiseConfig(rand_sigma=0.4, nonlinear_sigma=0.4)),
        (MacroConfig(vote_levels=2, vote_samples=3), NoiseConfig(rand_sigma=0.4)),
        (
            MacroConfig(input_enc_bits=2, adc_bits=7),
            NoiseConfig(rand_sigma=0.3, compression_alpha=0.01),
        ),
    ],
    ids=["gaussian", "voting", "compression"],
)
def test_noisy_simulation_is_identical_on_cuda(macro, noise):
    """The counter-based stream and exact code sampling give CUDA the CPU's noisy bits."""
    from asim import resample_noise, set_sample_index

    torch.manual_seed(0)
    conv = ACiMConv2d(40, 16, 3, padding=1, macro=macro, noise=noise)
    x = torch.relu(torch.randn(3, 40, 9, 9))
    outs = []
    for device in ("cpu", "cuda"):
        conv = conv.to(device)
        resample_noise(conv, 5)
        with torch.no_grad(), set_sample_index(conv, [4, 9, 2]):
            outs.append(conv(x.to(device)).cpu())
    assert bits(outs[0]) == bits(outs[1])
