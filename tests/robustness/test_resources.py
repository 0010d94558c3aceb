"""Resource limits: running out of memory suggests a smaller --batch-size; a full disk during a
checkpoint keeps the previous checkpoint valid and says so in one line."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest
import torch

from leanssl.cli import main
from leanssl.methods.essl import ESSL
from leanssl.runfolder import RunFolder, load_checkpoint

from .conftest import tiny_argv
from .conftest import one_error_line

OOMS = {
    "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "cpu": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                                "memory: you tried to allocate 35184372088832 bytes. Error code 12"),
    "python": MemoryError,
}


@pytest.mark.parametrize("kind", sorted(OOMS))
def test_out_of_memory_suggests_a_smaller_batch_size(kind, tiny_cfg, monkeypatch, capsys):
    def step(self, *a):
        raise OOMS[kind]()

    monkeypatch.setattr(ESSL, "training_step", step)
    assert main(tiny_argv(tiny_cfg())) == 2
    assert [one_error_line(capsys)] == ["leanssl: error: out of memory: try a smaller --batch-size (or a smaller --resolution / backbone)"]


def test_other_runtime_errors_are_not_disguised_as_out_of_memory(tiny_cfg, monkeypatch):
    def step(self, *a):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(ESSL, "training_step", step)
    with pytest.raises(RuntimeError, match="shapes"):  # a bug keeps its traceback
        main(tiny_argv(tiny_cfg()))


@pytest.mark.parametrize("where", ["torch.save", "os.replace"])
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(where, tiny_cfg, monkeypatch, capsys):
    cfg = tiny_cfg(epochs=1, checkpoint_every=3)  # a good checkpoint after step 3, then the epoch-end one fails
    ckpt = Path(cfg.out) / "checkpoint.pt"
    real_save, real_replace, saves = torch.save, os.replace, []

    def save(obj, f):
        saves.append(1)
        if len(saves) == 2 and where == "torch.save":  # half of it reaches the disk, then the disk is full
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: buf.tell() // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f)

    def replace(src, dst):
        if len(saves) == 2 and where == "os.replace" and str(dst).endswith("checkpoint.pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "replace", replace)
    assert main(tiny_argv(cfg, "--checkpoint-every", "3")) == 2
    assert [one_error_line(capsys)] == [f"leanssl: error: cannot write checkpoint {ckpt}: No space left on device; "
                   "the previous checkpoint is intact"]
    state = load_checkpoint(ckpt)
    assert (state["epoch"], state["step_in_epoch"]) == (0, 3)
    assert sorted(p.name for p in ckpt.parent.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint.pt"]


def test_disk_full_elsewhere_is_one_line(tiny_cfg, monkeypatch, capsys):
    def append_log(self, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path / self.LOG))

    monkeypatch.setattr(RunFolder, "append_log", append_log)
    cfg = tiny_cfg()
    assert main(tiny_argv(cfg)) == 2
    assert [one_error_line(capsys)] == [f"leanssl: error: disk full writing {Path(cfg.out) / 'log.csv'}: No space left on device; "
                   "free space and run the command again"]
