"""`essl`: single-branch non-parametric instance discrimination (Cao & Wu, arXiv 2404.19289).

One augmented view per image per step. Each image is its own class; the class weights are a
memory bank of L2-normalised features (docs/method.md has the formulas, the recipe and every deviation):

    z = normalize(g(f(cutmix(aug(x)))))          s = z · W[C]ᵀ,  C = batch rows ∪ k sampled rows
    L = λ·CE(s/τ, r) + (1-λ)·CE(s/τ, π(r)) + λ_KL · SqrtKL(softmax(s))

then the bank rows are updated without gradient, by EMA or by the paper's gradient step.
Every addition can be switched off; `npid` is this method with all of them off.

Under torchrun every rank holds the whole bank and keeps it equal to the others': the columns C
are drawn from the global batch with the step's shared generator (the same on every rank), each
rank scores its own rows against them, and the update uses every rank's rows (the ema rule
all-gathers features, the grad rule averages dL/dW[C] over ranks); the calibration pass is split
across ranks and all-gathered. A G-process run then equals one process at the same global batch,
except for CutMix, which pairs images within each rank's share (as timm's Mixup and the authors'
DDP code do): moving pixels between devices every step would cost more than it buys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Choice, Range, checked
from .. import distributed
from ..bank import MemoryBank
from ..models.heads import mlp
from ..options import opt
from .base import Method
from .ssql import check_bits, draw_bits, ssql_term


@dataclass
@checked(dim=AT_LEAST_1, proj_hidden=AT_LEAST_1, negatives=NON_NEGATIVE, tau=POSITIVE, kl_weight=NON_NEGATIVE,
         cutmix_alpha=NON_NEGATIVE, bank_momentum=Range(0, 1, hi_open=True), bank_lr=POSITIVE,
         bank_update=Choice(("grad", "ema")), calibrate_views=Choice(("plain", "augmented")), ssql_weight=NON_NEGATIVE)
class EsslConfig:
    dim: int = opt(128, "bank / projection width D (paper 2048; NPID's 128 costs 16x less per scored column)")
    proj_hidden: int | None = opt(None, "projection MLP hidden width (default: 2048, the paper's, for >= 512-d "
                                        "backbones, else 4x the backbone's width)")
    negatives: int = opt(10000, "k bank rows sampled as negatives per step (paper 10000; all rows when N <= k + B)")
    tau: float = opt(0.3, "temperature of the instance-discrimination CE on cosines (the paper: 0.2; 0.3 won "
                                "leanssl's short-run sweep)")
    kl_weight: float = opt(20.0, "λ_KL of SqrtKL self-distillation (0: off)")
    cutmix_alpha: float = opt(0.5, "CutMix Beta(α, α) (0: off)")
    cutmix_half: bool = opt(True, "CutMix λ = max(λ, 1 − λ) as the authors do: the pasted box is at most half "
                                  "(ablation: off)")
    bank_update: str = opt("grad", "bank update rule: grad (the paper's correction) or ema (NPID, the authors' code)")
    bank_momentum: float = opt(0.5, "m of the ema bank rule")
    bank_lr: float = opt(0.1, "η of the grad bank rule (per-sample summed-loss convention, bank.update_grad)")
    kl_to_bank: bool = opt(False, "let SqrtKL's gradient reach the bank in the grad rule (ablation)")
    calibrate: bool = opt(True, "feature-calibrated bank initialisation: one pass of the untrained network fills "
                                "every row before epoch 1 (off: random rows)")
    calibrate_views: str = opt("plain", "calibration images: plain (un-augmented) or augmented (the training view, "
                                        "shuffled, as the authors)")
    ssql_weight: float = opt(0.0, "weight of the SSQL quantisation term (methods/ssql.py; 0: off)")
    ssql_bits: tuple = opt((2, 8), "the SSQL term's bit-width range, one drawn per step, e.g. 2,8")


def sqrt_kl(s: torch.Tensor) -> torch.Tensor:
    """SqrtKL self-distillation: KL(p ‖ sg(normalize_L1(√p))), p = softmax(s), averaged over rows.

    The target is p flattened (square root, renormalised), so minimising the KL spreads
    probability, and with it gradient, over many bank columns.
    """
    logp = F.log_softmax(s.float(), dim=1)
    logu = (0.5 * logp - torch.logsumexp(0.5 * logp, dim=1, keepdim=True)).detach()
    return (logp.exp() * (logp - logu)).sum(1).mean()


class _BankLogits(torch.autograd.Function):
    """s = z·Wᵀ computed once and returned twice: the first copy's gradient reaches z and W, the
    second's (SqrtKL's, which must not move the bank) only z.

    Autograd would need a second product z·sg(W)ᵀ for the second copy and a second backward
    product for its dz; this does one forward and two backward products instead of five
    (measured: BENCHMARKS.md, "essl's CPU step"). Under autocast the backward products run in the
    forward's dtype, as autocast's own mm would.
    """

    @staticmethod
    def forward(ctx, z, w):
        s = z @ w.t()
        ctx.save_for_backward(z, w)
        ctx.dtype = s.dtype
        return s, s.detach()

    @staticmethod
    def backward(ctx, g_both, g_z_only):
        z, w = ctx.saved_tensors
        dt = ctx.dtype
        g = g_both if g_z_only is None else (g_z_only if g_both is None else g_both + g_z_only)
        dz = (g.to(dt) @ w.to(dt)).to(z.dtype) if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1] and g_both is not None:
            dw = (g_both.to(dt).t() @ z.to(dt)).to(w.dtype)
        return dz, dw


def bank_logits(z: torch.Tensor, w: torch.Tensor, kl_to_bank: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, s_kl): the same cosines z·Wᵀ; s_kl's gradient reaches z only (see _BankLogits), unless
    `kl_to_bank` (the ablation) or the bank rows take no gradient (the ema rule)."""
    if kl_to_bank or not w.requires_grad:
        s = z @ w.t()
        return s, s
    return _BankLogits.apply(z, w)


