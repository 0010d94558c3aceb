"""The SSQL term (Cao & Wu et al., "Synergistic Self-supervised and Quantization Learning", ECCV 2022).

A backbone that keeps its accuracy when quantised: besides the method's loss, every step runs the
same view through a fake-quantised copy of the forward — weights rounded per output channel and
the inputs of every conv / linear layer rounded per tensor, at a bit-width drawn at random per
step — and pulls its embedding to the full-precision embedding of that view (stop-gradient on the
full-precision side):

    L += w · mean(2 − 2·cos(g(f_b(v)), sg(g(f(v)))))     b ~ U{lo, …, hi}

There is one copy of the weights: the quantised forward calls the backbone with rounded versions of
its own parameters (torch.func.functional_call), and the rounding's gradient is the straight-through
estimator (torch's fake-quantisation ops), so the term's gradient lands on the full-precision
weights. BatchNorm normalises the quantised forward with its own batch statistics and updates copies
of the running statistics, so evaluation sees those of the full-precision network.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LeansslError

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def check_bits(bits) -> tuple[int, int]:
    try:
        lo, hi = (int(b) for b in bits)
    except (TypeError, ValueError):
        lo = hi = 0
    if not 2 <= lo <= hi <= 8:
        raise LeansslError(f"ssql_bits must be two bit-widths lo,hi with 2 <= lo <= hi <= 8, got {bits!r}")
    return lo, hi


def fake_quant_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel rounding to the 2^bits − 1 levels −qmax..qmax (max |w| maps to qmax exactly,
    so no weight sits on a rounding tie); straight-through gradient."""
    qmax = 2 ** (bits - 1) - 1
    scale = (w.detach().abs().flatten(1).amax(1).clamp_min(1e-8) / qmax).float()
    return torch.fake_quantize_per_channel_affine(w, scale, torch.zeros_like(scale, dtype=torch.int32), 0, -qmax, qmax)


def fake_quant_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-tensor affine rounding over the batch's own range (which includes 0); straight-through gradient."""
    qmax = 2 ** bits - 1
    lo, hi = x.detach().min().clamp(max=0).float(), x.detach().max().clamp(min=0).float()
    scale = ((hi - lo) / qmax).clamp_min(1e-8)
    zero = torch.clamp(torch.round(-lo / scale), 0, qmax).int()
    return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, qmax)


@contextmanager
def _quantized_inputs(module: nn.Module, bits: int):
    """While active, every conv / linear layer of `module` sees its input rounded to `bits`."""
    def hook(_, args):  # under autocast the input may be bf16: round in float32
        return (fake_quant_activation(args[0].float(), bits).to(args[0].dtype),) + args[1:]

    hooks = [m.register_forward_pre_hook(hook)
             for m in module.modules() if isinstance(m, _LAYERS)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def quantized_forward(backbone: nn.Module, v: torch.Tensor, bits: int) -> torch.Tensor:
    """The backbone's features with weights and layer inputs fake-quantised to `bits`, from its one weight copy."""
    weights = {f"{name}.weight": fake_quant_weight(m.weight, bits)
               for name, m in backbone.named_modules() if isinstance(m, _LAYERS)}
    # BatchNorm updates copies of its running statistics, so those of the full-precision network stay as they are
    stats = {n: b.clone() for n, b in backbone.named_buffers() if "running_" in n or "num_batches" in n}
    with _quantized_inputs(backbone, bits):
        return torch.func.functional_call(backbone, {**weights, **stats}, (v,), strict=False)


def ssql_term(backbone: nn.Module, head: nn.Module, v: torch.Tensor, z_full: torch.Tensor, bits: int) -> torch.Tensor:
    """2 − 2·cos between the quantised embedding of `v` and its full-precision embedding `z_full` (not differentiated)."""
    z_q = head(quantized_forward(backbone, v, bits))
    return (2 - 2 * F.cosine_similarity(z_q.float(), z_full.detach().float(), dim=1)).mean()


def draw_bits(rng, bits: tuple[int, int]) -> int:
    """This step's bit-width, from the host generator (no device sync)."""
    lo, hi = check_bits(bits)
    return int(rng.integers(lo, hi + 1))
