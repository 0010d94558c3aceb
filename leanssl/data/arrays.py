"""uint8 image arrays into a cache entry, chunk by chunk: the standard layout, resizing, channel statistics."""

from __future__ import annotations

import numpy as np

from leanssl.data.cache import CacheWriter

CHUNK = 512  # images per chunk when copying/resizing arrays into the cache
STATS_SAMPLE = 10_000  # images used to estimate mean/std


def write_arrays(writer: CacheWriter, res: int, channels: int, classes, progress: bool, desc: str,
                 train=None, extra=None, test=None) -> dict:  # fmt: skip
    """Write the standard entry layout from in-memory or memory-mapped arrays; returns the layout.

    ``train``/``test``: (x, y) pairs or None; ``extra``: unlabeled x appended to pretrain or None.
    """
    parts = [p for p in (train[0] if train else None, extra) if p is not None]
    total = sum(len(p) for p in parts) + (len(test[0]) if test else 0)
    with progress_bar(total, desc, progress) as bar:
        px = writer.images("pretrain_x", sum(len(p) for p in parts), channels, res)
        row = 0
        for p in parts:
            row = _fill(px, row, p, res, bar)
        if train:
            writer.labels("train_y", train[1])
        if test:
            tx = writer.images("test_x", len(test[0]), channels, res)
            _fill(tx, 0, test[0], res, bar)
            writer.labels("test_y", test[1])
    return {"n_train": len(train[0]) if train else None, "has_test": test is not None,
            "classes": classes, "channels": channels, "skipped": []}  # fmt: skip


def progress_bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=None if progress else True, leave=False)


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of x / 255 on at most STATS_SAMPLE evenly spaced images."""
    idx = np.unique(np.linspace(0, len(x) - 1, min(len(x), STATS_SAMPLE)).astype(np.int64))
    s = np.zeros(x.shape[1])
    s2 = np.zeros(x.shape[1])
    for i in range(0, len(idx), CHUNK):
        chunk = x[idx[i : i + CHUNK]].astype(np.float64) / 255.0
        s += chunk.sum(axis=(0, 2, 3))
        s2 += (chunk**2).sum(axis=(0, 2, 3))
    count = len(idx) * x.shape[2] * x.shape[3]
    mean = s / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    return [float(v) for v in mean], [float(v) for v in std]


def _fill(dst: np.ndarray, start: int, src: np.ndarray, res: int, bar) -> int:
    """Copy uint8 NCHW ``src`` (any array-like, e.g. a lazy memmap view) into ``dst[start:]``
    chunk by chunk, resizing when needed; returns the next free row."""
    for s in range(0, len(src), CHUNK):
        chunk = np.ascontiguousarray(_center_square(src[s : s + CHUNK]))
        if chunk.shape[-2:] != (res, res):
            chunk = _resize(chunk, res)
        dst[start : start + len(chunk)] = chunk
        start += len(chunk)
        bar.update(len(chunk))
    return start


def _center_square(x: np.ndarray) -> np.ndarray:
    """Lazy center-crop view of (N, C, H, W) to (N, C, S, S), S = min(H, W)."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top : top + s, left : left + s]


def _resize(x: np.ndarray, res: int) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, C, res, res), antialiased bilinear (same filter as training)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.asarray(x, dtype=np.float32))  # a writable float copy
    t = F.interpolate(t, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
    return t.round_().clamp_(0, 255).to(torch.uint8).numpy()
