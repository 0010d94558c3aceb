"""The decode-once cache: an interrupted build is never taken for a finished one, a changed source
is rebuilt, and a damaged cache file is detected (size, header, checksum) and rebuilt, not read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leanssl.data import cache, images
from leanssl.data.cache import META
from leanssl.data.sources import open_dataset


def open_ds(spec, cache_dir, **kw):
    return open_dataset(spec, cache_dir=cache_dir, progress=False, **kw)


def folder(root: Path, n: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(root / f"{i}.png")
    return root


@pytest.fixture
def decodes(monkeypatch):
    """The files decoded so far (a cache hit decodes none)."""
    calls = []
    real = images._decode_image
    monkeypatch.setattr(images, "_decode_image", lambda p, r: calls.append(p) or real(p, r))
    return calls


def reds(ds) -> list[int]:
    return sorted(int(v) for v in ds.pretrain.x[:, 0, 4, 4])


def test_a_build_killed_midway_is_never_used_and_is_cleaned_up(tmp_path, decodes):
    imgs = folder(tmp_path / "imgs")
    child = f"""
import os, signal
from leanssl.data import images, sources
real, calls = images._decode_image, []
def dying(p, r):
    calls.append(p)
    if len(calls) == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(p, r)
images._decode_image = dying
sources.open_dataset({str(imgs)!r}, 8, {str(tmp_path / 'cache')!r}, progress=False)
"""
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr
    left = [p.name for p in (tmp_path / "cache").iterdir()]
    assert len(left) == 1 and left[0].startswith(".") and ".tmp-" in left[0]  # only the dead build's temp folder
    ds = open_ds(str(imgs), tmp_path / "cache", resolution=8)
    assert len(decodes) == 6 and reds(ds) == [0, 10, 20, 30, 40, 50]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(ds.cache_path).name]


def test_added_removed_or_modified_files_trigger_a_rebuild(tmp_path, decodes):
    imgs = folder(tmp_path / "imgs")
    assert reds(open_ds(str(imgs), tmp_path / "cache", resolution=8)) == [0, 10, 20, 30, 40, 50]
    Image.new("RGB", (8, 8), (99, 0, 0)).save(imgs / "new.png")
    assert reds(open_ds(str(imgs), tmp_path / "cache", resolution=8)) == [0, 10, 20, 30, 40, 50, 99]
    (imgs / "0.png").unlink()
    assert reds(open_ds(str(imgs), tmp_path / "cache", resolution=8)) == [10, 20, 30, 40, 50, 99]
    Image.new("RGB", (8, 8), (77, 0, 0)).save(imgs / "1.png")  # same size on disk, new content
    os.utime(imgs / "1.png", ns=(1, 1))  # a distinct mtime even on coarse-clock filesystems
    assert reds(open_ds(str(imgs), tmp_path / "cache", resolution=8)) == [20, 30, 40, 50, 77, 99]
    assert len(decodes) == 6 + 7 + 6 + 6


def damage(path: Path, offset: int, data: bytes = b"\xff" * 16) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def flip_bit(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 1]))


@pytest.mark.parametrize("how", ["bytes flipped", "truncated", "header rewritten", "meta garbled"])
def test_a_damaged_cache_file_is_detected_and_rebuilt_not_read(how, tmp_path, decodes, capsys):
    imgs = folder(tmp_path / "imgs")
    entry = Path(open_ds(str(imgs), tmp_path / "cache", resolution=8).cache_path)
    arr = entry / "pretrain_x.npy"
    if how == "bytes flipped":  # same size, same header: only the checksum can tell
        damage(arr, arr.stat().st_size - 100)
    elif how == "truncated":
        os.truncate(arr, arr.stat().st_size - 64)
    elif how == "header rewritten":
        np.save(arr, np.zeros((6, 3, 8, 8), np.uint16)[:, :, :, :4])  # same byte count, another dtype and shape
    else:
        (entry / META).write_text("{not json")
    ds = open_ds(str(imgs), tmp_path / "cache", resolution=8)
    assert len(decodes) == 12 and reds(ds) == [0, 10, 20, 30, 40, 50]
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"leanssl: cache entry {entry} ") and err.endswith(": rebuilding it"), err


def test_big_cache_file_checks_a_sample_always_and_everything_when_asked(tmp_path, monkeypatch, capsys):
    x = np.random.default_rng(0).integers(0, 256, (2000, 3, 32, 32), dtype=np.uint8)  # 6 MB: above the 4 MiB sample
    np.savez(tmp_path / "big.npz", x=x)
    spec = f"npz:{tmp_path / 'big.npz'}"
    entry = Path(open_ds(spec, tmp_path / "cache").cache_path)
    arr = entry / "pretrain_x.npy"
    size = arr.stat().st_size
    assert size > cache.SAMPLE_BLOCKS * cache.BLOCK

    damage(arr, size - cache.BLOCK, b"\0" * cache.BLOCK)  # the last block is always sampled
    np.testing.assert_array_equal(open_ds(spec, tmp_path / "cache").pretrain.x, x)
    assert "does not match its checksum" in capsys.readouterr().err

    # One flipped bit between two sampled blocks: the full checksum, written at build time, finds it.
    off = size // 2 + 12345
    starts = [(size - cache.BLOCK) * k // (cache.SAMPLE_BLOCKS - 1) for k in range(cache.SAMPLE_BLOCKS)]
    assert not any(s <= off < s + cache.BLOCK for s in starts)
    flip_bit(arr, off)
    monkeypatch.setenv("LEANSSL_VERIFY_CACHE", "1")
    np.testing.assert_array_equal(open_ds(spec, tmp_path / "cache").pretrain.x, x)
    assert "does not match its checksum" in capsys.readouterr().err


def test_meta_records_sizes_and_checksums_of_every_array(tmp_path):
    entry = Path(open_ds(str(folder(tmp_path / "imgs")), tmp_path / "cache", resolution=8).cache_path)
    meta = json.loads((entry / META).read_text())
    assert meta["complete"] is True and meta["format_version"] == cache.FORMAT_VERSION
    for name, info in meta["arrays"].items():
        path = entry / f"{name}.npy"
        assert info["bytes"] == path.stat().st_size
        assert info["sample_blake2b"] == cache.sample_digest(path) and info["blake2b"] == cache.full_digest(path)
