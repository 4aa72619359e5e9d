"""``acim_matmul``: one engine call, from integer operands to the accumulator ``Y``.

1. build the :class:`~asim.engine.plan.Plan` once (cycles, conversions, noise model);
2. if the plan is lossless, try the exact shortcut (:mod:`asim.engine.shortcut`);
3. otherwise choose the backend once (:func:`select_backend`) and run it over chunks of
   rows, so memory stays bounded whatever the batch size. Every random draw is addressed by
   the call's :class:`~asim.engine.operands.NoiseStream`, so neither the backend nor the
   chunking nor the thread count changes a bit of the result.

Backends (identical bits; the choice only changes speed):

* CPU tensors: ``native`` (the C kernel, ``asim/_native/engine.c``, built on first use)
  where it can run, else ``torch``;
* CUDA tensors: ``triton`` (one fused kernel, :mod:`asim._triton`) when triton is
  installed, else ``torch``;
* ``ASIM_BACKEND=native|torch|triton`` (environment, read at every call) forces one; a
  forced backend that cannot run a call fails with one line naming the fix. ``triton`` on
  CPU tensors runs under the Triton interpreter (``TRITON_INTERPRET=1`` set before Python
  starts; slow, for tests). Calls with weight-cell variation (``noise.cell_sigma``) run on
  ``native`` or ``torch``; the weight-parallel mode (``macro.weight_parallel``) is its own
  torch path.

The lossless, noise-free exact shortcut is taken whatever the backend. The backends that
ran are recorded per process: :func:`backends_used` (reset with :func:`reset_backends_used`),
summarised by :func:`describe_backends` (``summary.backend`` of ``results.json``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import _triton, rng
from ..config import MacroConfig, NoiseConfig
from . import native
from .operands import NoiseStream, OutputRows, Patches, ProgrammedArray
from .plan import Plan, build_plan, linear_tiles
from .shortcut import try_shortcut
from .torch_backend import TorchBackend
from .weight_parallel import weight_parallel

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "CHUNK_ELEMENTS",
    "acim_matmul",
    "backends_used",
    "describe_backends",
    "device_backend",
    "forced_backend",
    "reset_backends_used",
    "select_backend",
]

BACKENDS = ("native", "torch", "triton")
"""The engine's backends, the values of ``ASIM_BACKEND``."""

BACKEND_ENV = "ASIM_BACKEND"
"""The environment variable that forces a backend (unset or empty: the default choice)."""

EXACT = "exact"
"""What :func:`backends_used` records for a call answered by the exact shortcut."""

_USED: set[str] = set()

CHUNK_ELEMENTS = 1 << 22
"""Partial sums handled per chunk (4 Mi float32 = 16 MiB per temporary)."""


@dataclass
class Job:
    """One call, as the backends see it."""

    x3: Tensor | Patches  # [B, M, R] codes, or a Patches (B = 1)
    w3: Tensor  # [Bw, R, O] codes, Bw in (1, B)
    programmed: ProgrammedArray | None
    plan: Plan
    tiles: list[tuple[int, int]]
    cell_noise: Tensor | None  # [Bw, R, w, O]
    key: int  # the call's noise key (uint64 as a Python int)
    sample: Tensor | None  # [B, M] int64 global sample index of every output row
    pos: Tensor | None  # [B, M] int64 position inside the sample
    O: int
    device: torch.device


def forced_backend() -> str | None:
    """``ASIM_BACKEND`` (one of :data:`BACKENDS`), or None when unset or empty."""
    value = os.environ.get(BACKEND_ENV, "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise ValueError(
            f"{BACKEND_ENV}={os.environ[BACKEND_ENV]!r} is not a backend: use one of "
            f"{', '.join(BACKENDS)} (or unset it for the default choice)"
        )
    return value


