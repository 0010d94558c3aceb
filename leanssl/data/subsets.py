"""Seeded, class-stratified index subsets: label fractions, k per class, and the held-out 80/20 test split."""

from __future__ import annotations

import numpy as np

from leanssl.errors import LeansslError


def stratified_subset(y: np.ndarray | None, n: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted int64 indices of a seeded, class-stratified ``fraction`` of ``n`` items.

    Each class keeps round(fraction * its size) items, at least one. A plain seeded random subset
    when ``y`` is None. For a fixed seed the subsets are nested: a smaller fraction picks a prefix
    of the same per-class permutation as a larger one.
    """
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise LeansslError(f"label fraction must be in (0, 1], got {fraction!r}")
    if y is not None and len(y) != n:
        raise LeansslError(f"stratified_subset: {len(y)} labels for {n} items")
    if fraction == 1:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if y is None else [np.flatnonzero(y == c) for c in np.unique(y)]
    picked = []
    for idx in groups:
        k = max(1, int(np.floor(fraction * len(idx) + 0.5)))
        picked.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def per_class_subset(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Sorted int64 indices of ``k`` seeded random items per class (all of a smaller class)."""
    if k < 1:
        raise LeansslError(f"items per class must be at least 1, got {k}")
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(y == c))[:k] for c in np.unique(y)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def split_80_20(y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The held-out test split of a labelled source without one: fixed seeded stratified split,
    round(20%) of each class to test (classes of one item stay in train), so every class is in train."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[: int(np.floor(0.2 * len(idx) + 0.5)) if len(idx) > 1 else 0])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx).astype(np.int64)
    return train_idx, test_idx
