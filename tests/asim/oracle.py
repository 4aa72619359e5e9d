"""Slow, literal reference oracle for the SRAM ACiM computation model.

Written only from the computation spec (``docs/macro-model.md``, §0-§8), never from
``asim/``. Everything is float32 on CPU, with one Python loop iteration per
(tile, weight bit, activation cycle), in the loop order and float-operation
order of the spec, so that the results are the spec's CPU semantics bit for bit.

Conventions used throughout (spec section 0):

* Python scalars in tensor arithmetic (``nrow``, ``A``, ``100``, ``1e-7``, the
  full scale ``F``...) are converted to float32 by torch; division by them on
  CPU is a true, correctly rounded float32 division.
* ``torch.round`` rounds half to even (rne), as the spec requires.
* Bit planes are float32 tensors holding 0.0 / 1.0. Column MACs of planes are
  computed in float64 (exact for any realistic size) and cast to float32, which
  is exact because the counts are small integers. The conv oracle instead runs
  one float32 ``F.conv2d`` per (tile, weight bit, activation bit), as the
  reference does; those sums are integers <= nrow, which float32 represents
  exactly.

Noise draws: an analog cycle draws ``z1`` then ``z2`` with
``torch.randn(shape, generator=generator)`` (compression mode: ``z1`` only).
Following the spec's recommendation for quirk Q8, no draws at all are made when
every noise sigma is 0 (values are unaffected; only the RNG stream differs from
the reference, which is not a goal of the spec).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "quantize_signed",
    "quantize_unsigned",
    "signed_bit_planes",
    "unsigned_bit_planes",
    "activation_cycles",
    "oracle_mvm",
    "oracle_wbp_mvm",
    "oracle_linear",
    "oracle_conv2d",
    "oracle_attention",
]

EPS = 1e-7  # added as a Python float, i.e. fl32(1e-7), exactly like the reference


def Ls(b: int) -> int:
    """Magnitude levels of a signed b-bit value: 2^(b-1) - 1."""
    return 2 ** (b - 1) - 1


def Lu(b: int) -> int:
    """Levels of an unsigned b-bit value: 2^b - 1."""
    return 2**b - 1


# --------------------------------------------------------------------------------------
# 1. Quantizers (spec 1.2 / 1.3)
# --------------------------------------------------------------------------------------


def quantize_signed(t: torch.Tensor, bits: int):
    """Per-tensor symmetric signed quantizer.

    s = fl(max|t| + eps);  t_int = sign(t) * rne(fl(clamp(fl(|t|/s), 0, 1) * Ls(bits))).
    Returns (t_int float32 integer-valued, s as a 0-dim float32 tensor).
    """
    assert bits >= 2, "bits >= 2 is required"
    t = t.to(torch.float32)
    scale = t.abs().max() + EPS
    t_int = torch.sign(t) * torch.round(torch.clamp(t.abs() / scale, 0, 1) * Ls(bits))
    return t_int, scale


def quantize_unsigned(t: torch.Tensor, bits: int):
    """Per-tensor unsigned quantizer.

    s = fl(max(t) + eps) (the maximum, not max|t|);
    t_int = rne(fl(clamp(fl(t/s), 0, 1) * Lu(bits))).
    Returns (t_int float32 integer-valued, s as a 0-dim float32 tensor).
    """
    assert bits >= 2, "bits >= 2 is required"
    t = t.to(torch.float32)
    scale = t.max() + EPS
    t_int = torch.round(torch.clamp(t / scale, 0, 1) * Lu(bits))
    return t_int, scale


def _dequantize(Y: torch.Tensor, s_w: torch.Tensor, s_x: torch.Tensor, L_w: int, L_x: int):
    """Spec 1.4: y = fl( fl(Y * fl(s_w * s_x)) / fl(L_w * L_x) ), L_w*L_x an exact Python int."""
    return Y * (s_w * s_x) / (L_w * L_x)


# --------------------------------------------------------------------------------------
# 2. Bit decomposition (spec 2.1 / 2.2)
# --------------------------------------------------------------------------------------


def _as_int64(q: torch.Tensor) -> torch.Tensor:
    qi = q.to(torch.int64)
    assert torch.equal(qi.to(q.dtype), q), "bit decomposition needs integer-valued input"
    return qi


def signed_bit_planes(q: torch.Tensor, b: int) -> dict[int, torch.Tensor]:
    """Two's-complement planes of a signed b-bit integer tensor, as float32 0/1.

    Plane b-1 is the sign plane (1 iff q < 0; zero counts as positive).
    Remainder r = | |q| - p_sign * 2^(b-1) |, and plane t = floor(r / 2^t) mod 2.
    """
    qi = _as_int64(q)
    if qi.numel():
        assert int(qi.abs().max()) <= Ls(b), f"value outside the signed {b}-bit range"
    p_sign = (qi < 0).to(torch.int64)
    r = torch.abs(torch.abs(qi) - p_sign * 2 ** (b - 1))
    planes = {b - 1: p_sign.to(torch.float32)}
    for t in range(b - 2, -1, -1):
        planes[t] = ((r // 2**t) % 2).to(torch.float32)
    return planes


def unsigned_bit_planes(q: torch.Tensor, b: int) -> dict[int, torch.Tensor]:
    """Planes of an unsigned b-bit integer tensor: plane t = floor(q / 2^t) mod 2 (float32 0/1)."""
    qi = _as_int64(q)
    if qi.numel():
        assert 0 <= int(qi.min()) and int(qi.max()) <= Lu(b), f"value outside unsigned {b} bits"
    return {t: ((qi // 2**t) % 2).to(torch.float32) for t in range(b - 1, -1, -1)}


# --------------------------------------------------------------------------------------
# 3. Activation cycles (spec 4 bit-serial, 5.1 / 5.2 bit-parallel)
# --------------------------------------------------------------------------------------


def activation_cycles(xbit: int, signed_act: bool, act_enc: int | None) -> list[dict]:
    """The activation cycles in processing order (cycle index descending).

    Each cycle is a dict with
      index   : cycle index j (the bit index for bit-serial), used by hybrid/voting,
      bits    : list of (activation bit position, weight 2^k) combined in the cycle,
      width   : number of bits w_c (full scale is (2^w_c - 1) * nrow),
      is_sign : True for the sign bit (bit-serial) / separate sign cycle (bit-parallel)
                of a signed activation role,
      shift   : activation part of the shift exponent (term is shifted by 2^(i + shift)),
      label   : the trace's x_bits (bit positions, descending, or ['sign']).
    """
    cycles = []
    if act_enc is None:  # bit-serial: one cycle per activation bit
        for j in range(xbit - 1, -1, -1):
            is_sign = signed_act and j == xbit - 1
            cycles.append(
                dict(index=j, bits=[(j, 1)], width=1, is_sign=is_sign, shift=j, label=[j])
            )
        return cycles

    e = int(act_enc)
    if signed_act:
        if not 1 <= e <= xbit - 1:
            raise ValueError(f"signed activations need 1 <= act_enc <= xbit-1, got {e}")
        C = math.ceil((xbit - 1) / e) + 1
        r = (xbit - 1) % e
        # cycle C-1 (processed first): the separate 1-bit sign cycle
        cycles.append(
            dict(
                index=C - 1,
                bits=[(xbit - 1, 1)],
                width=1,
                is_sign=True,
                shift=xbit - 1,
                label=["sign"],
            )
        )
        for c in range(C - 2, -1, -1):
            width = r if (c == C - 2 and r != 0) else e
            bits = [(c * e + k, 2**k) for k in range(width)]
            cycles.append(
                dict(
                    index=c,
                    bits=bits,
                    width=width,
                    is_sign=False,
                    shift=c * e,
                    label=[c * e + k for k in range(width - 1, -1, -1)],
                )
            )
    else:
        if not 1 <= e <= xbit:
            raise ValueError(f"unsigned activations need 1 <= act_enc <= xbit, got {e}")
        C = math.ceil(xbit / e)
        r = xbit % e
        for c in range(C - 1, -1, -1):
            width = r if (c == C - 1 and r != 0) else e
            bits = [(c * e + k, 2**k) for k in range(width)]
            cycles.append(
                dict(
                    index=c,
                    bits=bits,
                    width=width,
                    is_sign=False,
                    shift=c * e,
                    label=[c * e + k for k in range(width - 1, -1, -1)],
                )
            )
    return cycles


# --------------------------------------------------------------------------------------
# 4-6, 8.1, 8.2. The per-cycle loop, shared by linear, conv and attention
# --------------------------------------------------------------------------------------


def _mode_smallest(codes: list[torch.Tensor]) -> torch.Tensor:
    """Elementwise statistical mode of the K code tensors; ties go to the smallest code."""
    stacked = torch.stack(codes)  # [K, ...]
    best_code = torch.zeros_like(codes[0])
    best_count = torch.zeros_like(codes[0])
    lo, hi = int(stacked.min()), int(stacked.max())
    for c in range(lo, hi + 1):  # ascending, so a strict '>' keeps the smallest tied code
        count = (stacked == c).sum(0).to(torch.float32)
        better = count > best_count
        best_code = torch.where(better, torch.full_like(best_code, float(c)), best_code)
        best_count = torch.where(better, count, best_count)
    return best_code


def _bit_level_loop(
    mac,
    *,
    n_tiles,
    tile_labels,
    signed_act,
    wbit,
    xbit,
    adc_prec,
    nrow,
    act_enc,
    hybrid_levels,
    hybrid_exact,
    rand_noise_sigma,
    non_linear_sigma,
    voting_levels,
    num_samp,
    compression_alpha,
    generator,
    trace,
    sign_compression_after_noise=False,
    adc_full_scale=None,
    adc_thresholds=None,
    adc_values=None,
    column_pattern=None,
):
    """Integer-domain accumulator Y of the bit-level model (spec 4.1/4.2, 4.5-4.7, 5, 6,
    8.1, 8.2).

    ``mac(t, i, j)`` must return the exact column MAC (float32, output shape) of tile t,
    weight-role bit plane i and activation-role bit plane j (plane w-1 / x-1 of a signed
    role is its sign plane).

    ``adc_full_scale`` (4.5): the ADC's full scale per input level, in counts (None: nrow).
    ``adc_thresholds``/``adc_values`` (4.6): a table ADC. ``column_pattern`` (4.7, noise-free
    only): ``(offset, gain, group)`` with float64 ``[n_tiles, n_adc]`` offsets (LSB, after
    trim) and relative gain errors of every ADC, and the columns per ADC; optionally a fourth
    entry (4.8): ``[n_tiles, n_adc]`` per-ADC full scales in column counts (None: the layer's).
    """
    w = wbit
    A = 2**adc_prec - 1
    h = 0 if hybrid_levels is None else int(hybrid_levels)
    hv = 0 if voting_levels is None else int(voting_levels)
    K = 1 if num_samp is None else int(num_samp)
    alpha = float(compression_alpha or 0.0)
    compression = alpha != 0.0
    if hv > 0 and h > 0:
        raise ValueError("voting_levels replaces hybrid_levels; do not set both")
    if K < 1:
        raise ValueError("num_samp must be >= 1")
    if act_enc is not None and K > 1:
        raise ValueError("majority voting (num_samp > 1) cannot be combined with act_enc")
    if compression and non_linear_sigma:
        raise ValueError("current-domain compression replaces the non-linear noise term")
    voting = hv > 0 or K > 1
    cycles = activation_cycles(xbit, signed_act, act_enc)
    Cx = len(cycles)
    noisy = (rand_noise_sigma != 0) or (non_linear_sigma != 0)
    adc_rows = nrow if adc_full_scale is None else int(adc_full_scale)
    if column_pattern is not None and (noisy or compression):
        raise ValueError("the oracle's fixed pattern is noise-free and without compression")

    def add_noise(a, a_array):
        """Spec 4.1 step 3 (compression mode: random term only, spec 8.1); with an ADC full
        scale other than nrow (4.5) the noise keeps its size on the array's scale, so it is
        nrow/adc_full_scale times larger on the ADC's, and the count-dependent term sees the
        array-normalised value ``a_array``."""
        rho = nrow / adc_rows
        z1 = torch.randn(a.shape, generator=generator, dtype=torch.float32)
        n_r = z1 * rand_noise_sigma / 100
        if compression:
            return torch.clamp(a + n_r * rho, 0, 1)
        z2 = torch.randn(a.shape, generator=generator, dtype=torch.float32)
        n_nl = z2 / torch.sqrt(a_array * nrow + 1) * non_linear_sigma / 100
        return torch.clamp(a + (n_r + n_nl) * rho, 0, 1)

    if adc_thresholds is not None:
        # 4.6: thresholds in code units, tau_k = fl32(theta_k * A) (float64 product)
        taus = [
            float(torch.tensor(float(t) * A, dtype=torch.float64).float()) for t in adc_thresholds
        ]

    def adc_code(x):
        """4.1 step 4 / 4.6: the code of x = fl(a * A) (float32 tensor)."""
        if adc_thresholds is None:
            return torch.round(x)
        q = torch.zeros_like(x)
        for k, tau in enumerate(taus, start=1):
            q = q + (x > tau).float()
            if k % 2 == 0:
                q = q + (x == tau).float()
        return q

    def rescale(q, Fs):
        """4.1 step 5 / 4.6: the value of code q."""
        if adc_values is None:
            return q / A * Fs
        vals = torch.tensor([float(v) for v in adc_values], dtype=torch.float64).float()
        return vals[q.to(torch.int64)] * Fs

    FINE, GAINB = 4, 8  # 4.7: a grid of 2^-4 counts, gains in steps of 2^-12

    def pattern_codes(M, t, i, Fs, levels):
        """4.7: each column's ADC converts the fine index n of its count; 4.8: an ADC of its
        own full scale N_j has its gain scaled by N / N_j. Returns the codes and each
        column's full scale (float32 [O]) for the rescale."""
        offset, gain, group = column_pattern[:3]
        ranges = column_pattern[3] if len(column_pattern) > 3 else None
        O = M.shape[-1]
        unit = 2.0 ** (FINE + GAINB)
        q = torch.empty_like(M)
        F_cols = torch.full((O,), float(Fs), dtype=torch.float32)
        for o in range(O):
            g = (o * w + i) // group
            ratio = 1.0
            if ranges is not None:
                N_j = int(ranges[t][g])
                ratio = adc_rows / N_j  # float64
                F_cols[o] = float(levels * N_j)
            G = int(round_half_even((1.0 + float(gain[t, g])) * ratio * unit))
            D = int(round_half_even(float(offset[t, g]) * Fs / A * unit)) + 2 ** (GAINB - 1)
            m = M[..., o].to(torch.int64)
            n = torch.clamp(torch.clamp(m * G + D, min=0) // 2**GAINB, max=2**FINE * Fs)
            a = torch.clamp(n.to(torch.float32) / (2**FINE * Fs), 0, 1)
            q[..., o] = adc_code(a * A)
        return q, F_cols

    Y = None
    for t in range(n_tiles):  # tiles ascending
        for i in range(w - 1, -1, -1):  # weight bit, MSB (sign) first
            for cyc in cycles:  # activation cycle, descending
                # 1. column MAC (bit-parallel: exact weighted sum of the per-bit MACs)
                M = None
                for bit, weight in sorted(cyc["bits"], reverse=True):
                    Mk = mac(t, i, bit)
                    if weight != 1:
                        Mk = Mk * weight  # exact: small integer times a power of two
                    M = Mk if M is None else M + Mk
                if Y is None:
                    Y = torch.zeros_like(M)
                Fs = (2 ** cyc["width"] - 1) * adc_rows  # the ADC's full scale (4.5)
                F_array = (2 ** cyc["width"] - 1) * nrow  # the array's

                d = (w - 1 - i) + (Cx - 1 - cyc["index"])  # anti-diagonal distance from MSBxMSB
                analog = voting or d >= h
                voted = voting and d < hv

                if not analog and hybrid_exact:
                    q = None
                    v = M  # digital cycle computed exactly: the exact count
                else:
                    # 8.1 current-domain gain compression of the raw (weighted) count; the
                    # reference linear's signed bit-parallel sign cycle compresses the
                    # normalised value after the noise instead (Q28 compatibility)
                    late = (
                        compression
                        and sign_compression_after_noise
                        and cyc["is_sign"]
                        and act_enc is not None
                    )
                    Mn = M / (1 + alpha * M) if compression and not late else M
                    # 2. normalise
                    a = torch.clamp(Mn / Fs, 0, 1)
                    F_out = Fs
                    if column_pattern is not None:
                        q, F_out = pattern_codes(M, t, i, Fs, 2 ** cyc["width"] - 1)  # 4.7, 4.8
                    elif analog and noisy:
                        a_array = a if Fs == F_array else torch.clamp(Mn / F_array, 0, 1)
                        codes = []
                        for _ in range(K if voted else 1):
                            a_s = add_noise(a, a_array)  # 3. noise
                            if late:
                                a_s = a_s / (1 + alpha * a_s)
                            codes.append(adc_code(a_s * A))  # 4. ADC
                        q = _mode_smallest(codes) if len(codes) > 1 else codes[0]
                    else:
                        if late:
                            a = a / (1 + alpha * a)
                        q = adc_code(a * A)  # 4. ADC (digital cycle or noise-free)
                    # 5. rescale (4.8: by the column's own full scale)
                    v = rescale(q, F_out)

                # 6. sign
                if cyc["is_sign"]:
                    negate = i != w - 1  # sign x sign is positive
                else:
                    negate = i == w - 1
                sv = -v if negate else v
                # 7. shift and accumulate
                shift = i + cyc["shift"]
                Y = Y + sv * 2**shift

                if trace is not None:
                    trace.append(
                        dict(
                            tile=tile_labels[t],
                            w_bit=i,
                            x_bits=cyc["label"],
                            negated=negate,
                            shift=shift,
                            full_scale=Fs,
                            analog=analog,
                            mac=M.clone(),
                            adc_code=None if q is None else q.clone(),
                            rescaled=v.clone(),
                        )
                    )
    return Y


def mac_histogram(trace: list[dict], nrow: int) -> dict[int, list[int]]:
    """``{levels: n(M)}``: how often each column MAC ``M`` reached the ADC in a ``trace`` of
    the bit-level loop, per cycle width (``levels``); exact digital cycles are left out."""
    out: dict[int, torch.Tensor] = {}
    for t in trace:
        if t["adc_code"] is None:  # an exact digital cycle never reaches the ADC
            continue
        levels = t["full_scale"] // nrow
        n = torch.bincount(t["mac"].reshape(-1).long(), minlength=levels * nrow + 1)
        out[levels] = n if levels not in out else out[levels] + n
    return {lv: n.tolist() for lv, n in out.items()}


def round_half_even(v: float) -> float:
    """Python's round(): to the nearest integer, ties to even (spec 0, rne)."""
    return float(round(v))


def _tile_list(tiles):
    out = [(int(a), int(b)) for a, b in tiles]
    assert out, "need at least one tile"
    return out


def oracle_mvm(
    x_int,
    w_int,
    *,
    signed_act,
    wbit,
    xbit,
    adc_prec,
    nrow,
    tiles,
    act_enc=None,
    hybrid_levels=0,
    hybrid_exact=False,
    rand_noise_sigma=0.0,
    non_linear_sigma=0.0,
    voting_levels=0,
    num_samp=1,
    compression_alpha=0.0,
    generator=None,
    trace=None,
    sign_compression_after_noise=False,
    adc_full_scale=None,
    adc_thresholds=None,
    adc_values=None,
    column_pattern=None,
):
    """Bit-level integer accumulator Y [M, O] for x_int [M, R] (activation role) and
    w_int [O, R] (signed weight role). ``tiles`` = list of (start, stop) row ranges over R,
    processed in order, each normalised by nrow. (Leading batch dims, broadcast between
    x_int and w_int, are also accepted: x [..., M, R], w [..., O, R] -> Y [..., M, O].)

    If ``trace`` is a list, one dict per cycle is appended (mac, adc_code, rescaled, ...).
    """
    tiles = _tile_list(tiles)
    xpl = (signed_bit_planes if signed_act else unsigned_bit_planes)(x_int, xbit)
    wpl = signed_bit_planes(w_int, wbit)

    def mac(t, i, j):
        s, e = tiles[t]
        xp = xpl[j][..., s:e].double()
        wp = wpl[i][..., s:e].double()
        return torch.matmul(xp, wp.transpose(-1, -2)).to(torch.float32)

    return _bit_level_loop(
        mac,
        n_tiles=len(tiles),
        tile_labels=list(range(len(tiles))),
        signed_act=signed_act,
        wbit=wbit,
        xbit=xbit,
        adc_prec=adc_prec,
        nrow=nrow,
        act_enc=act_enc,
        hybrid_levels=hybrid_levels,
        hybrid_exact=hybrid_exact,
        rand_noise_sigma=rand_noise_sigma,
        non_linear_sigma=non_linear_sigma,
        voting_levels=voting_levels,
        num_samp=num_samp,
        compression_alpha=compression_alpha,
        generator=generator,
        trace=trace,
        sign_compression_after_noise=sign_compression_after_noise,
        adc_full_scale=adc_full_scale,
        adc_thresholds=adc_thresholds,
        adc_values=adc_values,
        column_pattern=column_pattern,
    )


# --------------------------------------------------------------------------------------
# 8.3 Weight full bit-parallel (W4A4) extension, with the recommended fix of Q30
# --------------------------------------------------------------------------------------


def _wbp_adc(Y_exact, *, wbit, xbit, adc_prec, rows, rand_noise_sigma, generator):
    """One signed ADC on the exact MAC: F = Lu(x)*Ls(w)*rows, a = clamp(Y/F, -1, 1),
    random noise only, clamp, q = rne(a*(2^(adc-1)-1)), Y' = q/(2^(adc-1)-1)*F."""
    Fs = Lu(xbit) * Ls(wbit) * rows
    Aw = 2 ** (adc_prec - 1) - 1
    a = torch.clamp(Y_exact / Fs, -1, 1)
    if rand_noise_sigma != 0:
        z = torch.randn(a.shape, generator=generator, dtype=torch.float32)
        a = torch.clamp(a + z * rand_noise_sigma / 100, -1, 1)
    q = torch.round(a * Aw)
    return q / Aw * Fs


def _wbp_check(xbit, act_enc):
    if act_enc is None:
        raise ValueError("the weight full bit-parallel path requires act_enc")
    if xbit % int(act_enc) != 0:
        raise ValueError("the weight full bit-parallel path requires xbit % act_enc == 0")


def oracle_wbp_mvm(
    x_int,
    w_int,
    *,
    wbit,
    xbit,
    adc_prec,
    nrow,
    tiles,
    act_enc,
    full_scale_rows=None,
    rand_noise_sigma=0.0,
    generator=None,
):
    """W4A4 extension (spec 8.3, Q30 fix): the exact MAC Σ_tiles Σ_i Σ_c ±2^(i+c·e)·M_c over
    all tiles (unsigned activations only), then a single signed ADC per output."""
    _wbp_check(xbit, act_enc)
    tiles = _tile_list(tiles)
    xpl = unsigned_bit_planes(x_int, xbit)
    wpl = signed_bit_planes(w_int, wbit)
    cycles = activation_cycles(xbit, False, act_enc)
    Y = None  # accumulated exactly in float64
    for s, e in tiles:
        for i in range(wbit - 1, -1, -1):
            for cyc in cycles:
                Mc = None
                for bit, weight in cyc["bits"]:
                    Mk = torch.matmul(
                        xpl[bit][..., s:e].double(), wpl[i][..., s:e].double().transpose(-1, -2)
                    )
                    Mc = Mk * weight if Mc is None else Mc + Mk * weight
                sign = -1.0 if i == wbit - 1 else 1.0
                term = sign * Mc * 2 ** (i + cyc["shift"])
                Y = term if Y is None else Y + term
    rows = nrow if full_scale_rows is None else full_scale_rows
    return _wbp_adc(
        Y.to(torch.float32),
        wbit=wbit,
        xbit=xbit,
        adc_prec=adc_prec,
        rows=rows,
        rand_noise_sigma=rand_noise_sigma,
        generator=generator,
    )


def oracle_wbp_per_cycle_mvm(x_int, w_int, *, wbit, xbit, adc_prec, nrow, tiles, act_enc):
    """W4A4 extension, the reference linear's behaviour (spec 8.3, kept as a compatibility
    option by Q30): a running sum, re-quantized by the signed ADC after every
    (tile, weight bit, cycle) step. Noise-free; float32 throughout, step by step."""
    _wbp_check(xbit, act_enc)
    tiles = _tile_list(tiles)
    xpl = unsigned_bit_planes(x_int, xbit)
    wpl = signed_bit_planes(w_int, wbit)
    cycles = activation_cycles(xbit, False, act_enc)
    F = float((2**xbit - 1) * (2 ** (wbit - 1) - 1) * nrow)
    H = float(2 ** (adc_prec - 1) - 1)
    out = None
    for s, e in tiles:
        for i in range(wbit - 1, -1, -1):
            for cyc in sorted(cycles, key=lambda c: -c["shift"]):
                mac = None
                for bit, weight in cyc["bits"]:
                    part = (
                        torch.matmul(
                            xpl[bit][..., s:e].float(), wpl[i][..., s:e].float().transpose(-1, -2)
                        )
                        * weight
                    )
                    mac = part if mac is None else mac + part
                if i == wbit - 1:
                    mac = mac * -1.0
                step = mac * float(2 ** (i + cyc["shift"]))
                out = step if out is None else out + step
                out = torch.clamp(out / F, -1.0, 1.0)
                out = torch.round(out * H)
                out = out / H * F
    return out


# --------------------------------------------------------------------------------------
# 7.1 Linear
# --------------------------------------------------------------------------------------


def _check_mode(mode):
    m = str(mode).lower()
    if m not in ("simulate", "simulation", "inference"):
        raise ValueError(f"mode must be 'simulate' or 'inference', got {mode!r}")
    return "inference" if m == "inference" else "simulate"


def _exact_matmul(x_int, w_int):
    """Exact integer matmul x @ w^T (float64, exact), rounded once to float32."""
    return torch.matmul(x_int.double(), w_int.double().transpose(-1, -2)).to(torch.float32)


def oracle_linear(
    x,
    weight,
    bias=None,
    *,
    mode="simulate",
    signed_act=True,
    wbit=8,
    xbit=8,
    adc_prec=8,
    nrow=255,
    act_enc=None,
    hybrid_levels=0,
    hybrid_exact=False,
    rand_noise_sigma=0.0,
    non_linear_sigma=0.0,
    voting_levels=0,
    num_samp=1,
    generator=None,
    trace=None,
):
    """ASiMLinear (Simulation or Inference). x [..., in], weight [out, in] -> [..., out]."""
    mode = _check_mode(mode)
    x = x.to(torch.float32)
    weight = weight.to(torch.float32)
    lead = x.shape[:-1]
    n_in = x.shape[-1]
    x2 = x.reshape(-1, n_in)
    # per-tensor scales over the whole input (all leading dims), spec 1.3
    if signed_act:
        x_int, s_x = quantize_signed(x2, xbit)
        L_x = Ls(xbit)
    else:
        x_int, s_x = quantize_unsigned(x2, xbit)
        L_x = Lu(xbit)
    w_int, s_w = quantize_signed(weight, wbit)

    if mode == "inference":
        Y = _exact_matmul(x_int, w_int)
    else:
        tiles = [(s, min(s + nrow, n_in)) for s in range(0, n_in, nrow)]
        Y = oracle_mvm(
            x_int,
            w_int,
            signed_act=signed_act,
            wbit=wbit,
            xbit=xbit,
            adc_prec=adc_prec,
            nrow=nrow,
            tiles=tiles,
            act_enc=act_enc,
            hybrid_levels=hybrid_levels,
            hybrid_exact=hybrid_exact,
            rand_noise_sigma=rand_noise_sigma,
            non_linear_sigma=non_linear_sigma,
            voting_levels=voting_levels,
            num_samp=num_samp,
            generator=generator,
            trace=trace,
        )
    y = _dequantize(Y, s_w, s_x, Ls(wbit), L_x)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.reshape(*lead, weight.shape[0])


# --------------------------------------------------------------------------------------
# 3.1 / 7 Conv2d
# --------------------------------------------------------------------------------------


def conv_channel_tiles(C: int, k: int, nrow: int, all_groups: bool = False):
    """Channel ranges [c0, c1) of the processed tiles (spec 3.1, quirk Q1)."""
    c_map = nrow // (k * k)
    if c_map == 0:
        raise ValueError(f"kernel {k}x{k} does not fit in nrow={nrow} rows (k^2 > nrow)")
    G = math.ceil(C / c_map)
    T = math.ceil(C * k * k / nrow)
    n = G if all_groups else T
    return [(g * c_map, min((g + 1) * c_map, C)) for g in range(n)]


def oracle_conv2d(
    x,
    weight,
    bias=None,
    *,
    stride=1,
    padding=0,
    mode="simulate",
    signed_act=False,
    all_groups=False,
    wbit=8,
    xbit=8,
    adc_prec=8,
    nrow=255,
    act_enc=None,
    hybrid_levels=0,
    hybrid_exact=False,
    rand_noise_sigma=0.0,
    non_linear_sigma=0.0,
    voting_levels=0,
    num_samp=1,
    generator=None,
    trace=None,
):
    """ASiMConv2d (Simulation or Inference). x [B, C, H, W], weight [O, C, k, k].

    Simulation: one float32 F.conv2d per (tile, weight bit, activation bit) on 0/1 planes,
    elementwise normalise/noise/ADC/rescale per cycle, like the reference. Channels beyond
    the T = ceil(C*k^2/nrow) processed tiles are dropped (Q1) unless all_groups=True.
    """
    mode = _check_mode(mode)
    if not (isinstance(stride, int) and isinstance(padding, int)):
        raise ValueError("only int stride and padding are supported")
    x = x.to(torch.float32)
    weight = weight.to(torch.float32)
    O, C, kh, kw = weight.shape
    if kh != kw:
        raise ValueError("only square kernels are supported")
    k = kh
    if signed_act:
        if act_enc is not None:
            raise ValueError("conv bit-parallel encoding needs unsigned activations")
        x_int, s_x = quantize_signed(x, xbit)
        L_x = Ls(xbit)
    else:
        x_int, s_x = quantize_unsigned(x, xbit)
        L_x = Lu(xbit)
    w_int, s_w = quantize_signed(weight, wbit)

    if mode == "inference":
        Y = F.conv2d(x_int.double(), w_int.double(), stride=stride, padding=padding)
        Y = Y.to(torch.float32)
    else:
        tiles = conv_channel_tiles(C, k, nrow, all_groups)
        xpl = (signed_bit_planes if signed_act else unsigned_bit_planes)(x_int, xbit)
        wpl = signed_bit_planes(w_int, wbit)

        def mac(t, i, j):
            c0, c1 = tiles[t]
            return F.conv2d(xpl[j][:, c0:c1], wpl[i][:, c0:c1], stride=stride, padding=padding)

        Y = _bit_level_loop(
            mac,
            n_tiles=len(tiles),
            tile_labels=[list(tt) for tt in tiles],
            signed_act=signed_act,
            wbit=wbit,
            xbit=xbit,
            adc_prec=adc_prec,
            nrow=nrow,
            act_enc=act_enc,
            hybrid_levels=hybrid_levels,
            hybrid_exact=hybrid_exact,
            rand_noise_sigma=rand_noise_sigma,
            non_linear_sigma=non_linear_sigma,
            voting_levels=voting_levels,
            num_samp=num_samp,
            compression_alpha=0.0,
            generator=generator,
            trace=trace,
        )
    y = _dequantize(Y, s_w, s_x, Ls(wbit), L_x)
    if bias is not None:
        y = y + bias.to(torch.float32).view(1, -1, 1, 1)
    return y


# --------------------------------------------------------------------------------------
# 7.2 Multi-head attention
# --------------------------------------------------------------------------------------


def oracle_attention(
    x,
    qkv_weight,
    qkv_bias,
    proj_weight,
    proj_bias,
    *,
    num_heads,
    mode="simulate",
    nrow=255,
    proj_wbit=8,
    proj_xbit=8,
    proj_adc=8,
    proj_act_enc=None,
    qk_qbit=8,
    qk_kbit=8,
    qk_adc=8,
    qk_k_enc=None,
    av_vbit=8,
    av_abit=8,
    av_adc=8,
    av_a_enc=None,
    hybrid_levels=0,
    generator=None,
):
    """ASiMMultiheadAttention (spec 7.2), x [B, N, C] -> [B, N, C], noise-free parts only
    (no sigma arguments), softmax scale embed_dim^-1/2 (Q13)."""
    mode = _check_mode(mode)
    x = x.to(torch.float32)
    B, N, C = x.shape
    H = num_heads
    assert C % H == 0
    d = C // H
    common = dict(mode=mode, nrow=nrow, hybrid_levels=hybrid_levels, generator=generator)

    # 1. qkv projection (signed activations)
    qkv = oracle_linear(
        x,
        qkv_weight,
        qkv_bias,
        signed_act=True,
        wbit=proj_wbit,
        xbit=proj_xbit,
        adc_prec=proj_adc,
        act_enc=proj_act_enc,
        **common,
    )
    qkv = qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # each [B, H, N, d]

    def sim(n_red, *, signed_act, wbit, xbit, adc, enc):
        tiles = [(s, min(s + nrow, n_red)) for s in range(0, n_red, nrow)]
        return tiles, dict(
            n_tiles=len(tiles),
            tile_labels=list(range(len(tiles))),
            signed_act=signed_act,
            wbit=wbit,
            xbit=xbit,
            adc_prec=adc,
            nrow=nrow,
            act_enc=enc,
            hybrid_levels=hybrid_levels,
            hybrid_exact=False,
            rand_noise_sigma=0.0,
            non_linear_sigma=0.0,
            voting_levels=0,
            num_samp=1,
            compression_alpha=0.0,
            generator=generator,
            trace=None,
        )

    # 2. QK: q = weight role (signed qbit), k = activation role (signed kbit)
    q_int, s_q = quantize_signed(q, qk_qbit)
    k_int, s_k = quantize_signed(k, qk_kbit)
    if mode == "inference":
        QK = _exact_matmul(q_int, k_int)  # [B, H, Nq, Nk]
    else:
        qpl = signed_bit_planes(q_int, qk_qbit)
        kpl = signed_bit_planes(k_int, qk_kbit)
        tiles, kw = sim(d, signed_act=True, wbit=qk_qbit, xbit=qk_kbit, adc=qk_adc, enc=qk_k_enc)

        def mac_qk(t, i, j):
            s, e = tiles[t]
            return torch.matmul(
                qpl[i][..., s:e].double(), kpl[j][..., s:e].double().transpose(-1, -2)
            ).to(torch.float32)

        QK = _bit_level_loop(mac_qk, **kw)
    attn = _dequantize(QK, s_q, s_k, Ls(qk_qbit), Ls(qk_kbit))
    # 3. scale with embed_dim (Q13), 4. float softmax
    attn = attn * C**-0.5
    attn = torch.softmax(attn, dim=-1)

    # 5. AV: scores = unsigned activation role (abit), v = signed weight role (vbit)
    a_int, s_a = quantize_unsigned(attn, av_abit)
    v_int, s_v = quantize_signed(v, av_vbit)
    if mode == "inference":
        AV = torch.matmul(a_int.double(), v_int.double()).to(torch.float32)  # [B, H, N, d]
    else:
        apl = unsigned_bit_planes(a_int, av_abit)
        vpl = signed_bit_planes(v_int, av_vbit)
        tiles_av, kw = sim(
            N, signed_act=False, wbit=av_vbit, xbit=av_abit, adc=av_adc, enc=av_a_enc
        )

        def mac_av(t, i, j):
            s, e = tiles_av[t]
            return torch.matmul(apl[j][..., :, s:e].double(), vpl[i][..., s:e, :].double()).to(
                torch.float32
            )

        AV = _bit_level_loop(mac_av, **kw)
    out = _dequantize(AV, s_v, s_a, Ls(av_vbit), Lu(av_abit))
    # 6. [B, H, N, d] -> [B, N, C]
    out = out.transpose(1, 2).reshape(B, N, C)
    # 7. output projection
    return oracle_linear(
        out,
        proj_weight,
        proj_bias,
        signed_act=True,
        wbit=proj_wbit,
        xbit=proj_xbit,
        adc_prec=proj_adc,
        act_enc=proj_act_enc,
        **common,
    )
