"""The fused Triton kernel of the ACiM engine: one launch per layer call.

One program computes a ``[BM, BN]`` block of ``Y`` for one batch entry. For every tile, in
order, every weight bit ``i`` and every activation cycle ``c`` (both descending, spec §4.2)
it forms the cycle's column count with int8 ``tl.dot`` of 0/1 (or multi-level) planes cut
from the integer codes in registers, turns the count into the ADC value and accumulates
``y = y + coef[i][c] * v`` in float32: the spec's order, so the bits equal the CPU engine's.

All float semantics of a conversion (normalisation, compression, clamping, rounding half to
even, rescaling, the division mode) live in per-cycle tables built on the host in float32
(:mod:`asim._triton.plan`): the kernel only looks values up, draws codes with integer
arithmetic and adds. Its float ops are ``coef * v`` (exact: a power of two) and one add per
conversion, so a fused multiply-add could not change a bit either.

Conversion modes (per weight bit and cycle), as the native kernel's ``ASIM_CYC_*``:
0 noise-free ADC (``value_by_count``), 1 exact count, 2 one code drawn from the cycle's code
table, 3 ``votes`` codes drawn and the most frequent kept (ties: the smallest, spec §8.2).
Codes are drawn from the counter-based stream of :mod:`asim.rng` (same constants, read from
``asim/_native/sampling.h``): ``u = mix64(ekey + draw * GAMMA) >> 32`` and
``code = k_lo[r] + #{j in row r : u >= thr[j]}`` with the guide table's head start.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._native import CONST
from ..rng import CONSTANTS

_S1 = tl.constexpr(CONSTANTS["ASIM_MIX_S1"])
_S2 = tl.constexpr(CONSTANTS["ASIM_MIX_S2"])
_S3 = tl.constexpr(CONSTANTS["ASIM_MIX_S3"])
_M1 = tl.constexpr(CONSTANTS["ASIM_MIX_M1"])
_M2 = tl.constexpr(CONSTANTS["ASIM_MIX_M2"])
_GAMMA = tl.constexpr(CONSTANTS["ASIM_DRAW_GAMMA"])
_KEY_OUT = tl.constexpr(CONSTANTS["ASIM_KEY_OUT"])

MODE_ADC = tl.constexpr(CONST["ASIM_CYC_ADC"])
MODE_EXACT = tl.constexpr(CONST["ASIM_CYC_EXACT"])
MODE_NOISY = tl.constexpr(CONST["ASIM_CYC_NOISY"])
MODE_VOTED = tl.constexpr(CONST["ASIM_CYC_VOTED"])
GAIN_BITS = tl.constexpr(CONST["ASIM_GAIN_BITS"])
PIECE_BITS = tl.constexpr(7)
"""Activation bits cut into one int8 operand (levels <= 127); wider cycles take pieces."""


@triton.jit
def _mix64(x):
    """splitmix64 finalizer on uint64 (wrap-around multiply, logical shifts)."""
    x = x ^ (x >> _S1)
    x = x * _M1
    x = x ^ (x >> _S2)
    x = x * _M2
    return x ^ (x >> _S3)


@triton.jit
def _draw_code(ekey, draw, cnt, valid, THR, START, KLO, GUIDE, mmin, rowoff, goff, gb, max_scan):
    """One ADC code per element from its cycle's code table (``asim_sample_code``)."""
    h = _mix64(ekey + draw.to(tl.uint64) * _GAMMA)
    u = (h >> 32).to(tl.int64)
    r = tl.where(valid, cnt - mmin, 0)
    ridx = rowoff + r
    j0 = tl.load(START + ridx)
    end = tl.load(START + ridx + 1)
    bucket = u >> (32 - gb)
    j = j0 + tl.load(GUIDE + goff + (r.to(tl.int64) << gb) + bucket)
    for _s in range(max_scan):
        more = j < end
        th = tl.load(THR + j, mask=more, other=0)
        j += (more & (u >= th)).to(tl.int32)
    return tl.load(KLO + ridx) + (j - j0)


