"""Decoding image files into cache rows, in a thread pool; a file that cannot be decoded is skipped
with a one-line reason (``Dataset.skipped``), or is an error when ``strict``."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from leanssl.errors import LeansslError

# Formats PIL may lack a plugin for (HEIC, SVG, ...) are listed too: such files are then reported
# as skipped instead of being silently ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                    ".avif", ".heic", ".heif", ".jp2", ".jxl", ".psd", ".svg")  # fmt: skip


def decode_into(dst: np.ndarray, files: list[str], res: int, strict: bool, skipped: list, bar) -> np.ndarray:
    """Decode ``files`` in a thread pool (PIL releases the GIL) and write the good ones to
    consecutive rows of ``dst``, in file order; (file, reason) of each bad one is appended to
    ``skipped``. Returns the mask of decoded files. A bounded window of pending decodes keeps
    memory flat for any number of files."""
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
