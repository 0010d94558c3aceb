"""The GPU path's two switches, one definition each: mixed precision and torch.compile.

Precision: "bf16" runs the step under `torch.autocast(device, bfloat16)` (CUDA and CPU alike, so
the bf16 path can be tested without a GPU); "fp32" runs it as written. The default is bf16 on CUDA
and fp32 on a CPU (where bf16 matmuls are only fast on recent x86 chips). Autocast only casts the
inputs of the ops on its list (matmuls, convolutions): weights, gradients, optimiser state and the
methods' own state (bank, EMA teachers, queues, centres) stay fp32, and the methods compute their
losses and state updates in fp32.

Compile: `compile_networks` compiles each network of a method in place with `nn.Module.compile`,
so state-dict keys (checkpoints, exported backbones) are those of the eager model. The step around
the networks stays eager: its random draws go through generators and a NumPy RNG, and its state
updates are a few indexed ops that a compiler has little to fuse.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .errors import LeansslError

PRECISIONS = ("bf16", "fp32")


def resolve_precision(name: str | None, device: torch.device) -> str:
    """None or "auto": bf16 on CUDA, fp32 elsewhere; otherwise the name, checked."""
    if name in (None, "auto"):
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in PRECISIONS:
        raise LeansslError(f"unknown precision '{name}': use bf16, fp32 or auto")
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a training step runs in at this precision (a disabled autocast for fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def compile_networks(method: nn.Module, backend: str = "inductor") -> list[str]:
    """torch.compile every child of `method` that holds parameters (backbone, heads, teachers), in place.

    Returns the names compiled. The bank, queues and augmentation hold no parameters and stay eager.
    `backend` is torch.compile's (tests use "aot_eager": the same graph capture, no code generation).
    """
    names = []
    for name, child in method.named_children():
        if next(child.parameters(), None) is not None:
            child.compile(backend=backend)
            names.append(name)
    return names