@triton.jit
def _load_codes(
    X, xrow, COL_OFF, sxr, W, wcol, swr, mmask, nmask, r0, r1, k0, GATHER: tl.constexpr,
    BK: tl.constexpr
):  # fmt: skip
    """Codes of reduction rows ``k0 .. k0 + BK`` (those below ``r1``): activations
    ``[BM, BK]`` and weights ``[BK, BN]`` as stored (one byte each for 8-bit codes; float
    codes become int32); masked entries are 0 (they add nothing)."""
    rk = k0 + tl.arange(0, BK)
    kmask = rk < r1
    if GATHER:
        xoff = tl.load(COL_OFF + rk, mask=kmask, other=0)
    else:
        xoff = rk.to(tl.int64) * sxr
    xc = tl.load(X + xrow[:, None] + xoff[None, :], mask=mmask[:, None] & kmask[None, :], other=0)
    if xc.dtype.is_floating():
        xc = xc.to(tl.int32)
    wc = tl.load(
        W + rk.to(tl.int64)[:, None] * swr + wcol[None, :],
        mask=kmask[:, None] & nmask[None, :],
        other=0,
    )
    return xc, wc


@triton.jit
def _cycle_count(xc, wp, lo, width, BM: tl.constexpr, BN: tl.constexpr):
    """The cycle's column count ``sum_k 2^k M(bit lo + k)`` (spec §5): exact int32 dots of
    the cycle's multi-level input (bits ``lo .. lo + width``, at most 7 per int8 operand)
    with the weight plane ``wp``."""
    cnt = tl.zeros((BM, BN), dtype=tl.int32)
    for p in range(0, width, PIECE_BITS):
        pw = tl.minimum(width - p, PIECE_BITS)
        lv = ((xc.to(tl.int32) >> (lo + p)) & ((1 << pw) - 1)).to(tl.int8)
        cnt += tl.dot(lv, wp, out_dtype=tl.int32) << p
    return cnt


@triton.jit
def _load_plane(W, wcol, i, swi, swr, nmask, k0, BK: tl.constexpr):
    """Rows ``k0 .. k0 + BK`` of precomputed 0/1 weight plane ``i`` (int8 ``[BK, BN]``);
    tiles are padded with zero rows to a multiple of BK, so only columns are masked."""
    rk = k0 + tl.arange(0, BK)
    return tl.load(
        W + wcol[None, :] + i * swi + rk.to(tl.int64)[:, None] * swr,
        mask=nmask[None, :],
        other=0,
    )


