"""What every method is to the one training loop.

A method is an `nn.Module` that owns its backbone, heads, views and state (bank, teacher, queue).
The loop calls `setup` once, `training_step` for every batch, then `after_step` after the
optimiser step; everything in the method's state dict is checkpointed and restored.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from ..data.augment import AugConfig, BatchAugment
from ..data.loader import DeviceLoader


@dataclass
class DataInfo:
    """What a method needs to know about the pretraining data."""

    num_images: int
    channels: int
    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class Method(nn.Module):
    name: str = "method"

    def __init__(self, backbone: nn.Module, data: DataInfo, aug: AugConfig | None = None):
        super().__init__()
        self.backbone = backbone
        self.data = data
        self.augment = BatchAugment(aug or AugConfig(), data.resolution, data.mean, data.std)

    def setup(self, loader: "DeviceLoader", batch_size: int) -> None:
        """Called once before the first epoch of a fresh run (not on resume)."""

    def training_step(self, x: torch.Tensor, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        """uint8 images (B, C, H, W) on the device and their dataset indices -> (loss, logs)."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self) -> None:
        """State updates that follow the optimiser step (bank, EMA teacher, queue)."""

    def extra_params(self) -> list[nn.Parameter]:
        """Trainable parameters besides the backbone (heads, predictors)."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]


def config_from_args(cls, values: dict):
    """Build a method's typed config from a dict, ignoring keys it does not declare or that are None."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})
