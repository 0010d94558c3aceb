"""Training on several devices and machines: torchrun, one process per device, DistributedDataParallel.

`torchrun --nproc-per-node G [--nnodes N ...] -m leanssl train ...` starts G·N copies of the same
command and sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT) in each; `init_from_env`
joins them into one process group (NCCL on CUDA, Gloo on CPU). In one process (no torchrun, or
WORLD_SIZE=1) nothing is initialised and every helper here is the identity, so the single-process
path runs exactly the code it ran before.

What the rest of leanssl gets from here:
- the rank-aware collectives the methods need: `gather` (rows of every rank, in rank order, with
  gradient when a contrastive loss scores negatives from other ranks), `sum_over_ranks` (idem for a
  sum: Barlow Twins' correlation, TWIST's batch mean), `gather_uneven` (calibration's last batch);
- `BatchShard` and `sharded`: the step's global batch and this rank's slice of it. Random draws of
  a step (augmentation parameters, sampled negatives) are made for the *global* batch on every rank,
  from the epoch's generator (in the same state on every rank), and each rank keeps its rows; so a G-process run draws exactly
  what one process draws at the same global batch, and the replicated state (bank, queue) stays equal;
- `DistContext`: the group, `on_main` (rank 0 does it, every rank gets the result or its error),
  `agree` (one clock and one stop signal for all ranks), `check_replicas`, `wrap`
  (DistributedDataParallel around a Method), and the group's timeout: a collective that waits
  longer than `--dist-timeout` for a rank (dead, or hung) raises, and `peer_failure` turns that
  into one line; `SingleProcess`, its stand-in in one process (what `init_from_env` returns there);
- `convert_sync_batchnorm` (--sync-bn).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .errors import LeansslError

# The decode-once cache is built by one process per machine while the others wait; building it for a
# large source takes hours, far longer than a collective may take (--dist-timeout).
DATA_WAIT = datetime.timedelta(days=1)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


# --------------------------------------------------------------------------------------------
# Collectives over the rows of the global batch (identities in one process)


class _Gather(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient of this rank's rows (an all-reduce of
    the gathered gradient, then this rank's slice): the loss of every rank reaches each row's owner."""

    @staticmethod
    def forward(ctx, t):
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous().clone()
        dist.all_reduce(g)
        return g.chunk(dist.get_world_size())[dist.get_rank()]


