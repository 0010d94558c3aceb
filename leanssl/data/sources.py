"""Data sources, decoded once into a memory-mapped uint8 cache (then augmented on the device, in batch).

``open_dataset(spec)`` turns a SPEC string into a :class:`Dataset` whose image arrays are
read-only ``np.memmap`` views of the cache (uint8, N x C x R x R). One small reader per format:

    digits                 scikit-learn's 8x8 digits (1 channel, default 16 px)
    fashion-mnist[:PATH]   IDX files, gzipped or not (1 channel, default 28 px)
    mnist:PATH             same
    cifar10:PATH           python pickle batches (default 32 px)
    cifar100:PATH          same, fine labels
    stl10:PATH             binary files; pretrain = train + unlabeled (default 96 px)
    folder:PATH or PATH    image folder, any nesting (3 channels, default: the images' median
                           shorter side, at most 64 px)
    npz:PATH               arrays x[, y][, x_test, y_test] (default: native size)

Each reader is split in two: ``_locate_*`` finds and checks the files cheaply (they feed the cache
key) and returns a :class:`_Source` whose ``build`` decodes into a :class:`CacheWriter`.

Every cache entry has the same layout: ``pretrain_x`` holds the labeled training images first
and then any extra unlabeled images (STL-10's unlabeled set, a folder's ``unlabeled/``), so the
train split is a slice of it and nothing is stored twice; ``train_y``, ``test_x``, ``test_y``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
import sys
import zipfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from leanssl.data.cache import CacheWriter, cache_root, entry_key, file_fingerprint, load_or_build
from leanssl.errors import LeansslError

__all__ = ["Split", "Dataset", "open_dataset", "stratified_subset", "per_class_subset",
           "held_out_test_split"]

FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist/"
# Formats PIL may lack a plugin for (HEIC, SVG, ...) are listed too: such files are then reported
# as skipped instead of being silently ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".avif", ".heic", ".heif", ".jp2", ".jxl", ".psd", ".svg")  # fmt: skip
CHUNK = 512  # images per chunk when copying/resizing arrays into the cache
# A folder's default resolution: its images' median shorter side, at most this (the old fixed default,
# what a 2-core CPU trains at comfortably), estimated from this many images' headers.
FOLDER_MAX_RESOLUTION, FOLDER_SIZE_SAMPLE = 64, 200
STATS_SAMPLE = 10_000  # images used to estimate mean/std
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # fmt: skip
UNKNOWN_SPEC = (
    "unknown data spec '{}': expected one of digits, fashion-mnist[:PATH], mnist:PATH, "
    "cifar10:PATH, cifar100:PATH, stl10:PATH, folder:PATH, npz:PATH or an existing folder"
)


@dataclass
class Split:
    x: np.ndarray  # uint8 (N, C, H, W), a read-only np.memmap of the cache
    y: np.ndarray | None  # int64 (N,), or None when unlabeled

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Dataset:
    spec: str
    name: str
    pretrain: Split
    train: Split | None
    test: Split | None
    classes: list[str] | None
    channels: int
    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: list[tuple[str, str]]
    cache_path: str = ""  # the cache entry folder these arrays are mapped from
    held_out: bool = False  # the test split was held out of a labelled source without one (80/20, per class)


@dataclass
class _Source:
    kind: str  # reader name, part of the cache key
    name: str  # filesystem-safe short name
    root: str  # resolved absolute path of the source ("" for built-in data)
    fingerprint: list  # what identifies the source's current contents
    default_resolution: int
    build: Callable[[CacheWriter, int, bool, bool], dict] = field(repr=False)
    held_out: bool = False  # labelled with no test split of its own: a seeded 20% of each class is the test split
    choose_resolution: Callable[[], int] | None = field(default=None, repr=False)  # overrides the default when set


# ---------------------------------------------------------------------------------------------
# public API


def open_dataset(
    spec: str,
    resolution: int | None = None,
    cache_dir=None,
    strict: bool = False,
    progress: bool = True,
) -> Dataset:
    """Open a data SPEC, decoding it into the cache on first use (see module docstring).

    ``resolution``: side of the cached square images (default depends on the source).
    ``strict``: raise on the first undecodable folder image instead of skipping it.
    """
    src = _locate(spec)
    if resolution is None and src.choose_resolution is not None:
        resolution = src.choose_resolution()
    res = _check_resolution(resolution, src.default_resolution)
    key = entry_key(kind=src.kind, root=src.root, resolution=res, fingerprint=src.fingerprint)
    entry = f"{src.name}-{res}px-{key}"

    def build(writer: CacheWriter) -> dict:
        layout = src.build(writer, res, strict, progress)
        mean, std = _channel_stats(writer.get("pretrain_x"))
        return {**layout, "spec_kind": src.kind, "source": src.root, "resolution": res,
                "mean": mean, "std": std}  # fmt: skip

    meta, arrays, path = load_or_build(cache_root(cache_dir), entry, build)
    if strict and meta["skipped"]:
        bad, reason = meta["skipped"][0]
        raise LeansslError(f"cannot decode image {bad}: {reason}")
    ds = _assemble(spec, src.name, meta, arrays, path)
    ds.held_out = src.held_out
    return ds


def held_out_test_split(spec: str) -> bool:
    """Whether SPEC is labelled without a test split, so that open_dataset holds 20% of each class out as one."""
    return _locate(spec).held_out


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


# ---------------------------------------------------------------------------------------------
# spec parsing and dataset assembly


def _locate(spec: str) -> _Source:
    """Parse a SPEC. Named kinds win over a same-named folder in the working directory
    (use ``folder:digits`` or ``./digits`` for that)."""
    if not isinstance(spec, str) or not spec.strip():
        raise LeansslError(UNKNOWN_SPEC.format(spec))
    kind, sep, arg = spec.partition(":")
    kind = kind.strip().lower()
    readers = {"mnist": lambda p: _locate_idx("mnist", p), "cifar10": _locate_cifar10,
               "cifar100": _locate_cifar100, "stl10": _locate_stl10, "folder": _locate_folder,
               "npz": _locate_npz}  # fmt: skip
    if kind == "digits" and not sep:
        return _locate_digits()
    if kind == "fashion-mnist":
        return _locate_idx("fashion-mnist", _existing(arg or FASHION_MNIST_DEFAULT, spec))
    if kind in readers and arg:
        return readers[kind](_existing(arg, spec))
    if os.path.isdir(os.path.expanduser(spec)):
        return _locate_folder(_existing(spec, spec))
    if kind in readers:
        raise LeansslError(f"data spec '{spec}' needs a path: {kind}:PATH")
    _not_a_folder(spec)
    raise LeansslError(UNKNOWN_SPEC.format(spec))


def _not_a_folder(spec: str) -> None:
    """A bare SPEC that names a file, or looks like a path that does not exist: say that, not 'unknown spec'."""
    p = os.path.abspath(os.path.expanduser(spec))
    if os.path.isfile(p):
        hint = f"; for arrays use npz:{spec}" if p.endswith(".npz") else ""
        raise LeansslError(f"data path {p} is a file, not a folder of images{hint}")
    kind = spec.partition(":")[0]
    if os.sep in kind or (spec.startswith(("~", ".")) and ":" not in spec):  # 'name:...' stays a spec
        raise LeansslError(f"no such file or folder: {p}")


def _existing(path: str, spec: str) -> str:
    """Resolved absolute path, or the 'data path not found' error."""
    p = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(p):
        raise LeansslError(f"data path not found: {p} (from spec '{spec}')")
    return os.path.realpath(p)


def _check_resolution(resolution, default: int) -> int:
    if resolution is None:
        return default
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise LeansslError(f"resolution must be a positive integer, got {resolution!r}")
    return int(resolution)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "data"


def _assemble(spec: str, name: str, meta: dict, arrays: dict, path: Path) -> Dataset:
    px = arrays["pretrain_x"]
    n_train = meta["n_train"]
    train = None
    if n_train is not None:
        train = Split(px if n_train == len(px) else px[:n_train], arrays["train_y"])
    test = Split(arrays["test_x"], arrays["test_y"]) if meta["has_test"] else None
    pretrain = Split(px, train.y if train is not None and len(train) == len(px) else None)
    return Dataset(
        spec=spec,
        name=name,
        pretrain=pretrain,
        train=train,
        test=test,
        classes=meta["classes"],
        channels=meta["channels"],
        resolution=meta["resolution"],
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        skipped=[tuple(s) for s in meta["skipped"]],
        cache_path=str(path),
    )


# ---------------------------------------------------------------------------------------------
# shared helpers for array sources


def _resize(x: np.ndarray, res: int) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, C, res, res), antialiased bilinear (same filter as training)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.asarray(x, dtype=np.float32))  # a writable float copy
    t = F.interpolate(t, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
    return t.round_().clamp_(0, 255).to(torch.uint8).numpy()


def _center_square(x: np.ndarray) -> np.ndarray:
    """Lazy center-crop view of (N, C, H, W) to (N, C, S, S), S = min(H, W)."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top : top + s, left : left + s]


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


