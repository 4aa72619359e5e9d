"""Counter-based noise stream: every random number is a pure function of integers.

A random decision of the simulator is addressed by (seed, layer, sample, position in the
sample, output column, draw), where the draw number enumerates the conversions of one
output element (tile, weight bit, cycle, vote draw). Integers are hashed with a
splitmix64-style finalizer (:func:`mix64`), never drawn from a stateful generator, so the
numbers do not depend on the backend (torch or C, CPU or CUDA), the thread count, the
chunking or which other samples share a batch::

    key  = layer_key(seed, layer)                 # one chip (seed), one layer
    call = sub_key(key, n)                        # e.g. the layer's n-th forward call
    ekey = element_keys(call, sample, pos, out)   # int64 tensor, one key per output element
    u    = draw_u32(ekey, draw)                   # uniform in [0, 2^32), one mix64 per draw

The torch functions work on int64 tensors that hold uint64 bit patterns (two's complement
wrap-around on add/multiply, logical right shifts emulated by masking), with plain torch
ops, so they run on CUDA too. The ``*_int`` functions are the pure-Python reference on
ints in ``[0, 2^64)``. The C twin is ``asim/_native/sampling.h``; every constant of the
hash is defined there once (``#define ASIM_...``) and read from it when this module is
imported.

Deviations from the interface note (``noise-stream.md``): :func:`sub_key`,
:func:`draw_u64` and ``asim_layer_key``/``asim_sub_key``/``asim_normal_from`` in C are
extra helpers; :func:`asim.noise.code_table` takes one extra keyword, ``reciprocal``
(MacroConfig.division="reciprocal", spec Q10, for the float32 ``fl(m'/F)``); nothing was
renamed.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "CONSTANTS",
    "HEADER",
    "draw_u32",
    "draw_u64",
    "element_keys",
    "layer_key",
    "mix64",
    "mix64_int",
    "normal_from",
    "sub_key",
    "to_signed",
    "to_unsigned",
]

HEADER = Path(__file__).with_name("_native") / "sampling.h"
"""The C header that defines every constant of the stream (and the code-table layout)."""


def _parse_constants(path: Path) -> dict[str, int]:
    pattern = re.compile(r"^#define (ASIM_\w+) (0x[0-9a-fA-F]+|\d+)(?:ULL|LL|UL|U|L)?\s*$")
    out = {}
    for line in path.read_text().splitlines():
        match = pattern.match(line)
        if match:
            out[match.group(1)] = int(match.group(2), 0)
    return out


CONSTANTS: dict[str, int] = _parse_constants(HEADER)
"""Every ``#define ASIM_<NAME> <integer>`` of :data:`HEADER`, by name."""

_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1
_S1, _S2, _S3 = (CONSTANTS[f"ASIM_MIX_S{i}"] for i in (1, 2, 3))
_M1, _M2 = CONSTANTS["ASIM_MIX_M1"], CONSTANTS["ASIM_MIX_M2"]
_GAMMA = CONSTANTS["ASIM_DRAW_GAMMA"]
_KEY = {
    name: CONSTANTS[f"ASIM_KEY_{name.upper()}"]
    for name in ("seed", "layer", "sub", "sample", "pos", "out")
}


def to_signed(x: int) -> int:
    """The int64 value with the same bits as ``x mod 2^64``."""
    x &= _MASK64
    return x - (1 << 64) if x >> 63 else x


def to_unsigned(x: int) -> int:
    """The value in ``[0, 2^64)`` with the same bits as the int64 ``x``."""
    return x & _MASK64


# ----------------------------------------------------------------------------- Python ints


def mix64_int(x: int) -> int:
    """The splitmix64 finalizer on a Python int (taken mod 2^64); result in ``[0, 2^64)``."""
    x &= _MASK64
    x ^= x >> _S1
    x = (x * _M1) & _MASK64
    x ^= x >> _S2
    x = (x * _M2) & _MASK64
    return x ^ (x >> _S3)


def _derive_int(key: int, index: int, mult: int) -> int:
    return mix64_int(key + index * mult)


