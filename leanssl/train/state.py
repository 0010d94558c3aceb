"""RunState: where a run is, which is what its checkpoint holds besides the weights, optimizer, config and RNG."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

# What a checkpoint taken mid-epoch holds besides the rest: the epoch's generators and what it measured so far.
MID_EPOCH = ("gen_state", "np_rng_state", "epoch_losses", "epoch_seconds")
# What every checkpoint holds besides "model" (older checkpoints may lack the other fields: they default).
REQUIRED = ("optimizer", "config", "torch_rng", "epoch", "elapsed", "loss")


@dataclass
class RunState:
    """The loop keeps it for the finished epochs; a mid-epoch checkpoint is a copy with the epoch's progress."""

    epoch: int = 0              # epochs finished (mid-epoch: the one in progress)
    step_in_epoch: int = 0      # steps of that epoch done (0 at an epoch's end)
    loss: float = math.nan      # the last finished epoch's mean loss
    elapsed: float = 0.0        # training seconds of the finished epochs, setup (calibration) included
    skipped_steps: int = 0      # batches skipped as diverged (--on-nan skip)
    images_seen: int = 0        # by the finished epochs
    rate_from: tuple[int, float] | None = None  # where the time budget's rate is measured from (Schedule)
    peak_mem_mb: float = 0.0    # over every invocation so far
    # mid-epoch only (step_in_epoch > 0): the epoch's generator states, its losses and seconds so far
    gen_state: torch.Tensor | None = None
    np_rng_state: dict | None = None
    epoch_losses: list[float] = field(default_factory=list)
    epoch_seconds: float = 0.0

    @property
    def mid_epoch(self) -> bool:
        return self.step_in_epoch > 0

    def checkpoint(self, method: torch.nn.Module, opt: torch.optim.Optimizer, config: dict) -> dict:
        """The checkpoint of the run at this state (the epoch's generators only mid-epoch)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)
                  if self.mid_epoch or f.name not in MID_EPOCH}
        return {"model": method.state_dict(), "optimizer": opt.state_dict(), "config": config,
                "torch_rng": torch.get_rng_state(), **values}

    @classmethod
    def from_checkpoint(cls, state: dict, images_per_epoch: int) -> RunState:
        """The state a checkpoint was taken at (`REQUIRED` checked by the caller); the fields an older
        checkpoint lacks take their defaults, images_seen that of its finished epochs."""
        names = {f.name for f in fields(cls)} - (set() if state.get("step_in_epoch") else set(MID_EPOCH))
        values = {k: state[k] for k in names if k in state}
        values.setdefault("images_seen", state["epoch"] * images_per_epoch)
        values["rate_from"] = tuple(values["rate_from"]) if values.get("rate_from") else None
        return cls(**values)

    def end_epoch(self, loss: float, images: int) -> None:
        """The epoch in progress is finished, `loss` its mean and `images` seen (the caller adds its seconds)."""
        self.epoch, self.step_in_epoch, self.loss = self.epoch + 1, 0, loss
        self.images_seen += images
        self.gen_state = self.np_rng_state = None
        self.epoch_losses, self.epoch_seconds = [], 0.0

