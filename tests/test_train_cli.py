"""The training loop and the command-line contract, end to end on tiny data."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from leanssl.cli import main
from leanssl.errors import LeansslError
from leanssl.methods.essl import ESSL
from leanssl.train import TrainConfig, train


def _cfg(tiny_npz, tmp_path, **kw):
    base = dict(data=f"npz:{tiny_npz}", method="essl", backbone="small_cnn", epochs=3, batch_size=16,
                out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), progress=False,
                method_args={"dim": 16, "proj_hidden": 32, "negatives": 20})
    base.update(kw)
    return TrainConfig(**base)


def _losses(run):
    with open(run / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_resumed_run_reproduces_the_uninterrupted_losses(tiny_npz, tmp_path):
    full = train(_cfg(tiny_npz, tmp_path / "a"))
    assert full["complete"] and full["epochs_done"] == 3
    part = train(_cfg(tiny_npz, tmp_path / "b", stop_after=1))
    assert not part["complete"] and part["epochs_done"] == 1
    assert not (tmp_path / "b" / "run" / "backbone.safetensors").exists()
    resumed = train(_cfg(tiny_npz, tmp_path / "b"), resume=True)
    assert resumed["complete"]
    a, b = _losses(tmp_path / "a" / "run"), _losses(tmp_path / "b" / "run")
    assert len(a) == len(b) == 3 * (96 // 16)
    np.testing.assert_allclose(b, a, rtol=1e-6)
    # The final bank and weights agree too.
    sa = torch.load(tmp_path / "a" / "run" / "checkpoint.pt", weights_only=True)["model"]
    sb = torch.load(tmp_path / "b" / "run" / "checkpoint.pt", weights_only=True)["model"]
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6)


def test_callbacks_see_the_setup_every_step_and_every_epoch_and_change_nothing(tiny_npz, tmp_path):
    from leanssl.train import Callback

    class Record(Callback):
        def __init__(self):
            self.calls = []

        def on_setup(self, run):
            self.calls.append(("setup", run.resumed, run.steps_done))

        def on_step_end(self, run):
            self.calls.append(("step", run.steps_done))

        def on_epoch_end(self, run):
            self.calls.append(("epoch", run.state.epoch))

    train(_cfg(tiny_npz, tmp_path / "a", epochs=2))
    first, again = Record(), Record()
    train(_cfg(tiny_npz, tmp_path / "b", epochs=2, stop_after=1), callbacks=[first])
    train(_cfg(tiny_npz, tmp_path / "b", epochs=2), resume=True, callbacks=[again])
    assert first.calls == [("setup", False, 0)] + [("step", s) for s in range(1, 7)] + [("epoch", 1)]
    assert again.calls == [("setup", True, 6)] + [("step", s) for s in range(7, 13)] + [("epoch", 2)]
    assert _losses(tmp_path / "b" / "run") == _losses(tmp_path / "a" / "run")


def test_resume_refuses_a_different_run_and_fresh_start_refuses_overwrite(tiny_npz, tmp_path):
    train(_cfg(tiny_npz, tmp_path, stop_after=1))
    with pytest.raises(LeansslError, match="already holds a run"):
        train(_cfg(tiny_npz, tmp_path))
    with pytest.raises(LeansslError, match="batch_size"):
        train(_cfg(tiny_npz, tmp_path, batch_size=32), resume=True)


def test_nan_loss_stops_with_step_and_keeps_the_last_good_checkpoint(tiny_npz, tmp_path, monkeypatch):
    train(_cfg(tiny_npz, tmp_path, stop_after=1))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    before = ckpt.read_bytes()
    original = ESSL.training_step
    calls = {"n": 0}

    def poisoned(self, *a):
        loss, logs = original(self, *a)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), logs

    monkeypatch.setattr(ESSL, "training_step", poisoned)
    with pytest.raises(LeansslError, match=r"loss became nan at step 8 .*diverged.*lower --lr.*checkpoint.*intact"):
        train(_cfg(tiny_npz, tmp_path), resume=True)
    assert ckpt.read_bytes() == before
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1


def test_fraction_is_stratified_and_recorded(tiny_npz, tmp_path):
    s = train(_cfg(tiny_npz, tmp_path, fraction=0.5, epochs=1))
    assert s["train_images"] == 48
    info = json.loads((tmp_path / "run" / "data.json").read_text())
    assert info["num_images"] == 48


def test_cli_train_then_eval_json(tiny_npz, tmp_path, capsys):
    run = tmp_path / "cli"
    common = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["train", "--data", f"npz:{tiny_npz}", "--method", "npid", "--backbone", "small_cnn", "--epochs", "2",
                 "--batch-size", "16", "--lr", "0.1", "--out", str(run), "--seed", "1", "--device", "cpu",
                 "--fraction", "1.0", "--dim", "16", "--no-progress", *common]) == 0
    assert (run / "backbone.safetensors").exists()
    capsys.readouterr()
    assert main(["eval", str(run), "--data", f"npz:{tiny_npz}", "--protocol", "knn,linear", "--json", *common]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= res["knn_top1"] <= 1 and 0 <= res["linear_top1"] <= 1
    assert res["train_images"] == 96 and res["test_images"] == 32
    assert main(["eval", str(run), "--data", f"npz:{tiny_npz}", "--labels-per-class", "3", "--json", *common]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["train_images"] == 12 and res["labels_per_class"] == 3
    # The same run resumed past its end does nothing more and says so.
    assert main(["train", "--data", f"npz:{tiny_npz}", "--method", "npid", "--epochs", "2", "--batch-size", "16",
                 "--out", str(run), "--seed", "1", "--dim", "16", "--resume", "--no-progress", *common]) == 0


def test_pinned_evaluation_defaults():
    from leanssl.eval.knn import KNN_K, KNN_T
    assert (KNN_K, KNN_T) == (200, 0.1)  # a silent change of these broke peers' published numbers (lightly #1824)


@pytest.mark.parametrize("argv,needle", [
    (["train", "--data", "nosuchspec:/x", "--epochs", "1"], "unknown data spec"),
    (["train", "--data", "mnist:/no/such/path", "--epochs", "1"], "not found"),
    (["train", "--data", "digits", "--backbone", "resnet1800", "--epochs", "1"], "unknown backbone 'resnet1800'"),
    (["train", "--data", "digits", "--method", "nosuch", "--epochs", "1"], "unknown method 'nosuch'"),
    (["eval", "/no/such/run", "--data", "digits"], "no such run folder or exported backbone"),
])
def test_bad_input_gives_one_line_error_and_nonzero_exit(argv, needle, tmp_path):
    r = subprocess.run([sys.executable, "-m", "leanssl.cli", *argv, "--out" if argv[0] == "train" else "--seed",
                        str(tmp_path / "o") if argv[0] == "train" else "0"],
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "LEANSSL_CACHE": str(tmp_path / "c")})
    assert r.returncode == 2
    err = r.stderr.strip()
    assert needle in err.splitlines()[-1] and "Traceback" not in err, err


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "leanssl.cli", "train", "--data", f"folder:{tmp_path / 'empty'}",
                        "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(tmp_path / "empty") in r.stderr, r.stderr


def test_time_budget_ends_the_run_and_anneals_the_schedule_by_time(tiny_npz, tmp_path):
    s = train(_cfg(tiny_npz, tmp_path, epochs=100_000, time_budget=1.5, warmup_epochs=0.5))
    assert s["complete"] and s["time_budget"] == 1.5
    assert 1.5 <= s["train_seconds"] < 5  # stops at the first step past the budget (setup included)
    assert (tmp_path / "run" / "backbone.safetensors").exists()
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert s["images_seen"] == len(rows) * 16 and len(rows) > 10
    peak, last = max(float(r["lr"]) for r in rows), float(rows[-1]["lr"])
    assert peak == pytest.approx(0.5 * 16 / 256, rel=1e-3)
    assert last < 0.5 * peak  # the cosine followed the time spent, not the 100000-epoch cap
    # Resuming a run whose budget is spent trains nothing more.
    again = train(_cfg(tiny_npz, tmp_path, epochs=100_000, time_budget=1.5, warmup_epochs=0.5), resume=True)
    assert again["images_seen"] == s["images_seen"]


def test_steps_in_budget_extrapolates_the_measured_rate():
    from leanssl.train.schedule import Schedule

    def steps(step, spent, budget, cap):  # cap = 10 epochs of cap / 10 steps
        return Schedule(0.1, cap // 10, 10, 2.0, time_budget=budget, rate_from=(5, 1.0)).steps_in_budget(step, spent)

    # 10 steps took 2 s since step 5 (at 1 s spent); 9 s of a 10 s budget left at 0.2 s/step -> 45 more.
    assert steps(15, 3.0, 10.0, cap=1000) == 15 + int(7.0 * 10 / 2.0)
    assert steps(7, 3.0, 10.0, cap=1000) == 1000  # too few steps measured: the cap
    assert steps(500, 3.0, 1e6, cap=800) == 800


def test_budget_parsing_and_per_method_default_lr():
    from leanssl.cli import parse_duration
    assert [parse_duration(t) for t in ("90", "90s", "10m", "1.5h")] == [90, 90, 600, 5400]
    for bad in ("", "ten", "-5m", "0"):
        with pytest.raises(Exception):
            parse_duration(bad)
    assert TrainConfig(method="essl", batch_size=512).base_lr() == pytest.approx(1.0)  # the authors' rate
    assert TrainConfig(method="mocov2", batch_size=512).base_lr() == pytest.approx(0.06)  # MoCo's CIFAR demo
    assert TrainConfig(method="simsiam", batch_size=256, lr=0.2).base_lr() == 0.2  # --lr wins


def test_resumed_budget_run_continues_its_schedule(tiny_npz, tmp_path):
    """A budget run stopped half-way and resumed keeps annealing: it does not restart near the peak lr.

    A fake clock (0.01 s per reading) makes the time schedule deterministic."""
    import itertools
    ticks = itertools.count()
    clock = lambda: next(ticks) * 0.01  # noqa: E731
    cfg = dict(epochs=100_000, time_budget=1.0, warmup_epochs=0.5)
    first = train(_cfg(tiny_npz, tmp_path, stop_after=5, **cfg), clock=clock)
    assert not first["complete"] and 0.2 < first["train_seconds"] < 0.8
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["rate_from"] is not None and state["peak_mem_mb"] > 0
    n_before = len(_losses(tmp_path / "run"))
    done = train(_cfg(tiny_npz, tmp_path, **cfg), resume=True, clock=clock)
    assert done["complete"] and done["peak_mem_mb"] >= state["peak_mem_mb"]
    with open(tmp_path / "run" / "log.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    peak = max(lrs)
    assert lrs[n_before] <= lrs[n_before - 1] * 1.01 < 0.95 * peak  # continues the decay
    assert lrs[-1] < 0.3 * peak


def test_stop_at_slices_the_run_by_training_clock_and_resume_replays_it(tiny_npz, tmp_path):
    """Wall-clock slices (the time-to-accuracy benchmark's round robin): each invocation ends after the step
    during which the clock passed stop_at, with a checkpoint; the sliced run equals the unsliced one."""
    full = train(_cfg(tiny_npz, tmp_path / "a"))
    clock, steps = 0.0, []
    for k in range(4):
        s = train(_cfg(tiny_npz, tmp_path / "b", stop_at=clock + 1e-9), resume=k > 0)
        assert not s["complete"] and s["train_seconds"] > clock
        clock, steps = s["train_seconds"], steps + [s["steps_done"]]
    assert steps == [1, 2, 3, 4]  # a slice already spent runs nothing; each new slice one step here
    again = train(_cfg(tiny_npz, tmp_path / "b", stop_at=clock / 2), resume=True)
    assert again["steps_done"] == 4
    done = train(_cfg(tiny_npz, tmp_path / "b"), resume=True)
    assert done["complete"] and done["steps_done"] == full["steps_done"]
    np.testing.assert_allclose(_losses(tmp_path / "b" / "run"), _losses(tmp_path / "a" / "run"), rtol=1e-6)


def test_the_default_batch_is_the_methods_and_a_resume_keeps_the_runs_own(tiny_npz, tmp_path):
    from leanssl.methods import get_method

    assert get_method("essl").default_batch_size == 128 and get_method("simclr").default_batch_size == 256
    assert TrainConfig(method="essl").base_lr() == 0.5 * 128 / 256  # the lr follows the method's batch
    big = tmp_path / "big.npz"  # enough images that neither default batch is capped
    rng = np.random.default_rng(0)
    np.savez(big, x=rng.integers(0, 255, (520, 8, 8), dtype=np.uint8), y=np.arange(520) % 4)
    cfg = dict(data=f"npz:{big}", epochs=2, out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
               progress=False, method_args={"dim": 8, "negatives": 8})
    train(TrainConfig(**cfg, stop_after=1))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batch_size"] == 128
    # A run started with another batch resumes with its own when --batch-size is not given.
    train(TrainConfig(**{**cfg, "out": str(tmp_path / "b")}, batch_size=64, stop_after=1))
    s = train(TrainConfig(**{**cfg, "out": str(tmp_path / "b")}), resume=True)
    assert s["complete"] and json.loads((tmp_path / "b" / "config.json").read_text())["batch_size"] == 64
