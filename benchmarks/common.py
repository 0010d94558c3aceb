"""What the benchmark scripts share: machine facts, and one row = `leanssl train` + `leanssl eval --json`."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_jiffies() -> tuple[int, int]:
    """(steal, total) CPU time from /proc/stat, in jiffies: (0, 0) where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_percent(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """Share of CPU time the hypervisor gave to other guests between two `cpu_jiffies()`: on a shared VM it
    slows a timed row as much as local load does, and the load average does not show it."""
    total = after[1] - before[1]
    return round(100 * (after[0] - before[0]) / total, 1) if total > 0 else None


def git_commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return r.stdout.strip() or "unknown"


def commit_label() -> str:
    """The commit, marked "+dirty" when leanssl/ has uncommitted changes (what was measured is then not the commit)."""
    r = subprocess.run(["git", "status", "--porcelain", "--", "leanssl"], capture_output=True, text=True, cwd=ROOT.parent)
    return git_commit() + ("+dirty" if r.stdout.strip() else "")


def best_epoch_rate(run_dir: Path) -> float | None:
    """images/s of the run's fastest epoch: on a shared machine, the epoch least slowed by other jobs."""
    from leanssl.runfolder import RunFolder  # late: gpu_check.py imports this module before leanssl is installed

    return RunFolder(run_dir).best_epoch_rate()


def train_and_eval(name: str, train_flags: list[str], run_dir: Path, data: str, device: str,
                   label_sets: list[tuple[str, list[str]]], cache_dir: str | None = None) -> dict:
    """Train in its own process (so peak memory is this run's), then evaluate each label set with --json.

    A run folder holding a checkpoint is resumed: a killed benchmark continues the row it was in.
    """
    from leanssl.runfolder import RunFolder

    common = ["--cache-dir", cache_dir] if cache_dir else []
    train = [sys.executable, "-m", "leanssl.cli", "train", "--data", data, "--device", device, "--out", str(run_dir),
             "--no-progress", *train_flags, *common]
    run = RunFolder(run_dir)
    if run.has_checkpoint():
        train.append("--resume")
    print(f"[{name}] {' '.join(train[2:])}", flush=True)
    load_before = os.getloadavg()[0]
    subprocess.run(train, check=True)
    load_after = os.getloadavg()[0]  # other work on a shared machine slows a row: keep the evidence
    summary = run.summary()
    evals = {}
    for key, extra in label_sets:
        ev = subprocess.run([sys.executable, "-m", "leanssl.cli", "eval", str(run_dir), "--data", data, "--json",
                             "--device", device, *extra, *common], check=True, capture_output=True, text=True)
        evals[key] = json.loads(ev.stdout.strip().splitlines()[-1])
    return {"name": name, "flags": train_flags, "train": summary, "eval": evals, "loadavg": [load_before, load_after],
            "commit": git_commit(), "best_epoch_images_per_s": best_epoch_rate(run_dir)}
