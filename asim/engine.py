"""The bit-level ACiM matrix-vector engine: one routine for conv, linear and attention.

Layers lower their operation to ``Y = X_int @ W_int`` over integer codes and call
:func:`acim_matmul`. It reproduces the reference's per-cycle model (spec §3-§8) bit for bit
with noise off, without its per-cycle loop:

* all bit-plane column MACs of one tile come from a single GEMM of stacked 0/1 planes
  (bf16 inputs are exact: every sum is an integer <= 256 when a tile has <= 256 rows);
* the ADC, noise and shift-and-add epilogue runs on whole chunks with in-place ops; only the
  final float32 accumulation follows the spec's cycle order, because rounding depends on it;
* read-out noise is one Gaussian per partial sum (the reference's two terms summed);
* with a lossless ADC and no noise the cycles are skipped: the result is the exact integer
  product, taken only when a bound proves that the spec's float32 accumulation is exact too;
* work is chunked so memory stays bounded whatever the batch size.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import Division, MacroConfig, NoiseConfig, SignCycleCompression, WeightParallelADC
from .noise import GaussianNoise, build_noise

__all__ = [
    "CHUNK_ELEMENTS",
    "Cycle",
    "Patches",
    "acim_matmul",
    "activation_cycles",
    "compact_codes",
    "exact_product",
    "linear_tiles",
    "shortcut_applies",
]

CHUNK_ELEMENTS = 1 << 22
"""Partial sums handled per chunk (4 Mi float32 = 16 MiB per temporary)."""

_EXACT_LIMIT = float(1 << 24)  # float32 represents every integer up to 2^24


@dataclass(frozen=True)
class Cycle:
    """One activation cycle of a bit-serial or bit-parallel scheme (spec §4, §5).

    Attributes:
        bits: activation bit positions applied together, ascending.
        shift: activation part of the power-of-two shift.
        sign: True for the separate sign-plane cycle of signed bit-parallel inputs.
    """

    bits: tuple[int, ...]
    shift: int
    sign: bool = False

    @property
    def levels(self) -> int:
        """``2^width - 1``: multi-level input range; the full scale is ``levels * nrow``."""
        return (1 << len(self.bits)) - 1


def activation_cycles(input_bits: int, enc_bits: int | None, signed: bool) -> list[Cycle]:
    """Cycles indexed ``c = 0 .. C-1`` (processed from ``C-1`` down), spec §5.1/§5.2.

    Bit-serial is the special case ``enc_bits = 1``; leftover bits go to the top cycle.
    """
    e = enc_bits or 1
    mag = input_bits - 1 if signed else input_bits
    n, r = -(-mag // e), mag % e
    cycles = []
    for c in range(n):
        width = r if (c == n - 1 and r) else e
        cycles.append(Cycle(tuple(range(c * e, c * e + width)), c * e))
    if signed:
        cycles.append(Cycle((input_bits - 1,), input_bits - 1, sign=True))
    return cycles


def linear_tiles(rows: int, nrow: int) -> list[tuple[int, int]]:
    """Consecutive tiles of ``nrow`` reduction rows (spec §3.2)."""
    return [(s, min(s + nrow, rows)) for s in range(0, rows, nrow)]


@dataclass
class _Plan:
    """Per-call constants derived from the macro: cycles, signs, shifts, noise gating."""

    cycles: list[Cycle]
    coef: list[list[float]]  # coef[i][c] = +-2^(i + shift_c)
    analog: list[list[bool]]  # noise applied to (weight bit i, cycle c)
    digital_exact: list[list[bool]]  # exact count instead of ADC value
    voted: list[list[bool]]
    full_scale: list[int]  # per cycle, in counts

    @property
    def widths_uniform(self) -> bool:
        return all(len(c.bits) == 1 for c in self.cycles)


def _plan(macro: MacroConfig, signed: bool) -> _Plan:
    w = macro.weight_bits
    cycles = activation_cycles(macro.input_bits, macro.input_enc_bits, signed)
    n = len(cycles)
    coef, analog, exact, voted = [], [], [], []
    for i in range(w):
        row_c, row_a, row_e, row_v = [], [], [], []
        for c, cyc in enumerate(cycles):
            msb_w = i == w - 1
            negate = (not msb_w) if cyc.sign else msb_w
            row_c.append((-1.0 if negate else 1.0) * float(2 ** (i + cyc.shift)))
            d = (w - 1 - i) + (n - 1 - c)  # anti-diagonal distance from the MSB x MSB corner
            digital = d < macro.hybrid_levels
            row_a.append(not digital)
            row_e.append(digital and macro.hybrid_exact)
            row_v.append(d < macro.vote_levels and macro.vote_samples > 1)
        coef.append(row_c)
        analog.append(row_a)
        exact.append(row_e)
        voted.append(row_v)
    return _Plan(cycles, coef, analog, exact, voted, [c.levels * macro.nrow for c in cycles])


def _adc_values(counts: Tensor, full_scale: int, adc_levels: int, reciprocal: bool) -> Tensor:
    """Noise-free ADC output ``fl(fl(q/A)*F)`` for integer counts, spec §4.1 steps 2, 4, 5."""
    a = _div(counts, full_scale, reciprocal).clamp_(0, 1)
    q = a.mul_(adc_levels).round_()
    return _div(q, adc_levels, reciprocal).mul_(full_scale)


def _div(t: Tensor, d: float, reciprocal: bool, inplace: bool = False) -> Tensor:
    """Spec division semantics: IEEE division (CPU canonical) or by float32 reciprocal (Q10)."""
    if reciprocal:
        r = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(d, dtype=torch.float32)
        return t.mul_(r.item()) if inplace else t * r.item()
    if t.device.type == "cpu":
        return t.div_(d) if inplace else t / d
    dt = torch.tensor(d, dtype=t.dtype, device=t.device)
    return t.div_(dt) if inplace else t / dt


_LOSSLESS_CACHE: dict[tuple[int, int, bool], bool] = {}


def _adc_is_identity(full_scale: int, adc_levels: int, reciprocal: bool) -> bool:
    """Does the noise-free ADC return every count 0..F unchanged (spec §4.3)?"""
    key = (full_scale, adc_levels, reciprocal)
    if key not in _LOSSLESS_CACHE:
        m = torch.arange(full_scale + 1, dtype=torch.float32)
        _LOSSLESS_CACHE[key] = bool(
            torch.equal(_adc_values(m.clone(), full_scale, adc_levels, reciprocal), m)
        )
    return _LOSSLESS_CACHE[key]


_MULTIPLIER_CACHE: dict[tuple[int, int], float] = {}


def _code_multiplier(full_scale: int, adc_levels: int) -> float:
    """``fl(A/F)`` if ``rne(m * fl(A/F))`` equals the spec's noise-free ADC code
    ``rne(fl(m/F) * A)`` for every count ``m`` in ``[0, F]`` (checked exhaustively), else 0.
    The native kernel then skips one division per conversion."""
    key = (full_scale, adc_levels)
    if key not in _MULTIPLIER_CACHE:
        m = torch.arange(full_scale + 1, dtype=torch.float32)
        ref = (m / full_scale).clamp_(0, 1).mul_(adc_levels).round_()
        mul = torch.tensor(float(adc_levels)) / torch.tensor(float(full_scale))
        fast = (m * mul).round_()
        _MULTIPLIER_CACHE[key] = mul.item() if torch.equal(fast, ref) else 0.0
    return _MULTIPLIER_CACHE[key]


# --------------------------------------------------------------------------------------------
# Random numbers: one generator stream split over threads on CPU (torch's CPU RNG is serial).

_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool(n: int) -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < n:
            _POOL = concurrent.futures.ThreadPoolExecutor(
                max_workers=n, thread_name_prefix="asim-rng"
            )
        return _POOL


def _randn(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normals; on CPU filled by several seeded generators in parallel threads."""
    out = torch.empty(shape, dtype=torch.float32, device=like.device)
    nthreads = torch.get_num_threads()
    if like.device.type != "cpu" or out.numel() < (1 << 18) or nthreads < 2:
        return out.normal_(generator=generator)
    seeds = torch.randint(0, 2**62, (nthreads,), generator=generator).tolist()
    parts = out.view(-1).chunk(nthreads)
    inference = torch.is_inference_mode_enabled()  # thread-local: pass it to the workers

    def fill(k: int) -> None:
        with torch.inference_mode(inference):
            parts[k].normal_(generator=torch.Generator().manual_seed(seeds[k]))

    list(_pool(nthreads).map(fill, range(len(parts))))
    return out


