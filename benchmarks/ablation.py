"""The essl ablation on real data: npid, then one component at a time, up to full essl.

    python benchmarks/ablation.py --data fashion-mnist --epochs 10 --fraction 1.0
    python benchmarks/ablation.py --data fashion-mnist --epochs 30 --fraction 0.1

Each row trains with `leanssl train` and evaluates with `leanssl eval --json` in its own process
(so peak memory is per run), at equal epochs. Finished rows are skipped on a rerun; results go to
`benchmarks/results/ablation-<data>-f<fraction>-e<epochs>.json` and a markdown table is printed
with the machine, date and commit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import ROOT, best_epoch_rate, cpu_name, git_commit, train_and_eval
ROWS = [  # (name, extra train flags): each row adds one component to the one before
    ("npid", ["--method", "npid"]),
    ("+ calibration", ["--method", "npid", "--calibrate"]),
    ("+ grad bank update", ["--method", "npid", "--calibrate", "--bank-update", "grad"]),
    ("+ SqrtKL", ["--method", "npid", "--calibrate", "--bank-update", "grad", "--kl-weight", "20"]),
    ("+ CutMix = essl", ["--method", "essl"]),
    ("essl with ema update", ["--method", "essl", "--bank-update", "ema"]),
]


def run_row(name: str, flags: list[str], a: argparse.Namespace, run_dir: Path) -> dict:
    floors = ["--baselines"] if name == ROWS[0][0] else ["--no-baselines"]  # raw pixels and a random backbone, once
    label_sets = [("all", floors)] + ([("subset", ["--fraction", str(a.fraction), *floors])] if a.fraction < 1 else [])
    flags = ["--backbone", a.backbone, "--epochs", str(a.epochs), "--batch-size", str(a.batch_size),
             "--fraction", str(a.fraction), "--seed", str(a.seed), *flags]
    row = train_and_eval(name, flags, run_dir, a.data, a.device, label_sets, a.cache_dir)
    row["flags"] = flags[10:]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--fraction", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--rows", default=None, help="comma-separated row numbers to run (default: all)")
    p.add_argument("--work", default=str(ROOT / "runs"), help="where the benchmark's run folders go")
    a = p.parse_args()

    tag = f"ablation-{a.data.split(':')[0]}-{a.backbone}-f{a.fraction:g}-e{a.epochs}"
    out_json = ROOT / "results" / f"{tag}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    wanted = [int(i) for i in a.rows.split(",")] if a.rows else range(len(ROWS))
    for i in wanted:
        name, flags = ROWS[i]
        if name in results:
            continue
        results[name] = run_row(name, flags, a, Path(a.work) / tag / f"row{i}")
        out_json.write_text(json.dumps(results, indent=2))

    import torch

    lines = [f"Ablation `{tag}`: {a.data}, backbone {a.backbone}, {a.epochs} epochs, batch {a.batch_size}, "
             f"fraction {a.fraction:g}, seed {a.seed}.",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
             f"{time.strftime('%Y-%m-%d')}; rows trained at commit(s) "
             f"{', '.join(sorted({r.get('commit', '?') for r in results.values()}))}, table printed at {git_commit()}.",
             f"Command: `python benchmarks/ablation.py --data {a.data} --backbone {a.backbone} --epochs {a.epochs} "
             f"--batch-size {a.batch_size} --fraction {a.fraction:g}`", ""]
    sub = a.fraction < 1
    head = "| row | kNN top-1 | linear top-1 |" + (" kNN, subset labels | linear, subset labels |" if sub else "")
    lines += [head + " train s | images/s | best-epoch images/s | peak RSS MB | load avg |", "|" + "---|" * (head.count("|") + 4)]
    def acc(ev: dict) -> list[str]:
        keys = ["all", "subset"] if sub else ["all"]
        return [f"{100 * ev[k][m]:.2f}%" for k in keys for m in ("knn_top1", "linear_top1")]

    first = results.get(ROWS[0][0])
    if first:
        for floor in ("raw_pixels", "random_init"):
            ev = {k: v["baselines"][floor] for k, v in first["eval"].items()}
            lines.append(f"| *{floor.replace('_', ' ')}* | " + " | ".join(acc(ev)) + " | – | – | – | – | – |")
    for i, (name, _) in enumerate(ROWS):
        if name not in results:
            continue
        r = results[name]
        tr = r["train"]
        best = r.get("best_epoch_images_per_s") or best_epoch_rate(Path(a.work) / tag / f"row{i}")
        cells = acc(r["eval"]) + [f"{tr['train_seconds']:.0f}", f"{tr['images_per_s']:.0f}", f"{best:.0f}", f"{tr['peak_mem_mb']:.0f}",
                                  "{:.1f}→{:.1f}".format(*r["loadavg"])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