def _write_arrays(writer: CacheWriter, res: int, channels: int, classes, progress: bool, desc: str,
                  train=None, extra=None, test=None) -> dict:  # fmt: skip
    """Write the standard entry layout from in-memory or memory-mapped arrays.

    ``train``/``test``: (x, y) pairs or None; ``extra``: unlabeled x appended to pretrain or None.
    """
    parts = [p for p in (train[0] if train else None, extra) if p is not None]
    total = sum(len(p) for p in parts) + (len(test[0]) if test else 0)
    with _bar(total, desc, progress) as bar:
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


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=None if progress else True, leave=False)


def _channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
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


def _split_80_20(y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed seeded stratified split: round(20%) of each class to test (classes of one item stay
    in train), so every class is in train."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.append(idx[: int(np.floor(0.2 * len(idx) + 0.5)) if len(idx) > 1 else 0])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx).astype(np.int64)
    return train_idx, test_idx


# ---------------------------------------------------------------------------------------------
# digits (scikit-learn)


def _locate_digits() -> _Source:
    import sklearn

    # The data ships inside scikit-learn, so its version identifies the source.
    return _Source("digits", "digits", "", [["sklearn", sklearn.__version__]], 16, _build_digits)


def _build_digits(writer: CacheWriter, res: int, strict: bool, progress: bool) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # values 0..16
    y = d.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=0)
    tr, te = np.sort(tr), np.sort(te)
    return _write_arrays(writer, res, 1, [str(i) for i in range(10)], progress, "caching digits",
                         train=(x[tr], y[tr]), test=(x[te], y[te]))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
              "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}  # fmt: skip


