"""Determinism: the same seed on the same CPU gives identical results, bit for bit."""

from __future__ import annotations

from pathlib import Path

import torch

from leanssl.runfolder import load_checkpoint
from leanssl.train import train

from .conftest import losses


def test_same_seed_same_cpu_gives_identical_losses_and_weights(tiny_cfg, reference):
    ref_losses, ref_state = reference
    train(tiny_cfg("again"))
    assert losses(tiny_cfg("again").out) == ref_losses  # exact, not approximately
    state = load_checkpoint(Path(tiny_cfg("again").out) / "checkpoint.pt")["model"]
    assert all(torch.equal(state[k], v) for k, v in ref_state.items())


def test_another_seed_gives_another_run(tiny_cfg, reference):
    train(tiny_cfg("seed1", seed=1, epochs=2, stop_after=1))
    other = dict(losses(tiny_cfg("seed1").out))
    assert all(other[s] != v for s, v in reference[0] if s in other)
