"""`swav`: Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments" (arXiv 2006.09882; code facebookresearch/swav).

Multi-crop views (2 global + small local crops) are embedded, L2-normalised and scored against
K L2-normalised prototypes. Each global crop's scores are turned into a balanced soft assignment
q by Sinkhorn-Knopp (every prototype gets ≈ B/K of the batch), and every other crop predicts it:

    L = mean_{i ∈ globals} mean_{v ≠ i} mean_b −Σ_k q_i[b, k] · log softmax(s_v[b] / τ)_k

Small batches use a queue of the last `queue_length` global-crop embeddings (from epoch
`queue_start_epoch` on, once it is full) to make the Sinkhorn marginals meaningful; it only feeds the
assignment, never the loss. The prototypes are frozen during the first epoch and renormalised after
every step.

Defaults (the authors' `swav_200ep_bs256_pretrain.sh`, i.e. ResNet-50 at batch 256): 2×224 px crops at
scale (0.14, 1) and 6×96 px at (0.05, 0.14); head Linear(D, D)-BN-ReLU-Linear(D, 128) (the code's
hidden_mlp is the backbone width D); 3000 prototypes, τ 0.1, ε 0.05, 3 Sinkhorn iterations; queue
3840 from epoch 15; prototypes frozen for the first epoch (5005 iterations there). Colour: jitter
(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, blur p 0.5 on every crop above 32 px. At ≤ 32 px (no
published recipe) the local crops are half the side (16 px at 32 px) and there is no blur.
Deviations: LARS (lr 0.6 at B 256, wd 1e-6) is replaced by the loop's SGD. The queue's "is it full"
test is counted on the host from the step number (no device sync), not read from the queue.
Under torchrun the global crops' embeddings are all-gathered (no gradient, B·G × dim per crop): every
rank computes the codes of the whole global batch, as SwAV's distributed Sinkhorn does with its
all-reduces, keeps its own rows, and pushes the whole global batch into one queue, equal on every
rank (SwAV's code keeps a 1/G share per GPU; the union is the same set of embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import AT_LEAST_1, NON_NEGATIVE, POSITIVE, checked
from .. import distributed
from ..data.augment import AugConfig
from ..models.heads import mlp
from ..options import opt
from .base import Method
from .common import augmenter, encode_by_size, local_crop_size


@dataclass
@checked(dim=AT_LEAST_1, proj_hidden=AT_LEAST_1, prototypes=AT_LEAST_1, tau=POSITIVE, epsilon=POSITIVE,
         sinkhorn_iters=AT_LEAST_1, local_crops=NON_NEGATIVE, local_size=AT_LEAST_1, queue_length=NON_NEGATIVE,
         queue_start_epoch=NON_NEGATIVE, freeze_prototypes_epochs=NON_NEGATIVE)
class SwavConfig:
    dim: int = opt(128, "embedding width")
    proj_hidden: int | None = opt(None, "projection MLP hidden width (default: the backbone's width)")
    prototypes: int = opt(3000, "K prototypes")
    tau: float = opt(0.1, "temperature of the swapped prediction")
    epsilon: float = opt(0.05, "Sinkhorn entropy regularisation")
    sinkhorn_iters: int = opt(3, "Sinkhorn-Knopp iterations")
    local_crops: int = opt(6, "small local crops per image, besides the two global views")
    local_size: int | None = opt(None, "local crop side in px (default: 96 at 224 px, half the side at <= 32 px)")
    global_scale: tuple[float, float] = opt((0.14, 1.0), "RandomResizedCrop area range of the global views, e.g. "
                                                         "0.14,1")
    local_scale: tuple[float, float] = opt((0.05, 0.14), "RandomResizedCrop area range of the local crops")
    queue_length: int = opt(3840, "embeddings kept from earlier batches for the assignment (0: no queue; never "
                                  "more than N)")
    queue_start_epoch: int = opt(15, "epoch from which the queue is used")
    freeze_prototypes_epochs: int = opt(1, "epochs during which the prototypes are not trained")


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """(B, K) scores -> (B, K) codes: each row sums to 1, each prototype (column) to ≈ B/K.

    Alternately rescale Q = exp(scores/ε)ᵀ so its K rows each hold 1/K and its B columns 1/B of the
    mass (SwAV's Algorithm); the last step makes the columns exact, then each is scaled to sum to 1.
    """
    q = torch.exp((scores.float() - scores.float().max()) / epsilon).t()  # the shift cancels in the normalisations
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True) * k
        q /= q.sum(dim=0, keepdim=True) * b
    return (q * b).t()


def swav_loss(scores: list[torch.Tensor], codes: list[torch.Tensor], tau: float) -> torch.Tensor:
    """Swapped prediction: crop i's codes are predicted from every other crop's scores."""
    loss = 0.0
    for i, q in enumerate(codes):
        others = [s for v, s in enumerate(scores) if v != i]
        loss = loss + sum(-(q * F.log_softmax(s / tau, dim=1)).sum(1).mean() for s in others) / len(others)
    return loss / len(codes)


class SwAV(Method):
    name = "swav"
    description = "multi-crop, swapped prediction of Sinkhorn cluster assignments (Caron et al. 2020)"
    views = 2  # global views; local_crops small crops on top
    Config = SwavConfig
    default_lr = 0.12  # per 256: lightly's CIFAR-10 SGD benchmark, 0.06·B/128 (LARS rates do not carry to SGD)
    ddp_find_unused = True  # the prototypes get no gradient while frozen

    def __init__(self, backbone, data, cfg: SwavConfig | None = None, aug=None):
        cfg = cfg or self.Config()
        base = aug or AugConfig(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2)
        super().__init__(backbone, data, replace(base, scale=cfg.global_scale))
        self.cfg = cfg
        self.local_aug = augmenter(data, replace(base, scale=cfg.local_scale), cfg.local_size or local_crop_size(data))
        width = backbone.out_dim
        self.head = mlp(width, cfg.proj_hidden or width, cfg.dim, layers=2)
        self.prototypes = nn.Linear(cfg.dim, cfg.prototypes, bias=False)
        self.normalize_prototypes()
        self.register_buffer("queue", torch.zeros(2, min(cfg.queue_length, data.num_images), cfg.dim))
        self._pending: torch.Tensor | None = None

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def queue_on(self) -> bool:
        return self.queue.shape[1] > 0 and self.epoch >= self.cfg.queue_start_epoch

    def queue_full(self, batch: int) -> bool:
        """Filled by every step since the queue started: full once that many batches cover its length."""
        started = self.cfg.queue_start_epoch * self.steps_per_epoch
        return self.queue_on() and (self.step - started) * batch >= self.queue.shape[1]

    def training_step(self, x, idx, gen, rng):
        cfg, b = self.cfg, x.shape[0]
        n = cfg.local_crops  # all local crops in one batched call: n·B samples, each with its own parameters
        crops = [self.augment(x, gen) for _ in range(2)] + ([self.local_aug(x.repeat(n, 1, 1, 1), gen)] if n else [])
        z = F.normalize(self.head(encode_by_size(self.backbone, crops)).float(), dim=1)
        w = self.prototypes.weight
        if self.epoch < cfg.freeze_prototypes_epochs:
            w = w.detach()  # frozen: no gradient, so the optimiser leaves them (and their momentum) alone
        scores = list((z @ w.t()).float().split(b))
        shard = distributed.batch_shard()
        glob = z[: 2 * b].detach().view(2, b, -1)
        if shard is not None:  # the global batch's embeddings: codes over it, and all of it to the queue
            glob = distributed.gather(glob.transpose(0, 1)).transpose(0, 1)  # (2, B·G, dim), one all-gather
        batch, offset = glob.shape[1], 0 if shard is None else shard.offset
        codes = []
        for i in range(2):
            s = scores[i].detach() if shard is None else (glob[i] @ w.detach().t()).float()
            if self.queue_full(batch):
                s = torch.cat([self.queue[i] @ w.detach().t(), s])
            codes.append(sinkhorn(s, cfg.epsilon, cfg.sinkhorn_iters)[-batch:][offset:offset + b])  # this rank's rows
        loss = swav_loss(scores, codes, cfg.tau)
        self._pending = glob
        return loss, {}

    @torch.no_grad()
    def after_step(self) -> None:
        z, self._pending = self._pending, None
        self.normalize_prototypes()
        if self.queue_on():  # newest first; the oldest fall off the end
            self.queue.copy_(torch.cat([z.to(self.queue.dtype), self.queue], dim=1)[:, : self.queue.shape[1]])
