"""Few-shot classification on frozen features: N-way K-shot episodes.

An episode draws N classes, K labelled support images per class from the training split and Q
query images per class from the test split (so test images are only ever scored), and classifies
the queries by
- nearest centroid: cosine similarity to the mean of each class's L2-normalised support features;
- logistic regression on L2-normalised features, scikit-learn's default C = 1 (K images per class
  leave no validation split to choose C from), all episodes fitted at once (`fit_logistic_batched`).

The episodes depend only on the labels and the episode seed, so every backbone (and each baseline)
is scored on the same episodes. Besides the mean and its 95% interval we report the worst cases —
the minimum and the mean of the worst 10% of episodes: a user with K labels runs one episode, not
the average of 600.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .linear import fit_logistic_batched, weight_decay_for


@dataclass
class FewShotConfig:
    ways: int = 5
    shots: tuple[int, ...] = (1, 5, 20)
    episodes: int = 600
    queries: int = 15  # per class; fewer when a test class has fewer images
    seed: int = 0  # the episode seed: fixed, so every feature set meets the same episodes
    c: float = 1.0  # the logistic classifier's C (scikit-learn convention)
    chunk: int = 100  # episodes per batched fit (bounds memory)


@dataclass
class Episodes:
    ways: int
    shots: int
    queries: int
    support: np.ndarray  # (E, ways * shots) training-split indices, class-major
    query: np.ndarray  # (E, ways * queries) test-split indices, class-major
    # Labels are implicit: position // shots (support) and position // queries (query).


def sample_episodes(train_y: np.ndarray, test_y: np.ndarray, ways: int, shots: int, queries: int, episodes: int,
                    seed: int) -> Episodes | str:
    """Seeded episodes, or a string saying why there can be none (too few classes or images)."""
    test_counts = {c: int((test_y == c).sum()) for c in np.unique(test_y)}
    eligible = [c for c in np.unique(train_y) if (train_y == c).sum() >= shots and test_counts.get(c, 0) >= 1]
    if len(eligible) < 2:
        return f"fewer than 2 classes have {shots} labelled training images"
    ways = min(ways, len(eligible))
    queries = min([queries] + [test_counts[c] for c in eligible])
    by_train = {c: np.flatnonzero(train_y == c) for c in eligible}
    by_test = {c: np.flatnonzero(test_y == c) for c in eligible}
    rng = np.random.default_rng([seed, ways, shots])  # each K has its own stream: adding a K changes no other
    sup = np.empty((episodes, ways * shots), dtype=np.int64)
    qry = np.empty((episodes, ways * queries), dtype=np.int64)
    for e in range(episodes):
        for j, c in enumerate(rng.choice(eligible, ways, replace=False)):
            sup[e, j * shots:(j + 1) * shots] = rng.choice(by_train[c], shots, replace=False)
            qry[e, j * queries:(j + 1) * queries] = rng.choice(by_test[c], queries, replace=False)
    return Episodes(ways, shots, queries, sup, qry)


def episode_stats(acc) -> dict:
    """Mean, 95% interval half-width (normal approximation), minimum, and mean of the worst 10% (at least one episode)."""
    a = np.sort(np.asarray(acc, dtype=np.float64))
    n = len(a)
    ci = 1.96 * a.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": float(a.mean()), "ci95": float(ci), "min": float(a[0]),
            "worst10": float(a[:max(1, math.ceil(0.1 * n))].mean()), "episodes": n}


@torch.no_grad()
def _episode_accuracies(train_f, test_f, ep: Episodes, c: float, chunk: int) -> dict[str, list[float]]:
    dev = train_f.device
    sy = torch.arange(ep.ways, device=dev).repeat_interleave(ep.shots)
    qy = torch.arange(ep.ways, device=dev).repeat_interleave(ep.queries)
    wd = weight_decay_for(c, ep.ways * ep.shots)
    out = {"nearest_centroid": [], "logistic": []}
    for start in range(0, len(ep.support), chunk):
        s = F.normalize(train_f[torch.from_numpy(ep.support[start:start + chunk]).to(dev)], dim=-1)  # (E, N*K, D)
        q = F.normalize(test_f[torch.from_numpy(ep.query[start:start + chunk]).to(dev)], dim=-1)  # (E, N*Q, D)
        e = len(s)
        centroids = F.normalize(s.view(e, ep.ways, ep.shots, -1).mean(2), dim=-1)
        pred = torch.bmm(q, centroids.transpose(1, 2)).argmax(2)
        out["nearest_centroid"] += (pred == qy).float().mean(1).tolist()
        w, b = fit_logistic_batched(s, sy.expand(e, -1), ep.ways, wd)
        pred = torch.baddbmm(b.unsqueeze(1), q, w.transpose(1, 2)).argmax(2)
        out["logistic"] += (pred == qy).float().mean(1).tolist()
    return out


def fewshot_eval(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 cfg: FewShotConfig | None = None, progress: bool = False, desc: str = "few-shot") -> dict:
    """{"5-way 1-shot": {"ways", "shots", "queries", "nearest_centroid": stats, "logistic": stats}, ...}."""
    cfg = cfg or FewShotConfig()
    ytr, yte = train_y.cpu().numpy(), test_y.cpu().numpy()
    res = {}
    for k in tqdm(cfg.shots, desc=desc, disable=None if progress else True, leave=False, unit="setting"):
        ep = sample_episodes(ytr, yte, cfg.ways, k, cfg.queries, cfg.episodes, cfg.seed)
        if isinstance(ep, str):
            res[f"{cfg.ways}-way {k}-shot"] = {"skipped": ep}
            continue
        accs = _episode_accuracies(train_f.float(), test_f.float(), ep, cfg.c, cfg.chunk)
        res[f"{ep.ways}-way {k}-shot"] = {"ways": ep.ways, "shots": k, "queries": ep.queries,
                                          **{name: episode_stats(a) for name, a in accs.items()}}
    return res
