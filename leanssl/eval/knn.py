"""Weighted kNN on cosine similarity (the NPID / InstDisc protocol: k = 200, T = 0.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

KNN_K = 200
KNN_T = 0.1
KNN_K_SMALL = 20  # the second readout (DINO's k), reported beside KNN_K


@torch.no_grad()
def knn_predict_many(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, num_classes: int,
                     ks=(KNN_K,), t: float = KNN_T, chunk: int = 1024) -> dict[int, torch.Tensor]:
    """Predictions for each k of `ks` from one similarity pass: the top-k are sorted, so a smaller k is a prefix.

    Each of the k nearest training features votes for its class with weight exp(cos / T).
    """
    train_f = F.normalize(train_f.float(), dim=1)
    test_f = F.normalize(test_f.float(), dim=1)
    ks = {k: min(k, len(train_f)) for k in ks}
    preds = {k: [] for k in ks}
    for start in range(0, len(test_f), chunk):
        sim = test_f[start:start + chunk] @ train_f.t()  # the costly part: N_test x N_train x D, done once
        top, idx = sim.topk(max(ks.values()), dim=1)
        weight, label = (top / t).exp(), train_y[idx]
        for k, kk in ks.items():
            votes = torch.zeros(len(sim), num_classes, device=sim.device)
            votes.scatter_add_(1, label[:, :kk], weight[:, :kk])
            preds[k].append(votes.argmax(1))
    return {k: torch.cat(p) for k, p in preds.items()}


def knn_predict(train_f, train_y, test_f, num_classes: int, k: int = KNN_K, t: float = KNN_T, chunk: int = 1024):
    return knn_predict_many(train_f, train_y, test_f, num_classes, (k,), t, chunk)[k]


def knn_top1s(train_f, train_y, test_f, test_y, num_classes: int, ks=(KNN_K,), t: float = KNN_T) -> dict[int, float]:
    """Top-1 accuracy for each k of `ks`, from one similarity pass."""
    return {k: (p == test_y).float().mean().item()
            for k, p in knn_predict_many(train_f, train_y, test_f, num_classes, ks, t).items()}


def knn_top1(train_f, train_y, test_f, test_y, num_classes: int, k: int = KNN_K, t: float = KNN_T) -> float:
    return knn_top1s(train_f, train_y, test_f, test_y, num_classes, (k,), t)[k]
