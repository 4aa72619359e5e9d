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
    net = Net().double()
    convert_to_acim(net, inplace=True)
    assert type(net.fc) is ACiMLinear and net.fc.weight.dtype == torch.float64