def cutmix(v: torch.Tensor, alpha: float, rng: np.random.Generator, gen: torch.Generator,
           half: bool = True) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Paste a box of image π(r) into image r. Returns the mixed batch, π and λ (the kept area).

    λ ~ Beta(α, α), then λ = max(λ, 1 − λ) as in the authors' `cutmix_data`, so the pasted box
    covers at most half the image and the positive stays mostly the image itself. λ and the box
    come from the host RNG, so no device sync is needed; λ is then corrected to the box's true
    area after clipping at the border. Under torchrun π permutes each
    rank's rows (one permutation per rank, all drawn on every rank so the generators stay in step).
    """
    b, _, h, w = v.shape
    lam = rng.beta(alpha, alpha)
    if half:  # the authors' cutmix_data: the pasted box is never the larger part
        lam = max(lam, 1.0 - lam)
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = rng.integers(h), rng.integers(w)
    y1, y2 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x1, x2 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    shard = distributed.batch_shard()
    if shard is None:
        perm = torch.randperm(b, generator=gen, device=v.device)
    else:
        perm = torch.rand(shard.world, b, generator=gen, device=v.device).argsort(dim=1)[shard.rank]
    mixed = v.clone()
    mixed[:, :, y1:y2, x1:x2] = v[perm, :, y1:y2, x1:x2]
    lam = 1.0 - (y2 - y1) * (x2 - x1) / (h * w)
    return mixed, perm, lam


class ESSL(Method):
    name = "essl"
    description = "single-branch instance discrimination against a memory bank, with SqrtKL and CutMix"
    Config = EsslConfig
    default_batch_size = 128  # more steps per epoch: +0.6 kNN on 10% Fashion-MNIST, +2.1 on digits (2 seeds)

    def __init__(self, backbone, data, cfg: EsslConfig | None = None, aug=None):
        super().__init__(backbone, data, aug)
        self.cfg = cfg = cfg or self.Config()
        check_bits(cfg.ssql_bits)
        width = backbone.out_dim
        hidden = cfg.proj_hidden or (2048 if width >= 512 else 4 * width)
        self.head = mlp(width, hidden, cfg.dim)
        self.bank = MemoryBank(data.num_images, cfg.dim)
        self._pending: tuple | None = None

    def embed(self, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(v)), dim=1)

    @torch.no_grad()
    def setup(self, loader, batch_size: int) -> None:
        """Feature calibration: one no-grad pass of the untrained network fills every bank row.

        The pass runs in train mode so BatchNorm normalises with batch statistics, as in the
        training forward, and the running statistics it would disturb are restored afterwards.
        `calibrate_views="augmented"` fills rows from the training augmentation over shuffled
        batches, as the authors' script does (their loader drops the last batch; every row is filled here).
        """
        if not self.cfg.calibrate:
            return
        saved = {k: v.clone() for k, v in self.state_dict().items() if "running_" in k or "num_batches" in k}
        self.train()
        augmented = self.cfg.calibrate_views == "augmented"
        gen = torch.Generator(self.bank.weight.device).manual_seed(1)  # its own stream: training's draws are unchanged
        for x, idx in loader.ordered(batch_size, seed=1 if augmented else None):  # under torchrun: this rank's share
            z = self.embed(self.augment(x, gen) if augmented else self.augment.plain(x))
            self.bank.write(distributed.gather_uneven(idx), distributed.gather_uneven(z))  # every rank's rows
        self.load_state_dict(saved, strict=False)

    def training_step(self, x, idx, gen, rng):
        cfg = self.cfg
        v = self.augment(x, gen)
        b = v.shape[0]
        # Under torchrun the columns come from the global batch and this rank's rows target theirs.
        shard = distributed.batch_shard()
        batch_idx, offset = (idx, 0) if shard is None else (shard.global_idx, shard.offset)
        rows = torch.arange(offset, offset + b, device=v.device)
        perm, lam = rows, 1.0
        if cfg.cutmix_alpha > 0:
            v, perm, lam = cutmix(v, cfg.cutmix_alpha, rng, gen, cfg.cutmix_half)
            perm = perm + offset
        z = self.embed(v)

        cols = self.bank.columns(batch_idx, cfg.negatives, gen)
        # A copy (the bank itself changes only in after_step); index_select, not W[cols]: ~5x faster on a
        # CPU for 10k rows (benchmarks/bank_gather.py).
        w = self.bank.weight.index_select(0, cols)
        if cfg.bank_update == "grad":
            w.requires_grad_(True)  # its gradient comes out of the same backward pass
        s, s_kl = bank_logits(z, w, cfg.kl_to_bank)
        logp = F.log_softmax(s.float() / cfg.tau, dim=1)  # one softmax for both CE targets (= F.cross_entropy twice)
        ce = -(lam * logp.gather(1, rows[:, None]) + (1 - lam) * logp.gather(1, perm[:, None])).mean()
        loss, logs = ce, {"ce": ce.detach()}
        if cfg.kl_weight > 0:
            kl = sqrt_kl(s_kl)
            loss = loss + cfg.kl_weight * kl
            logs["kl"] = kl.detach()
        if cfg.ssql_weight > 0:
            q = ssql_term(self.backbone, self.head, v, z, draw_bits(rng, cfg.ssql_bits))
            loss, logs["ssql"] = loss + cfg.ssql_weight * q, q.detach()
        self._pending = (batch_idx, cols, w, z.detach(), perm, lam)
        return loss, logs

    @torch.no_grad()
    def after_step(self) -> None:
        batch_idx, cols, w, z, _, _ = self._pending
        self._pending = None
        if self.cfg.bank_update == "ema":
            # Every rank's features reach every rank's bank (rank order = the global batch's order).
            self.bank.update_ema(batch_idx, distributed.gather(z), self.cfg.bank_momentum)
        elif w.grad is not None:
            # autograd gives the batch-mean gradient (of each rank's share: averaged over ranks, the
            # global batch's); x B for the summed convention of bank_lr.
            self.bank.update_grad(cols, distributed.mean_over_ranks(w.grad) * batch_idx.numel(), self.cfg.bank_lr,
                                  current=w.detach())