def device_backend(device: torch.device) -> str:
    """The backend calls on ``device`` get: ``ASIM_BACKEND`` if set (checked that it can run
    on ``device``), else native (CPU, where the C library builds) or triton (CUDA, where
    triton is installed), else torch."""
    forced = forced_backend()
    kind = torch.device(device).type
    if forced == "native":
        if kind != "cpu":
            raise ValueError(
                f"{BACKEND_ENV}=native runs on CPU tensors only (this call is on {kind}): "
                "use ASIM_BACKEND=triton or torch"
            )
        if native.engine_lib() is None:
            raise ValueError(
                f"{BACKEND_ENV}=native: the C kernel is off (ASIM_NATIVE=0) or did not build "
                "(see the warning above): unset ASIM_NATIVE, install a C compiler, or use "
                "ASIM_BACKEND=torch"
            )
    elif forced == "triton" and not _triton.available(device):
        if not _triton.importable():
            need = "the triton package (it ships with the CUDA torch wheel; or ASIM_BACKEND=torch)"
        elif kind == "cpu":
            need = "TRITON_INTERPRET=1 set before Python starts (slow, for tests)"
        else:
            need = "a CUDA device (or CPU tensors with TRITON_INTERPRET=1)"
        raise ValueError(f"{BACKEND_ENV}=triton on {kind} needs {need}")
    if forced is not None:
        return forced
    if kind == "cuda":
        return "triton" if _triton.available(device) else "torch"
    return "native" if kind == "cpu" and native.engine_lib() is not None else "torch"


def select_backend(job: Job):
    """The backend of one call: :func:`device_backend`'s choice where it can run this call
    (a forced one fails in one line where it cannot), else torch."""
    from .._triton import backend as triton_backend

    name = device_backend(job.device)
    forced = forced_backend() is not None
    if name == "native":
        if native.available(job):
            return native.NativeBackend(job)
        if forced:
            raise ValueError(_cannot("native", job))
    elif name == "triton":
        if triton_backend.available(job):
            return triton_backend.TritonBackend(job)
        if forced:
            raise ValueError(_cannot("triton", job))
    return TorchBackend(job)


def _cannot(name: str, job: Job) -> str:
    """Why backend ``name`` (which runs on the call's device) cannot run ``job``."""
    macro = job.plan.macro
    if job.cell_noise is not None:
        why = "weight-cell variation (noise.cell_sigma)"
        fix = "ASIM_BACKEND=torch" + (" or native" if name == "triton" else "")
        return f"{BACKEND_ENV}={name}: {why} needs {fix}"
    return (
        f"{BACKEND_ENV}={name} cannot run this call (weight_bits={macro.weight_bits}, "
        f"input_bits={macro.input_bits}, {job.plan.votes} votes): use ASIM_BACKEND=torch"
    )


def backends_used() -> frozenset[str]:
    """The backends that ran engine calls in this process since :func:`reset_backends_used`
    (names of :data:`BACKENDS`, plus ``"exact"`` for calls answered by the exact shortcut)."""
    return frozenset(_USED)


def reset_backends_used() -> None:
    """Forget what :func:`backends_used` recorded (e.g. before a simulated pass)."""
    _USED.clear()


def describe_backends(used=None, device: torch.device | str = "cpu") -> str | None:
    """One string for ``used`` (default :func:`backends_used`): the backends that ran the
    cycle simulation joined by ``+`` (e.g. ``"native"``); ``"<backend> (exact shortcut)"``
    when every call took the exact shortcut (the backend ``device`` would have used);
    None when no engine call ran."""
    used = backends_used() if used is None else set(used)
    ran = sorted(used - {EXACT})
    if ran:
        return "+".join(ran)
    if EXACT in used:
        return f"{device_backend(torch.device(device))} (exact shortcut)"
    return None


