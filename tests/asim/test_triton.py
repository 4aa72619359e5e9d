"""The Triton backend equals the native backend bit for bit, noise off and noise on (same
stream), on small random configs; run on CPU by the Triton interpreter (TRITON_INTERPRET=1).

The interpreter must be chosen before ``triton.language`` is first imported (its own
helpers are decorated then), so it is never switched on inside a test session: the
interpreted cases run only in a process started with ``TRITON_INTERPRET=1``, which
``test_cases_under_the_interpreter`` (marked ``triton``) starts as a child process. The
interpreter pays per kernel operation, so shapes are small: few tiles, bits and cycles.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from asim import (
    ACiMConv2d,
    ACiMLinear,
    ACiMMultiheadAttention,
    MacroConfig,
    NoiseConfig,
    resample_noise,
)
from asim.engine import (
    NoiseStream,
    Patches,
    acim_matmul,
    backends_used,
    build_plan,
    core,
    reset_backends_used,
)

from .golden import bits

_ON = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_HAVE_TRITON = __import__("importlib.util").util.find_spec("triton") is not None

MEASURED = str(Path(__file__).resolve().parents[2] / "conf" / "noise" / "measured_example.csv")

interpreted = pytest.mark.skipif(
    not (_ON and _HAVE_TRITON),
    reason="needs the Triton interpreter: run by test_cases_under_the_interpreter",
)


@pytest.mark.triton
@pytest.mark.skipif(_ON, reason="the interpreter is on in this process")
@pytest.mark.skipif(not _HAVE_TRITON, reason="triton is not installed")
def test_cases_under_the_interpreter():
    """This file's cases in a child process with ``TRITON_INTERPRET=1``."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow and "
         "not gpu", str(Path(__file__))],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-2000:]


@pytest.fixture(params=["codes", "planes"])
def backend(request, monkeypatch):
    """Run ``fn`` once with ``ASIM_BACKEND=native`` and once with ``ASIM_BACKEND=triton``;
    returns both results and how many calls reached the Triton kernel (``run.patches``: for
    each, whether it got a conv's :class:`Patches` rather than a dense matrix). Both operand
    paths: bits cut from the codes in the kernel, or precomputed planes."""
    from asim._triton import backend as triton_backend

    monkeypatch.setattr(triton_backend, "PLANES", request.param == "planes")
    jobs = []
    for chosen in (core.NATIVE, core.TRITON, core.TORCH):  # the engine's own choice, counted

        def spy(program, operands, out, chosen=chosen, run=chosen.run):
            jobs.append((chosen.name, isinstance(operands.x, Patches)))
            return run(program, operands, out)

        monkeypatch.setattr(chosen, "run", spy)

    def run(fn):
        results = []
        for name in ("native", "triton"):
            monkeypatch.setenv("ASIM_BACKEND", name)
            jobs.clear()
            results.append(fn())
            assert {used for used, _ in jobs} <= {name}
        run.patches = [patches for _, patches in jobs]
        return *results, len(jobs)

    return run


def _ints(g, shape, nbits: int, signed: bool) -> torch.Tensor:
    hi = (1 << (nbits - 1)) - 1 if signed else (1 << nbits) - 1
    return torch.randint(-hi if signed else 0, hi + 1, shape, generator=g).float()


def _macro(rng: random.Random, signed: bool, *, voting: bool = False, enc: bool = True):
    """A small random macro (at most 5 bits, a few cycles): lossy and lossless ADCs,
    bit-serial and bit-parallel, hybrid (also exact), voting, both division modes."""
    w, x = rng.randint(2, 5), rng.randint(2, 5)
    nrow = rng.choice([3, 4, 7, 8, 15, 16])
    lossless = rng.random() < 0.3 and (nrow + 1) & nrow == 0
    adc = (nrow + 1).bit_length() - 1 if lossless else rng.randint(1, 6)
    e = None
    top = x - 1 if signed else x
    if enc and not voting and rng.random() < 0.5 and top >= 1:
        e = rng.randint(1, top)
    hybrid = 0 if voting else rng.choice([0, 0, 1, 2])
    return MacroConfig(
        weight_bits=w,
        input_bits=x,
        nrow=nrow,
        adc_bits=adc,
        input_enc_bits=e,
        hybrid_levels=hybrid,
        hybrid_exact=hybrid > 0 and rng.random() < 0.5,
        vote_levels=rng.randint(1, 2) if voting else 0,
        vote_samples=rng.choice([2, 3]) if voting else 1,
        division=rng.choice(["ieee", "reciprocal"]),
    )


