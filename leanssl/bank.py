"""The memory bank of non-parametric instance discrimination: one L2-normalised row per image.

The bank is a persistent buffer, so it lives in the method's state dict and is checkpointed and
resumed with the model (lightly #993 lost banks kept as non-persistent buffers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MemoryBank(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        # NPID's initialisation: random unit rows. Feature calibration overwrites them before epoch 1.
        self.register_buffer("weight", F.normalize(torch.randn(size, dim), dim=1))

    @property
    def size(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def write(self, idx: torch.Tensor, z: torch.Tensor) -> None:
        """Overwrite rows `idx` with normalised features (used by feature calibration)."""
        self.weight[idx] = F.normalize(z.float(), dim=1)

    def columns(self, idx: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Columns C = I ∪ K: the batch's own rows first (row r's target is column r), then k others.

        K is drawn uniformly without replacement from the N - B images not in the batch, so an
        image's own row never appears among its negatives. When N <= k + B every row is used.
        Sizes are known on the host, so no step waits on the device (no nonzero(), no boolean mask):
        a stable sort on an in-batch flag moves the batch's rows behind the others, in order.
        """
        n, b = self.size, idx.numel()
        in_batch = torch.zeros(n, dtype=torch.uint8, device=idx.device).index_fill_(0, idx, 1)
        if n <= k + b:  # every other row, ascending
            return torch.cat([idx, torch.sort(in_batch, stable=True).indices[: n - b]])
        # A random permutation's first k + b entries hold at least k non-batch rows; keep the first k of them.
        cand = torch.randperm(n, generator=generator, device=idx.device)[: k + b]
        keep = torch.sort(in_batch[cand], stable=True).indices[:k]
        return torch.cat([idx, cand[keep]])

    @torch.no_grad()
    def update_ema(self, idx: torch.Tensor, z: torch.Tensor, momentum: float) -> None:
        """NPID / the authors' code: W_I <- normalize(m W_I + (1 - m) z)."""
        self.weight[idx] = F.normalize(momentum * self.weight[idx] + (1 - momentum) * z.float(), dim=1)

    @torch.no_grad()
    def update_grad(self, cols: torch.Tensor, grad: torch.Tensor, lr: float, current: torch.Tensor | None = None) -> None:
        """The paper's correction: a descent step on every scored column, then renormalise.

        `grad` is dL/dW[C] of the per-sample *summed* CE loss (the caller rescales autograd's
        batch-mean gradient by B), so the step is W_c <- normalize(W_c + (lr/τ) Σ_r (δ_rc - p_rc) z_r).
        `current` is W[C] if the caller still holds it (a gather of the whole bank saved per step).
        """
        current = self.weight.index_select(0, cols) if current is None else current
        self.weight[cols] = F.normalize(current - lr * grad.float(), dim=1)
