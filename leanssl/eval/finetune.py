"""Full fine-tuning: the backbone and a linear head trained together on the labelled split.

Two variants, the same schedule:
- `finetune`: a zero-initialised head, everything trained from the first step (BatchNorm in
  train mode throughout);
- `finetune_warmup` (LP-FT, Kumar et al. 2022): the head starts from the linear probe, i.e. a
  linear head trained first on the frozen backbone (eval mode, BatchNorm statistics frozen), so
  the first steps do not push a random head's gradients through the pretrained features.

It runs on the evaluation device with the data path's batched augmentation (light: random
resized crop and horizontal flip, per-sample parameters, no per-image Python), SGD with
Nesterov momentum, linear warm-up then cosine decay (`train.schedule.lr_at`), bf16 autocast on a GPU.
The default schedule is short so that it fits a CPU; `epochs` sets it, `min_steps` keeps tiny
labelled sets (1% labels) from getting only a handful of steps. The backbone passed in is
copied, never modified.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.augment import AugConfig, BatchAugment
from ..data.loader import DeviceLoader
from ..train.build import param_groups
from ..train.schedule import lr_at
from .features import extract_features, match_channels


@dataclass
class FinetuneConfig:
    epochs: float = 3.0
    min_steps: int = 200  # digits: 3 epochs are 30 steps, too few to move a backbone
    batch_size: int = 128
    lr: float = 0.05
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_fraction: float = 0.1  # of the steps, linear lr warm-up
    crop_scale: tuple[float, float] = (0.5, 1.0)  # light: no colour jitter, grayscale or blur
    flip_p: float = 0.5

    def steps(self, n: int) -> tuple[int, int]:
        """(batch size, optimiser steps) for n labelled images."""
        bs = min(self.batch_size, n)
        return bs, max(int(round(self.epochs * (n // bs))), self.min_steps)


def _stats(values, channels: int) -> tuple[float, ...]:
    """Normalisation statistics at the model's channel count (as features.to_model_input does)."""
    values = tuple(float(v) for v in values)
    return values if len(values) == channels else (float(np.mean(values)),)


def finetune(backbone: nn.Module, head: nn.Linear | None, x_train: np.ndarray, y_train, x_test: np.ndarray, y_test,
             num_classes: int, info: dict, device: torch.device, cfg: FinetuneConfig | None = None, seed: int = 0,
             progress: bool = True, desc: str = "fine-tune") -> dict:
    """Fine-tune a copy of `backbone` (+ `head`, or a zero-initialised one) and return {"top1", "steps", "batch_size"}.

    `info`: the backbone's input contract (channels, resolution, mean, std), as in the run's data.json.
    """
    cfg = cfg or FinetuneConfig()
    if len(x_train) < 2:  # BatchNorm in train mode cannot normalise a batch of one
        return {"top1": None, "steps": 0, "batch_size": 0, "skipped": "fewer than 2 labelled images"}
    channels, size = info["channels"], info["resolution"]
    net = copy.deepcopy(backbone)
    if head is None:
        head = nn.Linear(net.out_dim, num_classes)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    model = nn.Sequential(net, copy.deepcopy(head)).to(device, memory_format=torch.channels_last)
    aug = BatchAugment(AugConfig(scale=cfg.crop_scale, flip_p=cfg.flip_p, jitter_p=0.0, gray_p=0.0, blur_p=0.0),
                       size, _stats(info["mean"], channels), _stats(info["std"], channels))
    loader = DeviceLoader(x_train, device)
    labels = torch.as_tensor(np.asarray(y_train), dtype=torch.long, device=device)
    bs, total = cfg.steps(len(x_train))
    opt = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    gen = torch.Generator(device).manual_seed(seed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    warmup = int(cfg.warmup_fraction * total)

    def batches():
        epoch = 0
        while True:
            yield from loader.epoch(bs, seed * 7919 + epoch)
            epoch += 1

    model.train()
    bar = tqdm(total=total, desc=desc, disable=None if progress else True, leave=False, unit="step")
    for step, (xb, idx) in zip(range(total), batches()):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, warmup, cfg.lr)
        xb = match_channels(xb.float() / 255, channels)
        with autocast:
            loss = F.cross_entropy(model(aug(xb, gen).contiguous(memory_format=torch.channels_last)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    logits = extract_features(model, x_test, info["mean"], info["std"], channels, size, device, progress=progress,
                              desc=f"{desc} (test)")
    top1 = (logits.argmax(1) == torch.as_tensor(np.asarray(y_test), dtype=torch.long)).float().mean().item()
    return {"top1": top1, "steps": total, "batch_size": bs}
