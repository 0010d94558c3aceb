"""essl's recipe for short CPU runs (issue: time to accuracy): one setting changed at a time, seeds >= 2.

    OMP_NUM_THREADS=1 python benchmarks/short_recipe.py --data fashion-mnist --fraction 0.1 --epochs 10 --seeds 0,1
    OMP_NUM_THREADS=1 python benchmarks/short_recipe.py --data digits --epochs 30 --seeds 0,1 --rows 0,3

Every row trains essl for the same number of epochs (accuracy at equal epochs does not depend on
the machine's load, so this sweep may share the machine) and is scored by `leanssl eval --json
--protocol knn` (k=200 on all training labels, the full test split). A row that also changes the
cost of a step (batch size, bank width, projection width) is marked: its wall-clock per epoch is
in the JSON, to be judged on a quiet machine. Finished runs are skipped on a rerun.
Results: benchmarks/results/short-recipe-<tag>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, commit_label, cpu_name

BEFORE = ["--batch-size", "256", "--method-arg", "tau=0.2"]  # the defaults this sweep started from (now 128, 0.3)
ROWS = [  # (name, flags): each changes one setting from BEFORE (a later flag overrides it)
    ("defaults (lr 0.5/256, τ 0.2, λ_KL 20, 2 warm-up epochs, batch 256)", []),
    ("lr ×2 (1.0 per 256)", ["--lr", "1.0"]),
    ("lr ×½ (0.25 per 256)", ["--lr", "0.25"]),
    ("τ 0.1", ["--method-arg", "tau=0.1"]),
    ("τ 0.3", ["--method-arg", "tau=0.3"]),
    ("λ_KL 5", ["--method-arg", "kl_weight=5"]),
    ("warm-up 0.5 epochs", ["--warmup-epochs", "0.5"]),
    ("projection width 128 (cost)", ["--method-arg", "proj_hidden=128"]),
    ("negatives 2048 (cost)", ["--method-arg", "negatives=2048"]),
    ("batch 128 (cost; the default lr scales with it)", ["--batch-size", "128"]),
    ("batch 128 and τ 0.3 (the two best above, together)", ["--batch-size", "128", "--method-arg", "tau=0.3"]),
]


def _cli(*args: str, capture: bool = False) -> str:
    r = subprocess.run([sys.executable, "-m", "leanssl.cli", *args], check=True, text=True, capture_output=capture)
    return r.stdout if capture else ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--rows", default=None, help="comma-separated row numbers (default: all)")
    p.add_argument("--work", default=str(ROOT / "runs"))
    a = p.parse_args()
    tag = f"{a.data.split(':')[0]}-f{a.fraction:g}-e{a.epochs}"
    out_json = ROOT / "results" / f"short-recipe-{tag}.json"
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    wanted = [int(i) for i in a.rows.split(",")] if a.rows else range(len(ROWS))
    for seed in (int(s) for s in a.seeds.split(",")):  # seed-major: a stopped sweep has whole seeds, not half rows
        for i in wanted:
            name, flags = ROWS[i]
            row = results.setdefault(name, {"flags": flags, "seeds": {}})
            if str(seed) in row["seeds"]:
                continue
            run = Path(a.work) / f"short-recipe-{tag}" / f"row{i}-s{seed}"
            resume = ["--resume"] if (run / "checkpoint.pt").exists() else []
            load = os.getloadavg()[0]
            _cli("train", "--data", a.data, "--method", "essl", "--epochs", str(a.epochs), "--fraction",
                 str(a.fraction), "--seed", str(seed), "--out", str(run), "--no-progress", *BEFORE, *flags, *resume)
            train = json.loads((run / "summary.json").read_text())
            ev = json.loads(_cli("eval", str(run), "--data", a.data, "--protocol", "knn", "--no-baselines", "--json",
                                 capture=True).strip().splitlines()[-1])
            row["seeds"][str(seed)] = {"knn": ev["knn_top1"], "train_seconds": train["train_seconds"],
                                       "load": [load, os.getloadavg()[0]], "commit": commit_label()}
            out_json.write_text(json.dumps(results, indent=2))
    print(table(results, a, tag))


def table(results: dict, a, tag: str) -> str:
    lines = [f"`short-recipe-{tag}`: essl, small_cnn, {a.data} fraction {a.fraction:g}, {a.epochs} epochs; kNN k=200 "
             f"(all training labels, full test split). Machine: {cpu_name()}; {time.strftime('%Y-%m-%d')}; trained at "
             f"{', '.join(sorted({s['commit'] for r in results.values() for s in r['seeds'].values()}))}.",
             "", "| row | kNN mean | per seed | Δ vs defaults | train s (mean) |", "|---|---|---|---|---|"]
    base = None
    for name, r in results.items():
        knn = [100 * s["knn"] for _, s in sorted(r["seeds"].items())]
        if not knn:
            continue
        mean = statistics.mean(knn)
        base = mean if base is None else base
        secs = statistics.mean(s["train_seconds"] for s in r["seeds"].values())
        lines.append(f"| {name} | {mean:.2f}% | {' / '.join(f'{k:.2f}' for k in knn)} | {mean - base:+.2f} | {secs:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