class _AllReduce(torch.autograd.Function):
    """Sum over ranks; the backward is the same sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, t):
        t = t.contiguous().clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous().clone()
        dist.all_reduce(g)
        return g


def gather(t: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """Every rank's `t` (same shape on each), concatenated along dim 0 in rank order.

    With `grad`, the backward pass sums every rank's gradient for this rank's rows into `t`'s
    gradient, so a loss that scores the other ranks' rows as negatives gives each rank the full
    gradient of its own rows, as in one process.
    """
    if world_size() == 1:
        return t
    if grad:
        return _Gather.apply(t)
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def gather_uneven(t: torch.Tensor) -> torch.Tensor:
    """`gather` for row counts that differ between ranks (calibration's last batch); no gradient."""
    if world_size() == 1:
        return t
    counts = gather(torch.tensor([t.shape[0]], device=t.device)).tolist()
    padded = t.new_zeros((max(counts),) + t.shape[1:])
    padded[: t.shape[0]] = t
    return torch.cat([part[:n] for part, n in zip(gather(padded).split(max(counts)), counts)])


def sum_over_ranks(t: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """Σ over ranks of `t`. With `grad`, differentiable (the backward sums the ranks' gradients)."""
    if world_size() == 1:
        return t
    if grad:
        return _AllReduce.apply(t)
    t = t.clone()
    dist.all_reduce(t)
    return t


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The ranks' mean of `t` (no gradient): averaged gradients, per-step logs."""
    return t if world_size() == 1 else sum_over_ranks(t) / world_size()


def batch_mean(t: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """Mean over the rows of the *global* batch (every rank holds the same number of rows)."""
    if world_size() == 1:
        return t.mean(0)
    return sum_over_ranks(t.sum(0), grad) / (t.shape[0] * world_size())


# --------------------------------------------------------------------------------------------
# The step's global batch and this rank's share of it


@dataclass(frozen=True)
class BatchShard:
    """One step's global batch (`global_idx`, the dataset indices of all ranks' rows in rank order)
    and this rank's contiguous share of it: rows offset .. offset + local."""

    rank: int
    world: int
    global_idx: torch.Tensor

    @property
    def local(self) -> int:
        return self.global_idx.numel() // self.world

    @property
    def offset(self) -> int:
        return self.rank * self.local

    def rows(self, n: int, device) -> tuple[torch.Tensor, int]:
        """Where this rank's `n` rows sit among the global batch's rows: (positions, global count).

        A tensor of m·local rows is m blocks of the local batch (the views of `x.repeat(m, ...)`,
        multi-crop), whose global counterpart is m blocks of the global batch.
        """
        m, rest = divmod(n, self.local)
        if rest or m == 0:  # not a multiple of the batch: one contiguous share of n·world rows
            return torch.arange(self.rank * n, (self.rank + 1) * n, device=device), n * self.world
        block = torch.arange(m, device=device).unsqueeze(1) * self.global_idx.numel()
        return (block + self.offset + torch.arange(self.local, device=device)).flatten(), m * self.global_idx.numel()


_SHARD: contextvars.ContextVar[BatchShard | None] = contextvars.ContextVar("leanssl_batch_shard", default=None)


def batch_shard() -> BatchShard | None:
    """The current step's shard, or None in one process (and outside a training step)."""
    return _SHARD.get()


@contextlib.contextmanager
def sharded(shard: BatchShard | None):
    """Within this block, `batch_shard()` is `shard` (nothing changes for None)."""
    token = _SHARD.set(shard)
    try:
        yield
    finally:
        _SHARD.reset(token)


# --------------------------------------------------------------------------------------------
# The process group


@dataclass
class DistContext:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    timeout: float
    control: object  # a Gloo group for host-side values (clock, signals, checks): no GPU sync
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj, src: int = 0):
        """`obj` of rank `src` on every rank (pickled; tensors travel too)."""
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def on_main(self, fn):
        """Run `fn` on rank 0 alone; every rank returns its result, or raises its LeansslError."""
        result = error = None
        if self.is_main:
            try:
                result = fn()
            except LeansslError as e:
                error = str(e)
        error, result = self.broadcast((error, result))
        if error is not None:
            raise LeansslError(error)
        return result

    def main_first(self, fn):
        """Run `fn` on each machine's first process, then (with its result cached) on the others:
        the decode-once cache is built once per machine, not by every process at the same time."""
        first = self.local_rank == 0
        try:
            result = fn() if first else None
        finally:  # reached on an error too, so the others go on and meet the same error themselves
            dist.monitored_barrier(self.control, timeout=DATA_WAIT)
        return result if first else fn()

    def agree(self, signum: int, seconds: float) -> tuple[int, float]:
        """(a signal any rank received, or 0; the largest clock reading): one Gloo all-reduce on the host.

        The ranks must take the same decisions (stop now, the time budget is spent, the schedule's
        length) or their collectives stop matching; so they act on agreed values, not on their own.
        """
        t = torch.tensor([float(signum), seconds], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return int(t[0]), float(t[1])

    def check_replicas(self, module: nn.Module) -> None:
        """Every rank must hold the same replicated state (weights, bank, queues, teachers); a
        fingerprint of each tensor (its float64 sum) is compared with rank 0's before a checkpoint.
        BatchNorm running statistics are per rank without --sync-bn and are left out."""
        names, sums = [], []
        for name, v in module.state_dict().items():
            if "running_" in name or "num_batches" in name or not v.is_floating_point():
                continue
            names.append(name)
            sums.append(v.detach().double().sum())
        if not sums:
            return
        mine = torch.stack(sums).cpu()
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine, group=self.control)
        for r, theirs in enumerate(parts[1:], start=1):
            bad = ~torch.isclose(theirs, parts[0], rtol=1e-6, atol=1e-6)
            if bad.any():
                name = names[int(bad.nonzero()[0])]
                raise LeansslError(f"rank {r}'s copy of '{name}' differs from rank 0's: the replicas diverged "
                                   "(a bug in leanssl's distributed code; please report it with the command line)")

    def signal_now(self, mine: int, agreed: int) -> int:
        """The stop signal to act on: the one the ranks last agreed on (one that reached a rank since then
        is agreed at the next step's start, so every rank stops after the same step)."""
        return agreed

    def wrap(self, method: nn.Module) -> nn.Module:
        """DistributedDataParallel around a Method (whose `forward` is its training_step).

        DDP fits the Method structure once `forward` is `training_step`: the bank, queues and teachers
        are buffers or frozen modules that DDP leaves alone, and it overlaps the gradient all-reduce with
        the backward pass (bucket by bucket), which an all-reduce after `backward()` could not.
        - gradients are averaged over ranks in buckets during the backward pass; each rank's loss is the
          mean over its rows, so the average is the gradient of the global batch's mean loss;
        - broadcast_buffers=False: DDP would otherwise copy every buffer of rank 0 to the others before
          each forward, the memory bank and queues included (a 1.28M-row bank: 655 MB per step); those are
          kept equal by the methods' own all-gathers instead;
        - find_unused_parameters only for methods that freeze a layer for a while (SwAV's prototypes,
          DINO's last layer in epoch 1): it costs a walk of the graph per step.
        """
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # Newer torch names the per-forward buffer copy forward_sync_buffers (buffers are still synced once at start).
        no_copy = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters \
            else "broadcast_buffers"
        return DistributedDataParallel(method, device_ids=ids, find_unused_parameters=getattr(method, "ddp_find_unused", False),
                                       **{no_copy: False})

    def sharded(self, batch: tuple) -> contextlib.AbstractContextManager:
        """The step's context: this rank's share of the global batch (batch[2]), whose indices the method
        may need (bank columns)."""
        return sharded(BatchShard(self.rank, self.world, batch[2]))

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class SingleProcess:
    """DistContext's stand-in in one process (rank 0 of 1), so the loop reads the same either way: every
    decision is this process's own, and nothing is wrapped, gathered or waited for."""

    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    is_main: bool = True

    def on_main(self, fn):
        return fn()

    def main_first(self, fn):
        return fn()

    def agree(self, signum: int, seconds: float) -> tuple[int, float]:
        return signum, seconds

    def signal_now(self, mine: int, agreed: int) -> int:
        """The signal received so far: in one process it is acted on after the step it arrived in."""
        return mine

    def check_replicas(self, module: nn.Module) -> None:
        pass

    def wrap(self, method: nn.Module) -> nn.Module:
        return method

    def sharded(self, batch: tuple) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def close(self) -> None:
        pass


def launched() -> bool:
    """Whether this process is one of several started by torchrun (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device, timeout: float) -> DistContext | SingleProcess:
    """Join the torchrun job this process belongs to; in one process, its SingleProcess stand-in.

    `device` is the resolved --device: on CUDA each process takes GPU LOCAL_RANK and the group
    uses NCCL, on CPU Gloo. A collective that waits more than `timeout` seconds raises (Gloo), or
    NCCL's watchdog ends the process; either way no rank hangs on a dead one.
    """
    if not launched():
        return SingleProcess(device)
    try:
        world, rank_, local = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    except (KeyError, ValueError) as e:
        raise LeansslError(f"WORLD_SIZE is set but the torchrun variables are incomplete ({e}): start with torchrun") from None
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise LeansslError(f"LOCAL_RANK {local} but {torch.cuda.device_count()} GPU(s) visible: "
                               "start at most one process per GPU (torchrun --nproc-per-node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as e:
            raise LeansslError(f"rank {rank_}: cannot join the other {world - 1} process(es) within {timeout:g} s "
                               f"({_first_line(e)})") from None
    elif dist.get_world_size() != world:
        raise LeansslError(f"a process group of {dist.get_world_size()} is initialised but WORLD_SIZE is {world}")
    backend = dist.get_backend()
    control = dist.group.WORLD if backend == "gloo" else dist.new_group(
        backend="gloo", timeout=datetime.timedelta(seconds=timeout))
    return DistContext(rank_, world, local, device, timeout, control, owns)


def is_peer_failure(e: BaseException) -> bool:
    """A collective that failed because another rank died, hung or closed its connection."""
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(s in text for s in (
        "Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "Gloo", "NCCL",
        "ProcessGroup", "Broken pipe"))


def peer_failure(e: BaseException, ctx: DistContext, checkpoint: Path) -> LeansslError:
    """The one-line error a surviving rank exits with (`checkpoint`: the run's checkpoint file)."""
    kept = f"the last checkpoint in {checkpoint.parent} is intact (continue with --resume)" if checkpoint.exists() \
        else "no checkpoint had been written yet"
    return LeansslError(f"rank {ctx.rank} of {ctx.world}: lost another rank ({_first_line(e)}): a process died, or "
                        f"hung past --dist-timeout {ctx.timeout:g} s (its own output says why); {kept}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if text.startswith("[") and "] " in text:  # Gloo prefixes its source file and line
        text = text.split("] ", 1)[1]
    return text.split(". This is typically")[0][:200]


# --------------------------------------------------------------------------------------------
# BatchNorm across ranks


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """SyncBatchNorm for CPU tensors (Gloo), which torch's refuses (and DDP refuses its SyncBatchNorm on
    CPU modules): the batch statistics come from two differentiable all-reduces (the sums, then the
    squared deviations from the global mean), so the forward and backward are those of one BatchNorm
    over the global batch. In eval mode, or in one process, it is plain BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {x.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.new_full((1,), x.numel() / x.shape[1])
        sums = sum_over_ranks(torch.cat([x.sum(dims), count]), grad=True)
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean.view(shape)
        var = sum_over_ranks(centred.pow(2).sum(dims), grad=True) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1), m)  # unbiased, as BatchNorm keeps it
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """--sync-bn: every BatchNorm (teachers and key encoders included) normalises over the global batch:
    torch's SyncBatchNorm on GPUs, CpuSyncBatchNorm on CPU. Parameters and buffers are kept (the
    same tensors), so the state dict and the checkpoint do not change."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        new = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        for name, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            setattr(new, name, t)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module
