"""The learning rate and view size of every step: linear warm-up, cosine decay, time budgets, progressive views."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Steps measured since the rate's start before a time budget's length is estimated from them.
RATE_STEPS = 5


def lr_at(step: int, total: int, warmup: int, base: float, per: int = 1) -> float:
    """Linear warm-up, then cosine decay to zero; `per` > 1 holds the rate for blocks of `per` steps (per epoch)."""
    step = step // per * per
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class Schedule:
    """A run's schedule: `epochs` x `steps_per_epoch` steps, or, under a `time_budget` (seconds), the steps
    the budget is estimated to hold (`epochs` is then a cap), re-estimated every step from the rate so far.

    `progressive` (px): the views are that size for the first `progressive_fraction` of the steps (of the
    time, under a budget), then full size; the rate is measured afresh once they are (they cost more).
    """

    base_lr: float
    steps_per_epoch: int
    epochs: int
    warmup_epochs: float
    per_epoch: bool = False  # the lr is held for each epoch (the essl authors' script) instead of per step
    time_budget: float | None = None
    progressive: int | None = None
    progressive_fraction: float = 0.75
    rate_from: tuple[int, float] | None = None  # (step, seconds spent) where the budget's rate measurement starts

    def __post_init__(self):
        self.cap = self.steps_per_epoch * self.epochs
        self.total_steps = self.cap  # under a budget: the estimate, the cap until a rate is measured
        self.warmup = int(self.warmup_epochs * self.steps_per_epoch)

    @classmethod
    def of(cls, cfg, steps_per_epoch: int, rate_from: tuple[int, float] | None = None) -> Schedule:
        """The schedule of a TrainConfig; a resumed run passes its checkpoint's `rate_from` (else its first steps
        would see no rate and run at the peak lr of an uncapped schedule)."""
        return cls(cfg.base_lr(), steps_per_epoch, cfg.epochs, cfg.warmup_epochs, cfg.lr_schedule == "epoch",
                   cfg.time_budget, cfg.progressive, cfg.progressive_fraction, rate_from)

    def out_of_time(self, spent: float) -> bool:
        """Whether a time budget is set and `spent` seconds have used it up."""
        return self.time_budget is not None and spent >= self.time_budget

    def advance(self, step: int, spent: float) -> None:
        """Before `step`, `spent` seconds into training: under a budget, re-estimate the steps it holds."""
        if self.time_budget is None:
            return
        self.rate_from = self.rate_from or (step, spent)
        if self.progressive is not None and spent >= self.progressive_fraction * self.time_budget > self.rate_from[1]:
            self.rate_from = (step, spent)  # full-size views: the steps left are measured at their own rate
        if step - self.rate_from[0] >= RATE_STEPS:  # else keep the estimate (the cap before any rate was measured)
            self.total_steps = self.steps_in_budget(step, spent)
        self.warmup = min(int(self.warmup_epochs * self.steps_per_epoch), self.total_steps // 10)

    def steps_in_budget(self, step: int, spent: float) -> int:
        """The total steps the time budget will hold, from the rate measured since `rate_from`.

        Before a rate is measured (the first steps) the estimate is the cap; warm-up does not depend on it.
        """
        steps, seconds = step - self.rate_from[0], spent - self.rate_from[1]
        if steps < RATE_STEPS or seconds <= 0:
            return self.cap
        return max(step + 1, min(self.cap, step + int((self.time_budget - spent) * steps / seconds)))

    def lr(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.warmup, self.base_lr, self.steps_per_epoch if self.per_epoch else 1)

    def view_size(self, step: int, spent: float) -> int | None:
        """The views' size at `step` under --progressive (None: the data's own)."""
        done = spent / self.time_budget if self.time_budget is not None else step / self.total_steps
        return self.progressive if self.progressive is not None and done < self.progressive_fraction else None
