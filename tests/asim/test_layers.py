"""ACiM layers behave as drop-in torch layers: shapes, state, modes, gradients, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from asim import (
    ACiMConv2d,
    ACiMLinear,
    ACiMMultiheadAttention,
    ActScale,
    MacroConfig,
    NoiseConfig,
    resample_noise,
)


def _rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_issue_example_constructs_and_runs():
    conv = ACiMConv2d(
        64,
        128,
        3,
        padding=1,
        bias=False,
        macro=MacroConfig(nrow=255, adc_bits=6),
        noise=NoiseConfig(rand_sigma=0.39),
        signed_input=False,
        mode="simulate",
    )
    y = conv(torch.relu(torch.randn(2, 64, 6, 6)))
    assert y.shape == (2, 128, 6, 6)
    assert "adc=6" in repr(conv) and "rand=0.39%" in repr(conv)


@pytest.mark.parametrize("mode", ["train", "inference", "simulate"])
def test_default_macro_matches_float_layers_within_quantization_error(mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 3, padding=1)
    lin = nn.Linear(40, 6)
    x = torch.relu(torch.randn(3, 16, 7, 7))
    xl = torch.randn(5, 40)
    aconv = ACiMConv2d.from_float(conv, mode=mode)
    alin = ACiMLinear.from_float(lin, mode=mode)
    with torch.no_grad():
        assert _rel_err(aconv(x), conv(x)) < 0.02
        assert _rel_err(alin(xl), lin(xl)) < 0.02


def test_float_state_dict_loads_unchanged_and_round_trips():
    conv = nn.Conv2d(3, 4, 3, bias=True)
    aconv = ACiMConv2d(3, 4, 3)
    aconv.load_state_dict(conv.state_dict())
    assert set(aconv.state_dict()) == {"weight", "bias"}
    back = aconv.to_float()
    assert type(back) is nn.Conv2d and torch.equal(back.weight, conv.weight)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    amha = ACiMMultiheadAttention(8, 2, batch_first=True)
    amha.load_state_dict(mha.state_dict())
    assert set(amha.state_dict()) == set(mha.state_dict())


def test_attention_ideal_macro_matches_torch_attention():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    amha = ACiMMultiheadAttention.from_float(mha).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        want, w_want = mha(x, x, x)
        got, w_got = amha(x, x, x)
    assert _rel_err(got, want) < 0.03
    assert w_got.shape == w_want.shape


def test_attention_sequence_first_and_masks():
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(8, 2).eval()  # (N, B, C) layout
    amha = ACiMMultiheadAttention.from_float(mha, mode="inference").eval()
    x = torch.randn(4, 3, 8)
    pad = torch.tensor([[False, False, False, True]] * 3)
    with torch.no_grad():
        want, _ = mha(x, x, x, key_padding_mask=pad)
        got, _ = amha(x, x, x, key_padding_mask=pad)
    assert got.shape == want.shape
    assert _rel_err(got, want) < 0.03


def test_mode_switch_propagates_and_validates():
    amha = ACiMMultiheadAttention(8, 2)
    amha.mode = "inference"
    assert amha.out_proj.mode == "inference"
    with pytest.raises(ValueError, match="mode='sim' is not valid"):
        ACiMLinear(3, 3).mode = "sim"


def test_train_mode_gradients_flow_through_ste():
    torch.manual_seed(3)
    conv = ACiMConv2d(4, 4, 3, padding=1, mode="train", trim_noise=20)
    lin = ACiMLinear(16, 3, mode="train")
    x = torch.randn(2, 4, 4, 4, requires_grad=True)
    out = lin(conv(torch.relu(x)).flatten(1)[:, :16])
    out.sum().backward()
    for p in (conv.weight, conv.bias, lin.weight, lin.bias, x):
        g = p.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_simulate_mode_runs_without_autograd_graph():
    lin = ACiMLinear(10, 2, bias=False)
    y = lin(torch.randn(3, 10, requires_grad=True))
    assert not y.requires_grad


def test_per_sample_scale_makes_results_independent_of_batching():
    torch.manual_seed(4)
    macro = MacroConfig(adc_bits=5, act_scale=ActScale.sample)
    conv = ACiMConv2d(8, 4, 3, padding=1, macro=macro)
    x = torch.relu(torch.randn(6, 8, 5, 5))
    x[3] *= 10  # one loud sample
    with torch.no_grad():
        full = conv(x)
        parts = torch.cat([conv(x[:2]), conv(x[2:])])
    assert torch.equal(full, parts)
    batch = ACiMConv2d(8, 4, 3, padding=1, macro=macro.replace(act_scale="batch"))
    batch.load_state_dict(conv.state_dict())
    with torch.no_grad():
        assert not torch.equal(batch(x)[:2], batch(x[:2]))  # the reference's Q5 behaviour


def test_chunked_conv_equals_unchunked(monkeypatch):
    from asim.engine import backend as engine_backend
    from asim.layers import conv as conv_mod

    torch.manual_seed(5)
    conv = ACiMConv2d(6, 5, 3, padding=1, macro=MacroConfig(adc_bits=4, nrow=20))
    x = torch.relu(torch.randn(3, 6, 6, 6))
    with torch.no_grad():
        ref = conv(x)
        monkeypatch.setattr(conv_mod, "_UNFOLD_BUDGET", 40)
        monkeypatch.setattr(engine_backend, "CHUNK_ELEMENTS", 500)
        assert torch.equal(conv(x), ref)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weight_bits=1), "weight_bits=1 must be >= 2"),
        (dict(input_bits=1), "input_bits=1 must be >= 2"),
        (dict(adc_bits=0), "adc_bits=0 must be in 1..24"),
        (dict(nrow=0), "nrow=0 must be >= 1"),
        (dict(input_enc_bits=9), "input_enc_bits=9 must be null"),
        (dict(vote_levels=2, vote_samples=3, input_enc_bits=2), "voting .* bit-serial"),
        (dict(vote_levels=1, vote_samples=3, hybrid_levels=1), "exclusive"),
        (dict(weight_parallel=True), "needs bit-parallel inputs"),
        (dict(act_scale="tensor"), "act_scale='tensor' is not valid"),
    ],
)
def test_bad_macro_values_raise_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        MacroConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_bad_layer_configurations_raise_clear_errors():
    with pytest.raises(ValueError, match="kernel area 9 exceeds MacroConfig.nrow=8"):
        ACiMConv2d(3, 3, 3, macro=MacroConfig(nrow=8))
    with pytest.raises(ValueError, match="groups=4"):
        ACiMConv2d(8, 8, 3, groups=4)
    with pytest.raises(ValueError, match="must be < input_bits=4 for a signed input"):
        ACiMLinear(4, 4, macro=MacroConfig(input_bits=4, input_enc_bits=4))
    with pytest.raises(ValueError, match="must be >= 0"):
        NoiseConfig(rand_sigma=-1)
    conv = ACiMConv2d(3, 3, 2, macro=MacroConfig(nrow=8))
    with pytest.raises(ValueError, match="kernel area"):
        conv.macro = MacroConfig(nrow=3)


def test_negative_inputs_to_unsigned_layer_warn_once():
    lin = ACiMLinear(4, 2, signed_input=False)
    with pytest.warns(UserWarning, match="negative inputs"):
        lin(torch.randn(3, 4))


def test_cell_variation_per_chip_is_fixed_until_resampled():
    lin = ACiMLinear(
        30,
        3,
        signed_input=False,
        macro=MacroConfig(adc_bits=8),
        noise=NoiseConfig(cell_sigma=5.0, cell_variation="per_chip"),
    )
    x = torch.rand(4, 30)
    resample_noise(lin, 1)
    with torch.no_grad():
        a, b = lin(x), lin(x)
        resample_noise(lin, 2)
        c = lin(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    lin.noise = NoiseConfig(cell_sigma=5.0)  # per_forward: redrawn each call
    with torch.no_grad():
        assert not torch.equal(lin(x), lin(x))


def test_majority_voting_reduces_error():
    torch.manual_seed(6)
    base = dict(weight_bits=4, input_bits=4, nrow=15, adc_bits=4)
    noise = NoiseConfig(rand_sigma=4.0)
    x = torch.rand(400, 15)
    lin = ACiMLinear(15, 1, bias=False, signed_input=False, macro=MacroConfig(**base))
    with torch.no_grad():
        ideal = lin(x)
        lin.noise = noise
        plain = (lin(x) - ideal).pow(2).mean()
        lin.macro = MacroConfig(**base, vote_levels=3, vote_samples=5)
        voted = (lin(x) - ideal).pow(2).mean()
    assert voted < plain
