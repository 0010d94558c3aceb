"""lightly's SimCLR and BYOL as its users run them, on leanssl's data and backbone; and a side-by-side with ours.

    pip install -e '.[bench]'    # lightly
    python benchmarks/peer_lightly.py train --method simclr --data fashion-mnist --fraction 0.1 --epochs 10 --out RUN
    leanssl eval RUN --data fashion-mnist --json
    python benchmarks/peer_lightly.py compare --data fashion-mnist --fraction 0.1 --epochs 10 --methods simclr,byol,essl
    python benchmarks/peer_lightly.py compare --data fashion-mnist --fraction 0.1 --budget 90s --methods simclr,byol,essl

The peer (issue 6, "against peers"): lightly's heads, losses, momentum utilities and per-image
torchvision view transforms, fed by a torch DataLoader with worker processes, written the way
lightly's examples (examples/pytorch/simclr.py, byol.py) and CIFAR-10 benchmark write them:

- SimCLR: SimCLRTransform (cj_strength 0.5 and no blur at <= 32 px, as lightly's docs advise for
  CIFAR), SimCLRProjectionHead(D, D, 128), NTXentLoss; one forward per view.
- BYOL: BYOLTransform (view 1 blur 1.0, view 2 blur 0.1 + solarise 0.2; no blur at <= 32 px),
  BYOLProjectionHead(D, 4096, 256), BYOLPredictionHead(256, 4096, 256), NegativeCosineSimilarity
  with lightly's 0.5·(L(p0, z1) + L(p1, z0)), update_momentum before the forward with
  cosine_schedule(step, total, m, 1). (Our byol_loss is 2 − 2·cos summed over both views: at the
  same learning rate our BYOL takes 4× larger gradient steps on the loss; both use lightly's 0.06
  per 128 images, which was tuned on lightly's scale.)

What is held equal to ours (`leanssl train`): the data (a leanssl SPEC opened with open_dataset,
the same seeded stratified --fraction), the backbone (build_backbone), the batch size, epochs,
the view recipes (crop scale, jitter strengths, grayscale, solarise), τ and EMA momentum, and the
optimizer: SGD momentum 0.9, weight decay 5e-4 without decay on biases and norms, the method's
default_lr per 256 images, linear warm-up then cosine (leanssl.train.schedule, param_groups). On a
GPU the peer gets our bf16 autocast and channels_last too. What differs is the implementation:
per-image PIL transforms in DataLoader workers, lightly's modules, one forward per view.

The run folder holds what `leanssl eval` reads: config.json (a leanssl TrainConfig with method
"lightly-simclr"/"lightly-byol"), data.json, backbone.safetensors, summary.json (train_seconds,
images_per_s, peak_mem_mb: on CPU the main process's peak RSS, DataLoader workers not counted)
and epochs.csv. `--budget` stops the loop when the time is spent, with the cosine schedule over
the steps the budget is estimated to hold (the same estimate as `leanssl train --budget`).
`--stop-at TIME` ends an invocation at that training clock with checkpoint.pt, `--resume` continues it
(benchmarks/time_to_accuracy.py trains arms in turns this way).

`compare` trains ours and lightly's in turn (each in its own process), evaluates every run with
`leanssl eval --json`, and prints a markdown table; results are kept in
benchmarks/results/peers-*.json and finished rows are skipped on a rerun.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from common import best_epoch_rate, commit_label, cpu_name, train_and_eval
from leanssl import accel
from leanssl.cli import parse_duration
from leanssl.data.sources import open_dataset, stratified_subset
from leanssl.device import peak_memory_mb, resolve_device
from leanssl.methods.base import DataInfo
from leanssl.methods.common import SMALL_IMAGES
from leanssl.models.backbones import DEFAULT_BACKBONE, build_backbone
from leanssl.runfolder import RunFolder, json_safe
from leanssl.train import TrainConfig
from leanssl.train.build import param_groups
from leanssl.train.schedule import Schedule

ROOT = Path(__file__).resolve().parent
PEER_METHODS = ("simclr", "byol")


# -- the peer: lightly's pieces, as lightly's examples assemble them ----------------------------

class ImageArray(torch.utils.data.Dataset):
    """uint8 (N, C, H, W) images served as PIL images through a per-image transform, as a torchvision dataset does."""

    def __init__(self, x: np.ndarray, transform):
        self.x, self.transform = x, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        a = np.asarray(self.x[i])
        image = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))
        return self.transform(image), 0


def peer_transform(method: str, info: DataInfo):
    """lightly's two-view transform for `method`, at the data's size and normalised with its mean/std."""
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, SimCLRTransform

    small = info.resolution <= SMALL_IMAGES
    norm = {"mean": list(info.mean), "std": list(info.std)}
    if method == "simclr":
        return SimCLRTransform(input_size=info.resolution, cj_strength=0.5 if small else 1.0,
                               gaussian_blur=0.0 if small else 0.5, normalize=norm)
    if method == "byol":
        return BYOLTransform(
            view_1_transform=BYOLView1Transform(input_size=info.resolution, gaussian_blur=0.0 if small else 1.0, normalize=norm),
            view_2_transform=BYOLView2Transform(input_size=info.resolution, gaussian_blur=0.0 if small else 0.1, normalize=norm))
    raise ValueError(f"no lightly peer for {method!r}: choose from {', '.join(PEER_METHODS)}")


class LightlySimCLR(nn.Module):
    """lightly's examples/pytorch/simclr.py model, on a leanssl backbone (features (B, D))."""

    def __init__(self, backbone: nn.Module, info: DataInfo):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(backbone.out_dim, backbone.out_dim, 128)
        self.criterion = NTXentLoss(temperature=0.5 if info.resolution <= SMALL_IMAGES else 0.1)  # our simclr's τ

    def forward(self, x):
        return self.projection_head(self.backbone(x).flatten(start_dim=1))

    def training_step(self, x0, x1, step: int, total_steps: int):
        return self.criterion(self(x0), self(x1))


