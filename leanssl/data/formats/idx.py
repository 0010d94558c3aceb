"""``mnist:PATH`` and ``fashion-mnist[:PATH]``: the four IDX files, gzipped or not (1 channel, default 28 px)."""

from __future__ import annotations

import gzip
import os
from functools import partial

import numpy as np

from leanssl.data.arrays import write_arrays
from leanssl.data.cache import CacheWriter, file_fingerprint
from leanssl.data.dataset import Source
from leanssl.errors import LeansslError

FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist/"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # fmt: skip
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
          "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}  # fmt: skip


def locate(kind: str, path: str) -> Source:
    """``kind`` is 'mnist' or 'fashion-mnist' (the class names and torchvision's folder differ)."""
    # Accept the folder itself or torchvision's layout below it (MNIST/raw, FashionMNIST/raw).
    sub = "FashionMNIST" if kind == "fashion-mnist" else "MNIST"
    folders = [path, os.path.join(path, "raw"), os.path.join(path, sub, "raw")]
    files = {}
    for key, stem in _FILES.items():
        names = [stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"]
        found = [os.path.join(d, n) for d in folders for n in names]
        found = [f for f in found if os.path.isfile(f)]
        if not found:
            raise LeansslError(f"{kind}: {path}: missing {stem}[.gz] (expected the four IDX files)")
        files[key] = found[0]
    fp = file_fingerprint(list(files.values()), path)
    return Source(kind, kind, path, fp, 28, partial(_build, kind, files))


def _read_idx(path: str) -> np.ndarray:
    """Parse an IDX file (gzipped or not): magic 0x0000 <dtype> <ndim>, big-endian int32 dims."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise LeansslError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _DTYPES:
        raise LeansslError(f"not an IDX file (bad magic number): {path}")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise LeansslError(f"IDX file has {len(raw)} bytes, header says {expected}: {path}")
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(dims)


def _build(kind: str, files: dict, writer: CacheWriter, res: int, strict: bool, progress: bool) -> dict:
    a = {k: _read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = a[f"{split}_x"], a[f"{split}_y"]
        if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y):
            raise LeansslError(f"{kind}: {files[split + '_x']}: expected uint8 images (N, H, W) and "
                               f"N labels, got {x.dtype} {x.shape} and {y.shape} labels")  # fmt: skip
    classes = FASHION_CLASSES if kind == "fashion-mnist" else [str(i) for i in range(10)]
    return write_arrays(writer, res, 1, classes, progress, f"caching {kind}",
                        train=(a["train_x"][:, None], a["train_y"].astype(np.int64)),
                        test=(a["test_x"][:, None], a["test_y"].astype(np.int64)))  # fmt: skip
