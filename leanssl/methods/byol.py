"""`byol`: Grill et al. 2020, "Bootstrap Your Own Latent" (arXiv 2006.07733; code deepmind/deepmind-research).

An online network (backbone, projector, predictor) predicts the projection of the other view made by
a target network (backbone, projector) that is an EMA of the online one. The target side is a
stop-gradient: only the online branch receives gradient.

    L = ¼ · Σ_{(a,b) ∈ {(1,2),(2,1)}} mean_i (2 − 2·cos(pred(online(v_a))_i, target(v_b)_i))
      = ½ · Σ_{(a,b)} mean_i (1 − cos(·,·))
    target ← τ·target + (1 − τ)·online,  τ = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2

Defaults: projector and predictor Linear-BN-ReLU-Linear with 4096 hidden and 256 out (the paper).
τ_base 0.996 above 32 px (the paper), 0.99 at ≤ 32 px (solo-learn's CIFAR recipe: the paper has none).
Views (the paper's asymmetric pair): crop scale (0.08, 1), jitter (0.4, 0.4, 0.2, 0.1) p 0.8,
grayscale 0.2, blur p 1.0 / 0.1, solarise p 0 / 0.2; no blur at ≤ 32 px (the CIFAR recipes).
Each view passes the networks on its own (BatchNorm per view), as in the paper's code.
Deviations: LARS (lr 0.2·B/256, wd 1.5e-6, bias/BN excluded) is replaced by the loop's SGD, with
lightly's CIFAR-10 SGD rate (0.06·B/128). That rate assumes lightly's loss scale, ½·(NCS + NCS) with
NCS = −cos, whose gradient is ¼ of the paper's sum of two 2 − 2·cos terms; the loss here carries the
factor ¼ so that the rate (and the weight decay beside it) act as in the source. Before this scale
was introduced every BYOL run trained at 4× that effective rate.
Under torchrun nothing is gathered: the loss is a mean over samples and the target, an EMA of the
synchronised online weights, is the same on every rank (the paper's cross-replica BatchNorm: --sync-bn).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import AT_LEAST_1, FRACTION, checked
from ..models.heads import mlp
from ..options import opt
from .base import Method
from .common import by_size, byol_crop_colour, byol_views, cosine_momentum, ema_update, frozen_copy


@dataclass
@checked(dim=AT_LEAST_1, proj_hidden=AT_LEAST_1, momentum=FRACTION)
class ByolConfig:
    dim: int = opt(256, "projection / prediction width")
    proj_hidden: int = opt(4096, "projector and predictor hidden width")
    momentum: float | None = opt(None, "target EMA τ_base, cosine to 1 over training (default: 0.99 at <= 32 px, "
                                       "0.996 above)")


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """mean_i ‖p̄_i − z̄_i‖² = 2 − 2·cos(p_i, z_i); z (the target) is a stop-gradient."""
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()


class BYOL(Method):
    name = "byol"
    description = "two views, an online network predicts an EMA target's projection (Grill et al. 2020)"
    views = 2
    Config = ByolConfig
    default_lr = 0.12  # per 256: lightly's CIFAR-10 SGD benchmark, 0.06·B/128 (LARS rates do not carry to SGD)

    def __init__(self, backbone, data, cfg: ByolConfig | None = None, aug=None):
        aug = aug or byol_crop_colour()
        super().__init__(backbone, data, aug)
        self.cfg = cfg = cfg or self.Config()
        self.base_momentum = by_size(cfg.momentum, data, 0.99, 0.996)
        self.projector = mlp(backbone.out_dim, cfg.proj_hidden, cfg.dim, layers=2)
        self.predictor = mlp(cfg.dim, cfg.proj_hidden, cfg.dim, layers=2)
        self.target_backbone, self.target_projector = frozen_copy(backbone), frozen_copy(self.projector)
        self.views = byol_views(data, aug)

    def training_step(self, x, idx, gen, rng):
        v1, v2 = (view(x, gen) for view in self.views)
        p1, p2 = (self.predictor(self.projector(self.backbone(v))) for v in (v1, v2))
        with torch.no_grad():
            z1, z2 = (self.target_projector(self.target_backbone(v)) for v in (v1, v2))
        loss = 0.25 * (byol_loss(p1, z2) + byol_loss(p2, z1))  # lightly's scale, which default_lr assumes
        return loss, {}

    @torch.no_grad()
    def after_step(self) -> None:
        m = cosine_momentum(self.base_momentum, self.progress)
        ema_update([self.target_backbone, self.target_projector], [self.backbone, self.projector], m)