class LightlyBYOL(nn.Module):
    """lightly's examples/pytorch/byol.py model (per-step cosine momentum), on a leanssl backbone."""

    def __init__(self, backbone: nn.Module, info: DataInfo):
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(backbone.out_dim, 4096, 256)
        self.prediction_head = BYOLPredictionHead(256, 4096, 256)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NegativeCosineSimilarity()
        self.base_momentum = 0.99 if info.resolution <= SMALL_IMAGES else 0.996  # our byol's τ_base

    def forward(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()

    def training_step(self, x0, x1, step: int, total_steps: int):
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(step, total_steps, self.base_momentum, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m=m)
        update_momentum(self.projection_head, self.projection_head_momentum, m=m)
        p0, z0 = self(x0), self.forward_momentum(x0)
        p1, z1 = self(x1), self.forward_momentum(x1)
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))


def build_peer(method: str, backbone_name: str, info: DataInfo) -> nn.Module:
    cls = {"simclr": LightlySimCLR, "byol": LightlyBYOL}.get(method)
    if cls is None:
        raise ValueError(f"no lightly peer for {method!r}: choose from {', '.join(PEER_METHODS)}")
    return cls(build_backbone(backbone_name, info.channels, info.resolution), info)


def default_workers(device: torch.device) -> int:
    """DataLoader workers: every core on a GPU machine (the peer's best case); on a CPU, where the
    workers share the cores with the training step, 2 (on the 2-core machine 0, 1 and 2 workers
    gave the same 104 img/s for SimCLR at 28 px: the step, not the transforms, is the bottleneck
    there; `--workers` overrides)."""
    cores = os.cpu_count() or 1
    return cores if device.type == "cuda" else min(2, cores)


def peer_loader(x: np.ndarray, method: str, info: DataInfo, batch_size: int, workers: int, device: torch.device,
                seed: int, order: torch.Tensor | None = None) -> torch.utils.data.DataLoader:
    """The peer's input pipeline: shuffled (or in the given `order` of indices), last partial batch dropped
    (as ours), per-image transforms in workers."""
    return torch.utils.data.DataLoader(
        ImageArray(x, peer_transform(method, info)), batch_size=batch_size, shuffle=order is None, drop_last=True,
        sampler=None if order is None else order.tolist(),
        num_workers=workers, pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))


