"""The per-step log: kept on the device, written to log.csv (and TensorBoard) every log_every steps."""

from __future__ import annotations

import torch

from .. import distributed
from ..runfolder import RunFolder


class StepLog:
    """Rows wait on the device until `flush`, so the GPU is synchronised once per flush, not per step.

    Under torchrun only rank 0 writes (`write`); every rank flushes, for the all-reduce that makes the
    logged losses the global batch's."""

    def __init__(self, folder: RunFolder, write: bool = True):
        self.folder, self.write = folder, write
        self.pending: list[tuple] = []
        self.tb = None
        if write:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(folder.tensorboard_path))
            except Exception:  # TensorBoard is optional
                self.tb = None

    def add(self, epoch: int, step: int, lr: float, values: torch.Tensor) -> None:
        """A step's (loss, ce, kl, grad_norm) (StepResult.values)."""
        self.pending.append((epoch, step, lr, values))

    def flush(self) -> list[tuple]:
        """Write the pending rows; returns them as (epoch, step, lr, loss, grad_norm) (one host sync for all)."""
        if not self.pending:
            return []
        values = torch.stack([p[3] for p in self.pending])
        if distributed.world_size() > 1:  # each rank's loss is its share's mean: the ranks' mean is the global batch's
            values = torch.cat([distributed.mean_over_ranks(values[:, :3]), values[:, 3:]], dim=1)
        values = values.tolist()
        if self.write:
            self.folder.append_log([(epoch, step, lr, loss, ce, kl)
                                    for (epoch, step, lr, _), (loss, ce, kl, _) in zip(self.pending, values)])
            if self.tb is not None:
                for (_, step, _, _), v in zip(self.pending, values):
                    self.tb.add_scalar("train/loss", v[0], step)
        rows = [(epoch, step, lr, v[0], v[3]) for (epoch, step, lr, _), v in zip(self.pending, values)]
        self.pending = []
        return rows
