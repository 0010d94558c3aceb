"""Opening a data SPEC: parse it, find its reader (leanssl.data.formats), decode it into the cache once."""

from __future__ import annotations

import os

import numpy as np

from leanssl.data.arrays import channel_stats
from leanssl.data.cache import CacheWriter, cache_root, entry_key, load_or_build
from leanssl.data.dataset import Dataset, Source, Split, assemble
from leanssl.data.formats import READERS
from leanssl.data.paths import existing
from leanssl.data.subsets import per_class_subset, stratified_subset
from leanssl.errors import LeansslError

__all__ = ["Split", "Dataset", "open_dataset", "stratified_subset", "per_class_subset",
           "held_out_test_split", "locate"]  # fmt: skip



def open_dataset(
    spec: str,
    resolution: int | None = None,
    cache_dir=None,
    strict: bool = False,
    progress: bool = True,
) -> Dataset:
    """Open a data SPEC, decoding it into the cache on first use (see leanssl.data).

    ``resolution``: side of the cached square images (default depends on the source).
    ``strict``: raise on the first undecodable folder image instead of skipping it.
    """
    src = locate(spec)
    if resolution is None and src.choose_resolution is not None:
        resolution = src.choose_resolution()
    res = _check_resolution(resolution, src.default_resolution)
    key = entry_key(kind=src.kind, root=src.root, resolution=res, fingerprint=src.fingerprint)
    entry = f"{src.name}-{res}px-{key}"

    def build(writer: CacheWriter) -> dict:
        layout = src.build(writer, res, strict, progress)
        mean, std = channel_stats(writer.get("pretrain_x"))
        return {**layout, "spec_kind": src.kind, "source": src.root, "resolution": res,
                "mean": mean, "std": std}  # fmt: skip

    meta, arrays, path = load_or_build(cache_root(cache_dir), entry, build)
    if strict and meta["skipped"]:
        bad, reason = meta["skipped"][0]
        raise LeansslError(f"cannot decode image {bad}: {reason}")
    return assemble(spec, src.name, meta, arrays, path, src.held_out)


def held_out_test_split(spec: str) -> bool:
    """Whether SPEC is labelled without a test split, so that open_dataset holds 20% of each class out as one."""
    return locate(spec).held_out


def locate(spec: str) -> Source:
    """Parse a SPEC into its located source. Named kinds win over a same-named folder in the working
    directory (use ``folder:digits`` or ``./digits`` for that), except a kind that needs a path and
    was given none."""
    if not isinstance(spec, str) or not spec.strip():
        raise LeansslError(_unknown(spec))
    kind, sep, arg = spec.partition(":")
    kind = kind.strip().lower()
    reader = READERS.get(kind)
    if reader is not None and not reader.takes_path and not sep:
        return reader.locate()
    if reader is not None and reader.takes_path and (arg or reader.default_path):
        return reader.locate(existing(arg or reader.default_path, spec))
    if os.path.isdir(os.path.expanduser(spec)):
        return READERS["folder"].locate(existing(spec, spec))
    if reader is not None and reader.takes_path:
        raise LeansslError(f"data spec '{spec}' needs a path: {kind}:PATH")
    _not_a_folder(spec)
    raise LeansslError(_unknown(spec))


def _unknown(spec) -> str:
    usages = ", ".join(reader.usage(kind) for kind, reader in READERS.items())
    return f"unknown data spec '{spec}': expected one of {usages} or an existing folder"


def _not_a_folder(spec: str) -> None:
    """A bare SPEC that names a file, or looks like a path that does not exist: say that, not 'unknown spec'."""
    p = os.path.abspath(os.path.expanduser(spec))
    if os.path.isfile(p):
        hint = f"; for arrays use npz:{spec}" if p.endswith(".npz") else ""
        raise LeansslError(f"data path {p} is a file, not a folder of images{hint}")
    kind = spec.partition(":")[0]
    if os.sep in kind or (spec.startswith(("~", ".")) and ":" not in spec):  # 'name:...' stays a spec
        raise LeansslError(f"no such file or folder: {p}")


def _check_resolution(resolution, default: int) -> int:
    if resolution is None:
        return default
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
        raise LeansslError(f"resolution must be a positive integer, got {resolution!r}")
    return int(resolution)
