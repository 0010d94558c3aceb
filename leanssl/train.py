"""The one training loop: every method, every data source, CPU or GPU.

A run folder holds `config.json`, `log.csv` (per step), `epochs.csv` (per epoch),
`checkpoint.pt` (everything needed to resume, written atomically every epoch),
`backbone.safetensors` (the clean backbone, written at the end) and `summary.json`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .data.loader import DeviceLoader
from .data.sources import open_dataset, stratified_subset
from .errors import LeansslError
from .methods import get_method
from .methods.base import DataInfo, config_from_args
from .models.backbones import build_backbone, check_backbone_name

# Fields that must match for --resume to continue the same run.
_RUN_IDENTITY = ("data", "method", "backbone", "batch_size", "seed", "fraction", "resolution", "method_args")


@dataclass
class TrainConfig:
    data: str = "digits"
    method: str = "essl"
    backbone: str = "small_cnn"
    epochs: int = 100
    batch_size: int = 256
    lr: float | None = None          # None: 0.5 x batch/256 (the authors' 1.0 at batch 512)
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 2.0
    seed: int = 0
    device: str = "auto"
    fraction: float = 1.0
    resolution: int | None = None    # None: the source's native resolution
    out: str = "runs/run"
    cache_dir: str | None = None
    log_every: int = 10
    stop_after: int | None = None    # stop after this many epochs in this invocation (time slicing, tests)
    progress: bool = True
    method_args: dict = field(default_factory=dict)  # method config overrides, e.g. {"kl_weight": 0}

    def base_lr(self) -> float:
        return self.lr if self.lr is not None else 0.5 * self.batch_size / 256


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LeansslError("--device cuda was asked for but no CUDA GPU is visible to PyTorch")
    if name not in ("cpu", "cuda"):
        raise LeansslError(f"unknown device '{name}': use auto, cpu or cuda")
    return torch.device(name)


def atomic_save(obj, path: Path) -> None:
    """Write to a temp file, fsync, rename over the target, fsync the folder: a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def param_groups(method: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and normalisation parameters (the usual SSL recipe)."""
    decay, no_decay = [], []
    for p in method.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def peak_memory_mb(device: torch.device) -> float:
    """GPU: max allocated by PyTorch. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_method(cfg: TrainConfig, info: DataInfo):
    cls = get_method(cfg.method)
    backbone = build_backbone(cfg.backbone, info.channels, info.resolution)
    return cls(backbone, info, config_from_args(cls.Config, cfg.method_args))


def load_run_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise LeansslError(f"not a leanssl run folder (no config.json): {run_dir}")
    return TrainConfig(**json.loads(path.read_text()))


class _Logger:
    """Per-step CSV (flushed every log_every steps, so the GPU is synchronised only then) and optional TensorBoard."""

    def __init__(self, out: Path, resume: bool):
        self.path = out / "log.csv"
        if not resume or not self.path.exists():
            self.path.write_text("epoch,step,lr,loss,ce,kl\n")
        self.pending: list[tuple] = []
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(out / "tb"))
        except Exception:  # TensorBoard is optional
            self.tb = None

    def add(self, epoch: int, step: int, lr: float, loss: torch.Tensor, logs: dict) -> None:
        vals = torch.stack([loss.detach().float()] + [logs.get(k, torch.full_like(loss, float("nan"))).float() for k in ("ce", "kl")])
        self.pending.append((epoch, step, lr, vals))

    def flush(self) -> list[float]:
        """Write the pending rows; returns their losses (one host sync for all of them)."""
        if not self.pending:
            return []
        values = torch.stack([p[3] for p in self.pending]).tolist()
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            for (epoch, step, lr, _), (loss, ce, kl) in zip(self.pending, values):
                w.writerow([epoch, step, f"{lr:.6g}", repr(loss), repr(ce), repr(kl)])
                if self.tb is not None:
                    self.tb.add_scalar("train/loss", loss, step)
        self.pending = []
        return [v[0] for v in values]


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Pretrain and return the summary (also written to summary.json)."""
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if cfg.batch_size < 2:
        raise LeansslError("--batch-size must be at least 2 (BatchNorm needs more than one sample)")
    if not 0 < cfg.fraction <= 1:
        raise LeansslError(f"--fraction must be in (0, 1], got {cfg.fraction}")
    get_method(cfg.method)  # fail on a bad name before any data is decoded
    check_backbone_name(cfg.backbone)

    ckpt_path = out / "checkpoint.pt"
    state = None
    if resume:
        if not ckpt_path.is_file():
            raise LeansslError(f"--resume: no checkpoint in {out} (nothing to resume; drop --resume to start)")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved = TrainConfig(**state["config"])
        if cfg.resolution is None:
            cfg.resolution = saved.resolution
        diff = [k for k in _RUN_IDENTITY if getattr(saved, k) != getattr(cfg, k)]
        if diff:
            raise LeansslError(f"--resume: this run was started with different {', '.join(diff)} "
                               f"({', '.join(f'{k}={getattr(saved, k)!r}' for k in diff)})")
    elif ckpt_path.exists():
        raise LeansslError(f"{out} already holds a run: pass --resume to continue it or choose another --out")

    ds = open_dataset(cfg.data, cfg.resolution, cfg.cache_dir, progress=cfg.progress)
    cfg.resolution = ds.resolution
    if ds.skipped:
        out.mkdir(parents=True, exist_ok=True)
        (out / "skipped.txt").write_text("".join(f"{p}\t{why}\n" for p, why in ds.skipped))
        print(f"leanssl: skipped {len(ds.skipped)} undecodable image(s), listed in {out / 'skipped.txt'}", file=sys.stderr)
    x = ds.pretrain.x
    if cfg.fraction != 1.0:
        x = x[stratified_subset(ds.pretrain.y, len(x), cfg.fraction, cfg.seed)]
    if len(x) < cfg.batch_size:
        raise LeansslError(f"only {len(x)} training images but --batch-size {cfg.batch_size}: lower the batch size")
    info = DataInfo(len(x), ds.channels, ds.resolution, tuple(ds.mean), tuple(ds.std))

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    (out / "data.json").write_text(json.dumps(asdict(info), indent=2))
    method = build_method(cfg, info).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(method, cfg.weight_decay), lr=cfg.base_lr(), momentum=cfg.momentum)
    loader = DeviceLoader(x, device)
    steps_per_epoch = loader.steps_per_epoch(cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    start_epoch, elapsed, last_loss = 0, 0.0, float("nan")
    if state is not None:
        method.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, elapsed, last_loss = state["epoch"], state["elapsed"], state["loss"]
        torch.set_rng_state(state["torch_rng"])
    else:
        t0 = time.perf_counter()
        method.setup(loader, cfg.batch_size)
        elapsed = time.perf_counter() - t0

    logger = _Logger(out, resume=state is not None)
    epochs_csv = out / "epochs.csv"
    if state is None:
        epochs_csv.write_text("epoch,loss,seconds,images_per_s,peak_mem_mb\n")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)

    for epoch in range(start_epoch, end_epoch):
        method.train()
        # All randomness of an epoch derives from (seed, epoch): a resumed run replays it exactly.
        gen = torch.Generator(device).manual_seed(cfg.seed * 100003 + epoch)
        rng = np.random.default_rng([cfg.seed, epoch])
        t_epoch = time.perf_counter()
        losses: list[float] = []
        bar = tqdm(loader.epoch(cfg.batch_size, cfg.seed * 7919 + epoch), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress, leave=False, unit="batch")
        for i, (xb, idx) in enumerate(bar):
            step = epoch * steps_per_epoch + i
            lr = lr_at(step, total_steps, warmup, cfg.base_lr())
            for g in opt.param_groups:
                g["lr"] = lr
            with autocast:
                loss, logs = method.training_step(xb, idx, gen, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.after_step()
            logger.add(epoch, step, lr, loss, logs)
            if (i + 1) % cfg.log_every == 0 or i + 1 == steps_per_epoch:
                new = logger.flush()
                losses += new
                _check_finite(new, epoch, step, lr, device, ckpt_path)
                rate = (i + 1) * cfg.batch_size / (time.perf_counter() - t_epoch)
                bar.set_postfix(loss=f"{new[-1]:.4f}", img_s=f"{rate:.0f}")
        seconds = time.perf_counter() - t_epoch
        elapsed += seconds
        last_loss = float(np.mean(losses))
        rate = steps_per_epoch * cfg.batch_size / seconds
        with open(epochs_csv, "a") as f:
            f.write(f"{epoch + 1},{last_loss:.6f},{seconds:.3f},{rate:.1f},{peak_memory_mb(device):.1f}\n")
        if cfg.progress:
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}  loss {last_loss:.4f}  {rate:.0f} img/s  {seconds:.1f}s")
        atomic_save({"model": method.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch + 1,
                     "loss": last_loss, "elapsed": elapsed, "config": asdict(cfg), "torch_rng": torch.get_rng_state()}, ckpt_path)

    done = end_epoch >= cfg.epochs
    if done:
        save_file({k: v.contiguous() for k, v in method.backbone.state_dict().items()}, str(out / "backbone.safetensors"))
    summary = {"method": cfg.method, "backbone": cfg.backbone, "data": cfg.data, "fraction": cfg.fraction,
               "train_images": len(x), "epochs_done": end_epoch, "epochs": cfg.epochs, "complete": done,
               "final_loss": last_loss, "train_seconds": elapsed,
               "images_per_s": (end_epoch * steps_per_epoch * cfg.batch_size / elapsed) if elapsed and end_epoch else None,
               "peak_mem_mb": peak_memory_mb(device), "device": str(device)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _check_finite(losses: list[float], epoch: int, step: int, lr: float, device: torch.device, ckpt: Path) -> None:
    bad = [v for v in losses if not math.isfinite(v)]
    if bad:
        first = step - len(losses) + 1 + next(i for i, v in enumerate(losses) if not math.isfinite(v))
        prec = ", or train in fp32 (bf16 autocast is on)" if device.type == "cuda" else ""
        kept = f"the last good checkpoint ({ckpt}) is intact" if ckpt.exists() else "no checkpoint had been written yet"
        raise LeansslError(f"loss became {bad[0]} at step {first} (epoch {epoch + 1}, lr {lr:.4g}): the run diverged; "
                           f"try a lower --lr{prec}; {kept}")
