"""`twist`: Wang et al. 2021, "Self-Supervised Learning by Estimating Twin Class Distributions"
(arXiv 2110.07402; code bytedance/TWIST).

A siamese network ending in a softmax over C "classes" gives each view a class distribution. The
loss makes the two distributions agree (symmetric KL), each one sharp (low entropy per sample) and
the batch diverse (high entropy of the mean distribution). No stop-gradient, no predictor, no EMA:
the gradient flows through both views.

    p = softmax(f),  p̃ = softmax(f / τ)
    L = ½[KL(p₁‖p₂) + KL(p₂‖p₁)]                    consistency
      + (1 + λ₁)·½[H̄(p̃₁) + H̄(p̃₂)]                  sharpness
      − λ₂·½[H(mean p̃₁) + H(mean p̃₂)]              diversity

with H̄ the mean per-sample entropy and every log taken of p + ε (the code's EPS).

Defaults (the code's, used by its two-view ResNet-50 run): head Linear-BN-ReLU ×2 (4096 wide) then
Linear to C = 4096 and BatchNorm without affine over both views together (lbn_type bn);
τ 1, λ₁ 0, λ₂ 1, ε 1e-5; both views pass the backbone as one 2B batch. The two-view run in the README
uses C = 32768 at a global batch of 2048; there is no small-image recipe, so the same defaults
apply at every size. Views: `--aug barlow`, i.e. BYOL's asymmetric pair (crop scale (0.08, 1),
jitter (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2, blur p 1.0 / 0.1, solarise p 0 / 0.2; no blur at ≤ 32 px).
Deviations: LARS (lr 0.5·B/256, wd 1.5e-6) is replaced by the loop's SGD. Multi-crop, the momentum
encoder (ViT only) and the self-labelling stage of the full recipe are left out.
Under torchrun the diversity term's mean distribution is the global batch's (all-reduced, with
gradient); the other terms are means over samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import AT_LEAST_1, NON_NEGATIVE, POSITIVE, checked
from .. import distributed
from ..models.heads import mlp
from ..options import opt
from .base import Method
from .common import byol_crop_colour, byol_views, encode_by_size


@dataclass
@checked(dim=AT_LEAST_1, proj_hidden=AT_LEAST_1, tau=POSITIVE, lam1=NON_NEGATIVE, lam2=NON_NEGATIVE, eps=POSITIVE)
class TwistConfig:
    dim: int = opt(4096, "C, the number of classes")
    proj_hidden: int = opt(4096, "head MLP hidden width")
    tau: float = opt(1.0, "temperature of the sharpened distributions in the entropy terms")
    lam1: float = opt(0.0, "sharpness weight is 1 + lam1")
    lam2: float = opt(1.0, "diversity weight")
    eps: float = opt(1e-5, "epsilon inside the logarithms")


def twist_loss(f1: torch.Tensor, f2: torch.Tensor, tau: float = 1.0, lam1: float = 0.0, lam2: float = 1.0,
               eps: float = 1e-5) -> tuple[torch.Tensor, dict]:
    """TWIST's objective on the two views' logits (B, C); returns the loss and its three terms."""
    f1, f2 = f1.float(), f2.float()
    p1, p2 = F.softmax(f1, dim=1), F.softmax(f2, dim=1)

    def kl(a, b):
        return (a * ((a + eps).log() - (b + eps).log())).sum(1).mean()

    def mean_entropy(p):  # sharpness: each sample's distribution should be confident
        return -(p * (p + eps).log()).sum(1).mean()

    def entropy_of_mean(p):  # diversity: the (global) batch should use every class
        m = distributed.batch_mean(p, grad=True)
        return -(m * (m + eps).log()).sum()

    s1, s2 = F.softmax(f1 / tau, dim=1), F.softmax(f2 / tau, dim=1)
    consistency = 0.5 * (kl(p1, p2) + kl(p2, p1))
    sharpness = 0.5 * (mean_entropy(s1) + mean_entropy(s2))
    diversity = 0.5 * (entropy_of_mean(s1) + entropy_of_mean(s2))
    loss = consistency + (1 + lam1) * sharpness - lam2 * diversity
    return loss, {"kl": consistency.detach(), "eh": sharpness.detach(), "he": diversity.detach()}


class TWIST(Method):
    name = "twist"
    description = "two views, twin class distributions: consistent, sharp and diverse (Wang et al. 2021)"
    views = 2
    Config = TwistConfig
    default_lr = 0.12  # per 256: lightly's CIFAR-10 SGD benchmark, 0.06·B/128 (LARS rates do not carry to SGD)

    def __init__(self, backbone, data, cfg: TwistConfig | None = None, aug=None):
        aug = aug or byol_crop_colour()
        super().__init__(backbone, data, aug)
        self.cfg = cfg = cfg or self.Config()
        self.head = mlp(backbone.out_dim, cfg.proj_hidden, cfg.dim, layers=3, last_bn=True)
        self.views = byol_views(data, aug)

    def training_step(self, x, idx, gen, rng):
        cfg = self.cfg
        views = [view(x, gen) for view in self.views]
        f1, f2 = self.head(encode_by_size(self.backbone, views)).chunk(2)
        return twist_loss(f1, f2, cfg.tau, cfg.lam1, cfg.lam2, cfg.eps)
