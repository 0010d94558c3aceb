"""`dino`: Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"
(arXiv 2104.14294; code facebookresearch/dino).

Self-distillation without labels: a student (backbone + DINO head) sees every crop, a teacher —
an EMA of the student — sees the 2 global crops only, and each student crop matches the teacher's
distribution on every *other* global crop. The teacher's output is centred (a running mean c of its
logits) and sharpened (a low temperature τ_t): centring prevents one dimension from dominating,
sharpening prevents the uniform collapse.

    P_t = softmax((t − c) / τ_t)
    L = mean over pairs (global crop i, crop v ≠ i) of −Σ P_t(i) · log softmax(s_v / τ_s)
    c ← m_c·c + (1 − m_c)·mean_batch(t),   teacher ← λ·teacher + (1 − λ)·student, λ cosine from base to 1

DINO head: MLP in → 2048 → 2048 → 256 with GELU (no BatchNorm: the code's default, also in its
ResNet-50 run), L2-normalised, then a weight-normalised Linear(256, K) without bias whose norms are
fixed at 1 (norm_last_layer) and which is frozen during the first epoch.

Defaults: τ_s 0.1; τ_t warmed up linearly from 0.04 to 0.07 over the first 30 epochs (the paper;
the code's own default is 0.04 throughout); centre momentum 0.9; teacher momentum 0.996 → 1 (the
code recommends 0.9995 at batch 256). Crops: the authors' ResNet-50 command — 2 global at scale
(0.14, 1), 8 local at (0.05, 0.14), 96 px for 224 px images; jitter (0.4, 0.4, 0.2, 0.1) p 0.8,
grayscale 0.2, blur p 1.0 / 0.1 and solarise p 0 / 0.2 on the global pair, blur p 0.5 on local crops.
K = 65536 above 32 px (the paper); 4096 at ≤ 32 px (solo-learn's CIFAR recipe), with local crops of
half the side and no blur there (no published recipe).
Deviations: gradient clipping at norm 3 and the weight-decay schedule are not applied (the shared
loop clips nothing and keeps weight decay constant; the ResNet-50 run's wd is constant 1e-4, its
SGD lr 0.03·B/256). The head's Linear layers keep PyTorch's initialisation (DINO: truncated normal,
std 0.02). The exported backbone is the student's; DINO evaluates the teacher.
Under torchrun the centre is updated with the global batch's mean teacher output (all-reduced, as in
DINO's code), so it stays equal on every rank; the teacher is an EMA of the synchronised student.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, checked
from .. import distributed
from ..data.augment import AugConfig
from ..models.heads import mlp
from ..options import opt
from .base import Method
from .common import (augmenter, by_size, byol_views, cosine_momentum, ema_update, encode_by_size, frozen_copy,
                     local_crop_size)


@dataclass
@checked(dim=AT_LEAST_1, proj_hidden=AT_LEAST_1, bottleneck=AT_LEAST_1, student_temp=POSITIVE,
         teacher_temp=POSITIVE, warmup_teacher_temp=POSITIVE, warmup_teacher_temp_epochs=NON_NEGATIVE,
         center_momentum=FRACTION, momentum=FRACTION, local_crops=NON_NEGATIVE, local_size=AT_LEAST_1,
         freeze_last_layer_epochs=NON_NEGATIVE)
class DinoConfig:
    dim: int | None = opt(None, "K, the head's output width (default: 4096 at <= 32 px, 65536 above)")
    proj_hidden: int = opt(2048, "head MLP hidden width")
    bottleneck: int = opt(256, "head bottleneck width before the weight-normalised last layer")
    head_bn: bool = opt(False, "BatchNorm in the head's MLP (use_bn_in_head)")
    student_temp: float = opt(0.1, "student temperature")
    teacher_temp: float = opt(0.07, "teacher temperature after the warm-up")
    warmup_teacher_temp: float = opt(0.04, "teacher temperature at the start of the warm-up")
    warmup_teacher_temp_epochs: int = opt(30, "epochs of the teacher temperature's linear warm-up")
    center_momentum: float = opt(0.9, "EMA momentum of the teacher's centre")
    momentum: float = opt(0.996, "teacher EMA at step 0, cosine to 1 over training")
    local_crops: int = opt(8, "small local crops per image, besides the two global views")
    local_size: int | None = opt(None, "local crop side in px (default: 96 at 224 px, half the side at <= 32 px)")
    global_scale: tuple[float, float] = opt((0.14, 1.0), "RandomResizedCrop area range of the global views, e.g. "
                                                         "0.14,1")
    local_scale: tuple[float, float] = opt((0.05, 0.14), "RandomResizedCrop area range of the local crops")
    freeze_last_layer_epochs: int = opt(1, "epochs during which the head's last layer is not trained")


class DinoHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int, bn: bool):
        super().__init__()
        self.mlp = mlp(in_dim, hidden, bottleneck, layers=3, norm=bn, act=nn.GELU)
        self.last_layer = nn.Linear(bottleneck, out_dim, bias=False)  # weight-normalised below, g = 1

    def forward(self, h: torch.Tensor, freeze_last: bool = False) -> torch.Tensor:
        w = self.last_layer.weight
        w = F.normalize(w.detach() if freeze_last else w, dim=1)
        return F.normalize(self.mlp(h), dim=1) @ w.t()


def dino_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float) -> torch.Tensor:
    """Cross-entropy of every student crop against the centred, sharpened teacher on each other global crop."""
    targets = [F.softmax((t - center) / teacher_temp, dim=-1).detach() for t in teacher]
    terms = [-(q * F.log_softmax(s / student_temp, dim=-1)).sum(-1).mean()
             for i, q in enumerate(targets) for v, s in enumerate(student) if v != i]
    return sum(terms) / len(terms)


class DINO(Method):
    name = "dino"
    description = "multi-crop self-distillation from an EMA teacher with centring and sharpening (Caron et al. 2021)"
    views = 2  # global views; local_crops small crops on top
    Config = DinoConfig
    default_lr = 0.03  # per 256 images: the authors' SGD recipe for ResNets, 0.03·B/256
    ddp_find_unused = True  # the last layer gets no gradient in the first epoch

    def __init__(self, backbone, data, cfg: DinoConfig | None = None, aug=None):
        cfg = cfg or self.Config()
        base = aug or AugConfig(saturation=0.2)
        super().__init__(backbone, data, replace(base, scale=cfg.global_scale))
        self.cfg = cfg
        self.global_augs = byol_views(data, replace(base, scale=cfg.global_scale))
        self.local_aug = augmenter(data, replace(base, scale=cfg.local_scale), cfg.local_size or local_crop_size(data))
        dim = by_size(cfg.dim, data, 4096, 65536)
        self.head = DinoHead(backbone.out_dim, dim, cfg.proj_hidden, cfg.bottleneck, cfg.head_bn)
        self.teacher_backbone, self.teacher_head = frozen_copy(backbone), frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, dim))
        self._pending: torch.Tensor | None = None

    def teacher_temp(self) -> float:
        """Linear warm-up per epoch (np.linspace over the warm-up epochs, as in the code), then constant."""
        c = self.cfg
        if self.epoch < c.warmup_teacher_temp_epochs:
            return float(np.linspace(c.warmup_teacher_temp, c.teacher_temp, c.warmup_teacher_temp_epochs)[self.epoch])
        return c.teacher_temp

    def training_step(self, x, idx, gen, rng):
        cfg = self.cfg
        globals_ = [aug(x, gen) for aug in self.global_augs]
        n = cfg.local_crops  # all local crops in one batched call: n·B samples, each with its own parameters
        crops = globals_ + ([self.local_aug(x.repeat(n, 1, 1, 1), gen)] if n else [])
        frozen = self.epoch < cfg.freeze_last_layer_epochs
        student = self.head(encode_by_size(self.backbone, crops), frozen).float().split(x.shape[0])
        with torch.no_grad():
            teacher = self.teacher_head(encode_by_size(self.teacher_backbone, globals_)).float()
        loss = dino_loss(list(student), list(teacher.chunk(2)), self.center, cfg.student_temp, self.teacher_temp())
        self._pending = distributed.batch_mean(teacher).unsqueeze(0)  # the global batch's, under torchrun
        return loss, {}

    @torch.no_grad()
    def after_step(self) -> None:
        batch_center, self._pending = self._pending, None
        m = cosine_momentum(self.cfg.momentum, self.progress)
        ema_update([self.teacher_backbone, self.teacher_head], [self.backbone, self.head], m)
        self.center.mul_(self.cfg.center_momentum).add_(batch_center, alpha=1 - self.cfg.center_momentum)
