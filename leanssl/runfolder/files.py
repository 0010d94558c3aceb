"""Writing a run's files: never through a planted symlink, never half a file after a crash.

`write_text` / `write_bytes` write a new file and rename it over the old one (a symlink planted
under that name is replaced, never written through); `open_append` opens with ONOFOLLOW (a planted
symlink is an error); `atomic_save` is torch.save with fsyncs, for checkpoints.
"""

from __future__ import annotations

import csv
import errno
import json
import math
import os
from pathlib import Path

from ..errors import LeansslError

NOFOLLOW = getattr(os, "ONOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: written to a new temp file (O_EXCL, never through a link), then renamed over it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def open_append(path: Path):
    """A text file opened for appending; a symlink in its place is refused, not followed."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise LeansslError(f"{path} is a symbolic link: refusing to write through it (a run writes only "
                               f"inside its --out)") from None
        raise
    return os.fdopen(fd, "a", newline="")


def atomic_save(obj, path: Path) -> None:
    """Write to a temp file, fsync, rename over the target, fsync the folder: a crash leaves the old file or the new one.

    On an error (a full disk) the temp file is removed and the old file is left as it was.
    """
    import torch

    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a killed write's leftover; "x" below then never writes through a planted symlink
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path, what: str = "") -> dict:
    """A JSON file's contents, or one LeansslError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LeansslError(f"{path}: missing{f' ({what})' if what else ''}") from None
    except (OSError, ValueError) as e:
        raise LeansslError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def json_safe(values: dict) -> dict:
    """NaN/inf (a run with no finished epoch has no loss) as null: the file stays strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def truncate_csv(path: Path, keep) -> None:
    """Keep the header and the complete rows for which keep(row) holds; a row cut short by a kill is dropped."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        lines = f.readlines()
    if not lines:
        return
    header = next(csv.reader(lines[:1]))

    def wanted(line: str) -> bool:
        values = next(csv.reader([line]), [])
        try:
            return line.endswith("\n") and len(values) == len(header) and keep(dict(zip(header, values)))
        except ValueError:
            return False

    write_text(path, "".join(lines[:1] + [ln for ln in lines[1:] if wanted(ln)]))


def one_line(text: str) -> str:
    """A file name or reason as one printable UTF-8 line: undecodable bytes as \\xNN, and newline, tab and
    carriage return escaped (they would split the line, or the columns of a tab-separated one)."""
    try:
        raw = str(text).encode("utf-8", "surrogateescape")  # a name os.listdir could not decode keeps its bytes
    except UnicodeEncodeError:
        raw = str(text).encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    return text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