def _noise(rng: random.Random) -> NoiseConfig:
    kind = rng.choice(["gaussian", "gaussian", "nonlinear", "measured", "compressed"])
    if kind == "measured":
        return NoiseConfig(file=MEASURED)
    if kind == "compressed":
        return NoiseConfig(rand_sigma=2.0, compression_alpha=rng.choice([0.02, 0.1]))
    return NoiseConfig(
        rand_sigma=rng.choice([0.5, 2.0, 6.0]), nonlinear_sigma=4.0 if kind == "nonlinear" else 0
    )


@interpreted
@pytest.mark.parametrize("seed", range(30))
def test_matmul_noise_free_equals_native(seed, backend):
    """Matrices (2-D and batched 3-D operands), dropped tiles, compression (Q28 modes)."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    macro = _macro(rng, signed)
    B, M, R, O = rng.choice([1, 1, 2]), rng.randint(1, 20), rng.randint(1, 24), rng.randint(1, 9)
    x = _ints(g, (B, M, R), macro.input_bits, signed)
    w = _ints(g, (B if rng.random() < 0.3 else 1, R, O), macro.weight_bits, True)
    tiles = [(s, min(s + macro.nrow, R)) for s in range(0, R, macro.nrow)]
    if len(tiles) > 1 and rng.random() < 0.3:
        tiles = tiles[:-1]  # the trailing rows are not mapped, as conv tiling can drop them
    noise = NoiseConfig(
        compression_alpha=rng.choice([0.0, 0.0, 0.05]),
        sign_cycle_compression=rng.choice(["counts", "normalised"]),
    )
    want, got, used = backend(
        lambda: acim_matmul(
            x, w, macro=macro, signed_input=signed, tiles=tiles, noise=noise, exact_shortcut=False
        )
    )
    assert used == 1
    assert bits(got) == bits(want), macro


@interpreted
@pytest.mark.parametrize("seed", range(30))
def test_matmul_noisy_equals_native(seed, backend):
    """Same seed, same bits: Gaussian, count-dependent, measured-table and compressed
    noise, hybrid and voted cycles, several samples and positions per call."""
    rng, g = random.Random(100 + seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    voting = rng.random() < 0.35
    macro = _macro(rng, signed, voting=voting)
    B, M, R, O = rng.choice([1, 2]), rng.randint(1, 12), rng.randint(1, 20), rng.randint(1, 6)
    x = _ints(g, (B, M, R), macro.input_bits, signed)
    w = _ints(g, (R, O), macro.weight_bits, True)
    noise = _noise(rng)
    stream = NoiseStream(rng.getrandbits(64), torch.arange(B) * 5 + rng.randint(0, 99), M)
    assert build_plan(macro, noise, signed).noisy
    want, got, used = backend(
        lambda: acim_matmul(x, w, macro=macro, signed_input=signed, noise=noise, stream=stream)
    )
    assert used == 1
    assert bits(got) == bits(want), (macro, noise)


@interpreted
def test_noise_reaches_the_kernel(backend):
    """Strong noise changes the result, and per chip: the equality above is not vacuous."""
    g = torch.Generator().manual_seed(0)
    macro = MacroConfig(weight_bits=3, input_bits=3, nrow=8, adc_bits=3)
    x, w = _ints(g, (2, 6, 16), 3, False), _ints(g, (16, 4), 3, True)
    noise = NoiseConfig(rand_sigma=8.0)
    clean = acim_matmul(x, w, macro=macro, signed_input=False, exact_shortcut=False)
    outs = []
    for key in (1, 2):
        stream = NoiseStream(key, torch.arange(2), 6)
        want, got, used = backend(
            lambda s=stream: acim_matmul(x, w, macro=macro, signed_input=False, noise=noise,
                                         stream=s)
        )  # fmt: skip
        assert used == 1 and bits(got) == bits(want)
        outs.append(got)
    assert not torch.equal(outs[0], clean) and not torch.equal(outs[0], outs[1])


@interpreted
@pytest.mark.parametrize("noisy", [False, True], ids=["noise_off", "noise_on"])
@pytest.mark.parametrize(
    "wb,xb,enc,signed",
    [(3, 10, 10, False), (10, 3, None, True), (9, 9, 8, True), (2, 16, 8, False)],
    ids=["cycle_of_10_bits", "10bit_weights", "9bit_signed_enc8", "16bit_inputs"],
)
def test_wide_cycles_and_codes(wb, xb, enc, signed, noisy, backend):
    """Cycles wider than one int8 operand (7 bits) are cut into pieces; weights over 8 bits
    are int16 codes; inputs over 8 bits int32 codes."""
    g = torch.Generator().manual_seed(wb * 100 + xb)
    macro = MacroConfig(weight_bits=wb, input_bits=xb, nrow=5, adc_bits=7, input_enc_bits=enc)
    x = _ints(g, (2, 7, 12), xb, signed)
    w = _ints(g, (12, 3), wb, True)
    noise = NoiseConfig(rand_sigma=1.0) if noisy else None
    stream = NoiseStream(99, torch.tensor([4, 9]), 7)
    want, got, used = backend(
        lambda: acim_matmul(
            x, w, macro=macro, signed_input=signed, noise=noise, stream=stream,
            exact_shortcut=False,
        )
    )  # fmt: skip
    assert used == 1
    assert bits(got) == bits(want)


@interpreted
@pytest.mark.parametrize("noisy", [False, True], ids=["noise_off", "noise_on"])
def test_tiles_longer_than_one_block(noisy, backend):
    """Tiles of 100 rows take two 64-row blocks (the K loop; padded blocks for planes)."""
    g = torch.Generator().manual_seed(7)
    macro = MacroConfig(weight_bits=3, input_bits=3, nrow=100, adc_bits=5)
    x, w = _ints(g, (1, 9, 230), 3, False), _ints(g, (230, 5), 3, True)
    noise = NoiseConfig(rand_sigma=1.5) if noisy else None
    stream = NoiseStream(5, torch.tensor([2]), 9)
    want, got, used = backend(
        lambda: acim_matmul(x, w, macro=macro, signed_input=False, noise=noise, stream=stream)
    )
    assert used == 1
    assert bits(got) == bits(want)


def _lossy(macro: MacroConfig, signed: bool) -> MacroConfig:
    """The macro, with more rows if needed so that its ADC is not the identity (the engine
    would take the exact shortcut and no cycle would run)."""
    while build_plan(macro, None, signed).lossless():
        macro = macro.replace(nrow=macro.nrow + 1)
    return macro


def _layer_noise(rng: random.Random, noisy: bool) -> NoiseConfig | None:
    return NoiseConfig(rand_sigma=rng.choice([1.0, 3.0]), nonlinear_sigma=2.0) if noisy else None


@interpreted
@pytest.mark.parametrize("noisy", [False, True], ids=["noise_off", "noise_on"])
@interpreted
@pytest.mark.parametrize("seed", range(10))
def test_conv_layer_equals_native(seed, noisy, backend):
    """Conv with stride and padding through ACiMConv2d (patches, channel groups)."""
    rng, g = random.Random(200 + seed), torch.Generator().manual_seed(seed)
    k = rng.choice([1, 2, 3])
    macro = _macro(rng, signed=False).replace(nrow=rng.choice([k * k, 2 * k * k]))
    macro = _lossy(macro.replace(adc_bits=min(macro.adc_bits, 4)), False)
    cin, cout = rng.randint(1, 4), rng.randint(1, 4)
    layer = ACiMConv2d(
        cin,
        cout,
        k,
        stride=rng.choice([1, 2]),
        padding=rng.choice([0, 1]),
        bias=rng.random() < 0.5,
        macro=macro,
        noise=_layer_noise(rng, noisy),
        signed_input=False,
    )
    x = torch.rand(rng.randint(1, 2), cin, 5, 5 + rng.randint(0, 1), generator=g)

    def forward():
        resample_noise(layer, 11)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dropped channel groups (Q1) are expected
            return layer(x)

    want, got, used = backend(forward)
    assert used >= 1 and all(backend.patches)  # the layer's patches, read in place
    assert bits(got) == bits(want), macro


@interpreted
@pytest.mark.parametrize("noisy", [False, True], ids=["noise_off", "noise_on"])
@interpreted
@pytest.mark.parametrize("seed", range(6))
def test_linear_layer_equals_native(seed, noisy, backend):
    """Linear on 2-D and 3-D inputs, signed and unsigned."""
    rng, g = random.Random(300 + seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    macro = _lossy(_macro(rng, signed).replace(adc_bits=rng.randint(1, 3)), signed)
    fin, fout = rng.randint(2, 20), rng.randint(1, 6)
    lead = rng.choice([(3,), (2, 3)])
    layer = ACiMLinear(fin, fout, macro=macro, noise=_layer_noise(rng, noisy), signed_input=signed)
    x = torch.randn(*lead, fin, generator=g)
    if not signed:
        x = x.abs()

    def forward():
        resample_noise(layer, 5)
        with torch.no_grad():
            return layer(x)

    want, got, used = backend(forward)
    assert used == 1
    assert bits(got) == bits(want), macro


@interpreted
@pytest.mark.parametrize("noisy", [False, True], ids=["noise_off", "noise_on"])
@interpreted
@pytest.mark.parametrize("seed", range(4))
def test_attention_equals_native(seed, noisy, backend):
    """Multi-head attention: projections, QK (signed keys, bit-parallel) and AV (unsigned
    scores): batched operands with per-sample weights."""
    rng, g = random.Random(400 + seed), torch.Generator().manual_seed(seed)
    heads = rng.choice([1, 2])
    C = heads * rng.choice([2, 3])
    nrow = rng.choice([4, 5])  # adc 2: lossy

    def small(signed):
        return _macro(rng, signed, enc=False).replace(
            nrow=nrow, weight_bits=3, input_bits=3, adc_bits=2, hybrid_levels=0,
            hybrid_exact=False
        )  # fmt: skip

    qk = small(True).replace(input_enc_bits=rng.choice([None, 2]))
    noise = _layer_noise(rng, noisy)
    layer = ACiMMultiheadAttention(
        C, heads, batch_first=True, macro=small(True), qk_macro=qk, av_macro=small(False),
        noise=noise, qk_noise=noise, av_noise=noise,
    ).eval()  # fmt: skip
    x = torch.randn(rng.randint(1, 2), rng.randint(2, 4), C, generator=g)

    def forward():
        resample_noise(layer, 3)
        with torch.no_grad():
            return layer(x)[0]

    want, got, used = backend(forward)
    assert used == 4  # qkv projection, QK, AV, output projection
    assert bits(got) == bits(want)


@interpreted
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.float32])
def test_patches_gathered_in_place_equal_the_unfolded_matrix(dtype):
    """The kernel reads a conv's patch view through row/column offsets, without the copy."""
    from asim._triton.launch import KernelTables, launch, weight_codes

    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 16, (2, 3, 7, 6), generator=g).to(dtype)  # B, C, H, W
    view = x.as_strided(
        (2, 3, 2, 3, 3, 3),
        (x.stride(0), 2 * x.stride(2), 2 * x.stride(3), x.stride(1), x.stride(2), x.stride(3)),
    )
    patches = Patches(view, row_dims=3)
    dense = view.reshape(patches.shape)
    macro = MacroConfig(weight_bits=3, input_bits=4, nrow=9, adc_bits=3)
    plan = build_plan(macro, None, False)
    tables = KernelTables.from_plan(plan, 9, "cpu")
    w = weight_codes(_ints(g, (1, 27, 4), 3, True), 3, "cpu")
    tiles = torch.tensor([[0, 9], [9, 18]])  # the last channel is dropped
    want = acim_matmul(dense.float(), w[0].float(), macro=macro, signed_input=False,
                       tiles=[(0, 9), (9, 18)])  # fmt: skip
    got = torch.full((1, *want.shape), float("nan"))
    launch(tables, view, w, tiles, got, row_off=patches.row_offset, col_off=patches.col_offset)
    assert bits(got[0]) == bits(want)


