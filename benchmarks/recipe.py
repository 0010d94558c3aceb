"""essl against its authors' recipe: today's defaults, then one authors' choice at a time (issue: recipe fidelity).

    python benchmarks/recipe.py --data fashion-mnist --fraction 1 --epochs 3
    python benchmarks/recipe.py --data fashion-mnist --fraction 0.1 --epochs 20

Every row trains essl for the same number of epochs (a budget that does not depend on the machine's
load) and is scored by the same `leanssl eval --json` (kNN and linear probe on all training labels,
floors once). `--phase train` trains the rows only, `--phase eval` scores them, the default does
both; finished work is skipped on a rerun. Results: benchmarks/results/recipe-<tag>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, commit_label, cpu_name
from leanssl.runfolder import RunFolder

BEFORE = ["--method-arg", "cutmix_half=False", "--method-arg", "calibrate_views='plain'",
          "--weight-decay", "5e-4", "--warmup-epochs", "2", "--lr-schedule", "step", "--dim", "128"]
ROWS = [  # (name, flags): each changes one thing from the pre-fix defaults (BEFORE); the last takes all of them
    ("before (plain-Beta CutMix, wd 5e-4 w/o bias+BN, 2 warm-up, per-step cosine, plain calibration, D=128)", []),
    ("+ CutMix λ = max(λ, 1-λ)", ["--method-arg", "cutmix_half=True"]),
    ("+ authors' optimiser (wd 1e-4 on all, no warm-up, per-epoch cosine)",
     ["--weight-decay", "1e-4", "--decay-norm-bias", "--warmup-epochs", "0", "--lr-schedule", "epoch"]),
    ("+ calibration from augmented, shuffled views", ["--method-arg", "calibrate_views='augmented'"]),
    ("+ bank width D = 2048", ["--dim", "2048"]),
    ("all of the authors' choices", ["--method-arg", "cutmix_half=True", "--weight-decay", "1e-4", "--decay-norm-bias",
                                     "--warmup-epochs", "0", "--lr-schedule", "epoch",
                                     "--method-arg", "calibrate_views='augmented'", "--dim", "2048"]),
]


def _cli(*args: str, capture: bool = False) -> str:
    r = subprocess.run([sys.executable, "-m", "leanssl.cli", *args], check=True, text=True,
                       capture_output=capture)
    return r.stdout if capture else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--fraction", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", default=None, help="comma-separated row numbers (default: all)")
    p.add_argument("--phase", choices=("train", "eval", "both"), default="both")
    p.add_argument("--work", default=str(ROOT / "runs"))
    a = p.parse_args()
    tag = f"recipe-{a.data.split(':')[0]}-f{a.fraction:g}-e{a.epochs}-s{a.seed}"
    out_json = ROOT / "results" / f"{tag}.json"
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    wanted = [int(i) for i in a.rows.split(",")] if a.rows else range(len(ROWS))
    for i in wanted:
        name, flags = ROWS[i]
        run = Path(a.work) / tag / f"row{i}"
        row = results.setdefault(name, {"flags": flags})
        if a.phase in ("train", "both") and "train" not in row:
            resume = ["--resume"] if RunFolder(run).has_checkpoint() else []
            load = os.getloadavg()[0]
            _cli("train", "--data", a.data, "--method", "essl", "--epochs", str(a.epochs), "--fraction", str(a.fraction),
                 "--seed", str(a.seed), "--out", str(run), "--no-progress", *BEFORE, *flags, *resume)
            row.update(train=RunFolder(run).summary(), load=[load, os.getloadavg()[0]],
                       commit=commit_label())
        if a.phase in ("eval", "both") and "eval" not in row and "train" in row:
            floors = "--baselines" if i == 0 else "--no-baselines"
            row["eval"] = json.loads(_cli("eval", str(run), "--data", a.data, "--json", floors,
                                          capture=True).strip().splitlines()[-1])
        out_json.write_text(json.dumps(results, indent=2))
    print(table(results, a, tag))


def table(results: dict, a, tag: str) -> str:
    import torch
    lines = [f"`{tag}`: essl, small_cnn, {a.data} fraction {a.fraction:g}, {a.epochs} epochs, batch 256, seed {a.seed}; "
             f"scored by `leanssl eval --json` (kNN k=200, linear probe; all training labels).",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads; {time.strftime('%Y-%m-%d')}; "
             f"trained at {', '.join(sorted({r.get('commit', '?') for r in results.values()}))}.",
             f"Command: `python benchmarks/recipe.py --data {a.data} --fraction {a.fraction:g} --epochs {a.epochs} "
             f"--seed {a.seed}`", "", "| row | kNN | linear | train s | load avg |", "|---|---|---|---|---|"]
    first = next(iter(results.values()), {}).get("eval", {})
    for floor in ("raw_pixels", "random_init"):
        if floor in first.get("baselines", {}):
            f = first["baselines"][floor]
            lines.append(f"| *{floor.replace('_', ' ')}* | {100 * f['knn_top1']:.2f}% | {100 * f['linear_top1']:.2f}% | – | – |")
    for name, r in results.items():
        if "eval" in r:
            lines.append(f"| {name} | {100 * r['eval']['knn_top1']:.2f}% | {100 * r['eval']['linear_top1']:.2f}% | "
                         f"{r['train']['train_seconds']:.0f} | {r['load'][0]:.1f}→{r['load'][1]:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
