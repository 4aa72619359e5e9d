"""Optional native (C) kernels for the CPU engine, built on first use and cached.

``epilogue.c`` computes the bit-plane MACs by popcount on packed 64-row words and runs the
ADC epilogue on them in registers: one pass instead of a GEMM and ~10 torch passes. It is
compiled with the system C compiler (``$CC`` or ``cc``) into ``$ASIM_CACHE_DIR`` (default
``~/.cache/asim``), keyed by source, flags, compiler and CPU, and loaded with ctypes. When no
compiler is available the engine falls back to its torch path (same numbers, slower) after
one warning. ``ASIM_NATIVE=0`` disables the native path; ``ASIM_NATIVE_MARCH`` (default
``native``) is passed as ``-march=``, e.g. ``x86-64`` to build the portable C loops.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

__all__ = ["MAXBITS", "epilogue_lib"]

MAXBITS = 32
_SRC = Path(__file__).with_name("epilogue.c")
_FLAGS = [
    "-O3",
    "-funroll-loops",
    "-ffp-contract=off",
    "-fno-math-errno",
    "-shared",
    "-fPIC",
    "-pthread",
]
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


def _build() -> ctypes.CDLL | None:
    if os.environ.get("ASIM_NATIVE", "1") == "0":
        return None
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        warnings.warn(
            "asim: no C compiler found; using the slower torch epilogue "
            "(install gcc, or set ASIM_NATIVE=0 to silence)",
            stacklevel=3,
        )
        return None
    flags = [*_FLAGS, f"-march={os.environ.get('ASIM_NATIVE_MARCH', 'native')}"]
    source = _SRC.read_bytes()
    try:
        version = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError):
        version = []
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
    cache = Path(os.environ.get("ASIM_CACHE_DIR", Path.home() / ".cache" / "asim"))
    target = cache / f"epilogue-{key.hexdigest()[:20]}.so"
    if not target.exists():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                out = Path(tmp) / target.name
                subprocess.run(
                    [cc, *flags, str(_SRC), "-o", str(out), "-lm"],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                os.replace(out, target)  # atomic: concurrent builders agree
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", "") or str(err)
            warnings.warn(
                f"asim: building the native epilogue failed ({detail.strip()[:200]}); "
                "using the slower torch path",
                stacklevel=3,
            )
            return None
    lib = ctypes.CDLL(str(target))
    p, i64, i32, f32, u64 = (
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int32,
        ctypes.c_float,
        ctypes.c_uint64,
    )
    lib.acim_pack.argtypes = [p, i32, i64, i64, i64, i64, i64, i32, p, i64, i64, i64]
    lib.acim_pack.restype = None
    lib.acim_popcount_run.argtypes = [
        p,
        i32,
        i64,
        p,
        p,
        i64,
        i32,
        p,
        p,
        p,
        i64,
        p,
        i64,
        i32,
        i32,
        i32,
        i32,
        p,
        p,
        p,
        p,
        p,
        p,
        p,
        f32,
        i32,
        f32,
        f32,
        f32,
        f32,
        i32,
        p,
        i32,
    ]
    lib.acim_popcount_run.restype = i32
    lib.acim_fill_normals.argtypes = [p, i64, u64, u64]
    lib.acim_fill_normals.restype = None
    lib.acim_simd.argtypes = []
    lib.acim_simd.restype = i32
    return lib


def epilogue_lib() -> ctypes.CDLL | None:
    """The loaded native library, or None (built once per process)."""
    with _LOCK:
        if "lib" not in _STATE:
            _STATE["lib"] = _build()
        return _STATE["lib"]  # type: ignore[return-value]
