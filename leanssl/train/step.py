"""One training step, as the loop takes it (and benchmarks/throughput.py times it): forward under autocast,
backward, the total gradient norm, then the optimizer step and the method's after-step update."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import accel, distributed
from .divergence import divergence


@dataclass
class StepResult:
    loss: torch.Tensor      # on the device, not synchronised (under torchrun: this process's share's mean)
    logs: dict              # the method's extra terms ("ce", "kl"), device tensors
    grad_norm: torch.Tensor
    skipped: str | None     # why the batch was skipped as diverged (--on-nan skip), else None

    def values(self) -> torch.Tensor:
        """(loss, ce, kl, grad_norm) in one device tensor, NaN for a term the method has not: what the log keeps."""
        nan = torch.full_like(self.loss, float("nan"))
        return torch.stack([self.loss.detach().float()] + [self.logs.get(k, nan).float() for k in ("ce", "kl")]
                           + [self.grad_norm.float()])


class TrainStep:
    """The step of a method and its optimizer in a process context (leanssl.distributed: DDP under torchrun).

    With `skip_diverged` (--on-nan skip) a batch whose loss or gradient norm diverged leaves no trace: no
    optimizer step, no after-step update (bank, teacher, queue), BatchNorm statistics restored. Deciding
    that needs the values on the host, so that mode synchronises every step; otherwise a step never does.
    """

    def __init__(self, method: torch.nn.Module, opt: torch.optim.Optimizer, ctx, precision: str,
                 skip_diverged: bool = False, grad_norm_limit: float | None = None):
        self.method, self.opt, self.ctx = method, opt, ctx
        self.model = ctx.wrap(method)  # DistributedDataParallel under torchrun
        self.autocast = accel.autocast(ctx.device, precision)
        self.params = [p for p in method.parameters() if p.requires_grad]
        self.norm_stats = [b for n, b in method.named_buffers() if "running_" in n or "num_batches" in n] \
            if skip_diverged else []
        self.skip_diverged, self.grad_norm_limit = skip_diverged, grad_norm_limit

    def __call__(self, batch: tuple, gen: torch.Generator, rng, lr: float) -> StepResult:
        """`batch` as the loader's `shards` give it: (images, their indices, the global batch's indices)."""
        for g in self.opt.param_groups:
            g["lr"] = lr
        saved = [b.clone() for b in self.norm_stats]
        with self.autocast, self.ctx.sharded(batch):
            loss, logs = self.model(batch[0], batch[1], gen, rng)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        why = None
        if self.skip_diverged:
            check = torch.stack([distributed.mean_over_ranks(loss.detach().float()), grad_norm.float()])
            why = divergence(*check.tolist(), self.grad_norm_limit)
        if why is None:
            self.opt.step()
            self.method.after_step()
        else:
            for b, s in zip(self.norm_stats, saved):
                b.copy_(s)
        return StepResult(loss, logs, grad_norm, why)
