"""What layers hand the engine: integer codes, programmed weights and the noise stream.

* activation codes ``[..., M, R]`` as integer-valued float32 or compact integers
  (:func:`compact_codes`), or a conv's patches read in place (:class:`Patches`);
* weight codes ``[R, O]`` as a tensor, or a :class:`ProgrammedArray` that keeps the packed
  forms the backends build, so a macro is programmed once per weight change;
* a :class:`NoiseStream`: the call's 64-bit key and the global sample index of each group
  of output rows, from which every random draw is addressed (see :mod:`asim.rng`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ConvSource", "NoiseStream", "Patches", "ProgrammedArray", "compact_codes"]


def compact_codes(codes: Tensor, bits: int, signed: bool) -> Tensor:
    """Integer codes as uint8 (unsigned) or int8 (signed) when they have <= 8 bits, else
    int32: ``acim_matmul`` accepts them as they are, and copies of 8-bit codes (a conv's
    unfold) move 4x less memory than float32."""
    return codes.to((torch.int8 if signed else torch.uint8) if bits <= 8 else torch.int32)


@dataclass(frozen=True)
class ConvSource:
    """The conv that produced a :class:`Patches` view: lets the exact shortcut run the
    integer product as a conv instead of a matmul on the unfolded input.

    Attributes:
        x: the (unpadded) input codes ``[B, C, H, W]``.
        kernel, stride, padding, dilation: the conv's geometry (2-tuples).
    """

    x: Tensor
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    def conv(self, x: Tensor, w: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(x, w, None, self.stride, self.padding, self.dilation)


class Patches:
    """An activation matrix ``X [M, R]`` read in place from a strided view of codes.

    ``view`` is any strided view whose first ``row_dims`` dims index the rows and the rest
    the columns, e.g. a conv input's ``(B, Ho, Wo, C, kh, kw)`` patch view: ``X`` is its
    unfolded input without the copy. The native CPU engine reads the codes in place
    (``X[m, r]`` is at ``view.data_ptr()`` plus ``row_offset[m] + col_offset[r]`` elements);
    the other paths call :meth:`materialize`. ``source`` optionally names the conv.
    :meth:`lazy` defers building the view until a backend needs it (the exact shortcut
    runs the conv on ``source`` and never does).
    """

    def __init__(self, view: Tensor, row_dims: int, source: ConvSource | None = None):
        self._view, self._row_dims, self._factory = view, row_dims, None
        self.source = source
        self.shape = (
            int(torch.Size(view.shape[:row_dims]).numel()),
            int(torch.Size(view.shape[row_dims:]).numel()),
        )
        self._offsets: tuple[Tensor, Tensor] | None = None

    @classmethod
    def lazy(
        cls,
        shape: tuple[int, int],
        factory: Callable[[], tuple[Tensor, int]],
        source: ConvSource | None = None,
    ) -> Patches:
        """Patches of ``shape`` whose ``(view, row_dims)`` ``factory()`` builds on first use."""
        self = cls.__new__(cls)
        self._view, self._row_dims, self._factory = None, 0, factory
        self.source, self.shape, self._offsets = source, tuple(shape), None
        return self

    @property
    def view(self) -> Tensor:
        if self._view is None:
            self._view, self._row_dims = self._factory()
        return self._view

    @property
    def row_offset(self) -> Tensor:
        return self._offset_pair()[0]

    @property
    def col_offset(self) -> Tensor:
        return self._offset_pair()[1]

    def _offset_pair(self) -> tuple[Tensor, Tensor]:
        if self._offsets is None:
            view, d = self.view, self._row_dims
            sizes, strides = view.shape, view.stride()
            self._offsets = (
                _offsets(sizes[:d], strides[:d], view.device),
                _offsets(sizes[d:], strides[d:], view.device),
            )
        return self._offsets

    @property
    def device(self) -> torch.device:
        if self._view is None and self.source is not None:
            return self.source.x.device
        return self.view.device

    def materialize(self) -> Tensor:
        """``X`` as a contiguous ``[M, R]`` tensor (one copy)."""
        return self.view.reshape(self.shape)


@dataclass(frozen=True)
class OutputRows:
    """Rows of ``Y [M, O]`` written in place into ``view``, a tensor ``(*rows, O)`` of any
    strides (e.g. a conv's NCHW output seen as ``(B, Ho, Wo, O)``): ``Y[m, o]`` is at
    ``view.data_ptr()`` plus ``row_offset[m] + o * view.stride(-1)`` elements. A chunk of
    rows is the same view with a slice of ``row_offset``."""

    view: Tensor
    row_offset: Tensor

    @classmethod
    def of(cls, view: Tensor) -> OutputRows:
        return cls(view, _offsets(view.shape[:-1], view.stride()[:-1], view.device))

    def rows(self, m0: int, m1: int) -> OutputRows:
        return OutputRows(self.view, self.row_offset[m0:m1])


def _offsets(sizes, strides, device) -> Tensor:
    """int64 element offsets of every index of a strided view's ``sizes`` dims, in order.
    Cached per geometry (a layer sees the same few every forward); never written to."""
    return _offsets_cached(tuple(sizes), tuple(strides), torch.device(device))


@functools.lru_cache(maxsize=64)
def _offsets_cached(sizes: tuple, strides: tuple, device: torch.device) -> Tensor:
    off = torch.zeros((), dtype=torch.int64)
    for n, st in zip(sizes, strides, strict=True):
        off = off.unsqueeze(-1) + torch.arange(n, dtype=torch.int64) * st
    return off.reshape(-1).to(device)


class ProgrammedArray:
    """Weight codes ``[R, O]`` programmed into the macro once, with every packed form a
    backend derives from them (bit planes, packed words) cached on first use.

    Build one per weight change (``ACiMLayer`` does, comparing its float weight with the
    programmed copy) and pass it to ``acim_matmul`` instead of the tensor.
    """

    def __init__(self, codes: Tensor):
        if codes.dim() != 2:
            raise ValueError(f"ProgrammedArray: codes must be [R, O], got {tuple(codes.shape)}")
        self.codes = codes
        self._forms: dict = {}

    def form(self, key, build: Callable[[], object]):
        """The cached form ``key``, built by ``build()`` the first time."""
        if key not in self._forms:
            self._forms[key] = build()
        return self._forms[key]


@dataclass(frozen=True)
class NoiseStream:
    """The address of every random draw of one engine call.

    Output row ``r`` of the call (rows of ``x [..., M, R]`` flattened over the leading dims,
    or a :class:`Patches`' rows) belongs to sample ``sample_index[r // rows_per_sample]`` at
    position ``r % rows_per_sample`` inside it; with the output column and the draw number
    that gives each conversion its 32-bit uniform (:func:`asim.rng.draw_u32`).

    Attributes:
        key: the call's 64-bit key (e.g. :func:`asim.rng.layer_key` of the layer's seed).
        sample_index: int64 ``[N]``, the global dataset index of each sample.
        rows_per_sample: output rows per sample (conv: ``Ho*Wo``; linear on ``[B, T, F]``:
            ``T``; attention QK/AV: ``heads * rows``).
    """

    key: int
    sample_index: Tensor
    rows_per_sample: int

    def rows(self, n_rows: int, device) -> tuple[Tensor, Tensor]:
        """``(sample, pos)`` int64 ``[n_rows]`` of every output row."""
        idx = self.sample_index.to(device=device, dtype=torch.int64).reshape(-1)
        if idx.numel() * self.rows_per_sample != n_rows:
            raise ValueError(
                f"NoiseStream: {idx.numel()} samples x {self.rows_per_sample} rows per sample "
                f"!= {n_rows} output rows; pass one sample index per batch row"
            )
        sample = idx.repeat_interleave(self.rows_per_sample)
        pos = torch.arange(self.rows_per_sample, dtype=torch.int64, device=device).repeat(
            idx.numel()
        )
        return sample, pos
