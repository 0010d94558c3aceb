"""The one training loop: every method, every data source, CPU or GPU, one process or many.

`train` claims the run folder (leanssl.runfolder), then `_prepare` (the checkpoint to resume, the
data, the method and optimizer, restored or calibrated), `_epoch` for each epoch (`_step` for each
of its steps), and `_finish` (the backbone and the summary). A checkpoint is written every epoch,
every `checkpoint_every` steps and on SIGINT/SIGTERM; one taken mid-epoch also holds the epoch's
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
one copy of the replicated state and does not depend on the number of processes. In one process
the context is distributed.SingleProcess, which agrees with itself.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import accel, distributed
from ..checks import check_ranges
from ..data.loader import DeviceLoader
from ..device import peak_memory_mb, resolve_device
from ..errors import LeansslError
from ..methods import get_method
from ..methods.base import config_from_args
from ..models.backbones import check_backbone_name
from ..runfolder import Lock, RunFolder, json_safe
from .build import build_method, build_optimizer
from .callbacks import Callback
from .config import TrainConfig
from .images import pretraining_images
from .divergence import MAX_SKIPS_IN_A_ROW, check_rows, diverged
from .logger import StepLog
from .resume import open_checkpoint, restore, resume_line
from .schedule import Schedule
from .state import RunState
from .step import StepResult, TrainStep
from .stop import GracefulStop, TrainingInterrupted


def check_config(cfg: TrainConfig) -> None:
    """What train() refuses before it writes anything: a field out of range (a config changed after
    construction), a bad method name or setting."""
    check_ranges(cfg)
    config_from_args(get_method(cfg.method).Config, cfg.method_args)


def train(cfg: TrainConfig, resume: bool = False, force: bool = False, callbacks: Iterable[Callback] = (),
          clock: Callable[[], float] = time.perf_counter) -> dict:
    """Pretrain and return the summary (also written to summary.json).

    The run owns `cfg.out` while it runs (leanssl.runfolder): a second run on it is refused; a fresh
    run into a non-empty folder that is not a leanssl run folder needs `force`, as does starting a
    finished or checkpointed run again. `callbacks` (leanssl.train.callbacks) are called at setup,
    after each step and after each epoch; `clock` is the training clock (seconds; tests pass a fake one).

    SIGINT/SIGTERM during the training loop finish the current step, write a checkpoint and the
    summary (with "interrupted" set to the signal's name), then raise TrainingInterrupted.
    Under torchrun (WORLD_SIZE > 1) the process first joins the others (leanssl.distributed); a rank
    that dies or hangs makes the others stop with a one-line LeansslError within cfg.dist_timeout.
    """
    check_config(cfg)
    ctx = distributed.init_from_env(resolve_device(cfg.device), cfg.dist_timeout)
    lock = None
    try:
        lock = _claim(cfg, resume, force, ctx)
        with GracefulStop() as stop:
            return _train(_prepare(cfg, resume, ctx, stop, list(callbacks), clock))
    except Exception as e:
        if ctx.world > 1 and not isinstance(e, LeansslError) and distributed.is_peer_failure(e):
            raise distributed.peer_failure(e, ctx, RunFolder(cfg.out).checkpoint_path) from None
        raise
    finally:
        if lock is not None:
            lock.release()
        ctx.close()


def _claim(cfg: TrainConfig, resume: bool, force: bool, ctx) -> Lock | None:
    """Rank 0 (the writer) claims the run folder; under torchrun every rank learns whether it could."""
    held = []
    ctx.on_main(lambda: held.append(RunFolder(cfg.out).claim(resume, force)))
    return held[0] if held else None


@dataclass(eq=False)
class Run:
    """A run prepared for its epochs, and where it is (what callbacks are given)."""

    cfg: TrainConfig
    ctx: object                  # distributed.DistContext, or distributed.SingleProcess
    folder: RunFolder
    stop: GracefulStop
    clock: Callable[[], float]
    callbacks: list[Callback]
    precision: str
    method: torch.nn.Module
    opt: torch.optim.Optimizer
    loader: DeviceLoader
    schedule: Schedule
    state: RunState
    resumed: bool
    images: int                  # the pretraining images
    skipped_images: int          # undecodable images left out
    step: TrainStep | None = None  # built after a fresh run's calibration (DDP then wraps the calibrated method)
    log: StepLog | None = None
    end_epoch: int = 0           # where this invocation stops (--stop-after, a spent budget or slice)
    steps_done: int = 0
    signum: int = 0              # the stop signal the ranks last agreed on (0: none)
    paused: bool = False         # --stop-at: this invocation's time is spent
    partial: float = 0.0         # seconds of an epoch left unfinished (the clock of a mid-epoch stop)
    skips_in_a_row: int = 0

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def steps_per_epoch(self) -> int:
        return self.schedule.steps_per_epoch

    def signal(self) -> int:
        """The stop signal to act on now (0: none)."""
        return self.ctx.signal_now(self.stop.signum(), self.signum)

    def notify(self, hook: str) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self)


def _train(run: Run) -> dict:
    run.stop.armed = True
    for epoch in range(run.state.epoch, run.end_epoch):
        if not _epoch(run, epoch):
            break
    run.stop.armed = False
    return _finish(run)


# -- prepare ---------------------------------------------------------------------------------------

def _prepare(cfg: TrainConfig, resume: bool, ctx, stop: GracefulStop, callbacks: list, clock) -> Run:
    """The checkpoint (resumed), the data, the method and optimizer (restored, or calibrated), the logs."""
    torch.manual_seed(cfg.seed)
    folder = RunFolder(cfg.out)
    saved = _checkpoint_to_resume(cfg, folder, resume, ctx)
    cfg.batch_size = cfg.batch()  # a fresh run without --batch-size: the method's default
    if cfg.batch_size % ctx.world or cfg.batch_size // ctx.world < 2:
        raise LeansslError(f"--batch-size {cfg.batch_size} is the global batch: it must split into {ctx.world} "
                           f"equal shares of at least 2 images, one per process")
    precision = accel.resolve_precision(cfg.precision, ctx.device)
    check_backbone_name(cfg.backbone)
    ds, x, info = pretraining_images(cfg, ctx, folder)
    if saved is not None and cfg.batch_size != saved["config"]["batch_size"]:
        raise LeansslError(f"--resume: this run was started with different batch_size "
                           f"(batch_size={saved['config']['batch_size']})")
    if ctx.is_main:
        folder.write_config(asdict(cfg))
        folder.write_data_info(asdict(info))
    method, opt = _build(cfg, info, ctx)
    loader = DeviceLoader(x, ctx.device, rank=ctx.rank, world=ctx.world)
    spe = loader.steps_per_epoch(cfg.batch_size)
    if ctx.is_main:
        print(_start_line(cfg, len(x), ctx.device, spe, spe * cfg.epochs), file=sys.stderr)
    state = RunState() if saved is None else _resume(cfg, ctx, folder, method, opt, saved, spe)
    run = Run(cfg, ctx, folder, stop, clock, callbacks, precision, method, opt, loader,
              Schedule.of(cfg, spe, state.rate_from), state, saved is not None, len(x), len(ds.skipped),
              steps_done=state.epoch * spe + state.step_in_epoch)
    run.notify("on_setup")
    if saved is None:
        _calibrate(run)
    run.signum, state.elapsed = ctx.agree(stop.signum(), state.elapsed)
    run.step = TrainStep(method, opt, ctx, precision, cfg.on_nan == "skip", cfg.grad_norm_limit)
    run.log = StepLog(folder, write=ctx.is_main)
    if ctx.is_main:
        folder.start_logs(resume=saved is not None)
    _plan_invocation(run)
    return run


def _checkpoint_to_resume(cfg: TrainConfig, folder: RunFolder, resume: bool, ctx) -> dict | None:
    """Rank 0 reads the checkpoint and sends it (the run folder need not be shared between machines)."""
    saved = ctx.on_main(lambda: open_checkpoint(cfg, folder, resume))
    if saved is not None:  # rank 0 checked them against its command line
        if cfg.resolution is None:
            cfg.resolution = saved["config"]["resolution"]
        cfg.epochs, cfg.time_budget = saved["config"]["epochs"], saved["config"]["time_budget"]
        if cfg.batch_size is None:
            cfg.batch_size = saved["config"]["batch_size"]
    return saved


def _build(cfg: TrainConfig, info, ctx) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    method = build_method(cfg, info)
    if cfg.sync_bn and ctx.world > 1:
        method = distributed.convert_sync_batchnorm(method, ctx.device)
    method = method.to(ctx.device, memory_format=torch.channels_last)
    if cfg.compile:
        accel.compile_networks(method)
    return method, build_optimizer(cfg, method)


def _resume(cfg: TrainConfig, ctx, folder: RunFolder, method, opt, saved: dict, spe: int) -> RunState:
    restore(method, opt, saved, folder.checkpoint_path)
    state = RunState.from_checkpoint(saved, spe * cfg.batch_size)
    step = state.epoch * spe + state.step_in_epoch
    if ctx.is_main:
        spent = state.elapsed + (state.epoch_seconds if state.mid_epoch else 0.0)  # a stopped epoch's part counts
        print(resume_line(cfg, step, spe * cfg.epochs, state.epoch, spent), file=sys.stderr)
        folder.truncate_logs(step, state.epoch)  # a killed run may have logged steps after its checkpoint: replayed
    return state


def _calibrate(run: Run) -> None:
    """A fresh run's setup pass (essl's feature calibration), counted as training time."""
    t0 = run.clock()
    run.method.set_view_size(run.cfg.progressive)  # the calibration pass sees what the first steps see
    run.method.setup(run.loader, run.cfg.batch_size)  # under torchrun: each rank calibrates its share, banks all-gathered
    run.state.elapsed = run.clock() - t0


def _plan_invocation(run: Run) -> None:
    """Where this invocation stops: --stop-after epochs, or at once when the budget or --stop-at slice is spent."""
    cfg, state = run.cfg, run.state
    run.partial = state.epoch_seconds if state.mid_epoch else 0.0
    run.end_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, state.epoch + cfg.stop_after)
    if run.schedule.out_of_time(state.elapsed):
        run.end_epoch = state.epoch  # a resumed run whose budget is already spent
    if cfg.stop_at is not None and run.resumed and state.elapsed + run.partial >= cfg.stop_at:
        run.end_epoch = state.epoch  # this slice's time is already spent (a fresh run takes one step: a checkpoint)


def _start_line(cfg: TrainConfig, n: int, device, steps_per_epoch: int, total_steps: int) -> str:
    """What is about to happen, in one line, before any step: the user can stop a mistake at once."""
    length = (f"for {cfg.time_budget:g} s (--budget; at most {cfg.epochs} epochs)" if cfg.time_budget is not None
              else f"{cfg.epochs} epoch{'s' * (cfg.epochs != 1)} x {steps_per_epoch} steps = {total_steps} steps")
    return (f"leanssl: training {cfg.method} ({cfg.backbone}) on {n} images of {cfg.data} at {cfg.resolution} px, "
            f"batch {cfg.batch_size}, lr {cfg.base_lr():.4g}, {length}, on {device} -> {cfg.out}")


# -- epochs ----------------------------------------------------------------------------------------

_SPENT, _STOP = "budget spent", "stop"  # why an epoch ends early: before a step, after one


@dataclass
class _Epoch:
    """An epoch in progress. All its randomness derives from (seed, epoch): a resumed run replays it exactly."""

    index: int
    gen: torch.Generator
    rng: np.random.Generator
    first: int = 0               # its first step in this invocation (after a mid-epoch checkpoint's)
    losses: list[float] = field(default_factory=list)
    seconds_before: float = 0.0  # its seconds in earlier invocations
    started: float = 0.0         # the clock at its start in this one
    saved_at: float = 0.0        # its seconds at its last mid-epoch checkpoint

    def seconds(self, clock) -> float:
        return self.seconds_before + clock() - self.started


def _epoch(run: Run, index: int) -> bool:
    """One epoch (the rest of one, resumed mid-epoch); False when the run stops in it or after it."""
    cfg, spe = run.cfg, run.steps_per_epoch
    ep = _start_epoch(run, index)
    left = f"/{cfg.epochs}" if cfg.time_budget is None else f" ({_budget_left(cfg, run.state.elapsed)} left)"
    bar = tqdm(run.loader.shards(cfg.batch_size, cfg.seed * 7919 + index, start=ep.first), initial=ep.first,
               total=spe, desc=f"epoch {index + 1}{left}", disable=None if cfg.progress and run.ctx.is_main else True,
               leave=False, unit="batch")
    steps, budget_spent = spe, False
    for i, batch in enumerate(bar, start=ep.first):
        outcome = _step(run, ep, i, batch, bar)
        if outcome == _SPENT:
            steps, budget_spent = i, True
            _flush(run, ep)  # the steps logged since the last flush still count
            break
        if outcome == _STOP:
            if i + 1 < spe:  # mid-epoch, after its checkpoint
                run.partial = ep.saved_at  # the clock as the checkpoint has it (a resumed slice starts from there)
                return False
            break
    return _end_epoch(run, ep, steps, budget_spent)


def _start_epoch(run: Run, index: int) -> _Epoch:
    run.method.train()
    run.partial = 0.0
    seed, state = run.cfg.seed, run.state
    ep = _Epoch(index, torch.Generator(run.device).manual_seed(seed * 100003 + index), np.random.default_rng([seed, index]))
    if state.mid_epoch:  # a mid-epoch checkpoint: skip the batches it had consumed and continue its generators
        ep.first, ep.losses, ep.seconds_before = state.step_in_epoch, list(state.epoch_losses), state.epoch_seconds
        ep.gen.set_state(state.gen_state)
        ep.rng.bit_generator.state = state.np_rng_state
    ep.started = run.clock()
    return ep


def _step(run: Run, ep: _Epoch, i: int, batch, bar) -> str | None:
    """Step i of the epoch: _SPENT when the time budget ran out before it, _STOP when the run stops after it."""
    cfg, sched, spe = run.cfg, run.schedule, run.steps_per_epoch
    step = ep.index * spe + i
    # one clock and one stop signal for every rank (under torchrun a Gloo all-reduce on the host)
    run.signum, spent = run.ctx.agree(run.stop.signum(), run.state.elapsed + ep.seconds(run.clock))
    if sched.out_of_time(spent):
        return _SPENT
    sched.advance(step, spent)  # under a budget the schedule follows the time spent
    run.steps_done = step + 1
    lr = sched.lr(step)
    run.method.set_progress(step, sched.total_steps, spe)
    if cfg.progressive is not None:
        run.method.set_view_size(sched.view_size(step, spent))
    _account(run, ep, step, lr, run.step(batch, ep.gen, ep.rng, lr))
    interrupted = run.signal() != 0  # read once: a signal arriving later is handled after the next step
    run.paused = run.paused or (cfg.stop_at is not None and spent >= cfg.stop_at)  # the clock at this step's start
    end_of_epoch = i + 1 == spe
    save_now = not end_of_epoch and (interrupted or run.paused or
                                     (cfg.checkpoint_every is not None and (step + 1) % cfg.checkpoint_every == 0))
    if (i + 1) % cfg.log_every == 0 or end_of_epoch or save_now:
        rows = _flush(run, ep)
        if rows:
            rate = (i + 1 - ep.first) * cfg.batch_size / (run.clock() - ep.started)
            bar.set_postfix(loss=f"{rows[-1][3]:.4f}", img_s=f"{rate:.0f}")
    if save_now:
        ep.saved_at = ep.seconds(run.clock)
        _checkpoint(run, replace(run.state, step_in_epoch=i + 1, gen_state=ep.gen.get_state(),
                                 np_rng_state=ep.rng.bit_generator.state, epoch_losses=ep.losses,
                                 epoch_seconds=ep.saved_at))
    run.notify("on_step_end")
    return _STOP if interrupted or run.paused else None


def _account(run: Run, ep: _Epoch, step: int, lr: float, result: StepResult) -> None:
    """The step's log row, or (--on-nan skip) its count as skipped; too many skipped in a row stop the run."""
    if result.skipped is None:
        run.log.add(ep.index, step, lr, result.values())
        run.skips_in_a_row = 0
        return
    run.state.skipped_steps += 1
    run.skips_in_a_row += 1
    if run.ctx.is_main:
        tqdm.write(f"leanssl: step {step}: {result.skipped}; batch skipped (--on-nan skip)", file=sys.stderr)
    if run.skips_in_a_row >= MAX_SKIPS_IN_A_ROW:
        raise diverged(f"{run.skips_in_a_row} batches in a row diverged (the last: {result.skipped})", step, ep.index,
                       lr, run.precision, run.folder.checkpoint_path)


