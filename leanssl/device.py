"""Which device a command runs on (--device), and how much memory it has taken there."""

from __future__ import annotations

import resource

import torch

from .errors import LeansslError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LeansslError("--device cuda was asked for but no CUDA GPU is visible to PyTorch")
    if name not in ("cpu", "cuda"):
        raise LeansslError(f"unknown device '{name}': use auto, cpu or cuda")
    return torch.device(name)


def peak_memory_mb(device: torch.device) -> float:
    """GPU: max allocated by PyTorch. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
