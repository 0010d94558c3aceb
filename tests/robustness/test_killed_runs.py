"""Killed runs: SIGKILL at any moment leaves a loadable checkpoint, and --resume reproduces the
uninterrupted run's loss curve; SIGINT/SIGTERM checkpoint mid-epoch and exit cleanly."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from leanssl.methods.essl import ESSL
from leanssl.runfolder import load_checkpoint
from leanssl.train import Callback, TrainingInterrupted, train
from leanssl.train.stop import GracefulStop

from .conftest import losses, run_child, start_child, tiny_argv


def assert_same_run(run: Path, reference) -> None:
    """The resumed run's whole log and final state equal the uninterrupted run's, bit for bit
    (same CPU, same thread count)."""
    ref_losses, ref_state = reference
    got = losses(run)
    assert [s for s, _ in got] == [s for s, _ in ref_losses], "steps missing or repeated in log.csv"
    assert got == ref_losses  # exact floats
    state = load_checkpoint(run / "checkpoint.pt")["model"]
    for k, v in ref_state.items():
        assert torch.equal(state[k], v), k


# Checkpoints with checkpoint_every=4 on 6 steps per epoch: after steps 4 (mid-epoch), 6 (epoch end), 8 (mid), 12.
# Each case kills the child with SIGKILL inside one checkpoint write; the one before it must be the one resumed.
KILL_IN_WRITE = {
    "mid-write": ("""
        import io
        real_save, calls = torch.save, [0]
        def dying_save(obj, f):
            calls[0] += 1
            if calls[0] == 3:  # half of the checkpoint after step 8 is on disk
                buf = io.BytesIO()
                real_save(obj, buf)
                f.write(buf.getvalue()[: buf.tell() // 2]); f.flush(); os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, f)
        torch.save = dying_save
        """, (1, 0)),
    "before-rename": ("""
        real_replace, calls = os.replace, [0]
        def dying_replace(src, dst):
            calls[0] += str(dst).endswith("checkpoint.pt")
            if calls[0] == 2:  # the epoch-end checkpoint is complete in checkpoint.pt.tmp, not yet renamed
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
        os.replace = dying_replace
        """, (0, 4)),
}


@pytest.mark.parametrize("case", sorted(KILL_IN_WRITE))
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one_and_resume_reproduces(case, tiny_cfg, reference):
    patch, (epoch, step_in_epoch) = KILL_IN_WRITE[case]
    cfg = tiny_cfg(checkpoint_every=4)
    r = run_child(cfg, patch)
    assert r.returncode == -signal.SIGKILL, r.stderr
    run = Path(cfg.out)
    assert (run / "checkpoint.pt.tmp").exists()  # the interrupted write
    state = load_checkpoint(run / "checkpoint.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (epoch, step_in_epoch)
    summary = train(cfg, resume=True)
    assert summary["complete"] and summary["epochs_done"] == 2
    assert not (run / "checkpoint.pt.tmp").exists()
    assert_same_run(run, reference)


def test_sigkill_at_a_random_moment_then_resume_reproduces(tiny_cfg, reference):
    # Every step logs and checkpoints and is slowed down, so the kill can land anywhere in a step or a write.
    cfg = tiny_cfg(checkpoint_every=1, log_every=1)
    child = start_child(cfg, """
        real_after = ESSL.after_step
        def slow_after(self):
            real_after(self)
            time.sleep(0.05)
        ESSL.after_step = slow_after
        """)
    log = Path(cfg.out) / "log.csv"
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.01)
    delay = random.uniform(0, 0.4)
    time.sleep(delay)
    child.kill()
    _, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, f"the child ended before the kill (delay {delay:.3f} s): {err}"
    state = load_checkpoint(Path(cfg.out) / "checkpoint.pt")
    assert 1 <= state["epoch"] * 6 + state["step_in_epoch"] <= 12, f"delay {delay:.3f} s"
    assert train(cfg, resume=True)["complete"]
    assert_same_run(Path(cfg.out), reference)


def test_sigterm_checkpoints_mid_epoch_and_exits_cleanly(tiny_cfg, reference):
    cfg = tiny_cfg()
    r = run_child(cfg, """
        real_after, calls = ESSL.after_step, [0]
        def after(self):
            real_after(self)
            calls[0] += 1
            if calls[0] == 9:  # step 9 of 12: epoch 2, 3 of its 6 steps done
                os.kill(os.getpid(), signal.SIGTERM)
        ESSL.after_step = after
        """, run=f"from leanssl.cli import main; sys.exit(main({tiny_argv(cfg)!r}))")
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (f"leanssl: SIGTERM: stopped at step 9, checkpoint saved in {cfg.out} "
                                                 "(continue with --resume)")
    state = load_checkpoint(Path(cfg.out) / "checkpoint.pt")
    assert (state["epoch"], state["step_in_epoch"], len(state["epoch_losses"])) == (1, 3, 3)
    assert train(cfg, resume=True)["complete"]
    assert_same_run(Path(cfg.out), reference)


def test_sigint_checkpoints_mid_epoch_and_restores_the_handler(tiny_cfg, reference, monkeypatch):
    before = signal.getsignal(signal.SIGINT)
    calls = []
    real_after = ESSL.after_step

    def after(self):
        real_after(self)
        calls.append(1)
        if len(calls) == 4:  # epoch 1, 4 of its 6 steps done
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(ESSL, "after_step", after)
    cfg = tiny_cfg()
    with pytest.raises(TrainingInterrupted) as e:  # a KeyboardInterrupt: scripts calling train() still stop
        train(cfg)
    summary = e.value.summary
    assert summary["interrupted"] == "SIGINT" and summary["steps_done"] == 4 and not summary["complete"]
    assert signal.getsignal(signal.SIGINT) is before
    state = load_checkpoint(Path(cfg.out) / "checkpoint.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (0, 4)
    monkeypatch.setattr(ESSL, "after_step", real_after)
    assert train(cfg, resume=True)["complete"]
    assert_same_run(Path(cfg.out), reference)


def test_a_signal_arriving_after_a_steps_stop_check_is_honoured_after_the_next_step(tiny_cfg, reference):
    class SignalAfterStep2(Callback):
        def on_step_end(self, run):  # past step 2's stop check, as a signal arriving while it logs
            if run.steps_done == 2:
                os.kill(os.getpid(), signal.SIGINT)

    cfg = tiny_cfg()
    with pytest.raises(TrainingInterrupted):
        train(cfg, callbacks=[SignalAfterStep2()])
    state = load_checkpoint(Path(cfg.out) / "checkpoint.pt")
    assert (state["epoch"], state["step_in_epoch"]) == (0, 3)
    train(cfg, resume=True)
    assert_same_run(Path(cfg.out), reference)


def test_a_second_sigint_or_one_outside_the_loop_interrupts_at_once():
    # Python's own SIGINT handler, as in a terminal: a shell's background job (`pytest &`) starts with SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _second_sigint_interrupts()
    finally:
        signal.signal(signal.SIGINT, previous)


def _second_sigint_interrupts():
    with GracefulStop() as stop:
        with pytest.raises(KeyboardInterrupt):  # unarmed: decoding data, calibrating
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        stop.armed = True
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.signal == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)


def test_resume_drops_log_rows_written_after_the_checkpoint(tiny_cfg, reference):
    # A run killed after logging steps past its last checkpoint, one row cut short: replayed, not duplicated.
    cfg = tiny_cfg()
    train(tiny_cfg(stop_after=1))
    log = Path(cfg.out) / "log.csv"
    with open(log, "a") as f:
        f.write("1,6,0.1,123.0,1.0,1.0\n1,7,0.1,99")
    with open(Path(cfg.out) / "epochs.csv", "a") as f:
        f.write("2,9.0,1.0,1.0,1.0\n")
    train(cfg, resume=True)
    assert_same_run(Path(cfg.out), reference)
    assert [r.split(",")[0] for r in (Path(cfg.out) / "epochs.csv").read_text().splitlines()] == ["epoch", "1", "2"]
