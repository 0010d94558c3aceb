"""Training FLOPs per image, counted (not estimated) with torch's FLOP counter.

`torch.utils.flop_counter.FlopCounterMode` counts the FLOPs of the matrix ops PyTorch dispatches
(mm/addmm/bmm, convolutions and their backward, attention): 2 per multiply-add. Elementwise ops
(activations, normalisation, augmentation, the optimiser's update) are not counted; in these
networks they are a small share of the arithmetic, but not of the time.

One training step of the method is run under the counter exactly as the training loop runs it:
`training_step` (every view, teacher and bank forward included) then `backward` then `after_step`
(bank, queue or EMA-teacher update), on one real batch at the run's batch size (some terms grow
with the batch: SimCLR's 2B x 2B similarities, essl's B x (B + k) logits). The total is divided
by the batch size. essl's feature calibration (one forward pass over the data before epoch 1)
is not in the per-step figure.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], object]) -> int:
    """The FLOPs that `fn()` dispatches (forward and any backward it runs)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def method_step_flops(method, x: torch.Tensor, idx: torch.Tensor, seed: int = 0) -> int:
    """FLOPs of one full training step of `method` on the batch `x` (uint8, on the method's device)."""
    gen = torch.Generator(x.device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    method.train()
    method.set_progress(0, 1, 1)

    def step():
        loss, _ = method.training_step(x, idx, gen, rng)
        method.zero_grad(set_to_none=True)
        loss.backward()
        method.after_step()

    return count_flops(step)


def training_flops_per_image(cfg, info, x: np.ndarray, device: torch.device) -> float:
    """FLOPs per image of one training step of the run `cfg` on its data `x` (the pretraining images).

    The method is built as the training loop builds it (same seed, same data size, so the same
    bank and the same number of scored columns), on a fresh copy: the trained run is not touched.
    """
    from ..train.build import build_method

    torch.manual_seed(cfg.seed)
    method = build_method(cfg, info).to(device, memory_format=torch.channels_last)
    b = min(cfg.batch(), len(x))
    idx = torch.from_numpy(np.random.default_rng(cfg.seed).choice(len(x), b, replace=False)).long()
    xb = torch.from_numpy(np.ascontiguousarray(x[np.sort(idx.numpy())])).to(device)
    idx = idx.sort().values.to(device)
    return method_step_flops(method, xb, idx, cfg.seed) / b
