"""The native (C) kernel of the CPU engine, built on first use and cached.

``engine.c`` computes the bit-plane MACs by popcount on packed 64-row words and runs the
ADC epilogue on them in registers: one pass instead of a GEMM and ~10 torch passes. Its one
entry point, ``asim_run_call``, takes one struct, ``asim_run``, declared in ``engine.h``;
this module parses that header for the struct's fields and every ``ASIM_*`` constant (the
single source of both), so the ctypes mirror :class:`RunArgs` cannot drift from the C side.
Random draws use ``sampling.h``, the C twin of :mod:`asim.rng`.

The library is compiled with the system C compiler (``$CC`` or ``cc``) into
``$ASIM_CACHE_DIR`` (default ``~/.cache/asim``), keyed by sources, flags, compiler and CPU,
and loaded with ctypes. When no compiler is available the engine falls back to its torch
backend (same numbers, slower) after one warning. ``ASIM_NATIVE=0`` disables the native
path; ``ASIM_NATIVE_MARCH`` (default ``native``) is passed as ``-march=``, e.g. ``x86-64``
to build the portable C loops.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

__all__ = ["CONST", "BucketTable", "RunArgs", "engine_lib"]

_DIR = Path(__file__).parent
_SRC = _DIR / "engine.c"
_HEADERS = (_DIR / "engine.h", _DIR / "sampling.h")


def _parse_header(text: str) -> tuple[dict[str, int], dict[str, list[tuple[str, str]]]]:
    """``#define ASIM_NAME <int>`` constants and each ``ASIM_<NAME>_FIELDS(X)`` list of
    (type, name) fields."""
    consts = {
        m.group(1): int(m.group(2), 0)
        for m in re.finditer(r"^#define (ASIM_\w+)\s+(-?(?:0x)?[0-9A-Fa-f]+)\b", text, re.M)
    }
    structs = {}
    for m in re.finditer(r"^#define ASIM_(\w+)_FIELDS\(X\)", text, re.M):
        block = text[m.end() :].split("\n\n", 1)[0]
        structs[m.group(1)] = re.findall(r"X\((ptr|i32|i64|u64|f32), (\w+),", block)
    return consts, structs


CONST, _STRUCTS = _parse_header((_DIR / "engine.h").read_text())
"""Every ``ASIM_*`` integer constant of engine.h (max planes, block sizes, code kinds...)."""

_CTYPES = {
    "ptr": ctypes.c_void_p,
    "i32": ctypes.c_int32,
    "i64": ctypes.c_int64,
    "u64": ctypes.c_uint64,
    "f32": ctypes.c_float,
}


class RunArgs(ctypes.Structure):
    """ctypes mirror of ``asim_run`` (engine.h documents every field)."""

    _fields_ = [(name, _CTYPES[kind]) for kind, name in _STRUCTS["RUN"]]


class BucketTable(ctypes.Structure):
    """ctypes mirror of ``asim_bucket_table`` (engine.h)."""

    _fields_ = [(name, _CTYPES[kind]) for kind, name in _STRUCTS["BUCKET"]]


_FLAGS = [
    "-O3",
    "-funroll-loops",
    "-ffp-contract=off",
    "-fno-math-errno",
    "-shared",
    "-fPIC",
    "-pthread",
]
# Threads: OpenMP first, so the kernel runs on the process's OpenMP pool (torch's, when both
# use libgomp) instead of a second set of threads competing with torch's spinning ones; plain
# pthreads where the compiler has no OpenMP. Same numbers either way.
_THREADING = (["-fopenmp"], [])
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}


def _cpu_id() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build(src: Path = _SRC) -> ctypes.CDLL | None:
    """Compile (or reuse from the cache) and load ``src`` (default ``engine.c``) with this
    directory's headers; None when disabled or no compiler worked (after one warning)."""
    if os.environ.get("ASIM_NATIVE", "1") == "0":
        return None
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        warnings.warn(
            "asim: no C compiler found; using the slower torch backend "
            "(install gcc, or set ASIM_NATIVE=0 to silence)",
            stacklevel=3,
        )
        return None
    source = b"\0".join(p.read_bytes() for p in (src, *_HEADERS) if p.exists())
    try:
        version = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError):
        version = []
    cache = Path(os.environ.get("ASIM_CACHE_DIR", Path.home() / ".cache" / "asim"))
    detail = ""
    for threading_flags in _THREADING:
        flags = [
            *_FLAGS,
            *threading_flags,
            f"-march={os.environ.get('ASIM_NATIVE_MARCH', 'native')}",
            f"-I{_DIR}",
        ]
        key = hashlib.sha256(
            b"\0".join(
                [
                    source,
                    " ".join(flags).encode(),
                    str(version).encode(),
                    _cpu_id().encode(),
                    platform.machine().encode(),
                ]
            )
        )
        target = cache / f"engine-{key.hexdigest()[:20]}.so"
        if target.exists():
            break
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                out = Path(tmp) / target.name
                subprocess.run(
                    [cc, *flags, str(src), "-o", str(out), "-lm"],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                os.replace(out, target)  # atomic: concurrent builders agree
            break
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", "") or str(err)
    else:
        warnings.warn(
            f"asim: building the native engine failed ({detail.strip()[:200]}); "
            "using the slower torch path",
            stacklevel=3,
        )
        return None
    lib = ctypes.CDLL(str(target))
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    lib.acim_pack.argtypes = [p, i32, i64, i64, i64, i64, i64, i32, p, i64, i64, i64]
    lib.acim_pack.restype = None
    lib.asim_run_call.argtypes = [ctypes.POINTER(RunArgs)]
    lib.asim_run_call.restype = i32
    lib.asim_run_size.argtypes = []
    lib.asim_run_size.restype = i64
    lib.asim_bucket_size.argtypes = []
    lib.asim_bucket_size.restype = i64
    lib.asim_draw_codes.argtypes = [p, p, p, p, p, i64]
    lib.asim_draw_codes.restype = None
    lib.asim_simd.argtypes = []
    lib.asim_simd.restype = i32
    for name, size, mirror in (
        ("asim_run", lib.asim_run_size(), RunArgs),
        ("asim_bucket_table", lib.asim_bucket_size(), BucketTable),
    ):
        if size != ctypes.sizeof(mirror):
            raise RuntimeError(
                f"asim: engine.h's {name} is {size} bytes in C but {ctypes.sizeof(mirror)} "
                f"in ctypes; delete {target} and retry"
            )
    return lib


def engine_lib() -> ctypes.CDLL | None:
    """The loaded native library, or None (built once per process)."""
    with _LOCK:
        if "lib" not in _STATE:
            _STATE["lib"] = _build()
        return _STATE["lib"]  # type: ignore[return-value]
