"""Training under torchrun (DistributedDataParallel, Gloo on CPU), against one process as the reference.

A 2-process run and a 1-process run of the same global batch and seed give the same loss curve and
the same final state (weights, bank, EMA teacher) for essl, byol (EMA) and simclr (negatives
gathered across ranks); a killed rank makes the other exit with a one-line error instead of
hanging; and the killed run, resumed mid-epoch by `torchrun -m leanssl train --resume`, ends where
the 1-process run ends.

How the comparison is made exact (what "within float tolerance" rests on):
- --sync-bn: BatchNorm statistics over the global batch, as in one process (per-rank statistics
  are a different computation, not a rounding difference);
- every random draw of a step is made for the global batch from the same generator on every rank
  (augmentation, sampled bank columns), so both runs see the same views and negatives;
- essl with CutMix off: under torchrun CutMix pairs images within each rank's share (see essl.py);
- a small learning rate (0.002): the tiny CPU net on 12-px images has near-constant BatchNorm
  channels whose 1/σ turns rounding differences (reduction order; PyTorch's channels-last CPU
  BatchNorm backward is ~30x less accurate than the contiguous one) into 1e-2 differences after a
  few steps at the default rate. The bank's own rates (bank_lr, EMA momentum) are not changed, and
  `_moved` checks that training moved every compared state far beyond the tolerance, so a wrong
  average (a sum instead of a mean, a bank without the other rank's rows) cannot pass.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from leanssl import distributed
from leanssl.data.augment import AugConfig, BatchAugment
from leanssl.data.loader import DeviceLoader
from leanssl.runfolder import load_checkpoint
from leanssl.train import TrainConfig, train

TINY = {"essl": {"dim": 16, "proj_hidden": 32, "negatives": 20, "cutmix_alpha": 0.0},
        "byol": {"dim": 8, "proj_hidden": 16},
        "simclr": {"dim": 8, "proj_hidden": 16}}
STATE_TOL = dict(rtol=1e-4, atol=5e-5)
LOSS_TOL = dict(rtol=1e-5, atol=1e-5)
TIMEOUT = 180  # seconds any launch may take before the test fails (a hang)


def _cfg(npz, folder: Path, method: str, **kw) -> TrainConfig:
    """2 epochs x 6 steps of 16 images (8 per process), small heads, --sync-bn.

    small_cnn, not the default lean_cnn: a global max pool routes each gradient to one position, so
    the last-bit differences of an all-reduce can move it and the runs part by more than the tolerance.
    """
    base = dict(data=f"npz:{npz}", method=method, backbone="small_cnn", epochs=2, batch_size=16, lr=0.002,
                out=str(folder / method), cache_dir=str(folder.parent / "cache"), progress=False,
                method_args=dict(TINY[method]), sync_bn=True, dist_timeout=60.0)
    return TrainConfig(**{**base, **kw})


def _losses(run) -> list[tuple[int, float]]:
    with open(Path(run) / "log.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> dict:
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1"}


def _launch(code: str, args: list[str], world: int = 2) -> list[subprocess.Popen]:
    """`world` processes running `code` with torchrun's variables set, as torchrun would start them."""
    port = _free_port()
    return [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=_env(r, world, port),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]


