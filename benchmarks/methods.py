"""Every method on one harness: same data, backbone, loop and evaluation, at equal epochs or equal wall-clock.

    python benchmarks/methods.py --data fashion-mnist --fraction 0.1 --epochs 20
    python benchmarks/methods.py --data fashion-mnist --fraction 0.1 --budget 90

Each method trains with its own default learning rate (`default_lr` in its file) in its own process,
then `leanssl eval --json` gives kNN and linear accuracy on the full test split. Finished rows are
skipped on a rerun (a half-trained row resumes); results go to benchmarks/results/methods-<tag>.json
and a markdown table is printed with the machine, date and commit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import ROOT, cpu_name, train_and_eval

METHODS = ["essl", "npid", "simclr", "mocov2", "byol", "simsiam", "swav", "barlow", "dino", "twist"]
# What the original papers needed, said beside the row: a short CPU budget is far from it.
RECIPE_EPOCHS = {
    "essl": "200 (paper, CIFAR)", "npid": "200 (paper, ImageNet)", "simclr": "500-1000 (CIFAR)",
    "mocov2": "800 (ImageNet), 200 (CIFAR demo)", "byol": "1000 (CIFAR, solo-learn)", "simsiam": "800 (CIFAR)",
    "swav": "400-800 (ImageNet)", "barlow": "1000 (ImageNet)", "dino": "800 (ImageNet); teacher temperature warms up over 30",
    "twist": "800 (ImageNet)",
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--epochs", type=int, default=20, help="equal-epochs mode (ignored with --budget)")
    p.add_argument("--budget", type=float, default=None, help="equal wall-clock mode: seconds of training per method")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--work", default=str(ROOT / "runs"), help="where the benchmark's run folders go")
    a = p.parse_args()

    mode = f"b{a.budget:g}s" if a.budget else f"e{a.epochs}"
    tag = f"methods-{a.data.split(':')[0]}-{a.backbone}-f{a.fraction:g}-{mode}"
    out_json = ROOT / "results" / f"{tag}.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out_json.read_text()) if out_json.exists() else {}
    methods = a.methods.split(",")
    for i, m in enumerate(methods):
        if m in results:
            continue
        length = ["--budget", f"{a.budget}s"] if a.budget else ["--epochs", str(a.epochs)]
        flags = ["--method", m, "--backbone", a.backbone, *length, "--batch-size", str(a.batch_size),
                 "--fraction", str(a.fraction), "--seed", str(a.seed)]
        results[m] = train_and_eval(m, flags, Path(a.work) / tag / m, a.data, a.device, [("all", ["--no-baselines"])],
                                    a.cache_dir)
        out_json.write_text(json.dumps(results, indent=2))
    print(table(results, methods, a, tag, floors_of(a)))


def floors_of(a) -> tuple[str, dict] | None:
    """Raw pixels and a random backbone, from an ablation result on the same data and backbone.

    The floors do not depend on the pretraining run (all labels, same architecture and seed), and
    their linear probe on 784 raw pixels is the slowest evaluation there is: computed once, reused.
    """
    for path in sorted((ROOT / "results").glob(f"ablation-{a.data.split(':')[0]}-{a.backbone}-*.json")):
        first = next(iter(json.loads(path.read_text()).values()), None)
        if first and "baselines" in first["eval"]["all"] and first["train"].get("seed", a.seed) == a.seed:
            return path.name, first["eval"]["all"]["baselines"]
    return None


def table(results: dict, methods: list[str], a, tag: str, floors: tuple[str, dict] | None) -> str:
    import torch

    length = f"an equal wall-clock budget of {a.budget:g} s of training each" if a.budget else f"{a.epochs} epochs each"
    lines = [f"`{tag}`: {a.data}, fraction {a.fraction:g}, backbone {a.backbone}, batch {a.batch_size}, {length}, "
             f"seed {a.seed}; each method's default learning rate.",
             f"Machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
             f"{time.strftime('%Y-%m-%d')}; rows trained at commit(s) "
             f"{', '.join(sorted({r.get('commit', '?') for r in results.values()}))}.",
             f"Command: `python benchmarks/methods.py --data {a.data} --fraction {a.fraction:g} "
             + (f"--budget {a.budget:g}`" if a.budget else f"--epochs {a.epochs}`"), "",
             "| method | kNN top-1 | linear top-1 | epochs | train s | images/s | best-epoch images/s | peak RSS MB "
             "| load avg | recipe's epochs |", "|" + "---|" * 10]
    for name, ev in (floors[1] if floors else {}).items():
        lines.append(f"| *{name.replace('_', ' ')}* | {100 * ev['knn_top1']:.2f}% | {100 * ev['linear_top1']:.2f}% "
                     f"| – | – | – | – | – | – | floor, from `{floors[0]}` |")
    for m in methods:
        if m not in results:
            continue
        r, tr = results[m], results[m]["train"]
        ev = r["eval"]["all"]
        epochs = tr["images_seen"] / tr["train_images"] if tr.get("images_seen") else tr["epochs_done"]
        lines.append(f"| {m} | {100 * ev['knn_top1']:.2f}% | {100 * ev['linear_top1']:.2f}% | {epochs:.1f} "
                     f"| {tr['train_seconds']:.0f} | {tr['images_per_s']:.0f} | {r['best_epoch_images_per_s']:.0f} "
                     f"| {tr['peak_mem_mb']:.0f} | {r['loadavg'][0]:.1f}→{r['loadavg'][1]:.1f} | {RECIPE_EPOCHS.get(m, '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
