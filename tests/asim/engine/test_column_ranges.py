"""Per-ADC full scales (spec §4.8): each ADC converts with its own calibrated range, against
the oracle (noise off) and across backends (noise on)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from asim import ColumnRanges, MacroConfig, NoiseConfig, acim_matmul
from asim.engine import NoiseStream, backends_used, compile_program, linear_tiles
from asim.engine import core as engine_core

from .. import oracle
from ..golden import bits
from .helpers import _ints, _native_or_skip, _oracle_kwargs, _random_macro
from .test_adc_range import _levels

ROOT = Path(__file__).resolve().parents[3]


def _ranges(rng: random.Random, macro: MacroConfig, tiles, outputs: int, group: int):
    n_adc = -(-(outputs * macro.weight_bits) // group)
    top = macro.adc_rows
    return ColumnRanges.of(
        [[rng.choice([top, rng.randint(1, top)]) for _ in range(n_adc)] for _ in tiles], group
    )


def _backends() -> list[str]:
    from asim._native import engine_lib

    return ["torch"] + (["native"] if engine_lib() is not None else [])


@pytest.mark.parametrize("seed", range(30))
def test_column_ranges_equal_the_oracle(seed, monkeypatch):
    """Noise off: every ADC's count converts on the layer's fine grid with its gain scaled by
    N / N_j and its code valued at its own full scale, on the C kernel and the torch backend,
    with and without a drawn pattern, non-uniform levels and a layer full scale."""
    rng, g = random.Random(1600 + seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    macro = _random_macro(rng, signed)
    if rng.random() < 0.3:
        t, v = _levels(rng, macro.adc_bits)
        macro = macro.replace(adc_thresholds=t, adc_values=v)
    if rng.random() < 0.3:
        macro = macro.replace(adc_full_scale=macro.nrow + rng.choice([-1, 2]) or 1)
    drawn = rng.random() < 0.5
    group = rng.choice([1, 2, 3])
    noise = NoiseConfig(
        column_offset_lsb=0.6 if drawn else 0.0,
        column_gain_pct=2.0 if drawn else 0.0,
        column_trim_lsb=rng.choice([None, 0.5]),
        adc_group=group,
    )
    M, R, O = rng.randint(1, 6), rng.randint(1, 40), rng.randint(1, 7)
    x = _ints(g, (M, R), macro.input_bits, signed)
    w = _ints(g, (O, R), macro.weight_bits, True)
    tiles = linear_tiles(R, macro.nrow)
    ranges = _ranges(rng, macro, tiles, O, group)
    program = compile_program(macro, noise, signed, tiles, O, rng.getrandbits(64), ranges)
    pat = program.pattern
    want = oracle.oracle_mvm(
        x, w, signed_act=signed, tiles=tiles, adc_full_scale=macro.adc_full_scale,
        adc_thresholds=macro.adc_thresholds, adc_values=macro.adc_values,
        column_pattern=None if pat is None else (pat.offset, pat.gain, group, ranges.full_scale),
        **_oracle_kwargs(macro),
    )  # fmt: skip
    for name in _backends():
        monkeypatch.setenv("ASIM_BACKEND", name)
        engine_core.reset_backends_used()
        got = acim_matmul(x, w.t(), program=program, exact_shortcut=False)
        assert bits(got) == bits(want), (name, macro, noise, ranges)
        assert backends_used() == {name}


def test_a_narrow_adc_clips_and_rescales_at_its_own_range():
    """The worked example of spec §4.8: one ADC of full scale 6 in a layer of 16 converts
    counts 3 and 12 as a 6-count ADC would (4.0 and the clipped 6.0); without its range
    the layer's ADC gives 5.33 and 10.67."""
    macro = MacroConfig(weight_bits=2, input_bits=2, nrow=16, adc_bits=2)
    x = torch.tensor([[1.0] * 3 + [0.0] * 13, [1.0] * 12 + [0.0] * 4])
    w = torch.ones(16, 1)
    ranges = ColumnRanges.of([[6, 16]])  # ADC 0: weight bit 0 of output 0; ADC 1: bit 1
    program = compile_program(macro, None, False, [(0, 16)], 1, ranges=ranges)
    assert program.pattern.classes == (6, 16)
    y = acim_matmul(x, w, program=program)
    assert y.flatten().tolist() == [4.0, 6.0]
    plain = acim_matmul(x, w, macro=macro, signed_input=False, exact_shortcut=False)
    assert plain.flatten().tolist() == pytest.approx([16 / 3, 32 / 3])


