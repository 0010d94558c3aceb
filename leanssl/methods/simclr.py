"""`simclr`: Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations"
(arXiv 2002.05709; authors' code google-research/simclr).

Two views of every image, one shared encoder and projection head g, and the NT-Xent loss: among the
2B embeddings of a batch, each one's positive is its twin view and its negatives are the other
2B − 2 (itself excluded).

Defaults and where they come from:
- head: Linear(D, D)-BN-ReLU-Linear(D, 128), D the backbone width (2048 → 128 for ResNet-50).
- τ: 0.5 at ≤ 32 px (the authors' CIFAR-10 command), 0.1 above (ImageNet).
- views: RandomResizedCrop scale (0.08, 1), colour jitter of strength s = 0.5 at ≤ 32 px
  ((0.4, 0.4, 0.4, 0.1), CIFAR-10) and s = 1 above ((0.8, 0.8, 0.8, 0.2)), p 0.8; grayscale 0.2;
  blur p 0.5 above 32 px only (the CIFAR command passes --use_blur=False). Both views alike.
- both views go through the backbone as one 2B batch (BatchNorm over 2B), as in the TF code.
Deviations: LARS (lr 0.3·B/256 ImageNet, 1.0 at B 512 CIFAR) is replaced by the loop's SGD; the
TF code's BatchNorm on the projection output (scale only) is left out, as in the paper's g(h).
Under torchrun the negatives are the whole global batch, as in the TF code's cross-replica
concatenation: each rank scores its 2B/G anchors against every rank's embeddings, gathered with
gradient (use --sync-bn for the paper's global BatchNorm).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import AT_LEAST_1, POSITIVE, checked
from .. import distributed
from ..data.augment import AugConfig
from ..models.heads import mlp
from ..options import opt
from .base import Method
from .common import by_size, is_small
from .ssql import check_bits, draw_bits, ssql_term


@dataclass
@checked(dim=AT_LEAST_1, proj_hidden=AT_LEAST_1, tau=POSITIVE)
class SimclrConfig:
    dim: int = opt(128, "projection output width")
    proj_hidden: int | None = opt(None, "projection MLP hidden width (default: the backbone's width)")
    tau: float | None = opt(None, "NT-Xent temperature (default: 0.5 at <= 32 px, 0.1 above)")
    ssql_weight: float = opt(0.0, "weight of the SSQL quantisation term on the first view (methods/ssql.py; 0: off)")
    ssql_bits: tuple = opt((2, 8), "the SSQL term's bit-width range, one drawn per step, e.g. 2,8")


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean NT-Xent over the 2B anchors: softmax over the 2B − 1 others, the twin view is the target.

    Under torchrun the anchors are this rank's 2B and the others are all 2B·G − 1 embeddings of the
    global batch (gathered with gradient); the ranks' mean of this loss is the global batch's.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z.shape[0]
    if distributed.world_size() == 1:
        s = (z @ z.t()).float() / tau
        s = s.masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), float("-inf"))  # not its own negative
        twin = torch.arange(n, device=z.device).roll(n // 2)  # i <-> i ± B
        return F.cross_entropy(s, twin)
    keys = distributed.gather(z, grad=True)  # (G·2B, d), rank-major: rank r's rows are r·2B .. (r+1)·2B
    mine = torch.arange(n, device=z.device) + distributed.rank() * n
    s = (z @ keys.t()).float() / tau
    own = torch.zeros_like(s, dtype=torch.bool).scatter_(1, mine.unsqueeze(1), True)
    s = s.masked_fill(own, float("-inf"))
    return F.cross_entropy(s, mine.roll(n // 2))


class SimCLR(Method):
    name = "simclr"
    description = "two views, NT-Xent against the batch's other embeddings (Chen et al. 2020)"
    views = 2
    Config = SimclrConfig
    default_lr = 0.12  # per 256: lightly's CIFAR-10 SGD benchmark, 0.06·B/128 (LARS rates do not carry to SGD)

    def __init__(self, backbone, data, cfg: SimclrConfig | None = None, aug=None):
        s = 0.5 if is_small(data) else 1.0
        aug = aug or AugConfig(scale=(0.08, 1.0), brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s)
        super().__init__(backbone, data, aug)
        self.cfg = cfg = cfg or self.Config()
        self.tau = by_size(cfg.tau, data, 0.5, 0.1)
        check_bits(cfg.ssql_bits)
        width = backbone.out_dim
        self.head = mlp(width, cfg.proj_hidden or width, cfg.dim, layers=2)

    def training_step(self, x, idx, gen, rng):
        v = torch.cat([self.augment(x, gen), self.augment(x, gen)])
        z1, z2 = self.head(self.backbone(v)).chunk(2)
        loss, logs = nt_xent(z1, z2, self.tau), {}
        if self.cfg.ssql_weight > 0:
            q = ssql_term(self.backbone, self.head, v[:len(z1)], z1, draw_bits(rng, self.cfg.ssql_bits))
            loss, logs["ssql"] = loss + self.cfg.ssql_weight * q, q.detach()
        return loss, logs
