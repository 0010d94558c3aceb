"""Linear probe on frozen features: L2-regularised multinomial logistic regression fitted by L-BFGS.

The regularisation strength is chosen on a validation split carved from the training features
(never the test split), then the probe is refit on all training features.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int = 200) -> torch.nn.Linear:
    """Full-batch L-BFGS on mean cross-entropy + weight_decay * ||W||²."""
    lin = torch.nn.Linear(x.shape[1], num_classes).to(x.device)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def _split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation indices; classes with a single example stay in training."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = int(round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


@torch.no_grad()
def _accuracy(lin, x, y) -> float:
    return (lin(x).argmax(1) == y).float().mean().item()


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, seed: int = 0, weight_decays=WEIGHT_DECAYS, val_fraction: float = 0.2) -> dict:
    """Returns {"top1", "weight_decay", "val_top1"}: wd chosen on the validation split, probe refit on all of train."""
    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6  # standardise with training statistics only
    xtr, xte = (train_f - mu) / sd, (test_f - mu) / sd
    tr, va = _split(train_y.cpu().numpy(), val_fraction, seed)
    val_scores = {}
    if len(va):
        for wd in weight_decays:
            with torch.enable_grad():
                lin = fit_logistic(xtr[tr], train_y[tr], num_classes, wd)
            val_scores[wd] = _accuracy(lin, xtr[va], train_y[va])
        best = max(weight_decays, key=lambda wd: (val_scores[wd], wd))  # ties: the stronger regulariser
    else:
        best = 1e-4
    with torch.enable_grad():
        lin = fit_logistic(xtr, train_y, num_classes, best)
    return {"top1": _accuracy(lin, xte, test_y), "weight_decay": best, "val_top1": val_scores.get(best)}
