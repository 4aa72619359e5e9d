"""The operands (asim.engine.operands): a conv's patches read in place equal the unfolded matrix."""

from __future__ import annotations

import pytest
import torch

from asim import (
    MacroConfig,
    acim_matmul,
)

from ..golden import bits
from .helpers import (
    _ints,
    _torch_only,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.int32, torch.int16])
def test_patches_read_in_place_equal_the_unfolded_matrix(dtype, monkeypatch):
    """A strided patch view (the conv's im2col without the copy) gives the same bits as its
    materialised matrix, on the native path (read in place) and the torch path."""
    from asim.engine import Patches

    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (2, 5, 9, 8), generator=g).to(dtype)  # B, C, H, W
    view = x.as_strided(
        (2, 4, 3, 5, 3, 3),
        (x.stride(0), 2 * x.stride(2), 2 * x.stride(3), x.stride(1), x.stride(2), x.stride(3)),
    )
    patches = Patches(view, row_dims=3)
    assert patches.shape == (24, 45)
    dense = view.reshape(24, 45)
    w = _ints(g, (45, 6), 8, True)
    macro = MacroConfig(nrow=18, adc_bits=4)
    tiles = [(0, 18), (18, 36)]  # the last channel is dropped, as conv tiling can
    want = acim_matmul(dense.float(), w, macro=macro, signed_input=False, tiles=tiles)
    got = acim_matmul(patches, w, macro=macro, signed_input=False, tiles=tiles)
    _torch_only(monkeypatch)
    plain = acim_matmul(patches, w, macro=macro, signed_input=False, tiles=tiles)
    assert bits(got) == bits(want) == bits(plain)
