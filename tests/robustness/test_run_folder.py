"""The run folder is owned: one writer at a time (a lock the OS drops when the run dies), someone
else's folder is not written into without --force, and a planted symlink is never written through."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from leanssl.cli import main
from leanssl.runfolder import LOCK, load_checkpoint
from leanssl.train import train

from .conftest import start_child, tiny_argv
from .conftest import one_error_line




def test_a_second_writer_is_refused_and_a_killed_runs_lock_is_gone(tiny_cfg, capsys):
    cfg = tiny_cfg(checkpoint_every=1)
    slow = """
        real = ESSL.training_step
        def slow_step(self, *a):
            time.sleep(0.3)  # the second writer arrives while this run trains
            return real(self, *a)
        ESSL.training_step = slow_step
        """
    child = start_child(cfg, slow)
    try:
        ckpt = Path(cfg.out) / "checkpoint.pt"
        deadline = time.time() + 60
        while not ckpt.exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ckpt.exists(), child.communicate()[1]
        for argv in (tiny_argv(cfg), tiny_argv(cfg, "--resume"), tiny_argv(cfg, "--seed", "1", "--force")):
            assert main(argv) == 2
            line = one_error_line(capsys)
            assert f"{cfg.out} is in use by another leanssl run (pid {child.pid})" in line, line
        child.send_signal(signal.SIGKILL)  # the OS releases its lock
        child.communicate()
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert main(tiny_argv(cfg, "--resume")) == 0
    assert load_checkpoint(Path(cfg.out) / "checkpoint.pt")["epoch"] == cfg.epochs


def test_someone_elses_folder_is_refused_unless_forced(tiny_cfg, capsys):
    cfg = tiny_cfg()
    out = Path(cfg.out)
    out.mkdir(parents=True)
    mine = {"config.json": "{\"mine\": 1}", "log.csv": "my,data\n", "notes.txt": "keep me"}
    for name, text in mine.items():
        (out / name).write_text(text)
    assert main(tiny_argv(cfg)) == 2
    assert "is not empty and is not a leanssl run folder" in one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == sorted(mine)  # not even a lock file was left
    assert all((out / n).read_text() == t for n, t in mine.items())
    assert main(tiny_argv(cfg, "--force")) == 0
    assert (out / "notes.txt").read_text() == "keep me" and (out / "checkpoint.pt").is_file()


def test_a_leanssl_run_killed_before_its_first_checkpoint_starts_again_without_force(tiny_cfg):
    cfg = tiny_cfg(epochs=1)
    out = Path(cfg.out)
    out.mkdir(parents=True)
    (out / LOCK).write_text("")  # what a run killed during decoding leaves
    (out / "log.csv").write_text("epoch,step,lr,loss,ce,kl\n0,0,0.1,9.9,9.9,nan\n")  # and a stale row
    train(cfg)
    assert len((out / "log.csv").read_text().splitlines()) == 1 + 6


def test_a_finished_run_needs_resume_or_force(tiny_cfg, capsys):
    cfg = tiny_cfg(epochs=1)
    assert main(tiny_argv(cfg)) == 0
    capsys.readouterr()
    assert main(tiny_argv(cfg)) == 2
    assert "already holds a run: pass --resume to continue it, --force to start it again" in one_error_line(capsys)
    assert main(tiny_argv(cfg, "--force", "--seed", "3")) == 0
    assert load_checkpoint(Path(cfg.out) / "checkpoint.pt")["config"]["seed"] == 3


def test_out_that_is_a_file_is_one_line(tiny_cfg, capsys):
    cfg = tiny_cfg()
    Path(cfg.out).write_text("not a folder")
    assert main(tiny_argv(cfg)) == 2
    assert one_error_line(capsys) == (f"leanssl: error: --out {cfg.out} is a file, not a folder: "
                                      "choose a folder for the run")


@pytest.mark.parametrize("name", ["log.csv", "config.json", "epochs.csv", "summary.json", "backbone.safetensors"])
def test_planted_symlinks_are_not_written_through(name, tiny_cfg, tmp_path):
    cfg = tiny_cfg(epochs=2, stop_after=1)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = Path(cfg.out)
    train(cfg)
    (out / name).unlink(missing_ok=True)
    os.symlink(victim, out / name)  # planted between the run and its --resume
    try:
        train(cfg, resume=True)
    except Exception as e:  # refusing is fine too, as long as it is one clear line
        assert "symbolic link" in str(e), e
    assert victim.read_text() == "precious"
    # and a fresh run with --force into a folder holding such a link replaces the link, not its target
    cfg.stop_after = None
    train(cfg, force=True)
    assert victim.read_text() == "precious" and not (out / name).is_symlink()


def test_reading_a_run_folders_files_needs_no_torch(tiny_cfg):
    """The benchmark scripts that start runs and read their summaries (benchmarks/common.py) stay light."""
    import subprocess
    import sys

    cfg = tiny_cfg(epochs=1)
    train(cfg)
    code = ("import sys; from leanssl.runfolder import RunFolder; f = RunFolder(sys.argv[1]); "
            "assert f.summary()['complete'] and f.has_checkpoint() and f.best_epoch_rate() > 0 and f.is_run(); "
            "assert 'torch' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code, cfg.out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
