"""Distributed evaluation without padding, in whole blocks of consecutive samples.

``torch.utils.data.DistributedSampler`` pads the last shard with repeated samples and deals
indices out round-robin (rank ``r`` gets ``r, r + W, r + 2W, ...``). Both are wrong for this
simulator's evaluation: padding counts some images twice, and round-robin shards make every
rank's batches differ from a single process's, while activation scales are computed per batch
(acim-model.md quirk Q5). :class:`UnpaddedDistributedSampler` gives every rank one contiguous
range made of whole blocks of ``block_size`` consecutive samples (the DataModules use the
evaluation batch size), so each rank evaluates exactly the batches one process would.

A rank's samples are ``range(sampler.start, sampler.end)``: the global index of the ``j``-th
sample a rank sees is ``sampler.start + j``. :func:`first_sample_index` returns that offset for
any evaluation loader (0 without a distributed sampler), so a LightningModule can give each
prediction its global sample index.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DataLoader, Sampler, SequentialSampler

__all__ = ["UnpaddedDistributedSampler", "first_sample_index", "rank_and_world"]


def rank_and_world() -> tuple[int, int] | None:
    """(rank, world size) under an initialised process group of size > 1, else None."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            return torch.distributed.get_rank(), world
    return None


class UnpaddedDistributedSampler(Sampler[int]):
    """Shards a dataset across ranks in order, each index exactly once (no padding, no shuffle).

    The indices are cut into blocks of ``block_size`` consecutive indices (the last block may be
    short) and rank ``r`` gets blocks ``[r * B // W, (r + 1) * B // W)`` of the ``B`` blocks:
    one contiguous range of whole blocks, the ranges disjoint and covering the dataset, block
    counts differing by at most one between ranks (with ``block_size=1``, shard sizes too).

    Attributes:
        start: Global index of this rank's first sample (its samples are ``start..end-1``).
        end: One past the global index of its last sample.
        num_samples_total: Length of the whole dataset.

    Args:
        dataset: The dataset (anything with ``len``) or its length.
        num_replicas: World size; defaults to ``torch.distributed.get_world_size()``.
        rank: This process's rank; defaults to ``torch.distributed.get_rank()``.
        block_size: Number of consecutive indices that always stay on one rank.
    """

    def __init__(
        self,
        dataset: Sized | int,
        num_replicas: int | None = None,
        rank: int | None = None,
        block_size: int = 1,
    ) -> None:
        if num_replicas is None or rank is None:
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                raise ValueError(
                    "UnpaddedDistributedSampler needs num_replicas and rank when "
                    "torch.distributed is not initialised"
                )
            if num_replicas is None:
                num_replicas = torch.distributed.get_world_size()
            if rank is None:
                rank = torch.distributed.get_rank()
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_samples_total = dataset if isinstance(dataset, int) else len(dataset)
        self.num_replicas = num_replicas
        self.rank = rank
        self.block_size = block_size
        n_blocks = math.ceil(self.num_samples_total / block_size)
        first_block = rank * n_blocks // num_replicas
        last_block = (rank + 1) * n_blocks // num_replicas
        self.start = min(first_block * block_size, self.num_samples_total)
        self.end = min(last_block * block_size, self.num_samples_total)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))

    def __len__(self) -> int:
        return self.end - self.start

    def set_epoch(self, epoch: int) -> None:
        """No-op (the order never changes); present for Lightning's per-epoch hook."""


def first_sample_index(loader: DataLoader) -> int:
    """Global index of the first sample an evaluation loader yields on this rank.

    0 for an unsharded, in-order loader; ``sampler.start`` under
    :class:`UnpaddedDistributedSampler`. The ``j``-th sample the loader yields has global index
    ``first_sample_index(loader) + j``. Any other sampler (shuffled, padded, round-robin) has no
    such offset: ValueError.
    """
    sampler = loader.sampler
    if isinstance(sampler, UnpaddedDistributedSampler):
        return sampler.start
    if isinstance(sampler, SequentialSampler):
        return 0
    raise ValueError(
        f"{type(sampler).__name__} does not yield consecutive samples; global sample indices "
        "need an in-order loader or UnpaddedDistributedSampler"
    )