def _locate_idx(kind: str, path: str) -> _Source:
    # Accept the folder itself or torchvision's layout below it (MNIST/raw, FashionMNIST/raw).
    sub = "FashionMNIST" if kind == "fashion-mnist" else "MNIST"
    folders = [path, os.path.join(path, "raw"), os.path.join(path, sub, "raw")]
    files = {}
    for key, stem in _IDX_FILES.items():
        names = [stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"]
        found = [os.path.join(d, n) for d in folders for n in names]
        found = [f for f in found if os.path.isfile(f)]
        if not found:
            raise LeansslError(f"{kind}: {path}: missing {stem}[.gz] (expected the four IDX files)")
        files[key] = found[0]
    fp = file_fingerprint(list(files.values()), path)
    return _Source(kind, kind, path, fp, 28, partial(_build_idx, kind, files))


def _read_idx(path: str) -> np.ndarray:
    """Parse an IDX file (gzipped or not): magic 0x0000 <dtype> <ndim>, big-endian int32 dims."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise LeansslError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise LeansslError(f"not an IDX file (bad magic number): {path}")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        raise LeansslError(f"IDX file has {len(raw)} bytes, header says {expected}: {path}")
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(dims)


def _build_idx(
    kind: str, files: dict, writer: CacheWriter, res: int, strict: bool, progress: bool
) -> dict:
    a = {k: _read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = a[f"{split}_x"], a[f"{split}_y"]
        if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y):
            raise LeansslError(f"{kind}: {files[split + '_x']}: expected uint8 images (N, H, W) and "
                               f"N labels, got {x.dtype} {x.shape} and {y.shape} labels")  # fmt: skip
    classes = FASHION_CLASSES if kind == "fashion-mnist" else [str(i) for i in range(10)]
    return _write_arrays(writer, res, 1, classes, progress, f"caching {kind}",
                         train=(a["train_x"][:, None], a["train_y"].astype(np.int64)),
                         test=(a["test_x"][:, None], a["test_y"].astype(np.int64)))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickle batches)


def _find_subfolder(path: str, sub: str, markers: list[str]) -> str:
    """``path`` if it holds one of ``markers``, else ``path/sub`` if that does, else ``path``."""
    for folder in (path, os.path.join(path, sub)):
        if any(os.path.isfile(os.path.join(folder, m)) for m in markers):
            return folder
    return path


def _locate_cifar10(path: str) -> _Source:
    batches = [f"data_batch_{i}" for i in range(1, 6)]
    return _locate_cifar("cifar10", path, "cifar-10-batches-py", batches, ["test_batch"], "batches.meta")


def _locate_cifar100(path: str) -> _Source:
    return _locate_cifar("cifar100", path, "cifar-100-python", ["train"], ["test"], "meta")


def _locate_cifar(kind, path, sub, train_files, test_files, meta_file) -> _Source:
    folder = _find_subfolder(path, sub, train_files + test_files)
    for name in train_files + test_files:
        if not os.path.isfile(os.path.join(folder, name)):
            raise LeansslError(f"{kind}: {folder}: missing {name} (expected the python version, {sub}/)")
    names = train_files + test_files
    if os.path.isfile(os.path.join(folder, meta_file)):
        names.append(meta_file)
    fp = file_fingerprint([os.path.join(folder, n) for n in names], folder)

    def build(writer, res, strict, progress):
        train = _read_cifar_batches(kind, folder, train_files)
        test = _read_cifar_batches(kind, folder, test_files)
        classes = _read_cifar_classes(kind, os.path.join(folder, meta_file))
        return _write_arrays(writer, res, 3, classes, progress, f"caching {kind}",
                             train=train, test=test)  # fmt: skip

    return _Source(kind, kind, folder, fp, 32, build)


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


def _read_cifar_batches(kind: str, folder: str, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
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


def _read_cifar_classes(kind: str, meta_path: str) -> list[str] | None:
    key = b"fine_label_names" if kind == "cifar100" else b"label_names"
    if not os.path.isfile(meta_path):
        return [str(i) for i in range(100 if kind == "cifar100" else 10)]
    names = _unpickle(meta_path).get(key)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names else None


# ---------------------------------------------------------------------------------------------
# STL-10 (binary)

_STL_IMAGE_BYTES = 3 * 96 * 96


def _locate_stl10(path: str) -> _Source:
    folder = _find_subfolder(path, "stl10_binary", ["train_X.bin", "unlabeled_X.bin", "test_X.bin"])
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
    return _Source("stl10", "stl10", folder, fp, 96, partial(_build_stl10, folder, have))


def _stl_images(path: str) -> np.ndarray:
    """Lazy (N, 3, 96, 96) view of an STL-10 image file (stored column-major per image)."""
    size = os.path.getsize(path)
    if size == 0 or size % _STL_IMAGE_BYTES:
        raise LeansslError(f"stl10: {path}: size {size} is not a multiple of 3*96*96")
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(size // _STL_IMAGE_BYTES, 3, 96, 96))
    return raw.transpose(0, 1, 3, 2)  # stored as (C, W, H): swap to (C, H, W)


def _stl_labels(path: str, n: int) -> np.ndarray:
    y = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # stored as 1..10
    if len(y) != n or (n and (y.min() < 0 or y.max() > 9)):
        raise LeansslError(f"stl10: {path}: expected {n} labels in 1..10")
    return y


def _build_stl10(
    folder: str, have: dict, writer: CacheWriter, res: int, strict: bool, progress: bool
) -> dict:
    def split(name):
        if not have[f"{name}_X"]:
            return None
        x = _stl_images(os.path.join(folder, f"{name}_X.bin"))
        return x, _stl_labels(os.path.join(folder, f"{name}_y.bin"), len(x))

    extra = _stl_images(os.path.join(folder, "unlabeled_X.bin")) if have["unlabeled_X"] else None
    classes = [str(i) for i in range(10)]
    names_file = os.path.join(folder, "class_names.txt")
    if os.path.isfile(names_file):
        with open(names_file) as f:
            names = [line.strip() for line in f if line.strip()]
        classes = names if len(names) == 10 else classes
    train, test = split("train"), split("test")
    return _write_arrays(writer, res, 3, classes if train else None, progress, "caching stl10",
                         train=train, extra=extra, test=test if train else None)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# numpy .npz


def _locate_npz(path: str) -> _Source:
    if not os.path.isfile(path):
        raise LeansslError(f"npz: {path}: not a file")
    shapes = _npz_shapes(path)
    if "x" not in shapes:
        raise LeansslError(f"npz: {path}: no array 'x' (found: {', '.join(sorted(shapes)) or 'none'})")
    for key in ("x", "x_test"):
        if key in shapes:
            _npz_layout(path, key, shapes[key])
    if ("x_test" in shapes) != ("y_test" in shapes) or ("x_test" in shapes and "y" not in shapes):
        raise LeansslError(f"npz: {path}: x_test and y_test must come together, and with y")
    layout, _ = _npz_layout(path, "x", shapes["x"])
    h, w = (shapes["x"][1], shapes["x"][2]) if layout != "nchw" else (shapes["x"][2], shapes["x"][3])
    name = "npz-" + _safe_name(Path(path).stem)
    fp = file_fingerprint([path], os.path.dirname(path))
    return _Source("npz", name, path, fp, min(h, w), partial(_build_npz, path, name),
                   held_out="y" in shapes and "x_test" not in shapes)


def _npz_shapes(path: str) -> dict[str, tuple]:
    """Array shapes from the .npy headers inside the zip, without loading the data."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():
                if not member.endswith(".npy"):
                    continue
                with z.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)  # fmt: skip
                    shapes[member[:-4]] = read(f)[0]
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise LeansslError(f"npz: {path}: not a readable .npz file ({e})") from None
    return shapes


