"""Continuing a run from its checkpoint: the same run (data, method, seed...), the same schedule, a state that fits."""

from __future__ import annotations

import torch

from ..checks import check_finite
from ..errors import LeansslError
from ..runfolder import RunFolder
from .config import _RUN_IDENTITY, TrainConfig, config_from_dict
from .state import MID_EPOCH, REQUIRED


def open_checkpoint(cfg: TrainConfig, folder: RunFolder, resume: bool) -> dict | None:
    """The checkpoint to resume from (checked against cfg), or None for a fresh run."""
    if not resume:
        return None  # the folder's claim has checked that it may take a fresh run
    state = folder.load_checkpoint()  # the folder's claim has checked that there is one
    saved = config_from_dict(state.get("config"), folder.checkpoint_path)
    if cfg.resolution is None:
        cfg.resolution = saved.resolution
    if cfg.batch_size is None:  # not given: the run's own (a default that changed since does not break a resume)
        cfg.batch_size = saved.batch_size
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


def restore(method: torch.nn.Module, opt: torch.optim.Optimizer, state: dict, path) -> None:
    """Load a checkpoint into the method, the optimizer and torch's generator; one that does not fit this run
    is a LeansslError."""
    def misfit(detail: str) -> LeansslError:
        return LeansslError(f"--resume: {path} does not fit this run ({detail})")

    missing = [k for k in REQUIRED + (MID_EPOCH if state.get("step_in_epoch") else ()) if k not in state]
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
    torch.set_rng_state(state["torch_rng"])


def resume_line(cfg: TrainConfig, step: int, total_steps: int, epoch: int, elapsed: float) -> str:
    if cfg.time_budget is not None:
        done, where = elapsed >= cfg.time_budget, f"{elapsed:.0f} s of the {cfg.time_budget:g} s budget spent, step {step}"
    else:
        done, where = step >= total_steps, f"step {step} of {total_steps}, {epoch} of {cfg.epochs} epochs done"
    return f"leanssl: this run had already finished ({where}): nothing to train" if done else f"leanssl: resuming ({where})"
