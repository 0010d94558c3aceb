"""Training images/s of every leanssl method and of lightly's SimCLR, same model, same batch (issue 7).

    python benchmarks/throughput.py                          # CPU: 60k x 1x28x28, lean_cnn, batch 256
    python benchmarks/throughput.py --device cuda            # GPU: 50k x 3x32x32, resnet18_cifar, batch 512
    python benchmarks/throughput.py --device cuda --compile  # + torch.compile of the networks (as train --compile)
    python benchmarks/throughput.py --device cuda --precision fp32  # without bf16 autocast
    python benchmarks/throughput.py --methods essl,simclr --rounds 3 --no-peer

Synthetic uint8 images of the given shape (throughput does not depend on their contents).
Every number is end to end: batch gather, augmentation, forward, backward, optimizer step and the
method's after-step update (bank, EMA teacher, queue), after warm-up steps. Ours runs the loop's
own step (leanssl.train.step.TrainStep) on a method built as the loop builds it, channels_last, at
`leanssl train`'s precision (bf16 autocast on a GPU, fp32 on a CPU, unless --precision). The one
thing left out is `setup` (essl's feature calibration, a one-off no-grad pass before epoch 1): a step costs the same
whatever the bank holds. The peer is lightly's SimCLR as benchmarks/peer_lightly.py runs it
(per-image torchvision transforms in DataLoader workers, lightly's head and NTXentLoss), on the
same backbone and batch, given the same precision and channels_last.

A shared machine drifts, so the measurement is interleaved: each round times every method and the
peer in turn (short windows; the order reversed every other round), and the table gives the median
images/s over rounds and the median over rounds of each method's ratio to the peer in the same
round. The peer's DataLoader is started afresh each round (its warm-up steps absorb the worker
start) and shut down after, so its workers never run while ours is timed. On a machine shared
with other jobs the comparison leans towards the peer: its main process and workers together get
a larger share of the cores from the scheduler than our one process does (`--workers 0` removes
that; the load average is recorded with every round).

GPU extras: peak memory per method (max allocated over its steps, minus what was allocated before
it was built: the resident data set and the other methods), and MFU: training FLOPs per step
counted by torch.utils.flop_counter.FlopCounterMode on one eager step (convolutions and matmuls,
forward and backward; augmentation's elementwise work is not counted) times steps/s, over the
matmul peak measured here at the run's precision. benchmarks/gpu_check.py runs it on a GPU.

Writes benchmarks/results/throughput-<device>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from common import commit_label, cpu_name
from leanssl import accel
from leanssl.data.loader import DeviceLoader
from leanssl.methods import get_method, pretraining_methods
from leanssl.methods.base import DataInfo
from leanssl.device import resolve_device
from leanssl.models.backbones import DEFAULT_BACKBONE
from leanssl.distributed import SingleProcess
from leanssl.train import TrainConfig
from leanssl.train.build import build_method, build_optimizer, param_groups
from leanssl.train.schedule import Schedule
from leanssl.train.step import TrainStep

ROOT = Path(__file__).resolve().parent
PROFILES = {  # per device type: data shape, images, backbone, batch, rounds, timed steps and warm-up steps per window
    "cpu": dict(shape=(1, 28, 28), images=60_000, backbone=DEFAULT_BACKBONE, batch_size=256, rounds=5, steps=2, warmup=1),
    "cuda": dict(shape=(3, 32, 32), images=50_000, backbone="resnet18_cifar", batch_size=512, rounds=5, steps=30, warmup=10),
}
PEER = "lightly-simclr"


MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic(shape: tuple[int, int, int], n: int, seed: int = 0) -> tuple[np.ndarray, DataInfo]:
    """n random uint8 images of `shape` and the DataInfo a source of them would give."""
    x = np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    c, h, _ = shape
    return x, DataInfo(n, c, h, (0.5,) * c, (0.29,) * c)


class Ours:
    """One leanssl method, stepped by the training loop's own step (leanssl.train.step.TrainStep)."""

    def __init__(self, name: str, loader: DeviceLoader, info: DataInfo, backbone: str, batch_size: int,
                 device: torch.device, precision: str, seed: int = 0, memory_format=torch.channels_last):
        self.name, self.loader, self.batch_size, self.device, self.precision = name, loader, batch_size, device, precision
        self.cfg = TrainConfig(method=name, backbone=backbone, batch_size=batch_size, seed=seed)
        torch.manual_seed(seed)
        self.method = build_method(self.cfg, info).to(device, memory_format=memory_format)
        self.opt = build_optimizer(self.cfg, self.method)
        self.step = TrainStep(self.method, self.opt, SingleProcess(device), precision)
        self.steps_per_epoch = loader.steps_per_epoch(batch_size)
        self.schedule = Schedule(self.cfg.base_lr(), self.steps_per_epoch, epochs=10, warmup_epochs=0)
        self.gen = torch.Generator(device).manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.batches = self._batches(seed)
        self.step_no = 0
        self.method.train()

    def _batches(self, seed: int):
        epoch = 0
        while True:
            yield from self.loader.shards(self.batch_size, seed * 7919 + epoch)
            epoch += 1

    def compile(self, backend: str = "inductor") -> None:
        accel.compile_networks(self.method, backend)

    def run(self, steps: int) -> None:
        """`steps` training steps; the logged values are gathered at the end (the loop syncs every log_every steps)."""
        total = self.schedule.total_steps
        logged = []
        for _ in range(steps):
            batch = next(self.batches)
            self.method.set_progress(self.step_no % total, total, self.steps_per_epoch)
            logged.append(self.step(batch, self.gen, self.rng, self.schedule.lr(self.step_no)).values())
            self.step_no += 1
        if logged:
            torch.stack(logged).tolist()  # the host sync the loop's logger does


