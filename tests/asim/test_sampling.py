"""The counter-based noise stream (asim/rng.py) and its C twin (asim/_native/sampling.h):
identical bits from Python ints, torch and C; uniform and independent draws; exact code
sampling and voting give the same codes in torch and C."""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess

import pytest
import torch

from asim import rng

_HARNESS = r"""
#include <stdint.h>
#include "sampling.h"

void t_mix64(const uint64_t *x, uint64_t *y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = asim_mix64(x[i]);
}
void t_layer_key(const uint64_t *seed, const int64_t *layer, uint64_t *y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = asim_layer_key(seed[i], layer[i]);
}
void t_sub_key(const uint64_t *key, const int64_t *index, uint64_t *y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = asim_sub_key(key[i], index[i]);
}
void t_element_key(uint64_t call, const int64_t *s, const int64_t *p, const int64_t *o,
                   uint64_t *y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = asim_element_key(call, s[i], p[i], o[i]);
}
void t_draw_u32(const uint64_t *key, const uint64_t *draw, uint32_t *y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = asim_draw_u32(key[i], draw[i]);
}
void t_normal(const uint64_t *key, const uint64_t *draw, float *y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = asim_normal_from(key[i], draw[i]);
}
void t_sample_code(const asim_code_table *t, const int32_t *m, const uint32_t *u, int32_t *y,
                   int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = asim_sample_code(t, m[i], u[i]);
}
void t_vote(const int32_t *codes, int K, int32_t *y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = asim_vote(codes + i * K, K);
}
"""


