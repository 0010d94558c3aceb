"""`simsiam`: Chen & He 2021, "Exploring Simple Siamese Representation Learning" (arXiv 2011.10566;
code facebookresearch/simsiam).

BYOL without the momentum encoder: one network (backbone + projector) for both views, a predictor
on top, and a stop-gradient on the projection it predicts.

    L = ½·D(p₁, sg(z₂)) + ½·D(p₂, sg(z₁)),   D(p, z) = −mean_i cos(p_i, z_i)

Defaults: projector D-D-dim with BatchNorm on every layer, the output's without affine (the code:
D the backbone width, dim 2048); 3 layers above 32 px, 2 at ≤ 32 px (the paper's CIFAR setting).
Predictor dim → 512 → dim, BN-ReLU in the bottleneck only. Views: MoCo v2's (crop scale (0.2, 1),
jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, blur p 0.5 above 32 px). Each view passes the
network on its own. Recipe: SGD lr 0.05·B/256 (ImageNet, wd 1e-4) or 0.03·B/256 (CIFAR, wd 5e-4).
Deviation: the paper keeps the predictor's learning rate fixed (not decayed); the shared loop
decays every parameter group alike. Under torchrun nothing is gathered (a per-sample loss); the
paper's 8-GPU runs use SyncBatchNorm: --sync-bn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import AT_LEAST_1, checked
from ..models.heads import mlp
from ..options import opt
from .base import Method
from .common import by_size


@dataclass
@checked(dim=AT_LEAST_1, proj_hidden=AT_LEAST_1, pred_hidden=AT_LEAST_1, proj_layers=AT_LEAST_1)
class SimsiamConfig:
    dim: int = opt(2048, "projection width (the predictor's input and output)")
    proj_hidden: int | None = opt(None, "projection MLP hidden width (default: the backbone's width)")
    pred_hidden: int = opt(512, "predictor bottleneck width")
    proj_layers: int | None = opt(None, "projection MLP depth (default: 2 at <= 32 px, 3 above)")


def neg_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = −mean_i cos(p_i, z_i), with z a stop-gradient."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()


class SimSiam(Method):
    name = "simsiam"
    description = "two views, BYOL without the momentum encoder: a stop-gradient (Chen & He 2021)"
    views = 2
    Config = SimsiamConfig
    default_lr = 0.03  # per 256 images: the paper's CIFAR SGD recipe, 0.03·B/256

    def __init__(self, backbone, data, cfg: SimsiamConfig | None = None, aug=None):
        super().__init__(backbone, data, aug)
        self.cfg = cfg = cfg or self.Config()
        width = backbone.out_dim
        layers = by_size(cfg.proj_layers, data, 2, 3)
        self.projector = mlp(width, cfg.proj_hidden or width, cfg.dim, layers=layers, last_bn=True)
        self.predictor = mlp(cfg.dim, cfg.pred_hidden, cfg.dim, layers=2)

    def training_step(self, x, idx, gen, rng):
        z1, z2 = (self.projector(self.backbone(self.augment(x, gen))) for _ in range(2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = 0.5 * neg_cosine(p1, z2) + 0.5 * neg_cosine(p2, z1)
        return loss, {}
