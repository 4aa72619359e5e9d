"""Helpers shared by the engine tests: random macros and operands, oracle arguments, noise
settings and backend switches."""

from __future__ import annotations

import math
import random

import pytest
import torch

from asim import (
    MacroConfig,
    NoiseConfig,
    activation_cycles,
)
from asim.engine import linear_tiles


def _random_macro(rng: random.Random, signed: bool, *, allow_enc: bool = True) -> MacroConfig:
    w = rng.randint(2, 6)
    x = rng.randint(2, 6)
    nrow = rng.choice([1, 2, 3, 4, 5, 7, 8, 9, 15, 16])
    lossless = rng.random() < 0.3 and (nrow + 1) & nrow == 0  # 2^b - 1 rows
    adc = int(math.log2(nrow + 1)) if lossless else rng.randint(1, 6)
    enc = None
    if allow_enc and rng.random() < 0.4:
        top = x - 1 if signed else x
        if top >= 1:
            enc = rng.randint(1, top)
    hybrid = rng.choice([0, 0, 1, 2, 3])
    return MacroConfig(
        weight_bits=w,
        input_bits=x,
        nrow=nrow,
        adc_bits=adc,
        input_enc_bits=enc,
        hybrid_levels=hybrid,
        hybrid_exact=hybrid > 0 and rng.random() < 0.5,
    )


def _oracle_kwargs(m: MacroConfig) -> dict:
    return dict(
        wbit=m.weight_bits,
        xbit=m.input_bits,
        adc_prec=m.adc_bits,
        nrow=m.nrow,
        act_enc=m.input_enc_bits,
        hybrid_levels=m.hybrid_levels,
        hybrid_exact=m.hybrid_exact,
    )


def _ints(rng_t: torch.Generator, shape, bits: int, signed: bool) -> torch.Tensor:
    hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    lo = -hi if signed else 0
    return torch.randint(lo, hi + 1, shape, generator=rng_t).float()


def _normal_cdf(t: float) -> float:
    return 0.5 * (1 + math.erf(t / math.sqrt(2)))


def _code_moments(a0: float, sigma: float, A: int) -> tuple[float, float]:
    """Mean and variance of rne(clamp(a0 + sigma Z, 0, 1) * A) (ties have measure 0)."""
    mean = var2 = 0.0
    for k in range(A + 1):
        lo = -math.inf if k == 0 else (k - 0.5) / A
        hi = math.inf if k == A else (k + 0.5) / A
        p = _normal_cdf((hi - a0) / sigma) - _normal_cdf((lo - a0) / sigma)
        mean += p * k
        var2 += p * k * k
    return mean, var2 - mean * mean


def _analytic(x_int, w_int, macro: MacroConfig, signed: bool, rand: float, nl: float):
    """Mean and std of Y per output from the spec's noise model, cycle by cycle."""
    cycles = activation_cycles(macro.input_bits, macro.input_enc_bits, signed)
    A, wb, n = macro.adc_levels, macro.weight_bits, len(cycles)
    wcode = torch.where(w_int < 0, w_int + (1 << wb), w_int).long()
    xcode = torch.where(x_int < 0, x_int + (1 << macro.input_bits), x_int).long()
    M, O = x_int.shape[0], w_int.shape[1]
    mean = torch.zeros(M, O, dtype=torch.float64)
    var = torch.zeros(M, O, dtype=torch.float64)
    for r0, r1 in linear_tiles(x_int.shape[1], macro.nrow):
        for i in range(wb):
            pw = ((wcode[r0:r1] >> i) & 1).double()
            for c, cyc in enumerate(cycles):
                cnt = sum(
                    ((xcode[:, r0:r1] >> b) & 1).double() @ pw * (1 << k)
                    for k, b in enumerate(cyc.bits)
                )
                fs = cyc.levels * macro.nrow
                negate = (i != wb - 1) if cyc.sign else (i == wb - 1)
                coef = (-1 if negate else 1) * 2.0 ** (i + cyc.shift) * fs / A
                digital = (wb - 1 - i) + (n - 1 - c) < macro.hybrid_levels
                for m in range(M):
                    for o in range(O):
                        a0 = cnt[m, o].item() / fs
                        level = a0 * macro.nrow
                        s = math.sqrt((rand / 100) ** 2 + (nl / 100) ** 2 / (level + 1))
                        if digital:
                            q, v = round(a0 * A), 0.0  # python round is half-even too
                        else:
                            q, v = _code_moments(a0, s, A)
                        mean[m, o] += coef * q
                        var[m, o] += coef * coef * v
    return mean, var.sqrt()


def _torch_only(monkeypatch) -> None:
    """Make every following engine call take the torch backend."""
    from asim.engine import core

    monkeypatch.setitem(core.PREFERENCE, "cpu", (core.TORCH,))


def _native_or_skip() -> None:
    from asim._native import engine_lib

    if engine_lib() is None:
        pytest.skip("no C compiler (or ASIM_NATIVE=0): only the torch backend runs")


def _histogram_csv(path) -> str:
    rows = ["# count,delta,weight: code offset histogram per ideal count", "count,delta,weight"]
    for count, weights in [(0, [0, 3, 1]), (4, [1, 6, 2]), (9, [2, 5, 0])]:
        rows += [f"{count},{d - 1},{wt}" for d, wt in enumerate(weights)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _measured_csv(path) -> str:
    path.write_text("count,offset,std\n0,0.3,0.8\n5,-0.2,0.5\n15,0.1,1.2\n")
    return str(path)


NOISE_KINDS = {
    "gaussian": (MacroConfig(nrow=15, adc_bits=3), dict(rand_sigma=3.0, nonlinear_sigma=4.0)),
    "parallel": (
        MacroConfig(nrow=9, adc_bits=4, input_enc_bits=2, hybrid_levels=2),
        dict(rand_sigma=2.0),
    ),
    "voting": (
        MacroConfig(nrow=15, adc_bits=4, vote_levels=2, vote_samples=3),
        dict(rand_sigma=5.0),
    ),
    "compression": (
        MacroConfig(nrow=12, adc_bits=4, input_enc_bits=2),
        dict(rand_sigma=2.0, compression_alpha=0.02),
    ),
    "late_sign": (
        MacroConfig(nrow=12, adc_bits=4, input_enc_bits=2),
        dict(rand_sigma=2.0, compression_alpha=0.02, sign_cycle_compression="normalised"),
    ),
    "measured": (MacroConfig(nrow=15, adc_bits=4), dict(file="measured")),
    "histogram": (MacroConfig(nrow=15, adc_bits=4), dict(histogram="histogram")),
}


def _noise(kind: str, tmp_path) -> tuple[MacroConfig, NoiseConfig]:
    macro, kw = NOISE_KINDS[kind]
    kw = dict(kw)
    if "file" in kw:
        kw["file"] = _measured_csv(tmp_path / "measured.csv")
    if "histogram" in kw:
        kw["histogram"] = _histogram_csv(tmp_path / "histogram.csv")
    return macro, NoiseConfig(**kw)
