"""`mocov2`: Chen, Fan, Girshick & He 2020, "Improved Baselines with Momentum Contrastive Learning"
(arXiv 2003.04297; MoCo: He et al., arXiv 1911.05722; authors' code facebookresearch/moco).

A query encoder (backbone + MLP head) trained by InfoNCE against one positive key — the other
view through a momentum (EMA) copy of the encoder — and K negatives from a queue of past keys:

    L = CE([q·k₊, q·queue] / τ, 0)        key encoder θ_k ← m·θ_k + (1 − m)·θ_q, m constant

The loss is the original asymmetric one (query view → key view). The key encoder runs with
"shuffle BN": its batch is permuted and normalised in `bn_splits` groups, the single-device form
of MoCo's 8-GPU shuffling (the authors' CIFAR demo's SplitBatchNorm), so that a query and its key
never share BatchNorm statistics.

Small data: the queue holds at most N keys (a longer one would only repeat images), and it stores
each key's dataset index, so a query never scores its own image's earlier keys as negatives
(moco #146), even when the queue spans the whole data set.

Defaults: head Linear(D, D)-ReLU-Linear(D, 128), no BatchNorm (MoCo v2; D the backbone width).
At ≤ 32 px, the authors' CIFAR-10 demo: K = 4096, m = 0.99, τ = 0.1 (SGD lr 0.06 at B 512, wd 5e-4).
Above, ImageNet: K = 65536, m = 0.999, τ = 0.2 (SGD lr 0.03·B/256, wd 1e-4). Views: crop scale
(0.2, 1), jitter (0.4, 0.4, 0.4, 0.1) p 0.8, grayscale 0.2, blur p 0.5 above 32 px (AugConfig's defaults).
Deviations: none in the loss; the learning rate is the loop's (pass --lr for the recipe's).
Under torchrun, as in MoCo's code, the queue receives every rank's keys (all-gathered; one queue,
equal on every rank) while each query scores its own key and the queue. Shuffle BN stays per rank:
each rank splits its share into bn_splits / G groups (at least 1), so a group keeps B / bn_splits
keys as in one process, and with G ≥ bn_splits it is MoCo's own per-GPU BatchNorm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..checks import AT_LEAST_1, FRACTION, POSITIVE, checked
from .. import distributed
from ..models.heads import mlp
from ..options import opt
from .base import Method
from .common import by_size, ema_update, frozen_copy


@dataclass
@checked(dim=AT_LEAST_1, proj_hidden=AT_LEAST_1, queue=AT_LEAST_1, momentum=FRACTION, tau=POSITIVE,
         bn_splits=AT_LEAST_1)
class Mocov2Config:
    dim: int = opt(128, "key / query width")
    proj_hidden: int | None = opt(None, "projection MLP hidden width (default: the backbone's width)")
    queue: int | None = opt(None, "K keys in the queue (default: 4096 at <= 32 px, 65536 above; never more than N)")
    momentum: float | None = opt(None, "key-encoder EMA m, constant as in MoCo (default: 0.99 at <= 32 px, 0.999 "
                                       "above)")
    tau: float | None = opt(None, "InfoNCE temperature (default: 0.1 at <= 32 px, 0.2 above)")
    bn_splits: int = opt(8, "shuffle-BN groups for the key encoder (1: plain BatchNorm)")


def moco_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, queue_idx: torch.Tensor,
                idx: torch.Tensor, tau: float) -> torch.Tensor:
    """(B, 1 + K) logits, column 0 the positive; queue entries of the query's own image are -inf."""
    pos = (q * k).sum(1, keepdim=True)
    neg = q @ queue.t()
    logits = torch.cat([pos, neg], dim=1).float() / tau
    own = torch.cat([torch.zeros_like(idx, dtype=torch.bool)[:, None], queue_idx[None, :] == idx[:, None]], dim=1)
    return logits.masked_fill(own, float("-inf"))


class MoCoV2(Method):
    name = "mocov2"
    description = "two views, InfoNCE against a queue of keys from a momentum encoder (Chen et al. 2020)"
    views = 2
    Config = Mocov2Config
    default_lr = 0.03  # per 256 images: the authors' SGD recipe: 0.03·B/256 (their CIFAR demo: 0.06 at 512)

    def __init__(self, backbone, data, cfg: Mocov2Config | None = None, aug=None):
        super().__init__(backbone, data, aug)
        self.cfg = cfg = cfg or self.Config()
        self.tau = by_size(cfg.tau, data, 0.1, 0.2)
        self.momentum = by_size(cfg.momentum, data, 0.99, 0.999)
        k = min(by_size(cfg.queue, data, 4096, 65536), data.num_images)
        width = backbone.out_dim
        self.head = mlp(width, cfg.proj_hidden or width, cfg.dim, layers=2, norm=False)
        self.key_backbone, self.key_head = frozen_copy(backbone), frozen_copy(self.head)
        self.register_buffer("queue", F.normalize(torch.randn(k, cfg.dim), dim=1))
        self.register_buffer("queue_idx", torch.full((k,), -1, dtype=torch.long))  # -1: a random initial row
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending: tuple | None = None

    @torch.no_grad()
    def keys(self, v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Key features with shuffle BN: permute, normalise in groups, un-permute."""
        perm = torch.randperm(v.shape[0], generator=gen, device=v.device)
        splits = max(1, self.cfg.bn_splits // distributed.world_size())  # per rank: B / bn_splits keys a group
        groups = perm.chunk(max(1, min(splits, v.shape[0] // 2)))  # >= 2 samples per group
        k = torch.cat([self.key_head(self.key_backbone(v[g])) for g in groups])
        return F.normalize(torch.empty_like(k).index_copy_(0, perm, k).float(), dim=1)

    def training_step(self, x, idx, gen, rng):
        vq, vk = self.augment(x, gen), self.augment(x, gen)
        q = F.normalize(self.head(self.backbone(vq)).float(), dim=1)
        k = self.keys(vk, gen)
        logits = moco_logits(q, k, self.queue, self.queue_idx, idx, self.tau)
        loss = F.cross_entropy(logits, torch.zeros_like(idx))
        shard = distributed.batch_shard()
        self._pending = (k, idx if shard is None else shard.global_idx)
        return loss, {}

    @torch.no_grad()
    def after_step(self) -> None:
        k, idx = self._pending
        self._pending = None
        ema_update([self.key_backbone, self.key_head], [self.backbone, self.head], self.momentum)
        self.enqueue(distributed.gather(k), idx)  # every rank's keys, in the global batch's order

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor, idx: torch.Tensor) -> None:
        """Replace the oldest entries by this batch's keys and indices (a ring buffer; on the device, no sync)."""
        size = self.queue.shape[0]
        k, idx = k[-size:], idx[-size:]  # a batch larger than the queue keeps its last keys
        pos = (self.queue_ptr + torch.arange(k.shape[0], device=k.device)) % size
        self.queue.index_copy_(0, pos, k.to(self.queue.dtype))
        self.queue_idx.index_copy_(0, pos, idx)
        self.queue_ptr.copy_((self.queue_ptr + k.shape[0]) % size)
