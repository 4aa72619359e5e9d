"""``acim_matmul``: one engine call, from integer operands to the accumulator ``Y``.

1. compile the layer's :class:`~asim.engine.program.Program` (a layer passes its own, built
   once; a bare call finds it in a cache): the cycle plan, tiles and every backend's tables;
2. if the plan is lossless, try the exact shortcut (:mod:`asim.engine.shortcut`);
3. otherwise run the first backend of the device that can run the call
   (:class:`~asim.engine.backend.Backend`: ``why_not`` / ``run``). Every random draw is
   addressed by the call's :class:`~asim.engine.operands.NoiseStream`, so neither the
   backend nor the chunking nor the thread count changes a bit of the result.

Backends (identical bits; the choice only changes speed), in order of preference
(:data:`PREFERENCE`):

* CPU tensors: ``native`` (the C kernel, ``asim/_native/engine.c``, built on first use),
  then ``torch``;
* CUDA tensors: ``triton`` (one fused kernel, :mod:`asim._triton`) when triton is
  installed, then ``torch``;
* ``ASIM_BACKEND=native|torch|triton`` (environment, read at every call) forces one; a
  forced backend that cannot run a call fails with one line naming the fix (its
  ``why_not``). ``triton`` on CPU tensors runs under the Triton interpreter
  (``TRITON_INTERPRET=1`` set before Python starts; slow, for tests). Calls with
  weight-cell variation (``noise.cell_sigma``) and the weight-parallel mode
  (``macro.weight_parallel``) run on ``torch`` (``native`` also runs the former).

A chosen backend that fails on its first call on a device (a compile or launch error on a
GPU nobody tested) is not used again in the process: the call falls back to the next
backend that can run it, with one warning line, and :func:`backend_fallbacks` records it
(``describe_backends``, hence ``summary.backend`` of ``results.json``, names it). A forced
backend never falls back: its failure is an error.

The lossless, noise-free exact shortcut is taken whatever the backend. The backends that
ran are recorded per process: :func:`backends_used` (reset with :func:`reset_backends_used`),
summarised by :func:`describe_backends` (``summary.backend`` of ``results.json``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _triton  # noqa: F401 (asim.engine.core._triton: what tests patch)
from .._triton.backend import BACKEND as TRITON
from ..config import MacroConfig, NoiseConfig
from .backend import CHUNK_ELEMENTS, Backend, Operands
from .native import BACKEND as NATIVE
from .operands import NoiseStream, OutputRows, Patches, ProgrammedArray
from .program import Program, compile_program, normalise_tiles
from .shortcut import try_shortcut
from .torch_backend import BACKEND as TORCH

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "CHUNK_ELEMENTS",
    "PREFERENCE",
    "Fallback",
    "acim_matmul",
    "backend_fallbacks",
    "backends_used",
    "describe_backends",
    "device_backend",
    "forced_backend",
    "reset_backends_used",
    "select_backend",
]

BY_NAME: dict[str, Backend] = {b.name: b for b in (NATIVE, TORCH, TRITON)}
"""The engine's backends by name (the values of ``ASIM_BACKEND``)."""

BACKENDS = tuple(BY_NAME)
"""The engine's backend names."""

PREFERENCE: dict[str, tuple[Backend, ...]] = {"cpu": (NATIVE, TORCH), "cuda": (TRITON, TORCH)}
"""The backends tried per device type, best first (other device types: torch)."""

BACKEND_ENV = "ASIM_BACKEND"
"""The environment variable that forces a backend (unset or empty: the default choice)."""

EXACT = "exact"
"""What :func:`backends_used` records for a call answered by the exact shortcut."""

_USED: set[str] = set()


@dataclass(frozen=True)
class Fallback:
    """A backend that failed on its first call on a device, and what ran instead."""

    failed: str
    used: str
    device: str
    error: str  # one line: the exception's type and message

    def describe(self) -> str:
        return f"{self.failed} failed on {self.device} ({self.error}); fell back to {self.used}"


_FALLBACKS: list[Fallback] = []
_PROVEN: set[tuple[str, str]] = set()  # (backend, device type) that ran a call
_BROKEN: set[tuple[str, str]] = set()  # (backend, device type) that failed its first call
REPORT = (
    "please report it (the line above, the GPU, torch and triton versions) to the asim "
    "maintainers; ASIM_BACKEND=torch avoids the failing backend"
)