@interpreted
def test_programmed_weights_are_converted_once(backend):
    """A ProgrammedArray keeps the kernel's device form of the weights across calls."""
    from asim.engine import ProgrammedArray

    g = torch.Generator().manual_seed(1)
    macro = MacroConfig(weight_bits=4, input_bits=3, nrow=7, adc_bits=2)
    prog = ProgrammedArray(_ints(g, (10, 3), 4, True))
    x = _ints(g, (5, 10), 3, False)
    want, got, used = backend(lambda: acim_matmul(x, prog, macro=macro, signed_input=False))
    forms = [k for k in prog._forms if k[0] in ("triton_codes", "triton_planes")]
    assert used == 1 and len(forms) == 1
    form = prog._forms[forms[0]]
    again = backend(lambda: acim_matmul(x, prog, macro=macro, signed_input=False))[1]
    assert prog._forms[forms[0]] is form
    assert bits(got) == bits(want) == bits(again)


@interpreted
def test_availability_follows_device_and_interpreter(monkeypatch):
    from asim import _triton

    assert _triton.available(torch.device("cpu"))  # the interpreter is on in this module
    assert _triton.available(torch.device("cuda"))  # compiled when a GPU is there
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not _triton.available(torch.device("cpu"))


@interpreted
def test_backend_declines_weight_cell_variation(monkeypatch):
    """Non-integer counts (cell variation) are not the kernel's: why_not says so, and
    ``ASIM_BACKEND=triton`` fails in one line naming the backends that run them."""
    from asim._triton.backend import BACKEND

    layer = ACiMLinear(6, 2, macro=MacroConfig(adc_bits=4, nrow=4), noise=NoiseConfig(cell_sigma=2))
    reasons = []
    why_not = BACKEND.why_not

    def spy(program, operands):
        reasons.append(why_not(program, operands))
        return reasons[-1]

    monkeypatch.setattr(BACKEND, "why_not", spy)
    monkeypatch.setenv("ASIM_BACKEND", "triton")
    with torch.no_grad(), pytest.raises(ValueError, match="needs ASIM_BACKEND=torch or native"):
        layer(torch.randn(3, 6))
    assert len(reasons) == 1 and "weight-cell variation" in reasons[0]


