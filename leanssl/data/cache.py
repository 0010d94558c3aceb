"""Decode-once cache: one folder of uint8 ``.npy`` arrays per (source, resolution), memory-mapped on load.

A cache entry is built in a temporary sibling folder, ``meta.json`` is written last (with
``"complete": true``) and the folder is then renamed into place with ``os.replace``, so a build
that was interrupted is never taken for a finished one. An entry whose meta is missing or whose
array files do not match it is deleted and rebuilt. The entry name carries a hash of everything
that determines its contents (see :func:`entry_key`), so a changed source gets a new entry.

Integrity checks, chosen to stay cheap for a multi-GB cache: every open checks each array file's
size, its .npy header and a checksum of a sample (64 evenly spaced 64 KiB blocks, the whole file
when smaller: at most 4 MiB read). That catches truncation, a file swapped or zero-filled in
whole or in large parts; a single flipped bit in a big file can escape it. A full checksum is
also written at build time and checked on every open when ``LEANSSL_VERIFY_CACHE=1``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from leanssl.errors import LeansslError

# Bump whenever the decoded pixels or the layout of an entry change (resampling, crop rule, files).
FORMAT_VERSION = 2  # 2: checksums in meta.json
META = "meta.json"
SAMPLE_BLOCKS, BLOCK = 64, 1 << 16  # the sampled checksum reads at most 64 x 64 KiB per file


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$LEANSSL_CACHE``, else ``~/.cache/leanssl``."""
    if cache_dir is None:
        cache_dir = os.environ.get("LEANSSL_CACHE") or Path.home() / ".cache" / "leanssl"
    return Path(cache_dir).expanduser().absolute()


def file_fingerprint(paths: list[str], base: str) -> list[list]:
    """(relative path, size, mtime_ns) of each file: cheap to compute, changes when a file does."""
    out = []
    for p in sorted(paths):
        st = os.stat(p)
        out.append([os.path.relpath(p, base), st.st_size, st.st_mtime_ns])
    return out