def peer_step(model: nn.Module, opt: torch.optim.Optimizer, views, device: torch.device, step: int,
              total_steps: int, precision: str | None = None) -> torch.Tensor:
    """One optimisation step of the peer on a batch of two views (the loss comes back unsynchronised);
    `precision` as leanssl's (None: bf16 on CUDA, fp32 on a CPU)."""
    x0, x1 = (v.to(device, non_blocking=True) for v in views)
    with accel.autocast(device, accel.resolve_precision(precision, device)):
        loss = model.training_step(x0, x1, step, total_steps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def prepare(model: nn.Module, device: torch.device) -> nn.Module:
    """Same placement as leanssl's loop: on the device, channels_last."""
    return model.to(device, memory_format=torch.channels_last)


# -- `train`: one peer run into a run folder `leanssl eval` reads ---------------------------------

def train_peer(a: argparse.Namespace) -> dict:
    """One peer run; `a.stop_at` (seconds) ends this invocation after the step during which the training
    clock passed it, with checkpoint.pt (`leanssl eval` reads its backbone), and `a.resume` continues from
    there: the same image order (one seeded permutation per epoch), not the same per-image augmentations."""
    device = resolve_device(a.device)
    torch.manual_seed(a.seed)
    cfg = TrainConfig(data=a.data, method=a.method, backbone=a.backbone, epochs=a.epochs, batch_size=a.batch_size,
                      lr=a.lr, seed=a.seed, device=a.device, fraction=a.fraction, out=a.out, cache_dir=a.cache_dir,
                      progress=False, time_budget=a.budget, warmup_epochs=a.warmup_epochs)
    ds = open_dataset(a.data, None, a.cache_dir, progress=False)
    x = ds.pretrain.x
    if a.fraction != 1.0:
        x = x[stratified_subset(ds.pretrain.y, len(x), a.fraction, a.seed)]
    info = DataInfo(len(x), ds.channels, ds.resolution, tuple(ds.mean), tuple(ds.std))
    folder = RunFolder(a.out)
    resume = getattr(a, "resume", False) and folder.has_checkpoint()
    stop_at = getattr(a, "stop_at", None)
    if not resume:  # cfg.base_lr(): our method's default_lr x batch/256, unless --lr
        folder.write_config(asdict(cfg) | {"method": f"lightly-{a.method}", "lr": cfg.base_lr(), "resolution": ds.resolution})
        folder.write_data_info(asdict(info))
        folder.start_epoch_log()

    model = prepare(build_peer(a.method, a.backbone, info), device)
    opt = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.base_lr(), momentum=cfg.momentum)
    workers = a.workers if a.workers is not None else default_workers(device)
    steps_per_epoch = len(x) // a.batch_size
    p = dict(epoch=0, step_in_epoch=0, step=0, elapsed=0.0, epoch_seconds=0.0, images_seen=0, rate_from=None,
             epochs_done=0, last_loss=float("nan"))  # where the run is: what the checkpoint holds
    if resume:
        state = folder.load_checkpoint()
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        p.update({k: state[k] for k in p})
        p["rate_from"] = tuple(p["rate_from"]) if p["rate_from"] else None
    schedule = Schedule.of(cfg, steps_per_epoch, p["rate_from"])  # as leanssl train's, --budget's estimate included

    budget_spent = schedule.out_of_time(p["elapsed"])
    paused = not budget_spent and resume and stop_at is not None and p["elapsed"] + p["epoch_seconds"] >= stop_at
    model.train()
    while p["epoch"] < a.epochs and not (budget_spent or paused):
        t_epoch, losses, first = time.perf_counter(), [], p["step_in_epoch"]
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(a.seed * 1009 + p["epoch"]))
        for views, _ in peer_loader(x, a.method, info, a.batch_size, workers, device, a.seed + p["epoch"],
                                    order[first * a.batch_size:]):
            spent = p["elapsed"] + p["epoch_seconds"] + time.perf_counter() - t_epoch
            if schedule.out_of_time(spent):
                budget_spent = True
                break
            schedule.advance(p["step"], spent)
            p["rate_from"] = schedule.rate_from
            for g in opt.param_groups:
                g["lr"] = schedule.lr(p["step"])
            losses.append(peer_step(model, opt, views, device, p["step"], schedule.total_steps).detach())
            p["step"], p["step_in_epoch"] = p["step"] + 1, p["step_in_epoch"] + 1
            p["images_seen"] += a.batch_size
            if stop_at is not None and spent >= stop_at and p["step_in_epoch"] < steps_per_epoch:
                paused = True
                break
        seconds = time.perf_counter() - t_epoch
        if paused:  # mid-epoch: the clock and the position go into the checkpoint
            p["epoch_seconds"] += seconds
            break
        seconds += p["epoch_seconds"]
        p["elapsed"] += seconds
        steps_in_epoch = p["step_in_epoch"] - first
        p["last_loss"] = float(torch.stack(losses).float().mean()) if losses else float("nan")
        rate = steps_in_epoch * a.batch_size / max(seconds, 1e-9)
        folder.append_epoch(p["epoch"] + 1, p["last_loss"], seconds, rate, peak_memory_mb(device))
        print(f"lightly-{a.method} epoch {p['epoch'] + 1}: loss {p['last_loss']:.4f}  {rate:.0f} img/s  {seconds:.1f}s",
              flush=True)
        if p["step_in_epoch"]:
            p["epochs_done"] = p["epoch"] + 1
        p.update(epoch=p["epoch"] + 1, step_in_epoch=0, epoch_seconds=0.0)
        if budget_spent or schedule.out_of_time(p["elapsed"]):
            budget_spent = True
        elif stop_at is not None and p["elapsed"] >= stop_at:
            paused = True

    complete = not paused
    folder.save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(), **p})
    if complete:
        folder.write_backbone(model.backbone)
    clock = p["elapsed"] + p["epoch_seconds"]
    summary = {"method": f"lightly-{a.method}", "backbone": a.backbone, "data": a.data, "fraction": a.fraction,
               "train_images": len(x), "epochs_done": p["epochs_done"], "steps_done": p["step"], "epochs": a.epochs,
               "complete": complete, "final_loss": p["last_loss"], "train_seconds": clock,
               "images_seen": p["images_seen"], "time_budget": a.budget,
               "images_per_s": p["images_seen"] / clock if clock else None,
               "peak_mem_mb": peak_memory_mb(device), "device": str(device), "workers": workers,
               "torch_threads": torch.get_num_threads()}
    folder.write_summary(json_safe(summary))
    return summary