# --------------------------------------------------------------------------------------------


def _codes(t: Tensor, bits: int, signed: bool) -> Tensor:
    """Two's-complement (signed) or plain (unsigned) codes as int32 (spec §2)."""
    q = t.to(torch.int32)
    if signed:
        q = torch.where(q < 0, q + (1 << bits), q)
    return q


def _planes(codes: Tensor, bits: int, dtype: torch.dtype, dim: int) -> Tensor:
    """0/1 bit planes stacked along a new dim ``dim`` in ascending bit order."""
    shape = list(codes.shape)
    shape.insert(dim, bits)
    out = torch.empty(shape, dtype=dtype, device=codes.device)
    tmp = torch.empty_like(codes)
    for b in range(bits):
        torch.bitwise_right_shift(codes, b, out=tmp)
        out.select(dim, b).copy_(tmp.bitwise_and_(1))
    return out


_NATIVE_IB = 4  # the native kernel counts weight bits in blocks of 4 (epilogue.c: IB)


def compact_codes(codes: Tensor, bits: int, signed: bool) -> Tensor:
    """Integer codes as uint8 (unsigned) or int8 (signed) when they have <= 8 bits, else
    int32: ``acim_matmul`` accepts them as they are, and copies of 8-bit codes (a conv's
    unfold) move 4x less memory than float32."""
    return codes.to((torch.int8 if signed else torch.uint8) if bits <= 8 else torch.int32)


