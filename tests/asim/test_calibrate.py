"""ADC calibration from data (asim/calibrate.py): the observed column counts equal the
literal oracle's (per layer and per ADC); max leaves no clipping; percentile and mse stay
below max; Lloyd-Max beats the best uniform ADC; per-ADC ranges fit the counts better than
one per layer; the artifact round-trips and applies (or refuses in one line)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

import asim
from asim import (
    ACiMConv2d,
    ACiMLinear,
    ACiMMultiheadAttention,
    Calibration,
    MacroConfig,
    calibrate_adc,
)
from asim import calibrate as calibration
from asim.calibrate import CountHistogram, observe_counts

from . import oracle


def _observed(hist) -> dict[int, list[int]]:
    return {lv: n.tolist() for lv, n in hist.counts.items()}


@pytest.mark.parametrize(
    "signed,enc,hybrid",
    [(True, None, 0), (False, 2, 0), (True, 3, 0), (False, None, 2)],
)
def test_observed_counts_equal_oracle_linear(signed, enc, hybrid):
    torch.manual_seed(1)
    macro = MacroConfig(
        weight_bits=4,
        input_bits=5,
        nrow=7,
        adc_bits=3,
        input_enc_bits=enc,
        hybrid_levels=hybrid,
        hybrid_exact=hybrid > 0,
    )
    layer = ACiMLinear(20, 6, macro=macro, signed_input=signed)
    x = torch.randn(3, 20) if signed else torch.rand(3, 20)
    hists, seen = observe_counts(layer, [x])
    trace: list[dict] = []
    oracle.oracle_linear(
        x,
        layer.weight.detach(),
        signed_act=signed,
        wbit=4,
        xbit=5,
        adc_prec=3,
        nrow=7,
        act_enc=enc,
        hybrid_levels=hybrid,
        hybrid_exact=hybrid > 0,
        trace=trace,
    )
    assert seen == 1
    assert _observed(hists[""]) == oracle.mac_histogram(trace, 7)


def test_observed_counts_equal_oracle_conv():
    torch.manual_seed(2)
    macro = MacroConfig(weight_bits=3, input_bits=4, nrow=20, adc_bits=4)  # 2 channels a tile
    layer = ACiMConv2d(5, 4, 3, padding=1, stride=2, macro=macro)
    x = torch.rand(2, 5, 7, 7)
    hists, _ = observe_counts(nn.Sequential(layer), [(x, torch.zeros(2))])
    trace: list[dict] = []
    oracle.oracle_conv2d(
        x,
        layer.weight.detach(),
        stride=2,
        padding=1,
        wbit=3,
        xbit=4,
        adc_prec=4,
        nrow=20,
        trace=trace,
    )
    assert _observed(hists["0"]) == oracle.mac_histogram(trace, 20)


def _model(macro: MacroConfig) -> nn.Module:
    torch.manual_seed(0)
    float_model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 5, 4)
    )
    return asim.convert_to_acim(float_model, macro)


MACRO = MacroConfig(weight_bits=5, input_bits=5, nrow=31, adc_bits=3)


def _batches(n: int = 3):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(4, 3, 5, 5, generator=g) for _ in range(n)]


def test_max_leaves_no_clipping_on_its_own_data():
    cal = calibrate_adc(_model(MACRO), _batches(), method="max")
    assert set(cal.layers) == {"0", "3"}
    for lc in cal.layers.values():
        counts = lc.count_histogram[1]
        assert lc.clip_rate == 0
        assert lc.full_scale == len(counts) - 1  # the largest observed count
        assert counts[-1] > 0 and lc.full_scale < MACRO.nrow
        assert sum(lc.code_histogram) == lc.observed == sum(counts)


def test_percentile_and_mse_against_max():
    model = _model(MACRO)
    by = {m: calibrate_adc(model, _batches(), method=m) for m in ("max", "mse")}
    by.update({p: calibrate_adc(model, _batches(), percentile=p) for p in (90.0, 99.0, 100.0)})
    for key in ("0", "3"):
        fs = {m: c.layers[key].full_scale for m, c in by.items()}
        assert fs[90.0] <= fs[99.0] <= fs[100.0] == fs["max"]
        clip = {m: c.layers[key].clip_rate for m, c in by.items()}
        assert clip[90.0] >= clip[99.0] >= clip[100.0] == 0
        assert clip[90.0] > 0
        mse = {m: c.layers[key].mse for m, c in by.items()}
        assert mse["mse"] <= min(mse.values())
        assert mse["mse"] < by["mse"].layers[key].mse_full_scale


def test_mse_is_the_brute_force_minimum():
    cal = calibrate_adc(_model(MACRO), _batches(), method="mse")
    lc = cal.layers["3"]
    counts = torch.tensor(lc.count_histogram[1], dtype=torch.float64)
    m = torch.arange(counts.numel(), dtype=torch.float64)
    A = MACRO.adc_levels

    def err(fs: int) -> float:
        out = torch.round(torch.clamp(m / fs, 0, 1) * A) / A * fs
        return float(((m - out) ** 2 * counts).sum() / counts.sum())

    errors = {fs: err(fs) for fs in range(1, MACRO.nrow + 1)}
    assert errors[lc.full_scale] == pytest.approx(min(errors.values()), rel=1e-12)
    assert lc.mse == pytest.approx(errors[lc.full_scale], rel=1e-12)


def test_lloyd_max_beats_the_best_uniform_adc():
    model = _model(MACRO)
    uniform = calibrate_adc(model, _batches(), method="mse")
    lloyd = calibrate_adc(model, _batches(), method="lloyd_max")
    A = MACRO.adc_levels
    for key, lc in lloyd.layers.items():
        assert len(lc.thresholds) == A and len(lc.values) == A + 1
        v = torch.tensor(lc.values)
        assert bool((v[1:] > v[:-1]).all())
        assert torch.allclose(torch.tensor(lc.thresholds), (v[1:] + v[:-1]) / 2)
        assert lc.mse < uniform.layers[key].mse
        assert uniform.layers[key].thresholds is None


def test_save_load_round_trip(tmp_path):
    cal = calibrate_adc(_model(MACRO), _batches(), method="lloyd_max")
    path = cal.save(tmp_path / "cal.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "asim-adc-calibration" and doc["version"] == 2
    assert doc["layers"]["0"]["macro"]["adc_bits"] == 3
    assert Calibration.load(path) == cal
    doc["version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="version 99.*calibrate again") as err:
        Calibration.load(path)
    assert "\n" not in str(err.value)


def test_apply_sets_the_fields():
    model = _model(MACRO)
    cal = calibrate_adc(model, _batches(), method="lloyd_max")
    assert all(m.macro.adc_full_scale is None for _, m in asim.acim_modules(model))
    cal.apply(model)
    for name, layer in asim.acim_modules(model):
        lc = cal.layers[name]
        assert layer.macro == dataclasses.replace(
            MACRO,
            adc_full_scale=lc.full_scale,
            adc_thresholds=lc.thresholds,
            adc_values=lc.values,
        )
    plain = calibrate_adc(model, _batches(), method="max")  # recalibrating a calibrated model
    plain.apply(model)
    assert all(m.macro.adc_thresholds is None for _, m in asim.acim_modules(model))


def test_apply_refuses_another_model():
    cal = calibrate_adc(_model(MACRO), _batches(), method="max")
    other = asim.convert_to_acim(nn.Sequential(nn.Linear(4, 3)), MACRO)
    with pytest.raises(ValueError, match="^Calibration.apply: the model lacks '3'"):
        cal.apply(other)
    wider = asim.convert_to_acim(
        nn.Sequential(nn.Conv2d(3, 7, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(175, 4)),
        MACRO,
    )
    with pytest.raises(ValueError, match=r"layer '0' is ACiMConv2d\[7, 3, 3, 3\]"):
        cal.apply(wider)
    eight = _model(MACRO.replace(adc_bits=8))
    with pytest.raises(ValueError, match="macro.adc_bits=8, the calibration was made for 3"):
        cal.apply(eight)
    assert all(m.macro.adc_full_scale is None for _, m in asim.acim_modules(eight))


def test_bad_arguments_fail_in_one_line():
    model = _model(MACRO)
    with pytest.raises(ValueError, match="granularity='adc'; choose one of layer, column"):
        calibrate_adc(model, _batches(), granularity="adc")
    with pytest.raises(ValueError, match="lloyd_max fits one level table per layer"):
        calibrate_adc(model, _batches(), method="lloyd_max", granularity="column")
    with pytest.raises(ValueError, match="method='minmax'; choose one of max, percentile"):
        calibrate_adc(model, _batches(), method="minmax")
    with pytest.raises(ValueError, match="percentile=0 must be in"):
        calibrate_adc(model, _batches(), percentile=0)
    with pytest.raises(ValueError, match="no calibration batch"):
        calibrate_adc(model, [])
    for steps, granularity in ((4, "layer"), (0, "column"), (2.5, "column"), (True, "column")):
        with pytest.raises(ValueError, match=r"column_steps=.* needs granularity='column'"):
            calibrate_adc(model, _batches(), granularity=granularity, column_steps=steps)


def test_observation_restores_the_model():
    model = _model(MACRO)
    model.train()
    layer = model[0]
    layer.trim_noise = 1.0
    calibrate_adc(model, _batches(1))
    assert model.training and layer.mode == "simulate" and layer.trim_noise == 1.0
    assert "_run" not in layer.__dict__


def test_attention_parts_are_calibrated_apart():
    torch.manual_seed(4)
    macro = MacroConfig(weight_bits=4, input_bits=4, nrow=15, adc_bits=4)
    attn = ACiMMultiheadAttention(8, 2, batch_first=True, macro=macro)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x, x, x)[0]

    wrapped = Wrap()
    cal = calibrate_adc(wrapped, [torch.randn(2, 5, 8)], method="max")
    assert set(cal.layers) == {"attn", "attn.qk", "attn.av", "attn.out_proj"}
    cal.apply(wrapped)
    assert attn.qk_macro.adc_full_scale == cal.layers["attn.qk"].full_scale
    assert attn.av_macro.adc_full_scale == cal.layers["attn.av"].full_scale
    assert attn.macro.adc_full_scale == cal.layers["attn"].full_scale


def test_digits_cnn_calibrates_its_analog_layers():
    from asim.models import create_model

    torch.manual_seed(5)
    model = asim.convert_to_acim(
        create_model("digits_cnn", num_classes=10, in_channels=1),
        MacroConfig(adc_bits=6),
        first_layer="digital",
    )
    cal = calibrate_adc(model, [torch.rand(8, 1, 8, 8)], method="max")
    assert set(cal.layers) == {"conv2", "conv3", "fc"}  # the digital conv1 has no ADC
    assert all(lc.clip_rate == 0 and lc.full_scale < 255 for lc in cal.layers.values())
    cal.apply(model)
    assert model.conv1.macro.adc_full_scale is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_observes_the_same_counts_as_cpu():
    model = _model(MACRO)
    cpu = calibrate_adc(model, _batches(), method="lloyd_max")
    cuda = calibrate_adc(model.cuda(), [b.cuda() for b in _batches()], method="lloyd_max")
    assert cuda == cpu


IDEAL_MACRO = MacroConfig(weight_bits=5, input_bits=5, nrow=63, adc_bits=4)


def _simulated_and_ideal():
    """A model on ``IDEAL_MACRO`` in simulate mode, four batches and its inference outputs
    on them (the ideal macro's, against which calibration is judged)."""
    model, x = _model(IDEAL_MACRO), _batches(4)
    asim.set_mode(model, "inference")
    ideal = torch.cat([model(b) for b in x])
    asim.set_mode(model, "simulate")
    return model, x, ideal


@pytest.mark.parametrize("method", ["max", "mse", "lloyd_max"])
def test_calibrated_adc_is_closer_to_the_ideal_macro(method):
    model, x, ideal = _simulated_and_ideal()
    before = torch.cat([model(b) for b in x])
    calibrate_adc(model, x, method=method).apply(model)
    after = torch.cat([model(b) for b in x])
    assert (after - ideal).pow(2).mean() < 0.5 * (before - ideal).pow(2).mean()


# ------------------------------------------------------------------ per-ADC ranges (§4.8)


def _per_adc(trace: list[dict], wb: int, group: int, n_tiles: int, nrow: int, out_dim=-1):
    """``{levels: n[t, j, M]}`` of the oracle trace's analog column MACs, by ADC (outputs
    along ``out_dim`` of a MAC; tiles numbered in the trace's order)."""
    out: dict[int, torch.Tensor] = {}
    labels: list = []
    for t in trace:
        if t["tile"] not in labels:
            labels.append(t["tile"])
    for t in trace:
        if t["adc_code"] is None:
            continue
        levels = t["full_scale"] // nrow
        mac = t["mac"].movedim(out_dim, -1)
        mac = mac.reshape(-1, mac.shape[-1]).long()  # [rows, O]
        O = mac.shape[-1]
        n_adc = -(-(O * wb) // group)
        n = out.setdefault(levels, torch.zeros(n_tiles, n_adc, levels * nrow + 1, dtype=torch.long))
        for o in range(O):
            j = (o * wb + t["w_bit"]) // group
            n[labels.index(t["tile"]), j] += torch.bincount(mac[:, o], minlength=levels * nrow + 1)
    return out


@pytest.mark.parametrize("group", [1, 3])
def test_per_adc_counts_equal_oracle(group):
    """Each ADC's observed counts are the literal oracle's MACs of its columns."""
    torch.manual_seed(2)
    macro = MacroConfig(weight_bits=4, input_bits=5, nrow=7, adc_bits=3, input_enc_bits=2,
                        hybrid_levels=2, hybrid_exact=True)  # fmt: skip
    layer = ACiMLinear(
        20, 5, macro=macro, noise=asim.NoiseConfig(adc_group=group), signed_input=False
    )
    x = torch.rand(3, 20)
    hists, _ = observe_counts(layer, [x], columns=True)
    trace: list[dict] = []
    oracle.oracle_linear(
        x, layer.weight.detach(), signed_act=False, wbit=4, xbit=5, adc_prec=3, nrow=7,
        act_enc=2, hybrid_levels=2, hybrid_exact=True, trace=trace,
    )  # fmt: skip
    hist = hists[""]
    assert hist.group == group
    want = _per_adc(trace, 4, group, 3, 7)
    assert set(hist.columns) == set(want)
    for levels, n in want.items():
        assert torch.equal(hist.columns[levels], n), levels


def test_per_adc_counts_equal_oracle_conv():
    torch.manual_seed(2)
    macro = MacroConfig(weight_bits=3, input_bits=4, nrow=20, adc_bits=4)  # 2 channels a tile
    layer = ACiMConv2d(5, 4, 3, padding=1, stride=2, macro=macro,
                       noise=asim.NoiseConfig(adc_group=2))  # fmt: skip
    x = torch.rand(2, 5, 7, 7)
    hists, _ = observe_counts(nn.Sequential(layer), [(x, torch.zeros(2))], columns=True)
    trace: list[dict] = []
    oracle.oracle_conv2d(
        x, layer.weight.detach(), stride=2, padding=1, wbit=3, xbit=4, adc_prec=4, nrow=20,
        trace=trace,
    )  # fmt: skip
    want = _per_adc(trace, 3, 2, 3, 20, out_dim=1)
    assert hists["0"].columns[1].shape == (3, 6, 21)
    assert torch.equal(hists["0"].columns[1], want[1])


@pytest.mark.parametrize("method", ["max", "percentile", "mse"])
def test_per_adc_ranges_fit_the_counts_better(method):
    """At equal bits, one range per ADC has a lower ADC error on the observed counts than
    one per layer, and clips no more (max: nothing); each ADC's range is at most the
    layer's, which is the largest ADC's."""
    model = _model(MACRO)
    layer = calibrate_adc(model, _batches(), method=method)
    column = calibrate_adc(model, _batches(), method=method, granularity="column")
    assert any(column.layers[k].mse < layer.layers[k].mse for k in ("0", "3"))
    for key in ("0", "3"):
        a, b = layer.layers[key], column.layers[key]
        assert b.mse <= a.mse and b.clip_rate <= a.clip_rate
        assert b.count_histogram == a.count_histogram
        ranges = torch.tensor(b.column_full_scale)
        assert b.adc_group == 1 and int(ranges.max()) == b.full_scale
        assert a.column_full_scale is None
        if method == "max":
            assert b.clip_rate == 0 and b.full_scale == a.full_scale
            assert int(ranges.min()) < b.full_scale


def _fit_per_adc(hist: CountHistogram, macro: MacroConfig, method: str, percentile: float):
    """The per-ADC fit as one loop over the ADCs, :func:`_fit` on each one's own counts (the
    reference :func:`asim.calibrate._fit_columns` equals): ``(ranges, full_scale, mse,
    clip_rate, code_histogram, mse_full_scale)``."""
    v, _ = hist.points()
    search = max(macro.nrow, math.ceil(float(v[-1]) - 1e-9) if v.numel() else 1)
    T, n_adc = next(iter(hist.columns.values())).shape[:2]
    ranges = torch.zeros(T, n_adc, dtype=torch.int64)
    total = mse = clip = mse_fs = 0.0
    codes = torch.zeros(macro.adc_levels + 1, dtype=torch.float64)
    for t in range(T):
        for j in range(n_adc):
            counts = {lv: n[t, j] for lv, n in hist.columns.items()}
            one = CountHistogram(hist.nrow, hist.adc_bits, counts)
            n = one.total
            if n == 0:
                continue
            fs, _, _, e, c, cd, e_fs = calibration._fit(one, macro, method, percentile, search)
            ranges[t, j] = fs
            total += n
            mse, clip, mse_fs = mse + e * n, clip + c * n, mse_fs + e_fs * n
            codes += torch.tensor(cd, dtype=torch.float64)
    full_scale = max(1, int(ranges.max()))
    ranges[ranges == 0] = full_scale
    total = max(total, 1.0)
    return ranges, full_scale, mse / total, clip / total, [int(c) for c in codes], mse_fs / total


def _random_columns(seed: int, levels: tuple[int, ...], nrow: int, adc_bits: int):
    """Per-ADC count histograms of 3 tiles x 24 ADCs, per cycle width: ADCs that saw
    nothing, ADCs with a few counts (ties between full scales), dense small counts, counts
    over the whole range ``0 .. levels * nrow``, ADCs with millions of conversions, and two
    ADCs whose 50th percentile lies exactly at a count."""
    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 5, (3, 24, 1), generator=g)
    columns = {}
    for lv in levels:
        M = torch.arange(lv * nrow + 1)
        scale = torch.rand(3, 24, 1, generator=g) * lv * nrow + 0.5
        keep = torch.rand(3, 24, M.numel(), generator=g) < torch.exp(-M / scale)
        few = torch.rand(3, 24, M.numel(), generator=g) < 2 / M.numel()
        keep = torch.where(kind == 1, keep & few, keep) & (kind != 0)
        n = torch.randint(1, 300, (3, 24, M.numel()), generator=g) * keep
        columns[lv] = torch.where(kind == 4, n * 100_000, n)
    # two crafted ADCs, counts in the first cycle width only: half the conversions at each
    # of two counts, so the 50th percentile's target is met exactly (7 each) or, with
    # 2^25 + 3 each, lies just above the first half once rounded to float32 (as _fit's)
    for n in columns.values():
        n[0, :2] = 0
    lv = levels[0]
    columns[lv][0, 0, [1, 3 * lv]] = 7
    columns[lv][0, 1, [0, 2 * lv]] = 2**25 + 3
    counts = {lv: n.sum((0, 1)) for lv, n in columns.items()}
    return CountHistogram(nrow, adc_bits, counts, group=1, columns=columns)


@pytest.mark.parametrize("budget", [1 << 23, 40])  # one chunk of ADCs, or many
@pytest.mark.parametrize(
    "levels,nrow,adc_bits", [((1,), 15, 2), ((1, 3), 15, 3), ((3, 7), 7, 1), ((1, 15), 9, 4)]
)
def test_per_adc_fit_equals_the_fit_of_each_adc(levels, nrow, adc_bits, budget, monkeypatch):
    """The per-ADC fit (all ADCs at once, chunked) gives every ADC the full scale
    :func:`_fit` gives it on its own counts (the percentile's first count to reach the
    target, mse's first minimum over ``1 .. search``, a tie refitted), and the layer's
    summary of the ADC-by-ADC loop: code histogram exact, errors up to summation order."""
    monkeypatch.setattr(calibration, "_FIT_BUDGET", budget)
    macro = MacroConfig(nrow=nrow, adc_bits=adc_bits)
    for seed in range(3):
        hist = _random_columns(seed, levels, nrow, adc_bits)
        for method, percentile in [("max", 99.99), ("mse", 99.99)] + [
            ("percentile", p) for p in (50.0, 90.0, 99.99, 100.0)
        ]:
            got = calibration._fit_columns(hist, macro, method, percentile)
            want = _fit_per_adc(hist, macro, method, percentile)
            assert torch.equal(got[0], want[0]), (seed, method, percentile)
            assert got[1] == want[1] and got[4] == want[4]
            for a, b in zip(got[2:], want[2:], strict=True):
                assert a == pytest.approx(b, rel=1e-12, abs=0)
    empty = CountHistogram(
        nrow,
        adc_bits,
        group=1,
        columns={lv: torch.zeros(2, 5, lv * nrow + 1, dtype=torch.int64) for lv in levels},
    )
    got = calibration._fit_columns(empty, macro, "mse", 99.99)
    assert torch.equal(got[0], torch.ones(2, 5, dtype=torch.int64))
    assert got[1:] == (1, 0.0, 0.0, [0] * (2**adc_bits), 0.0)


@torch.no_grad()
def test_per_adc_calibration_runs_the_oracles_macro(tmp_path):
    """Applied, the layers run with their ADCs' own ranges (the literal oracle's §4.8
    model, bit for bit), which brings the model closer to the ideal macro than one range
    per layer; saved and loaded, the calibration gives the same bits."""
    model, x, ideal = _simulated_and_ideal()
    per_layer = calibrate_adc(model, x, method="max")
    column = calibrate_adc(model, x, method="max", granularity="column")
    per_layer.apply(model)
    y_layer = torch.cat([model(b) for b in x])
    column.apply(model)
    assert model[3].adc_ranges == column.layers["3"].ranges() is not None
    y_col = torch.cat([model(b) for b in x])
    assert (y_col - ideal).pow(2).mean() < 0.8 * (y_layer - ideal).pow(2).mean()

    fc = model[3]  # the linear layer's accumulator against the oracle, its ADCs' ranges
    feats = torch.relu(model[0](x[0])).flatten(1)
    x_int, _ = fc._quantize_input(feats, fc.macro, fc.signed_input)
    w_int, _ = fc._quantize_weight(fc.weight.detach())
    tiles = asim.engine.linear_tiles(fc.in_features, IDEAL_MACRO.nrow)
    ranges = column.layers["3"].column_full_scale
    zeros = torch.zeros(len(ranges), len(ranges[0]), dtype=torch.float64)
    want = oracle.oracle_mvm(
        x_int, w_int, signed_act=fc.signed_input, wbit=5, xbit=5, adc_prec=4, nrow=63,
        tiles=tiles, adc_full_scale=fc.macro.adc_full_scale,
        column_pattern=(zeros, zeros, 1, ranges),
    )  # fmt: skip
    program = fc._program(0, fc.in_features, fc.out_features)
    assert program.ranges == column.layers["3"].ranges()
    assert torch.equal(asim.acim_matmul(x_int, w_int.t(), program=program), want)

    path = column.save(tmp_path / "column.json")
    loaded = Calibration.load(path)
    assert loaded == column
    fresh = _model(IDEAL_MACRO)
    asim.set_mode(fresh, "simulate")
    loaded.apply(fresh)
    assert torch.equal(torch.cat([fresh(b) for b in x]), y_col)
    per_layer.apply(fresh)  # a per-layer calibration clears the ADCs' own ranges
    assert fresh[3].adc_ranges is None
    assert torch.equal(torch.cat([fresh(b) for b in x]), y_layer)


def test_version_1_files_still_load(tmp_path):
    cal = calibrate_adc(_model(MACRO), _batches(), method="max")
    doc = json.loads(cal.save(tmp_path / "v2.json").read_text())
    doc["version"] = 1
    for entry in doc["layers"].values():
        del entry["column_full_scale"], entry["adc_group"]
    (tmp_path / "v1.json").write_text(json.dumps(doc))
    assert Calibration.load(tmp_path / "v1.json") == cal


def test_per_adc_calibration_refuses_another_adc_group():
    model = _model(MACRO)
    column = calibrate_adc(model, _batches(), method="max", granularity="column")
    for _, layer in asim.acim_modules(model):
        layer.noise = asim.NoiseConfig(adc_group=2)
    with pytest.raises(ValueError, match="noise.adc_group=2, the calibration's ADCs group 1"):
        column.apply(model)


@pytest.mark.parametrize("method", ["max", "mse"])
def test_column_steps_round_each_adc_up_to_a_trim_setting(method, tmp_path):
    """``column_steps=S``: every ADC's full scale is the smallest of ``ceil(k N / S)`` at or
    above its own fit (so it clips no more), at most S distinct per layer, the largest kept;
    S = N settings change nothing; the steps survive a save and load."""
    model = _model(MACRO)
    free = calibrate_adc(model, _batches(), method=method, granularity="column")
    for key, lc in free.layers.items():
        top, fitted = lc.full_scale, torch.tensor(lc.column_full_scale)
        same = calibrate_adc(
            model, _batches(), method=method, granularity="column", column_steps=top
        )
        assert same.layers[key].column_full_scale == lc.column_full_scale
        for steps in (1, 2, 3):
            cal = calibrate_adc(
                model, _batches(), method=method, granularity="column", column_steps=steps
            )
            snapped = cal.layers[key]
            ranges = torch.tensor(snapped.column_full_scale)
            grid = sorted({-(-k * top // steps) for k in range(1, steps + 1)})
            assert len(set(ranges.flatten().tolist())) <= steps
            want = [[min(g for g in grid if g >= n) for n in row] for row in fitted.tolist()]
            assert snapped.column_full_scale == want
            assert snapped.full_scale == top and snapped.clip_rate <= lc.clip_rate
            assert snapped.code_histogram != lc.code_histogram or torch.equal(ranges, fitted)
    cal.save(tmp_path / "c.json")
    assert asim.Calibration.load(tmp_path / "c.json").column_steps == 3
