"""A scraped-together image folder: every kind of bad file is skipped, counted and listed; every
decodable one is converted correctly; --strict-images makes any bad file an error."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leanssl.cli import main
from leanssl.data import images
from leanssl.data.loader import DeviceLoader
from leanssl.data.sources import open_dataset
from leanssl.errors import LeansslError

RES = 8
# big.jpg has 100 MP: above PIL's warning line, below its error line.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

# name -> the uint8 RGB value every pixel of it must decode to (all are flat colours, or flat in the centre square)
GOOD = {
    "rgb.png": (10, 200, 30),
    "cmyk.jpg": (255, 0, 0),
    "cmyk.tif": (0, 0, 255),
    "palette.png": (0, 255, 0),
    "rgba.png": (200, 0, 0),       # the alpha is dropped, not blended
    "gray16.png": (128, 128, 128),  # 16-bit, rescaled, not clipped to white
    "gray.jpg": (90, 90, 90),
    "one_px.png": (7, 77, 177),     # a 1x1 image, upscaled
    "big.jpg": (200, 200, 200),     # 10000 x 10000, white centre square on grey
}
# name -> a word its skip reason must contain
BAD = {
    "empty.jpg": "empty",
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "text.jpg": "unsupported",
    "photo.heic": "unsupported",  # a format PIL has no plugin for here
    "drawing.svg": "unsupported",
    "bomb.png": "decompression bomb",  # a header claiming 20000 x 20000 pixels
    "loop_a.jpg": "symbolic links",    # a symlink loop between two files
    "loop_b.jpg": "symbolic links",
    "dangling.png": "No such file",    # a symlink to nothing
}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a few hundred bytes; never decoded that far)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def make_messy_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    Image.new("RGB", (12, 9), GOOD["rgb.png"]).save(root / "rgb.png")
    Image.new("CMYK", (10, 10), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=95)  # red in CMYK
    Image.new("CMYK", (10, 10), (255, 255, 0, 0)).save(root / "cmyk.tif")  # blue
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(root / "palette.png", transparency=0)
    Image.new("RGBA", (10, 10), (200, 0, 0, 40)).save(root / "rgba.png")
    Image.fromarray(np.full((10, 10), 32896, np.uint16)).save(root / "gray16.png")
    Image.new("L", (10, 10), 90).save(root / "gray.jpg", quality=95)
    Image.new("RGB", (1, 1), GOOD["one_px.png"]).save(root / "one_px.png")
    big = Image.new("L", (10000, 10000), 40)
    big.paste(200, (2000, 2000, 8000, 8000))
    big.save(root / "big.jpg", quality=90)

    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(encoded(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")[:300])
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    png = encoded(noisy, "PNG")
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "text.jpg").write_text("hello, I am not a JPEG")
    (root / "photo.heic").write_bytes(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64)
    (root / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>')
    (root / "bomb.png").write_bytes(png_header_only(20000, 20000))
    os.symlink("loop_b.jpg", root / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "loop_b.jpg")
    os.symlink("no_such_file.png", root / "dangling.png")
    (root / "sub").mkdir()
    os.symlink(root, root / "sub" / "loop")  # a folder loop: not followed, nothing counted twice
    (root / "notes.txt").write_text("not an image, ignored")
    return root


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return make_messy_folder(tmp_path_factory.mktemp("messy") / "imgs")


def test_each_bad_kind_is_skipped_with_its_reason_and_each_good_one_decoded_correctly(messy, tmp_path):
    ds = open_dataset(f"folder:{messy}", RES, tmp_path / "cache", progress=False)
    reasons = {os.path.basename(p): why for p, why in ds.skipped}
    assert sorted(reasons) == sorted(BAD)
    for name, word in BAD.items():
        assert word.lower() in reasons[name].lower(), (name, reasons[name])
    assert len(ds.pretrain) == len(GOOD)
    for name, x in zip(sorted(GOOD), ds.pretrain.x):  # rows follow the sorted file names
        centre = x[:, 2:6, 2:6].reshape(3, -1).T.astype(int)
        assert np.abs(centre - np.array(GOOD[name])).max() <= 3, (name, centre[0])


def test_run_lists_the_skipped_files_and_reports_the_count_at_the_end(messy, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", f"folder:{messy}", "--resolution", str(RES), "--epochs", "1", "--batch-size", "4",
            "--dim", "8", "--proj-hidden", "16", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(argv) == 0
    listed = (out / "skipped.txt").read_text().splitlines()
    assert sorted(os.path.basename(line.split("\t")[0]) for line in listed) == sorted(BAD)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"leanssl: skipped {len(BAD)} undecodable image(s), listed in {out / 'skipped.txt'}"


def test_any_number_of_surviving_images_calibrates():
    # 9 good images, batch 4: the calibration pass's last batch would hold one image, which BatchNorm rejects.
    loader = DeviceLoader(np.zeros((9, 3, 4, 4), np.uint8), "cpu")
    assert [len(idx) for _, idx in loader.ordered(4)] == [4, 5]
    assert [len(idx) for _, idx in loader.ordered(3)] == [3, 3, 3]


def test_strict_images_makes_any_bad_file_an_error(messy, tmp_path, capsys):
    argv = ["train", "--data", f"folder:{messy}", "--resolution", str(RES), "--epochs", "1", "--batch-size", "4",
            "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--strict-images"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("leanssl: error: cannot decode image ") and str(messy) in err[0]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_all_bad_or_empty_folder_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_text("nope")
    with pytest.raises(LeansslError, match=r"none of the 2 images in .*bad could be decoded"):
        open_dataset(f"folder:{bad}", RES, tmp_path / "cache", progress=False)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(LeansslError, match=r"no images found in .*empty"):
        open_dataset(f"folder:{tmp_path / 'empty'}", RES, tmp_path / "cache", progress=False)


def small_folder(root: Path) -> Path:
    """Three good images, a locked.png and a private/ folder holding one more."""
    root.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i, i, i)).save(root / f"ok{i}.png")
    (root / "private").mkdir()
    Image.new("RGB", (8, 8)).save(root / "private" / "hidden.png")
    Image.new("RGB", (8, 8)).save(root / "locked.png")
    return root


def test_unreadable_file_and_folder_are_reported_simulated(tmp_path, monkeypatch):
    # Tests run as root here, where chmod 000 stops nothing: raise the errors the OS would raise.
    root = small_folder(tmp_path / "perm")
    real_open, real_scandir = Image.open, os.scandir

    def open_(fp, *a, **kw):
        if str(fp).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *a, **kw)

    def scandir(path="."):
        if str(path).endswith("private"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(Image, "open", open_)
    monkeypatch.setattr(os, "scandir", scandir)
    ds = open_dataset(f"folder:{root}", RES, tmp_path / "cache", progress=False)
    reasons = {os.path.basename(p): why for p, why in ds.skipped}
    assert set(reasons) == {"locked.png", "private"} and len(ds.pretrain) == 3
    assert "Permission denied" in reasons["locked.png"] and "unreadable folder" in reasons["private"]
    with pytest.raises(LeansslError, match="private.*Permission denied"):
        open_dataset(f"folder:{root}", RES, tmp_path / "cache2", strict=True, progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_and_folder_are_reported(tmp_path):
    root = small_folder(tmp_path / "perm")
    os.chmod(root / "locked.png", 0)
    os.chmod(root / "private", 0)
    try:
        ds = open_dataset(f"folder:{root}", RES, tmp_path / "cache", progress=False)
    finally:
        os.chmod(root / "private", 0o755)
    assert {os.path.basename(p) for p, _ in ds.skipped} == {"locked.png", "private"} and len(ds.pretrain) == 3


def test_decode_failure_of_any_kind_does_not_escape_as_a_traceback(tmp_path, monkeypatch):
    # Whatever a decoder raises, the file is skipped with the reason: one bad file never ends the build.
    root = small_folder(tmp_path / "odd")
    real = images._to_rgb

    def boom(im):
        if im.size == (8, 8) and im.getpixel((0, 0)) == (1, 1, 1):
            raise ValueError("unexpected decoder state")
        return real(im)

    monkeypatch.setattr(images, "_to_rgb", boom)
    ds = open_dataset(f"folder:{root}", RES, tmp_path / "cache", progress=False)
    assert [(os.path.basename(p), why) for p, why in ds.skipped] == [("ok1.png", "ValueError: unexpected decoder state")]