def _in_place_kind(dtype: torch.dtype, bits: int) -> int | None:
    """The native packer's kind for codes of ``dtype`` read as they are (0 float32, 1 int32,
    2 one byte: uint8, or int8 holding <= 8 bits), or None if they must be converted."""
    if dtype == torch.uint8 or (dtype == torch.int8 and bits <= 8):
        return 2
    return {torch.float32: 0, torch.int32: 1}.get(dtype)


def _native_codes(t: Tensor, bits: int) -> tuple[Tensor, int]:
    """Rows of codes as the native packer reads them (unit last stride), and their kind."""
    kind = _in_place_kind(t.dtype, bits)
    if kind is None:
        t, kind = (t.to(torch.float32), 0) if t.dtype.is_floating_point else (t.to(torch.int32), 1)
    return _rows(t), kind


def _rows(t: Tensor) -> Tensor:
    return t if t.dim() == 2 and t.stride(-1) == 1 and t.stride(0) >= t.shape[1] else t.contiguous()


def _gemm_dtype(max_rows: int, device: torch.device, float_planes: bool) -> torch.dtype:
    if float_planes:
        return torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if max_rows <= 256 else torch.float32
    return torch.float16 if max_rows <= 2048 else torch.float32


def _magnitude_bound(codes: Tensor, bits: int, signed: bool) -> Tensor:
    """V(q): |q| for q >= 0 and 2^(b-1) for q < 0. Summed products V(w)V(x) bound every
    prefix sum of the spec's cycle accumulation (see :func:`_accumulation_is_exact`)."""
    if not signed:
        return codes
    return torch.where(codes < 0, torch.full_like(codes, float(1 << (bits - 1))), codes)


def _accumulation_is_exact(bound: Tensor, signed_input: bool) -> bool:
    """True if no prefix sum of the cycle accumulation can leave float32's exact integers.

    The spec accumulates +-M*2^(i+j) terms in float32 (spec §4.2). All are integers, so the
    result is the exact integer product when no prefix sum exceeds 2^24. The positive and
    the negative terms are each bounded by ``bound = sum V(w) V(x)`` (twice that with signed
    inputs). ``bound`` comes from non-negative operands, so float rounding can only push it
    up: a computed value below the limit proves the true one is.
    """
    if bound.numel() == 0:
        return True
    factor = 2.0 if signed_input else 1.0
    return bool(bound.amax() * factor < _EXACT_LIMIT)


def _cycles_exact(plan: _Plan, macro: MacroConfig) -> bool:
    reciprocal = macro.division == Division.reciprocal
    return all(
        plan.digital_exact[i][c]
        or _adc_is_identity(plan.full_scale[c], macro.adc_levels, reciprocal)
        for i in range(macro.weight_bits)
        for c in range(len(plan.cycles))
    )


def shortcut_applies(
    macro: MacroConfig, noise: NoiseConfig | None, signed_input: bool, plan: _Plan | None = None
) -> bool:
    """Whether every cycle returns its exact count (lossless ADC, no noise, spec §4.3), so
    the cycles can be skipped for the integer product (subject to the 2^24 bound)."""
    if macro.weight_parallel or build_noise(noise) is not None:
        return False
    if noise is not None and (noise.compression_alpha or noise.cell_sigma):
        return False
    return _cycles_exact(plan or _plan(macro, signed_input), macro)


def exact_product(
    x: Tensor,
    w: Tensor,
    macro: MacroConfig,
    signed_input: bool,
    product=torch.matmul,
    row_sums=None,
) -> Tensor | None:
    """``product(x, w)`` of integer codes, or None when the float32 cycle accumulation could
    round (then the cycles must run). Valid only where :func:`shortcut_applies`.

    Args:
        product: the bilinear op (``torch.matmul``; a conv for ``ACiMConv2d``).
        row_sums: per-output sums of an operand's rows under ``product`` (default: sums
            over the last dim); with ``max V(w)`` they give a cheap first bound.
    """
    if not x.dtype.is_floating_point:  # compact integer codes
        x = x.float()
    vx = _magnitude_bound(x, macro.input_bits, signed_input)
    vw = _magnitude_bound(w, macro.weight_bits, True)
    sums = vx.sum(-1, keepdim=True) if row_sums is None else row_sums(vx)
    if not _accumulation_is_exact(sums * vw.amax(), signed_input):  # >= sum V(x)V(w)
        if not _accumulation_is_exact(product(vx, vw), signed_input):
            return None
    return product(x, w)


