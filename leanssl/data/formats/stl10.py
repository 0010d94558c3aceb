"""``stl10:PATH``: the binary files (default 96 px); pretrain = train + unlabeled."""

from __future__ import annotations

import os
from functools import partial

import numpy as np

from leanssl.data.arrays import write_arrays
from leanssl.data.cache import CacheWriter, file_fingerprint
from leanssl.data.dataset import Source
from leanssl.data.paths import find_subfolder
from leanssl.errors import LeansslError

_IMAGE_BYTES = 3 * 96 * 96


def locate(path: str) -> Source:
    folder = find_subfolder(path, "stl10_binary", ["train_X.bin", "unlabeled_X.bin", "test_X.bin"])
    have = {n: os.path.isfile(os.path.join(folder, n + ".bin"))
            for n in ("train_X", "train_y", "test_X", "test_y", "unlabeled_X")}  # fmt: skip
    for split in ("train", "test"):
        if have[f"{split}_X"] != have[f"{split}_y"]:
            missing = f"{split}_y.bin" if have[f"{split}_X"] else f"{split}_X.bin"
            raise LeansslError(f"stl10: {folder}: missing {missing}")
    if not (have["train_X"] or have["unlabeled_X"]):
        raise LeansslError(f"stl10: {folder}: missing train_X.bin and unlabeled_X.bin "
                           "(expected the binary version, stl10_binary/)")  # fmt: skip
    names = [n + ".bin" for n, ok in have.items() if ok]
    if os.path.isfile(os.path.join(folder, "class_names.txt")):
        names.append("class_names.txt")
    fp = file_fingerprint([os.path.join(folder, n) for n in names], folder)
    return Source("stl10", "stl10", folder, fp, 96, partial(_build, folder, have))


def _images(path: str) -> np.ndarray:
    """Lazy (N, 3, 96, 96) view of an STL-10 image file (stored column-major per image)."""
    size = os.path.getsize(path)
    if size == 0 or size % _IMAGE_BYTES:
        raise LeansslError(f"stl10: {path}: size {size} is not a multiple of 3*96*96")
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(size // _IMAGE_BYTES, 3, 96, 96))
    return raw.transpose(0, 1, 3, 2)  # stored as (C, W, H): swap to (C, H, W)


def _labels(path: str, n: int) -> np.ndarray:
    y = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # stored as 1..10
    if len(y) != n or (n and (y.min() < 0 or y.max() > 9)):
        raise LeansslError(f"stl10: {path}: expected {n} labels in 1..10")
    return y


def _build(folder: str, have: dict, writer: CacheWriter, res: int, strict: bool, progress: bool) -> dict:
    def split(name):
        if not have[f"{name}_X"]:
            return None
        x = _images(os.path.join(folder, f"{name}_X.bin"))
        return x, _labels(os.path.join(folder, f"{name}_y.bin"), len(x))

    extra = _images(os.path.join(folder, "unlabeled_X.bin")) if have["unlabeled_X"] else None
    classes = [str(i) for i in range(10)]
    names_file = os.path.join(folder, "class_names.txt")
    if os.path.isfile(names_file):
        with open(names_file) as f:
            names = [line.strip() for line in f if line.strip()]
        classes = names if len(names) == 10 else classes
    train, test = split("train"), split("test")
    return write_arrays(writer, res, 3, classes if train else None, progress, "caching stl10",
                        train=train, extra=extra, test=test if train else None)  # fmt: skip
