"""The one training loop: every method, every data source, CPU or GPU.

A run folder holds `config.json`, `log.csv` (per step), `epochs.csv` (per epoch),
`checkpoint.pt` (everything needed to resume, written atomically every epoch, every
`checkpoint_every` steps and on SIGINT/SIGTERM), `backbone.safetensors` (the clean backbone,
written at the end) and `summary.json`. A checkpoint taken mid-epoch also holds the epoch's
generator states, so a resumed run replays the rest of the epoch exactly.

Under torchrun (one process per device, leanssl.distributed) the same loop runs in every process:
`batch_size` is the global batch, split evenly over the processes, and the learning rate follows
the global batch (default lr = the method's rate per 256 images x batch_size / 256, whatever the
number of processes). The method is wrapped in DistributedDataParallel; every process makes the
random draws of the whole global batch (the epoch's generators, seeded as in one process) and uses
its own rows, so the run equals one process at the same global batch (with --sync-bn).
Rank 0 alone reads the checkpoint (and sends it to the others) and writes every file; the logged
losses are the global batch's. Decisions that depend on the clock or a signal (time budget, stop)
are agreed between ranks each step, so all of them stop after the same step. The checkpoint holds
one copy of the replicated state and does not depend on the number of processes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import resource
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from tqdm.auto import tqdm

from .. import accel, distributed, runfolder
from ..checks import check_finite, check_ranges, first_nonfinite
from ..data.loader import DeviceLoader
from ..data.sources import open_dataset, stratified_subset
from ..errors import LeansslError
from ..methods import get_method
from ..methods.base import DataInfo, config_from_args
from .config import _RUN_IDENTITY, TrainConfig, config_from_dict
from ..models.backbones import build_backbone, check_backbone_name

# --on-nan skip: this many diverged batches in a row stop the run anyway (skipping is for rare bad batches).
MAX_SKIPS_IN_A_ROW = 20

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LeansslError("--device cuda was asked for but no CUDA GPU is visible to PyTorch")
    if name not in ("cpu", "cuda"):
        raise LeansslError(f"unknown device '{name}': use auto, cpu or cuda")
    return torch.device(name)


def atomic_save(obj, path: Path) -> None:
    """Write to a temp file, fsync, rename over the target, fsync the folder: a crash leaves the old file or the new one.

    On an error (a full disk) the temp file is removed and the old file is left as it was.
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a killed write's leftover; "x" below then never writes through a planted symlink
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lr_at(step: int, total: int, warmup: int, base: float, per: int = 1) -> float:
    """Linear warm-up, then cosine decay to zero; `per` > 1 holds the rate for blocks of `per` steps (per epoch)."""
    step = step // per * per
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * t))


