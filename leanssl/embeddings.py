"""Embeddings of every image of a data SPEC under a trained backbone, with an index of where each row came from.

Saved as FILE.npy (float32, N x D, the backbone's pooled features, not normalised) and FILE.csv
(row, split, index, label, class, path): `split` is train (labelled), unlabeled or test, `index` the
position within that split, `label` -1 when unknown, `path` the source file for image folders.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import LeansslError

SPLITS = ("all", "pretrain", "train", "test")  # pretrain = train + unlabeled: what training saw


@dataclass
class Embeddings:
    features: np.ndarray       # float32 (N, D)
    split: np.ndarray          # str (N,): train, unlabeled or test
    index: np.ndarray          # int64 (N,): position within its split
    label: np.ndarray          # int64 (N,): -1 when unknown
    paths: list[str] | None    # source file of each row (image folders), else None
    classes: list[str] | None  # class names, indexed by label
    images: list[np.ndarray]   # the uint8 image arrays the rows come from, one per split block (for pictures)

    def __len__(self) -> int:
        return len(self.features)

    def image(self, row: int) -> np.ndarray:
        """uint8 (C, H, W) image of a row."""
        for block in self.images:
            if row < len(block):
                return np.asarray(block[row])
            row -= len(block)
        raise IndexError(row)

    def rows(self, rows) -> list[dict]:
        """Index records of `rows` (as written to the CSV)."""
        return [{"row": int(r), "split": str(self.split[r]), "index": int(self.index[r]), "label": int(self.label[r]),
                 "class": self.classes[self.label[r]] if self.classes and self.label[r] >= 0 else "",
                 "path": self.paths[r] if self.paths else ""} for r in rows]

    def save(self, out) -> tuple[Path, Path]:
        """FILE.npy and FILE.csv (the suffix .npy is added when missing)."""
        out = Path(out)
        npy = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")
        npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(npy, self.features)
        index = npy.with_suffix(".csv")
        write_csv(index, self.rows(range(len(self))))
        return npy, index


def write_csv(path: Path, records: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["row"])
        w.writeheader()
        w.writerows(records)


def _folder_paths(spec: str, ds) -> tuple[list[str], list[str]] | None:
    """Source files of a folder SPEC's pretrain and test rows, in cache order, or None for other sources.

    The cache keeps pixels, not paths: re-run the same cheap scan (no decoding) that planned the
    cache, and drop the files the build skipped. The cache key covers the scanned file list, so
    the two agree.
    """
    from .data.sources import locate

    files = locate(spec).files
    if files is None:
        return None
    skipped = {p for p, _ in ds.skipped}
    return tuple([f for f in split if f not in skipped] for split in files)


def embed(model, data, split: str = "all", device: str = "auto", batch_size: int = 512, cache_dir=None,
          progress: bool = True) -> Embeddings:
    """Embed `data` (a SPEC, or a uint8 array (N, C, H, W)) with the backbone of `model`.

    `model`: a run folder or an exported .safetensors file / timm folder (see leanssl.export).
    `split`: all (pretrain, then test), pretrain (train + unlabeled), train (labelled only) or test.
    Batched, on the GPU when present, with a progress bar.
    """
    import torch

    from .data.sources import open_dataset
    from .eval.features import extract_features
    from .export import load_backbone, read_metadata
    from .device import resolve_device

    if split not in SPLITS:
        raise LeansslError(f"unknown split '{split}': choose from {', '.join(SPLITS)}")
    dev = resolve_device(device)
    meta = read_metadata(model)
    net = load_backbone(model, dev).to(memory_format=torch.channels_last)

    blocks: list[tuple[str, np.ndarray, np.ndarray | None, list[str] | None]] = []  # (split, x, y, paths)
    classes = None
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 4:
            raise LeansslError(f"embed: an array must be uint8 (N, C, H, W), got {data.dtype} {data.shape}")
        blocks.append(("unlabeled", data, None, None))
    else:
        ds = open_dataset(data, meta["resolution"], cache_dir, progress=progress)
        classes = ds.classes
        paths = _folder_paths(data, ds)
        n_train = len(ds.train) if ds.train is not None else 0
        pre_paths = paths[0] if paths else None
        if split in ("all", "pretrain", "train") and n_train:
            blocks.append(("train", ds.train.x, ds.train.y, pre_paths[:n_train] if pre_paths else None))
        if split in ("all", "pretrain") and len(ds.pretrain) > n_train:
            blocks.append(("unlabeled", ds.pretrain.x[n_train:], None, pre_paths[n_train:] if pre_paths else None))
        if split in ("all", "test") and ds.test is not None:
            blocks.append(("test", ds.test.x, ds.test.y, paths[1] if paths else None))
        if not blocks:
            raise LeansslError(f"'{data}' has no {split} images")

    feats, names, index, labels, all_paths = [], [], [], [], []
    for name, x, y, p in blocks:
        feats.append(extract_features(net, x, meta["mean"], meta["std"], meta["channels"], meta["resolution"], dev,
                                      batch_size=batch_size, progress=progress, desc=f"embedding {name}").numpy())
        names += [name] * len(x)
        index.append(np.arange(len(x)))
        labels.append(np.asarray(y, dtype=np.int64) if y is not None else np.full(len(x), -1, dtype=np.int64))
        all_paths += p if p is not None else []
    return Embeddings(np.concatenate(feats).astype(np.float32), np.array(names), np.concatenate(index),
                      np.concatenate(labels), all_paths if len(all_paths) == sum(len(b[1]) for b in blocks) else None,
                      classes, [b[1] for b in blocks])