def test_layer_wide_ranges_are_no_ranges():
    """Ranges equal to the layer's full scale everywhere compile to the plain program."""
    macro = MacroConfig(weight_bits=3, input_bits=3, nrow=8, adc_bits=3, adc_full_scale=6)
    tiles = linear_tiles(20, 8)
    ranges = ColumnRanges.of([[6] * 15] * 3)
    program = compile_program(macro, None, True, tiles, 5, ranges=ranges)
    assert program.ranges is None and program.pattern is None
    assert program is compile_program(macro, None, True, tiles, 5)
    other = compile_program(macro, None, True, tiles, 5, ranges=ColumnRanges.of([[5] * 15] * 3))
    assert other.ranges is not None and other is not program


@pytest.mark.parametrize("seed", range(10))
def test_native_equals_torch_with_noise(seed, monkeypatch):
    """Noise on: same seed, same bits on the C kernel and the torch backend (Gaussian and
    count-dependent noise, voted and hybrid cycles, a drawn pattern or none)."""
    _native_or_skip()
    rng, g = random.Random(1700 + seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    macro = _random_macro(rng, signed, allow_enc=rng.random() < 0.5)
    if rng.random() < 0.3 and macro.input_enc_bits is None and not macro.hybrid_levels:
        macro = macro.replace(vote_levels=2, vote_samples=3)
    drawn = rng.random() < 0.5
    group = rng.choice([1, 3])
    noise = NoiseConfig(
        rand_sigma=rng.choice([1.0, 5.0]),
        nonlinear_sigma=rng.choice([0.0, 4.0]),
        column_offset_lsb=0.6 if drawn else 0.0,
        column_sigma_spread=0.3 if drawn else 0.0,
        adc_group=group,
        chip_seed=seed,
    )
    B, M, R, O = rng.choice([1, 2]), rng.randint(1, 40), rng.randint(1, 40), rng.randint(1, 9)
    x = _ints(g, (B, M, R), macro.input_bits, signed)
    w = _ints(g, (R, O), macro.weight_bits, True)
    tiles = linear_tiles(R, macro.nrow)
    program = compile_program(
        macro, noise, signed, tiles, O, ranges=_ranges(rng, macro, tiles, O, group)
    )
    stream = NoiseStream(rng.getrandbits(64), torch.arange(B) * 7 + 2, M)
    out = []
    for name in ("native", "torch"):
        monkeypatch.setenv("ASIM_BACKEND", name)
        out.append(acim_matmul(x, w, program=program, stream=stream))
    assert bits(out[0]) == bits(out[1]), (macro, noise)


def test_refusals_are_one_line():
    macro = MacroConfig(weight_bits=2, input_bits=2, nrow=8, adc_bits=3)
    tiles = [(0, 8)]
    with pytest.raises(ValueError, match=r"^ColumnRanges: 1 tiles x \[3\] ADCs do not fit"):
        compile_program(macro, None, False, tiles, 2, ranges=ColumnRanges.of([[4, 4, 4]]))
    with pytest.raises(ValueError, match="set macro.adc_full_scale >= 9"):
        compile_program(macro, None, False, tiles, 1, ranges=ColumnRanges.of([[9, 4]]))
    noise = NoiseConfig(column_offset_lsb=1.0, adc_group=2)
    with pytest.raises(ValueError, match="calibrated for adc_group=1, the noise has adc_group=2"):
        compile_program(macro, noise, False, tiles, 1, ranges=ColumnRanges.of([[3, 4]]))
    with pytest.raises(ValueError, match="column counts >= 1"):
        ColumnRanges.of([[0, 4]])
    with pytest.raises(ValueError, match="drop them for macro.weight_parallel, compression"):
        compile_program(
            macro, NoiseConfig(cell_sigma=1.0), False, tiles, 1, ranges=ColumnRanges.of([[3, 4]])
        )


def test_programs_and_layers_keep_their_ranges():
    """A program with ranges pickles to the same program; a layer's ranges are part of its
    program key (set, changed or cleared, the next call compiles with them)."""
    import pickle

    from asim import ACiMLinear

    macro = MacroConfig(weight_bits=3, input_bits=4, nrow=8, adc_bits=3)
    ranges = ColumnRanges.of([[3, 5, 8, 2, 7, 6], [8, 8, 1, 4, 5, 6]])
    program = compile_program(macro, None, False, linear_tiles(12, 8), 2, ranges=ranges)
    assert pickle.loads(pickle.dumps(program)) is program
    layer = ACiMLinear(12, 2, macro=macro, signed_input=False, mode="simulate")
    x = torch.rand(5, 12)
    with torch.no_grad():
        plain = layer(x)
        layer.adc_ranges = ranges
        narrow = layer(x)
        assert layer._program(0, 12, 2) is program and bits(narrow) != bits(plain)
        layer.adc_ranges = None
        assert bits(layer(x)) == bits(plain)


@pytest.mark.parametrize(
    "noise",
    [
        NoiseConfig(rand_sigma=3.0, nonlinear_sigma=4.0),
        NoiseConfig(rand_sigma_lsb=0.4, nonlinear_sigma_lsb=0.3),
        NoiseConfig(file=str(ROOT / "conf/noise/measured_example.csv")),
        NoiseConfig(histogram=str(ROOT / "conf/noise/histogram_example.csv")),
    ],
    ids=["gaussian", "lsb", "table", "histogram"],
)
@pytest.mark.parametrize("input_enc_bits", [None, 2])
def test_a_narrow_adc_keeps_the_analog_noise(noise, input_enc_bits):
    """Noise with per-ADC full scales keeps its analog size (§4.8, as §4.5): an ADC trimmed
    to N_j = N / 2 draws its codes, at the fine index of count M, from exactly the distribution
    of a layer whose whole ADC is trimmed to N / 2 (adc_full_scale), count M: twice the layer's
    noise in its own units, the count-dependent term at its own count."""
    from asim.engine.plan import build_plan

    macro = MacroConfig(
        weight_bits=2, input_bits=4, input_enc_bits=input_enc_bits, nrow=16, adc_bits=3
    )
    plan = build_plan(macro, noise, False)
    trimmed = build_plan(macro.replace(adc_full_scale=8), noise, False)
    ranges = ColumnRanges.of([[8, 16, 8, 16]])
    program = compile_program(macro, noise, False, [(0, 16)], 2, ranges=ranges)
    pattern = program.pattern
    assert pattern.blocks == ((1.0, 1.0), (1.0, 2.0))
    for c in range(plan.ncyc):
        table = plan.fine_code_table(c, pattern.blocks).probabilities()
        rows = plan.fine * plan.full_scale[c] + 1  # block 1: the ADCs of N_j = 8
        counts = torch.arange(trimmed.full_scale[c] + 1)
        narrow = table[rows + 2 * plan.fine * counts]  # n = M * G >> GAIN_BITS, G = 2 * 2^12
        expected = trimmed.code_table(c).probabilities()[counts]
        assert torch.allclose(narrow, expected, rtol=0, atol=1e-12)


def test_too_many_noise_blocks_are_refused_in_one_line(monkeypatch):
    """A layer whose ADCs need more noise blocks than one table holds is refused with one line
    that names the fix."""
    from asim import noise as noise_module
    from asim.engine.plan import build_plan

    macro = MacroConfig(weight_bits=2, input_bits=2, nrow=16, adc_bits=3)
    plan = build_plan(macro, NoiseConfig(rand_sigma=3.0), False)
    blocks = tuple((1.0, 16 / n) for n in range(16, 6, -1))
    monkeypatch.setitem(noise_module.CONSTANTS, "ASIM_TABLE_MAX_LOG2", 12)
    refusal = r"^code_table: 10 noise blocks .*\(calibrate per layer\)"
    with pytest.raises(ValueError, match=refusal) as e:
        plan.fine_code_table(0, blocks)
    assert "\n" not in str(e.value)