def _npz_layout(path: str, key: str, shape: tuple) -> tuple[str, int]:
    """'nhw', 'nhwc' or 'nchw' and the channel count; (N,H,W,C) wins when both ends could be C."""
    if len(shape) == 3:
        return "nhw", 1
    if len(shape) == 4 and shape[3] in (1, 3):
        return "nhwc", shape[3]
    if len(shape) == 4 and shape[1] in (1, 3):
        return "nchw", shape[1]
    raise LeansslError(f"npz: {path}: '{key}' has shape {shape}; expected (N,H,W), (N,H,W,C) "
                       "or (N,C,H,W) with C 1 or 3")  # fmt: skip


def _npz_images(path: str, key: str, x: np.ndarray) -> np.ndarray:
    """Any accepted layout/dtype -> uint8 (N, C, H, W)."""
    layout, _ = _npz_layout(path, key, x.shape)
    x = x[:, None] if layout == "nhw" else x.transpose(0, 3, 1, 2) if layout == "nhwc" else x
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 1 or np.isnan(x).any()):
            raise LeansslError(f"npz: {path}: float '{key}' must lie in [0, 1]")
        out = np.empty(x.shape, np.uint8)
        for s in range(0, len(x), CHUNK):  # chunked: no full-size float64 temporary
            out[s : s + CHUNK] = np.round(x[s : s + CHUNK] * 255)
        return out
    raise LeansslError(f"npz: {path}: '{key}' has dtype {x.dtype}; expected uint8 or float in [0, 1]")


