"""What a run trains: its method, built for its config and data, and the optimizer over it."""

from __future__ import annotations

import torch

from ..methods import get_method
from ..methods.base import DataInfo, config_from_args
from ..models.backbones import build_backbone


def build_method(cfg, info: DataInfo):
    """The method of a TrainConfig on data `info` (its weights drawn from torch's global generator)."""
    cls = get_method(cfg.method)
    backbone = build_backbone(cfg.backbone, info.channels, info.resolution)
    return cls(backbone, info, config_from_args(cls.Config, cfg.method_args))


def param_groups(method: torch.nn.Module, weight_decay: float, decay_norm_bias: bool = False) -> list[dict]:
    """No weight decay on biases and normalisation parameters (the usual SSL recipe), unless `decay_norm_bias`."""
    decay, no_decay = [], []
    for p in method.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 and not decay_norm_bias else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg, method: torch.nn.Module) -> torch.optim.SGD:
    """SGD with momentum at the config's peak rate (the schedule sets each step's)."""
    return torch.optim.SGD(param_groups(method, cfg.weight_decay, cfg.decay_norm_bias), lr=cfg.base_lr(),
                           momentum=cfg.momentum)