def forced_backend() -> str | None:
    """``ASIM_BACKEND`` (one of :data:`BACKENDS`), or None when unset or empty."""
    value = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not value:
        return None
    if value not in BY_NAME:
        raise ValueError(
            f"{BACKEND_ENV}={os.environ[BACKEND_ENV]!r} is not a backend: use one of "
            f"{', '.join(BACKENDS)} (or unset it for the default choice)"
        )
    return value


def _candidates(device: torch.device) -> tuple[tuple[Backend, ...], bool]:
    """The backends a call on ``device`` may use, best first, and whether one is forced
    (a forced one that cannot run on ``device`` at all fails here, in one line)."""
    forced = forced_backend()
    if forced is not None:
        backend = BY_NAME[forced]
        why = backend.why_not_device(device)
        if why is not None:
            raise ValueError(f"{BACKEND_ENV}={forced}: {why}")
        return (backend,), True
    return PREFERENCE.get(device.type, (TORCH,)), False


def device_backend(device: torch.device) -> str:
    """The backend calls on ``device`` get: ``ASIM_BACKEND`` if set (checked that it can run
    on ``device``), else the first of :data:`PREFERENCE` that can run there."""
    device = torch.device(device)
    candidates, forced = _candidates(device)
    for backend in candidates:
        if forced or (
            (backend.name, device.type) not in _BROKEN and backend.why_not_device(device) is None
        ):
            return backend.name
    return TORCH.name


def select_backend(program: Program, operands: Operands) -> Backend:
    """The backend of one call: the first candidate that can run it (a forced one fails in
    one line, its ``why_not``, where it cannot)."""
    candidates, forced = _candidates(operands.device)
    for backend in candidates:
        why = backend.why_not(program, operands)
        if why is None and (forced or (backend.name, operands.device.type) not in _BROKEN):
            return backend
        if forced:
            raise ValueError(f"{BACKEND_ENV}={backend.name}: {why}")
    return TORCH


def _run(program: Program, operands: Operands, y: Tensor, rows_out: OutputRows | None) -> bool:
    """Run the call on the first backend that can, falling back once per (backend, device)
    where a backend fails on its first call (see the module docstring). The backend writes
    ``rows_out`` where given and it can (then True is returned), else ``y``."""
    candidates, forced = _candidates(operands.device)
    kind = operands.device.type
    for backend in candidates:
        why = backend.why_not(program, operands)
        if why is not None:
            if forced:
                raise ValueError(f"{BACKEND_ENV}={backend.name}: {why}")
            continue
        if not forced and (backend.name, kind) in _BROKEN:
            continue
        out = rows_out if (rows_out is not None and backend.writes_rows) else y
        first = (backend.name, kind) not in _PROVEN
        if not first:
            backend.run(program, operands, out)
        else:
            try:
                backend.run(program, operands, out)
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception as err:
                line = f"{type(err).__name__}: {' '.join(str(err).split())}"[:300]
                if forced:
                    raise RuntimeError(
                        f"{BACKEND_ENV}={backend.name}: the backend failed on its first call "
                        f"on {kind} ({line}); {REPORT}"
                    ) from err
                _BROKEN.add((backend.name, kind))
                _pending.append((backend.name, kind, line))
                continue
            _PROVEN.add((backend.name, kind))
        _USED.add(backend.name)
        for failed, dev, line in _pending:
            fb = Fallback(failed, backend.name, dev, line)
            _FALLBACKS.append(fb)
            warnings.warn(f"asim: the {fb.describe()}; {REPORT}", RuntimeWarning, stacklevel=4)
        _pending.clear()
        return out is rows_out
    raise RuntimeError(  # pragma: no cover - torch runs every call
        "acim_matmul: no backend could run this call"
    )


_pending: list[tuple[str, str, str]] = []


def backend_fallbacks() -> tuple[Fallback, ...]:
    """The backends that failed on their first call in this process and what ran instead
    (:func:`describe_backends` names them; empty when every chosen backend worked)."""
    return tuple(_FALLBACKS)


