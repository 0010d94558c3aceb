"""Choose which images to label from their embeddings alone: USL (Wang, Lian & Yu, "Unsupervised
Selective Labeling for More Effective Semi-Supervised Learning", ECCV 2022, arXiv 2110.03006).

Representative and diverse: k-means with K clusters on L2-normalised embeddings (diversity: one
pick per cluster), and within each cluster the densest point (representativeness), where density
is the inverse mean squared distance to the k = 400 nearest neighbours. Picking the densest point
of every cluster independently tends to pick points near cluster borders, close to the picks of
neighbouring clusters; the paper's regularised selection (its Sec. 3.1, and `get_selection_with_reg`
in the authors' code, github.com/TonyLianLong/UnsupervisedSelectiveLabeling) repeats the
selection for a few rounds with the score

    score_i = density_i - w * R_i,   R_i <- m * R_i + (1 - m) * sum_j ||z_i - z_{s_j}||^(-2 * alpha)

where s_j are the previous round's picks and picks of i's own cluster do not count, so each
pick moves away from the picks of other clusters. Defaults are the authors' CIFAR config:
10 rounds, w = 0.5, m = 0.9, alpha = 0.5 (on squared distances).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from .errors import LeansslError

DENSITY_K = 400
REG_ROUNDS = 10
REG_WEIGHT = 0.5
REG_MOMENTUM = 0.9
REG_ALPHA = 0.5


@torch.no_grad()
def knn_density(z: torch.Tensor, k: int = DENSITY_K, chunk: int = 512) -> torch.Tensor:
    """1 / mean squared distance to the k nearest other points (k capped at N - 1); z is L2-normalised."""
    n = len(z)
    k = min(k, n - 1)
    if k < 1:
        return torch.ones(n)
    out = []
    for start in range(0, n, chunk):
        d2 = (2 - 2 * z[start:start + chunk] @ z.T).clamp_min(0)
        rows = torch.arange(len(d2))
        d2[rows, rows + start] = float("inf")  # a point is not its own neighbour
        out.append(d2.topk(k, dim=1, largest=False).values.mean(1))
    return 1 / (torch.cat(out) + 1e-12)


def kmeans_labels(z: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():  # fewer distinct points than k: the empty clusters are filled below
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        return KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(z)


@torch.no_grad()
def select(embeddings, budget: int, seed: int = 0, density_k: int = DENSITY_K, rounds: int = REG_ROUNDS,
           weight: float = REG_WEIGHT, momentum: float = REG_MOMENTUM, alpha: float = REG_ALPHA,
           density: torch.Tensor | None = None) -> np.ndarray:
    """Indices of `budget` distinct rows of `embeddings` (N, D) to label, largest cluster's pick first.

    Deterministic for a seed (the seed drives k-means). `rounds=1` is the selection without the
    regulariser. `density`: `knn_density` of the normalised embeddings, when computed once for
    several budgets (it is the O(N^2) part).
    """
    x = np.asarray(getattr(embeddings, "features", embeddings), dtype=np.float32)
    n = len(x)
    if x.ndim != 2 or n == 0:
        raise LeansslError(f"select: expected embeddings of shape (N, D), got {x.shape}")
    if not 1 <= budget <= n:
        raise LeansslError(f"--budget must be between 1 and the number of images ({n}), got {budget}")
    z = F.normalize(torch.from_numpy(x), dim=1)
    density = knn_density(z, density_k) if density is None else density
    cluster = torch.from_numpy(kmeans_labels(z.numpy(), budget, seed)).long()
    members = [torch.where(cluster == c)[0] for c in range(budget)]
    members = [m for m in members if len(m)]

    reg = torch.zeros(n)
    for _ in range(max(1, rounds)):
        score = density - weight * reg
        picks = torch.stack([m[score[m].argmax()] for m in members])
        d2 = torch.cdist(z, z[picks]).pow(2)
        d2[cluster[:, None] == cluster[picks][None, :]] = float("inf")  # own cluster's pick: no push
        reg = momentum * reg + (1 - momentum) * d2.clamp_min(1e-12).pow(-alpha).sum(1)

    sizes = torch.tensor([len(m) for m in members])
    picks = picks[sizes.argsort(descending=True, stable=True)].tolist()
    if len(picks) < budget:  # k-means found fewer clusters (duplicates): fill with the densest others
        taken = set(picks)
        picks += [i for i in density.argsort(descending=True, stable=True).tolist() if i not in taken][:budget - len(picks)]
    return np.array(picks, dtype=np.int64)


def random_selection(n: int, budget: int, seed: int) -> np.ndarray:
    """The baseline: `budget` distinct rows uniformly at random."""
    return np.random.default_rng(seed).choice(n, size=budget, replace=False)