def _flush(run: Run, ep: _Epoch) -> list[tuple]:
    """Write the pending log rows and stop at a diverged one (once per flush: the host syncs only here)."""
    rows = run.log.flush()
    check_rows(rows, run.cfg.grad_norm_limit, run.precision, run.folder.checkpoint_path)
    ep.losses += [r[3] for r in rows]
    return rows


def _checkpoint(run: Run, state: RunState) -> None:
    """Write `state`'s checkpoint. Under torchrun the ranks first check that their replicas agree, then rank 0
    alone writes, and every rank learns whether it could (a full disk stops them all)."""
    state = replace(state, rate_from=run.schedule.rate_from,
                    peak_mem_mb=max(state.peak_mem_mb, peak_memory_mb(run.device)))
    run.ctx.check_replicas(run.method)
    run.ctx.on_main(lambda: run.folder.save_checkpoint(state.checkpoint(run.method, run.opt, asdict(run.cfg))))


def _end_epoch(run: Run, ep: _Epoch, steps: int, budget_spent: bool) -> bool:
    """The finished epoch's row in epochs.csv, its line and its checkpoint; False when the run stops here."""
    cfg, state = run.cfg, run.state
    seconds = ep.seconds(run.clock)
    # the ranks' clocks differ a little: they go on with the slowest one's
    run.signum, state.elapsed = run.ctx.agree(run.stop.signum(), state.elapsed + seconds)
    state.end_epoch(float(np.mean(ep.losses)) if ep.losses else math.nan, steps * cfg.batch_size)
    budget_spent = budget_spent or run.schedule.out_of_time(state.elapsed)
    rate = (steps - ep.first) * cfg.batch_size / max(seconds - ep.seconds_before, 1e-9)
    if run.ctx.is_main:
        run.folder.append_epoch(state.epoch, state.loss, seconds, rate, peak_memory_mb(run.device))
        if cfg.progress:
            which = f"{state.epoch}/{cfg.epochs}" if cfg.time_budget is None else \
                f"{state.epoch} ({_budget_left(cfg, state.elapsed)} left)"
            tqdm.write(f"epoch {which}  loss {state.loss:.4f}  {rate:.0f} img/s  {seconds:.1f}s")
    _checkpoint(run, state)
    run.notify("on_epoch_end")
    return not (run.signal() or budget_spent or run.paused)


