"""Host side of the Triton kernel: the call's tables on the device, and one launch per chunk.

:class:`KernelTables` turns an engine :class:`~asim.engine.plan.Plan` into the flat device
arrays the kernel reads (cycle bit ranges, shift-and-add weights, conversion modes, the
per-cycle value tables and code tables, concatenated with offsets). :func:`launch` runs the
kernel on integer codes ``X [B, M, R]`` (or a conv's patches, read in place through row and
column offsets) and weight codes ``W [Bw, R, O]`` and writes ``Y [B, M, O]`` once.

Memory: the kernel keeps its counts and its accumulator in registers; a call allocates
only ``Y`` and the tables (a few KB), whatever the batch, so no chunking is needed for
memory. Launches are split only to respect CUDA's grid limits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import rng

__all__ = [
    "KernelTables",
    "activation_levels",
    "block_k",
    "launch",
    "padded_tiles",
    "row_keys",
    "weight_codes",
    "weight_planes",
]

BLOCK_M = 64
"""Output rows per program on a GPU."""
BLOCK_N = 64
"""Output columns per program on a GPU."""
BLOCK_K = 64
"""Reduction rows per ``tl.dot`` on a GPU when the kernel cuts the bits from the codes.
A tile of up to this many rows is loaded once for all its cycles; larger tiles
(``nrow = 255``: 4 blocks) reload their codes per cycle from L1/L2. (Checked offline for
sm_90 with ptxas: 64x64x64 blocks and 8 warps use 212 registers without spills noise-free;
a 256-row block spills. ~114 SASS instructions per thread and conversion at nrow 255.)"""
BLOCK_K_PLANES = 256
"""The same for precomputed planes: a tile of up to 256 rows in one block, each weight
plane loaded once per tile (sm_90, 8 warps: 192 registers, no spills noise-free; ~31 SASS
instructions per thread and conversion, ~53 with 64-row blocks)."""
NUM_WARPS = 8
_MIN_BLOCK_K_GPU = 32  # int8 wgmma/mma take k = 32
_MIN_BLOCK = 16  # tl.dot needs every dimension >= 16
_GRID_YZ = 65535  # CUDA's limit on grid dims 1 and 2


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


PIECE_BITS = 7
"""Activation bits per int8 level operand (kernel.PIECE_BITS): levels <= 127."""


def block_k(max_rows: int, planes: bool = False) -> int:
    """Reduction rows per ``tl.dot`` for tiles of up to ``max_rows`` rows (``planes``: the
    precomputed-planes path, whose registers allow a whole 255-row tile per block)."""
    if _interpreting():
        return _block(max_rows, 64)
    return max(_MIN_BLOCK_K_GPU, _block(max_rows, BLOCK_K_PLANES if planes else BLOCK_K))


def padded_tiles(tiles, bk: int) -> tuple[list[tuple[int, int]], int]:
    """Each tile's row range in a layout where every tile starts on a multiple of ``bk``
    and is padded with zero rows to one (the planes path reads whole blocks, unmasked);
    and the padded row count."""
    out, at = [], 0
    for a, b in tiles:
        n = -(-(b - a) // bk) * bk
        out.append((at, at + n))
        at += n
    return out, at


def activation_levels(x: Tensor, tables: KernelTables, tiles, ptiles, rpad: int) -> Tensor:
    """The multi-level input of every cycle (pieces of <= 7 bits) for codes ``x [B, M, R]``
    as int8 ``[B, n_levels, M, rpad]`` in the padded tile layout (zeros in the padding)."""
    B, M, _ = x.shape
    codes = x.to(torch.int32)  # two's complement: arithmetic shifts give the code's bits
    out = torch.zeros(B, tables.n_levels, M, rpad, dtype=torch.int8, device=x.device)
    lo, width = tables.cyc_lo.tolist(), tables.cyc_width.tolist()
    for c, l0 in enumerate(tables.lvl0.tolist()):
        for p in range(-(-width[c] // PIECE_BITS)):
            mask = (1 << min(PIECE_BITS, width[c] - p * PIECE_BITS)) - 1
            level = (codes >> (lo[c] + p * PIECE_BITS)) & mask
            for (a, b), (p0, _) in zip(tiles, ptiles, strict=True):
                out[:, l0 + p, :, p0 : p0 + b - a] = level[:, :, a:b]
    return out


def weight_planes(w3: Tensor, weight_bits: int, tiles, ptiles, rpad: int, device) -> Tensor:
    """0/1 weight bit planes ``[Bw, weight_bits, O, rpad]`` int8 in the padded tile layout,
    reduction rows contiguous (int8 tensor-core operands are K-major): the programmed
    array's device form for the planes path."""
    Bw, _, O = w3.shape
    codes = w3.to(device=device, dtype=torch.int32).transpose(1, 2)  # [Bw, O, R]
    out = torch.zeros(Bw, weight_bits, O, rpad, dtype=torch.int8, device=device)
    for i in range(weight_bits):
        plane = (codes >> i) & 1
        for (a, b), (p0, _) in zip(tiles, ptiles, strict=True):
            out[:, i, :, p0 : p0 + b - a] = plane[:, :, a:b]
    return out


