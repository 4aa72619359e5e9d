"""The cost model (asim.cost): counts against spec §12 and hand-computed cases, energies."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torch import nn

from asim import (
    ACiMConv2d,
    ACiMLinear,
    ACiMMultiheadAttention,
    CostConfig,
    CostRecorder,
    MacroConfig,
    NoiseConfig,
    convert_to_acim,
    estimate_cost,
)
from asim import cost as cost_mod
from asim.cost import COUNT_FIELDS, ENERGY_KEYS, PERFORMANCE_FIELDS
from asim.models import create_model

CONF = Path(__file__).resolve().parents[2] / "conf" / "cost"
VDD2 = 0.9**2  # the default preset's supply, squared
FJ = 1e-3  # pJ per fJ


@pytest.fixture(scope="module")
def resnet18():
    with torch.device("meta"):  # counts need shapes only: no weights are built
        return create_model("resnet18", num_classes=10).eval()


def _image(size: int = 32) -> torch.Tensor:
    return torch.empty(1, 3, size, size, device="meta")


def _convert_resnet18(model: nn.Module, macro: MacroConfig) -> nn.Module:
    """ResNet-18 CIFAR converted the reference way (spec §9.2): a digital W8A8 first layer with
    signed inputs, unsigned activations elsewhere (as lightning_modules.builders does)."""
    stem = MacroConfig(name="digital_w8a8", weight_bits=8, input_bits=8)

    def options_for(name, module):
        if name == "conv1":
            return {"digital": True, "signed_input": True, "macro": stem, "noise": None}
        return {"signed_input": False}

    return convert_to_acim(model, macro, options_for=options_for)


def _layers(report) -> dict[str, dict]:
    return {x["name"]: x for x in report.layers}


def _one(layer: nn.Module, x: torch.Tensor, cost: CostConfig | None = None) -> dict:
    """Per-sample entry of a single-layer model."""
    report = estimate_cost(layer, x, cost)
    assert len(report.layers) == 1
    return report.layers[0]


# ----------------------------------------------------------------------- spec §12.2 (ResNet-18)
def test_resnet18_w8a8_nrow255_matches_spec_12(resnet18):
    report = estimate_cost(_convert_resnet18(resnet18, MacroConfig()), _image())
    layers = _layers(report)
    t = report.totals
    assert t["adc_conversions"] == 164_104_064
    assert layers["fc"]["adc_conversions"] == 1_920
    assert layers["fc"]["binary_macs"] == 327_680
    assert t["binary_macs"] == 35_433_480_192 + 327_680
    assert t["digital_macs"] == layers["conv1"]["digital_macs"] == 1_769_472
    assert layers["conv1"]["adc_conversions"] == 0
    # the spec's per-layer table
    assert layers["layer1.0.conv1"]["adc_conversions"] == 12_582_912
    assert layers["layer1.0.conv1"]["binary_macs"] == 2_415_919_104
    assert layers["layer2.0.downsample.0"]["adc_conversions"] == 2_097_152
    assert layers["layer3.0.conv2"]["adc_conversions"] == 10_485_760
    assert layers["layer4.0.conv2"]["adc_conversions"] == 9_961_472
    assert layers["layer4.0.downsample.0"]["adc_conversions"] == 1_048_576
    l1 = layers["layer1.0.conv1"]
    assert l1["array_cycles"] == 3 * 8 * 32 * 32  # tiles x cycles x output positions
    assert l1["row_activations"] == 576 * 8 * 32 * 32  # mapped rows x cycles x positions
    assert l1["shift_adds"] == l1["adc_conversions"] and l1["digital_partial_sums"] == 0


def test_resnet18_bit_parallel_e2_halves_conv_conversions(resnet18):
    model = _convert_resnet18(resnet18, MacroConfig(input_enc_bits=2))
    layers = _layers(estimate_cost(model, _image()))
    convs = sum(x["adc_conversions"] for n, x in layers.items() if n != "fc")
    assert convs == 82_051_072
    # the bit-plane MACs are unchanged by the encoding (spec §5)
    assert layers["layer1.0.conv1"]["binary_macs"] == 2_415_919_104


def test_resnet18_nrow256_drops_channels_as_the_reference(resnet18):
    model = _convert_resnet18(resnet18, MacroConfig(nrow=256))
    layers = _layers(estimate_cost(model, _image()))
    assert sum(x["adc_conversions"] for n, x in layers.items() if n != "fc") == 158_334_976
    # layer3.0.conv2: 256 channels, 28 per tile x 9 tiles = 252 mapped (Q1)
    assert layers["layer3.0.conv2"]["binary_macs"] == 64 * 256 * 64 * 252 * 9


def test_vit_b32_matches_spec_12():
    # the example configuration: 9-bit keys and projection inputs, nrow 255, 1000 classes
    with torch.device("meta"):
        model = create_model("vit_b_32", num_classes=1000).eval()

    def macro_for(name, module):
        if name.endswith(".qk") or (
            isinstance(module, nn.MultiheadAttention) and not name.endswith(".av")
        ):
            return MacroConfig(input_bits=9)  # QK keys and the qkv/out projections
        return None

    model = convert_to_acim(model, MacroConfig(), exclude=["conv_proj"], macro_for=macro_for)
    report = estimate_cost(model, _image(224))
    prefix = "encoder.layers.encoder_layer_0."
    layer = {
        n.removeprefix(prefix): x["adc_conversions"]
        for n, x in _layers(report).items()
        if n.startswith(prefix)
    }
    assert layer == {
        "self_attention.in_proj": 33_177_600,  # qkv 33.2 M
        "self_attention.qk": 2_160_000,  # 2.16 M
        "self_attention.av": 2_457_600,  # 2.46 M
        "self_attention.out_proj": 11_059_200,  # proj 11.1 M
        "mlp.0": 39_321_600,  # mlp1 39.3 M
        "mlp.3": 31_948_800,  # mlp2 31.9 M
    }
    assert list(layer)[:4] == [f"self_attention.{p}" for p in ("in_proj", "qk", "av", "out_proj")]
    assert report.totals["adc_conversions"] == pytest.approx(1.44e9, rel=0.005)


# ----------------------------------------------------------------------- hand-computed cases
def _linear(in_f, out_f, macro, signed=False):
    torch.manual_seed(0)
    return ACiMLinear(in_f, out_f, macro=macro, signed_input=signed).eval()


def test_exact_hybrid_cycles_are_digital_partial_sums_not_conversions():
    # in=10 over nrow=4: 3 tiles (4, 4, 2); W4A4 bit-serial: 16 cycles, 3 of them digital (h=2)
    macro = MacroConfig(
        weight_bits=4, input_bits=4, nrow=4, adc_bits=3, hybrid_levels=2, hybrid_exact=True
    )
    x = _one(_linear(10, 3, macro), torch.rand(1, 10))
    assert x["adc_conversions"] == 3 * 3 * 13
    assert x["digital_partial_sums"] == 3 * 3 * 3
    assert x["shift_adds"] == 3 * 3 * 16
    assert x["array_cycles"] == 3 * 4  # tiles x cycles (one input vector)
    assert x["row_activations"] == 10 * 4
    assert x["binary_macs"] == 4 * 4 * 10 * 3
    e = x["energy_breakdown_pj"]
    assert e["adc"] == pytest.approx(117 * (100 * 3 + 0.001 * 4**3) * VDD2 * FJ)
    assert e["array"] == pytest.approx(117 * 4 * 0.35 * VDD2 * FJ)  # nrow cells per conversion
    assert e["input"] == pytest.approx(10 * 4 * 50 * VDD2 * FJ)  # rows x 4 one-bit cycles
    assert e["hybrid"] == pytest.approx(27 * 4 * 0.0075)
    assert e["shift_add"] == pytest.approx(144 * 0.1)
    assert e["vote"] == e["digital"] == 0
    assert x["energy_pj"] == pytest.approx(sum(e.values()))


def test_quantized_hybrid_cycles_are_charged_the_conversion_they_simulate():
    """hybrid_exact=False (Q4, the default): a "digital" cycle still passes the ADC in the
    simulation, so the cost model counts its conversion as well as its digital sum."""
    kw = dict(weight_bits=4, input_bits=4, nrow=4, adc_bits=3, hybrid_levels=2)
    x = _one(_linear(10, 3, MacroConfig(**kw)), torch.rand(1, 10))
    plain = _one(_linear(10, 3, MacroConfig(**{**kw, "hybrid_levels": 0})), torch.rand(1, 10))
    assert x["adc_conversions"] == plain["adc_conversions"] == 3 * 3 * 16
    assert x["digital_partial_sums"] == 3 * 3 * 3
    assert x["energy_pj"] > plain["energy_pj"]  # never cheaper than no hybrid cycles


def test_hybrid_count_is_triangular():
    for h in range(5):
        macro = MacroConfig(weight_bits=4, input_bits=4, nrow=4, hybrid_levels=h, hybrid_exact=True)
        x = _one(_linear(4, 1, macro), torch.rand(1, 4))
        assert x["digital_partial_sums"] == h * (h + 1) // 2
        assert x["adc_conversions"] == 16 - h * (h + 1) // 2


def test_majority_voting_converts_voted_cycles_k_times():
    macro = MacroConfig(weight_bits=4, input_bits=4, nrow=4, vote_levels=2, vote_samples=3)
    x = _one(_linear(10, 3, macro), torch.rand(1, 10))
    # 3 voted (i, c) pairs of 16, 3 conversions each: 13 + 9 per tile and output
    assert x["adc_conversions"] == 3 * 3 * (13 + 3 * 3)
    assert x["digital_partial_sums"] == 0
    assert x["shift_adds"] == 3 * 3 * 16  # one per partial sum after the vote
    # cycles 3 and 2 hold voted pairs: evaluated 3 times each -> 1 + 1 + 3 + 3 activations
    assert x["array_cycles"] == 3 * 8
    assert x["row_activations"] == 10 * 8
    assert x["binary_macs"] == 4 * 10 * 3 * 8
    e = x["energy_breakdown_pj"]
    assert e["vote"] == pytest.approx(3 * 3 * 3 * 3 * 0.03)  # voted sums x K(K-1)/2 compares
    assert e["hybrid"] == 0


def test_bit_parallel_unsigned_cycles():
    # golden case C5's layer: unsigned x=5, e=2 -> cycles of 2, 2 and 1 bits; w=3, nrow=4
    macro = MacroConfig(weight_bits=3, input_bits=5, nrow=4, adc_bits=4, input_enc_bits=2)
    x = _one(_linear(4, 2, macro), torch.rand(1, 4))
    assert x["adc_conversions"] == 1 * 3 * 3 * 2  # tile x weight bits x cycles x outputs
    assert x["array_cycles"] == 3 and x["row_activations"] == 4 * 3
    assert x["binary_macs"] == 3 * 5 * 4 * 2  # unchanged by the encoding
    assert x["energy_breakdown_pj"]["input"] == pytest.approx(4 * 5 * 50 * VDD2 * FJ)
    # ZigZag-IMC's rule: the 1-bit cycle needs no DAC
    y = _one(_linear(4, 2, macro), torch.rand(1, 4), CostConfig(binary_input_driver=False))
    assert y["energy_breakdown_pj"]["input"] == pytest.approx(4 * 4 * 50 * VDD2 * FJ)
    assert y["adc_conversions"] == x["adc_conversions"]


def test_signed_inputs_bit_serial_and_bit_parallel():
    serial = MacroConfig(weight_bits=3, input_bits=4, nrow=3)
    unsigned = _one(_linear(3, 2, serial, signed=False), torch.rand(1, 3))
    signed = _one(_linear(3, 2, serial, signed=True), torch.randn(1, 3))
    assert signed["adc_conversions"] == unsigned["adc_conversions"] == 3 * 4 * 2
    # golden case C6's layer: proj input (1, 2, 3), signed x=4, e=2: sign cycle + 2 + 1 bits
    par = serial.replace(input_enc_bits=2, adc_bits=4)
    x = _one(_linear(3, 2, par, signed=True), torch.randn(1, 2, 3))
    assert x["adc_conversions"] == 1 * 3 * 3 * 2 * 2  # tile x w x cycles x tokens x outputs
    assert x["array_cycles"] == 3 * 2
    assert x["binary_macs"] == 3 * 4 * 3 * 2 * 2


def test_conv_tiles_by_whole_kernels_and_drops_channels():
    # golden case C4's layer: C_in=3, k=2, nrow=6: 1 channel per tile, 2 tiles, channel 2 dropped
    macro = MacroConfig(weight_bits=3, input_bits=3, nrow=6, adc_bits=3)
    torch.manual_seed(0)
    conv = ACiMConv2d(3, 1, 2, bias=False, macro=macro, signed_input=True)
    x = _one(conv, torch.randn(1, 3, 3, 3))
    assert x["adc_conversions"] == 2 * 3 * 3 * 4  # tiles x w x cycles x (2x2 outputs)
    assert x["binary_macs"] == 3 * 3 * 8 * 4  # 2 mapped channels x 4 rows
    assert x["row_activations"] == 8 * 3 * 4
    conv.macro = macro.replace(conv_tiling="all_groups")
    y = _one(conv, torch.randn(1, 3, 3, 3))
    assert y["adc_conversions"] == 3 * 3 * 3 * 4 and y["binary_macs"] == 3 * 3 * 12 * 4


def test_weight_parallel_converts_once_per_output():
    macro = MacroConfig(
        weight_bits=4, input_bits=4, nrow=4, adc_bits=6, input_enc_bits=2, weight_parallel=True
    )
    x = _one(_linear(6, 2, macro), torch.rand(1, 6))  # 2 tiles (4, 2), 2 cycles
    assert x["adc_conversions"] == 2 and x["shift_adds"] == 0
    assert x["array_cycles"] == 2 * 2
    assert x["binary_macs"] == 4 * 4 * 6 * 2
    # the bit lines of every weight bit still evaluate in every tile and cycle
    evals = 2 * 4 * 2 * 2
    assert x["energy_breakdown_pj"]["array"] == pytest.approx(evals * 4 * 0.35 * VDD2 * FJ)
    per_cycle = _one(
        _linear(6, 2, macro.replace(weight_parallel_adc="per_cycle")), torch.rand(1, 6)
    )
    assert per_cycle["adc_conversions"] == per_cycle["shift_adds"] == evals


def _attention(batch_first=True):
    proj = MacroConfig(weight_bits=4, input_bits=5, nrow=3, adc_bits=4)
    qk = MacroConfig(weight_bits=4, input_bits=5, nrow=3, adc_bits=4, input_enc_bits=2)
    av = MacroConfig(weight_bits=4, input_bits=4, nrow=3, adc_bits=5)
    torch.manual_seed(0)
    return ACiMMultiheadAttention(
        8, 2, batch_first=batch_first, macro=proj, qk_macro=qk, av_macro=av
    ).eval()


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_qk_av_and_projections(batch_first):
    # E=8, H=2 (d=4), B=2, N=5 tokens; nrow 3
    attn = _attention(batch_first)
    x = torch.randn(2, 5, 8) if batch_first else torch.randn(5, 2, 8)
    layers = _layers(estimate_cost(attn, (x, x, x), num_samples=2))
    # the root module is named by its class; out_proj is a layer of its own
    assert list(layers) == [
        "ACiMMultiheadAttention.in_proj",
        "ACiMMultiheadAttention.qk",
        "ACiMMultiheadAttention.av",
        "out_proj",
    ]
    get = {n.rsplit(".", 1)[-1]: v for n, v in layers.items()}
    # packed qkv: 8 -> 24 over 3 tiles, signed x=5 bit-serial: 5 cycles; 5 tokens
    assert get["in_proj"]["adc_conversions"] == 3 * 4 * 5 * 5 * 24
    # QK^T: k (5 signed bits, e=2: 2 magnitude cycles + sign) over d=4 -> 2 tiles; q 4 bits
    assert get["qk"]["adc_conversions"] == 2 * 4 * 3 * (2 * 5 * 5)  # x H x Nk x Nq
    # AV: unsigned 4-bit scores over N=5 tokens -> 2 tiles; v 4 bits; outputs H x Nq x d
    assert get["av"]["adc_conversions"] == 2 * 4 * 4 * (2 * 5 * 4)
    assert get["out_proj"]["adc_conversions"] == 3 * 4 * 5 * 5 * 8
    assert get["qk"]["binary_macs"] == 4 * 5 * 4 * (2 * 5 * 5)  # w x x x d x outputs


def test_cross_attention_counts_each_projection_and_token_count():
    attn = _attention()
    q, kv = torch.randn(1, 5, 8), torch.randn(1, 7, 8)
    get = {n.rsplit(".", 1)[-1]: v for n, v in _layers(estimate_cost(attn, (q, kv, kv))).items()}
    assert get["in_proj"]["adc_conversions"] == 3 * 4 * 5 * 8 * (5 + 7 + 7)
    assert get["qk"]["adc_conversions"] == 2 * 4 * 3 * (2 * 7 * 5)
    assert get["av"]["adc_conversions"] == 3 * 4 * 4 * (2 * 5 * 4)  # 7 tokens -> 3 tiles


def test_digital_layers_count_macs_only():
    torch.manual_seed(0)
    conv = ACiMConv2d(3, 4, 3, padding=1, digital=True, signed_input=True)
    x = _one(conv, torch.randn(2, 3, 5, 5))
    assert x["digital_macs"] == 4 * 25 * 27
    assert all(x[k] == 0 for k in COUNT_FIELDS if k != "digital_macs")
    assert x["energy_pj"] == pytest.approx(x["digital_macs"] * 0.3)
    assert x["energy_breakdown_pj"]["digital"] == x["energy_pj"]


# ----------------------------------------------------------------------- invariants
def _digits(macro, noise=None):
    torch.manual_seed(0)
    model = create_model("digits_cnn").eval()
    return convert_to_acim(model, macro, noise, options_for=lambda n, m: {"signed_input": False})


def test_counts_describe_the_macro_not_the_simulation_path():
    x = torch.rand(4, 1, 8, 8)
    lossless = _digits(MacroConfig())  # simulated by the exact shortcut
    noisy = _digits(MacroConfig(), NoiseConfig(rand_sigma=1.0))  # the per-cycle path
    reports = []
    for model in (lossless, noisy):
        with CostRecorder(model) as rec:
            model(x)  # a real simulation
        reports.append(rec.report(num_samples=4).to_dict())
    assert reports[0] == reports[1]
    assert estimate_cost(lossless, x).to_dict() == reports[0]
    # a lossy ADC: the same counts, a cheaper conversion
    lossy = estimate_cost(_digits(MacroConfig(adc_bits=6)), x)
    for k in COUNT_FIELDS:
        assert lossy.totals[k] == reports[0]["cost"][k]
    assert (
        lossy.totals["energy_breakdown_pj"]["adc"]
        < reports[0]["cost"]["energy_breakdown_pj"]["adc"]
    )


def test_per_sample_numbers_do_not_depend_on_the_batch_size():
    model = _digits(MacroConfig(input_enc_bits=2, hybrid_levels=1))
    one = estimate_cost(model, torch.rand(1, 1, 8, 8)).to_dict()
    five = estimate_cost(model, torch.rand(5, 1, 8, 8)).to_dict()
    for a, b in zip(
        [one["cost"], *one["cost_layers"]], [five["cost"], *five["cost_layers"]], strict=True
    ):
        for k in COUNT_FIELDS:
            assert a[k] == b[k] and isinstance(b[k], int)
        assert a["energy_pj"] == pytest.approx(b["energy_pj"], rel=1e-12)
    assert (
        estimate_cost(model, torch.rand(5, 1, 8, 8), num_samples=1).totals["adc_conversions"]
        == 5 * one["cost"]["adc_conversions"]
    )


def test_report_layout_and_energy_is_the_sum_of_its_breakdown():
    report = estimate_cost(
        _digits(MacroConfig(vote_levels=2, vote_samples=3)), torch.rand(2, 1, 8, 8)
    )
    d = report.to_dict()
    assert set(d) == {"cost", "cost_layers"}
    fields = {*COUNT_FIELDS, *PERFORMANCE_FIELDS, "energy_pj", "energy_breakdown_pj"}
    assert set(d["cost"]) == fields
    assert [x["name"] for x in d["cost_layers"]] == ["conv1", "conv2", "conv3", "fc"]
    for entry in [d["cost"], *d["cost_layers"]]:
        assert set(entry) - {"name"} == fields
        assert set(entry["energy_breakdown_pj"]) == set(ENERGY_KEYS)
        assert entry["energy_pj"] == pytest.approx(sum(entry["energy_breakdown_pj"].values()))
    for k in COUNT_FIELDS:
        assert d["cost"][k] == sum(x[k] for x in d["cost_layers"])
    assert d["cost"]["energy_breakdown_pj"]["vote"] > 0
    assert "total" in report.table() and "conv2" in report.table()


def test_estimate_cost_leaves_the_model_as_it_was():
    model = _digits(MacroConfig(adc_bits=6))
    for m in (model.conv2, model.fc):
        m.trim_noise = 10.0
        m.reseed(3)
    model.train()
    model.bn2.eval()  # a per-module flag that must survive
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 1, 8, 8)
    rng = torch.get_rng_state()
    gen = model.conv2.generator(torch.device("cpu")).get_state()
    estimate_cost(model, x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # BN stats
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(model.conv2.generator(torch.device("cpu")).get_state(), gen)
    assert model.training and model.conv1.training and not model.bn2.training
    assert model.conv2.mode == "simulate" and model.conv2.trim_noise == 10.0


def test_meta_models_can_be_estimated_repeatedly(resnet18):
    model = _convert_resnet18(resnet18, MacroConfig(hybrid_levels=2))
    first = estimate_cost(model, _image()).to_dict()
    assert estimate_cost(model, _image()).to_dict() == first


def test_models_without_acim_layers_and_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="recorded no ACiM layer"):
        estimate_cost(nn.Linear(3, 2), torch.rand(1, 3))
    with pytest.raises(ValueError, match="num_samples"):
        estimate_cost(_linear(3, 2, MacroConfig()), torch.tensor(1.0))
    with pytest.raises(TypeError, match="CostConfig"):
        CostRecorder(nn.Linear(3, 2), cost={"vdd": 1.0})


def test_cycle_plan_matches_the_engine():
    if cost_mod._build_plan is None:
        pytest.skip("the engine's plan is not importable")
    macros = [
        MacroConfig(weight_bits=4, input_bits=5, hybrid_levels=h, input_enc_bits=e, hybrid_exact=x)
        for h in (0, 1, 3, 9)
        for e in (None, 2, 3)
        for x in (False, True)
    ] + [MacroConfig(weight_bits=5, input_bits=4, vote_levels=v, vote_samples=3) for v in (1, 4)]
    for macro in macros:
        for signed in (False, True):
            assert cost_mod._pair_kinds(macro, signed) == cost_mod._spec_kinds(macro, signed)


# ----------------------------------------------------------------------- CostConfig and presets
def test_cost_config_defaults_and_validation():
    c = CostConfig()
    assert c.adc_pj(8) == pytest.approx((800 + 0.001 * 65536) * 0.81 / 1000)  # 0.70 pJ
    for bad in (
        {"vdd": 0},
        {"vdd": -0.9},
        {"adc_linear_fF": -1},
        {"bitline_fF": "x"},
        {"shift_add_pj": math.inf},
        {"binary_input_driver": "no"},
        {"digital_mac_pj": True},
    ):
        with pytest.raises(ValueError, match=f"CostConfig.{next(iter(bad))}"):
            CostConfig(**bad)
    assert c.replace(vdd=1.0).adc_pj(1) == pytest.approx((100 + 0.004) / 1000)


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_presets_are_deltas_on_the_schema(path):
    raw = yaml.safe_load(path.read_text())  # typed by the primary config's schema
    assert raw["name"] == path.stem
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(CostConfig), raw))
    assert isinstance(cfg, CostConfig)
    defaults = CostConfig()
    assert all(getattr(defaults, k) != v for k, v in raw.items() if k != "name")  # deltas only
    assert "10x" in path.read_text()  # the caveat travels with every preset


def test_adc_only_preset_keeps_only_adc_energy():
    raw = yaml.safe_load((CONF / "adc_only.yaml").read_text())
    report = estimate_cost(
        _digits(MacroConfig(hybrid_levels=2)), torch.rand(1, 1, 8, 8), CostConfig(**raw)
    )
    e = report.totals["energy_breakdown_pj"]
    assert e["adc"] > 0 and all(v == 0 for k, v in e.items() if k != "adc")


def test_default_preset_is_the_schema_default():
    raw = yaml.safe_load((CONF / "zigzag_28nm.yaml").read_text())
    assert raw == {"name": CostConfig().name}


# ----------------------------------------------------------------------- latency, area, TOPS/W
def _perf(macro: MacroConfig, cost: CostConfig | None = None) -> dict:
    return _one(_linear(300, 64, macro), torch.rand(1, 300), cost)


def test_latency_area_and_tops_per_w_follow_their_formulas():
    macro = MacroConfig(nrow=255, adc_bits=8)
    x = _perf(macro)
    # 300 inputs over nrow 255: 2 tiles; 8 x 8 bit-serial pairs; 64 outputs
    assert x["adc_conversions"] == 2 * 64 * 64
    t_conv = 8 * (0.00653 * 255 + 0.640) + 0.0478  # ZigZag-IMC ADC delay + NAND2 path, ns
    assert x["latency_ns"] == pytest.approx(2 * 64 * 64 * t_conv / 256)  # 256 ADCs at once
    assert x["throughput_fps"] == pytest.approx(1e9 / x["latency_ns"])
    adc = 10 ** (1.206 - 0.0369 * 8) * 2**8 / 1e6  # mm^2
    assert x["area_mm2"] == pytest.approx(255 * 256 * 0.614 / 1e6 + 256 * adc)
    assert x["macs"] == 300 * 64
    assert x["tops_per_w"] == pytest.approx(2 * 300 * 64 / x["energy_pj"])


def test_halving_nrow_and_one_more_adc_bit_scale_as_the_formulas_say():
    base = _perf(MacroConfig(nrow=200, adc_bits=7))
    half = _perf(MacroConfig(nrow=100, adc_bits=7))
    # 300 rows: 2 tiles of 200 -> 3 tiles of 100: 1.5x conversions, each faster
    assert half["adc_conversions"] == base["adc_conversions"] * 3 // 2
    per_conv = {n: 7 * (0.00653 * n + 0.640) + 0.0478 for n in (100, 200)}
    assert half["latency_ns"] / base["latency_ns"] == pytest.approx(
        1.5 * per_conv[100] / per_conv[200]
    )
    cells = 256 * 0.614 / 1e6
    assert base["area_mm2"] - half["area_mm2"] == pytest.approx(100 * cells)  # ADCs unchanged
    more = _perf(MacroConfig(nrow=200, adc_bits=8))
    assert more["adc_conversions"] == base["adc_conversions"]
    assert more["latency_ns"] / base["latency_ns"] == pytest.approx(
        (8 * (0.00653 * 200 + 0.640) + 0.0478) / per_conv[200]
    )
    adc = {b: 10 ** (1.206 - 0.0369 * b) * 2**b / 1e6 for b in (7, 8)}
    assert more["area_mm2"] - base["area_mm2"] == pytest.approx(256 * (adc[8] - adc[7]))
    assert more["energy_pj"] > base["energy_pj"] and more["tops_per_w"] < base["tops_per_w"]


def test_adc_sharing_and_parallel_macros():
    macro = MacroConfig(nrow=255, adc_bits=6)
    one = _perf(macro)
    muxed = _perf(macro, CostConfig(columns_per_adc=8))
    assert muxed["latency_ns"] == pytest.approx(8 * one["latency_ns"])
    assert muxed["area_mm2"] < one["area_mm2"]
    four = _perf(macro, CostConfig(macros=4))
    assert four["latency_ns"] == pytest.approx(one["latency_ns"] / 4)
    assert four["area_mm2"] == pytest.approx(4 * one["area_mm2"])
    assert four["energy_pj"] == pytest.approx(one["energy_pj"])
    assert CostConfig().adc_area_mm2(1) == 0.0  # a sense amplifier
    with pytest.raises(ValueError, match="CostConfig.columns_per_adc=0 must be"):
        CostConfig(columns_per_adc=0)


def test_model_totals_sum_latency_and_count_each_macro_once():
    report = estimate_cost(_digits(MacroConfig()), torch.rand(2, 1, 8, 8)).to_dict()
    layers = [x for x in report["cost_layers"] if x["adc_conversions"]]
    assert report["cost"]["latency_ns"] == pytest.approx(sum(x["latency_ns"] for x in layers))
    # every ACiM layer uses the same macro: the model's area is that one macro's
    assert report["cost"]["area_mm2"] == pytest.approx(layers[0]["area_mm2"])
    assert report["cost"]["macs"] == sum(x["macs"] for x in report["cost_layers"])
