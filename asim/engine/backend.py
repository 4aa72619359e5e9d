"""The one interface every engine backend implements, and what a call hands it.

A backend is an object with a ``name`` (for the record of what ran and for
``ASIM_BACKEND``), ``writes_rows`` (whether it can write a result whose rows sit at
arbitrary offsets, :class:`~asim.engine.operands.OutputRows`), and three methods:

* ``why_not_device(device) -> str | None``: why it cannot run on ``device`` at all;
* ``why_not(program, operands) -> str | None``: the one-line reason it cannot run this call
  (None: it can); the forced-backend error quotes it;
* ``run(program, operands, out)``: write ``Y`` into ``out`` (``[B, M, O]`` float32, any
  strides, or an ``OutputRows`` where ``writes_rows``).

The engine (:mod:`asim.engine.core`) asks the backends of the call's device in order of
preference and runs the first that can; it never asks a backend's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .operands import OutputRows, Patches, ProgrammedArray
from .program import Program

__all__ = ["CHUNK_ELEMENTS", "Backend", "Operands", "run_chunks"]

CHUNK_ELEMENTS = 1 << 22
"""Partial sums handled per chunk (4 Mi float32 = 16 MiB per temporary)."""


@dataclass
class Operands:
    """One call's operands, as the backends see them.

    Attributes:
        x: activation codes ``[B, M, R]``, or a :class:`Patches` (``B = 1``).
        w: weight codes ``[Bw, R, O]``, ``Bw`` in ``(1, B)``.
        programmed: the programmed array of ``w`` (``Bw = 1``), or None.
        cell_noise: per-bit weight-cell deviation ``[Bw, R, w, O]``, or None.
        key: the call's noise key (uint64 as a Python int).
        sample, pos: int64 ``[B, M]`` sample index and position of every output row (None
            when noise-free).
        device: where the call runs.
    """

    x: Tensor | Patches
    w: Tensor
    programmed: ProgrammedArray | None
    cell_noise: Tensor | None
    key: int
    sample: Tensor | None
    pos: Tensor | None
    device: torch.device

    @property
    def batch(self) -> int:
        return 1 if isinstance(self.x, Patches) else self.x.shape[0]

    def dense(self) -> Operands:
        """These operands with a :class:`Patches` copied into a dense ``[1, M, R]`` tensor."""
        if not isinstance(self.x, Patches):
            return self
        x = self.x.materialize()[None]
        return Operands(
            x, self.w, self.programmed, self.cell_noise, self.key, self.sample, self.pos,
            self.device,
        )  # fmt: skip


@runtime_checkable
class Backend(Protocol):
    """An engine backend (see the module docstring)."""

    name: str
    writes_rows: bool

    def why_not_device(self, device: torch.device) -> str | None: ...

    def why_not(self, program: Program, operands: Operands) -> str | None: ...

    def run(self, program: Program, operands: Operands, out: Tensor | OutputRows) -> None: ...


class ChunkRunner(Protocol):
    """A backend's state for one call, run over chunks of rows by :func:`run_chunks`."""

    def chunk_elements_per_row(self, R: int) -> int: ...

    def run_chunk(self, x, batch: tuple[int, int], rows: tuple[int, int], y) -> None: ...


def why_not_packed(
    program: Program, operands, *, max_bits: int, max_votes: int | None, cell_noise_fix: str
) -> str | None:
    """The refusals the bit-packed kernels (native C, Triton) share, as one line each:
    weight-parallel programs, weight-cell variation and operand widths (or vote counts) beyond
    the kernel's limits run on the torch backend."""
    macro = program.macro
    if program.weight_parallel:
        return (
            "the weight-parallel mode (macro.weight_parallel) runs on the torch backend: "
            "use ASIM_BACKEND=torch or unset it"
        )
    if operands.cell_noise is not None:
        return f"weight-cell variation (noise.cell_sigma) needs {cell_noise_fix}"
    votes = program.plan.votes
    if max(macro.weight_bits, macro.input_bits) > max_bits or (
        max_votes is not None and votes > max_votes
    ):
        shown = f", {votes} votes" if max_votes is not None else ""
        return (
            f"cannot run this call (weight_bits={macro.weight_bits}, input_bits="
            f"{macro.input_bits}{shown}): use ASIM_BACKEND=torch"
        )
    return None


def run_chunks(runner: ChunkRunner, x, out) -> None:
    """Chunks of rows (and of leading indices) of ``x`` through ``runner``, so memory stays
    bounded whatever the batch size (every draw is addressed by the call's noise stream,
    so chunking changes no bit)."""
    Bt, M, R = (1, *x.shape) if isinstance(x, Patches) else x.shape
    rows_per_chunk = max(1, CHUNK_ELEMENTS // runner.chunk_elements_per_row(R))
    b_step = max(1, min(Bt, rows_per_chunk // max(M, 1)))
    m_step = M if b_step > 1 or M <= rows_per_chunk else rows_per_chunk
    for b0 in range(0, Bt, b_step):
        b1 = min(Bt, b0 + b_step)
        for m0 in range(0, M, m_step):
            m1 = min(M, m0 + m_step)
            xc = x if isinstance(x, Patches) else x[b0:b1, m0:m1]
            y = out.rows(m0, m1) if isinstance(out, OutputRows) else out[b0:b1, m0:m1]
            runner.run_chunk(xc, (b0, b1), (m0, m1), y)