def _npz_labels(path: str, key: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise LeansslError(f"npz: {path}: '{key}' has shape {y.shape}; expected ({n},)")
    return y


def _build_npz(
    path: str, name: str, writer: CacheWriter, res: int, strict: bool, progress: bool
) -> dict:
    with np.load(path, allow_pickle=False) as z:
        x = _npz_images(path, "x", z["x"])
        channels = x.shape[1]
        if "y" not in z:
            return _write_arrays(writer, res, channels, None, progress, f"caching {name}", extra=x)
        y = _npz_labels(path, "y", z["y"], len(x))
        if "x_test" in z:
            xt = _npz_images(path, "x_test", z["x_test"])
            yt = _npz_labels(path, "y_test", z["y_test"], len(xt))
            if xt.shape[1] != channels:
                raise LeansslError(f"npz: {path}: x has {channels} channels, x_test {xt.shape[1]}")
        else:
            tr, te = _split_80_20(y)
            x, y, xt, yt = x[tr], y[tr], x[te], y[te]
    # Labels may be any ints or strings: map them to 0..K-1 (kept as-is when already 0..K-1).
    values = np.unique(np.concatenate([y, yt]))
    classes = [str(v) for v in values]
    y, yt = np.searchsorted(values, y), np.searchsorted(values, yt)
    test = (xt, yt) if len(xt) else None
    return _write_arrays(writer, res, channels, classes, progress, f"caching {name}",
                         train=(x, y), test=test)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# image folders


def _locate_folder(path: str) -> _Source:
    """Find the images and decide splits and labels (cheap: paths only, nothing decoded).

    Layout rules:
    - ``train/`` plus ``test/`` (or else ``val/``) subfolders are the splits; an ``unlabeled/``
      subfolder beside them is added to pretrain. Other subfolders are ignored.
    - Within a split, class = first-level subfolder (images deeper inside belong to it). If any
      image lies directly in the split's root, or there are fewer than two class folders, the
      whole split is unlabeled (a photo collection with nested albums is not a class layout).
    - Labeled without a (labeled) test split: fixed seeded stratified 80/20 train/test split.
    - Unlabeled: pretrain = all images, no train/test.
    Hidden files and folders (names starting with '.') are ignored; symlinked folders are not
    followed (no loops).
    """
    if not os.path.isdir(path):
        raise LeansslError(f"folder: {path}: not a folder")
    name = "folder-" + _safe_name(os.path.basename(path.rstrip("/")))
    train_dir = os.path.join(path, "train")
    test_dirs = [os.path.join(path, d) for d in ("test", "val")]
    test_dir = next((d for d in test_dirs if os.path.isdir(d)), None)
    unreadable: list[tuple[str, str]] = []  # folders os.walk could not list: reported, not silently missing
    if os.path.isdir(train_dir) and test_dir:
        train, test = _scan(train_dir, unreadable), _scan(test_dir, unreadable)
        unlabeled_dir = os.path.join(path, "unlabeled")
        extra = _scan(unlabeled_dir, unreadable) if os.path.isdir(unlabeled_dir) else []
    else:
        train, test, extra = _scan(path, unreadable), [], []
    if not train and not extra:
        exts = ", ".join(IMAGE_EXTENSIONS)
        also = ""
        if unreadable:
            also = f"; {len(unreadable)} folder(s) could not be read, first {unreadable[0][0]}: {unreadable[0][1]}"
        raise LeansslError(f"no images found in {path} (looked for {exts}, in any subfolder{also})")

    train_labels = _folder_labels(train, min_classes=2)
    test_labels = _folder_labels(test, min_classes=1) if train_labels is not None else None
    if train_labels is None:  # unlabeled: everything is pretraining data
        plan = {"train": [], "train_y": None, "extra": train + extra,
                "test": [], "test_y": None, "classes": None}  # fmt: skip
    else:
        classes = sorted(set(train_labels) | set(test_labels or []))
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[c] for c in train_labels], dtype=np.int64)
        if test_labels is None:  # no split folders, or an unlabeled (flat) test folder
            tr, te = _split_80_20(y)
            test, yt = [train[i] for i in te], y[te]
            train, y = [train[i] for i in tr], y[tr]
        else:
            yt = np.array([index[c] for c in test_labels], dtype=np.int64)
        plan = {"train": train, "train_y": y, "extra": extra,
                "test": test, "test_y": yt, "classes": classes}  # fmt: skip
    plan["unreadable"] = unreadable
    fp = [[os.path.relpath(p, path), size, mtime] for p, _, size, mtime in
          sorted(plan["train"] + plan["extra"] + plan["test"])]  # fmt: skip
    fp.append(["labels", plan["classes"]])
    fp.append(["unreadable", [os.path.relpath(d, path) for d, _ in unreadable]])  # readable again: rebuild
    files = [f[0] for f in plan["train"] + plan["extra"]]
    return _Source("folder", name, path, fp, FOLDER_MAX_RESOLUTION, partial(_build_folder, path, plan),
                   held_out=plan["classes"] is not None and test_labels is None,
                   choose_resolution=partial(_folder_resolution, path, files))