def layer_key(seed: int, layer: int) -> int:
    """The 64-bit key of layer number ``layer`` of the chip ``seed`` (both any ints)."""
    return _derive_int(mix64_int(seed ^ _KEY["seed"]), layer, _KEY["layer"])


def sub_key(key: int, index: int) -> int:
    """A key derived from ``key`` and one integer, e.g. a layer's ``index``-th forward call."""
    return _derive_int(key, index, _KEY["sub"])


# ----------------------------------------------------------------------------- tensors


def _shr(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


_CHUNK = 1 << 15  # CPU: elements per pass, so the eleven passes of mix64 stay in cache


def mix64(x: Tensor) -> Tensor:
    """The splitmix64 finalizer elementwise on an int64 tensor of uint64 bit patterns."""
    if x.device.type == "cpu" and x.numel() > _CHUNK:
        out = torch.empty(x.shape, dtype=torch.int64)
        flat, dst = x.reshape(-1), out.view(-1)
        tmp = torch.empty(_CHUNK, dtype=torch.int64)
        for i in range(0, flat.numel(), _CHUNK):
            o = dst[i : i + _CHUNK]
            _mix_into(flat[i : i + _CHUNK], o, tmp[: o.numel()])
        return out
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _mix_into(x, out, torch.empty_like(out))
    return out


def _mix_into(x: Tensor, out: Tensor, tmp: Tensor) -> None:
    """``out = mix64(x)`` with ``tmp`` as scratch (same shape), in place: wrap-around
    multiplies, logical shifts as an arithmetic shift and a mask."""
    for s, m in ((_S1, _M1), (_S2, _M2), (_S3, None)):
        src = x if s == _S1 else out
        torch.bitwise_right_shift(src, s, out=tmp)
        tmp.bitwise_and_((1 << (64 - s)) - 1)
        torch.bitwise_xor(src, tmp, out=out)
        if m is not None:
            out.mul_(to_signed(m))


def _as_long(v, device) -> Tensor:
    return torch.as_tensor(v, dtype=torch.int64, device=device)


def element_keys(call_key: int, sample, pos, out) -> Tensor:
    """int64 key per output element (arguments broadcast): ``sample`` is the global sample
    index, ``pos`` the position inside the sample (conv: output pixel ``ho * Wo + wo``;
    linear: token), ``out`` the output column. Same bits as ``asim_element_key``."""
    device = next((v.device for v in (sample, pos, out) if isinstance(v, Tensor)), None)
    k = mix64(_as_long(sample, device) * to_signed(_KEY["sample"]) + to_signed(call_key))
    k = mix64(k + _as_long(pos, device) * to_signed(_KEY["pos"]))
    return mix64(k + _as_long(out, device) * to_signed(_KEY["out"]))


def draw_u64(element_key: Tensor, draw) -> Tensor:
    """64 random bits (int64 bit patterns) of draw number ``draw`` (int or int64 tensor,
    broadcast) of each element: ``mix64(key + draw * gamma)``."""
    if isinstance(draw, Tensor):
        step = draw.to(torch.int64) * to_signed(_GAMMA)
    else:
        step = to_signed(int(draw) * _GAMMA)
    return mix64(element_key + step)


def draw_u32(element_key: Tensor, draw) -> Tensor:
    """A uniform integer in ``[0, 2^32)`` (int64 tensor): the upper half of :func:`draw_u64`.

    The engine numbers the draws of one output element
    ``draw = ((tile * weight_bits + i) * n_cycles + c) * K + k`` (K vote samples, else 1)."""
    return _shr(draw_u64(element_key, draw), 32)


def normal_from(element_key: Tensor, draw) -> Tensor:
    """A standard normal (float32) from the same 64 bits as draw ``draw``: Box-Muller in
    float64 on the two 32-bit halves. Only for non-integer counts (weight-cell variation):
    log/sqrt/cos may round differently between devices and math libraries, so this draw is
    not promised bit-identical across backends (``asim_normal_from`` is its C twin)."""
    bits = draw_u64(element_key, draw)
    u1 = (_shr(bits, 32).double() + 0.5) * 2.0**-32
    u2 = (bits & _MASK32).double() * 2.0**-32
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return z.float()