class Peer:
    """lightly's SimCLR (benchmarks/peer_lightly.py) on the same images, backbone and batch."""

    name = PEER

    def __init__(self, x: np.ndarray, info: DataInfo, backbone: str, batch_size: int, device: torch.device,
                 workers: int | None, precision: str, seed: int = 0, memory_format=torch.channels_last):
        import peer_lightly as pl

        self.pl, self.device, self.precision = pl, device, precision
        torch.manual_seed(seed)
        self.model = pl.prepare(pl.build_peer("simclr", backbone, info), device).to(memory_format=memory_format)
        self.opt = torch.optim.SGD(param_groups(self.model, 5e-4), lr=get_method("simclr").default_lr * batch_size / 256, momentum=0.9)
        self.workers = workers if workers is not None else pl.default_workers(device)
        self.loader = pl.peer_loader(x, "simclr", info, batch_size, self.workers, device, seed)
        self.batches = None
        self.step_no = 0
        self.model.train()

    def compile(self, backend: str = "inductor") -> None:
        accel.compile_networks(self.model, backend)  # as ours: every network of the model

    def start(self) -> None:
        self.batches = iter(self.loader)

    def stop(self) -> None:
        self.batches = None  # shuts the workers down

    def run(self, steps: int) -> None:
        losses = []
        for _ in range(steps):
            try:
                views, _ = next(self.batches)
            except StopIteration:
                self.start()
                views, _ = next(self.batches)
            losses.append(self.pl.peer_step(self.model, self.opt, views, self.device, self.step_no, 10**6,
                                             self.precision).detach())
            self.step_no += 1
        if losses:
            torch.stack(losses).tolist()


def timed(runner, steps: int, warmup: int, device: torch.device) -> float:
    """Images/s of `steps` steps after `warmup` untimed ones."""
    if hasattr(runner, "start"):
        runner.start()
    try:
        runner.run(warmup)
        sync(device)
        t0 = time.perf_counter()
        runner.run(steps)
        sync(device)
        return steps * runner_batch(runner) / (time.perf_counter() - t0)
    finally:
        if hasattr(runner, "stop"):
            runner.stop()


def runner_batch(runner) -> int:
    return runner.batch_size if isinstance(runner, Ours) else runner.loader.batch_size


