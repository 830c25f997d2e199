"""A resumable, rank-aware stream of training batches.

The stream is the concatenation of seeded permutations of the dataset (one per epoch);
global batch k covers stream items [k·G, (k+1)·G) with G = per-process batch × processes,
and each process takes its own contiguous slice. Items are addressed as (epoch, index), so
a dataset with `set_epoch` draws its epoch's views even inside worker processes. The
position is the number of global batches consumed, so a resumed run reads exactly the
batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cameo_cli.batch import ViewBatch


class EpochItems(Dataset):
    """Index a dataset by (epoch, item), calling its `set_epoch` (if any) before each read."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, item = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[item]


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Infinite batches of (epoch, index) for one process, from global batch `start`."""

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        start: int = 0,
    ) -> None:
        if dataset_size <= 0:
            raise ValueError("the training dataset is empty")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.start = start

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.dataset_size, generator=generator)

    def _item(self, position: int, cache: dict[int, torch.Tensor]) -> tuple[int, int]:
        epoch, offset = divmod(position, self.dataset_size)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = self._permutation(epoch)
        return epoch, int(cache[epoch][offset])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        cache: dict[int, torch.Tensor] = {}
        global_batch = self.batch_size * self.world_size
        batch = self.start
        while True:
            first = batch * global_batch + self.rank * self.batch_size
            yield [self._item(first + i, cache) for i in range(self.batch_size)]
            batch += 1

    def __len__(self) -> int:  # an infinite stream; DataLoader only needs this for len()
        return 2**62


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    world_size: int,
    rank: int,
    seed: int,
    start: int,
    workers: int,
) -> DataLoader:
    """A DataLoader over the stream from global batch `start`, items collated into ViewBatch."""
    sampler = ResumableBatchSampler(
        len(dataset), batch_size, world_size=world_size, rank=rank, seed=seed, start=start
    )
    return DataLoader(
        EpochItems(dataset),
        batch_sampler=sampler,
        collate_fn=ViewBatch.collate,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),  # worker seeds; leaves the global RNG
    )
