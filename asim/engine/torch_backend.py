"""The torch backend: the portable reference implementation (CPU and CUDA).

One GEMM of stacked 0/1 bit planes per tile gives every (weight bit, activation bit) column
MAC at once (bf16/fp16 inputs are exact: every sum is an integer small enough); the cycle
counts are then converted with the plan's tables (:mod:`asim.engine.plan`) and the exact
code sampler (:func:`asim.noise.sample_codes`), and accumulated in float32 in the spec's
order (tile, weight bit, cycle, descending), exactly as the native kernel does.

With weight-cell variation the counts are not integers: that case converts with the spec's
float chain and Gaussian read-out noise drawn from the same counter-based stream
(:func:`asim.rng.normal_from`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import rng
from .backend import run_chunks
from .plan import ADC, EXACT, GAIN_BITS, NOISY, VOTED, div
from .weight_parallel import weight_parallel

__all__ = ["BACKEND", "TorchBackend"]


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


def _gemm_dtype(max_rows: int, device: torch.device, float_planes: bool) -> torch.dtype:
    if float_planes:
        return torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if max_rows <= 256 else torch.float32
    return torch.float16 if max_rows <= 2048 else torch.float32


def weight_planes(w3: Tensor, wb: int, dtype: torch.dtype, cell_noise: Tensor | None) -> Tensor:
    """Weight bit planes ``(Bw, w*O, R)`` for the GEMM (plus cell deviations, if any)."""
    wp = _planes(_codes(w3, wb, True), wb, torch.float32, dim=2)  # (Bw, R, w, O)
    if cell_noise is not None:
        wp = wp + cell_noise
    Bw, R, _, O = wp.shape
    # (Bw, w*O, R): the GEMM computes W^T X^T so its output is cycle-major.
    return wp.to(dtype).permute(0, 2, 3, 1).reshape(Bw, wb * O, R)


class TorchBackend:
    """The portable backend (CPU and CUDA, see the module docstring); one shared instance.
    It also runs the weight-parallel mode (:mod:`asim.engine.weight_parallel`)."""

    name = "torch"
    writes_rows = False

    def why_not_device(self, device: torch.device) -> str | None:
        return None

    def why_not(self, program, operands) -> str | None:
        return None

    def run(self, program, operands, out) -> None:
        operands = operands.dense()
        if program.weight_parallel:
            out.copy_(_weight_parallel(program, operands))
            return
        run_chunks(_TorchCall(program, operands), operands.x, out)


def _weight_parallel(program, ops) -> Tensor:
    """``Y [B, M, O]`` of the weight-parallel mode (spec §8.3)."""
    ekeys = None
    if program.plan.readout is not None:
        cols = torch.arange(program.outputs, dtype=torch.int64, device=ops.device)
        ekeys = rng.element_keys(ops.key, ops.sample[..., None], ops.pos[..., None], cols)
    return weight_parallel(ops.x, ops.w, program.plan, program.tiles, ekeys)


def _value_tables(program, device) -> tuple[list[Tensor], list[Tensor]]:
    plan, top = program.plan, program.top
    vcount = [plan.value_by_count(c, top).to(device) for c in range(plan.ncyc)]
    vcode = [t.to(device) for t in plan.code_values()]
    return vcount, vcode


def _pattern_tables(program, device) -> dict:
    """The chip's fixed pattern (spec §4.7) on ``device``: per-column gain, offset and the
    row offset of its noise block, and per cycle the fine value table; with per-ADC full
    scales (§4.8) each column's value-table offset, per cycle the fine code table and the
    value tables of every class, concatenated."""
    plan, pat = program.plan, program.pattern
    rows = [plan.fine * f + 1 for f in plan.full_scale]
    out = {
        "G": pat.G.to(device),
        "D": pat.D.to(device),
        "block": [(pat.cls * r).to(device) for r in rows],
        "top": [plan.fine * f for f in plan.full_scale],
        "values": [plan.fine_values(c).to(device) for c in range(plan.ncyc)],
        "vbase": None,
    }
    if pat.vcls is not None:
        out["vbase"] = (pat.vcls * (plan.macro.adc_levels + 1)).to(device)
        out["codes"] = [plan.fine_codes(c).to(device) for c in range(plan.ncyc)]
        out["class_values"] = [
            torch.cat([plan.value_by_code(c, n) for n in pat.classes]).to(device)
            for c in range(plan.ncyc)
        ]
    return out


class _TorchCall:
    """Runs chunks of one call with torch operations."""

    def __init__(self, program, ops):
        self.job = ops
        self.tiles = program.tiles
        plan = program.plan
        self.plan, self.macro = plan, plan.macro
        self.wb, self.xb, self.ncyc = plan.macro.weight_bits, plan.macro.input_bits, plan.ncyc
        self.O = program.outputs
        device = ops.device
        self.float_counts = ops.cell_noise is not None
        self.dtype = _gemm_dtype(program.max_rows, device, self.float_counts)
        self.vcount, self.vcode = program.form(
            ("torch", str(device)), lambda: _value_tables(program, device)
        )
        self.pattern = None
        if program.pattern is not None:
            self.pattern = program.form(
                ("torch_pattern", str(device)), lambda: _pattern_tables(program, device)
            )
            blocks = program.pattern.blocks
            self.tables = (
                [plan.fine_code_table(c, blocks) for c in range(self.ncyc)] if plan.noisy else None
            )
        else:
            self.tables = (
                [plan.code_table(c) for c in range(self.ncyc)]
                if plan.noisy and not self.float_counts
                else None
            )
        if ops.programmed is not None and ops.cell_noise is None:
            self.wpt = ops.programmed.form(
                ("torch_planes", self.wb, self.dtype, str(device)),
                lambda: weight_planes(ops.w, self.wb, self.dtype, None),
            )
        else:
            self.wpt = weight_planes(ops.w, self.wb, self.dtype, ops.cell_noise)

    def chunk_elements_per_row(self, R: int) -> int:
        return self.xb * self.wb * self.O

    def run_chunk(self, x: Tensor, batch: tuple[int, int], rows: tuple[int, int], y: Tensor):
        """``y [b, Mc, O]`` for codes ``x [b, Mc, R]`` of batches ``batch``, rows ``rows``."""
        b0, b1 = batch
        wpt = self.wpt if self.wpt.shape[0] == 1 else self.wpt[b0:b1]
        B, Mc, _ = x.shape
        # Planes laid out (B, R, x, Mc): a tile is a contiguous block of rows, so the GEMM
        # reads it in place.
        codes = _codes(x, self.xb, self.plan.signed).transpose(1, 2).contiguous()  # (B, R, Mc)
        xpt = _planes(codes, self.xb, self.dtype, dim=2).view(B, -1, self.xb * Mc)
        ekeys = self._element_keys(batch, rows) if self.plan.noisy else None
        coef = self.plan.coef
        yt = torch.zeros(B, self.O, Mc, dtype=torch.float32, device=x.device)  # Y^T
        for t, (r0, r1) in enumerate(self.tiles):
            g = torch.matmul(wpt[:, :, r0:r1], xpt[:, r0:r1])  # (B, w*O, x*Mc)
            counts = self._cycle_counts(g.view(B, self.wb, self.O, self.xb, Mc))
            if self.float_counts:
                values = self._float_adc(counts, ekeys, t)
            else:
                values = self._adc(counts, ekeys, t)
            # The spec's float32 accumulation order: weight bit, then cycle, descending.
            for i in range(self.wb - 1, -1, -1):
                for c in range(self.ncyc - 1, -1, -1):
                    yt.add_(values[i, :, :, c], alpha=coef[i][c])
        y.copy_(yt.transpose(1, 2))

    def _element_keys(self, batch, rows) -> Tensor:
        """int64 ``(B, O, Mc)`` key of every output element of the chunk."""
        job = self.job
        (b0, b1), (m0, m1) = batch, rows
        sample = job.sample[b0:b1, m0:m1].unsqueeze(1)
        pos = job.pos[b0:b1, m0:m1].unsqueeze(1)
        out = torch.arange(self.O, dtype=torch.int64, device=sample.device).view(1, -1, 1)
        return rng.element_keys(job.key, sample, pos, out)

    def _cycle_counts(self, g: Tensor) -> Tensor:
        """(B, w, O, x, Mc) bit MACs -> (w, B, O, C, Mc) float32 cycle counts (spec §5)."""
        B, w, O, _, Mc = g.shape
        src = g.transpose(0, 1)  # (w, B, O, x, Mc)
        if all(len(c.bits) == 1 for c in self.plan.cycles) and not self.plan.signed:
            return src.to(torch.float32, memory_format=torch.contiguous_format)
        counts = torch.empty(w, B, O, self.ncyc, Mc, dtype=torch.float32, device=g.device)
        for c, cyc in enumerate(self.plan.cycles):
            dst = counts[:, :, :, c]
            dst.copy_(src[:, :, :, cyc.bits[0]])
            for k, bit in enumerate(cyc.bits[1:], start=1):
                dst.add_(src[:, :, :, bit].float(), alpha=float(1 << k))
        return counts

    def _draw_base(self, tile: int, i: int, c: int) -> int:
        return ((tile * self.wb + i) * self.ncyc + c) * self.plan.votes

    def _adc(self, counts: Tensor, ekeys: Tensor | None, tile: int) -> Tensor:
        """Integer counts -> ADC values with the plan's tables (spec §4.1, §6, §8.1-§8.2);
        the noisy conversions of one cycle are drawn together (all weight bits at once)."""
        from ..noise import sample_codes, vote_codes

        plan, K = self.plan, self.plan.votes
        idx = counts.to(torch.int64)
        values = torch.empty_like(counts)
        pat = self.pattern
        vbase = None
        for c in range(self.ncyc):
            modes = [plan.mode[i][c] for i in range(self.wb)]
            vcode = self.vcode[c]
            if pat is None:
                rows = at = idx[:, :, :, c]
                vtab = self.vcount[c]
            else:  # a chip's fixed pattern (spec §4.7): each column's fine index
                shape = (self.wb, 1, self.O, 1)
                G, D = pat["G"][tile].view(shape), pat["D"][tile, c].view(shape)
                at = idx[:, :, :, c].mul(G).add_(D).clamp_(min=0)
                at = at.bitwise_right_shift_(GAIN_BITS).clamp_(max=pat["top"][c])
                rows = at + pat["block"][c][tile].view(shape)
                vtab = pat["values"][c]
                if pat["vbase"] is not None:  # §4.8: the value of the column's own range
                    vbase = pat["vbase"][tile].view(shape)
                    vcode = pat["class_values"][c]
            if ADC in modes:
                if vbase is None:
                    values[:, :, :, c] = vtab[at]
                else:
                    values[:, :, :, c] = vcode[vbase + pat["codes"][c][at]]
            for i, m in enumerate(modes):
                if m == EXACT:
                    values[:, :, :, c][i] = counts[i, :, :, c]
            for kind, draws in ((NOISY, 1), (VOTED, K)):
                bits = [i for i, m in enumerate(modes) if m == kind]
                if not bits:
                    continue
                sel = torch.tensor(bits, device=counts.device)
                draw = torch.tensor(
                    [[self._draw_base(tile, i, c) + k for i in bits] for k in range(draws)],
                    dtype=torch.int64,
                    device=counts.device,
                ).view(draws, len(bits), 1, 1, 1)
                m = rows.index_select(0, sel)  # (n, B, O, Mc)
                code = sample_codes(self.tables[c], m, rng.draw_u32(ekeys, draw))
                code = (code[0] if draws == 1 else vote_codes(code)).to(torch.int64)
                if vbase is not None:
                    code = code + vbase.index_select(0, sel)
                values[:, :, :, c].index_copy_(0, sel, vcode[code])
        return values

    def _float_adc(self, counts: Tensor, ekeys: Tensor | None, tile: int) -> Tensor:
        """Non-integer counts (weight-cell variation): the spec's float chain, with Gaussian
        read-out noise from the counter-based stream (not bit-identical across devices)."""
        plan, macro = self.plan, self.macro
        A, rec, sign = macro.adc_levels, plan.reciprocal, self.ncyc - 1
        exact = counts.clone()
        if plan.alpha:
            raw = counts[:, :, :, sign].clone() if plan.late_sign else None
            counts = counts / (counts * plan.alpha + 1.0)
            if raw is not None:
                counts[:, :, :, sign] = raw
        fs = torch.tensor(plan.full_scale, dtype=torch.float32, device=counts.device)
        fs = fs.view(1, 1, 1, -1, 1)
        a = (counts * (1.0 / fs) if rec else counts / fs).clamp_(0, 1)
        codes = None
        if plan.noisy:
            codes = torch.empty_like(a)
            for i in range(self.wb):
                for c in range(self.ncyc):
                    m = plan.mode[i][c]
                    base = a[i, :, :, c]
                    if m not in (NOISY, VOTED):
                        continue
                    draws = [
                        self._noisy_code(base, c, ekeys, self._draw_base(tile, i, c) + k)
                        for k in range(plan.votes if m == VOTED else 1)
                    ]
                    if m == VOTED:
                        from ..noise import vote_codes

                        codes[i, :, :, c] = vote_codes(torch.stack(draws)).float()
                    else:
                        codes[i, :, :, c] = draws[0]
        if plan.late_sign:
            s = a[:, :, :, sign]
            s.copy_(s / (s * plan.alpha + 1.0))
        q = a.mul_(A).round_()
        if codes is not None:
            for i in range(self.wb):
                for c in range(self.ncyc):
                    if plan.mode[i][c] in (NOISY, VOTED):
                        q[i, :, :, c] = codes[i, :, :, c]
        v = div(q, A, rec).mul_(fs)
        for i in range(self.wb):
            for c in range(self.ncyc):
                if plan.mode[i][c] == EXACT:
                    v[i, :, :, c] = exact[i, :, :, c]
        return v

    def _noisy_code(self, a: Tensor, c: int, ekeys: Tensor, draw: int) -> Tensor:
        """One Gaussian-noised conversion of normalised values ``a`` (float codes)."""
        plan, macro = self.plan, self.macro
        sigma = plan.readout.constant_sigma(macro.adc_levels)
        offset = None
        if sigma is None:
            offset, sigma = plan.readout.moments(a * macro.nrow, macro.adc_levels)  # Q11
        z = rng.normal_from(ekeys, draw)
        y = a + z * sigma
        if offset is not None:
            y = y + offset
        y = y.clamp_(0, 1)
        if plan.late(c):
            y = y / (y * plan.alpha + 1.0)
        return y.mul_(macro.adc_levels).round_()


BACKEND = TorchBackend()
"""The torch backend."""
