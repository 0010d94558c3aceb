"""What every method is to the one training loop.

A method is an `nn.Module` that owns its backbone, heads, views and state (bank, teacher, queue).
The loop calls `setup` once, `training_step` for every batch, then `after_step` after the
optimiser step; everything in the method's state dict is checkpointed and restored.

Under torchrun every process holds a full replica: the loop wraps the method in
DistributedDataParallel (its `forward` is `training_step`), and the method keeps its own state
(bank, queue, centre) equal on every rank by combining the ranks' rows (leanssl.distributed).

A subclass that sets `name` registers itself in METHODS when its class statement runs: leanssl.methods
imports the built-in ones, and one defined anywhere else (a user's module, a test file) is known once
that module is imported. Everything else about a method is declared on its class: its settings
(`Config`, a dataclass whose fields are also `leanssl train` flags), `description`, `views`,
`default_lr`, `needs_teacher` (docs/adding-a-method.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from ..data.augment import AugConfig, BatchAugment
from ..data.loader import DeviceLoader
from ..errors import LeansslError
from .registry import METHODS, register


@dataclass
class DataInfo:
    """What a method needs to know about the pretraining data."""

    num_images: int
    channels: int
    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class NoConfig:
    """The settings of a method that has none."""


class Method(nn.Module):
    name: str = "method"
    description: str = ""  # one line, for `leanssl train --help`
    Config: type = NoConfig  # its settings: a dataclass, each field a `leanssl train` flag (leanssl.options.opt)
    # Augmented views of every image per step (multi-crop methods: the global views, local crops come on top):
    # 1 is the single-branch family essl belongs to; the bench compares it with the methods that use more.
    views: int = 1
    needs_teacher: bool = False  # it distils a trained run (`leanssl distill`) instead of pretraining from scratch
    # Peak SGD learning rate per 256 images when --lr is not given (essl/npid: the authors' 1.0 at batch 512).
    default_lr: float = 0.5
    # Global batch when --batch-size is not given (essl: 128, which won its short-run sweep; BENCHMARKS.md).
    default_batch_size: int = 256
    # Where training is, set by the loop before every step (`set_progress`): schedules read it.
    step: int = 0
    total_steps: int = 1
    steps_per_epoch: int = 1
    # Under torchrun: whether some trainable parameter may get no gradient in a step (a layer frozen for
    # a while); DistributedDataParallel must then look for such parameters every step.
    ddp_find_unused: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # a class that names itself is a method; a wrapper of one (no name) is not
            register(cls)

    def __init__(self, backbone: nn.Module, data: DataInfo, aug: AugConfig | None = None):
        super().__init__()
        self.backbone = backbone
        self.data = data
        self.augment = BatchAugment(aug or AugConfig(), data.resolution, data.mean, data.std)

    def setup(self, loader: "DeviceLoader", batch_size: int) -> None:
        """Called once before the first epoch of a fresh run (not on resume)."""

    def training_step(self, x: torch.Tensor, idx: torch.Tensor, gen: torch.Generator, rng) -> tuple[torch.Tensor, dict]:
        """uint8 images (B, C, H, W) on the device and their dataset indices -> (loss, logs).

        `gen` (a torch.Generator on the device) and `rng` (a NumPy Generator, for host-side draws)
        are the epoch's random streams; every random draw goes through them.
        """
        raise NotImplementedError

    def forward(self, x: torch.Tensor, idx: torch.Tensor, gen: torch.Generator, rng) -> tuple[torch.Tensor, dict]:
        """`training_step`, as the module's forward, so DistributedDataParallel can wrap a method.

        Under torchrun `x` and `idx` are this process's share of the global batch; methods whose loss
        or state spans the batch (negatives, queues, banks, batch statistics) read the global batch
        from `leanssl.distributed.batch_shard()` and combine ranks with the helpers there.
        """
        return self.training_step(x, idx, gen, rng)

    def set_progress(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        """Called by the loop before every `training_step` (fresh or resumed run alike)."""
        self.step, self.total_steps, self.steps_per_epoch = step, total_steps, steps_per_epoch

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1): k / K for the step about to run (EMA momentum schedules)."""
        return self.step / max(1, self.total_steps)

    @property
    def epoch(self) -> int:
        """The 0-based epoch of the step about to run (epoch-based schedules: teacher temperature, frozen layers)."""
        return self.step // max(1, self.steps_per_epoch)

    @torch.no_grad()
    def after_step(self) -> None:
        """State updates that follow the optimiser step (bank, EMA teacher, queue)."""

    def set_view_size(self, size: int | None) -> None:
        """Progressive resolution: every view recipe of the method makes its views at `size` px instead of the
        data's (multi-crop's smaller views scaled alike); None: back to the data's resolution."""
        for aug in self._augmenters():
            native = aug.__dict__.setdefault("native_size", aug.size)
            aug.size = native if size is None else max(1, round(native * size / self.data.resolution))

    def _augmenters(self) -> list[BatchAugment]:
        found = []
        for value in vars(self).values():
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, BatchAugment) and all(item is not f for f in found):
                    found.append(item)
        return found

    def extra_params(self) -> list[nn.Parameter]:
        """Trainable parameters besides the backbone (heads, predictors)."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]


def config_from_args(cls, values: dict):
    """Build a method's typed config from a dict; a key it does not declare is an error (None: its default)."""
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        method = next((n for n, m in METHODS.items() if m.Config is cls), cls.__name__)
        raise LeansslError(f"{method} has no setting {', '.join(unknown)} (its settings: {', '.join(names) or 'none'})")
    return cls(**{k: v for k, v in values.items() if v is not None})
