"""The byte-level GPT (asim.models.gpt): causality, conversion with QK^T and AV on the macro,
lossless simulation equal to quantized inference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from asim import (
    MacroConfig,
    NoiseConfig,
    acim_modules,
    convert_to_acim,
    resample_noise,
    set_mode,
)
from asim.layers import ACiMLinear, ACiMMultiheadAttention
from asim.models import GPT, create_model, list_models


def _tiny(**kwargs) -> GPT:
    torch.manual_seed(0)
    kw = {"block_size": 16, "num_layers": 2, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}
    return create_model("gpt_tiny", **{**kw, **kwargs}).eval()


def _convert(model: nn.Module, macro=None, noise=None, mode="simulate") -> nn.Module:
    return convert_to_acim(
        model,
        macro or MacroConfig(nrow=8),
        noise,
        first_layer=None,
        signed_input=True,
        classifier_signed_input=True,
        mode=mode,
    )


def test_registered_and_sized_by_its_arguments():
    assert "gpt_tiny" in list_models()
    model = create_model("gpt_tiny")
    assert model.vocab_size == 256 and model.block_size == 128
    assert model.get_submodule(model.classifier_name).out_features == 256
    params = sum(p.numel() for p in model.parameters())
    assert 300_000 < params < 500_000  # a few hundred k: the shipped checkpoint stays < 2 MB
    assert create_model("gpt_tiny", num_classes=50).lm_head.out_features == 50


def test_logits_at_a_position_do_not_see_later_tokens():
    model = _tiny()
    x = torch.randint(0, 256, (3, 16))
    y = model(x)
    assert y.shape == (3, 16, 256)
    x2 = x.clone()
    x2[:, 9] = (x2[:, 9] + 1) % 256
    y2 = model(x2)
    assert torch.equal(y[:, :9], y2[:, :9])
    assert not torch.allclose(y[:, 9:], y2[:, 9:])


def test_shorter_sequences_and_too_long_ones():
    model = _tiny()
    x = torch.randint(0, 256, (2, 16))
    torch.testing.assert_close(model(x[:, :5]), model(x)[:, :5])
    with pytest.raises(ValueError, match="block_size is 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_every_matmul_converts_and_attention_runs_on_its_macros(monkeypatch):
    model = _tiny()
    acim = _convert(model)
    layers = dict(acim_modules(acim))
    attn = [n for n, m in layers.items() if isinstance(m, ACiMMultiheadAttention)]
    linears = [n for n, m in layers.items() if type(m) is ACiMLinear]
    assert attn == ["blocks.0.self_attention", "blocks.1.self_attention"]
    # out_proj of each attention, two MLP linears per block, the head
    assert len(linears) == 2 + 4 + 1 and "lm_head" in linears
    assert not any(type(m) is nn.Linear for m in acim.modules())  # nothing left float
    assert type(acim.tok_emb) is nn.Embedding  # a lookup stays float
    calls = []
    original = ACiMMultiheadAttention._dynamic

    def spy(self, x, w, macro, *args, **kwargs):
        calls.append(macro)
        return original(self, x, w, macro, *args, **kwargs)

    monkeypatch.setattr(ACiMMultiheadAttention, "_dynamic", spy)
    with torch.no_grad():
        acim(torch.randint(0, 256, (2, 16)))
    assert len(calls) == 4  # QK^T and AV in each of the two blocks


def test_lossless_noise_free_simulation_equals_quantized_inference():
    acim = _convert(_tiny(), MacroConfig())  # the reference macro: 8-bit ADC, 255 rows
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        set_mode(acim, "inference")
        ref = acim(x)
        set_mode(acim, "simulate")
        assert torch.equal(acim(x), ref)


def test_lossy_adc_changes_the_logits_and_noise_is_seeded():
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        ref = _convert(_tiny(), mode="inference")(x)
        lossy = _convert(_tiny(), MacroConfig(nrow=8, adc_bits=2))(x)
        assert not torch.equal(lossy, ref)
        noise = NoiseConfig(rand_sigma=0.5)
        a, b = _convert(_tiny(), noise=noise), _convert(_tiny(), noise=noise)
        resample_noise(a, 3), resample_noise(b, 3)
        assert torch.equal(a(x), b(x))  # the same chip
        resample_noise(b, 4)
        assert not torch.equal(a(x), b(x))