@triton.jit
def acim_kernel(
    X,
    sxb,
    sxm,
    sxr,
    sxl,
    ROW_OFF,
    COL_OFF,
    W,
    swb,
    swr,
    swo,
    swi,
    Y,
    syb,
    sym,
    syo,
    M,
    O,
    TILES,
    ntiles,
    CYC_LO,
    CYC_WIDTH,
    LVL0,
    COEF,
    MODE,
    VCNT,
    VCNT_OFF,
    VCODE,
    VCODE_OFF,
    RKEY,
    srkb,
    THR,
    START,
    KLO,
    GUIDE,
    T_MMIN,
    T_ROW,
    T_GUIDE,
    T_GB,
    max_scan,
    draw_k,
    votes,
    P_GAIN,
    P_OFFSET,
    P_CLS,
    P_TOP,
    P_VCLS,
    FCODE,
    vstride,
    WB: tl.constexpr,
    NCYC: tl.constexpr,
    GATHER: tl.constexpr,
    NOISE: tl.constexpr,
    PATTERN: tl.constexpr,
    CLASSES: tl.constexpr,
    SINGLE_K: tl.constexpr,
    PLANES: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    mmask = rm < M
    nmask = rn < O
    valid = mmask[:, None] & nmask[None, :]
    if GATHER:  # X[m, r] at ROW_OFF[m] + COL_OFF[r] (a conv's patches, read in place)
        xrow = tl.load(ROW_OFF + rm, mask=mmask, other=0)
    else:
        xrow = pid_b * sxb + rm.to(tl.int64) * sxm
    wcol = pid_b * swb + rn.to(tl.int64) * swo
    if NOISE:  # element key = mix64(row key + out * KEY_OUT), as asim.rng.element_keys
        rkey = tl.load(RKEY + pid_b * srkb + rm, mask=mmask, other=0).to(tl.uint64, bitcast=True)
        ekey = _mix64(rkey[:, None] + rn.to(tl.uint64)[None, :] * _KEY_OUT)
    y = tl.zeros((BM, BN), dtype=tl.float32)
    for t in range(ntiles):
        r0 = tl.load(TILES + 2 * t)
        r1 = tl.load(TILES + 2 * t + 1)
        if PLANES:  # padded tiles start on whole blocks: aligned, vectorizable loads
            r0 = tl.multiple_of(r0, BK)
        if SINGLE_K and not PLANES:  # the tile fits one block: codes loaded once for all cycles
            xc, wc = _load_codes(
                X, xrow, COL_OFF, sxr, W, wcol, swr, mmask, nmask, r0, r1, r0, GATHER, BK
            )
        for ii in range(WB):
            i = WB - 1 - ii
            if SINGLE_K:
                if PLANES:
                    wp = _load_plane(W, wcol, i, swi, swr, nmask, r0, BK)
                else:
                    wp = ((wc.to(tl.int32) >> i) & 1).to(tl.int8)
            for cc in range(NCYC):
                c = NCYC - 1 - cc
                lo = tl.load(CYC_LO + c)
                width = tl.load(CYC_WIDTH + c)
                if PLANES:  # precomputed 0/1 weight planes and cycle levels, tiles padded
                    l0 = tl.load(LVL0 + c)
                    cnt = tl.zeros((BM, BN), dtype=tl.int32)
                    for k0 in range(r0, r1, BK):
                        if not SINGLE_K:
                            wp = _load_plane(W, wcol, i, swi, swr, nmask, k0, BK)
                        rk = k0 + tl.arange(0, BK)
                        for p in range(0, tl.cdiv(width, PIECE_BITS)):
                            lv = tl.load(
                                X + xrow[:, None] + (l0 + p).to(tl.int64) * sxl + rk[None, :],
                                mask=mmask[:, None],
                                other=0,
                            )
                            cnt += tl.dot(lv, wp, out_dtype=tl.int32) << (p * PIECE_BITS)
                elif SINGLE_K:
                    cnt = _cycle_count(xc, wp, lo, width, BM, BN)
                else:
                    cnt = tl.zeros((BM, BN), dtype=tl.int32)
                    for k0 in range(r0, r1, BK):
                        xk, wk = _load_codes(
                            X, xrow, COL_OFF, sxr, W, wcol, swr, mmask, nmask, r0, r1, k0,
                            GATHER, BK,
                        )  # fmt: skip
                        cnt += _cycle_count(
                            xk, ((wk.to(tl.int32) >> i) & 1).to(tl.int8), lo, width, BM, BN
                        )
                mode = tl.load(MODE + i * NCYC + c)
                coef = tl.load(COEF + i * NCYC + c)
                if PATTERN:  # a chip's fixed pattern (spec §4.7): each column's fine index
                    col = (t * WB + i).to(tl.int64) * O + rn
                    pg = tl.load(P_GAIN + col, mask=nmask, other=0)
                    pd = tl.load(P_OFFSET + ((t * NCYC + c) * WB + i).to(tl.int64) * O + rn,
                                 mask=nmask, other=0)  # fmt: skip
                    ptop = tl.load(P_TOP + c).to(tl.int64)
                    fine = cnt.to(tl.int64) * pg[None, :] + pd[None, :]
                    fine = tl.minimum(tl.maximum(fine, 0) >> GAIN_BITS, ptop)
                    block = tl.load(P_CLS + col, mask=nmask, other=0).to(tl.int64) * (ptop + 1)
                    acnt = fine.to(tl.int32)
                    dcnt = (fine + block[None, :]).to(tl.int32)
                    if CLASSES:  # §4.8: each column's value class, as an offset into VCODE
                        vcls = tl.load(P_VCLS + col, mask=nmask, other=0).to(tl.int64) * vstride
                else:
                    acnt = cnt
                    dcnt = cnt
                if mode == MODE_EXACT:
                    v = cnt.to(tl.float32)
                elif mode == MODE_ADC:
                    if CLASSES:  # the fine index's code, valued in the column's class
                        fc = tl.load(FCODE + tl.load(VCNT_OFF + c) + acnt, mask=valid, other=0)
                        v = tl.load(
                            VCODE + tl.load(VCODE_OFF + c) + vcls[None, :] + fc,
                            mask=valid,
                            other=0.0,
                        )
                    else:
                        v = tl.load(VCNT + tl.load(VCNT_OFF + c) + acnt, mask=valid, other=0.0)
                else:
                    if NOISE:
                        draw = ((t * WB + i) * NCYC + c).to(tl.int64) * draw_k
                        mmin = tl.load(T_MMIN + c)
                        rowoff = tl.load(T_ROW + c)
                        goff = tl.load(T_GUIDE + c)
                        gb = tl.load(T_GB + c)
                        if mode == MODE_NOISY:
                            code = _draw_code(
                                ekey,
                                draw,
                                dcnt,
                                valid,
                                THR,
                                START,
                                KLO,
                                GUIDE,
                                mmin,
                                rowoff,
                                goff,
                                gb,
                                max_scan,
                            )
                        elif votes == 3:  # three draws; the mode, else the smallest
                            c0 = _draw_code(
                                ekey,
                                draw,
                                dcnt,
                                valid,
                                THR,
                                START,
                                KLO,
                                GUIDE,
                                mmin,
                                rowoff,
                                goff,
                                gb,
                                max_scan,
                            )
                            c1 = _draw_code(
                                ekey,
                                draw + 1,
                                dcnt,
                                valid,
                                THR,
                                START,
                                KLO,
                                GUIDE,
                                mmin,
                                rowoff,
                                goff,
                                gb,
                                max_scan,
                            )
                            c2 = _draw_code(
                                ekey,
                                draw + 2,
                                dcnt,
                                valid,
                                THR,
                                START,
                                KLO,
                                GUIDE,
                                mmin,
                                rowoff,
                                goff,
                                gb,
                                max_scan,
                            )
                            smallest = tl.minimum(c0, tl.minimum(c1, c2))
                            code = tl.where(
                                (c0 == c1) | (c0 == c2), c0, tl.where(c1 == c2, c1, smallest)
                            )
                        else:  # majority vote of `votes` codes, ties to the smallest code
                            # (any K: each candidate's count redraws the K codes)
                            code = tl.zeros((BM, BN), dtype=tl.int32)
                            best_n = tl.zeros((BM, BN), dtype=tl.int32)
                            for k in range(votes):
                                ck = _draw_code(
                                    ekey,
                                    draw + k,
                                    dcnt,
                                    valid,
                                    THR,
                                    START,
                                    KLO,
                                    GUIDE,
                                    mmin,
                                    rowoff,
                                    goff,
                                    gb,
                                    max_scan,
                                )
                                n = tl.zeros((BM, BN), dtype=tl.int32)
                                for k2 in range(votes):
                                    c2 = _draw_code(
                                        ekey,
                                        draw + k2,
                                        dcnt,
                                        valid,
                                        THR,
                                        START,
                                        KLO,
                                        GUIDE,
                                        mmin,
                                        rowoff,
                                        goff,
                                        gb,
                                        max_scan,
                                    )
                                    n += (c2 == ck).to(tl.int32)
                                take = (n > best_n) | ((n == best_n) & (ck < code))
                                code = tl.where(take, ck, code)
                                best_n = tl.where(take, n, best_n)
                        code = tl.where(valid, code, 0)
                        if CLASSES:
                            v = tl.load(
                                VCODE + tl.load(VCODE_OFF + c) + vcls[None, :] + code,
                                mask=valid,
                                other=0.0,
                            )
                        else:
                            v = tl.load(
                                VCODE + tl.load(VCODE_OFF + c) + code, mask=valid, other=0.0
                            )
                    else:
                        v = tl.zeros((BM, BN), dtype=tl.float32)
                y = y + coef * v
    tl.store(
        Y + pid_b * syb + rm.to(tl.int64)[:, None] * sym + rn.to(tl.int64)[None, :] * syo,
        y,
        mask=valid,
    )
