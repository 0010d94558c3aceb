"""What a reader produces (:class:`Source`) and what ``open_dataset`` returns (:class:`Dataset`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from leanssl.data.cache import CacheWriter


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
class Source:
    """A located source: found and checked cheaply (these fields feed the cache key), decoded by ``build``."""

    kind: str  # reader name, part of the cache key
    name: str  # filesystem-safe short name
    root: str  # resolved absolute path of the source ("" for built-in data)
    fingerprint: list  # what identifies the source's current contents
    default_resolution: int
    # build(writer, resolution, strict, progress) -> the entry's layout (see write_arrays)
    build: Callable[[CacheWriter, int, bool, bool], dict] = field(repr=False)
    held_out: bool = False  # labelled with no test split of its own: a seeded 20% of each class is the test split
    choose_resolution: Callable[[], int] | None = field(default=None, repr=False)  # overrides the default when set
    # image folders: the files behind the pretrain rows and the test rows, in cache order, before
    # the build drops the ones it cannot decode (Dataset.skipped)
    files: tuple[list[str], list[str]] | None = field(default=None, repr=False)


def assemble(spec: str, name: str, meta: dict, arrays: dict, path: Path, held_out: bool) -> Dataset:
    """A Dataset over a cache entry's arrays: train is a prefix of pretrain_x, nothing is copied."""
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
        held_out=held_out,
    )
