"""Shared pieces of the robustness suite: a tiny training config, its losses, and a child process to kill."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import pytest

from leanssl.train import TrainConfig

TINY_METHOD = {"dim": 16, "proj_hidden": 32, "negatives": 20}


def tiny_config(npz, folder: Path, name: str = "run", **kw) -> TrainConfig:
    """2 epochs x 6 steps of essl on tiny_npz, run folder folder/name."""
    base = dict(data=f"npz:{npz}", epochs=2, batch_size=16, out=str(folder / name), cache_dir=str(folder / "cache"),
                progress=False, method_args=dict(TINY_METHOD))
    return TrainConfig(**{**base, **kw})


def tiny_argv(cfg: TrainConfig, *extra: str) -> list[str]:
    """The `leanssl train` command line of a tiny_config."""
    return ["train", "--data", cfg.data, "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size),
            "--dim", "16", "--proj-hidden", "32", "--negatives", "20", "--out", cfg.out, "--cache-dir", cfg.cache_dir,
            "--no-progress", "--device", "cpu", *extra]


@pytest.fixture
def tiny_cfg(tiny_npz, tmp_path):
    """make(name, **overrides) -> tiny_config in tmp_path."""
    return lambda name="run", **kw: tiny_config(tiny_npz, tmp_path, name, **kw)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from a second thread, and on a busy 2-core machine its barriers cost 10x.
    (Children use one thread too: a run resumed across processes must use the same kernels.)"""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tiny_npz, tmp_path_factory):
    """The uninterrupted tiny run: its log.csv rows and final checkpoint state."""
    import torch

    from leanssl.train import train

    cfg = tiny_config(tiny_npz, tmp_path_factory.mktemp("reference"))
    train(cfg)
    return losses(cfg.out), torch.load(Path(cfg.out) / "checkpoint.pt", weights_only=True)["model"]


def losses(run) -> list[tuple[int, float]]:
    """(step, loss) rows of a run's log.csv."""
    with open(Path(run) / "log.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


# A child process that trains `cfg` after running PATCH (which may kill it); one torch thread, as above.
_CHILD = """
import json, os, signal, sys, time
import torch
torch.set_num_threads(1)
import leanssl.train as T
from leanssl.methods.essl import ESSL
cfg = T.TrainConfig(**json.loads(sys.argv[1]))
{patch}
{run}
"""


def start_child(cfg: TrainConfig, patch: str = "", run: str = "T.train(cfg)") -> subprocess.Popen:
    """A fresh interpreter that trains cfg (or runs `run`, e.g. the CLI) after `patch`."""
    code = _CHILD.format(patch=textwrap.dedent(patch), run=run)
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(asdict(cfg))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_child(cfg: TrainConfig, patch: str = "", run: str = "T.train(cfg)", timeout: float = 120):
    p = start_child(cfg, patch, run)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


# Lines a run prints on stderr before it meets bad input: what it is about to do, and notes.
_INFO_PREFIXES = ("leanssl: training ", "leanssl: resuming", "leanssl: note:", "leanssl: cache entry")


def one_error_line(capsys_or_text) -> str:
    """The one `leanssl: error: ...` line of a failed command (its start line and notes aside), no traceback."""
    text = capsys_or_text if isinstance(capsys_or_text, str) else capsys_or_text.readouterr().err
    assert "Traceback" not in text, text
    err = [ln for ln in text.strip().splitlines() if not ln.startswith(_INFO_PREFIXES)]
    assert len(err) == 1 and err[0].startswith("leanssl: error: "), text
    return err[0]