# -- `compare`: ours and lightly's, side by side -----------------------------------------------

def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def run_row(impl: str, method: str, a: argparse.Namespace, run_dir: Path) -> dict:
    """Train one row in its own process (so peak memory is its own), then `leanssl eval --json` it."""
    length = ["--budget", f"{a.budget}s"] if a.budget else ["--epochs", str(a.epochs)]
    flags = ["--method", method, "--backbone", a.backbone, *length, "--batch-size", str(a.batch_size),
             "--fraction", str(a.fraction), "--seed", str(a.seed), "--warmup-epochs", str(a.warmup_epochs)]
    label_sets = [("all", a.eval_args.split())]
    if impl == "ours":  # the same row runner as benchmarks/methods.py
        row = train_and_eval(f"ours {method}", flags, run_dir, a.data, a.device, label_sets, a.cache_dir)
    else:
        common = ["--cache-dir", a.cache_dir] if a.cache_dir else []
        cmd = [sys.executable, str(ROOT / "peer_lightly.py"), "train", "--data", a.data, "--device", a.device,
               "--out", str(run_dir), *flags, *common] + (["--workers", str(a.workers)] if a.workers is not None else [])
        print(f"[lightly {method}] {' '.join(cmd[2:])}", flush=True)
        load_before = os.getloadavg()[0]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        load_after = os.getloadavg()[0]
        evals = {}
        for key, extra in label_sets:
            ev = subprocess.run([sys.executable, "-m", "leanssl.cli", "eval", str(run_dir), "--data", a.data, "--json",
                                 "--device", a.device, *extra, *common], check=True, capture_output=True, text=True)
            evals[key] = json.loads(ev.stdout.strip().splitlines()[-1])
        row = {"name": f"lightly {method}", "flags": flags, "train": RunFolder(run_dir).summary(),
               "eval": evals, "loadavg": [load_before, load_after], "best_epoch_images_per_s": best_epoch_rate(run_dir)}
    return row | {"impl": impl, "method": method, "commit": commit_label()}


def compare(a: argparse.Namespace) -> None:
    mode = f"b{a.budget:g}s" if a.budget else f"e{a.epochs}"
    tag = f"{a.data.split(':')[0]}-{a.backbone}-f{a.fraction:g}-{mode}"
    out_json = Path(a.results) if a.results else ROOT / "results" / f"peers-{tag}.json"
    results = json.loads(out_json.read_text()) if out_json.is_file() else {}
    rows = []
    for m in a.methods.split(","):
        rows.append(("ours", m))
        if m in PEER_METHODS:
            rows.append(("lightly", m))
    for impl, m in rows:
        key = f"{impl}-{m}"
        if key in results:
            continue
        results[key] = run_row(impl, m, a, Path(a.work) / tag / key)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=2))
    print(format_table(results, a, tag, out_json))