def param_groups(method: torch.nn.Module, weight_decay: float, decay_norm_bias: bool = False) -> list[dict]:
    """No weight decay on biases and normalisation parameters (the usual SSL recipe), unless `decay_norm_bias`."""
    decay, no_decay = [], []
    for p in method.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 and not decay_norm_bias else decay).append(p)
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


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's contents, unpickled with weights_only=True: tensors, numbers, strings and plain
    containers only, so a crafted file cannot run code. A refused or damaged file is a LeansslError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message ends with how to allowlist the object; keep only what was refused.
        what = next((ln.split("WeightsUnpickler error:")[-1].split(". ")[0].strip()
                     for ln in str(e).splitlines() if "Unsupported" in ln), "")
        if "Unsupported global" not in what and "Unsupported class" not in what:  # not a refused object: bad bytes
            raise LeansslError(f"cannot load checkpoint {path}: damaged or not a leanssl checkpoint "
                               f"({what or type(e).__name__})") from None
        raise LeansslError(f"refusing to load {path}: it holds Python objects other than tensors and plain data, "
                           f"and unpickling them could run code ({what})") from None
    except OSError as e:
        raise LeansslError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except Exception as e:  # torch raises RuntimeError, KeyError, EOFError... on a damaged file
        msg = str(e).split(". ")[0].strip() or type(e).__name__
        raise LeansslError(f"cannot load checkpoint {path}: damaged or not a leanssl checkpoint ({msg})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise LeansslError(f"{path} is not a leanssl checkpoint (no model state in it)")
    check_finite(state["model"], str(path))
    return state


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped training after its checkpoint was written; `summary` says where.
    A KeyboardInterrupt, so callers that stop on Ctrl-C (the demo, scripts) still stop."""

    def __init__(self, summary: dict):
        super().__init__(summary["interrupted"])
        self.summary = summary


class _GracefulStop:
    """While `armed` (the training loop), SIGINT/SIGTERM only set `signal`: the loop finishes its step,
    checkpoints and returns. Unarmed (decoding data, calibrating), or on a second signal, the previous
    handler runs as usual (a second Ctrl-C interrupts at once; the checkpoint on disk stays valid)."""

    def __init__(self):
        self.signal: str | None = None
        self.armed = False
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self.armed and self.signal is None:
            self.signal = signal.Signals(signum).name
            return
        previous = self._previous[signum]
        if self.armed:  # a second signal: from now on the usual behaviour
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)  # Python's SIGINT handler raises KeyboardInterrupt
        elif previous != signal.SIG_IGN:  # the default action (for SIGTERM: end the process), re-delivered
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


class _Logger:
    """Per-step CSV (flushed every log_every steps, so the GPU is synchronised only then) and optional TensorBoard."""

    def __init__(self, out: Path, resume: bool, write: bool = True):
        self.path = out / "log.csv"
        self.write = write  # under torchrun only rank 0 writes; the others still take part in flush's all-reduce
        if write and (not resume or not self.path.exists()):
            runfolder.write_text(self.path, "epoch,step,lr,loss,ce,kl\n")
        self.pending: list[tuple] = []
        self.tb = None
        if write:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(out / "tb"))
            except Exception:  # TensorBoard is optional
                self.tb = None

    def add(self, epoch: int, step: int, lr: float, loss: torch.Tensor, logs: dict, grad_norm: torch.Tensor) -> None:
        nan = torch.full_like(loss, float("nan"))
        vals = torch.stack([loss.detach().float()] + [logs.get(k, nan).float() for k in ("ce", "kl")] + [grad_norm.float()])
        self.pending.append((epoch, step, lr, vals))

    def flush(self) -> list[tuple]:
        """Write the pending rows; returns them as (epoch, step, lr, loss, grad_norm) (one host sync for all)."""
        if not self.pending:
            return []
        values = torch.stack([p[3] for p in self.pending])
        if distributed.world_size() > 1:  # each rank's loss is its share's mean: the ranks' mean is the global batch's
            values = torch.cat([distributed.mean_over_ranks(values[:, :3]), values[:, 3:]], dim=1)
        values = values.tolist()
        if self.write:
            with runfolder.open_append(self.path) as f:
                w = csv.writer(f)
                for (epoch, step, lr, _), (loss, ce, kl, _) in zip(self.pending, values):
                    w.writerow([epoch, step, f"{lr:.6g}", repr(loss), repr(ce), repr(kl)])
                    if self.tb is not None:
                        self.tb.add_scalar("train/loss", loss, step)
        rows = [(epoch, step, lr, v[0], v[3]) for (epoch, step, lr, _), v in zip(self.pending, values)]
        self.pending = []
        return rows


def train(cfg: TrainConfig, resume: bool = False, force: bool = False) -> dict:
    """Pretrain and return the summary (also written to summary.json).

    The run owns `cfg.out` while it runs (leanssl.runfolder): a second run on it is refused; a fresh
    run into a non-empty folder that is not a leanssl run folder needs `force`, as does starting a
    finished or checkpointed run again.

    SIGINT/SIGTERM during the training loop finish the current step, write a checkpoint and the
    summary (with "interrupted" set to the signal's name), then raise TrainingInterrupted.
    Under torchrun (WORLD_SIZE > 1) the process first joins the others (leanssl.distributed); a rank
    that dies or hangs makes the others stop with a one-line LeansslError within cfg.dist_timeout.
    """
    check_ranges(cfg)  # a config changed after construction
    config_from_args(get_method(cfg.method).Config, cfg.method_args)  # a bad method name or value: before any write
    ctx = folder = None
    if distributed.launched():
        ctx = distributed.init_from_env(resolve_device(cfg.device), cfg.dist_timeout)
    try:
        folder = _claim(cfg, resume, force, ctx)
        with _GracefulStop() as stop:
            return _train(cfg, resume, stop, ctx)
    except Exception as e:
        if ctx is not None and not isinstance(e, LeansslError) and distributed.is_peer_failure(e):
            raise distributed.peer_failure(e, ctx, Path(cfg.out)) from None
        raise
    finally:
        if folder is not None:
            folder.release()
        if ctx is not None:
            ctx.close()


def _claim(cfg: TrainConfig, resume: bool, force: bool, ctx) -> runfolder.RunFolder | None:
    """Rank 0 (the writer) claims the run folder; under torchrun every rank learns whether it could."""
    if ctx is None:
        return runfolder.claim(Path(cfg.out), resume, force)
    held = []
    ctx.on_main(lambda: held.append(runfolder.claim(Path(cfg.out), resume, force)))
    return held[0] if held else None


def _open_run(cfg: TrainConfig, out: Path, ckpt_path: Path, resume: bool) -> dict | None:
    """The checkpoint state to resume from (checked against cfg), or None for a fresh run."""
    if not resume:
        return None  # runfolder.claim has checked that the folder may take a fresh run
    state = load_checkpoint(ckpt_path)  # runfolder.claim has checked that there is one
    saved = config_from_dict(state.get("config"), ckpt_path)
    if cfg.resolution is None:
        cfg.resolution = saved.resolution
    # A larger batch may have been capped to the data (checked again once the data is open).
    diff = [k for k in _RUN_IDENTITY if getattr(saved, k) != getattr(cfg, k)
            and not (k == "batch_size" and cfg.batch_size > saved.batch_size)]
    if diff:
        raise LeansslError(f"--resume: this run was started with different {', '.join(diff)} "
                           f"({', '.join(f'{k}={getattr(saved, k)!r}' for k in diff)})")
    _check_schedule(cfg, saved, state)
    return state


def _schedule_text(epochs: int, budget: float | None) -> str:
    return f"--budget {budget:g}s" if budget is not None else f"--epochs {epochs}"


def _check_schedule(cfg: TrainConfig, saved: TrainConfig, state: dict) -> None:
    """--resume continues the schedule it was planned with: a longer one would restart the lr cosine mid-run."""
    if (cfg.epochs, cfg.time_budget) == (saved.epochs, saved.time_budget):
        return
    asked, planned = _schedule_text(cfg.epochs, cfg.time_budget), _schedule_text(saved.epochs, saved.time_budget)
    finished = state["epoch"] >= saved.epochs or (saved.time_budget is not None and state["elapsed"] >= saved.time_budget)
    if finished:
        raise LeansslError(f"--resume: this run finished ({planned}) and its learning rate has decayed to zero; "
                           f"continuing with {asked} would restart the schedule. Train longer in a new run: "
                           f"the same command with {asked} and another --out")
    raise LeansslError(f"--resume: this run's learning-rate schedule was planned for {planned}; resume with "
                       f"{planned} (or no length flag), or start a new run with {asked} in another --out")


def _with_test_images(cfg: TrainConfig, ds, x: np.ndarray, main: bool) -> np.ndarray:
    """The pretraining images: with --all-images the test split's too; else a note when a split was held out."""
    n_test = len(ds.test) if ds.test is not None else 0
    if cfg.all_images and n_test:
        if cfg.fraction != 1.0:
            raise LeansslError("use either --all-images or --fraction, not both")
        if main:
            print(f"leanssl: note: --all-images: pretraining on all {len(x) + n_test} images, the {n_test} of the test "
                  f"split included (an eval on this source's test split is then not on unseen images)", file=sys.stderr)
        return np.concatenate([np.asarray(x), np.asarray(ds.test.x)])
    if ds.held_out and main:
        print(f"leanssl: note: {cfg.data} is labelled but has no test split: {n_test} images (20% of each class, "
              f"seeded) are held out as the test split for eval, so pretraining uses {len(x)} of "
              f"{len(ds.pretrain) + n_test}; --all-images pretrains on every image", file=sys.stderr)
    return x


def _cap_batch(cfg: TrainConfig, n: int, world: int, main: bool) -> None:
    """A batch larger than the data becomes the data (a multiple of the processes), with a note."""
    if n >= cfg.batch_size:
        return
    capped = n - n % world
    if capped < 2 * world:
        raise LeansslError(f"only {n} training images: too few for a batch of at least 2 per process")
    if main:
        lr = "" if cfg.lr is not None else " (the default lr scales with it)"
        print(f"leanssl: note: only {n} training images: batch size capped from {cfg.batch_size} to {capped}{lr}",
              file=sys.stderr)
    cfg.batch_size = capped


def _start_line(cfg: TrainConfig, n: int, device, steps_per_epoch: int, total_steps: int) -> str:
    """What is about to happen, in one line, before any step: the user can stop a mistake at once."""
    length = (f"for {cfg.time_budget:g} s (--budget; at most {cfg.epochs} epochs)" if cfg.time_budget is not None
              else f"{cfg.epochs} epoch{'s' * (cfg.epochs != 1)} x {steps_per_epoch} steps = {total_steps} steps")
    return (f"leanssl: training {cfg.method} ({cfg.backbone}) on {n} images of {cfg.data} at {cfg.resolution} px, "
            f"batch {cfg.batch_size}, lr {cfg.base_lr():.4g}, {length}, on {device} -> {cfg.out}")


def _resume_line(cfg: TrainConfig, step: int, total_steps: int, epoch: int, elapsed: float) -> str:
    if cfg.time_budget is not None:
        done, where = elapsed >= cfg.time_budget, f"{elapsed:.0f} s of the {cfg.time_budget:g} s budget spent, step {step}"
    else:
        done, where = step >= total_steps, f"step {step} of {total_steps}, {epoch} of {cfg.epochs} epochs done"
    return f"leanssl: this run had already finished ({where}): nothing to train" if done else f"leanssl: resuming ({where})"


def _json_safe(summary: dict) -> dict:
    """NaN/inf (a run with no finished epoch has no loss) as null: summary.json stays strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}


# What every checkpoint holds besides "model" (the mid-epoch extras are optional).
_CHECKPOINT_KEYS = ("optimizer", "config", "torch_rng", "epoch", "elapsed", "loss")


def _restore(method: torch.nn.Module, opt: torch.optim.Optimizer, state: dict, path: Path) -> None:
    """Load a checkpoint into the method and optimizer; one that does not fit this run is a LeansslError."""
    def misfit(detail: str) -> LeansslError:
        return LeansslError(f"--resume: {path} does not fit this run ({detail})")

    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise misfit(f"no {', '.join(missing)} in it")
    try:
        method.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise misfit(next((ln for ln in lines[1:] if ln), lines[0] if lines else type(e).__name__)) from None
    # load_state_dict takes optimizer state of any shape; a wrong one would fail at the first step.
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != p.shape:
                    raise misfit(f"optimizer {key} of shape {tuple(value.shape)} for a parameter of shape "
                                 f"{tuple(p.shape)}")
    check_finite(state["optimizer"].get("state", {}), f"--resume: {path} (optimizer)")


def _signum(name: str | None) -> int:
    return signal.Signals[name].value if name else 0


def _train(cfg: TrainConfig, resume: bool, stop: _GracefulStop, ctx: distributed.DistContext | None = None) -> dict:
    out = Path(cfg.out)
    device = resolve_device(cfg.device) if ctx is None else ctx.device
    main = ctx is None or ctx.is_main  # the process that writes files and reports
    torch.manual_seed(cfg.seed)
    if ctx is not None and (cfg.batch_size % ctx.world or cfg.batch_size // ctx.world < 2):
        raise LeansslError(f"--batch-size {cfg.batch_size} is the global batch: it must split into {ctx.world} "
                           f"equal shares of at least 2 images, one per process")
    precision = accel.resolve_precision(cfg.precision, device)
    check_backbone_name(cfg.backbone)

    ckpt_path = out / "checkpoint.pt"
    if ctx is None:
        state = _open_run(cfg, out, ckpt_path, resume)
    else:  # rank 0 reads the checkpoint and sends it: the run folder need not be shared between machines
        state = ctx.on_main(lambda: _open_run(cfg, out, ckpt_path, resume))
        if state is not None and cfg.resolution is None:
            cfg.resolution = state["config"]["resolution"]
        if state is not None:  # rank 0 checked them against its command line
            cfg.epochs, cfg.time_budget = state["config"]["epochs"], state["config"]["time_budget"]

    def open_data():
        first = ctx is None or ctx.local_rank == 0
        return open_dataset(cfg.data, cfg.resolution, cfg.cache_dir, strict=cfg.strict_images,
                            progress=cfg.progress and first)

    ds = open_data() if ctx is None else ctx.main_first(open_data)  # one decode per machine
    cfg.resolution = ds.resolution
    if ds.skipped and main:
        out.mkdir(parents=True, exist_ok=True)
        listing = "".join(f"{_one_line(p)}\t{_one_line(why)}\n" for p, why in ds.skipped)
        runfolder.write_text(out / "skipped.txt", listing)
        print(f"leanssl: skipped {len(ds.skipped)} undecodable image(s), listed in {out / 'skipped.txt'}", file=sys.stderr)
    x = ds.pretrain.x
    if cfg.fraction != 1.0:
        x = x[stratified_subset(ds.pretrain.y, len(x), cfg.fraction, cfg.seed)]
    x = _with_test_images(cfg, ds, x, main)
    _cap_batch(cfg, len(x), 1 if ctx is None else ctx.world, main)
    if state is not None and cfg.batch_size != state["config"]["batch_size"]:
        raise LeansslError(f"--resume: this run was started with different batch_size "
                           f"(batch_size={state['config']['batch_size']})")
    info = DataInfo(len(x), ds.channels, ds.resolution, tuple(ds.mean), tuple(ds.std))
    if cfg.progressive is not None and not 1 <= cfg.progressive < ds.resolution:
        raise LeansslError(f"--progressive {cfg.progressive}: the first part's views must be smaller than the "
                           f"data's {ds.resolution} px (and at least 1)")

    if main:
        out.mkdir(parents=True, exist_ok=True)
        runfolder.write_text(out / "config.json", json.dumps(asdict(cfg), indent=2))
        runfolder.write_text(out / "data.json", json.dumps(asdict(info), indent=2))
    method = build_method(cfg, info)
    if ctx is not None and cfg.sync_bn:
        method = distributed.convert_sync_batchnorm(method, device)
    method = method.to(device, memory_format=torch.channels_last)
    if cfg.compile:
        accel.compile_networks(method)
    opt = torch.optim.SGD(param_groups(method, cfg.weight_decay, cfg.decay_norm_bias), lr=cfg.base_lr(), momentum=cfg.momentum)
    loader = DeviceLoader(x, device) if ctx is None else DeviceLoader(x, device, rank=ctx.rank, world=ctx.world)
    steps_per_epoch = loader.steps_per_epoch(cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    start_epoch, elapsed, last_loss, skipped_steps, images_seen, peak_before = 0, 0.0, float("nan"), 0, 0, 0.0
    if main:
        print(_start_line(cfg, len(x), device, steps_per_epoch, total_steps), file=sys.stderr)
    if state is not None:
        _restore(method, opt, state, ckpt_path)
        start_epoch, elapsed, last_loss = state["epoch"], state["elapsed"], state["loss"]
        skipped_steps = state.get("skipped_steps", 0)
        images_seen = state.get("images_seen", start_epoch * steps_per_epoch * cfg.batch_size)
        peak_before = state.get("peak_mem_mb", 0.0)
        torch.set_rng_state(state["torch_rng"])
        # A killed run may have logged steps after its checkpoint: they are replayed, so drop them.
        resume_step = start_epoch * steps_per_epoch + state.get("step_in_epoch", 0)
        if main:
            print(_resume_line(cfg, resume_step, total_steps, start_epoch, elapsed), file=sys.stderr)
            _truncate_csv(out / "log.csv", lambda r: int(r["step"]) < resume_step)
            _truncate_csv(out / "epochs.csv", lambda r: int(r["epoch"]) <= start_epoch)
    else:
        t0 = time.perf_counter()
        method.set_view_size(cfg.progressive)  # the calibration pass sees what the first steps see
        method.setup(loader, cfg.batch_size)  # under torchrun: each rank calibrates its share, banks all-gathered
        elapsed = time.perf_counter() - t0
    signum = 0  # under torchrun: a signal some rank received, once the ranks have agreed on it
    if ctx is not None:
        signum, elapsed = ctx.agree(_signum(stop.signal), elapsed)
    model = None if ctx is None else distributed.wrap(method, ctx)  # DistributedDataParallel

    logger = _Logger(out, resume=state is not None, write=main)
    epochs_csv = out / "epochs.csv"
    if state is None and main:
        runfolder.write_text(epochs_csv, "epoch,loss,seconds,images_per_s,peak_mem_mb\n")
    autocast = accel.autocast(device, precision)
    end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)
    if cfg.time_budget is not None and elapsed >= cfg.time_budget:
        end_epoch = start_epoch  # a resumed run whose budget is already spent
    # (step, seconds spent) where the budget's rate measurement starts; a resumed run keeps its run's
    # (else its first steps would see no rate and run at the peak lr of an uncapped schedule)
    rate_from = tuple(state["rate_from"]) if state is not None and state.get("rate_from") else None

    params = [p for p in method.parameters() if p.requires_grad]
    norm_stats = [b for n, b in method.named_buffers() if "running_" in n or "num_batches" in n]
    epochs_done, skips_in_a_row, paused = start_epoch, 0, False
    partial = state.get("epoch_seconds", 0.0) if state is not None and state.get("step_in_epoch") else 0.0
    if cfg.stop_at is not None and state is not None and elapsed + partial >= cfg.stop_at:
        end_epoch = start_epoch  # this slice's time is already spent (a fresh run takes one step: a checkpoint)
    steps_done = start_epoch * steps_per_epoch + (state.get("step_in_epoch", 0) if state is not None else 0)
    stop.armed = True
    for epoch in range(start_epoch, end_epoch):
        method.train()
        partial = 0.0  # seconds of an epoch left unfinished (the clock at a mid-epoch stop)
        # All randomness of an epoch derives from (seed, epoch): a resumed run replays it exactly.
        gen = torch.Generator(device).manual_seed(cfg.seed * 100003 + epoch)
        rng = np.random.default_rng([cfg.seed, epoch])
        first, losses, seconds_before = 0, [], 0.0
        if state is not None and epoch == start_epoch and state.get("step_in_epoch"):
            # A mid-epoch checkpoint: skip the batches it had consumed and continue its generators.
            first, losses, seconds_before = state["step_in_epoch"], list(state["epoch_losses"]), state["epoch_seconds"]
            gen.set_state(state["gen_state"])
            rng.bit_generator.state = state["np_rng_state"]
        t_epoch = time.perf_counter()
        batches = (loader.epoch if ctx is None else loader.shards)(cfg.batch_size, cfg.seed * 7919 + epoch, start=first)
        bar = tqdm(batches, initial=first, total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}" + (f"/{cfg.epochs}" if cfg.time_budget is None else f" ({_budget_left(cfg, elapsed)} left)"), disable=None if cfg.progress and main else True, leave=False, unit="batch")
        interrupted = budget_spent = False
        for i, batch in enumerate(bar, start=first):
            xb, idx = batch[0], batch[1]
            step = epoch * steps_per_epoch + i
            if ctx is not None:  # one clock and one stop signal for every rank (a Gloo all-reduce on the host)
                now = elapsed + seconds_before + time.perf_counter() - t_epoch
                signum, spent = ctx.agree(_signum(stop.signal), now)
            elif cfg.time_budget is not None or cfg.stop_at is not None:
                spent = elapsed + seconds_before + time.perf_counter() - t_epoch
            if cfg.time_budget is not None:
                # Schedules follow the time spent: the steps the budget will hold, extrapolated from the rate so far.
                if spent >= cfg.time_budget:
                    budget_spent = True
                    break
                rate_from = rate_from or (step, spent)
                if cfg.progressive is not None and spent >= cfg.progressive_fraction * cfg.time_budget > rate_from[1]:
                    rate_from = (step, spent)  # full-size views: the steps left are measured at their own rate
                if step - rate_from[0] >= 5:  # else keep the estimate (the cap before any rate was measured)
                    total_steps = _steps_in_budget(step, spent, rate_from, cfg.time_budget, steps_per_epoch * cfg.epochs)
                warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total_steps // 10)
            steps_done = step + 1
            lr = lr_at(step, total_steps, warmup, cfg.base_lr(), steps_per_epoch if cfg.lr_schedule == "epoch" else 1)
            for g in opt.param_groups:
                g["lr"] = lr
            saved_stats = [b.clone() for b in norm_stats] if cfg.on_nan == "skip" else None
            method.set_progress(step, total_steps, steps_per_epoch)
            if cfg.progressive is not None:
                small = (spent / cfg.time_budget if cfg.time_budget is not None else step / total_steps) \
                    < cfg.progressive_fraction
                method.set_view_size(cfg.progressive if small else None)
            with autocast:
                if model is None:
                    loss, logs = method.training_step(xb, idx, gen, rng)
                else:  # this rank's share of the global batch, whose indices the method may need (bank columns)
                    with distributed.sharded(distributed.BatchShard(ctx.rank, ctx.world, batch[2])):
                        loss, logs = model(xb, idx, gen, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            why = None
            if cfg.on_nan == "skip":  # decided per step, so one host sync per step in this mode only
                check = torch.stack([distributed.mean_over_ranks(loss.detach().float()), grad_norm.float()])
                why = _divergence(*check.tolist(), cfg.grad_norm_limit)
            if why is None:
                opt.step()
                method.after_step()
                logger.add(epoch, step, lr, loss, logs, grad_norm)
                skips_in_a_row = 0
            else:  # the batch leaves no trace: no optimizer step, no bank update, BatchNorm statistics restored
                for b, saved in zip(norm_stats, saved_stats):
                    b.copy_(saved)
                skipped_steps, skips_in_a_row = skipped_steps + 1, skips_in_a_row + 1
                if main:
                    tqdm.write(f"leanssl: step {step}: {why}; batch skipped (--on-nan skip)", file=sys.stderr)
                if skips_in_a_row >= MAX_SKIPS_IN_A_ROW:
                    raise _diverged(f"{skips_in_a_row} batches in a row diverged (the last: {why})", step, epoch, lr,
                                    precision, ckpt_path)
            # read once: a signal arriving later is handled after the next step (under torchrun: the agreed one)
            interrupted = stop.signal is not None if ctx is None else signum != 0
            paused = paused or (cfg.stop_at is not None and spent >= cfg.stop_at)  # the clock at this step's start
            end_of_epoch = i + 1 == steps_per_epoch
            save_now = not end_of_epoch and (interrupted or paused or
                                             (cfg.checkpoint_every is not None and (step + 1) % cfg.checkpoint_every == 0))
            if (i + 1) % cfg.log_every == 0 or end_of_epoch or save_now:
                rows = logger.flush()
                _check_rows(rows, cfg.grad_norm_limit, precision, ckpt_path)
                losses += [r[3] for r in rows]
                if rows:
                    rate = (i + 1 - first) * cfg.batch_size / (time.perf_counter() - t_epoch)
                    bar.set_postfix(loss=f"{rows[-1][3]:.4f}", img_s=f"{rate:.0f}")
            if save_now:
                _save_checkpoint(ckpt_path, method, opt, cfg, ctx, epoch=epoch, step_in_epoch=i + 1, loss=last_loss,
                                 elapsed=elapsed, skipped_steps=skipped_steps, gen_state=gen.get_state(),
                                 np_rng_state=rng.bit_generator.state, epoch_losses=losses, images_seen=images_seen,
                                 rate_from=rate_from, peak_mem_mb=max(peak_before, peak_memory_mb(device)),
                                 epoch_seconds=(saved_at := seconds_before + time.perf_counter() - t_epoch))
            if interrupted or paused:
                break
        if (interrupted or paused) and i + 1 < steps_per_epoch:  # mid-epoch, after its checkpoint
            partial = saved_at  # the clock as the checkpoint has it (a resumed slice starts from there)
            break
        if budget_spent:  # the steps logged since the last flush still count
            rows = logger.flush()
            _check_rows(rows, cfg.grad_norm_limit, precision, ckpt_path)
            losses += [r[3] for r in rows]
        steps_in_epoch = i if budget_spent else steps_per_epoch
        seconds = seconds_before + time.perf_counter() - t_epoch
        elapsed += seconds
        if ctx is not None:  # the ranks' clocks differ a little: they go on with the slowest one's
            signum, elapsed = ctx.agree(_signum(stop.signal), elapsed)
        images_seen += steps_in_epoch * cfg.batch_size
        budget_spent = budget_spent or (cfg.time_budget is not None and elapsed >= cfg.time_budget)
        last_loss = float(np.mean(losses)) if losses else float("nan")
        rate = (steps_in_epoch - first) * cfg.batch_size / max(seconds - seconds_before, 1e-9)
        if main:
            with runfolder.open_append(epochs_csv) as f:
                f.write(f"{epoch + 1},{last_loss:.6f},{seconds:.3f},{rate:.1f},{peak_memory_mb(device):.1f}\n")
        if cfg.progress and main:
            which = f"{epoch + 1}/{cfg.epochs}" if cfg.time_budget is None else f"{epoch + 1} ({_budget_left(cfg, elapsed)} left)"
            tqdm.write(f"epoch {which}  loss {last_loss:.4f}  {rate:.0f} img/s  {seconds:.1f}s")
        _save_checkpoint(ckpt_path, method, opt, cfg, ctx, epoch=epoch + 1, step_in_epoch=0, loss=last_loss,
                         elapsed=elapsed, skipped_steps=skipped_steps, images_seen=images_seen, rate_from=rate_from,
                         peak_mem_mb=max(peak_before, peak_memory_mb(device)))
        epochs_done = epoch + 1
        if (stop.signal is not None if ctx is None else signum != 0) or budget_spent or paused:
            break
    stop.armed = False

    done = epochs_done >= cfg.epochs or (cfg.time_budget is not None and elapsed >= cfg.time_budget)
    if done and main:
        weights = {k: v.contiguous() for k, v in method.backbone.state_dict().items()}
        runfolder.write_bytes(out / "backbone.safetensors", safetensors_bytes(weights))
    interrupted_by = stop.signal if ctx is None else (signal.Signals(signum).name if signum else None)
    summary = {"method": cfg.method, "backbone": cfg.backbone, "data": cfg.data, "fraction": cfg.fraction,
               "train_images": len(x), "epochs_done": epochs_done, "steps_done": steps_done, "epochs": cfg.epochs,
               "complete": done,
               "final_loss": last_loss, "train_seconds": elapsed + partial,  # + a stopped epoch's part
               "images_seen": images_seen, "time_budget": cfg.time_budget,
               "images_per_s": (images_seen / elapsed) if elapsed and images_seen else None,
               "peak_mem_mb": max(peak_before, peak_memory_mb(device)), "device": str(device),  # over all invocations
               "precision": precision, "compiled": cfg.compile,
               "processes": 1 if ctx is None else ctx.world,
               "skipped_images": len(ds.skipped), "skipped_steps": skipped_steps, "interrupted": interrupted_by}
    summary = _json_safe(summary)
    if main:
        runfolder.write_text(out / "summary.json", json.dumps(summary, indent=2, allow_nan=False))
    if interrupted_by is not None:
        raise TrainingInterrupted(summary)
    return summary


def _one_line(text: str) -> str:
    """A file name or reason as one printable UTF-8 line of skipped.txt: undecodable bytes as \\xNN, and
    newline, tab and carriage return escaped (they would split the line or its two columns)."""
    try:
        raw = str(text).encode("utf-8", "surrogateescape")  # a name os.listdir could not decode keeps its bytes
    except UnicodeEncodeError:
        raw = str(text).encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    return text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _budget_left(cfg: TrainConfig, elapsed: float) -> str:
    left = max(0.0, cfg.time_budget - elapsed)
    return f"{left / 60:.1f} min" if left >= 60 else f"{left:.0f} s"


def _steps_in_budget(step: int, spent: float, start: tuple[int, float], budget: float, cap: int) -> int:
    """The total steps a time budget will hold, from the rate measured since `start` = (step, seconds spent).

    Before a rate is measured (the first steps) the estimate is the cap; warm-up does not depend on it.
    """
    steps, seconds = step - start[0], spent - start[1]
    if steps < 5 or seconds <= 0:
        return cap
    return max(step + 1, min(cap, step + int((budget - spent) * steps / seconds)))


def _divergence(loss: float, grad_norm: float, limit: float | None) -> str | None:
    """What is wrong with a step's loss and total gradient norm, or None."""
    if not math.isfinite(loss):
        return f"loss became {loss}"
    if not math.isfinite(grad_norm):
        return f"gradient norm became {grad_norm}"
    if limit is not None and grad_norm > limit:
        return f"gradient norm {grad_norm:.4g} exceeded --grad-norm-limit {limit:g}"
    return None


def _diverged(why: str, step: int, epoch: int, lr: float, precision: str, ckpt: Path) -> LeansslError:
    prec = ", or --precision fp32 (bf16 autocast is on)" if precision == "bf16" else ""
    kept = f"the last good checkpoint ({ckpt}) is intact" if ckpt.exists() else "no checkpoint had been written yet"
    return LeansslError(f"{why} at step {step} (epoch {epoch + 1}, lr {lr:.4g}): the run diverged; "
                        f"try a lower --lr{prec}, or --on-nan skip to skip such batches; {kept}")


def _check_rows(rows: list[tuple], limit: float | None, precision: str, ckpt: Path) -> None:
    """Stop at the first logged step whose loss or gradient norm diverged (checked once per log flush)."""
    for epoch, step, lr, loss, grad_norm in rows:
        why = _divergence(loss, grad_norm, limit)
        if why is not None:
            raise _diverged(why, step, epoch, lr, precision, ckpt)


def _save_checkpoint(path: Path, method, opt, cfg: TrainConfig, ctx: distributed.DistContext | None = None,
                     **progress) -> None:
    """Everything needed to resume; `progress` says where (epoch, step_in_epoch, and mid-epoch the generator states).

    Under torchrun the ranks first check that their replicas agree, then rank 0 alone writes, and
    every rank learns whether it could (a full disk stops them all).
    """
    if ctx is not None:
        ctx.check_replicas(method)
        ctx.on_main(lambda: _save_checkpoint(path, method, opt, cfg, **progress))
        return
    state = {"model": method.state_dict(), "optimizer": opt.state_dict(), "config": asdict(cfg),
             "torch_rng": torch.get_rng_state(), **progress}
    kept = "the previous checkpoint is intact" if path.exists() else "no checkpoint had been written yet"
    # A step with a finite loss can still leave Inf in a buffer (BatchNorm's running_var at a huge lr):
    # a checkpoint is only written, and only called good, when the whole state is finite.
    bad = first_nonfinite({"model": state["model"], "optimizer": state["optimizer"]["state"]})
    if bad is not None:
        raise LeansslError(f"the run diverged: {bad} holds NaN or Inf values, so no checkpoint is written; {kept}; "
                           f"try a lower --lr")
    try:
        atomic_save(state, path)
    except OSError as e:  # a full disk, a quota: the previous checkpoint is still the valid one
        raise LeansslError(f"cannot write checkpoint {path}: {e.strerror or e}; {kept}") from None
    except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk) as "unexpected pos ..."
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LeansslError(f"cannot write checkpoint {path} (is the disk full? torch: {first}); {kept}") from None


def _truncate_csv(path: Path, keep) -> None:
    """Keep the header and the complete rows for which keep(row) holds; a row cut short by a kill is dropped."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        lines = f.readlines()
    if not lines:
        return
    header = next(csv.reader(lines[:1]))

    def wanted(line: str) -> bool:
        values = next(csv.reader([line]), [])
        try:
            return line.endswith("\n") and len(values) == len(header) and keep(dict(zip(header, values)))
        except ValueError:
            return False

    runfolder.write_text(path, "".join(lines[:1] + [ln for ln in lines[1:] if wanted(ln)]))