def _budget_left(cfg: TrainConfig, elapsed: float) -> str:
    left = max(0.0, cfg.time_budget - elapsed)
    return f"{left / 60:.1f} min" if left >= 60 else f"{left:.0f} s"


# -- finish ----------------------------------------------------------------------------------------

def _finish(run: Run) -> dict:
    """The backbone (once the run is complete) and the summary; TrainingInterrupted after a signal."""
    cfg, state, ctx = run.cfg, run.state, run.ctx
    done = state.epoch >= cfg.epochs or run.schedule.out_of_time(state.elapsed)
    if done and ctx.is_main:
        run.folder.write_backbone(run.method.backbone)
    signum = run.signal()
    interrupted_by = signal.Signals(signum).name if signum else None
    summary = json_safe({
        "method": cfg.method, "backbone": cfg.backbone, "data": cfg.data, "fraction": cfg.fraction,
        "train_images": run.images, "epochs_done": state.epoch, "steps_done": run.steps_done, "epochs": cfg.epochs,
        "complete": done,
        "final_loss": state.loss, "train_seconds": state.elapsed + run.partial,  # + a stopped epoch's part
        "images_seen": state.images_seen, "time_budget": cfg.time_budget,
        "images_per_s": (state.images_seen / state.elapsed) if state.elapsed and state.images_seen else None,
        "peak_mem_mb": max(state.peak_mem_mb, peak_memory_mb(run.device)),  # over all invocations
        "device": str(run.device), "precision": run.precision, "compiled": cfg.compile, "processes": ctx.world,
        "skipped_images": run.skipped_images, "skipped_steps": state.skipped_steps, "interrupted": interrupted_by})
    if ctx.is_main:
        run.folder.write_summary(summary)
    if interrupted_by is not None:
        raise TrainingInterrupted(summary)
    return summary
