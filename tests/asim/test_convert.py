"""convert_to_acim / to_float on arbitrary models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from asim import (
    ACiMConv2d,
    ACiMLinear,
    ACiMMultiheadAttention,
    MacroConfig,
    acim_modules,
    convert_to_acim,
    set_mode,
    to_float,
)
from asim.mapping import AttentionMacros, LayerMacro, MacroDelta, first_conv_name


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1))
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.block(x))
        t = x.flatten(2).transpose(1, 2)
        t, _ = self.attn(t, t, t)
        return self.fc(t.mean(1))


def test_convert_swaps_exact_types_and_keeps_weights():
    net = Net().eval()
    acim = convert_to_acim(net, MacroConfig())
    types = {n: type(m) for n, m in acim.named_modules()}
    assert types["conv1"] is ACiMConv2d and types["block.0"] is ACiMConv2d
    assert types["attn"] is ACiMMultiheadAttention and types["fc"] is ACiMLinear
    assert types["attn.out_proj"] is ACiMLinear  # replaced with its unit
    assert type(net.conv1) is nn.Conv2d  # deep copy by default
    assert set(acim.state_dict()) == set(net.state_dict())
    for k, v in net.state_dict().items():
        assert torch.equal(acim.state_dict()[k], v)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        rel = (acim(x) - net(x)).norm() / net(x).norm()
    assert rel < 0.05


def test_exclude_globs_and_typo_guard():
    acim = convert_to_acim(Net(), exclude=["conv1", "block.*"])
    assert type(acim.conv1) is nn.Conv2d and type(acim.block[0]) is nn.Conv2d
    assert type(acim.fc) is ACiMLinear
    with pytest.raises(ValueError, match=r"\['fcc'\] match no module"):
        convert_to_acim(Net(), exclude=["fcc"])


def test_macro_for_and_options_for_are_per_layer():
    def macro_for(name, module):
        return MacroConfig(name="first", adc_bits=6) if name == "conv1" else None

    def options_for(name, module):
        return {"digital": True, "signed_input": True} if name == "conv1" else None

    acim = convert_to_acim(
        Net(), MacroConfig(name="rest"), macro_for=macro_for, options_for=options_for
    )
    assert acim.conv1.macro.name == "first" and acim.conv1.digital and acim.conv1.signed_input
    assert acim.fc.macro.name == "rest"
    set_mode(acim, "inference")
    assert acim.conv1.mode == "simulate" and acim.fc.mode == "inference"  # digital untouched


def test_attention_parts_get_their_own_macros():
    def macro_for(name, module):
        return {
            "attn.qk": MacroConfig(name="qk", input_bits=9),
            "attn.av": MacroConfig(name="av", weight_bits=6),
        }.get(name)

    acim = convert_to_acim(Net(), MacroConfig(), macro_for=macro_for)
    assert acim.attn.qk_macro.input_bits == 9 and acim.attn.av_macro.weight_bits == 6


def test_grouped_conv_error_names_the_layer():
    net = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(ValueError, match=r"cannot convert layer '1' .*groups=4.*exclude=\['1'\]"):
        convert_to_acim(net)
    assert type(convert_to_acim(net, exclude=["1"])[0]) is ACiMConv2d


def test_to_float_round_trip_and_acim_modules():
    net = Net()
    acim = convert_to_acim(net)
    names = [n for n, _ in acim_modules(acim)]
    assert names == ["conv1", "block.0", "block.2", "attn", "attn.out_proj", "fc"]
    back = to_float(acim)
    assert not list(acim_modules(back))
    assert type(back.attn) is nn.MultiheadAttention and type(back.attn.out_proj) is not ACiMLinear
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        assert torch.allclose(back(x), net(x), atol=1e-6)


def test_inplace_conversion_keeps_device_and_dtype():
    device = "cuda" if torch.cuda.is_available() else "meta"
    net = Net().to(device=device, dtype=torch.float64)
    convert_to_acim(net, inplace=True)
    assert type(net.fc) is ACiMLinear
    for p in net.parameters():
        assert p.device.type == device and p.dtype == torch.float64
    assert net.attn.out_proj.weight.device.type == device


# --------------------------------------------------------------------- the mapping (asim.mapping)


def test_first_layer_is_found_and_mapped_as_asked():
    net = Net()
    assert first_conv_name(net) == "conv1"  # no `first_conv` attribute: the first nn.Conv2d
    digital = convert_to_acim(net, MacroConfig(adc_bits=6), first_layer="digital")
    assert digital.conv1.digital and digital.conv1.signed_input
    assert (digital.conv1.macro.weight_bits, digital.conv1.macro.input_bits) == (8, 8)
    assert digital.conv1.noise is None and not digital.block[0].digital
    assert digital.block[0].macro.adc_bits == 6 and not digital.block[0].signed_input
    acim = convert_to_acim(net, MacroConfig(), first_layer="acim")
    assert not acim.conv1.digital and acim.conv1.signed_input  # it sees the signed image
    kept = convert_to_acim(net, MacroConfig(), first_layer="float")
    assert type(kept.conv1) is nn.Conv2d and isinstance(kept.block[0], ACiMConv2d)
    with pytest.raises(ValueError, match="first_layer='analog' is not valid"):
        convert_to_acim(net, first_layer="analog")
    with pytest.raises(ValueError, match="has no nn.Conv2d"):
        convert_to_acim(nn.Sequential(nn.Linear(2, 2)), first_layer="digital")


def test_model_first_conv_attribute_wins():
    from asim.models import create_model

    vgg = create_model("vgg11_bn", num_classes=10)
    assert first_conv_name(vgg) == vgg.first_conv == "features.0"
    vgg.first_conv = "features.3"  # a model may name another conv
    assert first_conv_name(vgg) == "features.3"


def test_layer_macros_and_attention_deltas():
    net = Net()
    acim = convert_to_acim(
        net,
        MacroConfig(),
        layer_macros=[{"match": "block.*", "adc_bits": 5}, LayerMacro(match="block.2", nrow=63)],
        attention=AttentionMacros(qk=MacroDelta(input_bits=9)),
        signed_input=True,
        classifier_signed_input=False,
    )
    assert acim.block[0].macro.adc_bits == 5 and acim.block[0].macro.nrow == 255
    assert (acim.block[2].macro.adc_bits, acim.block[2].macro.nrow) == (5, 63)  # in order
    assert acim.conv1.macro.adc_bits == 8
    assert acim.attn.qk_macro.input_bits == 9 and acim.attn.av_macro.input_bits == 8
    assert acim.block[0].signed_input and not acim.fc.signed_input  # the classifier's own
    with pytest.raises(ValueError, match=r"layer_macros: match \['blok\.\*'\] selects no"):
        convert_to_acim(net, layer_macros=[{"match": "blok.*", "adc_bits": 5}])
    with pytest.raises(ValueError, match=r"layer_macros\[0\]: unknown MacroConfig field"):
        convert_to_acim(net, layer_macros=[{"match": "fc", "adcbits": 5}])
    with pytest.raises(ValueError, match=r"layer_macros\[0\] needs match"):
        convert_to_acim(net, layer_macros=[{"adc_bits": 5}])
    with pytest.raises(ValueError, match=r"attention\.qk: MacroConfig\.adc_bits=0"):
        convert_to_acim(net, attention={"qk": {"adc_bits": 0}})
    with pytest.raises(TypeError):
        MacroDelta(kbits=9)  # typed: a typo fails where it is written


def test_options_for_still_overrides_the_mapping():
    acim = convert_to_acim(
        Net(),
        first_layer="digital",
        options_for=lambda name, m: {"signed_input": True} if name == "fc" else None,
    )
    assert acim.fc.signed_input and acim.conv1.digital


def test_float_and_acim_attention_share_masks_and_scale_names():
    """The float ScaledMultiheadAttention builds the causal mask the ACiM one builds (it
    used to raise), and both take the scale names of asim.attention_common."""
    from asim.attention_common import ATTN_SCALES
    from asim.layers import attention as acim_attention
    from asim.models import layers as float_layers
    from asim.models.layers import ScaledMultiheadAttention

    assert acim_attention.ATTN_SCALES is float_layers.ATTN_SCALES is ATTN_SCALES
    torch.manual_seed(0)
    attn = ScaledMultiheadAttention(8, 2, batch_first=True, scale="embed_dim").eval()
    x = torch.randn(2, 5, 8)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    with torch.no_grad():
        y, w = attn(x, x, x, is_causal=True)
        ref, _ = attn(x, x, x, attn_mask=causal)
    assert torch.equal(y, ref) and torch.all(w.triu(1) == 0)
    acim = convert_to_acim(nn.Sequential(attn), MacroConfig(), mode="train")[0]
    assert acim.attn_scale == "embed_dim"
    with torch.no_grad():
        ya, wa = acim(x, x, x, is_causal=True)
        yb, _ = acim(x, x, x, attn_mask=causal)
    assert torch.equal(ya, yb) and torch.all(wa.triu(1) == 0)