class Patches:
    """An activation matrix ``X [M, R]`` read in place from a strided view of codes.

    ``view`` is any strided view whose first ``row_dims`` dims index the rows and the rest
    the columns, e.g. a conv input's ``(B, Ho, Wo, C, kh, kw)`` patch view: ``X`` is its
    unfolded input without the copy. The native CPU engine reads the codes in place
    (``X[m, r]`` is at ``view.data_ptr()`` plus ``row_offset[m] + col_offset[r]`` elements);
    the other paths call :meth:`materialize`.
    """

    def __init__(self, view: Tensor, row_dims: int):
        self.view = view
        sizes, strides = view.shape, view.stride()
        self.row_offset = _offsets(sizes[:row_dims], strides[:row_dims], view.device)
        self.col_offset = _offsets(sizes[row_dims:], strides[row_dims:], view.device)
        self.shape = (self.row_offset.numel(), self.col_offset.numel())

    @property
    def device(self) -> torch.device:
        return self.view.device

    def materialize(self) -> Tensor:
        """``X`` as a contiguous ``[M, R]`` tensor (one copy)."""
        return self.view.reshape(self.shape)


def _offsets(sizes, strides, device) -> Tensor:
    off = torch.zeros((), dtype=torch.int64)
    for n, st in zip(sizes, strides, strict=True):
        off = off.unsqueeze(-1) + torch.arange(n, dtype=torch.int64) * st
    return off.reshape(-1).to(device)


def acim_matmul(
    x_int: Tensor | Patches,
    w_int: Tensor,
    *,
    macro: MacroConfig,
    signed_input: bool,
    tiles: Sequence[tuple[int, int]] | None = None,
    noise: NoiseConfig | None = None,
    generator: torch.Generator | None = None,
    cell_noise: Tensor | None = None,
    exact_shortcut: bool = True,
) -> Tensor:
    """Integer-domain accumulator ``Y`` of the macro computing ``x_int @ w_int``.

    Args:
        x_int: activation-role codes ``[..., M, R]``: integer-valued float32, or an
            integer dtype (:func:`compact_codes`), or a 2-D :class:`Patches`.
        w_int: weight-role codes ``[R, O]`` or ``[..., R, O]`` with the same leading dims
            as ``x_int`` (signed, ``|w| <= 2^(weight_bits-1) - 1``).
        macro: bit widths, array size, ADC and cycle scheme.
        signed_input: whether ``x_int`` holds signed codes (two's-complement sign plane).
        tiles: reduction-row ranges ``(start, stop)`` loaded into the array one after the
            other; each is normalised by ``nrow`` (spec §3). Default: consecutive ``nrow``.
            Rows outside every tile are not computed (the reference's dropped channels).
        noise: read-out noise and current-domain effects; None is noise-free.
        generator: random stream for the noise.
        cell_noise: additive deviation of every stored weight bit, ``[..., R, weight_bits, O]``
            in bit units (weight-cell variation, spec §8.1), or None.
        exact_shortcut: try the lossless shortcut (pass False when the caller already did).

    Returns:
        ``Y`` as float32 ``[..., M, O]``, to be de-quantized by the caller (spec §1.4).
    """
    patches = x_int if isinstance(x_int, Patches) else None
    if patches is not None:
        x_int = torch.empty(patches.shape, device="meta")  # for the shape checks
    if x_int.dim() < 2 or w_int.dim() < 2:
        raise ValueError("acim_matmul expects x_int [..., M, R] and w_int [..., R, O]")
    rows = x_int.shape[-1]
    if w_int.shape[-2] != rows:
        raise ValueError(
            f"acim_matmul: reduction sizes differ: x has {rows}, w has {w_int.shape[-2]}"
        )
    if tiles is None:
        tiles = linear_tiles(rows, macro.nrow)
    tiles = [(int(a), int(b)) for a, b in tiles if b > a]
    lead = x_int.shape[:-2]
    M, O = x_int.shape[-2], w_int.shape[-1]
    x3 = x_int.reshape(-1, M, rows) if patches is None else patches
    w3 = w_int.reshape(-1, rows, O)
    batch = 1 if patches is not None else x3.shape[0]
    if w3.shape[0] not in (1, batch):
        raise ValueError("acim_matmul: w_int leading dims must be absent or match x_int's")
    device = w_int.device
    out = torch.zeros(batch, M, O, dtype=torch.float32, device=device)
    if not tiles or M == 0 or O == 0:
        return out.reshape(*lead, M, O)

    readout = build_noise(noise)
    alpha = noise.compression_alpha if noise is not None else 0.0
    if cell_noise is not None:
        cell_noise = cell_noise.reshape(-1, rows, macro.weight_bits, O)

    plan = _plan(macro, signed_input)
    shortcut = exact_shortcut and shortcut_applies(macro, noise, signed_input, plan)
    if patches is not None and (macro.weight_parallel or shortcut):
        x3 = patches.materialize()[None]  # these paths read a tensor
    if macro.weight_parallel:
        y = _weight_parallel(x3, w3, macro, signed_input, tiles, noise, generator)
        return y.reshape(*lead, M, O)

    if shortcut:
        used = _rows_used(tiles, rows, device)
        xs, ws = _select_rows(x3, used), _select_rows(w3, used, dim=-2)
        y = exact_product(xs, ws, macro, signed_input)
        if y is not None:
            return y.reshape(*lead, M, O)

    reciprocal = macro.division == Division.reciprocal
    late_sign = (
        alpha != 0.0
        and signed_input
        and macro.input_enc_bits is not None
        and noise.sign_cycle_compression == SignCycleCompression.normalised
    )
    path = _CyclePath(
        x3,
        w3,
        macro,
        plan,
        signed_input,
        tiles,
        readout,
        alpha,
        cell_noise,
        generator,
        reciprocal,
        late_sign,
    )
    if isinstance(x3, Patches) and (
        not path.popcount or _in_place_kind(x3.view.dtype, macro.input_bits) is None
    ):
        path.x3 = x3.materialize()[None]  # only the native kernel reads patches in place
    path.run(out)
    return out.reshape(*lead, M, O)