def format_table(results: dict, a: argparse.Namespace, tag: str, out_json: Path) -> str:
    def ips(key):
        r = results.get(key)
        return r["train"]["images_per_s"] if r else None

    import lightly

    ref = ips("lightly-simclr")
    mode = f"equal wall-clock budget {a.budget:g} s" if a.budget else f"{a.epochs} epochs"
    lines = [f"Peers `{tag}`: {a.data}, fraction {a.fraction:g}, backbone {a.backbone}, batch {a.batch_size}, {mode}, "
             f"seed {a.seed}; SGD, each method's default lr per 256, {a.warmup_epochs:g} warm-up epochs + cosine, for ours and lightly's.",
             f"Machine: {machine()}, torch {torch.__version__}; {time.strftime('%Y-%m-%d')}; rows at commit(s) "
             f"{', '.join(sorted({r.get('commit', '?') for r in results.values()}))}. Eval: `leanssl eval RUN --data "
             f"{a.data} --json {a.eval_args}`.",
             f"Command: `python benchmarks/peer_lightly.py compare --data {a.data} --fraction {a.fraction:g} "
             f"--backbone {a.backbone} --batch-size {a.batch_size} "
             + (f"--budget {a.budget:g}s" if a.budget else f"--epochs {a.epochs}")
             + f" --warmup-epochs {a.warmup_epochs:g} --methods {a.methods} --eval-args '{a.eval_args}'`", "",
             "| method | implementation | epochs | train s | images/s | best-epoch images/s | ÷ lightly same method "
             "| ÷ lightly SimCLR | kNN top-1 | linear top-1 | peak RSS MB | peer workers | load avg before→after |",
             "|" + "---|" * 13]
    for key, r in results.items():
        tr, ev = r["train"], r["eval"]["all"]
        same = ips(f"lightly-{r['method']}")
        cells = [r["method"], "leanssl" if r["impl"] == "ours" else f"lightly {lightly.__version__}",
                 f"{tr['epochs_done']}", f"{tr['train_seconds']:.0f}", f"{tr['images_per_s']:.0f}",
                 f"{r['best_epoch_images_per_s']:.0f}",
                 f"{tr['images_per_s'] / same:.2f}×" if same and r["impl"] == "ours" else "–",
                 f"{tr['images_per_s'] / ref:.2f}×" if ref else "–",
                 f"{100 * ev['knn_top1']:.2f}%", f"{100 * ev['linear_top1']:.2f}%", f"{tr['peak_mem_mb']:.0f}",
                 str(tr.get("workers", "–")),
                 "{:.1f}→{:.1f}".format(*r["loadavg"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\n(results: {out_json})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("train", "compare"):
        s = sub.add_parser(name)
        s.add_argument("--data", default="fashion-mnist")
        s.add_argument("--backbone", default=DEFAULT_BACKBONE)
        s.add_argument("--epochs", type=int, default=None, help="default 10; with --budget 10000 (a cap)")
        s.add_argument("--batch-size", type=int, default=256)
        s.add_argument("--fraction", type=float, default=1.0)
        s.add_argument("--budget", type=parse_duration, default=None, help="equal wall-clock: e.g. 90s, 10m")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--device", default="auto")
        s.add_argument("--cache-dir", default=None)
        s.add_argument("--workers", type=int, default=None, help="the peer's DataLoader workers (default: see default_workers)")
        s.add_argument("--warmup-epochs", type=float, default=2.0, help="linear lr warm-up (as `leanssl train`)")
        if name == "train":
            s.add_argument("--method", choices=PEER_METHODS, required=True)
            s.add_argument("--out", required=True)
            s.add_argument("--lr", type=float, default=None, help="default: our method's default_lr x batch/256")
            s.add_argument("--stop-at", type=parse_duration, default=None, metavar="TIME",
                           help="end this invocation once training has run this long (checkpoint.pt; --resume continues)")
            s.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
        else:
            s.add_argument("--methods", default="simclr,byol,essl", help="ours for each; lightly's for simclr and byol")
            s.add_argument("--work", default=str(ROOT / "runs"), help="where the run folders go")
            s.add_argument("--eval-args", default="--no-baselines", help="extra `leanssl eval` flags")
            s.add_argument("--results", default=None, help="JSON path (default benchmarks/results/peers-<tag>.json)")
    a = p.parse_args(argv)
    if a.epochs is None:
        a.epochs = 10 if a.budget is None else 10_000
    if a.command == "train":
        s = train_peer(a)
        print(json.dumps(s))
    else:
        compare(a)


if __name__ == "__main__":
    main()