def flops_per_step(runner, device: torch.device) -> int:
    """Training FLOPs of one step (forward + backward), counted on an eager step."""
    if hasattr(runner, "start"):
        runner.start()
    try:
        with FlopCounterMode(display=False) as fc:
            runner.run(1)
        sync(device)
        return fc.get_total_flops()
    finally:
        if hasattr(runner, "stop"):
            runner.stop()


def matmul_peak(device: torch.device, precision: str) -> float:
    """Measured dense matmul FLOP/s at `precision`: 8192³ on a GPU, 1024³ on a CPU."""
    n, reps = (8192, 20) if device.type == "cuda" else (1024, 10)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * n**3 / best


def measure(methods: list[str], x: np.ndarray, info: DataInfo, backbone: str, batch_size: int, device: torch.device,
            rounds: int, steps: int, warmup: int, peer: bool = True, workers: int | None = None,
            compile: bool = False, precision: str | None = None, compile_backend: str = "inductor",
            memory_format: str = "channels_last", log=print) -> dict:
    """Interleaved rounds over every method (and the peer); returns per-runner rates and the derived statistics."""
    loader = DeviceLoader(x, device)
    precision = accel.resolve_precision(precision, device)
    runners, info_by = [], {}
    for name in methods + ([PEER] if peer else []):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        fmt = MEMORY_FORMATS[memory_format]
        r = (Peer(x, info, backbone, batch_size, device, workers, precision, memory_format=fmt) if name == PEER
             else Ours(name, loader, info, backbone, batch_size, device, precision, memory_format=fmt))
        flops = flops_per_step(r, device)
        if compile:
            r.compile(compile_backend)
        timed(r, 1, warmup, device)  # first use: allocator, compile, worker start
        entry = {"flops_per_step": flops, "gflop_per_image": flops / batch_size / 1e9}
        if device.type == "cuda":
            entry["peak_mem_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        if name == PEER:
            entry["workers"] = r.workers
        info_by[name] = entry
        runners.append(r)
        log(f"built {name}: {entry['gflop_per_image']:.3f} GFLOP/image")

    rates: dict[str, list[float]] = {r.name: [] for r in runners}
    loads = [os.getloadavg()]
    for k in range(rounds):
        order = runners if k % 2 == 0 else runners[::-1]
        for r in order:
            rates[r.name].append(timed(r, steps, warmup, device))
        loads.append(os.getloadavg())
        log(f"round {k + 1}/{rounds}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in rates.items()) + f"  (load {loads[-1][0]:.1f})")

    peak = matmul_peak(device, precision)
    results = {}
    for name, v in rates.items():
        e = info_by[name] | {"images_per_s": v, "median_images_per_s": statistics.median(v)}
        e["achieved_tflop_s"] = e["flops_per_step"] * e["median_images_per_s"] / batch_size / 1e12
        e["mfu"] = e["achieved_tflop_s"] * 1e12 / peak
        if peer and name != PEER:
            e["ratio_to_peer"] = [a / b for a, b in zip(v, rates[PEER])]
            e["median_ratio_to_peer"] = statistics.median(e["ratio_to_peer"])
        results[name] = e
    return {"results": results, "matmul_peak_tflop_s": peak / 1e12, "loadavg": loads, "precision": precision}


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def table(out: dict) -> str:
    s, res = out["settings"], out["results"]
    cuda = s["device"] == "cuda"
    lines = [f"Training throughput, {s['device']}: {s['images']} synthetic images {'x'.join(map(str, s['shape']))}, "
             f"{s['backbone']}, batch {s['batch_size']}, " + ("bf16 autocast" if out["precision"] == "bf16" else "fp32")
             + f", {s.get('memory_format', 'channels_last')}"
             + (", torch.compile" if s["compile"] else "") + f"; {s['rounds']} interleaved rounds of {s['steps']} timed steps "
             f"after {s['warmup']} warm-up.",
             f"Machine: {out['machine']}; torch {out['torch']}" + (f", lightly {out['lightly']}" if out.get("lightly") else "")
             + f"; {out['date']}; commit {out['commit']}; load average {out['loadavg'][0][0]:.1f} → {out['loadavg'][-1][0]:.1f}; "
             f"matmul peak measured {out['matmul_peak_tflop_s']:.3g} TFLOP/s ({out['precision']}).",
             f"Command: `{out['command']}`", "",
             "| method | images/s (median) | min–max over rounds | ÷ lightly SimCLR (median of per-round ratios) "
             "| GFLOP/image (train) | achieved TFLOP/s | MFU |" + (" peak memory MB |" if cuda else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if cuda else "")]
    for name, e in res.items():
        cells = [name, f"{e['median_images_per_s']:.0f}", f"{min(e['images_per_s']):.0f}–{max(e['images_per_s']):.0f}",
                 f"{e['median_ratio_to_peer']:.2f}×" if "median_ratio_to_peer" in e else ("1" if name == PEER else "–"),
                 f"{e['gflop_per_image']:.3f}", f"{e['achieved_tflop_s']:.3g}", f"{100 * e['mfu']:.1f}%"]
        if cuda:
            cells.append(f"{e['peak_mem_mb']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    if PEER in res:
        lines.append(f"\n{PEER}: DataLoader with {res[PEER]['workers']} worker(s), per-image torchvision transforms.")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (the profile's defaults follow it)")
    p.add_argument("--methods", default=",".join(pretraining_methods()),
                   help="comma-separated leanssl methods (default: every pretraining method)")
    p.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True, help="also lightly's SimCLR (needs lightly)")
    p.add_argument("--shape", default=None, help="C,H,W of the synthetic images")
    p.add_argument("--images", type=int, default=None, help="synthetic data set size")
    p.add_argument("--backbone", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps per window")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps before each window")
    p.add_argument("--workers", type=int, default=None, help="the peer's DataLoader workers")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (ours and the peer's)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None, help="default: bf16 on CUDA, fp32 on a CPU")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile's backend (aot_eager: a quick CPU dry run)")
    p.add_argument("--memory-format", choices=sorted(MEMORY_FORMATS), default="channels_last",
                   help="the networks' layout, ours and the peer's (leanssl trains channels_last)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's, one per core)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/throughput-<device>.json)")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = parser().parse_args(argv)

    device = resolve_device(a.device)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    prof = PROFILES[device.type]
    shape = tuple(int(v) for v in a.shape.split(",")) if a.shape else prof["shape"]
    settings = {"device": device.type, "shape": shape, "images": a.images or prof["images"],
                "backbone": a.backbone or prof["backbone"], "batch_size": a.batch_size or prof["batch_size"],
                "rounds": a.rounds or prof["rounds"], "steps": a.steps or prof["steps"],
                "warmup": a.warmup if a.warmup is not None else prof["warmup"], "compile": a.compile,
                "precision": accel.resolve_precision(a.precision, device), "memory_format": a.memory_format,
                "threads": torch.get_num_threads()}
    methods = [m for m in a.methods.split(",") if m]
    x, info = synthetic(shape, settings["images"])
    out = measure(methods, x, info, settings["backbone"], settings["batch_size"], device, settings["rounds"],
                  settings["steps"], settings["warmup"], peer=a.peer, workers=a.workers, compile=a.compile,
                  precision=settings["precision"], compile_backend=a.compile_backend, memory_format=a.memory_format)
    out |= {"settings": settings, "machine": machine(device), "torch": torch.__version__,
            "lightly": __import__("lightly").__version__ if a.peer else None, "date": time.strftime("%Y-%m-%d %H:%M"),
            "commit": commit_label(), "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    tag = ("-compile" if a.compile else "") + (f"-{a.precision}" if a.precision else "")
    path = Path(a.out) if a.out else ROOT / "results" / f"throughput-{device.type}{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(table(out))
    print(f"\n(written to {path})")
    return out


if __name__ == "__main__":
    main()
