"""Data sources and the decode-once cache, on small generated files in the real on-disk formats."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leanssl.data import images as image_files
from leanssl.data.arrays import write_arrays
from leanssl.data.cache import META, file_fingerprint
from leanssl.data.dataset import Source
from leanssl.data.formats import READERS, Reader, idx
from leanssl.data.sources import open_dataset, per_class_subset, stratified_subset
from leanssl.errors import LeansslError


def open_ds(spec, cache, **kw):
    return open_dataset(spec, cache_dir=cache, progress=False, **kw)


def images(n, c, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def save_png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)


# ------------------------------------------------------------------------------ IDX


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    raw = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(raw)


def make_idx(folder: Path, gz: bool, n_train=12, n_test=5):
    folder.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    data = {
        "train-images-idx3-ubyte": images(n_train, 1, 28, 28, 1)[:, 0],
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": images(n_test, 1, 28, 28, 2)[:, 0],
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, arr in data.items():
        write_idx(folder / (name + sfx), arr, gz)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_roundtrip(tmp_path, gz):
    data = make_idx(tmp_path / "mnist", gz)
    ds = open_ds(f"mnist:{tmp_path / 'mnist'}", tmp_path / "cache")
    assert (ds.name, ds.channels, ds.resolution) == ("mnist", 1, 28)
    assert ds.train.x.shape == (12, 1, 28, 28) and ds.test.x.shape == (5, 1, 28, 28)
    assert isinstance(ds.pretrain.x, np.memmap) and not ds.pretrain.x.flags.writeable
    np.testing.assert_array_equal(ds.train.x[:, 0], data["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.test.y, data["t10k-labels-idx1-ubyte"])
    assert ds.train.y.dtype == np.int64 and ds.pretrain.y is ds.train.y
    assert ds.classes == [str(i) for i in range(10)]
    assert abs(ds.mean[0] - data["train-images-idx3-ubyte"].mean() / 255) < 1e-6


def test_idx_bad_magic_and_size(tmp_path):
    make_idx(tmp_path / "m", gz=False)
    f = tmp_path / "m" / "train-images-idx3-ubyte"
    raw = f.read_bytes()
    f.write_bytes(b"\x00\x00\x08\x03" + raw[4:-1])  # one byte short
    with pytest.raises(LeansslError, match="bytes, header says"):
        open_ds(f"mnist:{tmp_path / 'm'}", tmp_path / "cache")
    f.write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(LeansslError, match="bad magic"):
        open_ds(f"mnist:{tmp_path / 'm'}", tmp_path / "cache")
    f.unlink()
    with pytest.raises(LeansslError, match="missing train-images-idx3-ubyte"):
        open_ds(f"mnist:{tmp_path / 'm'}", tmp_path / "cache")


def test_idx_resized(tmp_path):
    make_idx(tmp_path / "m", gz=True)
    ds = open_ds(f"mnist:{tmp_path / 'm'}", tmp_path / "cache", resolution=14)
    assert ds.train.x.shape == (12, 1, 14, 14) and ds.resolution == 14


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    if not os.path.isdir(idx.FASHION_MNIST_DEFAULT):
        pytest.skip("no Fashion-MNIST at the default path")
    cache = tmp_path_factory.mktemp("fm-cache")
    return cache, open_ds("fashion-mnist", cache)


def test_fashion_mnist_default_path(fashion, monkeypatch):
    cache, ds = fashion
    assert ds.train.x.shape == (60000, 1, 28, 28) and ds.test.x.shape == (10000, 1, 28, 28)
    assert ds.pretrain.x.shape == (60000, 1, 28, 28) and len(ds.classes) == 10
    assert np.bincount(ds.test.y).tolist() == [1000] * 10
    assert 0.27 < ds.mean[0] < 0.30 and 0.33 < ds.std[0] < 0.37
    # second open reuses the cache (no IDX parsing)
    monkeypatch.setattr(idx, "_read_idx", lambda p: pytest.fail("rebuilt"))
    assert open_ds("fashion-mnist", cache).cache_path == ds.cache_path


# ------------------------------------------------------------------------------ digits


def test_digits(tmp_path):
    ds = open_ds("digits", tmp_path)
    assert ds.train.x.shape == (1347, 1, 16, 16) and ds.test.x.shape == (450, 1, 16, 16)
    assert ds.pretrain.x.shape == ds.train.x.shape and ds.channels == 1 and ds.resolution == 16
    assert ds.train.x.dtype == np.uint8 and ds.train.x.max() > 200
    assert set(np.unique(ds.test.y)) == set(range(10)) and ds.skipped == []


# ------------------------------------------------------------------------------ CIFAR


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_cifar10(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = []
    for i in range(1, 6):
        x = images(2, 3, 32, 32, i)
        batches.append(x)
        write_pickle(folder / f"data_batch_{i}", {b"data": x.reshape(2, -1), b"labels": [i, i + 1]})
    write_pickle(folder / "test_batch", {b"data": images(3, 3, 32, 32, 9).reshape(3, -1), b"labels": [0, 1, 2]})
    write_pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})

    ds = open_ds(f"cifar10:{tmp_path}", tmp_path / "cache")  # parent folder is accepted
    assert ds.train.x.shape == (10, 3, 32, 32) and ds.test.x.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(ds.train.x[:2], batches[0])
    assert ds.train.y.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6] and ds.classes[3] == "c3"
    small = open_ds(f"cifar10:{folder}", tmp_path / "cache", resolution=16)
    assert small.train.x.shape == (10, 3, 16, 16) and small.cache_path != ds.cache_path

    (folder / "data_batch_3").unlink()
    with pytest.raises(LeansslError, match="missing data_batch_3"):
        open_ds(f"cifar10:{folder}", tmp_path / "cache")


def test_cifar100(tmp_path):
    x = images(4, 3, 32, 32)
    write_pickle(tmp_path / "train", {b"data": x.reshape(4, -1), b"fine_labels": [5, 6, 7, 99], b"coarse_labels": [0] * 4})
    write_pickle(tmp_path / "test", {b"data": x[:2].reshape(2, -1), b"fine_labels": [1, 2]})
    write_pickle(tmp_path / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    ds = open_ds(f"cifar100:{tmp_path}", tmp_path / "cache")
    np.testing.assert_array_equal(ds.pretrain.x, x)
    assert ds.train.y.tolist() == [5, 6, 7, 99] and len(ds.classes) == 100 and ds.classes[99] == "f99"


# ------------------------------------------------------------------------------ STL-10


def write_stl_x(path, x):
    path.write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())  # column-major per image


def test_stl10_orientation_and_pretrain(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    # an image whose rows and columns are distinguishable: channel 0 = row index, 1 = column index
    h, w = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    oriented = np.stack([h, w, np.zeros_like(h)]).astype(np.uint8)[None]
    train = np.concatenate([oriented, images(2, 3, 96, 96, 1)])
    write_stl_x(folder / "train_X.bin", train)
    (folder / "train_y.bin").write_bytes(np.array([1, 2, 10], np.uint8).tobytes())
    write_stl_x(folder / "test_X.bin", images(2, 3, 96, 96, 2))
    (folder / "test_y.bin").write_bytes(np.array([3, 4], np.uint8).tobytes())
    unlabeled = images(4, 3, 96, 96, 3)
    write_stl_x(folder / "unlabeled_X.bin", unlabeled)

    ds = open_ds(f"stl10:{tmp_path}", tmp_path / "cache")
    assert ds.pretrain.x.shape == (7, 3, 96, 96) and ds.train.x.shape == (3, 3, 96, 96)
    np.testing.assert_array_equal(ds.train.x, train)
    assert ds.train.x[0, 0, 5, 0] == 5 and ds.train.x[0, 1, 0, 7] == 7  # rows are rows
    np.testing.assert_array_equal(ds.pretrain.x[3:], unlabeled)
    assert ds.pretrain.y is None and ds.train.y.tolist() == [0, 1, 9] and ds.test.y.tolist() == [2, 3]
    assert isinstance(ds.train.x, np.memmap)
    assert open_ds(f"stl10:{folder}", tmp_path / "cache", resolution=32).pretrain.x.shape == (7, 3, 32, 32)


# ------------------------------------------------------------------------------ image folders


def make_class_folder(root: Path, classes=("cat", "dog"), per_class=5, size=(20, 12)):
    for ci, c in enumerate(classes):
        for i in range(per_class):
            save_png(root / c / f"{i}.png", np.full((size[1], size[0], 3), 40 * ci + i, np.uint8))


def test_folder_classes_80_20(tmp_path):
    make_class_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "imgs" / "dog" / ".hidden.png").write_bytes(b"")
    ds = open_ds(f"folder:{tmp_path / 'imgs'}", tmp_path / "cache", resolution=8)
    assert ds.name == "folder-imgs" and ds.classes == ["cat", "dog"] and ds.channels == 3
    assert ds.train.x.shape == (8, 3, 8, 8) and ds.test.x.shape == (2, 3, 8, 8)
    assert np.bincount(ds.train.y).tolist() == [4, 4] and np.bincount(ds.test.y).tolist() == [1, 1]
    assert ds.pretrain.x.shape == ds.train.x.shape and ds.skipped == []
    # bare folder path is the same source and the same cache entry
    assert open_ds(str(tmp_path / "imgs"), tmp_path / "cache", resolution=8).cache_path == ds.cache_path


def test_folder_split_folders(tmp_path):
    make_class_folder(tmp_path / "d" / "train", per_class=3)
    make_class_folder(tmp_path / "d" / "val", per_class=2)
    save_png(tmp_path / "d" / "unlabeled" / "u.png", np.zeros((8, 8, 3), np.uint8))
    ds = open_ds(str(tmp_path / "d"), tmp_path / "cache", resolution=8)
    assert len(ds.train) == 6 and len(ds.test) == 4 and len(ds.pretrain) == 7
    assert ds.pretrain.y is None and ds.test.y.tolist() == [0, 0, 1, 1]


def test_folder_nested_unlabeled_and_symlink_loop(tmp_path):
    root = tmp_path / "photos"
    save_png(root / "a.png", np.zeros((10, 10, 3), np.uint8))
    save_png(root / "trip" / "day1" / "b.PNG", np.zeros((10, 10, 3), np.uint8))
    save_png(root / "trip" / "c.jpeg", np.zeros((10, 10, 3), np.uint8))
    os.symlink(root, root / "trip" / "loop")
    ds = open_ds(f"folder:{root}", tmp_path / "cache", resolution=8)
    assert len(ds.pretrain) == 3 and ds.train is None and ds.test is None and ds.classes is None


def test_folder_modes_crop_and_bad_files(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    pal = Image.fromarray(np.tile(np.arange(16, dtype=np.uint8), (16, 1))).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    pal.save(root / "palette.png", transparency=0)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 100
    save_png(root / "rgba.png", rgba, "RGBA")
    Image.fromarray(np.full((16, 16), 90, np.uint8), "L").save(root / "gray.jpg", quality=95)
    Image.fromarray(np.full((16, 16), 32896, np.uint16)).save(root / "deep.png")  # 16-bit, ~50% gray
    wide = np.zeros((32, 64, 3), np.uint8)  # white center square between black side bands
    wide[:, 16:48] = 255
    save_png(root / "wide.png", wide)
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("hello, I am not a JPEG")

    ds = open_ds(f"folder:{root}", tmp_path / "cache", resolution=16)
    names = {os.path.basename(p) for p, _ in ds.skipped}
    assert names == {"empty.jpg", "text.jpg"} and len(ds.pretrain) == 5
    assert dict((os.path.basename(p), r) for p, r in ds.skipped)["empty.jpg"] == "empty file"
    by_name = dict(zip(sorted(["palette.png", "rgba.png", "gray.jpg", "deep.png", "wide.png"]), ds.pretrain.x))
    assert np.abs(by_name["deep.png"].astype(int) - 128).max() <= 1  # scaled, not clipped to 255
    assert np.abs(by_name["gray.jpg"].astype(int) - 90).max() <= 2 and by_name["gray.jpg"].shape == (3, 16, 16)
    assert (by_name["rgba.png"][0] == 200).all()
    assert by_name["wide.png"].min() >= 250  # center crop kept only the white square

    with pytest.raises(LeansslError, match="empty.jpg|text.jpg"):
        open_ds(f"folder:{root}", tmp_path / "cache2", resolution=16, strict=True)
    with pytest.raises(LeansslError, match="cannot decode image"):  # strict on an existing cache too
        open_ds(f"folder:{root}", tmp_path / "cache", resolution=16, strict=True)


def test_folder_empty_and_all_bad(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LeansslError, match="no images found in .*empty"):
        open_ds(f"folder:{tmp_path / 'empty'}", tmp_path / "cache")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("nope")
    with pytest.raises(LeansslError, match="none of the 1 images"):
        open_ds(f"folder:{tmp_path / 'bad'}", tmp_path / "cache")


# ------------------------------------------------------------------------------ npz


@pytest.mark.parametrize("layout", ["nhw", "nhwc1", "nhwc3", "nchw1", "nchw3", "float"])
def test_npz_layouts(tmp_path, layout):
    c = 3 if layout in ("nhwc3", "nchw3", "float") else 1
    x = images(10, c, 12, 12)
    stored = {"nhw": x[:, 0], "nhwc1": x.transpose(0, 2, 3, 1), "nhwc3": x.transpose(0, 2, 3, 1),
              "nchw1": x, "nchw3": x, "float": x.astype(np.float32) / 255}[layout]  # fmt: skip
    y = np.array([3, 7] * 5)
    np.savez(tmp_path / "d.npz", x=stored, y=y)
    ds = open_ds(f"npz:{tmp_path / 'd.npz'}", tmp_path / "cache")
    assert ds.channels == c and ds.resolution == 12 and ds.classes == ["3", "7"]
    assert len(ds.train) == 8 and len(ds.test) == 2 and np.bincount(ds.test.y).tolist() == [1, 1]
    got = np.concatenate([ds.train.x, ds.test.x])
    np.testing.assert_array_equal(np.sort(got.reshape(10, -1), 0), np.sort(x.reshape(10, -1), 0))


def test_npz_test_split_unlabeled_and_crop(tmp_path):
    x = images(6, 3, 10, 14)  # not square: center-cropped to 10x10
    np.savez_compressed(tmp_path / "a.npz", x=x, y=np.arange(6) % 2, x_test=x[:2], y_test=np.array([1, 0]))
    ds = open_ds(f"npz:{tmp_path / 'a.npz'}", tmp_path / "cache")
    assert ds.resolution == 10 and len(ds.train) == 6 and ds.test.y.tolist() == [1, 0]
    np.testing.assert_array_equal(ds.train.x, x[:, :, :, 2:12])
    np.savez(tmp_path / "u.npz", x=x[:, 0])
    ds = open_ds(f"npz:{tmp_path / 'u.npz'}", tmp_path / "cache")
    assert ds.train is None and ds.test is None and ds.pretrain.x.shape == (6, 1, 10, 10)
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 5, 8, 8), np.uint8))
    with pytest.raises(LeansslError, match="expected \\(N,H,W\\)"):
        open_ds(f"npz:{tmp_path / 'bad.npz'}", tmp_path / "cache")
    np.savez(tmp_path / "f.npz", x=np.full((2, 8, 8), 3.0))
    with pytest.raises(LeansslError, match="must lie in \\[0, 1\\]"):
        open_ds(f"npz:{tmp_path / 'f.npz'}", tmp_path / "cache")


# ------------------------------------------------------------------------------ cache behaviour


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = image_files._decode_image
    monkeypatch.setattr(image_files, "_decode_image", lambda p, r: calls.append(p) or real(p, r))
    return calls


def test_cache_reused(tmp_path, count_decodes):
    make_class_folder(tmp_path / "imgs")
    first = open_ds(str(tmp_path / "imgs"), tmp_path / "cache", resolution=8)
    assert len(count_decodes) == 10
    meta_mtime = os.stat(Path(first.cache_path) / META).st_mtime_ns
    second = open_ds(str(tmp_path / "imgs"), tmp_path / "cache", resolution=8)
    assert len(count_decodes) == 10 and second.cache_path == first.cache_path
    assert os.stat(Path(first.cache_path) / META).st_mtime_ns == meta_mtime
    np.testing.assert_array_equal(second.train.x, first.train.x)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(first.cache_path).name]  # no temp dirs left


def test_cache_rebuilt_when_source_changes(tmp_path, count_decodes):
    make_class_folder(tmp_path / "imgs")
    a = open_ds(str(tmp_path / "imgs"), tmp_path / "cache", resolution=8)
    save_png(tmp_path / "imgs" / "cat" / "new.png", np.zeros((8, 8, 3), np.uint8))
    b = open_ds(str(tmp_path / "imgs"), tmp_path / "cache", resolution=8)
    assert b.cache_path != a.cache_path and len(b.train) + len(b.test) == 11
    f = tmp_path / "imgs" / "dog" / "0.png"
    save_png(f, np.full((12, 20, 3), 250, np.uint8))
    os.utime(f, ns=(1, 1))  # a distinct mtime even on coarse-clock filesystems
    c = open_ds(str(tmp_path / "imgs"), tmp_path / "cache", resolution=8)
    assert c.cache_path not in (a.cache_path, b.cache_path) and len(count_decodes) == 10 + 11 + 11


def test_incomplete_or_damaged_cache_rebuilt(tmp_path, count_decodes):
    make_class_folder(tmp_path / "imgs")
    ds = open_ds(str(tmp_path / "imgs"), tmp_path / "cache", resolution=8)
    entry = Path(ds.cache_path)
    (entry / META).unlink()
    ds = open_ds(str(tmp_path / "imgs"), tmp_path / "cache", resolution=8)
    assert len(count_decodes) == 20 and (entry / META).exists() and len(ds.train) == 8
    with open(entry / "pretrain_x.npy", "r+b") as f:  # truncated array file
        f.truncate(100)
    ds = open_ds(str(tmp_path / "imgs"), tmp_path / "cache", resolution=8)
    assert len(count_decodes) == 30 and ds.train.x.shape == (8, 3, 8, 8)


# ------------------------------------------------------------------------------ subsets


def test_stratified_subset():
    y = np.repeat([0, 1, 2], [100, 50, 10])
    a = stratified_subset(y, len(y), 0.1, seed=0)
    assert a.dtype == np.int64 and (np.diff(a) > 0).all()
    assert np.bincount(y[a]).tolist() == [10, 5, 1]
    np.testing.assert_array_equal(a, stratified_subset(y, len(y), 0.1, seed=0))
    assert not np.array_equal(a, stratified_subset(y, len(y), 0.1, seed=1))
    assert np.bincount(y[stratified_subset(y, len(y), 0.01, seed=0)]).tolist() == [1, 1, 1]  # >= 1 per class
    assert set(stratified_subset(y, len(y), 0.01, 3)) <= set(stratified_subset(y, len(y), 0.5, 3))  # nested
    np.testing.assert_array_equal(stratified_subset(y, len(y), 1.0, 0), np.arange(len(y)))
    assert len(stratified_subset(None, 200, 0.25, 0)) == 50
    for bad in (0, -0.5, 1.5):
        with pytest.raises(LeansslError, match="fraction"):
            stratified_subset(y, len(y), bad, 0)


def test_per_class_subset():
    y = np.repeat([0, 1, 2], [20, 10, 3])
    idx = per_class_subset(y, 5, seed=0)
    assert np.bincount(y[idx]).tolist() == [5, 5, 3] and (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(idx, per_class_subset(y, 5, seed=0))
    assert not np.array_equal(idx, per_class_subset(y, 5, seed=1))


# ------------------------------------------------------------------------------ spec errors


def test_spec_errors(tmp_path):
    with pytest.raises(LeansslError) as e:
        open_ds("xyz", tmp_path)
    assert str(e.value) == (
        "unknown data spec 'xyz': expected one of digits, fashion-mnist[:PATH], mnist:PATH, cifar10:PATH, "
        "cifar100:PATH, stl10:PATH, folder:PATH, npz:PATH or an existing folder"
    )
    with pytest.raises(LeansslError) as e:
        open_ds("mnist:/x/y", tmp_path)
    assert str(e.value) == "data path not found: /x/y (from spec 'mnist:/x/y')"
    with pytest.raises(LeansslError, match="needs a path"):
        open_ds("cifar10", tmp_path)
    with pytest.raises(LeansslError, match="positive integer"):
        open_ds("digits", tmp_path, resolution=0)


def test_a_new_format_is_one_reader_in_the_table(tmp_path, monkeypatch):
    # A toy format, one gray level per line of a text file, each a 4x4 image: a locate function and one table entry.
    def locate(path):
        def build(writer, res, strict, progress):
            v = np.loadtxt(path, dtype=np.uint8, ndmin=1)
            x = np.broadcast_to(v[:, None, None, None], (len(v), 1, 4, 4))
            return write_arrays(writer, res, 1, None, progress, "toy", extra=x)

        return Source("toy", "toy", path, file_fingerprint([path], os.path.dirname(path)), 4, build)

    monkeypatch.setitem(READERS, "toy", Reader(locate))
    (tmp_path / "levels.txt").write_text("0\n100\n200\n")
    ds = open_ds(f"toy:{tmp_path / 'levels.txt'}", tmp_path / "cache")
    assert ds.pretrain.x.shape == (3, 1, 4, 4) and ds.train is None
    assert ds.pretrain.x[:, 0, 0, 0].tolist() == [0, 100, 200]
    assert open_ds(f"toy:{tmp_path / 'levels.txt'}", tmp_path / "cache", resolution=2).pretrain.x.shape == (3, 1, 2, 2)
    with pytest.raises(LeansslError, match="needs a path: toy:PATH"):
        open_ds("toy", tmp_path / "cache")
    with pytest.raises(LeansslError, match="npz:PATH, toy:PATH or an existing folder"):
        open_ds("xyz", tmp_path / "cache")
