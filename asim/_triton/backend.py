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

from .launch import KernelTables, launch, row_keys, weight_codes

__all__ = ["MAX_BITS", "TritonBackend", "available"]

MAX_BITS = 31
"""Most bit planes of a weight or activation code (codes are read as int32)."""


def available(job) -> bool:
    """Can the kernel run this call? Triton importable and the device CUDA (or CPU under
    the interpreter), integer counts (no weight-cell variation), <= MAX_BITS planes."""
    from . import available as device_ok

    macro = job.plan.macro
    return (
        device_ok(job.device)
        and job.cell_noise is None
        and max(macro.weight_bits, macro.input_bits) <= MAX_BITS
    )


class TritonBackend:
    """Runs chunks of one call with the Triton kernel; built once per call."""

    name = "triton"

    def __init__(self, job):
        self.job = job
        plan = job.plan
        self.wb = plan.macro.weight_bits
        device = job.device
        max_rows = max(b - a for a, b in job.tiles)
        top = max_rows * max(c.levels for c in plan.cycles)
        self.tables = KernelTables.for_plan(plan, top, device)
        self.tiles = torch.tensor(job.tiles, dtype=torch.int64, device=device).reshape(-1, 2)
        if job.programmed is not None:
            self.w = job.programmed.form(
                ("triton_codes", self.wb, str(device)),
                lambda: weight_codes(job.w3[:1], self.wb, device),
            )
        else:
            self.w = weight_codes(job.w3, self.wb, device)

    def chunk_elements_per_row(self, R: int) -> int:
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
        if hasattr(x, "row_offset"):  # Patches: gathered in place through offsets
            launch(
                self.tables, x.view, w, self.tiles, y, rkeys=rkeys,
                row_off=x.row_offset[m0:m1].contiguous(), col_off=x.col_offset,
            )  # fmt: skip
        else:
            launch(self.tables, x, w, self.tiles, y, rkeys=rkeys)
