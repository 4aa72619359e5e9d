"""Real ADCs and chips (spec §4.5-§4.7): the ADC's full scale and clipping, non-uniform
levels, and a chip's fixed per-ADC pattern, against the oracle and across backends."""

from __future__ import annotations

import random

import pytest
import torch

from asim import ACiMLinear, MacroConfig, NoiseConfig, acim_matmul, resample_noise
from asim.adc_levels import read_adc_levels, uniform_levels, write_adc_levels
from asim.engine import NoiseStream, compile_program, linear_tiles
from asim.engine.plan import build_plan
from asim.noise import GaussianNoise, code_table

from .. import oracle
from ..golden import bits
from .helpers import _ints, _oracle_kwargs, _random_macro, _torch_only


def _levels(rng: random.Random, adc_bits: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Random non-uniform levels: sorted thresholds in (0, 1), values near them."""
    a = (1 << adc_bits) - 1
    t = sorted({round(rng.uniform(0.001, 0.999), rng.choice([3, 6, 12])) for _ in range(4 * a)})
    t = tuple(sorted(rng.sample(t, a)))
    edges = (0.0, *t, 1.0)
    v = tuple((edges[k] + edges[k + 1]) / 2 for k in range(a + 1))
    return t, v


def _call(x, w, macro, signed, noise=None, stream=None, tiles=None):
    return acim_matmul(
        x, w, macro=macro, signed_input=signed, noise=noise, stream=stream, tiles=tiles,
        exact_shortcut=False,
    )  # fmt: skip


# ------------------------------------------------------------------ §4.5 full scale


@pytest.mark.parametrize("seed", range(40))
def test_full_scale_and_levels_equal_the_oracle(seed):
    """Noise-free: a smaller (clipping) or larger ADC full scale, and non-uniform levels,
    convert as the spec says, on every backend of the machine, bit for bit."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    macro = _random_macro(rng, signed)
    fs = rng.choice([None, 1, max(1, macro.nrow // 2), macro.nrow, macro.nrow + 3])
    levels = _levels(rng, macro.adc_bits) if rng.random() < 0.5 else (None, None)
    macro = macro.replace(adc_full_scale=fs, adc_thresholds=levels[0], adc_values=levels[1])
    M, R, O = rng.randint(1, 6), rng.randint(1, 40), rng.randint(1, 5)
    x = _ints(g, (M, R), macro.input_bits, signed)
    w = _ints(g, (O, R), macro.weight_bits, True)
    tiles = linear_tiles(R, macro.nrow)
    got = _call(x, w.t(), macro, signed)
    want = oracle.oracle_mvm(
        x, w, signed_act=signed, tiles=tiles, adc_full_scale=fs, adc_thresholds=levels[0],
        adc_values=levels[1], **_oracle_kwargs(macro),
    )  # fmt: skip
    assert bits(got) == bits(want), macro


def test_full_scale_none_is_nrow_and_clips_above():
    """``adc_full_scale=None`` is ``nrow`` bit for bit; counts above a smaller full scale
    all read the top code's value."""
    base = MacroConfig(weight_bits=2, input_bits=2, nrow=16, adc_bits=3)
    g = torch.Generator().manual_seed(1)
    x, w = _ints(g, (9, 40), 2, False), _ints(g, (40, 3), 2, True)
    for noise in (None, NoiseConfig(rand_sigma=3.0)):
        stream = NoiseStream(5, torch.arange(1), 9)
        a = _call(x, w, base, False, noise, stream)
        b = _call(x, w, base.replace(adc_full_scale=16), False, noise, stream)
        assert bits(a) == bits(b)
    plan = build_plan(base.replace(adc_full_scale=4), None, False)
    values = plan.value_by_count(0, 16)
    assert values[4:].eq(4.0).all() and values[:4].lt(4.0).all()


def test_full_scale_noise_is_the_arrays():
    """With a full scale of nrow/4 the same analog noise is 4x larger in the ADC's units:
    the noisy code table equals the one of a 4x larger sigma at full scale nrow."""
    small = code_table(GaussianNoise(2.0), 64, 15, 1, 256, adc_rows=64)
    big = code_table(GaussianNoise(8.0), 64, 15, 1, 64)
    assert torch.allclose(small.probabilities()[:65], big.probabilities(), atol=1e-9)
    assert torch.equal(small.probabilities()[65:], small.probabilities()[64:65].expand(192, -1))


# ------------------------------------------------------------------ §4.6 non-uniform levels


@pytest.mark.parametrize("adc_bits", range(1, 9))
def test_uniform_levels_as_a_table_are_the_plain_adc(adc_bits):
    """Every count of every cycle kind, noise off: the same values; noise on: the same
    code tables (so the same bits for the same seed)."""
    t, v = uniform_levels(adc_bits)
    for nrow, enc in ((255, None), (37, 2), (16, 3)):
        plain = MacroConfig(weight_bits=4, input_bits=4, nrow=nrow, adc_bits=adc_bits,
                            input_enc_bits=enc)  # fmt: skip
        for fs in (None, max(1, nrow // 3)):
            a = build_plan(plain.replace(adc_full_scale=fs), None, False)
            b = build_plan(plain.replace(adc_full_scale=fs, adc_thresholds=t, adc_values=v),
                           None, False)  # fmt: skip
            for c in range(a.ncyc):
                top = a.array_scale[c]
                assert bits(a.value_by_count(c, top)) == bits(b.value_by_count(c, top))
                assert bits(a.value_by_code(c)) == bits(b.value_by_code(c))
        for sigma in (0.3, 2.0):
            noise = NoiseConfig(rand_sigma=sigma, nonlinear_sigma=1.0)
            a = build_plan(plain, noise, True)
            b = build_plan(plain.replace(adc_thresholds=t, adc_values=v), noise, True)
            for c in range(a.ncyc):
                ta, tb = a.code_table(c), b.code_table(c)
                assert torch.equal(ta.thr, tb.thr) and torch.equal(ta.k_lo, tb.k_lo)
                assert torch.equal(ta.start, tb.start)


def test_uniform_table_noisy_calls_equal_the_plain_adc():
    t, v = uniform_levels(4)
    plain = MacroConfig(weight_bits=3, input_bits=3, nrow=20, adc_bits=4, vote_levels=1,
                        vote_samples=3)  # fmt: skip
    g = torch.Generator().manual_seed(3)
    x, w = _ints(g, (2, 7, 30), 3, True), _ints(g, (30, 4), 3, True)
    noise = NoiseConfig(rand_sigma=4.0)
    stream = NoiseStream(77, torch.arange(2), 7)
    a = _call(x, w, plain, True, noise, stream)
    b = _call(x, w, plain.replace(adc_thresholds=t, adc_values=v), True, noise, stream)
    assert bits(a) == bits(b)


def test_table_code_distribution_follows_the_thresholds():
    """P(code = k | count) is the Gaussian mass between the table's thresholds."""
    t, v = _levels(random.Random(4), 3)
    macro = MacroConfig(weight_bits=2, input_bits=2, nrow=40, adc_bits=3, adc_thresholds=t,
                        adc_values=v)  # fmt: skip
    sigma = 0.05
    plan = build_plan(macro, NoiseConfig(rand_sigma=100 * sigma), False)
    p = plan.code_table(0).probabilities()
    edges = torch.tensor([-torch.inf, *t, torch.inf], dtype=torch.float64)
    for m in (0, 7, 20, 33, 40):
        a = float(torch.tensor(m / 40, dtype=torch.float32))
        # clamp(a + sigma Z, 0, 1): the mass below 0 is code 0's, above 1 the top code's
        cdf = torch.special.ndtr((edges - a) / sigma)
        want = cdf[1:] - cdf[:-1]
        assert torch.allclose(p[m], want, atol=1e-8), m


def test_levels_csv_round_trip_and_config(tmp_path):
    t, v = _levels(random.Random(5), 2)
    path = write_adc_levels(tmp_path / "adc.csv", t, v)
    assert read_adc_levels(path) == (t, v)
    macro = MacroConfig(adc_bits=2, adc_levels_csv=str(path))
    assert (macro.adc_thresholds, macro.adc_values) == (t, v)
    assert macro.replace(nrow=31).adc_thresholds == t  # re-validated, same file
    with pytest.raises(ValueError, match="needs 7 thresholds and 8 values, got 3 and 4"):
        MacroConfig(adc_bits=3, adc_levels_csv=str(path))


@pytest.mark.parametrize(
    "text, message",
    [
        ("code,threshold,value\n0,,0\n1,0.5,1\n2,0.7,1\n", "has 2\\^b codes"),
        ("code,threshold,value\n0,,0\n2,0.5,1\n", "code 2 where 1 was expected"),
        ("code,threshold,value\n0,,0\n1,x,1\n", "threshold='x' is not a number"),
        ("code,value\n0,0\n1,1\n", "lacks threshold"),
        ("code,threshold,value\n0,,0\n1,0.6,1\n2,0.5,1\n3,0.9,1\n", "strictly ascending"),
        ("code,threshold,value\n0,0.1,0\n1,0.5,1\n", "code 0 has no threshold"),
        ("code,threshold,value\n0,,0\n1,1.5,1\n", "strictly inside"),
    ],
)
def test_malformed_levels_csv_fail_in_one_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        read_adc_levels(path)
    assert "\n" not in str(err.value)


def test_levels_need_both_fields():
    with pytest.raises(ValueError, match="need both adc_thresholds and adc_values"):
        MacroConfig(adc_bits=1, adc_thresholds=(0.5,))
    with pytest.raises(ValueError, match="positive integer column count"):
        MacroConfig(adc_full_scale=0)


# ------------------------------------------------------------------ §4.7 fixed pattern


def _pattern_noise(rng: random.Random, **more) -> NoiseConfig:
    return NoiseConfig(
        column_offset_lsb=rng.choice([0.0, 0.3, 1.5]),
        column_gain_pct=rng.choice([0.0, 0.5, 3.0]) or 0.5,
        adc_group=rng.choice([1, 2, 3]),
        column_trim_lsb=rng.choice([None, 0.25, 1.0]),
        chip_seed=rng.randint(0, 99),
        **more,
    )


@pytest.mark.parametrize("seed", range(30))
def test_pattern_equals_the_oracle(seed):
    """Noise-free: each column's ADC converts its count through its own offset and gain."""
    rng, g = random.Random(300 + seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    macro = _random_macro(rng, signed)
    if rng.random() < 0.3:
        t, v = _levels(rng, macro.adc_bits)
        macro = macro.replace(adc_thresholds=t, adc_values=v)
    if rng.random() < 0.3:
        macro = macro.replace(adc_full_scale=max(1, macro.nrow - 2))
    noise = _pattern_noise(rng)
    M, R, O = rng.randint(1, 6), rng.randint(1, 40), rng.randint(1, 7)
    x = _ints(g, (M, R), macro.input_bits, signed)
    w = _ints(g, (O, R), macro.weight_bits, True)
    tiles = linear_tiles(R, macro.nrow)
    program = compile_program(macro, noise, signed, tiles, O, chip=rng.getrandbits(64))
    got = acim_matmul(x, w.t(), program=program)
    pat = program.pattern
    want = oracle.oracle_mvm(
        x, w, signed_act=signed, tiles=tiles, adc_full_scale=macro.adc_full_scale,
        adc_thresholds=macro.adc_thresholds, adc_values=macro.adc_values,
        column_pattern=(pat.offset, pat.gain, noise.adc_group), **_oracle_kwargs(macro),
    )  # fmt: skip
    assert bits(got) == bits(want), (macro, noise)


def test_pattern_is_drawn_from_the_chip_stream():
    """A pure function of (chip, tile, ADC): the same for equal keys, another chip for
    another key, the trim leaves residuals within half a step, groups share their ADC."""
    macro = MacroConfig(weight_bits=3, input_bits=3, nrow=10, adc_bits=4)
    noise = NoiseConfig(column_offset_lsb=2.0, column_gain_pct=1.0, column_sigma_spread=0.3,
                        adc_group=2, column_trim_lsb=0.5, rand_sigma=1.0)  # fmt: skip
    tiles = linear_tiles(25, 10)
    a = compile_program(macro, noise, False, tiles, 7, chip=11).pattern
    b = compile_program(macro, noise, False, tiles, 7, chip=11).pattern
    c = compile_program(macro, noise, False, tiles, 7, chip=12).pattern
    assert torch.equal(a.G, b.G) and torch.equal(a.D, b.D) and torch.equal(a.cls, b.cls)
    assert not torch.equal(a.D, c.D)
    assert a.offset.abs().max() <= 0.25 and a.offset.std() > 0.05
    assert a.adc.tolist()[0][:3] == [0, 1, 3] and a.G[0, 0, 0] == a.G[0, 1, 0]  # o*w + i
    assert 1.0 in a.scales and len(a.scales) > 2 and all(s * 8 == int(s * 8) for s in a.scales)


def test_measured_offsets_match_the_drawn_ones(monkeypatch):
    """One analog conversion per output (the others digital and exact): the mean error of
    its value over many rows, dithered by 1 LSB of temporal noise, is its ADC's offset."""
    _torch_only(monkeypatch)
    macro = MacroConfig(weight_bits=2, input_bits=2, nrow=255, adc_bits=8, hybrid_levels=2,
                        hybrid_exact=True)  # fmt: skip
    noise = NoiseConfig(rand_sigma=100 / 255, column_offset_lsb=1.0, chip_seed=3)
    g = torch.Generator().manual_seed(0)
    O, M = 12, 6000
    x = torch.randint(0, 4, (M, 255), generator=g).float()
    w = torch.ones(255, O)
    program = compile_program(macro, noise, False, [(0, 255)], O)
    y = acim_matmul(x, w, program=program, stream=NoiseStream(9, torch.arange(M), 1))
    exact = x @ w  # every cycle but (i=0, j=0) is exact; that one's count is m00
    m00 = (x.long() & 1).float() @ w
    error = (y - (exact - m00) - m00).mean(0)  # value - count of the analog conversion
    drawn = program.pattern.offset[0, program.pattern.adc[0]]  # weight bit 0 of each output
    assert drawn.std() > 0.5
    assert torch.allclose(error.double(), drawn, atol=0.08), (error, drawn)


def test_same_chip_on_any_batch_chunk_and_thread_count(monkeypatch):
    from asim.engine import backend as backend_mod

    macro = MacroConfig(weight_bits=3, input_bits=4, nrow=9, adc_bits=3, vote_levels=1,
                        vote_samples=3)  # fmt: skip
    noise = NoiseConfig(rand_sigma=3.0, column_offset_lsb=0.7, column_gain_pct=2.0,
                        column_sigma_spread=0.4, chip_seed=5)  # fmt: skip
    g = torch.Generator().manual_seed(2)
    x, w = _ints(g, (6, 5, 20), 4, False), _ints(g, (20, 7), 3, True)
    tiles = linear_tiles(20, 9)
    program = compile_program(macro, noise, False, tiles, 7)
    stream = NoiseStream(21, torch.arange(6), 5)
    whole = acim_matmul(x, w, program=program, stream=stream)
    halves = torch.cat(
        [
            acim_matmul(x[:2], w, program=program, stream=NoiseStream(21, torch.arange(2), 5)),
            acim_matmul(x[2:], w, program=program, stream=NoiseStream(21, torch.arange(2, 6), 5)),
        ]
    )
    assert bits(whole) == bits(halves)
    monkeypatch.setattr(backend_mod, "CHUNK_ELEMENTS", 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = acim_matmul(x, w, program=compile_program(macro, noise, False, tiles, 7),
                            stream=stream)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert bits(whole) == bits(again)
    other = compile_program(macro, noise.replace(chip_seed=6), False, tiles, 7)
    assert bits(acim_matmul(x, w, program=other, stream=stream)) != bits(whole)


def test_layers_keep_their_chip():
    """chip_seed fixes the pattern whatever the run's seed; without it the run's seed is
    the chip; every call of a layer sees the same chip."""
    torch.manual_seed(0)
    macro = MacroConfig(weight_bits=4, input_bits=4, nrow=16, adc_bits=4)
    noise = NoiseConfig(column_offset_lsb=1.0, column_gain_pct=2.0)
    x = torch.rand(3, 40)

    def run(noise, seed):
        layer = ACiMLinear(40, 5, macro=macro, noise=noise, mode="simulate")
        torch.manual_seed(0)
        layer.reset_parameters()
        resample_noise(layer, seed)
        with torch.no_grad():
            return layer(x), layer(x)

    a1, a2 = run(noise, 1)
    assert bits(a1) == bits(a2)  # noise-free: the chip does not change between calls
    assert bits(run(noise, 1)[0]) == bits(a1)
    assert bits(run(noise, 2)[0]) != bits(a1)
    chip = noise.replace(chip_seed=7)
    assert bits(run(chip, 1)[0]) == bits(run(chip, 2)[0])
    assert bits(run(chip, 1)[0]) != bits(run(noise.replace(chip_seed=8), 1)[0])


def test_pattern_refusals_are_one_line():
    with pytest.raises(ValueError, match="set compression_alpha=0 and cell_sigma=0"):
        NoiseConfig(column_offset_lsb=1.0, cell_sigma=1.0)
    with pytest.raises(ValueError, match="positive integer"):
        NoiseConfig(adc_group=0)
    with pytest.raises(ValueError, match="a step > 0"):
        NoiseConfig(column_trim_lsb=0)


def test_a_fresh_process_draws_the_same_chip():
    """Another process (a DDP rank, a later run) draws the same pattern for the same chip."""
    import subprocess
    import sys

    code = (
        "import torch; from asim import MacroConfig, NoiseConfig;"
        "from asim.engine import compile_program;"
        "n = NoiseConfig(column_offset_lsb=1.0, column_gain_pct=2.0, column_sigma_spread=0.3,"
        " rand_sigma=1.0, chip_seed=4);"
        "p = compile_program(MacroConfig(nrow=16, adc_bits=4), n, False, [(0, 16)], 9).pattern;"
        "print(p.G.sum().item(), p.D.sum().item(), (p.cls * 7).sum().item())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    noise = NoiseConfig(column_offset_lsb=1.0, column_gain_pct=2.0, column_sigma_spread=0.3,
                        rand_sigma=1.0, chip_seed=4)  # fmt: skip
    p = compile_program(MacroConfig(nrow=16, adc_bits=4), noise, False, [(0, 16)], 9).pattern
    here = f"{p.G.sum().item()} {p.D.sum().item()} {(p.cls * 7).sum().item()}"
    assert out.stdout.split() == here.split()


def test_per_layer_full_scale_and_levels_through_layer_macros():
    """``layer_macros`` sets the ADC range and levels of the layers it matches (YAML lists
    become the macro's tuples, so the layer's program cache keys on them)."""
    from torch import nn

    from asim import convert_to_acim

    net = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 4))
    t, v = uniform_levels(3)
    acim = convert_to_acim(
        net,
        MacroConfig(adc_bits=3),
        layer_macros=[
            {"match": "2", "adc_full_scale": 12, "adc_thresholds": list(t), "adc_values": list(v)}
        ],  # fmt: skip
        first_layer=None,
    )
    assert acim[0].macro.adc_full_scale is None and acim[0].macro.adc_thresholds is None
    assert acim[2].macro.adc_full_scale == 12 and acim[2].macro.adc_thresholds == t
    hash(acim[2].macro)
    plain = acim[2].macro.replace(adc_thresholds=None, adc_values=None)
    x = torch.rand(5, 20)
    acim[2].mode = "simulate"
    with torch.no_grad():
        y = acim[2](x)
        acim[2].macro = plain
        assert bits(acim[2](x)) == bits(y)  # uniform levels: the plain ADC's bits


@pytest.mark.parametrize("seed", range(16))
def test_native_equals_torch_with_noise(seed, monkeypatch, tmp_path):
    """Same seed, same bits on the C kernel and the torch backend: ADC full scale,
    non-uniform levels and a chip's pattern with temporal noise (Gaussian, count-dependent,
    measured table; voted and hybrid cycles; several tiles and ADC groups)."""
    from .helpers import _measured_csv, _native_or_skip

    _native_or_skip()
    rng, g = random.Random(900 + seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    macro = _random_macro(rng, signed, allow_enc=rng.random() < 0.5)
    if rng.random() < 0.3 and macro.input_enc_bits is None and not macro.hybrid_levels:
        macro = macro.replace(vote_levels=2, vote_samples=3)
    if rng.random() < 0.5:
        t, v = _levels(rng, macro.adc_bits)
        macro = macro.replace(adc_thresholds=t, adc_values=v)
    macro = macro.replace(adc_full_scale=rng.choice([None, max(1, macro.nrow - 3)]))
    kind = rng.choice(["gaussian", "nonlinear", "measured"])
    base = dict(
        gaussian=dict(rand_sigma=rng.choice([1.0, 5.0])),
        nonlinear=dict(rand_sigma=1.0, nonlinear_sigma=4.0),
        measured=dict(file=_measured_csv(tmp_path / "measured.csv")),
    )[kind]
    pattern = rng.random() < 0.7
    noise = NoiseConfig(
        **base,
        column_offset_lsb=0.6 if pattern else 0.0,
        column_gain_pct=rng.choice([0.0, 2.0]) if pattern else 0.0,
        column_sigma_spread=rng.choice([0.0, 0.3]) if pattern and kind != "measured" else 0.0,
        adc_group=rng.choice([1, 3]),
        chip_seed=seed,
    )
    B, M, R, O = rng.choice([1, 2]), rng.randint(1, 40), rng.randint(1, 40), rng.randint(1, 9)
    x = _ints(g, (B, M, R), macro.input_bits, signed)
    w = _ints(g, (R, O), macro.weight_bits, True)
    stream = NoiseStream(rng.getrandbits(64), torch.arange(B) * 7 + 2, M)
    out = []
    for name in ("native", "torch"):
        monkeypatch.setenv("ASIM_BACKEND", name)
        out.append(_call(x, w, macro, signed, noise, stream))
    assert bits(out[0]) == bits(out[1]), (macro, noise)


@pytest.mark.parametrize("seed", range(4))
def test_native_fine_index_in_64_bit_lanes(seed, monkeypatch):
    """The C kernel computes a column's fine index m*G + D (spec §4.7) in 32-bit lanes when
    every reachable count fits, else in 64-bit ones: the 64-bit path, forced, gives the torch
    backend's bits too (noise-free and noisy)."""
    from asim.engine import native

    from .helpers import _native_or_skip

    _native_or_skip()
    asked = []

    def wide(*args):
        asked.append(args)
        return False

    monkeypatch.setattr(native, "_fits_int32", wide)
    rng, g = random.Random(1700 + seed), torch.Generator().manual_seed(seed)
    macro = _random_macro(rng, False, allow_enc=True)
    noise = NoiseConfig(
        rand_sigma=1.0 if seed % 2 else 0.0,
        column_offset_lsb=0.6,
        column_gain_pct=2.0,
        chip_seed=4000 + seed,  # a chip no other test compiled: a fresh program
    )
    x = _ints(g, (2, 17, 40), macro.input_bits, False)
    w = _ints(g, (40, 5), macro.weight_bits, True)
    stream = NoiseStream(rng.getrandbits(64), torch.arange(2) * 7 + 2, 17)
    out = []
    for name in ("native", "torch"):
        monkeypatch.setenv("ASIM_BACKEND", name)
        out.append(_call(x, w, macro, False, noise, stream))
    assert asked  # the native backend built its arguments with the 64-bit lanes
    assert bits(out[0]) == bits(out[1]), (macro, noise)
