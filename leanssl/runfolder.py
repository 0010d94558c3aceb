"""The run folder is owned by one run: an OS lock, no writes into someone else's folder, no symlinks followed.

`claim` takes an exclusive `fcntl.flock` on `LOCK` inside `--out` for the whole run. The kernel
drops the lock when the process ends, however it ends, so a SIGKILLed run's `--resume` finds the
folder free; a second writer at the same time is refused with one line. The lock file stays
behind as the mark of a leanssl run folder: a fresh run into a non-empty folder without it (someone
else's files) is refused unless `force`.

The files of a run are written with `write_text` / `write_bytes` (a new file renamed over the old
one, so a symlink planted under that name is replaced, never written through) and `open_append`
(O_NOFOLLOW: a planted symlink is an error).
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
from pathlib import Path

from .errors import LeansslError

LOCK = ".leanssl-run.lock"
# What a run writes (besides LOCK): cleared before a fresh run so no file of an earlier attempt stays.
RUN_FILES = ("config.json", "data.json", "log.csv", "epochs.csv", "summary.json", "checkpoint.pt",
             "checkpoint.pt.tmp", "backbone.safetensors", "skipped.txt", "tb")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class RunFolder:
    """A claimed run folder; `release` (or the process's end) frees it."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def claim(out: Path, resume: bool, force: bool = False) -> RunFolder:
    """Lock `out` for this run (creating it); for a fresh run, check it may be written and clear earlier run files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LeansslError(f"--out {out} is a file, not a folder: choose a folder for the run")
    if resume and not (out / "checkpoint.pt").is_file():  # checked first: nothing is created for a mistyped --out
        raise LeansslError(f"--resume: no checkpoint in {out} (nothing to resume; drop --resume to start)")
    marked = (out / LOCK).is_file() and not (out / LOCK).is_symlink()
    if not resume and not force and not marked and out.is_dir() and any(out.iterdir()):
        raise LeansslError(f"--out {out} is not empty and is not a leanssl run folder: choose another --out, or "
                           f"pass --force to write the run into it (files named as a run's are replaced, others kept)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
    except OSError as e:
        raise LeansslError(f"cannot use run folder {out}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise LeansslError(f"cannot lock run folder {out}: {e.strerror or e}") from None
        raise LeansslError(f"{out} is in use by another leanssl run" + (f" (pid {holder})" if holder else "")
                           + ": wait for it to end, or choose another --out") from None
    if not resume and not force and (out / "checkpoint.pt").exists():
        os.close(fd)
        raise LeansslError(f"{out} already holds a run: pass --resume to continue it, --force to start it "
                           f"again, or choose another --out")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    for name in RUN_FILES:
        if not resume or name.endswith(".tmp"):  # a fresh run starts clean; a temp file is a killed write's
            _remove(out / name)
        elif (out / name).is_symlink():  # tb/ is written by TensorBoard, which would follow it
            os.close(fd)
            raise LeansslError(f"{out / name} is a symbolic link: refusing to write through it (a run writes only "
                               f"inside its --out)")
    return RunFolder(out, fd)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: written to a new temp file (O_EXCL, never through a link), then renamed over it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
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
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise LeansslError(f"{path} is a symbolic link: refusing to write through it (a run writes only "
                               f"inside its --out)") from None
        raise
    return os.fdopen(fd, "a", newline="")


# The input contract of a backbone, as data.json and the export metadata state it: bounds that keep a
# damaged or crafted file from building an absurd model (a resolution of 10^9 would try to allocate it).
MAX_CHANNELS, MAX_RESOLUTION = 64, 4096


def check_input_contract(values, where) -> dict:
    """`values` (parsed data.json or export metadata) if its channels, resolution, mean and std make sense."""
    def bad(why: str) -> LeansslError:
        return LeansslError(f"{where}: {why} (damaged or not written by leanssl)")

    if not isinstance(values, dict):
        raise bad("not a JSON object")
    for key, hi in (("channels", MAX_CHANNELS), ("resolution", MAX_RESOLUTION)):
        v = values.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise bad(f"{key} must be an integer in [1, {hi}], got {v!r}")
    for key in ("mean", "std"):
        v = values.get(key)
        if not isinstance(v, (list, tuple)) or len(v) != values["channels"] or \
                not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            raise bad(f"{key} must be {values['channels']} finite number(s), got {v!r}")
    if not all(x > 0 for x in values["std"]):
        raise bad(f"std must be positive, got {values['std']!r}")
    return values


def read_json(path: Path, what: str = "") -> dict:
    """A JSON file's contents, or one LeansslError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LeansslError(f"{path}: missing{f' ({what})' if what else ''}") from None
    except (OSError, ValueError) as e:
        raise LeansslError(f"{path}: unreadable ({type(e).__name__}: {e})") from None


def read_data_info(run_dir: Path) -> dict:
    """A run's data.json (channels, resolution, mean, std, num_images), checked."""
    path = Path(run_dir) / "data.json"
    return check_input_contract(read_json(path, "a run folder holds one"), path)
