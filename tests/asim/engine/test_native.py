"""The native backend (asim.engine.native, the C kernel) equals the torch backend bit for bit."""

from __future__ import annotations

import random

import pytest
import torch

from asim import (
    MacroConfig,
    NoiseConfig,
    acim_matmul,
)

from ..golden import bits
from .helpers import (
    NOISE_KINDS,
    _ints,
    _native_or_skip,
    _noise,
    _random_macro,
    _torch_only,
)


@pytest.mark.parametrize("seed", range(40))
def test_native_kernel_equals_torch_backend_noise_free(seed, monkeypatch):
    """The fused C kernel and the torch backend give identical bits with noise off."""
    rng, g = random.Random(5000 + seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    macro = _random_macro(rng, signed).replace(division=rng.choice(["true", "reciprocal"]))
    x = _ints(g, (rng.randint(1, 3), rng.randint(1, 9), 37), macro.input_bits, signed)
    w = _ints(g, (37, rng.randint(1, 7)), macro.weight_bits, True)
    noise = NoiseConfig(compression_alpha=rng.choice([0.0, 0.0, 0.03]))
    native = acim_matmul(x, w, macro=macro, signed_input=signed, noise=noise)
    _torch_only(monkeypatch)
    plain = acim_matmul(x, w, macro=macro, signed_input=signed, noise=noise)
    assert bits(native) == bits(plain)


@pytest.mark.parametrize("kind", list(NOISE_KINDS))
@pytest.mark.parametrize("signed", [False, True])
def test_noisy_native_kernel_equals_torch_backend(kind, signed, tmp_path, monkeypatch):
    """Every noise kind gives the same bits on the C kernel and the torch backend: both
    draw from the counter-based stream and the same exact code tables."""
    _native_or_skip()
    from asim.engine import NoiseStream

    macro, noise = _noise(kind, tmp_path)
    g = torch.Generator().manual_seed(7)
    x = _ints(g, (2, 37, 40), macro.input_bits, signed)
    w = _ints(g, (40, 11), macro.weight_bits, True)
    stream = NoiseStream(0xDEADBEEF12345678, torch.tensor([5, 3]), 37)
    kw = dict(macro=macro, signed_input=signed, noise=noise, stream=stream)
    native = acim_matmul(x, w, **kw)
    _torch_only(monkeypatch)
    plain = acim_matmul(x, w, **kw)
    assert bits(native) == bits(plain)
    assert not torch.equal(native, acim_matmul(x, w, macro=macro, signed_input=signed))


@pytest.mark.parametrize("division", ["true", "reciprocal"])
@pytest.mark.parametrize("votes", [1, 3])
def test_noisy_native_kernel_at_8_bits_equals_torch_backend(division, votes, monkeypatch):
    """An 8-bit ADC (drawn codes converted by division, not looked up) with narrow Gaussian
    noise, whose code tables have buckets holding several thresholds: the kernel's fused
    draw pass gives the torch backend's bits, one draw per conversion and voted."""
    _native_or_skip()
    from asim.engine import NoiseStream
    from asim.engine.native import bucket_table
    from asim.noise import GaussianNoise, code_table

    noise = NoiseConfig(rand_sigma=0.39, nonlinear_sigma=0.39)
    table = code_table(GaussianNoise(0.39, 0.39), 255, 255, 1, 255, 0.0)
    assert bucket_table(table)["max_n"] > 1  # the several-threshold lanes are exercised
    macro = MacroConfig(division=division, vote_levels=2 if votes > 1 else 0, vote_samples=votes)
    g = torch.Generator().manual_seed(votes)
    x = _ints(g, (2, 45, 300), 8, False)
    w = _ints(g, (300, 13), 8, True)
    stream = NoiseStream(0x0123456789ABCDEF, torch.tensor([2, 9]), 45)
    kw = dict(macro=macro, signed_input=False, noise=noise, stream=stream)
    native = acim_matmul(x, w, **kw)
    _torch_only(monkeypatch)
    plain = acim_matmul(x, w, **kw)
    assert bits(native) == bits(plain)
    assert not torch.equal(native, acim_matmul(x, w, macro=macro, signed_input=False))


@pytest.mark.parametrize(
    "nrow,enc,adc,signed",
    [(255, None, 6, False), (16, 3, 5, False), (100, None, 6, True), (64, 2, 8, False)],
)
def test_native_kernel_at_array_scale_equals_torch_path(nrow, enc, adc, signed, monkeypatch):
    """Realistic sizes: several 64-row words per tile, row blocks and output ranges split
    over threads, M not a multiple of the kernel's block, 8-bit compact codes."""
    from asim.engine import compact_codes

    macro = MacroConfig(nrow=nrow, adc_bits=adc, input_enc_bits=enc)
    g = torch.Generator().manual_seed(nrow + adc)
    x = _ints(g, (203, 700), 8, signed)
    w = _ints(g, (700, 37), 8, True)
    native = acim_matmul(x, w, macro=macro, signed_input=signed)
    compact = acim_matmul(compact_codes(x, 8, signed), w, macro=macro, signed_input=signed)
    _torch_only(monkeypatch)
    plain = acim_matmul(x, w, macro=macro, signed_input=signed)
    assert bits(native) == bits(plain) == bits(compact)


def test_native_portable_build_gives_the_same_bits(tmp_path):
    """The plain-C loops (no AVX-512) build and agree with the default build, noisy too."""
    import os
    import pathlib
    import subprocess
    import sys

    code = """
import torch
from asim import MacroConfig, NoiseConfig, acim_matmul
from asim._native import engine_lib
from asim.engine import NoiseStream
assert engine_lib() is not None and engine_lib().asim_simd() == 0
g = torch.Generator().manual_seed(1)
x = torch.randint(0, 256, (77, 530), generator=g).float()
w = torch.randint(-127, 128, (530, 21), generator=g).float()
s = NoiseStream(99, torch.arange(77), 1)
for adc in (5, 6):
    y = acim_matmul(x, w, macro=MacroConfig(adc_bits=adc), signed_input=False)
    torch.save(y, f"{adc}.pt")
y = acim_matmul(x, w, macro=MacroConfig(adc_bits=6), signed_input=False,
                noise=NoiseConfig(rand_sigma=0.5), stream=s)
torch.save(y, "noisy.pt")
"""
    root = str(pathlib.Path(__file__).resolve().parents[3])
    env = {
        **os.environ,
        "ASIM_NATIVE_MARCH": "x86-64",
        "PYTHONPATH": root,
        "ASIM_NATIVE": "1",
        "ASIM_CACHE_DIR": str(tmp_path / "cache"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "no C compiler" in proc.stderr:
        pytest.skip("no C compiler")
    assert proc.returncode == 0, proc.stderr[-2000:]
    from asim.engine import NoiseStream

    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (77, 530), generator=g).float()
    w = torch.randint(-127, 128, (530, 21), generator=g).float()
    for adc in (5, 6):
        want = acim_matmul(x, w, macro=MacroConfig(adc_bits=adc), signed_input=False)
        assert bits(torch.load(tmp_path / f"{adc}.pt")) == bits(want)
    want = acim_matmul(
        x,
        w,
        macro=MacroConfig(adc_bits=6),
        signed_input=False,
        noise=NoiseConfig(rand_sigma=0.5),
        stream=NoiseStream(99, torch.arange(77), 1),
    )
    assert bits(torch.load(tmp_path / "noisy.pt")) == bits(want)


def test_native_struct_mirrors_the_header():
    """The ctypes struct is parsed from engine.h, and the C side agrees on its size."""
    import ctypes

    from asim._native import CONST, RunArgs, engine_lib

    assert CONST["ASIM_MAXBITS"] == 32 and CONST["ASIM_CYC_VOTED"] == 3
    names = [f[0] for f in RunArgs._fields_]
    assert names[0] == "codes" and "call_key" in names and len(names) == len(set(names))
    lib = engine_lib()
    if lib is None:
        pytest.skip("no C compiler")
    assert lib.asim_run_size() == ctypes.sizeof(RunArgs)


@pytest.mark.parametrize(
    "model,F,A,levels,nrow,alpha",
    [
        ("gauss", 255, 255, 1, 255, 0.0),
        ("gauss", 255, 63, 1, 255, 0.0),
        ("gauss_wide", 36, 15, 3, 12, 0.02),
        ("table", 15, 15, 1, 15, 0.0),
    ],
)
def test_kernel_bucket_tables_give_the_sampler_codes(model, F, A, levels, nrow, alpha, tmp_path):
    """The kernel's bucket re-indexing of a code table gives, for every count and uniforms
    on and next to every threshold, exactly the torch sampler's code."""
    import ctypes

    from asim._native import engine_lib
    from asim.engine.native import _bucket_struct, bucket_table
    from asim.noise import GaussianNoise, TableNoise, code_table, sample_codes

    lib = engine_lib()
    if lib is None:
        pytest.skip("no C compiler")
    noise = {
        "gauss": GaussianNoise(0.39, 0.39),
        "gauss_wide": GaussianNoise(8.0, 3.0),
        "table": TableNoise([0, 5, 15], [0.3, -0.2, 0.1], [0.8, 0.5, 1.2]),
    }[model]
    table = code_table(noise, F, A, levels, nrow, alpha)
    g = torch.Generator().manual_seed(0)
    m, u = [], []
    for r in range(table.n_m):
        thr = table.thr[table.start[r] : table.start[r + 1]]
        edges = torch.cat([thr, thr - 1, (thr + 1).clamp(max=2**32 - 1)])
        rand = torch.randint(0, 2**32, (64,), generator=g)
        both = torch.cat([edges, rand, torch.tensor([0, 2**32 - 1])])
        m.append(torch.full_like(both, table.m_min + r))
        u.append(both)
    m, u = torch.cat(m), torch.cat(u)
    want = sample_codes(table, m, u)
    m32 = m.to(torch.int32).contiguous()
    u32 = torch.where(u >= 2**31, u - 2**32, u).to(torch.int32).contiguous()
    for use_buckets in (True, False):
        b = bucket_table(table) if use_buckets else None
        if use_buckets:
            assert b is not None
        bt = _bucket_struct(b)
        got = torch.empty_like(m32)
        lib.asim_draw_codes(
            ctypes.byref(bt), ctypes.byref(table.native()), m32.data_ptr(), u32.data_ptr(),
            got.data_ptr(), m32.numel(),
        )  # fmt: skip
        assert torch.equal(got, want.to(torch.int32))
