"""The training loader: one global sample order per epoch, sharded by rank, resumable mid-epoch.

Every rank draws the same permutation (seeded by seed + epoch) and takes its own slice of each
global batch, so a run on N processes sees the same global batches as one process with N times the
batch; skipping the first k batches resumes an interrupted epoch exactly.
"""

from __future__ import annotations

import re
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from irface.errors import UserError


class GlobalOrderSampler(Sampler[int]):
    """Yields this rank's indices, batch by batch, of a per-epoch permutation shared by all ranks."""

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, tag_epoch: bool = False):
        if num_samples < batch_size * world_size:
            raise ValueError(f"{num_samples} samples cannot fill one global batch of {batch_size} x {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.tag_epoch = tag_epoch  # yield (index, epoch): workers learn the epoch even when persistent
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        # drop_last: every step is a full global batch
        return self.num_samples // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation; `start_batch` skips batches already trained (resume)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * global_batch + self.rank * self.batch_size
            for i in order[start:start + self.batch_size].tolist():
                yield (i, self.epoch) if self.tag_epoch else i


class RandomFlip(Dataset):
    """Horizontal flip with probability 1/2, drawn from (seed, epoch, index) so it is reproducible anywhere.

    Indexed by `(index, epoch)` tuples from `GlobalOrderSampler(tag_epoch=True)`: the epoch travels
    with each index, so persistent worker processes never hold a stale epoch.
    """

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = seed
        self.num_classes = getattr(dataset, "num_classes", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        img, label = self.dataset[i]
        # A cheap integer hash: independent of worker scheduling, so resume and N ranks agree.
        h = (i * 2654435761 + (self.seed * 1000003 + epoch) * 40503) & 0xFFFFFFFF
        if (h >> 16) & 1:
            img = img.flip(-1)
        return img, label


def _worker_message(error: UserError) -> str:
    """The one-line message of a user error raised in a DataLoader worker.

    PyTorch re-raises a worker's exception with its type but with "Caught X in DataLoader worker
    process N" and the worker's whole traceback as the message; the original line is the last one.
    """
    text = str(error)
    if not text.startswith("Caught "):
        return text
    name = type(error).__name__
    lines = [m.group(1) for m in re.finditer(rf"^(?:[\w.]*\.)?{name}: (.*)$", text, flags=re.M)]
    return lines[-1] if lines else text.splitlines()[-1]


class TrainLoader(DataLoader):
    """A DataLoader whose data errors from worker processes come out as the worker's one-line message."""

    def __iter__(self):
        it = super().__iter__()
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except BaseException as e:
                # Stop the workers now: left to the garbage collector (the traceback keeps the iterator
                # in a reference cycle), the shutdown waits out the workers' 5-second status timeout.
                shutdown = getattr(it, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()
                if isinstance(e, UserError):
                    raise type(e)(_worker_message(e)) from None
                raise
            yield batch


def build_train_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                       num_workers: int = 4, pin_memory: bool = False, prefetch_factor: int = 2,
                       persistent_workers: bool = True, flip: bool = True) -> DataLoader:
    """uint8 (B, 3, H, W) batches and int64 labels; call `set_loader_epoch(loader, e, start_batch)` each epoch."""
    data = RandomFlip(dataset, seed) if flip else dataset
    sampler = GlobalOrderSampler(len(dataset), batch_size, rank, world_size, seed, tag_epoch=flip)
    kwargs = {}
    if num_workers > 0:
        kwargs = {"prefetch_factor": prefetch_factor, "persistent_workers": persistent_workers}
    return TrainLoader(data, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=True, **kwargs)


def set_loader_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Select the epoch's order (and flips); skip `start_batch` batches already trained."""
    loader.sampler.set_epoch(epoch, start_batch)
