"""``cifar10:PATH`` and ``cifar100:PATH`` (fine labels): the python pickle batches (default 32 px), unpickled
with an allow-list so that a crafted batch cannot run code."""

from __future__ import annotations

import os
import pickle

import numpy as np

from leanssl.data.arrays import write_arrays
from leanssl.data.cache import file_fingerprint
from leanssl.data.dataset import Source
from leanssl.data.paths import find_subfolder
from leanssl.errors import LeansslError


def locate_cifar10(path: str) -> Source:
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    return _locate("cifar10", path, "cifar-10-batches-py", batches, ["test_batch"], "batches.meta")


def locate_cifar100(path: str) -> Source:
    return _locate("cifar100", path, "cifar-100-python", ["train"], ["test"], "meta")


def _locate(kind, path, sub, train_files, test_files, meta_file) -> Source:
    folder = find_subfolder(path, sub, train_files + test_files)
    for name in train_files + test_files:
        if not os.path.isfile(os.path.join(folder, name)):
            raise LeansslError(f"{kind}: {folder}: missing {name} (expected the python version, {sub}/)")
    names = train_files + test_files
    if os.path.isfile(os.path.join(folder, meta_file)):
        names.append(meta_file)
    fp = file_fingerprint([os.path.join(folder, n) for n in names], folder)

    def build(writer, res, strict, progress):
        train = _read_batches(kind, folder, train_files)
        test = _read_batches(kind, folder, test_files)
        classes = _read_classes(kind, os.path.join(folder, meta_file))
        return write_arrays(writer, res, 3, classes, progress, f"caching {kind}",
                            train=train, test=test)  # fmt: skip

    return Source(kind, kind, folder, fp, 32, build)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a crafted "CIFAR batch" cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (only arrays and plain data are allowed)")
        return super().find_class(module, name)


def _unpickle(path: str) -> dict:
    # The CIFAR python batches are pickles of plain dicts of arrays/lists; nothing else is unpickled.
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:
        raise LeansslError(f"cannot read CIFAR batch {path}: {type(e).__name__}: {e}") from None


def _read_batches(kind: str, folder: str, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    label_key = b"fine_labels" if kind == "cifar100" else b"labels"
    xs, ys = [], []
    for name in names:
        path = os.path.join(folder, name)
        d = _unpickle(path)
        if not isinstance(d, dict) or b"data" not in d or label_key not in d:
            raise LeansslError(f"{kind}: {path}: not a CIFAR batch (no 'data'/'{label_key.decode()}')")
        x = np.asarray(d[b"data"], dtype=np.uint8)
        y = np.asarray(d[label_key], dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
            raise LeansslError(f"{kind}: {path}: expected (N, 3072) data and N labels, got {x.shape}")
        xs.append(x.reshape(-1, 3, 32, 32))  # rows are R plane, G plane, B plane, each row-major
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _read_classes(kind: str, meta_path: str) -> list[str] | None:
    key = b"fine_label_names" if kind == "cifar100" else b"label_names"
    if not os.path.isfile(meta_path):
        return [str(i) for i in range(100 if kind == "cifar100" else 10)]
    names = _unpickle(meta_path).get(key)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names else None
