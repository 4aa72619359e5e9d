"""The compiled macro program (asim.engine.program): built once per layer configuration,
shared by equal configurations, and what the cost model counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from asim import ACiMLinear, MacroConfig, NoiseConfig
from asim.engine import compile_program
from asim.engine import program as program_module
from asim.engine.plan import ANALOG, DIGITAL, VOTED_ANALOG


def test_a_layer_compiles_its_program_once_and_again_when_its_config_changes(monkeypatch):
    built = []
    compile_ = program_module.compile_program

    def counting(*args):
        built.append(args)
        return compile_(*args)

    from asim.layers import base

    monkeypatch.setattr(base, "compile_program", counting)
    layer = ACiMLinear(20, 4, macro=MacroConfig(adc_bits=5, nrow=8))
    x = torch.randn(3, 20)
    with torch.no_grad():
        layer(x), layer(x), layer(x[:1])
        assert len(built) == 1
        program = layer._compiled[0][1]
        assert program.tiles == ((0, 8), (8, 16), (16, 20)) and program.outputs == 4
        layer.noise = NoiseConfig(rand_sigma=1.0)
        layer(x)
        assert len(built) == 2 and layer._compiled[0][1] is not program
        assert layer._compiled[0][1].noisy and not program.noisy


def test_equal_configurations_share_one_program_and_its_backend_forms():
    macro = MacroConfig(adc_bits=6)
    a = compile_program(macro, None, False, [(0, 100)], 7)
    b = compile_program(MacroConfig(adc_bits=6), None, False, ((0, 100),), 7)
    assert a is b
    assert compile_program(macro, None, True, [(0, 100)], 7) is not a
    assert a.form("k", lambda: [1]) is a.form("k", lambda: [2])  # built once


def test_configs_are_frozen_and_replace_validates():
    macro = MacroConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        macro.nrow = 8
    with pytest.raises(ValueError, match="adc_bits=0 must be in 1..24"):
        macro.replace(adc_bits=0)
    assert hash(NoiseConfig(rand_sigma=1)) == hash(NoiseConfig(rand_sigma=1.0))


@pytest.mark.parametrize(
    "macro",
    [MacroConfig(weight_bits=4, input_bits=5, hybrid_levels=h, input_enc_bits=e)
     for h in (0, 1, 3) for e in (None, 2)]
    + [MacroConfig(weight_bits=5, input_bits=4, vote_levels=v, vote_samples=3) for v in (1, 4)],
)  # fmt: skip
@pytest.mark.parametrize("noise", [None, NoiseConfig(rand_sigma=1.0)])
def test_conversion_kinds_follow_the_spec_whatever_the_noise(macro, noise):
    """Spec §6 / §8.2: a pair at anti-diagonal distance ``d`` from the MSB x MSB corner is
    hybrid digital if ``d < hybrid_levels``, voted if ``d < vote_levels`` (K > 1)."""
    for signed in (False, True):
        plan = compile_program(macro, noise, signed, [(0, 4)], 1).plan
        w, n = macro.weight_bits, plan.ncyc
        for i in range(w):
            for c in range(n):
                d = (w - 1 - i) + (n - 1 - c)
                want = (
                    DIGITAL
                    if d < macro.hybrid_levels
                    else VOTED_ANALOG
                    if d < macro.vote_levels and macro.vote_samples > 1
                    else ANALOG
                )
                assert plan.kind[i][c] == want


def test_operations_count_tiles_times_modes_times_rows():
    """W4A4 bit-serial unsigned: 4 x 4 (weight bit, cycle) pairs per output and tile."""
    base = MacroConfig(weight_bits=4, input_bits=4, nrow=8, adc_bits=3)
    tiles, rows, O = [(0, 8), (8, 12)], 5, 3
    outs = 2 * rows * O  # 2 tiles
    plain = compile_program(base, None, False, tiles, O).operations(rows)
    assert plain.adc_conversions == outs * 16 and plain.digital_partial_sums == 0
    assert plain.array_cycles == 2 * rows * 4 and plain.row_activations == 12 * rows * 4
    assert plain.binary_macs == 4 * 12 * rows * O * 4
    hybrid = compile_program(base.replace(hybrid_levels=1), None, False, tiles, O)
    ops = hybrid.operations(rows)  # Q4: the digital cycle still passes the ADC
    assert (ops.adc_conversions, ops.digital_partial_sums) == (outs * 16, outs)
    exact = compile_program(base.replace(hybrid_levels=1, hybrid_exact=True), None, False, tiles, O)
    ops = exact.operations(rows)
    assert (ops.adc_conversions, ops.digital_partial_sums) == (outs * 15, outs)
    voting = base.replace(vote_levels=2, vote_samples=3)
    ops = compile_program(voting, None, False, tiles, O).operations(rows)
    # d = 0 (one pair) and d = 1 (two pairs) are voted: 13 + 3 x 3 conversions per output
    assert ops.adc_conversions == outs * 22 and ops.voted_sums == outs * 3
    assert ops.cycle_repeats == (1, 1, 3, 3) and ops.array_cycles == 2 * rows * 8


def test_a_layer_with_programs_copies_and_pickles():
    """convert_to_acim deep-copies models, checkpoints pickle them: a layer that has run
    keeps working after both, with the same bits."""
    import copy
    import pickle

    layer = ACiMLinear(
        20, 4, macro=MacroConfig(adc_bits=5, nrow=8), noise=NoiseConfig(rand_sigma=1)
    )
    x = torch.randn(3, 20)
    with torch.no_grad():
        from asim import resample_noise

        resample_noise(layer, 1)
        want = layer(x)
        for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            resample_noise(twin, 1)
            assert torch.equal(twin(x), want)
        assert copy.deepcopy(layer)._compiled[0][1] is layer._compiled[0][1]