def backends_used() -> frozenset[str]:
    """The backends that ran engine calls in this process since :func:`reset_backends_used`
    (names of :data:`BACKENDS`, plus ``"exact"`` for calls answered by the exact shortcut)."""
    return frozenset(_USED)


def reset_backends_used() -> None:
    """Forget what :func:`backends_used` recorded (e.g. before a simulated pass). Fallbacks
    stay recorded: the failed backend stays unused for the rest of the process."""
    _USED.clear()


def describe_backends(used=None, device: torch.device | str = "cpu") -> str | None:
    """One string for ``used`` (default :func:`backends_used`): the backends that ran the
    cycle simulation joined by ``+`` (e.g. ``"native"``); ``"<backend> (exact shortcut)"``
    when every call took the exact shortcut (the backend ``device`` would have used);
    None when no engine call ran. A fallback of this process is appended, e.g.
    ``"torch (fallback: triton failed on cuda (...); fell back to torch)"``."""
    used = backends_used() if used is None else set(used)
    ran = sorted(used - {EXACT})
    if ran:
        text = "+".join(ran)
    elif EXACT in used:
        text = f"{device_backend(torch.device(device))} (exact shortcut)"
    else:
        return None
    if _FALLBACKS:
        text += " (fallback: " + "; ".join(f.describe() for f in _FALLBACKS) + ")"
    return text


