"""Images/s of leanssl's BatchAugment against kornia and a per-image torchvision loop, on CPU.

    python benchmarks/aug_speed.py [--threads 2] [--reps 15] [--quick]

Needs the bench extra (kornia, torchvision): pip install -e ".[bench]".

Prints markdown tables (machine, date and commit on top): the full view pipeline
(RandomResizedCrop, ColorJitter p=0.8, RandomGrayscale 0.2, horizontal flip, normalise) by
(1) leanssl's BatchAugment, (2) kornia.augmentation on the same batch, (3) torchvision.transforms.v2
per image in a Python loop (what a single-process peer data loader does); then the design
alternatives measured for BatchAugment: crop-and-resize op, jitter order, hue implementation.

Each number is the best of --reps timed runs after warm-up, the variants of one row timed
round-robin (best-of, not mean, because the machine may be shared: the load average is printed
with the tables).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

import torch

from leanssl.data.augment import (
    AugConfig,
    BatchAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    resized_crop,
    supersample_factor,
)

# (name, batch, channels, input side, output side)
CASES = [
    ("28px 1ch", 256, 1, 28, 28),
    ("32px 3ch", 256, 3, 32, 32),
    ("96px 3ch", 64, 3, 96, 96),
]
MULTI_CROP = ("96px→12 local", 256, 3, 96, 12)


def timeit(fns: dict[str, callable], reps: int, warmup: int = 2, min_sample_s: float = 0.02) -> dict[str, float]:
    """Best wall time per call (seconds) over ``reps`` samples of each function.

    The functions are timed round-robin, so a burst of load from another process on a shared
    machine hits all of them alike rather than whichever happened to be running. A sample
    repeats a fast function until it lasts ~``min_sample_s``, so timer and scheduler noise
    does not dominate millisecond calls.
    """
    inner = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
        inner[name] = max(1, int(min_sample_s / max(dt, 1e-6)))
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / inner[name])
    return best


def machine_info(threads: int) -> list[str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
        commit += " (+ uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    import kornia
    import torchvision

    return [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- commit: {commit}",
        f"- CPU: {cpu} ({os.cpu_count()} logical cores visible), torch threads: {threads}",
        f"- python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"kornia {kornia.__version__}",
        f"- load average at start: {_loadavg()}",
    ]


def _loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def stats(c: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return ((0.5,) * c, (0.25,) * c)


# -- the three pipelines -----------------------------------------------------------------


def ours(x: torch.Tensor, size: int, blur_p: float | None = 0.0):
    mean, std = stats(x.shape[1])
    aug = BatchAugment(AugConfig(blur_p=blur_p), size, mean, std)
    g = torch.Generator().manual_seed(0)
    return lambda: aug(x, g)


def kornia_pipeline(x: torch.Tensor, size: int):
    import kornia.augmentation as K

    c = x.shape[1]
    mean, std = stats(c)
    ops = [K.RandomResizedCrop((size, size), scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))]
    if c == 3:
        ops += [K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8), K.RandomGrayscale(p=0.2)]
    else:  # kornia's saturation/hue need 3 channels
        ops += [K.ColorJitter(0.4, 0.4, 0.0, 0.0, p=0.8)]
    ops += [K.RandomHorizontalFlip(), K.Normalize(torch.tensor(mean), torch.tensor(std))]
    pipe = torch.nn.Sequential(*ops)
    return lambda: pipe(x.float() / 255)


def torchvision_loop(x: torch.Tensor, size: int):
    from torchvision.transforms import v2

    c = x.shape[1]
    mean, std = stats(c)
    jitter = v2.ColorJitter(0.4, 0.4, 0.4, 0.1) if c == 3 else v2.ColorJitter(0.4, 0.4)
    ops = [v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True), v2.RandomApply([jitter], p=0.8)]
    if c == 3:
        ops.append(v2.RandomGrayscale(0.2))
    ops += [v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    pipe = v2.Compose(ops)
    return lambda: torch.stack([pipe(img) for img in x])


# -- design alternatives -----------------------------------------------------------------


def crop_alternatives(x: torch.Tensor, size: int) -> dict[str, callable]:
    from torchvision.ops import roi_align

    b, _, h, w = x.shape
    aug = BatchAugment(AugConfig(), size, *stats(x.shape[1]))
    scale = (0.05, 0.14) if size < h else None
    p = aug.sample_params(x, torch.Generator().manual_seed(0), scale=scale)
    xf = x.float()
    x0, y0, bw, bh = p.boxes.unbind(1)
    rois = torch.stack([torch.arange(b, dtype=xf.dtype), x0, y0, x0 + bw, y0 + bh], dim=1)
    k = supersample_factor(h, w, size, scale or aug.cfg.scale, aug.cfg.ratio)

    def roi(sr):
        def run():
            out = roi_align(xf, rois, (size, size), spatial_scale=1.0, sampling_ratio=sr, aligned=True)
            return torch.where(p.flip.view(-1, 1, 1, 1), out.flip(-1), out)

        return run

    alts = {
        "grid_sample (bilinear)": lambda: resized_crop(xf, p.boxes, size, p.flip),
        "roi_align sampling_ratio=1": roi(1),
        "roi_align sampling_ratio=-1 (adaptive)": roi(-1),
    }
    if size < h:
        alts[f"grid_sample supersample k={k}"] = lambda: resized_crop(xf, p.boxes, size, p.flip, supersample=k)
        alts[f"roi_align sampling_ratio={k}"] = roi(k)
    return alts


def jitter_alternatives(x: torch.Tensor) -> dict[str, callable]:
    aug = BatchAugment(AugConfig(), x.shape[-1], *stats(x.shape[1]))
    p = aug.sample_params(x, torch.Generator().manual_seed(0))
    xf = x.float() / 255
    f = p.factors

    def fixed():
        y = adjust_contrast(adjust_brightness(xf, f[:, 0]), f[:, 1])
        return adjust_hue(adjust_saturation(y, f[:, 2]), f[:, 3])

    return {
        "per-sample random order (ours)": lambda: color_jitter(xf, f, p.order),
        "fixed order b,c,s,h": fixed,
    }


def hue_alternatives(x: torch.Tensor) -> dict[str, callable]:
    import kornia.enhance as KE
    import torchvision.transforms.v2.functional as TF

    xf = x.float() / 255
    shift = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(0)) * 0.2 - 0.1
    shifts = shift.tolist()
    return {
        "ours (hexcone, per-sample shift)": lambda: adjust_hue(xf, shift),
        "kornia.enhance.adjust_hue (per-sample)": lambda: KE.adjust_hue(xf, shift * 2 * torch.pi),
        "torchvision adjust_hue, per-image loop": lambda: [TF.adjust_hue(im, s) for im, s in zip(xf, shifts)],
    }


# -- report ------------------------------------------------------------------------------


def batch(b: int, c: int, side: int) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="3 reps, for a smoke test")
    args = ap.parse_args(argv)
    reps = 3 if args.quick else args.reps
    torch.set_num_threads(args.threads)

    print("# Augmentation throughput (CPU)\n")
    print("\n".join(machine_info(args.threads)))
    print(f"- best of {reps} samples of >= 20 ms each, round-robin over the variants compared, after 2 warm-up calls\n")

    print("## Full view pipeline\n")
    print("Crop (scale 0.2-1) + ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 + Grayscale p=0.2 + flip + normalise;")
    print("uint8 batch in, float32 normalised batch out. 1-channel: brightness/contrast only.\n")
    print("Images/s, higher is better.\n")
    print("| input | leanssl BatchAugment | + blur p=0.5 | kornia.augmentation | torchvision v2 per-image loop |")
    print("|---|---:|---:|---:|---:|")
    for name, b, c, side, size in CASES:
        x = batch(b, c, side)
        fns = {
            "ours": ours(x, size),
            "ours+blur": ours(x, size, blur_p=0.5),
            "kornia": kornia_pipeline(x, size),
            "torchvision": torchvision_loop(x, size),
        }
        best = timeit(fns, reps)
        print(f"| {name}, B={b} | " + " | ".join(f"{b / t:,.0f}" for t in best.values()) + " |")

    print("\n## Crop-and-resize op (ms per batch, lower is better)\n")
    cases = CASES + [MULTI_CROP]
    alts = {name: crop_alternatives(batch(b, c, side), size) for name, b, c, side, size in cases}
    best = {name: timeit(a, reps) for name, a in alts.items()}
    ops = list(dict.fromkeys(op for a in alts.values() for op in a))
    print("| op | " + " | ".join(f"{n}, B={b}" for n, b, *_ in cases) + " |")
    print("|---|" + "---:|" * len(cases))
    for op in ops:
        cells = [f"{t[op] * 1e3:.2f}" if op in t else "" for t in best.values()]
        print(f"| {op} | " + " | ".join(cells) + " |")

    print("\n## Colour jitter order and hue (ms per batch, lower is better)\n")
    rgb = [case for case in CASES if case[2] == 3]
    print("| variant | " + " | ".join(f"{n}, B={b}" for n, b, *_ in rgb) + " |")
    print("|---|" + "---:|" * len(rgb))
    for make in (jitter_alternatives, hue_alternatives):
        best = [timeit(make(batch(b, c, side)), reps) for _, b, c, side, _ in rgb]
        for key in best[0]:
            print(f"| {key} | " + " | ".join(f"{t[key] * 1e3:.2f}" for t in best) + " |")

    print(f"\n- load average at end: {_loadavg()}")


if __name__ == "__main__":
    sys.exit(main())