def _rows_used(tiles, rows: int, device) -> slice | Tensor:
    spans = sorted(tiles)
    contiguous = all(spans[k][1] == spans[k + 1][0] for k in range(len(spans) - 1))
    if spans[0][0] == 0 and contiguous:
        return slice(0, spans[-1][1])
    idx = sorted({r for a, b in tiles for r in range(a, b)})
    return torch.tensor(idx, dtype=torch.long, device=device)


def _select_rows(t: Tensor, used, dim: int = -1) -> Tensor:
    if isinstance(used, slice):
        return t[..., used] if dim == -1 else t[..., used, :]
    return t.index_select(t.dim() + dim, used)


class _CyclePath:
    """Vectorized per-cycle model: GEMM of stacked planes, chunked ADC/noise epilogue."""

    def __init__(
        self,
        x3,
        w3,
        macro,
        plan,
        signed,
        tiles,
        readout,
        alpha,
        cell_noise,
        generator,
        reciprocal,
        late_sign=False,
    ):
        self.x3, self.w3, self.macro, self.plan = x3, w3, macro, plan
        self.signed, self.tiles, self.readout, self.alpha = signed, tiles, readout, alpha
        self.cell_noise, self.generator, self.reciprocal = cell_noise, generator, reciprocal
        self.late_sign = late_sign  # compress the sign cycle after noise (Q28 compatibility)
        self.wb, self.xb = macro.weight_bits, macro.input_bits
        self.ncyc = len(plan.cycles)
        max_rows = max(b - a for a, b in tiles)
        self.dtype = _gemm_dtype(max_rows, x3.device, cell_noise is not None)
        self.O = w3.shape[-1]
        self._wpt: Tensor | None = None
        self.analog_mask = None
        if readout is not None and not all(all(r) for r in plan.analog):
            mask = torch.tensor(plan.analog, dtype=torch.float32)  # (w, C)
            self.analog_mask = mask.view(self.wb, 1, 1, self.ncyc, 1).to(x3.device)
        fs = plan.full_scale
        self.uniform_fs = all(f == fs[0] for f in fs)
        self.fs_vec = torch.tensor(fs, dtype=torch.float32, device=x3.device).view(
            1, 1, 1, self.ncyc, 1
        )  # counts are laid out (w, B, O, C, Mc)
        self.exact_pairs = [
            (i, c) for i in range(self.wb) for c in range(self.ncyc) if plan.digital_exact[i][c]
        ]
        self.voted_pairs = (
            [(i, c) for i in range(self.wb) for c in range(self.ncyc) if plan.voted[i][c]]
            if readout is not None
            else []
        )
        if readout is not None and readout.constant_sigma(macro.adc_levels) == 0.0:
            self.readout = None
        self.native = self._native_args()
        self.popcount = self.native is not None and cell_noise is None  # else: GEMM path

    def _native_args(self) -> dict | None:
        """Arguments of the native popcount kernel, or None where the torch path must run
        (CUDA, majority voting, measured-noise tables, > MAXBITS planes, no C compiler)."""
        if (
            self.x3.device.type != "cpu"
            or self.voted_pairs
            or self.late_sign
            or not (self.readout is None or isinstance(self.readout, GaussianNoise))
        ):
            return None
        from ._native import MAXBITS, epilogue_lib

        if max(self.wb, self.xb) > MAXBITS:  # the kernel holds at most MAXBITS planes
            return None
        lib = epilogue_lib()
        if lib is None:
            return None
        bits = torch.zeros(self.ncyc, MAXBITS, dtype=torch.int32)
        for c, cyc in enumerate(self.plan.cycles):
            bits[c, : len(cyc.bits)] = torch.tensor(cyc.bits, dtype=torch.int32)
        plan = self.plan
        self._wpk: dict[int, tuple[Tensor, Tensor]] = {}
        nw = [-(-(b - a) // 64) for a, b in self.tiles]
        return {
            "lib": lib,
            "wpad": -(-self.wb // _NATIVE_IB) * _NATIVE_IB,
            "nw": nw,
            "tiles": torch.tensor(self.tiles, dtype=torch.int64),
            "nbits": torch.tensor([len(c.bits) for c in plan.cycles], dtype=torch.int32),
            "bits": bits,
            "fs": torch.tensor(plan.full_scale, dtype=torch.float32),
            "qmul": torch.tensor(
                [_code_multiplier(f, self.macro.adc_levels) for f in plan.full_scale],
                dtype=torch.float32,
            ),
            "coef": torch.tensor(plan.coef, dtype=torch.float32),
            "analog": torch.tensor(plan.analog, dtype=torch.uint8),
            "exact": torch.tensor(plan.digital_exact, dtype=torch.uint8),
            "rand_var": getattr(self.readout, "rand_var", 0.0),
            "nl_var": getattr(self.readout, "nl_var", 0.0),
        }

    def _packed_weights(self, b: int) -> tuple[Tensor, Tensor]:
        """Weight planes of every tile packed 64 rows per word, per tile ``[O][wpad][nw]``
        (planes >= weight_bits zero), concatenated; and each tile's word offset."""
        if b not in self._wpk:
            nat = self.native
            wpad, nws = nat["wpad"], nat["nw"]
            wc, kind = _native_codes(self.w3[b if self.w3.shape[0] > 1 else 0].t(), self.wb)
            offsets = [0]
            for nw in nws:
                offsets.append(offsets[-1] + self.O * wpad * nw)
            out = torch.zeros(max(1, offsets[-1]), dtype=torch.int64)
            for (r0, r1), nw, off in zip(self.tiles, nws, offsets, strict=False):
                nat["lib"].acim_pack(
                    wc.data_ptr(),
                    kind,
                    wc.stride(0),
                    0,
                    self.O,
                    r0,
                    r1,
                    self.wb,
                    out.data_ptr() + 8 * off,
                    nw,
                    1,
                    wpad * nw,
                )
            self._wpk[b] = (out, torch.tensor(offsets[:-1], dtype=torch.int64))
        return self._wpk[b]

    def _chunk_popcount(self, x: Tensor, b_first: int, y: Tensor) -> None:
        """Binary GEMM by popcount fused with the ADC epilogue, one C call per matrix."""
        nat, lib = self.native, self.native["lib"]
        ptr = {k: v.data_ptr() for k, v in nat.items() if isinstance(v, Tensor)}
        noisy = self.readout is not None
        ntiles = len(self.tiles)
        if isinstance(x, tuple):  # (Patches, m0, m1): read in place through offsets
            patches, m0, m1 = x
            B, Mc = 1, m1 - m0
            codes, kind = patches.view, _in_place_kind(patches.view.dtype, self.xb)
            rows = patches.row_offset[m0:m1]
            offsets = (rows.data_ptr(), patches.col_offset.data_ptr())
        else:
            B, Mc, _ = x.shape
            offsets = (None, None)
        for b in range(B):
            if offsets[0] is None:
                codes, kind = _native_codes(x[b], self.xb)
            wpk, woff = self._packed_weights(b_first + b)
            seeds = (
                torch.randint(0, 2**62, (ntiles,), generator=self.generator)
                if noisy
                else torch.zeros(ntiles, dtype=torch.int64)
            )
            yb = y[b]  # (Mc, O), unit stride along O
            rc = lib.acim_popcount_run(
                codes.data_ptr(),
                kind,
                codes.stride(0),
                *offsets,
                Mc,
                ntiles,
                ptr["tiles"],
                wpk.data_ptr(),
                woff.data_ptr(),
                self.O,
                yb.data_ptr(),
                yb.stride(0),
                self.wb,
                nat["wpad"],
                self.xb,
                self.ncyc,
                ptr["nbits"],
                ptr["bits"],
                ptr["fs"],
                ptr["qmul"],
                ptr["coef"],
                ptr["analog"],
                ptr["exact"],
                float(self.macro.adc_levels),
                int(self.reciprocal),
                float(self.alpha),
                nat["rand_var"],
                nat["nl_var"],
                float(self.macro.nrow),
                int(noisy),
                seeds.data_ptr(),
                max(1, torch.get_num_threads()),
            )
            if rc != 0:
                raise MemoryError(
                    "asim: the native engine could not allocate its scratch "
                    "memory; reduce the batch size"
                )

    @property
    def wpt(self) -> Tensor:
        """Weight bit planes for the GEMM path, (Bw, w*O, R), built on first use."""
        if self._wpt is None:
            wp = _planes(_codes(self.w3, self.wb, True), self.wb, torch.float32, dim=2)
            if self.cell_noise is not None:
                wp = wp + self.cell_noise  # (Bw, R, w, O)
            Bw, R, _, O = wp.shape
            # (Bw, w*O, R): the GEMM computes W^T X^T so its output is cycle-major.
            self._wpt = wp.to(self.dtype).permute(0, 2, 3, 1).reshape(Bw, self.wb * O, R)
        return self._wpt

    def run(self, out: Tensor) -> None:
        Bt, M, R = (1, *self.x3.shape) if isinstance(self.x3, Patches) else self.x3.shape
        per_row = self.xb * self.wb * self.O
        if self.popcount:
            per_row = max(self.O, R)  # no per-cycle intermediates; packed rows are R bytes
        rows_per_chunk = max(1, CHUNK_ELEMENTS // per_row)
        b_step = max(1, min(Bt, rows_per_chunk // max(M, 1)))
        m_step = M if b_step > 1 or M <= rows_per_chunk else rows_per_chunk
        for b0 in range(0, Bt, b_step):
            b1 = min(Bt, b0 + b_step)
            for m0 in range(0, M, m_step):
                m1 = min(M, m0 + m_step)
                x = (self.x3, m0, m1) if isinstance(self.x3, Patches) else self.x3[b0:b1, m0:m1]
                self._chunk(x, (b0, b1), out[b0:b1, m0:m1])

    def _chunk(self, x: Tensor, batch: tuple[int, int], y: Tensor) -> None:
        if self.popcount:
            self._chunk_popcount(x, batch[0], y)
            return
        wpt = self.wpt if self.wpt.shape[0] == 1 else self.wpt[batch[0] : batch[1]]
        B, Mc, _ = x.shape
        # Planes laid out (B, R, x, Mc): a tile is a contiguous block of rows, so the GEMM
        # reads it in place.
        codes = _codes(x, self.xb, self.signed).transpose(1, 2).contiguous()  # (B, R, Mc)
        xpt = _planes(codes, self.xb, self.dtype, dim=2).view(B, -1, self.xb * Mc)
        coef = self.plan.coef
        yt = torch.zeros(B, self.O, Mc, dtype=torch.float32, device=x.device)  # Y^T
        for r0, r1 in self.tiles:
            g = torch.matmul(wpt[:, :, r0:r1], xpt[:, r0:r1])  # (B, w*O, x*Mc)
            values = self._adc(self._cycle_counts(g.view(B, self.wb, self.O, self.xb, Mc)))
            # The spec's float32 accumulation order: weight bit, then cycle, descending.
            for i in range(self.wb - 1, -1, -1):
                for c in range(self.ncyc - 1, -1, -1):
                    yt.add_(values[i, :, :, c], alpha=coef[i][c])
        y.copy_(yt.transpose(1, 2))

    def _cycle_counts(self, g: Tensor) -> Tensor:
        """(B, w, O, x, Mc) bit MACs -> (w, B, O, C, Mc) float32 cycle counts (spec §5)."""
        B, w, O, _, Mc = g.shape
        src = g.transpose(0, 1)  # (w, B, O, x, Mc); a no-op copy pattern when B == 1
        if self.plan.widths_uniform and not self.signed:
            return src.to(torch.float32, memory_format=torch.contiguous_format)
        counts = torch.empty(w, B, O, self.ncyc, Mc, dtype=torch.float32, device=g.device)
        for c, cyc in enumerate(self.plan.cycles):
            dst = counts[:, :, :, c]
            dst.copy_(src[:, :, :, cyc.bits[0]])
            for k, bit in enumerate(cyc.bits[1:], start=1):
                dst.add_(src[:, :, :, bit].float(), alpha=float(1 << k))
        return counts

    def _adc(self, counts: Tensor) -> Tensor:
        """Normalise, add noise, convert and rescale every cycle at once (spec §4.1)."""
        A, rec = self.macro.adc_levels, self.reciprocal
        exact = {p: counts[p[0], :, :, p[1]].clone() for p in self.exact_pairs}
        sign = self.ncyc - 1  # the sign cycle of signed bit-parallel inputs
        if self.alpha:
            raw = counts[:, :, :, sign].clone() if self.late_sign else None
            counts = counts / (counts * self.alpha + 1.0)
            if raw is not None:
                counts[:, :, :, sign] = raw
        a = self._normalise(counts)
        a.clamp_(0, 1)
        voted_base = {p: a[p[0], :, :, p[1]].clone() for p in self.voted_pairs}
        if self.readout is not None:
            self._add_noise(a, self.analog_mask)
            a.clamp_(0, 1)
        if self.late_sign:
            s = a[:, :, :, sign]
            s.copy_(s / (s * self.alpha + 1.0))
        q = a.mul_(A).round_()
        for (i, c), base in voted_base.items():
            q[i, :, :, c] = self._vote(base)
        v = _div(q, A, rec, inplace=True)
        v = v.mul_(self.plan.full_scale[0]) if self.uniform_fs else v.mul_(self.fs_vec)
        for (i, c), m in exact.items():
            v[i, :, :, c] = m
        return v

    def _normalise(self, counts: Tensor) -> Tensor:
        if self.uniform_fs:
            return _div(counts, self.plan.full_scale[0], self.reciprocal, inplace=True)
        if self.reciprocal:
            return counts.mul_(1.0 / self.fs_vec)
        return counts.div_(self.fs_vec)

    def _noise_moments(self, a: Tensor):
        sigma = self.readout.constant_sigma(self.macro.adc_levels)
        if sigma is not None:
            return None, sigma
        level = a * self.macro.nrow  # per-level count (spec Q11)
        return self.readout.moments(level, self.macro.adc_levels)

    def _add_noise(self, a: Tensor, mask: Tensor | None) -> None:
        offset, sigma = self._noise_moments(a)
        z = _randn(a.shape, a, self.generator)
        if mask is not None:
            z.mul_(mask)
        if isinstance(sigma, float):
            a.add_(z, alpha=sigma)
        else:
            a.addcmul_(z, sigma)
        if offset is not None:
            a.add_(offset * mask if mask is not None else offset)

    def _vote(self, base: Tensor) -> Tensor:
        """Most frequent of K noisy conversions; ties go to the smallest code (spec §8.2)."""
        A, K = self.macro.adc_levels, self.macro.vote_samples
        samples = []
        for _ in range(K):
            a = base.clone()
            self._add_noise(a, None)
            samples.append(a.clamp_(0, 1).mul_(A).round_())
        q = torch.stack(samples)  # (K, ...)
        count = torch.zeros_like(q)
        for k in range(K):
            count += (q == q[k]).float()
        key = count * (A + 1) + (A - q)  # most votes first, then the smallest code
        pick = key.argmax(dim=0, keepdim=True)
        return q.gather(0, pick).squeeze(0)


def _weight_parallel(x3, w3, macro, signed, tiles, noise, generator) -> Tensor:
    """W4A4 weight full bit-parallel: one signed ADC per output on the exact MAC (spec §8.3).

    Follows the fix of quirk Q30: the conv's semantics for every layer, with the ADC full
    scale ``Lu(x) * Ls(w) * rows`` where ``rows = weight_parallel_rows or nrow``.
    """
    if signed:
        raise ValueError(
            "MacroConfig.weight_parallel=true needs unsigned inputs; set "
            "signed_input=False on this layer"
        )
    readout = build_noise(noise)
    if readout is not None and (not isinstance(readout, GaussianNoise) or readout.nl_var > 0):
        raise ValueError(
            "MacroConfig.weight_parallel=true models random Gaussian noise "
            "only; set noise.nonlinear_sigma=0 and noise.file=null"
        )
    if macro.weight_parallel_adc == WeightParallelADC.per_cycle:
        return _weight_parallel_per_cycle(x3, w3, macro, tiles, readout, generator)
    used = _rows_used(tiles, x3.shape[-1], x3.device)
    xs = _select_rows(x3, used).double()
    ws = _select_rows(w3, used, dim=-2).double()
    y = torch.matmul(xs, ws).float()  # exact integer MAC
    return _signed_adc(y, macro, readout, generator, final_division=False)


def _signed_adc(
    y: Tensor, macro: MacroConfig, readout, generator, final_division: bool = True
) -> Tensor:
    """The weight-parallel mode's signed ADC on MAC values ``y`` (spec §8.3): normalise by
    the full scale ``Lu(x) * Ls(w) * rows``, clamp to [-1, 1], add the random noise, clamp,
    round to ``2^(adc-1)-1`` levels and rescale. ``final_division=False`` divides by the
    levels with IEEE division even under ``division="reciprocal"`` (the per-output ADC
    has always done so)."""
    rows = macro.weight_parallel_rows or macro.nrow
    full = float(((1 << macro.input_bits) - 1) * ((1 << (macro.weight_bits - 1)) - 1) * rows)
    half = (1 << (macro.adc_bits - 1)) - 1
    rec = macro.division == Division.reciprocal
    a = _div(y, full, rec).clamp_(-1, 1)
    if readout is not None:
        a.add_(_randn(a.shape, a, generator), alpha=math.sqrt(readout.rand_var)).clamp_(-1, 1)
    q = a.mul_(half).round_()
    return _div(q, half, rec and final_division, inplace=True).mul_(full)


def _weight_parallel_per_cycle(x3, w3, macro, tiles, readout, generator) -> Tensor:
    """``weight_parallel_adc="per_cycle"`` (spec §8.3, the reference linear): after every
    tile, weight bit and cycle (in that order, bits and cycles descending) the running sum
    ``S`` takes the cycle's exact MAC ``+-2^(i+c*e) * M``, then is normalised by the full
    scale, clamped to [-1, 1], noised, clamped, converted by the signed ADC and rescaled."""
    wb = macro.weight_bits
    cycles = activation_cycles(macro.input_bits, macro.input_enc_bits, False)
    xc = _codes(x3, macro.input_bits, False)
    wc = _codes(w3, wb, True)
    S = torch.zeros(x3.shape[0], x3.shape[1], w3.shape[-1], dtype=torch.float32, device=x3.device)
    for r0, r1 in tiles:
        wplanes = [((wc[:, r0:r1] >> i) & 1).float() for i in range(wb)]
        levels = [
            sum(((xc[..., r0:r1] >> b) & 1) << k for k, b in enumerate(cyc.bits)).float()
            for cyc in cycles
        ]  # each cycle's multi-level input
        for i in range(wb - 1, -1, -1):
            for c in range(len(cycles) - 1, -1, -1):
                mac = torch.matmul(levels[c], wplanes[i])  # exact: small integers
                if i == wb - 1:
                    mac = -mac
                S = _signed_adc(
                    S + mac * float(2 ** (i + cycles[c].shift)), macro, readout, generator
                )
    return S
