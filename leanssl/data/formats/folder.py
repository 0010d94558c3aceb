"""``folder:PATH`` or a bare folder PATH: image files, any nesting (3 channels, default: the images' median
shorter side, at most 64 px). Locating scans paths only; building decodes (see leanssl.data.images)."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from leanssl.data.arrays import progress_bar
from leanssl.data.cache import CacheWriter
from leanssl.data.dataset import Source
from leanssl.data.images import IMAGE_EXTENSIONS, decode_into
from leanssl.data.paths import safe_name
from leanssl.data.subsets import split_80_20
from leanssl.errors import LeansslError

# A folder's default resolution: its images' median shorter side, at most this (the old fixed default,
# what a 2-core CPU trains at comfortably), estimated from this many images' headers.
FOLDER_MAX_RESOLUTION, FOLDER_SIZE_SAMPLE = 64, 200


def locate(path: str) -> Source:
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
    name = "folder-" + safe_name(os.path.basename(path.rstrip("/")))
    train, test, extra, unreadable = _scan_splits(path)
    plan, held_out = _plan(train, test, extra)
    plan["unreadable"] = unreadable
    fp = [[os.path.relpath(p, path), size, mtime] for p, _, size, mtime in
          sorted(plan["train"] + plan["extra"] + plan["test"])]  # fmt: skip
    fp.append(["labels", plan["classes"]])
    fp.append(["unreadable", [os.path.relpath(d, path) for d, _ in unreadable]])  # readable again: rebuild
    files = [f[0] for f in plan["train"] + plan["extra"]]
    return Source("folder", name, path, fp, FOLDER_MAX_RESOLUTION, partial(_build, path, plan),
                  held_out=held_out, choose_resolution=partial(_resolution, path, files),
                  files=(files, [f[0] for f in plan["test"]]))


def _scan_splits(path: str) -> tuple[list, list, list, list[tuple[str, str]]]:
    """The train, test and unlabeled files, and the folders os.walk could not list (reported, not
    silently missing)."""
    train_dir = os.path.join(path, "train")
    test_dirs = [os.path.join(path, d) for d in ("test", "val")]
    test_dir = next((d for d in test_dirs if os.path.isdir(d)), None)
    unreadable: list[tuple[str, str]] = []
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
    return train, test, extra, unreadable


def _plan(train: list, test: list, extra: list) -> tuple[dict, bool]:
    """The files and labels of each split, and whether the test split is held out of train."""
    train_labels = _labels(train, min_classes=2)
    test_labels = _labels(test, min_classes=1) if train_labels is not None else None
    if train_labels is None:  # unlabeled: everything is pretraining data
        return {"train": [], "train_y": None, "extra": train + extra,
                "test": [], "test_y": None, "classes": None}, False  # fmt: skip
    classes = sorted(set(train_labels) | set(test_labels or []))
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in train_labels], dtype=np.int64)
    if test_labels is None:  # no split folders, or an unlabeled (flat) test folder
        tr, te = split_80_20(y)
        test, yt = [train[i] for i in te], y[te]
        train, y = [train[i] for i in tr], y[tr]
    else:
        yt = np.array([index[c] for c in test_labels], dtype=np.int64)
    return {"train": train, "train_y": y, "extra": extra,
            "test": test, "test_y": yt, "classes": classes}, test_labels is None  # fmt: skip


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


def _labels(files: list, min_classes: int) -> list[str] | None:
    """First-level folder of each file, or None when the files are not laid out by class."""
    if not files:
        return None
    parts = [Path(rel).parts for _, rel, _, _ in files]
    if any(len(p) == 1 for p in parts):
        return None
    labels = [p[0] for p in parts]
    return labels if len(set(labels)) >= min_classes else None


def _resolution(path: str, files: list[str]) -> int:
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


def _build(path: str, plan: dict, writer: CacheWriter, res: int, strict: bool, progress: bool) -> dict:
    skipped: list[tuple[str, str]] = list(plan["unreadable"])
    if strict and skipped:
        raise LeansslError(f"cannot read folder {skipped[0][0]}: {skipped[0][1]}")
    files = [f[0] for f in plan["train"] + plan["extra"]]
    n_train_files = len(plan["train"])
    with progress_bar(len(files) + len(plan["test"]), f"decoding {os.path.basename(path)}", progress) as bar:
        px = writer.images("pretrain_x", len(files), 3, res)
        ok = decode_into(px, files, res, strict, skipped, bar)
        test_ok = None
        if plan["test"]:
            tx = writer.images("test_x", len(plan["test"]), 3, res)
            test_ok = decode_into(tx, [f[0] for f in plan["test"]], res, strict, skipped, bar)
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