def weight_codes(w3: Tensor, weight_bits: int, device) -> Tensor:
    """Weight codes ``[Bw, R, O]`` as the kernel reads them: compact signed integers (int8
    for <= 8 bits), contiguous, on ``device``: the programmed array's device form."""
    dtype = torch.int8 if weight_bits <= 8 else torch.int16 if weight_bits <= 16 else torch.int32
    return w3.to(device=device, dtype=dtype).contiguous()


def row_keys(call_key: int, sample: Tensor, pos: Tensor) -> Tensor:
    """int64 per output row: ``asim.rng.element_keys`` up to the output column, so that the
    kernel's ``mix64(row_key + out * KEY_OUT)`` is the element key."""
    ks, kp = rng.CONSTANTS["ASIM_KEY_SAMPLE"], rng.CONSTANTS["ASIM_KEY_POS"]
    k = rng.mix64(sample.to(torch.int64) * rng.to_signed(ks) + rng.to_signed(call_key))
    return rng.mix64(k + pos.to(torch.int64) * rng.to_signed(kp)).contiguous()


def _concat(parts: list[Tensor], dtype, device) -> tuple[Tensor, Tensor]:
    offsets, n = [], 0
    for p in parts:
        offsets.append(n)
        n += p.numel()
    flat = torch.cat([p.reshape(-1).to(dtype) for p in parts]) if parts else torch.zeros(1)
    return flat.to(device), torch.tensor(offsets, dtype=torch.int64, device=device)


