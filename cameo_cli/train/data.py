"""A resumable, rank-aware stream of training batches.

The stream is the concatenation of seeded permutations of the dataset (one per epoch);
global batch k covers stream items [k·G, (k+1)·G) with G = `train.batch_size` (global, split
evenly over the processes), and each process takes its own contiguous slice. Items are
addressed as (epoch, index, k), so a dataset with `set_epoch` draws its epoch's views even
inside worker processes, and one with `batch_item` can share a draw over global batch k
(the official view order). The position is the number of global batches consumed, so a
resumed run reads exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cameo_cli.batch import ViewBatch
from cameo_cli.errors import CameoError

Key = tuple[int, int, int]  # (epoch, item, global batch)


def per_process_batch(batch_size: int, world_size: int) -> int:
    """Each process's share of the global `train.batch_size`; it must divide evenly."""
    if batch_size % world_size:
        raise CameoError(
            f"train.batch_size {batch_size} is the global batch and does not split evenly "
            f"over {world_size} processes; use a multiple of {world_size}"
        )
    return batch_size // world_size


class EpochItems(Dataset):
    """Index a dataset by (epoch, item, global batch): `set_epoch` (if any) before each read,
    then `batch_item(item, batch)` where the dataset has it, else `dataset[item]`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Key) -> dict:
        epoch, item, batch = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        if hasattr(self.dataset, "batch_item"):
            return self.dataset.batch_item(item, batch)
        return self.dataset[item]


class ResumableBatchSampler(Sampler[list[Key]]):
    """Infinite batches of (epoch, index, global batch) for one process, of `batch_size`
    items each (this process's share), from global batch `start`."""

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

    def __iter__(self) -> Iterator[list[Key]]:
        cache: dict[int, torch.Tensor] = {}
        global_batch = self.batch_size * self.world_size
        batch = self.start
        while True:
            first = batch * global_batch + self.rank * self.batch_size
            yield [(*self._item(first + i, cache), batch) for i in range(self.batch_size)]
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
    """A DataLoader over the stream from global batch `start` (`batch_size` items over all
    `world_size` processes), this process's items collated into ViewBatch."""
    share = per_process_batch(batch_size, world_size)
    sampler = ResumableBatchSampler(
        len(dataset), share, world_size=world_size, rank=rank, seed=seed, start=start
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
