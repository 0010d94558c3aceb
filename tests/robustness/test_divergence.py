"""Divergence: a NaN/Inf loss or an exploding gradient norm stops the run naming the step and the
likely cause, and keeps the last good checkpoint; --on-nan skip drops such batches and counts them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leanssl.cli import main
from leanssl.errors import LeansslError
from leanssl.methods.essl import ESSL
from leanssl.runfolder import load_checkpoint
from leanssl.train import train
from leanssl.train.divergence import MAX_SKIPS_IN_A_ROW

from .conftest import losses, tiny_argv

POISONS = {  # how step `at` goes wrong; the loss stays finite in the gradient cases
    "nan loss": lambda loss: loss * float("nan"),
    "inf loss": lambda loss: loss + float("inf"),
    "inf gradient": lambda loss: (loss.register_hook(lambda g: g * float("inf")), loss)[1],
    "huge gradient": lambda loss: (loss.register_hook(lambda g: g * 1e6), loss)[1],  # norms are 5..60 here
}


def poison_steps(monkeypatch, how, steps):
    """Make training_step's loss go wrong `how` at the given 0-based call numbers."""
    real, calls = ESSL.training_step, []

    def step(self, *a):
        loss, logs = real(self, *a)
        calls.append(1)
        return (POISONS[how](loss) if len(calls) - 1 in steps else loss), logs

    monkeypatch.setattr(ESSL, "training_step", step)


@pytest.mark.parametrize("how,message", [
    ("nan loss", "loss became nan"),
    ("inf loss", "loss became inf"),
    ("inf gradient", "gradient norm became (inf|nan)"),
    ("huge gradient", "gradient norm .* exceeded --grad-norm-limit 10000"),
])
def test_divergence_stops_naming_step_and_cause_and_keeps_the_last_good_checkpoint(how, message, tiny_cfg, monkeypatch):
    poison_steps(monkeypatch, how, {8})
    cfg = tiny_cfg(grad_norm_limit=1e4)
    with pytest.raises(LeansslError, match=rf"{message} at step 8 \(epoch 2, lr [0-9.]+\): the run diverged; "
                                           r"try a lower --lr.*--on-nan skip.*checkpoint .* is intact") as e:
        train(cfg)
    assert "\n" not in str(e.value)
    state = load_checkpoint(Path(cfg.out) / "checkpoint.pt")  # written after epoch 1, before the bad step
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_on_nan_skip_drops_the_batch_without_a_trace_and_counts_it(tiny_cfg, monkeypatch, capsys):
    cfg = tiny_cfg()
    calibration_batches = -(-96 // cfg.batch_size)  # feature calibration embeds every batch once before step 0
    real_embed, calls = ESSL.embed, []

    def embed(self, v):  # NaN input at step 3, so BatchNorm's running statistics see it too
        calls.append(1)
        return real_embed(self, v * float("nan") if len(calls) == calibration_batches + 4 else v)

    monkeypatch.setattr(ESSL, "embed", embed)
    steps, updates = [], []
    real_step, real_after = torch.optim.SGD.step, ESSL.after_step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))
    monkeypatch.setattr(ESSL, "after_step", lambda self: updates.append(1) or real_after(self))
    assert main(tiny_argv(cfg, "--on-nan", "skip")) == 0
    summary = json.loads((Path(cfg.out) / "summary.json").read_text())
    assert summary["complete"] and summary["skipped_steps"] == 1
    assert [s for s, _ in losses(cfg.out)] == [s for s in range(12) if s != 3]
    assert len(steps) == len(updates) == 11  # no optimizer step and no bank update for the skipped batch
    state = load_checkpoint(Path(cfg.out) / "checkpoint.pt")["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())  # BatchNorm stats restored
    err = capsys.readouterr().err
    assert "leanssl: step 3: loss became nan; batch skipped" in err
    assert "leanssl: skipped 1 diverged batch(es) (--on-nan skip)" in err


def test_on_nan_skip_still_stops_a_run_that_keeps_diverging(tiny_cfg, monkeypatch):
    poison_steps(monkeypatch, "nan loss", set(range(100)))
    last = MAX_SKIPS_IN_A_ROW - 1
    with pytest.raises(LeansslError, match=rf"{MAX_SKIPS_IN_A_ROW} batches in a row diverged .*at step {last} "):
        train(tiny_cfg(epochs=4, on_nan="skip"))
