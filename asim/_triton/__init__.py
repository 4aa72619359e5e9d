"""The Triton backend of the ACiM engine: one fused kernel per layer call.

* :mod:`asim._triton.kernel`: the ``@triton.jit`` kernel (int8 ``tl.dot`` of bit planes,
  table-driven ADC, counter-based exact code sampling, voting, shift-and-add in registers);
* :mod:`asim._triton.launch`: the call's tables on the device and the launch;
* :mod:`asim._triton.backend`: :class:`TritonBackend`, the engine backend interface.

Triton ships with the CUDA torch wheel. On CUDA tensors the kernel is compiled; on CPU
tensors it runs only under the Triton interpreter, which is how the CPU test suite checks it
bit for bit. ``TRITON_INTERPRET=1`` must be in the environment before ``triton.language`` is
first imported (Lightning imports it), i.e. set it when the process starts.

The engine selects it per call (``TritonBackend(job)`` where ``backend.available(job)``):
on CUDA by default, anywhere with ``ASIM_BACKEND=triton``.
"""

from __future__ import annotations

import functools
import importlib.util
import os

__all__ = ["available", "importable", "interpreting"]


@functools.cache
def importable() -> bool:
    """Is the ``triton`` package installed?"""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Is the Triton interpreter on (``TRITON_INTERPRET=1``)?"""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(device) -> bool:
    """Can the Triton backend run on ``device``: triton installed, and the device is CUDA
    or the interpreter is on (CPU)."""
    if not importable():
        return False
    kind = getattr(device, "type", str(device))
    return kind == "cuda" or (kind == "cpu" and interpreting())