_AOT = """
import subprocess, sys, tempfile
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from asim._triton.kernel import acim_kernel
ptrs = dict(X="*u8", W="*i8", Y="*fp32", COEF="*fp32", VCNT="*fp32", VCODE="*fp32",
            ROW_OFF="*i64", COL_OFF="*i64", TILES="*i64", VCNT_OFF="*i64", VCODE_OFF="*i64",
            RKEY="*i64", THR="*i64", LVL0="*i32", P_GAIN="*i64", P_OFFSET="*i64")
for noise, gather, single, planes, pattern, classes in [
    (False, False, False, False, False, False), (True, True, True, False, False, False),
    (False, False, False, True, False, False), (True, False, True, True, False, False),
    (True, False, False, False, True, False), (True, False, True, False, True, True),
    (False, False, False, False, True, True),
]:  # every constexpr as the launcher passes it (a chip's pattern, §4.7; per-ADC ranges, §4.8)
    const = dict(WB=8, NCYC=8, GATHER=gather, NOISE=noise, PATTERN=pattern, CLASSES=classes,
                 SINGLE_K=single, PLANES=planes, BM=64, BN=64, BK=64)
    ptrs["X"] = "*i8" if planes else "*u8"  # planes: int8 cycle levels
    table = lambda n: "*i32" if n.isupper() and len(n) > 1 else "i32"
    sig = {n: "constexpr" if n in const else ptrs.get(n, table(n)) for n in acim_kernel.arg_names}
    k = triton.compile(ASTSource(acim_kernel, sig, const), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=8, enable_fp_fusion=False))
    ptx = k.asm["ptx"]
    assert "mma" in ptx and "s8" in ptx, "no int8 tensor-core instruction"
    assert "fma.rn.f32" not in ptx, "a fused multiply-add would change the rounding"
    print("ok", noise, gather, len(k.asm["cubin"]))
"""


