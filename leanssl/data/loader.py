"""Batches gathered by index from the uint8 cache and moved to the training device.

Small data sets (below `resident_bytes`) are copied to the device once, so a batch is one
index-select there; larger ones are gathered from the memory-mapped cache batch by batch.

In a torchrun job each process has a loader over the whole data set with its `rank` and `world`:
every process draws the same global batches and gathers only its own contiguous share of each, so
the shards of a step are disjoint and together are the batch one process would train on.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class DeviceLoader:
    def __init__(self, x: np.ndarray, device: torch.device | str, resident_bytes: int = 4 << 30,
                 rank: int = 0, world: int = 1):
        self.x = x
        self.device = torch.device(device)
        self.rank, self.world = rank, world
        self.resident = torch.from_numpy(np.array(x)).to(self.device) if x.nbytes <= resident_bytes else None

    def __len__(self) -> int:
        return len(self.x)

    def gather(self, idx: torch.Tensor, on_device: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 images at dataset indices `idx` (a CPU int64 tensor), on the device.

        `on_device`: the same indices already on the device, used by a resident data set, so a step
        makes no host->device copy (a blocking one waits for the GPU to finish its queued work)."""
        if self.resident is not None:
            return self.resident[on_device if on_device is not None else idx.to(self.device)]
        order = idx.numpy()
        # Sorted reads are sequential on disk; undo the sort after the copy.
        sort = np.argsort(order, kind="stable")
        batch = np.empty((len(order),) + self.x.shape[1:], dtype=np.uint8)
        batch[sort] = self.x[order[sort]]
        t = torch.from_numpy(batch)
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def epoch(self, batch_size: int, epoch_seed: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A seeded random pass that drops the last partial batch (its images differ every epoch).

        The order depends only on `epoch_seed`, so a resumed run sees the same batches; `start`
        skips the first batches (a run resumed mid-epoch), without reading them. With world > 1,
        `batch_size` is the global batch and this process gets its share of each (see `shards`).
        """
        for x, idx, _ in self.shards(batch_size, epoch_seed, start):
            yield x, idx

    def shards(self, batch_size: int, epoch_seed: int,
               start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """`epoch`'s batches as (this process's images, their indices, the global batch's indices).

        Global batch i is perm[i·B : (i+1)·B] on every process; process r takes its rows
        r·B/world .. (r+1)·B/world (B must be a multiple of world). The dropped tail is the same
        as in one process: the bank still sees every image, since the tail changes every epoch.
        """
        g = torch.Generator().manual_seed(epoch_seed)
        perm = torch.randperm(len(self), generator=g)
        perm_dev = perm.to(self.device)  # one copy an epoch; each step slices it on the device
        local = batch_size // self.world
        for i in range(start, len(self) // batch_size):
            rows = slice(i * batch_size, (i + 1) * batch_size)
            batch, batch_dev = perm[rows], perm_dev[rows]
            if self.world == 1:
                yield self.gather(batch, batch_dev), batch_dev, batch_dev
            else:
                mine = slice(self.rank * local, (self.rank + 1) * local)
                yield self.gather(batch[mine], batch_dev[mine]), batch_dev[mine], batch_dev

    def ordered(self, batch_size: int, seed: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every image once, in order (or in a seeded random order), the last partial batch included.

        A last batch of one image joins the one before: BatchNorm in train mode (feature
        calibration) cannot normalise a batch of one. With world > 1 each batch is split into
        `world` contiguous shares and this process gets its own, so together the processes cover
        every image exactly once; a last batch with fewer than 2 images per process joins the one
        before.
        """
        order = torch.arange(len(self)) if seed is None else torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        starts = list(range(0, len(self), batch_size))
        if len(starts) > 1 and len(self) - starts[-1] < 2 * self.world:
            starts.pop()
        for start, end in zip(starts, starts[1:] + [len(self)]):
            idx = order[start:end]
            if self.world > 1:
                idx = idx.tensor_split(self.world)[self.rank]
            yield self.gather(idx), idx.to(self.device)

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size
