"""The bit-level ACiM matrix-vector engine: one routine for conv, linear and attention.

Layers lower their operation to ``Y = X_int @ W_int`` over integer codes and call
:func:`acim_matmul`; it reproduces the spec's per-cycle model (spec §3-§8) bit for bit with
noise off, without its per-cycle loop. The package, in reading order (``docs/engine.md``
walks through it):

* :mod:`~asim.engine.operands`: what layers hand in: codes, :class:`Patches` (a conv's
  input read in place), :class:`ProgrammedArray` (weights programmed once per weight
  change), :class:`NoiseStream` (the call's noise key and each row's sample identity);
* :mod:`~asim.engine.plan`: the cycle plan and ADC arithmetic of a (macro, noise);
* :mod:`~asim.engine.program`: the compiled :class:`Program` of a layer's matmul (plan,
  tiles, outputs, and every backend's derived tables, built once), and the operation
  counts the cost model reads (:meth:`Program.operations`);
* :mod:`~asim.engine.backend`: the :class:`Backend` protocol (``why_not``, ``run``) and the
  :class:`Operands` of a call;
* :mod:`~asim.engine.shortcut`: the exact shortcut (lossless, noise-free macros), decided by
  the engine alone;
* :mod:`~asim.engine.core`: :func:`acim_matmul`: program, shortcut, backend choice by
  preference (``ASIM_BACKEND=native|torch|triton`` forces one), the fallback of a backend
  that fails its first call (:func:`backend_fallbacks`);
* the backends, identical bits: :mod:`~asim.engine.native` (the C kernel,
  ``asim/_native/engine.c``), :mod:`~asim.engine.torch_backend` (portable reference, CUDA;
  it also runs the W4A4 weight-parallel mode, :mod:`~asim.engine.weight_parallel`, spec
  §8.3) and :mod:`asim._triton` (one fused Triton kernel, CUDA).

Noise is a counter-based stream (:mod:`asim.rng`): each conversion's code is drawn from its
exact distribution (:func:`asim.noise.code_table`) with a 32-bit uniform that is a pure
function of (call key, sample, position, output column, draw number), so results do not
depend on the backend, thread count, chunk size or batch composition.
"""

from .backend import Backend, Operands
from .core import (
    BACKENDS,
    Fallback,
    acim_matmul,
    backend_fallbacks,
    backends_used,
    describe_backends,
    forced_backend,
    reset_backends_used,
)
from .operands import ConvSource, NoiseStream, Patches, ProgrammedArray, compact_codes
from .plan import Cycle, Plan, activation_cycles, build_plan, linear_tiles
from .program import Operations, Program, compile_program
from .shortcut import exact_product, shortcut_applies

__all__ = [
    "BACKENDS",
    "Backend",
    "Fallback",
    "Operands",
    "Operations",
    "Program",
    "ConvSource",
    "Cycle",
    "NoiseStream",
    "Patches",
    "Plan",
    "ProgrammedArray",
    "acim_matmul",
    "activation_cycles",
    "backend_fallbacks",
    "backends_used",
    "build_plan",
    "compact_codes",
    "compile_program",
    "describe_backends",
    "exact_product",
    "forced_backend",
    "linear_tiles",
    "reset_backends_used",
    "shortcut_applies",
]
