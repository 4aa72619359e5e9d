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


def _on_cpu_and_cuda(conv, x: torch.Tensor) -> list[torch.Tensor]:
    """``conv(x)`` on the CPU, then moved to CUDA, with the same noise seed and sample
    indices: the two outputs (on the CPU)."""
    from asim import resample_noise, set_sample_index

    outs = []
    for device in ("cpu", "cuda"):
        conv = conv.to(device)
        resample_noise(conv, 5)
        with torch.no_grad(), set_sample_index(conv, [4, 9, 2]):
            outs.append(conv(x.to(device)).cpu())
    return outs


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
    torch.manual_seed(0)
    conv = ACiMConv2d(40, 16, 3, padding=1, macro=macro, noise=noise)
    x = torch.relu(torch.randn(3, 40, 9, 9))
    outs = _on_cpu_and_cuda(conv, x)
    assert bits(outs[0]) == bits(outs[1])


@pytest.mark.parametrize(
    "macro,noise",
    [
        (MacroConfig(adc_bits=6, adc_full_scale=100), NoiseConfig(rand_sigma=0.4)),
        (
            MacroConfig(adc_bits=2, adc_thresholds=(0.1, 0.3, 0.6), adc_values=(0, 0.2, 0.45, 0.8)),
            NoiseConfig(rand_sigma=2.0),
        ),
        (
            MacroConfig(adc_bits=5, adc_full_scale=128),
            NoiseConfig(
                rand_sigma=0.4,
                column_offset_lsb=0.5,
                column_gain_pct=1.0,
                column_sigma_spread=0.2,
                adc_group=4,
                column_trim_lsb=0.25,
                chip_seed=3,
            ),
        ),
    ],
    ids=["full_scale", "levels", "chip"],
)
def test_real_adcs_and_chips_are_identical_on_cuda(macro, noise):
    """ADC full scale, non-uniform levels and a chip's fixed pattern (spec §4.5-§4.7): CUDA
    (Triton, or torch) gives the CPU's bits, noise off and on."""
    for n in (noise.replace(rand_sigma=0.0), noise):
        torch.manual_seed(0)
        conv = ACiMConv2d(40, 16, 3, padding=1, macro=macro, noise=n, mode="simulate")
        x = torch.relu(torch.randn(3, 40, 9, 9))
        outs = _on_cpu_and_cuda(conv, x)
        assert bits(outs[0]) == bits(outs[1])


def test_per_adc_full_scales_are_identical_on_cuda():
    """Per-ADC calibrated full scales (spec §4.8), with and without a drawn pattern, noise
    off and on: CUDA (Triton, or torch) gives the CPU's bits."""
    from asim import ColumnRanges

    macro = MacroConfig(weight_bits=4, input_bits=4, nrow=72, adc_bits=4)
    gen = torch.Generator().manual_seed(1)
    for noise in (
        NoiseConfig(adc_group=2),
        NoiseConfig(rand_sigma=1.0, adc_group=2),
        NoiseConfig(rand_sigma=1.0, column_offset_lsb=0.5, column_gain_pct=1.0, adc_group=2),
    ):
        torch.manual_seed(0)
        conv = ACiMConv2d(16, 8, 3, padding=1, macro=macro, noise=noise, mode="simulate")
        conv.adc_ranges = ColumnRanges.of(torch.randint(8, 73, (2, 16), generator=gen), 2)
        x = torch.relu(torch.randn(3, 16, 9, 9))
        outs = _on_cpu_and_cuda(conv, x)
        assert bits(outs[0]) == bits(outs[1]), noise
