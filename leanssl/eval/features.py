"""Frozen features for evaluation: the backbone in eval mode (BatchNorm frozen), no augmentation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Transfer to a source with other channels: grey images are repeated to RGB, RGB is averaged to grey."""
    if x.shape[1] != channels and channels in (1, 3):
        x = x.float().mean(1, keepdim=True).expand(-1, channels, -1, -1)
    return x


def to_model_input(x: torch.Tensor, mean, std, channels: int, size: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> normalised float at the model's channel count and resolution."""
    x = match_channels(x.float() / 255, channels)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    if m.shape[1] != channels:  # statistics of the pretraining data are per its channels
        m, s = m.mean().view(1, 1, 1, 1), s.mean().view(1, 1, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def extract_features(backbone: nn.Module, x: np.ndarray, mean, std, channels: int, size: int,
                     device: torch.device, batch_size: int = 512, progress: bool = True, desc: str = "features") -> torch.Tensor:
    """(N, D) float32 features on the CPU; the backbone's train/eval mode is restored afterwards."""
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        for start in tqdm(range(0, len(x), batch_size), desc=desc, disable=None if progress else True, leave=False, unit="batch"):
            xb = torch.from_numpy(np.array(x[start:start + batch_size])).to(device)
            out.append(backbone(to_model_input(xb, mean, std, channels, size)).float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(out)


def pixel_features(x_train: np.ndarray, x_test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw-pixel floor: flattened intensities in [0, 1], centred by the training images' mean.

    Centring matters for cosine kNN: uncentred pixels share a large common component that
    makes every pair of images look alike (on Fashion-MNIST the centred floor is several points
    higher; BENCHMARKS.md lists it).
    """
    tr = torch.from_numpy(np.asarray(x_train, dtype=np.float32).reshape(len(x_train), -1) / 255)
    te = torch.from_numpy(np.asarray(x_test, dtype=np.float32).reshape(len(x_test), -1) / 255)
    mu = tr.mean(0)
    return tr - mu, te - mu
