"""`barlow`: Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction"
(arXiv 2103.03230; code facebookresearch/barlowtwins).

Both views pass one network; the projections are standardised per dimension over the batch
(BatchNorm without affine) and their cross-correlation matrix C (dim × dim) is pushed to identity:

    C = z̃₁ᵀ z̃₂ / B,    L = Σ_i (1 − C_ii)² + λ · Σ_{i≠j} C_ij²

Defaults: projector Linear-BN-ReLU ×2 then Linear, no biases, 8192-8192-8192 above 32 px (the
paper), 2048-2048 at ≤ 32 px (solo-learn's CIFAR recipe: the paper has none); λ = 0.0051 (the code).
Views: BYOL's asymmetric pair (crop scale (0.08, 1), jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale
0.2, blur p 1.0 / 0.1, solarise p 0 / 0.2; no blur at ≤ 32 px). Each view passes the network alone.
Deviations: LARS (lr 0.2·B/256 for weights, 0.0048·B/256 for biases and BN, wd 1.5e-6) is
replaced by the loop's SGD. The loss is a sum over dim² entries, so its gradient is large next to
the other methods': `scale` multiplies it (1: the paper; solo-learn's CIFAR recipe uses 0.1, the
first release of the authors' code 1/32) — lower it, or the learning rate, if SGD diverges.
Under torchrun C is summed over ranks (all-reduced, with gradient) and divided by the global batch,
as in the authors' code; the standardisation is per rank unless --sync-bn (theirs is per GPU too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import AT_LEAST_1, NON_NEGATIVE, POSITIVE, checked
from .. import distributed
from ..models.heads import mlp
from ..options import opt
from .base import Method
from .common import by_size, byol_crop_colour, byol_views


@dataclass
@checked(dim=AT_LEAST_1, proj_hidden=AT_LEAST_1, lambd=NON_NEGATIVE, scale=POSITIVE)
class BarlowConfig:
    dim: int | None = opt(None, "projection width (default: 2048 at <= 32 px, 8192 above)")
    proj_hidden: int | None = opt(None, "projector hidden width (default: equal to --dim)")
    lambd: float = opt(0.0051, "weight of the off-diagonal (redundancy) terms")
    scale: float = opt(1.0, "loss multiplier (see methods/barlow.py)")


def barlow_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """Σ(1 − C_ii)² + λ·Σ_{i≠j} C_ij² with C = z1ᵀ z2 / B; z1, z2 already standardised per dimension.
    Under torchrun B is the global batch and C sums every rank's rows."""
    c = distributed.sum_over_ranks((z1.t() @ z2).float(), grad=True) / (z1.shape[0] * distributed.world_size())
    diag = torch.diagonal(c)
    on = (1 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lambd * off


class BarlowTwins(Method):
    name = "barlow"
    description = "two views, the cross-correlation of their projections driven to the identity (Zbontar et al. 2021)"
    views = 2
    Config = BarlowConfig
    default_lr = 0.12  # per 256: lightly's CIFAR-10 SGD benchmark, 0.06·B/128 (LARS rates do not carry to SGD)

    def __init__(self, backbone, data, cfg: BarlowConfig | None = None, aug=None):
        aug = aug or byol_crop_colour()
        super().__init__(backbone, data, aug)
        self.cfg = cfg = cfg or self.Config()
        dim = by_size(cfg.dim, data, 2048, 8192)
        # last_bn: the last Linear has no bias and is followed by BatchNorm without affine, which is
        # the paper's per-dimension standardisation of z (its `self.bn`), applied to each view alone.
        self.projector = mlp(backbone.out_dim, cfg.proj_hidden or dim, dim, layers=3, last_bn=True)
        self.views = byol_views(data, aug)

    def training_step(self, x, idx, gen, rng):
        z1, z2 = (self.projector(self.backbone(view(x, gen))) for view in self.views)
        loss = self.cfg.scale * barlow_loss(z1, z2, self.cfg.lambd)
        return loss, {}