def _wait(procs, timeout=TIMEOUT) -> list[tuple[int, str, str]]:
    out = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=timeout)
            out.append((p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


# One process group for the whole list of runs (train() joins a group that exists).
_WORKER = """
import datetime, json, sys
import torch
torch.set_num_threads(1)
import torch.distributed as dist
from leanssl.train import TrainConfig, train
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
for cfg in json.loads(sys.argv[1]):
    train(TrainConfig(**cfg))
"""


@pytest.fixture(scope="module")
def runs(tiny_npz, tmp_path_factory):
    """The 1-process reference runs (in this process) and the same runs in 2 processes."""
    torch.set_num_threads(1)
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    procs = _launch(_WORKER, [json.dumps([asdict(_cfg(tiny_npz, two, m)) for m in TINY])])
    try:
        for m in TINY:
            train(_cfg(tiny_npz, one, m))
    finally:
        results = _wait(procs)
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    return one, two


def _moved(state: dict, method: str, npz, tmp: Path) -> dict:
    """How far training moved each float tensor from its initial value (same seed, same build)."""
    from leanssl.data.sources import open_dataset
    from leanssl.methods.base import DataInfo
    from leanssl.train.build import build_method

    cfg = _cfg(npz, tmp, method)
    ds = open_dataset(cfg.data, None, cfg.cache_dir, progress=False)
    torch.manual_seed(cfg.seed)
    init = build_method(cfg, DataInfo(len(ds.pretrain.x), ds.channels, ds.resolution, tuple(ds.mean), tuple(ds.std)))
    return {k: (state[k].float() - v.float()).abs().max().item() for k, v in init.state_dict().items()
            if v.is_floating_point() and v.ndim >= 2}


@pytest.mark.parametrize("method", list(TINY))
def test_two_processes_give_the_one_process_run(runs, method, tiny_npz, tmp_path):
    one, two = runs
    a, b = _losses(one / method), _losses(two / method)
    assert [s for s, _ in b] == [s for s, _ in a] == list(range(12))
    np.testing.assert_allclose([v for _, v in b], [v for _, v in a], **LOSS_TOL)
    ref, got = load_checkpoint(one / method / "checkpoint.pt"), load_checkpoint(two / method / "checkpoint.pt")
    assert ref["model"].keys() == got["model"].keys()  # one bank / teacher, no DDP prefixes: the same checkpoint
    for k, v in ref["model"].items():
        torch.testing.assert_close(got["model"][k], v, **STATE_TOL, msg=lambda m, k=k: f"{k}: {m}")
    assert json.loads((two / method / "summary.json").read_text())["processes"] == 2
    # The tolerance is tight next to what training changed: every weight tensor (and the bank) moved
    # by far more, so an error in how ranks are combined would show.
    moved = _moved(ref["model"], method, tiny_npz, tmp_path)
    assert min(v for k, v in moved.items() if "target" not in k) > 20 * STATE_TOL["atol"], moved
    if method == "essl":
        assert moved["bank.weight"] > 0.1


_KILL = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from leanssl.methods.essl import ESSL
if os.environ["RANK"] == "1":  # rank 1 dies (SIGKILL, no cleanup) as step 9 begins
    step = ESSL.training_step
    def dying(self, *a):
        if self.step == 9:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, *a)
    ESSL.training_step = dying
from leanssl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _argv(cfg: TrainConfig) -> list[str]:
    m = cfg.method_args
    return ["train", "--data", cfg.data, "--method", cfg.method, "--backbone", cfg.backbone, "--epochs",
            str(cfg.epochs), "--batch-size", str(cfg.batch_size), "--lr", str(cfg.lr), "--dim", str(m["dim"]), "--proj-hidden", str(m["proj_hidden"]),
            "--negatives", str(m["negatives"]), "--cutmix-alpha", str(m["cutmix_alpha"]), "--out", cfg.out,
            "--cache-dir", cfg.cache_dir, "--no-progress", "--device", "cpu", "--sync-bn", "--dist-timeout", "60"]


def test_killed_rank_stops_the_other_and_torchrun_resumes_mid_epoch(runs, tiny_npz, tmp_path):
    one, _ = runs
    cfg = _cfg(tiny_npz, tmp_path, "essl")
    procs = _launch(_KILL, [*_argv(cfg), "--checkpoint-every", "4"])
    t0 = time.monotonic()
    (rc0, _, err0), (rc1, _, _) = _wait(procs)
    assert rc1 == -9
    # Rank 0 noticed at its next collective (not after --dist-timeout): one line, no traceback.
    assert rc0 == 2 and "Traceback" not in err0, err0
    last = err0.strip().splitlines()[-1]
    assert last.startswith("leanssl: error: rank 0 of 2: lost another rank") and "--resume" in last, err0
    assert time.monotonic() - t0 < 60
    ckpt = load_checkpoint(Path(cfg.out) / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == (1, 2)  # the one after 8 steps, mid-epoch 2

    # torchrun, python -m leanssl: the 2 processes resume mid-epoch and end where one process ends.
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "leanssl", *_argv(cfg), "--resume"], capture_output=True, text=True, timeout=TIMEOUT,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("finished:") == 1  # rank 0 reports, once
    a, b = _losses(one / "essl"), _losses(cfg.out)
    assert [s for s, _ in b] == [s for s, _ in a]  # the steps after the checkpoint were dropped and replayed
    np.testing.assert_allclose([v for _, v in b], [v for _, v in a], **LOSS_TOL)
    ref, got = load_checkpoint(one / "essl" / "checkpoint.pt")["model"], load_checkpoint(Path(cfg.out) / "checkpoint.pt")["model"]
    for k, v in ref.items():
        torch.testing.assert_close(got[k], v, **STATE_TOL, msg=lambda m, k=k: f"{k}: {m}")


def test_shards_are_disjoint_and_cover_each_batch_and_the_calibration_pass():
    x = np.zeros((23, 1, 2, 2), np.uint8)
    one = DeviceLoader(x, "cpu")
    shards = [DeviceLoader(x, "cpu", rank=r, world=2) for r in range(2)]
    for (_, idx), *parts in zip(one.epoch(6, 7), *(s.shards(6, 7) for s in shards)):
        assert torch.equal(torch.cat([p[1] for p in parts]), idx)  # rank 0's rows, then rank 1's: the batch
        assert all(torch.equal(p[2], idx) for p in parts)  # every rank knows the global batch
    seen = torch.cat([idx for s in shards for _, idx in s.ordered(10)])
    assert sorted(seen.tolist()) == list(range(23))  # every row once: the tail is not dropped
    # 23 = 10 + 13: the last 3 rows (fewer than 2 per rank) joined the batch before.
    assert [len(idx) for _, idx in shards[0].ordered(10)] == [5, 7]


def test_views_do_not_depend_on_how_the_batch_is_split():
    """Under torchrun each rank draws the global batch's augmentation parameters and keeps its rows,
    so a rank's views are the one-process views of its rows (multi-crop repeats included)."""
    x = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    aug = BatchAugment(AugConfig(), 12, (0.5,) * 3, (0.25,) * 3)
    idx = torch.arange(8)
    whole = aug(x.repeat(3, 1, 1, 1), torch.Generator().manual_seed(1)).view(3, 8, 3, 12, 12)
    for r in range(2):
        with distributed.sharded(distributed.BatchShard(r, 2, idx)):
            part = aug(x[4 * r:4 * r + 4].repeat(3, 1, 1, 1), torch.Generator().manual_seed(1)).view(3, 4, 3, 12, 12)
        torch.testing.assert_close(part, whole[:, 4 * r:4 * r + 4])