def acim_matmul(
    x_int: Tensor | Patches,
    w_int: Tensor | ProgrammedArray,
    *,
    macro: MacroConfig | None = None,
    signed_input: bool | None = None,
    tiles: Sequence[tuple[int, int]] | None = None,
    noise: NoiseConfig | None = None,
    stream: NoiseStream | None = None,
    generator: torch.Generator | None = None,
    cell_noise: Tensor | None = None,
    exact_shortcut: bool = True,
    out: Tensor | None = None,
    program: Program | None = None,
) -> Tensor:
    """Integer-domain accumulator ``Y`` of the macro computing ``x_int @ w_int``.

    Args:
        x_int: activation-role codes ``[..., M, R]``: integer-valued float32, or an
            integer dtype (:func:`compact_codes`), or a 2-D :class:`Patches`.
        w_int: weight-role codes ``[R, O]`` (a tensor or a :class:`ProgrammedArray`), or
            ``[..., R, O]`` with the same leading dims as ``x_int`` (signed,
            ``|w| <= 2^(weight_bits-1) - 1``).
        macro: bit widths, array size, ADC and cycle scheme (or give ``program``).
        signed_input: whether ``x_int`` holds signed codes (two's-complement sign plane).
        tiles: reduction-row ranges ``(start, stop)`` loaded into the array one after the
            other; each is normalised by ``nrow`` (spec §3). Default: consecutive ``nrow``.
            Rows outside every tile are not computed (the reference's dropped channels).
        noise: read-out noise and current-domain effects; None is noise-free.
        stream: the call's noise key and sample identity of its rows. Default: a key drawn
            from ``generator`` (or torch's global RNG), each leading index its own sample.
        generator: only used to draw a key when ``stream`` is None.
        cell_noise: additive deviation of every stored weight bit, ``[..., R, weight_bits, O]``
            in bit units (weight-cell variation, spec §8.1), or None.
        exact_shortcut: False forces the cycles even where the exact shortcut applies.
        out: a float32 tensor on ``w_int``'s device that receives ``Y`` instead of a new
            one, of any strides: shaped ``[..., M, O]`` like ``Y``, or, for a
            :class:`Patches`, ``(*rows, O)`` with leading dims that flatten in order to
            the ``M`` rows (a conv passes its NCHW output as ``(B, Ho, Wo, O)``, so no
            transposing copy follows). The native kernel writes it in place.
        program: the compiled :class:`~asim.engine.program.Program` (a layer keeps its
            own); replaces ``macro``, ``signed_input``, ``tiles`` and ``noise``.

    Returns:
        ``Y`` as float32 ``[..., M, O]``, to be de-quantized by the caller (spec §1.4);
        ``out`` itself when given.
    """
    programmed = w_int if isinstance(w_int, ProgrammedArray) else None
    if programmed is not None:
        w_int = programmed.codes
    patches = x_int if isinstance(x_int, Patches) else None
    shape_x = torch.Size(patches.shape) if patches is not None else x_int.shape
    if len(shape_x) < 2 or w_int.dim() < 2:
        raise ValueError("acim_matmul expects x_int [..., M, R] and w_int [..., R, O]")
    rows = shape_x[-1]
    if w_int.shape[-2] != rows:
        raise ValueError(
            f"acim_matmul: reduction sizes differ: x has {rows}, w has {w_int.shape[-2]}"
        )
    lead = shape_x[:-2]
    M, O = shape_x[-2], w_int.shape[-1]
    if program is None:
        if macro is None or signed_input is None:
            raise ValueError("acim_matmul: pass macro= and signed_input= (or program=)")
        program = compile_program(
            macro, noise, signed_input, normalise_tiles(tiles, rows, macro.nrow), O
        )
    elif program.outputs != O:
        raise ValueError(f"acim_matmul: the program has {program.outputs} outputs, w has {O}")
    plan, macro, tiles = program.plan, program.macro, program.tiles
    x3 = x_int.reshape(-1, M, rows) if patches is None else patches
    w3 = w_int.reshape(-1, rows, O)
    batch = 1 if patches is not None else x3.shape[0]
    if w3.shape[0] not in (1, batch):
        raise ValueError("acim_matmul: w_int leading dims must be absent or match x_int's")
    if w3.shape[0] > 1:
        programmed = None  # per-sample weights (attention operands): nothing to reuse
    device = w_int.device
    if out is not None:
        _check_out(out, lead, M, O, patches is not None, device)
    if not tiles or M == 0 or O == 0:
        y = torch.zeros(*lead, M, O, dtype=torch.float32, device=device)
        return y if out is None else out.copy_(y.view(out.shape))

    if exact_shortcut and cell_noise is None and program.form("lossless", program.lossless):
        y = try_shortcut(x3, w3, macro, plan.signed, tiles)
        if y is not None:
            device_backend(device)  # a forced backend that cannot run here still fails
            _USED.add(EXACT)
            if out is not None:
                return out.copy_(y.reshape(out.shape))
            return y.reshape(*lead, M, O)

    random = plan.readout is not None or cell_noise is not None
    key, sample, pos = 0, None, None
    if random:
        if stream is None:
            key = int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())
            stream = NoiseStream(key, torch.arange(batch), M)
        key = int(stream.key) & ((1 << 64) - 1)
        sample, pos = (t.view(batch, M) for t in stream.rows(batch * M, device))
    if plan.noisy and program.max_rows > macro.nrow:
        raise ValueError(
            f"acim_matmul: a tile has more than nrow={macro.nrow} rows; noisy conversions "
            "are tabulated for counts up to the full scale: use tiles of <= nrow rows"
        )
    if cell_noise is not None:
        cell_noise = cell_noise.reshape(-1, rows, macro.weight_bits, O)
    operands = Operands(x3, w3, programmed, cell_noise, key, sample, pos, device)
    if out is None:
        y = torch.empty(batch, M, O, dtype=torch.float32, device=device)  # every chunk writes
        _run(program, operands, y, None)
        return y.reshape(*lead, M, O)
    try:
        y = out.view(batch, M, O)  # Y's own layout, any strides: written in place
    except RuntimeError:
        y = None
    if y is not None:
        _run(program, operands, y, None)
        return out
    rows_out = OutputRows.of(out) if batch == 1 else None  # rows at their own offsets
    y = torch.empty(batch, M, O, dtype=torch.float32, device=device)
    if not _run(program, operands, y, rows_out):
        out.copy_(y.view(out.shape))
    return out


def _check_out(out: Tensor, lead, M: int, O: int, patches: bool, device) -> None:
    ok_shape = tuple(out.shape) == (*lead, M, O) or (
        patches and out.dim() >= 2 and out.shape[-1] == O and out.numel() == M * O
    )
    if not ok_shape or out.dtype != torch.float32 or out.device != torch.device(device):
        raise ValueError(
            f"acim_matmul: out must be a float32 tensor on {device} shaped like Y "
            f"{(*lead, M, O)}"
            + (" (or (*rows, O) with M rows)" if patches else "")
            + f"; got {out.dtype} {tuple(out.shape)} on {out.device}"
        )
