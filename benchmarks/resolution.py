"""Small-resolution pretraining at equal epochs: accuracy only (load-independent), evaluated at full size.

    python benchmarks/resolution.py --data fashion-mnist --fraction 0.1 --epochs 10 --seeds 0,1

Each row trains essl with `leanssl train` (its own process) at the data's resolution, at a smaller
`--resolution` (images decoded small), or with `--progressive` (views small for the first part, full size
after), then `leanssl eval --protocol knn --resolution native` scores it on the full test split at the
data's own size (and the small-resolution rows also at their training size). The per-image training
cost relative to full size is about (r/R)^2 for the convolutions; time it with time_to_accuracy.py.
Results: benchmarks/results/resolution-<tag>.json (finished rows are skipped on a rerun).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import ROOT, commit_label, cpu_name, train_and_eval

ROWS = {  # name -> extra `leanssl train` flags
    "full size": [],
    "--resolution 20": ["--resolution", "20"],
    "--resolution 16": ["--resolution", "16"],
    "--progressive 20": ["--progressive", "20"],
    "--progressive 16": ["--progressive", "16"],
    "--progressive 20 (fraction 1)": ["--progressive", "20", "--progressive-fraction", "1"],
}
KNN = ["--protocol", "knn", "--no-baselines"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", default="0")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names (default all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--work", default=str(ROOT / "runs"))
    a = p.parse_args()
    tag = f"{a.data.split(':')[0]}-f{a.fraction:g}-e{a.epochs}"
    out = ROOT / "results" / f"resolution-{tag}.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    for seed in a.seeds.split(","):
        for name in a.rows.split(","):
            key = f"{name} seed {seed}"
            if key in results:
                continue
            flags = ["--epochs", str(a.epochs), "--fraction", str(a.fraction), "--seed", seed, *ROWS[name]]
            sets = [("native", [*KNN, "--resolution", "native"])] + ([("run", KNN)] if "--resolution" in name else [])
            slug = name.replace("-", "").replace(" ", "_").replace("(", "").replace(")", "")
            results[key] = train_and_eval(key, flags, Path(a.work) / f"resolution-{tag}" / f"{slug}-s{seed}", a.data,
                                          a.device, sets, a.cache_dir) | {"row": name, "seed": seed,
                                                                            "commit": commit_label()}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=2))
    print(f"{a.data}, fraction {a.fraction:g}, {a.epochs} epochs, essl defaults; {cpu_name()}; "
          f"{time.strftime('%Y-%m-%d')}; kNN k=200 on all labelled training images, full test split.\n")
    print("| row | seed | kNN at full size | kNN at training size | load avg |\n|---|---|---|---|---|")
    for r in results.values():
        run = r["eval"].get("run")
        small = "–" if run is None else f"{100 * run['knn_top1']:.2f}%"
        print(f"| {r['row']} | {r['seed']} | {100 * r['eval']['native']['knn_top1']:.2f}% | {small} | "
              f"{r['loadavg'][0]:.1f}→{r['loadavg'][1]:.1f} |")


if __name__ == "__main__":
    main()