@dataclass
class KernelTables:
    """Everything the kernel reads about one call's plan, as device arrays.

    Built from an engine plan with :meth:`from_plan` once per program and device (the
    program keeps it); ``top`` is the largest count a conversion can see (``max tile rows *
    max levels``).
    """

    wb: int
    ncyc: int
    cyc_lo: Tensor
    cyc_width: Tensor
    lvl0: Tensor
    n_levels: int
    coef: Tensor
    mode: Tensor
    vcount: Tensor
    vcount_off: Tensor
    vcode: Tensor
    vcode_off: Tensor
    noisy: bool
    votes: int
    thr: Tensor
    start: Tensor
    k_lo: Tensor
    guide: Tensor
    t_mmin: Tensor
    t_row: Tensor
    t_guide: Tensor
    t_gb: Tensor
    max_scan: int
    pattern: bool = False
    p_gain: Tensor | None = None
    p_offset: Tensor | None = None
    p_cls: Tensor | None = None
    p_top: Tensor | None = None
    classes: bool = False
    p_vcls: Tensor | None = None
    fcode: Tensor | None = None
    vstride: int = 0

    @classmethod
    def from_plan(cls, plan, top: int, device, pattern=None) -> KernelTables:
        """The kernel's tables; with a chip's ``pattern`` (spec §4.7) the value and code
        tables are the fine-grid ones and the per-column constants come along; with per-ADC
        full scales (§4.8) the code values are laid out ``[class][cycle][code]`` and each
        column's class and the fine codes come along too."""
        ncyc = plan.ncyc
        for cyc in plan.cycles:  # each cycle is a run of consecutive bits (spec §5)
            if tuple(cyc.bits) != tuple(range(cyc.bits[0], cyc.bits[0] + len(cyc.bits))):
                raise ValueError(f"triton backend: cycle bits {cyc.bits} are not consecutive")
        i32 = dict(dtype=torch.int32, device=device)
        if pattern is None:
            counts = [plan.value_by_count(c, top) for c in range(ncyc)]
        else:
            counts = [plan.fine_values(c) for c in range(ncyc)]
        vcount, vcount_off = _concat(counts, torch.float32, device)
        classes = pattern is not None and pattern.vcls is not None
        by_code = plan.code_values(pattern.classes if classes else ())
        vcode, vcode_off = _concat(by_code, torch.float32, device)
        vcode_off = vcode_off[:ncyc].contiguous()
        tables = _code_tables(plan, device, pattern) if plan.noisy else _no_tables(ncyc, device)
        if pattern is not None:
            tables.update(
                pattern=True,
                p_gain=pattern.G.to(device).contiguous(),
                p_offset=pattern.D.to(device).contiguous(),
                p_cls=pattern.cls.to(device=device, dtype=torch.int32).contiguous(),
                p_top=torch.tensor([plan.fine * f for f in plan.full_scale], **i32),
            )
        if classes:
            fcode, _ = _concat([plan.fine_codes(c) for c in range(ncyc)], torch.int32, device)
            tables.update(
                classes=True,
                p_vcls=pattern.vcls.to(device=device, dtype=torch.int32).contiguous(),
                fcode=fcode,
                vstride=ncyc * (plan.macro.adc_levels + 1),
            )
        pieces = [-(-len(c.bits) // PIECE_BITS) for c in plan.cycles]
        return cls(
            wb=plan.macro.weight_bits,
            ncyc=ncyc,
            cyc_lo=torch.tensor([c.bits[0] for c in plan.cycles], **i32),
            cyc_width=torch.tensor([len(c.bits) for c in plan.cycles], **i32),
            lvl0=torch.tensor([sum(pieces[:c]) for c in range(ncyc)], **i32),
            n_levels=sum(pieces),
            coef=torch.tensor(plan.coef, dtype=torch.float32, device=device).reshape(-1),
            mode=torch.tensor(plan.mode, **i32).reshape(-1),
            vcount=vcount,
            vcount_off=vcount_off,
            vcode=vcode,
            vcode_off=vcode_off,
            noisy=plan.noisy,
            votes=plan.votes,
            **tables,
        )


def _no_tables(ncyc: int, device) -> dict:
    z64 = torch.zeros(1, dtype=torch.int64, device=device)
    z32 = torch.zeros(max(ncyc, 1), dtype=torch.int32, device=device)
    return dict(
        thr=z64, start=z32, k_lo=z32, guide=z32, t_mmin=z32, t_row=z32, t_guide=z32,
        t_gb=z32, max_scan=0,
    )  # fmt: skip


def _code_tables(plan, device, pattern=None) -> dict:
    """The cycles' code tables (``asim.noise.CodeTable``) concatenated: thresholds as int64
    (values in [1, 2^32)), row starts shifted to absolute threshold indices."""
    thr, start, k_lo, guide = [], [], [], []
    t_mmin, t_row, t_guide, t_gb = [], [], [], []
    n_thr = n_row = n_guide = 0
    seen: dict[int, int] = {}
    max_scan = 0
    for c in range(plan.ncyc):
        if pattern is None:
            table = plan.code_table(c)
        else:
            table = plan.fine_code_table(c, pattern.blocks)
        if id(table) not in seen:
            seen[id(table)] = len(t_mmin)
            th = table.thr.to(torch.int64).reshape(-1)
            st = table.start.to(torch.int64).reshape(-1)
            gd = table.guide.to(torch.int64).reshape(-1)
            gb, n_m = int(table.guide_bits), int(table.n_m)
            thr.append(th)
            start.append(st[:-1] + n_thr)
            k_lo.append(table.k_lo.to(torch.int64).reshape(-1))
            guide.append(gd)
            # most thresholds inside one guide bucket: the scan's trip count
            lengths = (st[1:] - st[:-1]).view(n_m, 1)
            g = torch.cat([gd.view(n_m, 1 << gb), lengths], dim=1)
            max_scan = max(max_scan, int((g[:, 1:] - g[:, :-1]).max()) if g.numel() else 0)
            t_mmin.append(int(table.m_min))
            t_row.append(n_row)
            t_guide.append(n_guide)
            t_gb.append(gb)
            n_thr += th.numel()
            n_row += n_m
            n_guide += gd.numel()
        else:
            k = seen[id(table)]
            t_mmin.append(t_mmin[k])
            t_row.append(t_row[k])
            t_guide.append(t_guide[k])
            t_gb.append(t_gb[k])
    start.append(torch.tensor([n_thr], dtype=torch.int64))  # end of the last row
    i32 = dict(dtype=torch.int32, device=device)
    return dict(
        thr=torch.cat(thr).to(device)
        if n_thr
        else torch.zeros(1, dtype=torch.int64, device=device),
        start=torch.cat(start).to(**i32),
        k_lo=torch.cat(k_lo).to(**i32),
        guide=torch.cat(guide).to(**i32),
        t_mmin=torch.tensor(t_mmin, **i32),
        t_row=torch.tensor(t_row, **i32),
        t_guide=torch.tensor(t_guide, **i32),
        t_gb=torch.tensor(t_gb, **i32),
        max_scan=max_scan,
    )


def _block(n: int, cap: int) -> int:
    b = _MIN_BLOCK
    while b < n and b < cap:
        b *= 2
    return b


def launch(
    tables: KernelTables,
    x,
    w: Tensor,
    tiles: Tensor,
    y: Tensor,
    *,
    rkeys: Tensor | None = None,
    row_off: Tensor | None = None,
    col_off: Tensor | None = None,
    planes: bool = False,
    bk: int | None = None,
    max_rows: int | None = None,
) -> None:
    """``y [B, M, O] = `` the macro's ``x @ w`` over ``tiles`` (int64 ``[T, 2]`` on the device).

    Args:
        x: codes ``[B, M, R]`` (any integer dtype or integer-valued float32, any strides),
            or, with ``row_off``/``col_off`` (int64 element offsets ``[M]``, ``[R]``), the
            base tensor the codes are gathered from (``B = 1``).
        w: weight codes ``[Bw, R, O]``, ``Bw`` 1 or ``B`` (:func:`weight_codes`).
        rkeys: int64 ``[B, M]`` row keys (:func:`row_keys`), needed when the plan is noisy.
        planes: ``x`` is :func:`activation_levels` ``[B, L, M, rpad]``, ``w`` is
            :func:`weight_planes` ``[Bw, wb, O, rpad]`` and ``tiles`` the padded tiles
            (:func:`padded_tiles` with :func:`block_k`): no bit extraction in the kernel.
        bk: the reduction block (the padding's, for ``planes``); default :func:`block_k`.
        max_rows: the most rows of a tile (default: read from ``tiles``, a device sync).
    """
    from .kernel import acim_kernel

    B, M, O = y.shape
    gather = row_off is not None
    if tables.noisy and rkeys is None:
        raise ValueError("triton backend: a noisy plan needs the rows' noise keys (rkeys)")
    if M == 0 or O == 0 or B == 0:
        return
    if max_rows is None:
        max_rows = int((tiles[:, 1] - tiles[:, 0]).max()) if tiles.numel() else 0
    if _interpreting():  # the interpreter pays per program: blocks just large enough
        bm, bn = _block(M, 64), _block(O, 64)
    else:
        bm, bn = BLOCK_M, BLOCK_N
    bk = bk or block_k(max_rows, planes)
    if gather:
        sx = (0, 0, 0, 0)
    elif planes:  # [B, L, M, rpad]: (batch, row, column, level) strides
        sx = (x.stride(0), x.stride(2), x.stride(3), x.stride(1))
    else:
        sx = (*x.stride(), 0)
    if planes:  # [Bw, wb, O, rpad]: (batch, row, column, plane) strides
        sw = (w.stride(0), w.stride(3), w.stride(2), w.stride(1))
    else:
        sw = (w.stride(0), w.stride(1), w.stride(2), 0)
    if w.shape[0] == 1:
        sw = (0, *sw[1:])
    rk = rkeys if rkeys is not None else torch.zeros(1, 1, dtype=torch.int64, device=y.device)
    dummy = torch.zeros(1, dtype=torch.int64, device=y.device)
    for b0 in range(0, B, _GRID_YZ):
        b1 = min(B, b0 + _GRID_YZ)
        xb = x if gather else x[b0:b1]
        wb_ = w if w.shape[0] == 1 else w[b0:b1]
        grid = (triton_cdiv(M, bm), triton_cdiv(O, bn), b1 - b0)
        if grid[1] > _GRID_YZ:
            raise ValueError(f"triton backend: {O} output columns exceed the launch grid")
        acim_kernel[grid](
            xb, *sx, row_off if gather else dummy, col_off if gather else dummy,
            wb_, *sw,
            y[b0:b1], *y.stride(),
            M, O, tiles, tiles.shape[0],
            tables.cyc_lo, tables.cyc_width, tables.lvl0, tables.coef, tables.mode,
            tables.vcount, tables.vcount_off, tables.vcode, tables.vcode_off,
            rk[b0:b1] if rk.shape[0] > 1 else rk, rk.stride(0) if rk.shape[0] > 1 else 0,
            tables.thr, tables.start, tables.k_lo, tables.guide,
            tables.t_mmin, tables.t_row, tables.t_guide, tables.t_gb,
            tables.max_scan, tables.votes, tables.votes,
            *(
                (tables.p_gain, tables.p_offset, tables.p_cls, tables.p_top)
                if tables.pattern else (dummy, dummy, dummy, dummy)
            ),
            *((tables.p_vcls, tables.fcode) if tables.classes else (dummy, dummy)),
            tables.vstride,
            WB=tables.wb, NCYC=tables.ncyc, GATHER=gather, NOISE=tables.noisy,
            PATTERN=tables.pattern, CLASSES=tables.classes,
            SINGLE_K=max_rows <= bk, PLANES=planes,
            BM=bm, BN=bn, BK=bk,
            num_warps=NUM_WARPS, enable_fp_fusion=False,
        )  # fmt: skip


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
