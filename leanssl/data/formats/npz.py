"""``npz:PATH``: arrays x[, y][, x_test, y_test] (default: native size); without x_test, labelled data
holds a seeded 20% of each class out as its test split."""

from __future__ import annotations

import os
import zipfile
from functools import partial
from pathlib import Path

import numpy as np

from leanssl.data.arrays import CHUNK, write_arrays
from leanssl.data.cache import CacheWriter, file_fingerprint
from leanssl.data.dataset import Source
from leanssl.data.paths import safe_name
from leanssl.data.subsets import split_80_20
from leanssl.errors import LeansslError


def locate(path: str) -> Source:
    if not os.path.isfile(path):
        raise LeansslError(f"npz: {path}: not a file")
    shapes = _shapes(path)
    if "x" not in shapes:
        raise LeansslError(f"npz: {path}: no array 'x' (found: {', '.join(sorted(shapes)) or 'none'})")
    for key in ("x", "x_test"):
        if key in shapes:
            _layout(path, key, shapes[key])
    if ("x_test" in shapes) != ("y_test" in shapes) or ("x_test" in shapes and "y" not in shapes):
        raise LeansslError(f"npz: {path}: x_test and y_test must come together, and with y")
    layout, _ = _layout(path, "x", shapes["x"])
    h, w = (shapes["x"][1], shapes["x"][2]) if layout != "nchw" else (shapes["x"][2], shapes["x"][3])
    name = "npz-" + safe_name(Path(path).stem)
    fp = file_fingerprint([path], os.path.dirname(path))
    return Source("npz", name, path, fp, min(h, w), partial(_build, path, name),
                  held_out="y" in shapes and "x_test" not in shapes)


def _shapes(path: str) -> dict[str, tuple]:
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


def _layout(path: str, key: str, shape: tuple) -> tuple[str, int]:
    """'nhw', 'nhwc' or 'nchw' and the channel count; (N,H,W,C) wins when both ends could be C."""
    if len(shape) == 3:
        return "nhw", 1
    if len(shape) == 4 and shape[3] in (1, 3):
        return "nhwc", shape[3]
    if len(shape) == 4 and shape[1] in (1, 3):
        return "nchw", shape[1]
    raise LeansslError(f"npz: {path}: '{key}' has shape {shape}; expected (N,H,W), (N,H,W,C) "
                       "or (N,C,H,W) with C 1 or 3")  # fmt: skip


def _images(path: str, key: str, x: np.ndarray) -> np.ndarray:
    """Any accepted layout/dtype -> uint8 (N, C, H, W)."""
    layout, _ = _layout(path, key, x.shape)
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


def _labels(path: str, key: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise LeansslError(f"npz: {path}: '{key}' has shape {y.shape}; expected ({n},)")
    return y


def _build(path: str, name: str, writer: CacheWriter, res: int, strict: bool, progress: bool) -> dict:
    with np.load(path, allow_pickle=False) as z:
        x = _images(path, "x", z["x"])
        channels = x.shape[1]
        if "y" not in z:
            return write_arrays(writer, res, channels, None, progress, f"caching {name}", extra=x)
        y = _labels(path, "y", z["y"], len(x))
        if "x_test" in z:
            xt = _images(path, "x_test", z["x_test"])
            yt = _labels(path, "y_test", z["y_test"], len(xt))
            if xt.shape[1] != channels:
                raise LeansslError(f"npz: {path}: x has {channels} channels, x_test {xt.shape[1]}")
        else:
            tr, te = split_80_20(y)
            x, y, xt, yt = x[tr], y[tr], x[te], y[te]
    # Labels may be any ints or strings: map them to 0..K-1 (kept as-is when already 0..K-1).
    values = np.unique(np.concatenate([y, yt]))
    classes = [str(v) for v in values]
    y, yt = np.searchsorted(values, y), np.searchsorted(values, yt)
    test = (xt, yt) if len(xt) else None
    return write_arrays(writer, res, channels, classes, progress, f"caching {name}",
                        train=(x, y), test=test)  # fmt: skip