@pytest.mark.slow
def test_kernel_compiles_for_sm90_with_int8_tensor_cores():
    """Without a GPU: the compiled (not interpreted) kernel builds to an sm_90 cubin with
    ptxas, uses int8 tensor-core MMAs and no fused multiply-add."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, "-c", _AOT], cwd=root, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    if "ptxas" in proc.stderr and "not found" in proc.stderr:
        pytest.skip("triton's ptxas is not available")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("ok") == 7  # every variant of the loop in _AOT


gpu_compiled = pytest.mark.skipif(
    _ON or not torch.cuda.is_available(), reason="needs CUDA and the compiled kernel"
)


@pytest.mark.gpu
@gpu_compiled
@pytest.mark.parametrize("planes", [False, True], ids=["codes", "planes"])
@pytest.mark.parametrize("seed", range(16))
def test_cuda_triton_equals_cpu_native(seed, planes, monkeypatch):
    """The compiled kernel on CUDA gives the CPU native backend's bits: small random macros
    and array-scale shapes (several blocks, K loops, masks), noise off and on, both operand
    paths."""
    from asim._triton import backend as triton_backend

    monkeypatch.setattr(triton_backend, "PLANES", planes)
    monkeypatch.delenv("ASIM_BACKEND", raising=False)  # the defaults: native, triton

    rng, g = random.Random(900 + seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    if seed < 8:
        macro = _macro(rng, signed, voting=rng.random() < 0.3)
        B, M, R, O = rng.choice([1, 3]), rng.randint(1, 90), rng.randint(1, 60), rng.randint(1, 70)
    else:  # the reference's array: nrow 255, W8A8
        enc = rng.choice([None, 2]) if not signed else None
        macro = MacroConfig(adc_bits=rng.choice([5, 6, 7]), input_enc_bits=enc)
        B, M, R, O = 1, rng.randint(100, 300), rng.randint(256, 700), rng.randint(10, 130)
    x = _ints(g, (B, M, R), macro.input_bits, signed)
    w = _ints(g, (R, O), macro.weight_bits, True)
    noise = _noise(rng) if seed % 2 else None
    stream = NoiseStream(rng.getrandbits(64), torch.arange(B) + 17, M)
    kw = dict(macro=macro, signed_input=signed, noise=noise, stream=stream, exact_shortcut=False)
    reset_backends_used()
    want = acim_matmul(x, w, **kw)
    assert backends_used() == {"native"}
    reset_backends_used()
    got = acim_matmul(x.cuda().to(torch.uint8) if not signed and macro.input_bits <= 8
                      else x.cuda(), w.cuda(), **kw).cpu()  # fmt: skip
    assert backends_used() == {"triton"}
    assert bits(got) == bits(want), (macro, noise)


@interpreted
def test_a_failing_first_launch_falls_back_once_with_one_warning(monkeypatch):
    """A Triton launch that fails on its first call (as a compile error on an untested GPU
    would) falls back to the next backend with one warning line, the same bits, and the
    fallback in ``describe_backends`` (``summary.backend``); a forced backend errors."""
    from asim._triton import backend as triton_backend

    macro = MacroConfig(weight_bits=4, input_bits=4, nrow=8, adc_bits=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 16, (3, 20), generator=g).float()
    w = torch.randint(-7, 8, (20, 5), generator=g).float()
    monkeypatch.delenv("ASIM_BACKEND", raising=False)
    want = acim_matmul(x, w, macro=macro, signed_input=False)  # native

    def fail(*args, **kwargs):
        raise RuntimeError("PTX assembly failed:\n  ptxas fatal: unknown target")

    for state in ("_BROKEN", "_PROVEN", "_FALLBACKS", "_pending"):
        monkeypatch.setattr(core, state, type(getattr(core, state))())
    monkeypatch.setattr(triton_backend, "launch", fail)
    monkeypatch.setitem(core.PREFERENCE, "cpu", (core.TRITON, core.NATIVE, core.TORCH))
    reset_backends_used()
    with pytest.warns(RuntimeWarning) as caught:
        got = acim_matmul(x, w, macro=macro, signed_input=False)
    assert bits(got) == bits(want) and backends_used() == {"native"}
    (message,) = [str(c.message) for c in caught]
    assert "\n" not in message
    assert "triton failed on cpu (RuntimeError: PTX assembly failed: ptxas fatal" in message
    assert "fell back to native" in message and "report" in message
    assert "fallback: triton failed on cpu" in core.describe_backends()
    assert [f.failed for f in core.backend_fallbacks()] == ["triton"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the broken backend is skipped silently from now on
        assert bits(acim_matmul(x, w, macro=macro, signed_input=False)) == bits(want)
    monkeypatch.setattr(core, "_BROKEN", set())
    monkeypatch.setenv("ASIM_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="ASIM_BACKEND=triton: the backend failed on its first"):
        acim_matmul(x, w, macro=macro, signed_input=False)


def _real_adc(rng: random.Random, macro: MacroConfig) -> MacroConfig:
    """The macro with a clipping or wider ADC full scale and/or non-uniform levels (§4.5,
    §4.6)."""
    fs = rng.choice([None, max(1, macro.nrow // 2), macro.nrow + 2])
    if rng.random() < 0.5:
        a = macro.adc_levels
        t = sorted(rng.sample(range(1, 1000), a))
        edges = [0.0, *(v / 1000 for v in t), 1.0]
        values = tuple((edges[k] + edges[k + 1]) / 2 for k in range(a + 1))
        macro = macro.replace(adc_thresholds=tuple(v / 1000 for v in t), adc_values=values)
    return macro.replace(adc_full_scale=fs)


@interpreted
@pytest.mark.parametrize("planes", [False, True])
@pytest.mark.parametrize("seed", range(12))
def test_real_adcs_and_chips_equal_torch(seed, planes, monkeypatch):
    """ADC full scale, non-uniform levels and a chip's fixed pattern (spec §4.5-§4.7),
    noise off and on: the Triton kernel gives the torch backend's bits."""
    from asim._triton import backend as triton_backend

    monkeypatch.setattr(triton_backend, "PLANES", planes)
    rng, g = random.Random(700 + seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    voting = rng.random() < 0.3
    macro = _real_adc(rng, _macro(rng, signed, voting=voting).replace(division="ieee"))
    noisy = rng.random() < 0.6
    noise = NoiseConfig(
        rand_sigma=rng.choice([1.0, 4.0]) if noisy else 0.0,
        column_offset_lsb=rng.choice([0.0, 0.8]),
        column_gain_pct=rng.choice([0.0, 2.0]),
        column_sigma_spread=rng.choice([0.0, 0.3]) if noisy else 0.0,
        adc_group=rng.choice([1, 2]),
        chip_seed=seed,
    )
    B, M, R, O = rng.choice([1, 2]), rng.randint(1, 9), rng.randint(1, 20), rng.randint(1, 6)
    x = _ints(g, (B, M, R), macro.input_bits, signed)
    w = _ints(g, (R, O), macro.weight_bits, True)
    stream = NoiseStream(rng.getrandbits(64), torch.arange(B) * 3 + 1, M)
    results = []
    for name in ("torch", "triton"):
        monkeypatch.setenv("ASIM_BACKEND", name)
        reset_backends_used()
        results.append(
            acim_matmul(
                x,
                w,
                macro=macro,
                signed_input=signed,
                noise=noise,
                stream=stream,
                exact_shortcut=False,
            )  # fmt: skip
        )
        assert backends_used() == {name}
    assert bits(results[0]) == bits(results[1]), (macro, noise)


@interpreted
@pytest.mark.parametrize("seed", range(6))
def test_column_ranges_equal_torch(seed, monkeypatch):
    """Per-ADC full scales (spec §4.8), with or without a drawn pattern, noise off and on:
    the Triton kernel gives the torch backend's bits."""
    from asim import ColumnRanges
    from asim.engine import compile_program, linear_tiles

    rng, g = random.Random(1800 + seed), torch.Generator().manual_seed(seed)
    signed = rng.random() < 0.5
    macro = _real_adc(rng, _macro(rng, signed).replace(division="ieee"))
    noisy, drawn, group = seed % 2 == 1, rng.random() < 0.5, rng.choice([1, 2])
    noise = NoiseConfig(
        rand_sigma=3.0 if noisy else 0.0,
        column_offset_lsb=0.8 if drawn else 0.0,
        column_gain_pct=2.0 if drawn else 0.0,
        adc_group=group,
        chip_seed=seed,
    )
    B, M, R, O = rng.choice([1, 2]), rng.randint(1, 9), rng.randint(1, 20), rng.randint(1, 6)
    x = _ints(g, (B, M, R), macro.input_bits, signed)
    w = _ints(g, (R, O), macro.weight_bits, True)
    tiles = linear_tiles(R, macro.nrow)
    n_adc = -(-(O * macro.weight_bits) // group)
    top = macro.adc_rows
    ranges = ColumnRanges.of([[rng.randint(1, top) for _ in range(n_adc)] for _ in tiles], group)
    program = compile_program(macro, noise, signed, tiles, O, ranges=ranges)
    assert program.pattern.vcls is not None or program.ranges is None
    stream = NoiseStream(rng.getrandbits(64), torch.arange(B) * 3 + 1, M)
    results = []
    for name in ("torch", "triton"):
        monkeypatch.setenv("ASIM_BACKEND", name)
        reset_backends_used()
        results.append(acim_matmul(x, w, program=program, stream=stream, exact_shortcut=False))
        assert backends_used() == {name}
    assert bits(results[0]) == bits(results[1]), (macro, noise, ranges)
