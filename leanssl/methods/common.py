"""The pieces several baselines share: view recipes, per-size defaults, multi-crop encoding, EMA teachers.

Each method file holds its own heads, views and loss; what lives here is only the mechanics that
would otherwise be copied between them (one definition, so the copies cannot drift apart).
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch
from torch import nn

from ..data.augment import AugConfig, BatchAugment
from .base import DataInfo

SMALL_IMAGES = 32  # at or below this many pixels a side, methods use their small-image (CIFAR) recipes


def is_small(data: DataInfo) -> bool:
    return data.resolution <= SMALL_IMAGES


def by_size(value, data: DataInfo, small, large):
    """A config field left at None takes the method's small-image or large-image default."""
    if value is not None:
        return value
    return small if is_small(data) else large


def augmenter(data: DataInfo, cfg: AugConfig, size: int | None = None) -> BatchAugment:
    """A batched, on-device view recipe; `size` defaults to the training resolution."""
    return BatchAugment(cfg, size or data.resolution, data.mean, data.std)


def blur_p(p: float, size: int) -> float:
    """A recipe's blur probability at an output size: the CIFAR recipes drop blur at 32 px and below."""
    return p if size > SMALL_IMAGES else 0.0


def byol_crop_colour() -> AugConfig:
    """BYOL's crop and colour recipe (Barlow Twins and TWIST use it too): crops of 8-100% of the
    area, jitter (0.4, 0.4, 0.2, 0.1). A new object each call: configs are mutable dataclasses."""
    return AugConfig(scale=(0.08, 1.0), saturation=0.2)


def byol_views(data: DataInfo, base: AugConfig, size: int | None = None) -> list[BatchAugment]:
    """BYOL's asymmetric pair (also Barlow Twins', TWIST's and DINO's global crops): the same crop and
    colour recipe, Gaussian blur with p = 1.0 / 0.1 and solarisation with p = 0 / 0.2."""
    size = size or data.resolution
    return [augmenter(data, replace(base, blur_p=blur_p(1.0, size), solarize_p=0.0), size),
            augmenter(data, replace(base, blur_p=blur_p(0.1, size), solarize_p=0.2), size)]


def local_crop_size(data: DataInfo) -> int:
    """Multi-crop's small views: 96 px for 224 px images (SwAV, DINO), half the side at 32 px and below
    (16 px at 32 px: no published recipe, our choice)."""
    if is_small(data):
        return max(4, data.resolution // 2)
    return max(4, round(data.resolution * 96 / 224))


def encode_by_size(backbone: nn.Module, crops: list[torch.Tensor]) -> torch.Tensor:
    """Backbone features of all crops, concatenated in order, with one forward per run of equal sizes
    (DINO's and SwAV's multi-crop wrapper: BatchNorm sees all crops of one size together)."""
    out, start = [], 0
    while start < len(crops):
        end = start
        while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
            end += 1
        out.append(backbone(torch.cat(crops[start:end])))
        start = end
    return torch.cat(out)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A teacher: same architecture and initial weights, no gradients (so the optimiser never sees it)."""
    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: list[nn.Module], student: list[nn.Module], momentum: float) -> None:
    """θ_teacher ← m·θ_teacher + (1 − m)·θ_student for every parameter (one fused op on each list).

    Buffers (BatchNorm running statistics) are not averaged: the teacher keeps its own, as in the
    MoCo, BYOL and DINO code.
    """
    t = [p for m in teacher for p in m.parameters()]
    s = [p.detach() for m in student for p in m.parameters()]
    torch._foreach_lerp_(t, s, 1.0 - momentum)


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL/DINO's schedule: 1 − (1 − base)·(cos(π·k/K) + 1)/2, from base at k = 0 towards 1 at k = K."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
