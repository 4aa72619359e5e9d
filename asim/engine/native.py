"""The native backend: the C kernel (``asim/_native/engine.c``) on CPU.

One call of ``asim_run_call`` per chunk computes the popcount GEMM and the whole epilogue
on the process's OpenMP threads (pthreads when built without OpenMP). Its arguments are
one struct, :class:`asim._native.RunArgs`, mirrored from ``engine.h``; this module fills
it from the call's :class:`~asim.engine.plan.Plan`. Weights are packed into 64-row words
once per programmed array and tile set.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from .._native import CONST, BucketTable, RunArgs, engine_lib
from .backend import run_chunks, why_not_packed
from .operands import OutputRows, Patches
from .plan import code_multiplier, integer_code_form

__all__ = ["BACKEND", "NativeBackend"]

_MAXBITS, _IB = CONST["ASIM_MAXBITS"], CONST["ASIM_IB"]
_KIND = {torch.float32: CONST["ASIM_KIND_F32"], torch.int32: CONST["ASIM_KIND_I32"]}


def in_place_kind(dtype: torch.dtype, bits: int) -> int | None:
    """The packer's kind for codes of ``dtype`` read as they are, or None if they must be
    converted (uint8, or int8 holding <= 8 bits, are read as one byte)."""
    if dtype == torch.uint8 or (dtype == torch.int8 and bits <= 8):
        return CONST["ASIM_KIND_I8"]
    return _KIND.get(dtype)


def native_codes(t: Tensor, bits: int) -> tuple[Tensor, int]:
    """Rows of codes as the packer reads them (unit last stride), and their kind."""
    kind = in_place_kind(t.dtype, bits)
    if kind is None:
        t = t.to(torch.float32) if t.dtype.is_floating_point else t.to(torch.int32)
        kind = _KIND[t.dtype]
    if not (t.dim() == 2 and t.stride(-1) == 1 and t.stride(0) >= t.shape[1]):
        t = t.contiguous()
    return t, kind


def pack_weights(lib, w: Tensor, wb: int, tiles, O: int) -> tuple[Tensor, Tensor]:
    """Weight planes of every tile packed 64 rows per word, per tile ``[O][wpad][nw]``
    (planes >= weight_bits zero), concatenated; and each tile's word offset."""
    wpad = -(-wb // _IB) * _IB
    wc, kind = native_codes(w.t(), wb)
    offsets = [0]
    for a, b in tiles:
        offsets.append(offsets[-1] + O * wpad * (-(-(b - a) // 64)))
    out = torch.zeros(max(1, offsets[-1]), dtype=torch.int64)
    for (r0, r1), off in zip(tiles, offsets, strict=False):
        nw = -(-(r1 - r0) // 64)
        lib.acim_pack(
            wc.data_ptr(), kind, wc.stride(0), 0, O, r0, r1, wb, out.data_ptr() + 8 * off, nw, 1,
            wpad * nw,
        )  # fmt: skip
    return out, torch.tensor(offsets[:-1], dtype=torch.int64)


def bucket_table(table, bits: int | None = None) -> dict | None:
    """The kernel's re-indexing of a code table (engine.h ``asim_bucket_table``), built once
    per table and kept with it (:meth:`asim.noise.CodeTable.form`): for row ``r`` and bucket
    ``b`` (the top ``bits`` bits of ``u``), the code of ``u`` at the bucket's start and where
    the code steps inside the bucket, so most draws are one lookup and one compare. Gives
    exactly :func:`asim.noise.sample_codes`' code (``code = k_lo[r] + #{j : thr[j] <= u}``);
    None when the codes or bucket counts do not fit its encoding (the kernel then searches
    the code table itself)."""
    if bits is None:  # 2^10 buckets per count: a 256-count table is 1 MiB (measured best)
        bits = 10
    bits = max(CONST["ASIM_BUCKET_MIN_BITS"], bits)
    return table.form(("native_buckets", bits), lambda: _bucket_arrays(table, bits))


def _bucket_arrays(table, bits: int) -> dict | None:
    low = 32 - bits
    thr = table.thr
    lo = torch.arange(1 << bits, dtype=torch.int64).view(1, -1) << low
    if thr.numel() >= 1 << CONST["ASIM_BUCKET_SCAN_SHIFT"]:
        return None
    words, scans, most = [], [], 0
    for r0, r1, at_lo, inside in table.bucket_search(bits):
        code = table.base[r0:r1].view(-1, 1) + at_lo
        if (
            int(code.min()) < 0
            or int(code.max()) >= 1 << CONST["ASIM_BUCKET_CODE_BITS"]
            or int(inside.max()) >= 1 << (32 - CONST["ASIM_BUCKET_SCAN_SHIFT"])
        ):
            return None
        one = inside == 1  # its threshold, relative to the bucket's start: 1 .. 2^low - 1
        first = thr[at_lo.clamp(max=max(thr.numel() - 1, 0))] if thr.numel() else lo * 0
        d = torch.where(one, first - lo, torch.where(inside == 0, 1 << low, 0))
        words.append(_as_i32(code | (d << CONST["ASIM_BUCKET_CODE_BITS"])).reshape(-1))
        scan = torch.where(inside > 1, at_lo | (inside << CONST["ASIM_BUCKET_SCAN_SHIFT"]), 0)
        scans.append(scan.to(torch.int32).reshape(-1))
        most = max(most, int(inside.max()))
    return {
        "entry": torch.cat(words).contiguous(),
        "scan": torch.cat(scans).contiguous(),
        "thr": _as_i32(thr).contiguous(),
        "m_min": table.m_min,
        "n_m": table.n_m,
        "bits": bits,
        "max_n": most,
    }


def _small_buckets(table) -> dict | None:
    """:func:`bucket_table` with the fewest bucket bits when that keeps it within
    ``2^PATTERN_BUCKETS_LOG2`` entries, else None (the kernel then searches the code table
    through its guide table)."""
    bits = CONST["ASIM_BUCKET_MIN_BITS"]
    if table.n_m << bits > 1 << PATTERN_BUCKETS_LOG2:
        return None
    return bucket_table(table, bits)


PATTERN_BUCKETS_LOG2 = 24
"""The largest bucket table built for a chip's fine-grid code table (entries, log2): 64 MiB,
about 16 noise blocks of a 255-count range (a ``column_sigma_spread`` of 0.4). Beyond it,
draws search the code table: same codes, slower (``chip_spread`` of
benchmarks/bench_engine.py, ResNet-18: 5.14x the Gaussian run that way, 1.97x with buckets;
thread CPU, ``benchmarks/bench_commits.py --base c060ed8``, docs/noise.md)."""


def _fits_int32(pattern, plan, rows: int) -> bool:
    """Does every column's ``m*G + D`` (spec §4.7) fit int32 for every count ``m`` a cycle
    can reach (``levels * rows``)? Then the kernel computes fine indices in 32-bit lanes."""
    G = pattern.G
    for c, cyc in enumerate(plan.cycles):
        top_m = cyc.levels * rows
        D = pattern.D[:, c]
        lo = min(int(G.min()) * top_m, 0) + int(D.min())
        hi = max(int(G.max()) * top_m, 0) + int(D.max())
        if lo < -(1 << 31) or hi >= 1 << 31:
            return False
    return True


def _as_i32(v: torch.Tensor) -> torch.Tensor:
    """Values in [0, 2^32) as the int32 with the same bits."""
    return torch.where(v >= 1 << 31, v - (1 << 32), v).to(torch.int32)


def _bucket_struct(b: dict | None) -> BucketTable:
    if b is None:
        return BucketTable()  # entry NULL: the kernel uses asim_sample_code
    return BucketTable(
        entry=b["entry"].data_ptr(),
        scan=b["scan"].data_ptr(),
        thr=b["thr"].data_ptr(),
        m_min=b["m_min"],
        n_m=b["n_m"],
        bits=b["bits"],
        max_n=b["max_n"],
    )


def _static_args(program) -> tuple[RunArgs, dict, tuple]:
    """The call-independent fields of ``asim_run`` for ``program``, and the tensors and
    ctypes arrays they point into (kept alive with them)."""
    plan, tiles, O = program.plan, program.tiles, program.outputs
    macro = plan.macro
    ncyc = plan.ncyc
    top = program.top
    bits = torch.zeros(ncyc, _MAXBITS, dtype=torch.int32)
    for c, cyc in enumerate(plan.cycles):
        bits[c, : len(cyc.bits)] = torch.tensor(cyc.bits, dtype=torch.int32)
    pattern = program.pattern
    lookup = pattern is not None or macro.adc_thresholds is not None  # tile_epilogue_lookup
    qmul = [
        code_multiplier(f, macro.adc_levels, top)
        if not (plan.alpha or plan.reciprocal or lookup)
        else 0.0
        for f in plan.full_scale
    ]
    forms = [integer_code_form(q, top) if q else (0, 0, 0) for q in qmul]
    keep = {
        "tiles": torch.tensor(tiles, dtype=torch.int64),
        "nbits": torch.tensor([len(c.bits) for c in plan.cycles], dtype=torch.int32),
        "bits": bits,
        "coef": torch.tensor(plan.coef, dtype=torch.float32),
        "mode": torch.tensor(plan.mode, dtype=torch.uint8),
        "fs": torch.tensor(plan.full_scale, dtype=torch.float32),
        "qmul": torch.tensor(qmul, dtype=torch.float32),
        "late": torch.tensor([plan.late(c) for c in range(ncyc)], dtype=torch.uint8),
    }
    if all(f is not None for f in forms):
        keep["code"] = torch.tensor(forms, dtype=torch.int64).to(torch.int32)
    narrow = False
    if lookup:  # the plan's value tables (spec §4.6) and the chip's pattern (§4.7)
        if pattern is None:
            counts = [plan.value_by_count(c, top) for c in range(ncyc)]
        else:
            counts = [plan.fine_values(c) for c in range(ncyc)]
        offsets = torch.tensor([0, *[t.numel() for t in counts]], dtype=torch.int64).cumsum(0)
        keep["vcnt"] = torch.cat(counts).contiguous()
        keep["vcnt_off"] = offsets[:-1].contiguous()
        if pattern is not None and pattern.vcls is not None:  # §4.8: values per class
            keep["vcode"] = torch.cat(plan.code_values(pattern.classes)).contiguous()
            keep["pat_vclass"] = pattern.vcls.to(torch.int32).contiguous()
            keep["fcode"] = torch.cat([plan.fine_codes(c) for c in range(ncyc)])
            keep["fcode"] = keep["fcode"].to(torch.int32).contiguous()
        elif macro.adc_values is not None:  # else the kernel computes fl(fl(q/A)*F_c)
            keep["vcode"] = torch.cat(plan.code_values()).contiguous()
        if pattern is not None:
            keep["pat_gain"] = pattern.G.contiguous()
            keep["pat_offset"] = pattern.D.contiguous()
            keep["pat_block"] = pattern.cls.to(torch.int32).contiguous()
            top_c = [plan.fine * f for f in plan.full_scale]
            keep["pat_top"] = torch.tensor(top_c, dtype=torch.int32)
            narrow = _fits_int32(pattern, plan, program.max_rows)
    tables = buckets = None
    if plan.noisy:
        if pattern is None:
            tabs = [plan.code_table(c) for c in range(ncyc)]
        else:
            tabs = [plan.fine_code_table(c, pattern.blocks) for c in range(ncyc)]
        structs = [t.native() for t in tabs]
        tables = (type(structs[0]) * ncyc)(*structs)
        keep["code_tables"] = tabs
        if pattern is None:
            keep["buckets"] = [bucket_table(t) for t in tabs]
        else:  # fine-grid rows (§4.7): buckets only while they stay cache-sized
            keep["buckets"] = [_small_buckets(t) for t in tabs]
        buckets = (BucketTable * ncyc)(*[_bucket_struct(b) for b in keep["buckets"]])
    args = RunArgs(
        ntiles=len(tiles),
        tiles=keep["tiles"].data_ptr(),
        O=O,
        w=macro.weight_bits,
        wpad=-(-macro.weight_bits // _IB) * _IB,
        x=macro.input_bits,
        ncyc=ncyc,
        cyc_nbits=keep["nbits"].data_ptr(),
        cyc_bits=bits.data_ptr(),
        coef=keep["coef"].data_ptr(),
        mode=keep["mode"].data_ptr(),
        cyc_fs=keep["fs"].data_ptr(),
        cyc_qmul=keep["qmul"].data_ptr(),
        cyc_code=keep["code"].data_ptr() if "code" in keep else None,
        cyc_late=keep["late"].data_ptr(),
        adc_levels=float(macro.adc_levels),
        alpha=plan.alpha,
        reciprocal=int(plan.reciprocal),
        tables=None if tables is None else ctypes.cast(tables, ctypes.c_void_p),
        buckets=None if buckets is None else ctypes.cast(buckets, ctypes.c_void_p),
        votes=plan.votes,
        pat_narrow=int(narrow),
        **{
            name: keep[name].data_ptr() if name in keep else None
            for name in (
                "vcnt",
                "vcnt_off",
                "vcode",
                "pat_gain",
                "pat_offset",
                "pat_block",
                "pat_top",
                "pat_vclass",
                "fcode",
            )
        },  # fmt: skip
    )
    return args, keep, (tables, buckets)


class NativeBackend:
    """The C kernel on CPU tensors (see the module docstring); one shared instance."""

    name = "native"
    writes_rows = True  # OutputRows: a conv's NCHW output written in place

    def why_not_device(self, device: torch.device) -> str | None:
        if device.type != "cpu":
            return (
                f"native runs on CPU tensors only (this call is on {device.type}): "
                "use ASIM_BACKEND=triton or torch"
            )
        if engine_lib() is None:
            return (
                "the C kernel is off (ASIM_NATIVE=0) or did not build (see the warning "
                "above): unset ASIM_NATIVE, install a C compiler, or use ASIM_BACKEND=torch"
            )
        return None

    def why_not(self, program, operands) -> str | None:
        why = self.why_not_device(operands.device) or why_not_packed(
            program, operands, max_bits=_MAXBITS, max_votes=CONST["ASIM_MAXVOTES"],
            cell_noise_fix="ASIM_BACKEND=torch",
        )  # fmt: skip
        return why

    def run(self, program, operands, out) -> None:
        x = operands.x
        if isinstance(x, Patches) and in_place_kind(x.view.dtype, program.macro.input_bits) is None:
            operands = operands.dense()
        run_chunks(_NativeCall(program, operands), operands.x, out)


class _NativeCall:
    """Runs chunks of one call with the C kernel."""

    def __init__(self, program, operands):
        self.program, self.ops, self.lib = program, operands, engine_lib()
        macro = program.macro
        self.wb, self.xb = macro.weight_bits, macro.input_bits
        # what depends only on the program is built once and kept with it
        static = program.form("native", lambda: _static_args(program))
        self.args = RunArgs.from_buffer_copy(static[0])
        self.args.call_key = operands.key
        self._packed: dict[int, tuple[Tensor, Tensor]] = {}
        self._words = program.form(
            "native_words", lambda: sum(-(-(b - a) // 64) for a, b in program.tiles)
        )

    def chunk_elements_per_row(self, R: int) -> int:
        # the only intermediate is the packed activations (x planes of 64-row words per
        # tile, counted in 4-byte elements); outputs go straight into the call's result
        return max(1, 2 * self.xb * self._words)

    def _weights(self, b: int) -> tuple[Tensor, Tensor]:
        ops, tiles, O = self.ops, self.program.tiles, self.program.outputs
        if ops.programmed is not None:
            return ops.programmed.form(
                ("native_words", self.wb, tiles),
                lambda: pack_weights(self.lib, ops.w[0], self.wb, tiles, O),
            )
        if b not in self._packed:
            w = ops.w[b if ops.w.shape[0] > 1 else 0]
            self._packed[b] = pack_weights(self.lib, w, self.wb, tiles, O)
        return self._packed[b]

    def run_chunk(self, x, batch: tuple[int, int], rows: tuple[int, int], y) -> None:
        """``y [b, Mc, O]`` (a tensor, or with ``b = 1`` the chunk's :class:`OutputRows`)
        for the chunk's codes (a tensor ``[b, Mc, R]``, or the call's :class:`Patches` with
        ``b = 1``)."""
        ops, args = self.ops, self.args
        (b0, b1), (m0, m1) = batch, rows
        torch_threads = max(1, torch.get_num_threads())
        noisy = self.program.noisy
        for b in range(b1 - b0):
            if isinstance(x, Patches):
                codes, kind = x.view, in_place_kind(x.view.dtype, self.xb)
                row_off = x.row_offset[m0:m1]
                args.row_off, args.col_off = row_off.data_ptr(), x.col_offset.data_ptr()
                args.ld = 0
            else:
                codes, kind = native_codes(x[b], self.xb)
                args.row_off = args.col_off = None
                args.ld = codes.stride(0)
            wpk, woff = self._weights(b0 + b)
            args.codes, args.kind, args.M = codes.data_ptr(), kind, m1 - m0
            args.wpk, args.woff = wpk.data_ptr(), woff.data_ptr()
            if isinstance(y, OutputRows):  # the chunk's rows of a strided result (b = 1)
                args.y, args.y_row = y.view.data_ptr(), y.row_offset.data_ptr()
                args.ldy, args.ldo = 0, y.view.stride(-1)
            else:
                yb = y[b]  # (Mc, O), any strides
                args.y, args.y_row = yb.data_ptr(), None
                args.ldy, args.ldo = yb.stride(0), yb.stride(1)
            if noisy:
                sample = ops.sample[b0 + b, m0:m1].contiguous()
                pos = ops.pos[b0 + b, m0:m1].contiguous()
                args.sample, args.pos = sample.data_ptr(), pos.data_ptr()
            args.nthreads = torch_threads
            rc = self.lib.asim_run_call(ctypes.byref(args))
            if rc != 0:
                raise MemoryError(
                    "asim: the native engine could not allocate its scratch memory; "
                    "reduce the batch size"
                )


BACKEND = NativeBackend()
"""The native backend."""
