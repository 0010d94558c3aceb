"""Weighted kNN on cosine similarity (the NPID / InstDisc protocol: k = 200, T = 0.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

KNN_K = 200
KNN_T = 0.1


@torch.no_grad()
def knn_predict(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, num_classes: int,
                k: int = KNN_K, t: float = KNN_T, chunk: int = 1024) -> torch.Tensor:
    """Each of the k nearest training features votes for its class with weight exp(cos / T)."""
    train_f = F.normalize(train_f.float(), dim=1)
    test_f = F.normalize(test_f.float(), dim=1)
    k = min(k, len(train_f))
    preds = []
    for start in range(0, len(test_f), chunk):
        sim = test_f[start:start + chunk] @ train_f.t()
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, train_y[idx], (top / t).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_top1(train_f, train_y, test_f, test_y, num_classes: int, k: int = KNN_K, t: float = KNN_T) -> float:
    return (knn_predict(train_f, train_y, test_f, num_classes, k, t) == test_y).float().mean().item()