@pytest.fixture(scope="session")
def clib(tmp_path_factory):
    """The header compiled into a tiny test library (skipped without a C compiler)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("sampling")
    (d / "harness.c").write_text(_HARNESS)
    lib = d / "libharness.so"
    cmd = [cc, "-O2", "-std=c99", "-Wall", "-Werror", "-shared", "-fPIC"]
    cmd += [f"-I{rng.HEADER.parent}", str(d / "harness.c"), "-o", str(lib), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


def _ptr(t: torch.Tensor):
    assert t.is_contiguous() and t.device.type == "cpu"
    return ctypes.c_void_p(t.data_ptr())


def _u64(values) -> torch.Tensor:
    return torch.tensor([rng.to_signed(v) for v in values], dtype=torch.int64)


def _random_u64(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    hi = torch.randint(0, 1 << 32, (n,), generator=g, dtype=torch.int64).tolist()
    lo = torch.randint(0, 1 << 32, (n,), generator=g, dtype=torch.int64).tolist()
    edge = [0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
    return edge + [(h << 32) | v for h, v in zip(hi, lo, strict=True)][: n - len(edge)]


# ----------------------------------------------------------------------------- bits


def test_constants_come_from_the_header():
    text = rng.HEADER.read_text()
    assert f"#define ASIM_MIX_M1 {rng.CONSTANTS['ASIM_MIX_M1']:#x}ULL" in text
    assert rng.CONSTANTS["ASIM_MIX_S1"] == 30 and len(rng.CONSTANTS) >= 12
    # splitmix64's published output for seed 0 (state += gamma, then the finalizer)
    assert rng.mix64_int(rng.CONSTANTS["ASIM_DRAW_GAMMA"]) == 0xE220A8397B1DCDAF


def test_torch_mix64_equals_python_ints():
    xs = _random_u64(4000, 1)
    got = rng.mix64(_u64(xs)).tolist()
    assert [rng.to_unsigned(v) for v in got] == [rng.mix64_int(x) for x in xs]


def test_chunked_cpu_mix64_equals_the_plain_path():
    """Large CPU tensors are mixed in cache-sized chunks; the bits do not change."""
    n = 5 * (rng._CHUNK // 2 + 3)
    x = _u64(_random_u64(n, 7)).view(-1, 5)[:, 1:]  # non-contiguous input, > one chunk
    big = rng.mix64(x)
    pieces = torch.cat([rng.mix64(p.contiguous()) for p in x.reshape(-1).split(1000)])
    assert big.shape == x.shape and torch.equal(big.reshape(-1), pieces)
    some = x.reshape(-1)[::997].tolist()
    assert big.reshape(-1)[::997].tolist() == [rng.to_signed(rng.mix64_int(v)) for v in some]


def test_c_equals_torch_bit_for_bit(clib):
    n = 5000
    xs = _random_u64(n, 2)
    x = _u64(xs)
    y = torch.empty(n, dtype=torch.int64)
    clib.t_mix64(_ptr(x), _ptr(y), ctypes.c_int64(n))
    assert torch.equal(y, rng.mix64(x))

    g = torch.Generator().manual_seed(3)
    layers = torch.randint(-5, 1000, (n,), generator=g)
    clib.t_layer_key(_ptr(x), _ptr(layers), _ptr(y), ctypes.c_int64(n))
    want = [rng.layer_key(s, int(v)) for s, v in zip(xs, layers, strict=True)]
    assert [rng.to_unsigned(v) for v in y.tolist()] == want
    clib.t_sub_key(_ptr(x), _ptr(layers), _ptr(y), ctypes.c_int64(n))
    want = [rng.sub_key(s, int(v)) for s, v in zip(xs, layers, strict=True)]
    assert [rng.to_unsigned(v) for v in y.tolist()] == want

    call = rng.layer_key(7, 3)
    s, p, o = (torch.randint(0, 1 << 40, (n,), generator=g) for _ in range(3))
    clib.t_element_key(ctypes.c_uint64(call), _ptr(s), _ptr(p), _ptr(o), _ptr(y), ctypes.c_int64(n))
    ekeys = rng.element_keys(call, s, p, o)
    assert torch.equal(y, ekeys)

    draws = torch.randint(0, 1 << 62, (n,), generator=g)
    draws[:100] = torch.arange(100)
    u = torch.empty(n, dtype=torch.int32)
    clib.t_draw_u32(_ptr(ekeys), _ptr(draws), _ptr(u), ctypes.c_int64(n))
    mine = rng.draw_u32(ekeys, draws)
    assert mine.min() >= 0 and mine.max() < (1 << 32)
    assert torch.equal(u.long() & 0xFFFFFFFF, mine)

    z = torch.empty(n, dtype=torch.float32)
    clib.t_normal(_ptr(ekeys), _ptr(draws), _ptr(z), ctypes.c_int64(n))
    # same bits on this machine; across math libraries only the last float32 bit may move
    assert (z - rng.normal_from(ekeys, draws)).abs().max() <= 1e-6 * z.abs().max()


def test_element_keys_broadcast_and_scalar_draws_agree():
    call = rng.sub_key(rng.layer_key(0, 1), 0)
    s = torch.arange(3).view(3, 1, 1)
    p = torch.arange(4).view(1, 4, 1)
    o = torch.arange(5)
    k = rng.element_keys(call, s, p, o)
    assert k.shape == (3, 4, 5)
    assert k[2, 1, 3] == rng.element_keys(call, torch.tensor(2), 1, 3)
    assert k.unique().numel() == 60
    assert torch.equal(rng.draw_u32(k, 17), rng.draw_u32(k, torch.full_like(k, 17)))


# ----------------------------------------------------------------------------- statistics


def _chi2_limit(dof: int, z: float = 4.75) -> float:
    """Wilson-Hilferty quantile of chi^2(dof) (z = +-4.75: p ~ 1e-6 on each side)."""
    h = 2.0 / (9 * dof)
    return dof * (1 - h + z * math.sqrt(h)) ** 3


def _uniform(chi2: float, dof: int = 255) -> bool:
    """Neither too far from uniform nor too regular to be random (two-sided)."""
    return _chi2_limit(dof, -4.75) < chi2 < _chi2_limit(dof)


def _chi2(u: torch.Tensor, shift: int, buckets: int = 256) -> float:
    counts = torch.bincount(((u >> shift) & (buckets - 1)).flatten(), minlength=buckets)
    expect = u.numel() / buckets
    return float(((counts.double() - expect) ** 2 / expect).sum())


@pytest.mark.parametrize("layout", ["draws_of_one_element", "samples", "outputs", "seeds"])
def test_u32_buckets_are_uniform(layout):
    n = 1 << 18
    idx = torch.arange(n)
    call = rng.sub_key(rng.layer_key(2024, 0), 0)
    if layout == "draws_of_one_element":
        u = rng.draw_u32(rng.element_keys(call, 0, 0, 0).expand(n), idx)
    elif layout == "samples":
        u = rng.draw_u32(rng.element_keys(call, idx, 0, 0), 0)
    elif layout == "outputs":
        u = rng.draw_u32(rng.element_keys(call, 0, idx % 512, idx // 512), 3)
    else:
        keys = [rng.layer_key(s, 0) for s in range(n)]
        u = rng.draw_u32(_u64(keys), 0)
    for shift in (0, 12, 24):  # low, middle and top byte
        assert _uniform(_chi2(u, shift)), (layout, shift)
    bits = torch.stack([(u >> b) & 1 for b in range(32)]).double().mean(1)
    assert ((bits - 0.5).abs() < 5 * 0.5 / math.sqrt(n)).all()


def test_weak_mixers_fail_the_uniformity_test():
    """The test above can fail: a Weyl counter without the finalizer is too regular, and one
    multiply of small indices leaves the top byte far from uniform."""
    idx = torch.arange(1 << 18)
    weyl = _shr32(idx * rng.to_signed(rng.CONSTANTS["ASIM_DRAW_GAMMA"]))
    assert not _uniform(_chi2(weyl, 0))
    one_multiply = _shr32(idx * 0x9E3779B9)
    assert not _uniform(_chi2(one_multiply, 24))


def _shr32(x: torch.Tensor) -> torch.Tensor:
    return (x >> 32) & 0xFFFFFFFF


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_neighbouring_draws_samples_and_seeds_are_uncorrelated():
    n = 1 << 17
    idx = torch.arange(n)
    lim = 5 / math.sqrt(n)
    call = rng.sub_key(rng.layer_key(5, 2), 1)
    k = rng.element_keys(call, idx, 3, 4)
    pairs = {
        "draw d vs d+1": (rng.draw_u32(k, 0), rng.draw_u32(k, 1)),
        "sample s vs s+1": (rng.draw_u32(k[:-1], 0), rng.draw_u32(k[1:], 0)),
        "pos p vs p+1": tuple(rng.draw_u32(rng.element_keys(call, idx, q, 4), 0) for q in (0, 1)),
        "out o vs o+1": tuple(rng.draw_u32(rng.element_keys(call, idx, 3, q), 0) for q in (0, 1)),
    }
    seed_keys = [_u64([rng.layer_key(s + d, 0) for s in range(n)]) for d in (0, 1)]
    pairs["seed s vs s+1"] = tuple(rng.draw_u32(sk, 0) for sk in seed_keys)
    pairs["call c vs c+1"] = tuple(
        rng.draw_u32(rng.element_keys(rng.sub_key(call, c), idx, 0, 0), 0) for c in (0, 1)
    )
    for name, (a, b) in pairs.items():
        assert abs(_corr(a, b)) < lim, name
        assert not torch.equal(a, b), name


def test_normal_from_is_standard_normal():
    n = 1 << 17
    k = rng.element_keys(rng.layer_key(9, 0), torch.arange(n), 0, 0)
    z = rng.normal_from(k, 5).double()
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.std() - 1) < 0.02
    assert abs(float((z < -1).double().mean()) - 0.15865525393145707) < 0.005


# ----------------------------------------------------------------------------- code sampling


def _tables():
    from asim.noise import GaussianNoise, HistogramNoise, TableNoise, code_table, signed_code_table

    hist = HistogramNoise([0, 4, 9], -2, [[0, 1, 8, 1, 0], [1, 2, 5, 3, 1], [0, 0, 3, 6, 2]])
    table = TableNoise([0, 5, 9], [-0.3, 0.4, 0.1], [0.5, 1.2, 0.0])
    return {
        "gaussian": code_table(GaussianNoise(3.0, 6.0), 8, 15, 1, 8),
        "parallel": code_table(GaussianNoise(0.5, 1.0), 3 * 255, 255, 3, 255),
        "wide": code_table(GaussianNoise(4.0), 16, 1023, 1, 16),  # ~40 LSB sigma
        "compressed": code_table(GaussianNoise(2.0), 64, 63, 1, 64, alpha=0.02),
        "late": code_table(GaussianNoise(2.0), 64, 63, 1, 64, 0.02, late_compression=True),
        "table": code_table(table, 9, 7, 1, 9),
        "histogram": code_table(hist, 9, 7, 1, 9),
        "signed": signed_code_table(GaussianNoise(3.0), 15 * 7 * 4, 7),  # W4A4, 4 rows
    }


@pytest.mark.parametrize("kind", list(_tables()))
def test_sample_codes_c_equals_torch(clib, kind):
    from asim.noise import sample_codes

    t = _tables()[kind]
    n = 200_000
    g = torch.Generator().manual_seed(len(kind))
    m = torch.randint(t.m_min, t.m_min + t.n_m, (n,), generator=g, dtype=torch.int32)
    u = rng.draw_u32(rng.element_keys(rng.layer_key(4, 4), torch.arange(n), 0, 0), 0)
    # the exact edges: every threshold, one below, and the extremes
    r = torch.repeat_interleave(torch.arange(t.n_m), t.start.diff().long())
    m = torch.cat([m, (r + t.m_min).int(), (r + t.m_min).int(), m[:2]])
    u = torch.cat([u, t.thr, t.thr - 1, torch.tensor([0, (1 << 32) - 1])])
    bits = t.buckets()[0]  # and both ends of every bucket of a few rows
    ends = torch.arange(1 << bits) << (32 - bits)
    ends = torch.cat([ends, ends + (1 << (32 - bits)) - 1]).repeat(5)
    rows = torch.randint(t.m_min, t.m_min + t.n_m, (5,), generator=g, dtype=torch.int32)
    m = torch.cat([m, rows.repeat_interleave(ends.numel() // 5)])
    u = torch.cat([u, ends])
    mine = sample_codes(t, m, u)
    c = torch.empty_like(mine)
    u32 = torch.where(u >= 1 << 31, u - (1 << 32), u).int()
    clib.t_sample_code(
        ctypes.byref(t.native()), _ptr(m), _ptr(u32), _ptr(c), ctypes.c_int64(m.numel())
    )
    assert torch.equal(c, mine)
    assert mine.min() >= 0 and mine.max() <= t.max_code
    # large CPU calls use the bucket table, small ones the binary search: same codes
    small = torch.cat(
        [sample_codes(t, a, b) for a, b in zip(m.split(3000), u.split(3000), strict=True)]
    )
    assert torch.equal(small, mine)


def test_sample_codes_follow_the_table_probabilities():
    """With one u per threshold cell, each code appears exactly as often as its
    probability says: the lookup is the inverse of the cumulative thresholds."""
    from asim.noise import sample_codes

    t = _tables()["gaussian"]
    n = 1 << 20
    u = (torch.arange(n) << 12) + 7  # a uniform grid over [0, 2^32)
    P = t.probabilities()
    for m in range(t.n_m):
        got = torch.bincount(sample_codes(t, torch.tensor(m), u), minlength=16).double() / n
        assert (got - P[m]).abs().max() <= 2.0**-20  # one grid step


@pytest.mark.parametrize("K", [1, 2, 3, 5])
def test_vote_c_equals_torch_and_brute_force_mode(clib, K):
    from asim.noise import vote_codes

    g = torch.Generator().manual_seed(K)
    n = 20_000
    codes = torch.randint(0, 4, (K, n), generator=g, dtype=torch.int32)
    mine = vote_codes(codes)
    c = torch.empty(n, dtype=torch.int32)
    rows = codes.t().contiguous()  # [n, K]; kept alive during the call
    clib.t_vote(_ptr(rows), K, _ptr(c), ctypes.c_int64(n))
    assert torch.equal(c, mine)
    for i in range(500):  # brute force: most frequent, then smallest
        col = codes[:, i].tolist()
        want = min(col, key=lambda v: (-col.count(v), v))
        assert mine[i] == want


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stream_and_codes_equal_cpu_bits():
    """The torch twin on CUDA tensors: same keys, uniforms and codes as on the CPU."""
    from asim.noise import sample_codes, vote_codes

    n = 300_000
    idx = torch.arange(n)
    call = rng.sub_key(rng.layer_key(12, 3), 4)
    cpu_k = rng.element_keys(call, idx, idx % 7, idx % 11)
    gpu_k = rng.element_keys(call, idx.cuda(), (idx % 7).cuda(), (idx % 11).cuda())
    assert torch.equal(gpu_k.cpu(), cpu_k)
    cpu_u, gpu_u = rng.draw_u32(cpu_k, 9), rng.draw_u32(gpu_k, 9)
    assert torch.equal(gpu_u.cpu(), cpu_u)
    for t in _tables().values():
        m = idx % t.n_m + t.m_min
        assert torch.equal(sample_codes(t, m.cuda(), gpu_u).cpu(), sample_codes(t, m, cpu_u))
    codes = torch.randint(0, 5, (3, n), dtype=torch.int32)
    assert torch.equal(vote_codes(codes.cuda()).cpu(), vote_codes(codes))