def entry_key(**parts) -> str:
    """Short stable hash of the JSON-serialisable ``parts`` plus :data:`FORMAT_VERSION`."""
    blob = json.dumps({"format_version": FORMAT_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class CacheWriter:
    """Creates the arrays of one entry inside its temporary build folder."""

    def __init__(self, directory: Path):
        self.dir = directory
        self._arrays: dict[str, np.ndarray] = {}

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.npy"

    def images(self, name: str, n: int, channels: int, resolution: int) -> np.memmap:
        """A writable uint8 (n, C, R, R) array backed by the file, so big sources never sit in RAM."""
        # The file is sparse: writing through the map on a full disk would kill the process with SIGBUS.
        # Reserving its blocks now turns that into an ordinary error before any decoding.
        try:
            arr = np.lib.format.open_memmap(
                self._path(name), mode="w+", dtype=np.uint8, shape=(n, channels, resolution, resolution)
            )
            _reserve(self._path(name))
        except OSError as e:
            need = n * channels * resolution * resolution
            raise LeansslError(f"cannot build the cache in {self.dir.parent}: {e.strerror or e} "
                               f"({need / 2**20:.0f} MiB needed; free space, or set --cache-dir elsewhere)") from None
        self._arrays[name] = arr
        return arr

    def get(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def labels(self, name: str, y: np.ndarray) -> None:
        y = np.ascontiguousarray(y, dtype=np.int64)
        np.save(self._path(name), y)
        self._arrays[name] = y

    def shrink(self, name: str, n: int, chunk: int = 2048) -> np.memmap | None:
        """Keep the first ``n`` rows of an image array (used after skipping undecodable files).

        The .npy header holds the shape, so this copies into a new file; skips are rare and this
        keeps memory bounded. ``n == 0`` removes the array.
        """
        old = self._arrays.pop(name)
        if n == len(old):
            self._arrays[name] = old
            return old
        tmp_name = f"{name}.shrink"
        new = None
        if n > 0:
            new = self.images(tmp_name, n, old.shape[1], old.shape[2])
            for s in range(0, n, chunk):
                new[s : s + chunk] = old[s : min(s + chunk, n)]
            new.flush()
            self._arrays.pop(tmp_name)
        del old
        os.remove(self._path(name))
        if new is None:
            return None
        del new
        os.replace(self._path(tmp_name), self._path(name))
        arr = np.load(self._path(name), mmap_mode="r+")
        self._arrays[name] = arr
        return arr

    def finish(self, meta: dict) -> dict:
        """Flush and fsync every array, then write meta.json (last) describing them."""
        described = {}
        for name, arr in self._arrays.items():
            if isinstance(arr, np.memmap):
                arr.flush()
            path = self._path(name)
            _fsync_file(path)
            described[name] = {
                "shape": list(arr.shape),
                "dtype": str(arr.dtype),
                "bytes": path.stat().st_size,
                "sample_blake2b": sample_digest(path),
                "blake2b": full_digest(path),  # about 1 s per GB, small beside decoding it
            }
        self._arrays.clear()
        meta = {**meta, "format_version": FORMAT_VERSION, "arrays": described, "complete": True}
        meta["meta_blake2b"] = meta_digest(meta)
        meta_path = self.dir / META
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.dir)
        return meta


def _reserve(path: Path) -> None:
    """Allocate every block of a file, or raise OSError (ENOSPC) when the disk cannot hold it."""
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            if shutil.disk_usage(path.parent).free < size:  # no fallocate here: the free space is the best check
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None


def meta_digest(meta: dict) -> str:
    """blake2b of meta.json's own contents (all but this field): an edited mean, std or count is noticed."""
    body = json.dumps({k: v for k, v in meta.items() if k != "meta_blake2b"}, sort_keys=True)
    return hashlib.blake2b(body.encode(), digest_size=16).hexdigest()


def sample_digest(path: Path) -> str:
    """blake2b of SAMPLE_BLOCKS evenly spaced blocks of the file (of the whole file when it is smaller)."""
    size = os.path.getsize(path)
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if size <= SAMPLE_BLOCKS * BLOCK:
            h.update(f.read())
        else:
            for k in range(SAMPLE_BLOCKS):
                f.seek((size - BLOCK) * k // (SAMPLE_BLOCKS - 1))
                h.update(f.read(BLOCK))
    return h.hexdigest()


def full_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class _Unusable(Exception):
    """Why a cache entry cannot be used; an empty reason means there simply is none."""


def load_entry(directory: Path, verify_all: bool = False) -> tuple[dict, dict[str, np.ndarray]] | None:
    """Open a finished entry: image arrays read-only memory-mapped, labels in memory.

    Returns None when the entry is missing, unfinished, from another format version, or its
    files do not match meta.json (sizes, headers, sampled checksums; full checksums if ``verify_all``).
    """
    try:
        return _open_entry(directory, verify_all)
    except _Unusable:
        return None


def _open_entry(directory: Path, verify_all: bool) -> tuple[dict, dict[str, np.ndarray]]:
    try:
        with open(directory / META) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise _Unusable("is unfinished (no meta.json)" if directory.exists() else "") from None
    except (OSError, ValueError) as e:
        raise _Unusable(f"has an unreadable meta.json ({e})") from None
    if not isinstance(meta, dict) or meta.get("complete") is not True:
        raise _Unusable("is unfinished")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _Unusable(f"is in an older format (version {meta.get('format_version')})")
    if meta.get("meta_blake2b") != meta_digest(meta):
        raise _Unusable("is damaged: meta.json does not match its checksum (edited, or written by an older leanssl)")
    try:
        arrays = {}
        for name, info in meta["arrays"].items():
            path = directory / f"{name}.npy"
            size = path.stat().st_size
            if size != info["bytes"]:
                raise _Unusable(f"is damaged: {path.name} has {size} bytes, {info['bytes']} expected")
            if sample_digest(path) != info["sample_blake2b"] or (verify_all and full_digest(path) != info["blake2b"]):
                raise _Unusable(f"is damaged: {path.name} does not match its checksum")
            arr = np.load(path, mmap_mode="r") if info["dtype"] == "uint8" else np.load(path)
            if list(arr.shape) != info["shape"] or str(arr.dtype) != info["dtype"]:
                raise _Unusable(f"is damaged: {path.name} holds {arr.dtype} {arr.shape}, not what meta.json says")
            arrays[name] = arr
        return meta, arrays
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _Unusable(f"is unreadable ({type(e).__name__}: {e})") from None


def load_or_build(
    root: Path, entry: str, build: Callable[[CacheWriter], dict], verify_all: bool | None = None
) -> tuple[dict, dict[str, np.ndarray], Path]:
    """Return (meta, arrays, folder) of cache entry ``root/entry``, building it first if needed.

    ``build`` fills a :class:`CacheWriter` and returns the source-specific part of meta.
    ``verify_all``: check full checksums too (default: when ``$LEANSSL_VERIFY_CACHE`` is 1).
    """
    if verify_all is None:
        verify_all = os.environ.get("LEANSSL_VERIFY_CACHE", "") not in ("", "0")
    final = root / entry
    try:
        return (*_open_entry(final, verify_all), final)
    except _Unusable as e:
        if str(e):  # there is an entry, but it is not used: say so (nothing silent)
            print(f"leanssl: cache entry {final} {e}: rebuilding it", file=sys.stderr)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LeansslError(f"cannot create cache folder {root}: {e.strerror or e}") from None
    _remove_entry(final)  # unfinished or damaged (or not even a folder): rebuild
    _remove_dead_builds(root, entry)

    tmp = root / f".{entry}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        writer = CacheWriter(tmp)
        writer.finish(build(writer))
        del writer
        _install(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    found = load_entry(final)
    if found is None:
        raise LeansslError(f"cache entry {final} is unreadable right after building it")
    return (*found, final)


def _install(tmp: Path, final: Path) -> None:
    """Rename the finished build into place. With concurrent builders, a valid entry that
    another process installed first is kept (the result is identical)."""
    for _ in range(3):
        try:
            os.replace(tmp, final)
            _fsync_dir(final.parent)
            return
        except OSError:
            if not final.exists():
                raise
            if load_entry(final) is not None:
                return
            _remove_entry(final)
    os.replace(tmp, final)


def _remove_entry(path: Path) -> None:
    """Delete what stands at an entry's name: a folder, or a file or link put there by hand."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _remove_dead_builds(root: Path, entry: str) -> None:
    """Delete temporary build folders of this entry left by killed processes on this host."""
    prefix = f".{entry}.tmp-{socket.gethostname()}-"
    for p in root.glob(f".{entry}.tmp-*"):
        if not p.name.startswith(prefix):
            continue
        try:
            pid = int(p.name[len(prefix) :].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not support fsync on directories
    finally:
        os.close(fd)