def acim_matmul(
    x_int: Tensor | Patches,
    w_int: Tensor | ProgrammedArray,
    *,
    macro: MacroConfig,
    signed_input: bool,
    tiles: Sequence[tuple[int, int]] | None = None,
    noise: NoiseConfig | None = None,
    stream: NoiseStream | None = None,
    generator: torch.Generator | None = None,
    cell_noise: Tensor | None = None,
    exact_shortcut: bool = True,
    out: Tensor | None = None,
) -> Tensor:
    """Integer-domain accumulator ``Y`` of the macro computing ``x_int @ w_int``.

    Args:
        x_int: activation-role codes ``[..., M, R]``: integer-valued float32, or an
            integer dtype (:func:`compact_codes`), or a 2-D :class:`Patches`.
        w_int: weight-role codes ``[R, O]`` (a tensor or a :class:`ProgrammedArray`), or
            ``[..., R, O]`` with the same leading dims as ``x_int`` (signed,
            ``|w| <= 2^(weight_bits-1) - 1``).
        macro: bit widths, array size, ADC and cycle scheme.
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
    if tiles is None:
        tiles = linear_tiles(rows, macro.nrow)
    tiles = [(int(a), int(b)) for a, b in tiles if b > a]
    lead = shape_x[:-2]
    M, O = shape_x[-2], w_int.shape[-1]
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

    plan = build_plan(macro, noise, signed_input)
    if exact_shortcut and plan.lossless() and cell_noise is None:
        y = try_shortcut(x3, w3, macro, signed_input, tiles)
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
    if plan.noisy and max(b - a for a, b in tiles) > macro.nrow:
        raise ValueError(
            f"acim_matmul: a tile has more than nrow={macro.nrow} rows; noisy conversions "
            "are tabulated for counts up to the full scale: use tiles of <= nrow rows"
        )

    if macro.weight_parallel:
        if forced_backend() not in (None, "torch"):
            raise ValueError(
                f"{BACKEND_ENV}={forced_backend()}: the weight-parallel mode "
                "(macro.weight_parallel) runs on its own torch path: use ASIM_BACKEND=torch "
                "or unset it"
            )
        _USED.add("torch")
        x = patches.materialize()[None] if patches is not None else x3
        ekeys = None
        if plan.readout is not None:
            cols = torch.arange(O, dtype=torch.int64, device=device)
            ekeys = rng.element_keys(key, sample[..., None], pos[..., None], cols)
        y = weight_parallel(x, w3, plan, tiles, ekeys)
        return y.reshape(*lead, M, O) if out is None else out.copy_(y.reshape(out.shape))

    if cell_noise is not None:
        cell_noise = cell_noise.reshape(-1, rows, macro.weight_bits, O)
    job = Job(x3, w3, programmed, plan, tiles, cell_noise, key, sample, pos, O, device)
    backend = select_backend(job)
    _USED.add(backend.name)
    if isinstance(x3, Patches) and not _reads_in_place(backend.name, x3, macro.input_bits):
        job.x3 = x3 = x3.materialize()[None]
    if out is None:
        y = torch.empty(batch, M, O, dtype=torch.float32, device=device)  # every chunk writes
        _run(backend, x3, y)
        return y.reshape(*lead, M, O)
    try:
        y = out.view(batch, M, O)  # Y's own layout, any strides: written in place
    except RuntimeError:
        y = None
    if y is not None:
        _run(backend, x3, y)
    elif backend.name == "native" and batch == 1:
        _run(backend, x3, OutputRows.of(out))  # rows at their own offsets
    else:
        y = torch.empty(batch, M, O, dtype=torch.float32, device=device)
        _run(backend, x3, y)
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


def _reads_in_place(name: str, patches: Patches, input_bits: int) -> bool:
    """Does backend ``name`` read ``patches`` in place? Triton gathers any dtype through
    the offsets; native the dtypes its packer reads; torch only dense codes."""
    if name == "triton":
        return True
    return name == "native" and native.in_place_kind(patches.view.dtype, input_bits) is not None


def _run(backend, x3, out) -> None:
    """Chunks of rows (and of leading indices) through the backend."""
    Bt, M, R = (1, *x3.shape) if isinstance(x3, Patches) else x3.shape
    rows_per_chunk = max(1, CHUNK_ELEMENTS // backend.chunk_elements_per_row(R))
    b_step = max(1, min(Bt, rows_per_chunk // max(M, 1)))
    m_step = M if b_step > 1 or M <= rows_per_chunk else rows_per_chunk
    for b0 in range(0, Bt, b_step):
        b1 = min(Bt, b0 + b_step)
        for m0 in range(0, M, m_step):
            m1 = min(M, m0 + m_step)
            x = x3 if isinstance(x3, Patches) else x3[b0:b1, m0:m1]
            y = out.rows(m0, m1) if isinstance(out, OutputRows) else out[b0:b1, m0:m1]
            backend.run_chunk(x, (b0, b1), (m0, m1), y)