def _folder_resolution(path: str, files: list[str]) -> int:
    """The images' own size: the median shorter side of up to FOLDER_SIZE_SAMPLE evenly spaced images
    (headers only), capped at FOLDER_MAX_RESOLUTION, so small images are not upsampled; one note line."""
    picked = [files[i] for i in np.unique(np.linspace(0, len(files) - 1, min(len(files), FOLDER_SIZE_SAMPLE)).astype(int))]
    sides = []
    for f in picked:
        try:
            if os.path.isfile(f):  # not a FIFO or device: those are reported as skipped when decoding
                with Image.open(f) as im:
                    sides.append(min(im.size))
        except Exception:  # PIL raises many types; a bad file is reported as skipped when the folder is decoded
            continue
    if not sides:
        return FOLDER_MAX_RESOLUTION
    res = min(int(np.median(sides)), FOLDER_MAX_RESOLUTION)
    print(f"leanssl: note: decoding {path} at {res} px (median shorter side of {len(sides)} sampled images "
          f"{int(np.median(sides))} px, at most {FOLDER_MAX_RESOLUTION}); --resolution overrides", file=sys.stderr)
    return max(res, 1)


def _scan(root: str, unreadable: list) -> list[tuple[str, str, int, int]]:
    """Sorted (absolute path, path relative to root, size, mtime_ns) of the images below root.
    Folders that cannot be listed are appended to ``unreadable`` as (path, reason)."""
    found = []

    def on_error(e: OSError) -> None:
        unreadable.append((e.filename, f"unreadable folder: {e.strerror}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            if fn.startswith(".") or not fn.lower().endswith(IMAGE_EXTENSIONS):
                continue
            p = os.path.join(dirpath, fn)
            try:
                st = os.stat(p)
            except OSError:  # a broken symlink: keep it so it is reported as skipped
                st = os.lstat(p)
            found.append((p, os.path.relpath(p, root), st.st_size, st.st_mtime_ns))
    return sorted(found)


def _folder_labels(files: list, min_classes: int) -> list[str] | None:
    """First-level folder of each file, or None when the files are not laid out by class."""
    if not files:
        return None
    parts = [Path(rel).parts for _, rel, _, _ in files]
    if any(len(p) == 1 for p in parts):
        return None
    labels = [p[0] for p in parts]
    return labels if len(set(labels)) >= min_classes else None


def _build_folder(
    path: str, plan: dict, writer: CacheWriter, res: int, strict: bool, progress: bool
) -> dict:
    skipped: list[tuple[str, str]] = list(plan["unreadable"])
    if strict and skipped:
        raise LeansslError(f"cannot read folder {skipped[0][0]}: {skipped[0][1]}")
    files = [f[0] for f in plan["train"] + plan["extra"]]
    n_train_files = len(plan["train"])
    with _bar(len(files) + len(plan["test"]), f"decoding {os.path.basename(path)}", progress) as bar:
        px = writer.images("pretrain_x", len(files), 3, res)
        ok = _decode_into(px, files, res, strict, skipped, bar)
        test_ok = None
        if plan["test"]:
            tx = writer.images("test_x", len(plan["test"]), 3, res)
            test_ok = _decode_into(tx, [f[0] for f in plan["test"]], res, strict, skipped, bar)
    if not ok.any():
        first = skipped[0] if skipped else ("", "")
        raise LeansslError(f"none of the {len(files)} images in {path} could be decoded "
                           f"(first: {first[0]}: {first[1]})")  # fmt: skip
    writer.shrink("pretrain_x", int(ok.sum()))
    n_train = int(ok[:n_train_files].sum())
    labeled = plan["classes"] is not None and n_train > 0
    if labeled:
        writer.labels("train_y", plan["train_y"][ok[:n_train_files]])
    has_test = False
    if test_ok is not None:
        has_test = labeled and bool(test_ok.any())
        writer.shrink("test_x", int(test_ok.sum()) if has_test else 0)
        if has_test:
            writer.labels("test_y", plan["test_y"][test_ok])
    return {"n_train": n_train if labeled else None, "has_test": has_test,
            "classes": plan["classes"] if labeled else None, "channels": 3,
            "skipped": [list(s) for s in skipped]}  # fmt: skip


def _decode_into(dst: np.ndarray, files: list[str], res: int, strict: bool, skipped: list, bar):
    """Decode ``files`` in a thread pool (PIL releases the GIL) and write the good ones to
    consecutive rows of ``dst``, in file order. Returns the mask of decoded files. A bounded
    window of pending decodes keeps memory flat for any number of files."""
    ok = np.zeros(len(files), dtype=bool)
    workers = max(2, min(16, os.cpu_count() or 2))
    row = 0
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for i, f in enumerate(files):
            pending.append((i, f, pool.submit(_decode_image, f, res)))
            if len(pending) >= 4 * workers:
                row = _drain(pending, 1, dst, row, ok, strict, skipped, bar)
        row = _drain(pending, len(pending), dst, row, ok, strict, skipped, bar)
    return ok


def _drain(pending: deque, count: int, dst, row: int, ok, strict: bool, skipped: list, bar) -> int:
    for _ in range(count):
        i, f, fut = pending.popleft()
        try:
            dst[row] = fut.result().transpose(2, 0, 1)
            ok[i] = True
            row += 1
        except _BadImage as e:
            if strict:
                for _, _, other in pending:
                    other.cancel()
                raise LeansslError(f"cannot decode image {f}: {e}") from None
            skipped.append((f, str(e)))
        bar.update(1)
    return row


class _BadImage(Exception):
    pass


def _decode_image(path: str, res: int) -> np.ndarray:
    """One image file -> uint8 (res, res, 3): shorter side resized to res (antialiased), center
    square crop. Raises _BadImage with a one-line reason for anything PIL cannot decode."""
    try:
        if os.path.getsize(path) == 0:
            raise _BadImage("empty file")
        # Pillow's decompression-bomb guard is kept as the size limit, deliberately: above
        # Image.MAX_IMAGE_PIXELS (89 MP) it warns and decodes, above twice that it raises and the
        # file is skipped. A 10000x10000 photo decodes; a JPEG is decoded at a reduced scale (draft).
        with Image.open(path) as im:
            im.draft("RGB", (res, res))  # JPEG: let libjpeg decode at a reduced scale (>= res)
            if im.getexif().get(0x0112, 1) != 1:  # EXIF orientation (camera photos)
                im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            # crop first: resize(box=...) would blend pixels from outside the square into its edges
            im = im.crop((left, top, left + s, top + s)).resize((res, res), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except _BadImage:
        raise
    except UnidentifiedImageError:
        raise _BadImage("unsupported format or not an image (PIL cannot identify it)") from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError, ...)
        msg = " ".join(str(e).split()) or "unreadable"
        raise _BadImage(f"{type(e).__name__}: {msg}") from None


def _to_rgb(im):
    """Any PIL mode -> RGB. 16/32-bit and float grayscale are rescaled, not clipped (PIL's own
    convert clips 'I;16' values above 255 to white)."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im)
        if im.mode.startswith("I;16"):
            a = a.astype(np.float64) / 257.0  # 0..65535 -> 0..255
        elif im.mode == "F" and a.size and np.nanmax(a) <= 1.0:
            a = a.astype(np.float64) * 255.0
        elif im.mode == "I" and a.size and a.max() > 255:  # 16-bit data in a 32-bit mode
            a = a.astype(np.float64) / (257.0 if a.max() <= 65535 else a.max() / 255.0)
        im = Image.fromarray(np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8), "L")
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # avoids PIL's warning; the alpha is dropped below
    return im if im.mode == "RGB" else im.convert("RGB")
