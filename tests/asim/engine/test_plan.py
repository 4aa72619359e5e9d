"""The cycle plan and ADC tables (asim.engine.plan) against the spec's float chain."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from asim import (
    MacroConfig,
    NoiseConfig,
)

from ..golden import bits


@pytest.mark.parametrize(
    "F,A,rec,alpha,late",
    [
        (255, 63, False, 0.0, False),
        (255, 255, False, 0.0, False),
        (765, 127, True, 0.0, False),
        (112, 31, False, 0.0, False),
        (36, 15, False, 0.02, False),
        (36, 15, True, 0.02, True),
    ],
)
def test_value_tables_equal_the_spec_chain(F, A, rec, alpha, late):
    """value_by_count[m] is, for every count, the spec's per-conversion float32 chain
    (spec §4.1 steps 2-5, §8.1), computed element by element as the oracle does."""
    from asim.engine.plan import adc_value_table, code_value_table

    table = adc_value_table(F, A, rec, alpha, late, F)
    f32 = torch.float32
    for m in range(F + 1):
        v = torch.tensor(float(m), dtype=f32)
        if alpha and not late:
            v = v / (v * torch.tensor(alpha, dtype=f32) + 1)
        a = v * (torch.tensor(1.0) / torch.tensor(float(F))) if rec else v / F
        a = a.clamp(0, 1)
        if alpha and late:
            a = a / (a * torch.tensor(alpha, dtype=f32) + 1)
        q = torch.round(a * A)
        out = (q * (torch.tensor(1.0) / torch.tensor(float(A))) if rec else q / A) * F
        assert bits(out.view(1)) == bits(table[m : m + 1]), m
    codes = code_value_table(F, A, rec)
    q = torch.arange(A + 1, dtype=f32)
    want = (q * (torch.tensor(1.0) / torch.tensor(float(A))) if rec else q / A) * F
    assert bits(codes) == bits(want)


def test_plans_are_shared_per_configuration_and_never_stale():
    from asim.engine.plan import build_plan

    macro, noise = MacroConfig(adc_bits=5), NoiseConfig(rand_sigma=0.3)
    plan = build_plan(macro, noise, False)
    assert build_plan(MacroConfig(adc_bits=5), NoiseConfig(rand_sigma=0.3), False) is plan
    assert build_plan(macro, noise, True) is not plan
    with pytest.raises(dataclasses.FrozenInstanceError):
        macro.adc_bits = 6  # configs are frozen: a changed setting is a new config
    assert build_plan(macro.replace(adc_bits=6), noise, False).macro.adc_bits == 6
    assert plan.macro.adc_bits == 5 and build_plan(macro, noise, False) is plan


@pytest.mark.parametrize(
    "F,A,top",
    [(255, 63, 255), (765, 31, 765), (3825, 15, 3825), (127, 63, 127), (65025, 15, 65025)],
)
def test_integer_code_form_gives_the_spec_values(F, A, top):
    """The native table path's integer codes ``(m*k + b) >> s``, looked up in the code-value
    table, give the spec's noise-free value of every count."""
    from asim.engine.plan import (
        adc_value_table,
        code_multiplier,
        code_value_table,
        integer_code_form,
    )

    mul = code_multiplier(F, A, top)
    assert mul
    k, b, s = integer_code_form(mul, top)
    m = torch.arange(top + 1, dtype=torch.int64)
    got = code_value_table(F, A, False)[(m * k + b) >> s]
    assert bits(got) == bits(adc_value_table(F, A, False, 0.0, False, top)[: top + 1])
    assert integer_code_form(0.0, top) is None
