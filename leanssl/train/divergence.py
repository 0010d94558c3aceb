"""When a run has diverged (a non-finite loss or gradient norm, or a norm above --grad-norm-limit), and what it says."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import LeansslError

# --on-nan skip: this many diverged batches in a row stop the run anyway (skipping is for rare bad batches).
MAX_SKIPS_IN_A_ROW = 20


def divergence(loss: float, grad_norm: float, limit: float | None) -> str | None:
    """What is wrong with a step's loss and total gradient norm, or None."""
    if not math.isfinite(loss):
        return f"loss became {loss}"
    if not math.isfinite(grad_norm):
        return f"gradient norm became {grad_norm}"
    if limit is not None and grad_norm > limit:
        return f"gradient norm {grad_norm:.4g} exceeded --grad-norm-limit {limit:g}"
    return None


def diverged(why: str, step: int, epoch: int, lr: float, precision: str, ckpt: Path) -> LeansslError:
    prec = ", or --precision fp32 (bf16 autocast is on)" if precision == "bf16" else ""
    kept = f"the last good checkpoint ({ckpt}) is intact" if ckpt.exists() else "no checkpoint had been written yet"
    return LeansslError(f"{why} at step {step} (epoch {epoch + 1}, lr {lr:.4g}): the run diverged; "
                        f"try a lower --lr{prec}, or --on-nan skip to skip such batches; {kept}")


def check_rows(rows: list[tuple], limit: float | None, precision: str, ckpt: Path) -> None:
    """Stop at the first logged step (epoch, step, lr, loss, grad_norm) whose loss or gradient norm diverged
    (checked once per log flush)."""
    for epoch, step, lr, loss, grad_norm in rows:
        why = divergence(loss, grad_norm, limit)
        if why is not None:
            raise diverged(why, step, epoch, lr, precision, ckpt)
