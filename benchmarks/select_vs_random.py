"""Which K images to label: USL selection (`leanssl select`) against K random images.

    python benchmarks/select_vs_random.py RUN_DIR --data digits
    python benchmarks/select_vs_random.py runs/fm --data fashion-mnist --budgets 10,20,50,100 --seeds 5

The run's backbone embeds the data once. For each budget K and seed, K images of the labelled
training split are chosen without looking at labels — by `leanssl.select` (k-means seed = seed)
and uniformly at random (numpy seed = seed) — and a linear probe trained on just those K labelled
images is scored on the test split. The probe is leanssl's (`eval.linear.fit_logistic`,
L-BFGS multinomial logistic regression) with a FIXED weight decay: K images leave no
validation split to choose it, and both arms get the same value. Features are standardised with
the mean/std of the whole (unlabelled) training pool, which both arms may use without labels.
Prints a markdown table (mean ± std over seeds) with the machine, date and commit.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ablation import cpu_name, git_commit  # (this folder is on sys.path when run as a script)

import leanssl
from leanssl.eval.linear import fit_logistic
from leanssl.export import read_metadata
from leanssl.selection import knn_density, random_selection

WEIGHT_DECAY = 1e-3


def probe_accuracy(xtr, ytr, xte, yte, num_classes: int, weight_decay: float) -> float:
    with torch.enable_grad():
        lin = fit_logistic(xtr, ytr, num_classes, weight_decay)
    with torch.no_grad():
        return (lin(xte).argmax(1) == yte).float().mean().item()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--data", required=True, help="labelled data SPEC with a test split")
    p.add_argument("--budgets", default="10,20,50,100")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    p.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None, help="also write every per-seed number here")
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    emb = leanssl.embed(a.run_dir, a.data, "all", a.device, cache_dir=a.cache_dir, progress=False)
    pool, test = np.flatnonzero(emb.split == "train"), np.flatnonzero(emb.split == "test")
    if not len(pool) or not len(test):
        sys.exit(f"{a.data} needs a labelled train split and a test split")
    f = torch.from_numpy(emb.features)
    mu, sd = f[pool].mean(0), f[pool].std(0) + 1e-6
    xpool, xte = (f[pool] - mu) / sd, (f[test] - mu) / sd
    ypool, yte = torch.from_numpy(emb.label[pool]), torch.from_numpy(emb.label[test])
    num_classes = int(max(ypool.max(), yte.max())) + 1
    density = knn_density(F.normalize(f[pool], dim=1))  # shared by every budget and seed
    embed_s = time.perf_counter() - t0

    results = {}
    for k in [int(b) for b in a.budgets.split(",")]:
        for arm in ("random", "usl"):
            accs, covered = [], []
            for seed in range(a.seeds):
                picks = (random_selection(len(pool), k, seed) if arm == "random"
                         else leanssl.select(emb.features[pool], k, seed=seed, density=density))
                picks = torch.from_numpy(picks)
                accs.append(probe_accuracy(xpool[picks], ypool[picks], xte, yte, num_classes, a.weight_decay))
                covered.append(len(torch.unique(ypool[picks])))
            results[(k, arm)] = {"top1": accs, "classes_covered": covered}
        print(f"K={k}: random {100 * np.mean(results[(k, 'random')]['top1']):.1f}%  "
              f"usl {100 * np.mean(results[(k, 'usl')]['top1']):.1f}%", file=sys.stderr, flush=True)

    meta = read_metadata(a.run_dir)
    ms = lambda v, scale=100: f"{scale * np.mean(v):.1f} ± {scale * np.std(v):.1f}"  # noqa: E731
    lines = [f"Linear probe trained on K labelled images of `{a.data}` ({len(pool)} in the pool, {len(test)} test), "
             f"{meta['method']} {meta['architecture']} backbone ({meta['epoch']} epochs on `{meta['data']}`); "
             f"top-1 % and classes covered (of {num_classes}), mean ± std over seeds 0..{a.seeds - 1}; "
             f"fixed weight decay {a.weight_decay:g}.",
             "",
             "| K | random: top-1 % | USL select: top-1 % | gain | random: classes | USL: classes |",
             "|---|---|---|---|---|---|"]
    for k in sorted({k for k, _ in results}):
        r, u = results[(k, "random")], results[(k, "usl")]
        gain = 100 * (np.mean(u["top1"]) - np.mean(r["top1"]))
        lines.append(f"| {k} | {ms(r['top1'])} | {ms(u['top1'])} | {gain:+.1f} | "
                     f"{ms(r['classes_covered'], 1)} | {ms(u['classes_covered'], 1)} |")
    lines += ["", f"Machine: {cpu_name()} ({platform.machine()}), {torch.get_num_threads()} threads, torch {torch.__version__}; "
              f"date {time.strftime('%Y-%m-%d')}; commit {git_commit()}; embedding + density {embed_s:.0f} s, "
              f"total {time.perf_counter() - t0:.0f} s.",
              f"Reproduce: `python benchmarks/select_vs_random.py {a.run_dir} --data {a.data} --budgets {a.budgets} "
              f"--seeds {a.seeds} --weight-decay {a.weight_decay:g}`."]
    print("\n".join(lines))
    if a.json:
        Path(a.json).write_text(json.dumps({f"{k}/{arm}": v for (k, arm), v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
