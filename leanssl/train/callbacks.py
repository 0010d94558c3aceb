"""Hooks into a training run: `train(cfg, callbacks=[...])` calls each callback's methods at three points.

Each gets the run (leanssl.train.loop.Run): among what it holds, `cfg`, `method`, `schedule`
(total_steps: the run's length, under a budget its estimate), `state` (RunState: epochs done,
elapsed seconds...), `steps_done`, `resumed` and `ctx` (under torchrun every process calls its
callbacks: write files on `ctx.is_main` only). A callback changes nothing the run computes unless
it means to; time it spends counts as training time, like any other work in the loop.
"""

from __future__ import annotations


class Callback:
    """Subclass and override what is needed; the defaults do nothing."""

    def on_setup(self, run) -> None:
        """Once, before the first step: the method and optimizer are built and (resumed) restored; a fresh
        run's calibration pass (`Method.setup`) follows."""

    def on_step_end(self, run) -> None:
        """After every step, once its log rows are flushed and its checkpoint (if one was due) is written.
        A signal received here is acted on after the next step."""

    def on_epoch_end(self, run) -> None:
        """After every finished epoch, once its epochs.csv row and checkpoint are written."""
