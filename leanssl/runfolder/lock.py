"""The run folder is owned by one run: an OS lock, and no writes into someone else's folder.

`claim` takes an exclusive `fcntl.flock` on `LOCK` inside `--out` for the whole run. The kernel
drops the lock when the process ends, however it ends, so a SIGKILLed run's `--resume` finds the
folder free; a second writer at the same time is refused with one line. The lock file stays
behind as the mark of a leanssl run folder: a fresh run into a non-empty folder without it (someone
else's files) is refused unless `force`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LeansslError
from .files import NOFOLLOW

if TYPE_CHECKING:
    from .folder import RunFolder

LOCK = ".leanssl-run.lock"


class Lock:
    """A claimed run folder; `release` (or the process's end) frees it."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def claim(folder: RunFolder, resume: bool, force: bool) -> Lock:
    """Lock `folder` for this run (creating it); for a fresh run, check it may be written and clear the files
    an earlier attempt wrote."""
    out, checkpoint = folder.path, folder.checkpoint_path
    if out.exists() and not out.is_dir():
        raise LeansslError(f"--out {out} is a file, not a folder: choose a folder for the run")
    if resume and not checkpoint.is_file():  # checked first: nothing is created for a mistyped --out
        raise LeansslError(f"--resume: no checkpoint in {out} (nothing to resume; drop --resume to start)")
    marked = (out / LOCK).is_file() and not (out / LOCK).is_symlink()
    if not resume and not force and not marked and out.is_dir() and any(out.iterdir()):
        raise LeansslError(f"--out {out} is not empty and is not a leanssl run folder: choose another --out, or "
                           f"pass --force to write the run into it (files named as a run's are replaced, others kept)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
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
    if not resume and not force and checkpoint.exists():
        os.close(fd)
        raise LeansslError(f"{out} already holds a run: pass --resume to continue it, --force to start it "
                           f"again, or choose another --out")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    for name in folder.FILES:
        if not resume or name.endswith(".tmp"):  # a fresh run starts clean; a temp file is a killed write's
            _remove(out / name)
        elif (out / name).is_symlink():  # tb/ is written by TensorBoard, which would follow it
            os.close(fd)
            raise LeansslError(f"{out / name} is a symbolic link: refusing to write through it (a run writes only "
                               f"inside its --out)")
    return Lock(out, fd)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
