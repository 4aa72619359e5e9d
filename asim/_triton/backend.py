"""The ``triton`` backend of the engine: one fused kernel launch per chunk (GPU, or the
Triton interpreter on CPU with ``TRITON_INTERPRET=1``).

Same interface as the engine's other backends (``asim.engine.native``,
``asim.engine.torch_backend``): built once per call from the call's job (plan, tiles,
weights, noise stream), then ``run_chunk`` writes each chunk's ``Y``. Programmed weights
are kept on the device as compact codes (one byte per weight for <= 8 bits) in the job's
:class:`~asim.engine.operands.ProgrammedArray`, so they are converted once per weight
change.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..engine.backend import run_chunks, why_not_packed
from .launch import (
    KernelTables,
    activation_levels,
    block_k,
    launch,
    padded_tiles,
    row_keys,
    weight_codes,
    weight_planes,
)

__all__ = ["BACKEND", "MAX_BITS", "PLANES", "TritonBackend"]

PLANES: bool | None = None
"""How the kernel gets its 0/1 operands. True: weight bit planes are programmed once and
the chunk's cycle levels are precomputed by torch (tiles padded to whole blocks), so the
kernel only loads and multiplies; False: the kernel cuts them from the integer codes in
registers (no extra memory; reads a conv's patches in place). None: True on CUDA, where the
extraction would cost more instructions than the conversion itself, False on CPU."""

MAX_BITS = 31
"""Most bit planes of a weight or activation code (codes are read as int32)."""


class TritonBackend:
    """The Triton kernel (see the module docstring); one shared instance."""

    name = "triton"
    writes_rows = False

    def why_not_device(self, device: torch.device) -> str | None:
        from . import available as device_ok
        from . import importable

        if device_ok(device):
            return None
        if not importable():
            need = "the triton package (it ships with the CUDA torch wheel; or ASIM_BACKEND=torch)"
        elif device.type == "cpu":
            need = "TRITON_INTERPRET=1 set before Python starts (slow, for tests)"
        else:
            need = "a CUDA device (or CPU tensors with TRITON_INTERPRET=1)"
        return f"on {device.type} it needs {need}"

    def why_not(self, program, operands) -> str | None:
        why = self.why_not_device(operands.device) or why_not_packed(
            program, operands, max_bits=MAX_BITS, max_votes=None,
            cell_noise_fix="ASIM_BACKEND=torch or native",
        )  # fmt: skip
        return why

    def run(self, program, operands, out) -> None:
        run_chunks(_TritonCall(program, operands), operands.x, out)


class _TritonCall:
    """Runs chunks of one call with the Triton kernel."""

    def __init__(self, program, ops):
        self.job = ops
        self.src_tiles = program.tiles
        self.wb = program.macro.weight_bits
        device = ops.device
        max_rows = program.max_rows
        self.max_rows = max_rows
        self.tables = program.form(
            ("triton", str(device)),
            lambda: KernelTables.from_plan(program.plan, program.top, device, program.pattern),
        )
        self.planes = PLANES if PLANES is not None else device.type == "cuda"
        self._dense = None
        tiles = program.tiles
        if self.planes:
            self.bk = block_k(max_rows, planes=True)
            self.ptiles, self.rpad = padded_tiles(tiles, self.bk)
            self.pmax = max(b - a for a, b in self.ptiles)  # > bk: the kernel loops
            tiles = self.ptiles
        self.tiles = torch.tensor(tiles, dtype=torch.int64, device=device).reshape(-1, 2)
        if self.planes:
            args = (self.wb, program.tiles, self.ptiles, self.rpad, device)
            if ops.programmed is not None:
                self.w = ops.programmed.form(
                    ("triton_planes", self.wb, program.tiles, self.bk, str(device)),
                    lambda: weight_planes(ops.w[:1], *args),
                )
            else:
                self.w = weight_planes(ops.w, *args)
        elif ops.programmed is not None:
            self.w = ops.programmed.form(
                ("triton_codes", self.wb, str(device)),
                lambda: weight_codes(ops.w[:1], self.wb, device),
            )
        else:
            self.w = weight_codes(ops.w, self.wb, device)

    def chunk_elements_per_row(self, R: int) -> int:
        if self.planes:  # a chunk's cycle levels: n_levels * rpad bytes per row, <= 256 MiB
            return max(1, self.tables.n_levels * self.rpad // 64)
        return 1  # counts and accumulators live in registers: only Y is written

    def run_chunk(self, x, batch: tuple[int, int], rows: tuple[int, int], y: Tensor) -> None:
        """``y [b, Mc, O]`` for the chunk's codes (a tensor ``[b, Mc, R]``, or the call's
        :class:`~asim.engine.operands.Patches` with ``b = 1``)."""
        job = self.job
        (b0, b1), (m0, m1) = batch, rows
        rkeys = None
        if self.tables.noisy:
            rkeys = row_keys(job.key, job.sample[b0:b1, m0:m1], job.pos[b0:b1, m0:m1])
        w = self.w if self.w.shape[0] == 1 else self.w[b0:b1]
        if self.planes:
            if hasattr(x, "row_offset"):  # Patches: materialised once, this chunk's rows
                if self._dense is None:
                    self._dense = x.materialize()
                x = self._dense[m0:m1][None]
            levels = activation_levels(x, self.tables, self.src_tiles, self.ptiles, self.rpad)
            launch(
                self.tables, levels, w, self.tiles, y, rkeys=rkeys, planes=True, bk=self.bk,
                max_rows=self.pmax,
            )  # fmt: skip
        elif hasattr(x, "row_offset"):  # Patches: gathered in place through offsets
            launch(
                self.tables, x.view, w, self.tiles, y, rkeys=rkeys,
                row_off=x.row_offset[m0:m1].contiguous(), col_off=x.col_offset,
                max_rows=self.max_rows,
            )  # fmt: skip
        else:
            launch(self.tables, x, w, self.tiles, y, rkeys=rkeys, max_rows=self.max_rows)


BACKEND = TritonBackend()
"""The Triton backend."""
