"""Quantizer invariants (spec §1.2-1.5)."""

from __future__ import annotations

import pytest
import torch

from asim.quant import (
    dequantize,
    fake_quantize,
    quantize,
    signed_levels,
    tensor_scale,
    unsigned_levels,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_quantization_error_is_at_most_half_an_lsb(bits, signed):
    x = torch.randn(1000) if signed else torch.rand(1000) * 3
    s = tensor_scale(x, signed)
    q = quantize(x, bits, s, signed)
    levels = signed_levels(bits) if signed else unsigned_levels(bits)
    assert q.abs().max() <= levels
    assert torch.equal(q, q.round())
    assert ((q / levels * s - x).abs() <= s / levels / 2 + 1e-6).all()


def test_signed_codes_never_reach_the_twos_complement_minimum():
    q = quantize(torch.tensor([-5.0, 5.0]), 4, tensor_scale(torch.tensor([5.0]), True), True)
    assert q.tolist() == [-7.0, 7.0]


def test_unsigned_quantizer_clips_negatives_and_uses_max_not_absmax():
    x = torch.tensor([-3.0, 0.5, 1.0])
    s = tensor_scale(x, signed=False)
    assert s.item() == pytest.approx(1.0, abs=1e-6)
    assert quantize(x, 3, s, False).tolist() == [0.0, 3.0, 7.0]


def test_tiny_tensors_lose_their_top_level_because_of_epsilon():
    x = torch.tensor([1e-6])
    assert quantize(x, 8, tensor_scale(x, True), True).item() == 115  # spec §1.3


def test_per_sample_scale_makes_rows_independent():
    x = torch.randn(4, 3, 5)
    s = tensor_scale(x, True, per_sample=True)
    assert s.shape == (4, 1, 1)
    alone = tensor_scale(x[2:3], True, per_sample=True)
    assert torch.equal(s[2:3], alone)


def test_round_is_half_to_even():
    x = torch.tensor([0.5, 1.5, 2.5]) / 7 * 7
    assert quantize(x, 8, torch.tensor(255.0 + 1e-7), False).tolist() == [0.0, 2.0, 2.0]


def test_fake_quantization_has_straight_through_gradients():
    x = torch.tensor([-0.7, -0.2, 0.0, 0.3, 0.9], requires_grad=True)
    fake_quantize(x, 3, signed=True).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]))
    y = torch.tensor([-0.5, 0.2, 1.0], requires_grad=True)
    fake_quantize(y, 3, signed=False).sum().backward()
    assert torch.allclose(y.grad, torch.ones(3))  # clipped elements pass gradients too


def test_fake_quantization_values_equal_dequantized_codes():
    x = torch.randn(50)
    s = tensor_scale(x, True)
    q = quantize(x, 5, s, True)
    assert torch.allclose(fake_quantize(x, 5, True), q / 15 * s)


def test_dequantize_order_of_operations():
    acc, sw, sx = torch.tensor([26.0]), torch.tensor(0.80000013), torch.tensor(0.9000001)
    y = dequantize(acc, sw, sx, 3, 7)
    assert y.item() == (acc * (sw * sx) / 21).item()
