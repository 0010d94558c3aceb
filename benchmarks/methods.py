"""Every method on one harness — now the bench's `methods` profile; this script only translates its old flags.

    leanssl bench --data fashion-mnist --profile methods --fractions 0.1 --epochs 20 --out runs/methods
    leanssl bench --data fashion-mnist --profile methods --fractions 0.1 --budget 90s --out runs/methods

The old command lines still work and run that command (other `leanssl bench` flags, e.g. --dry-run, pass
through):

    python benchmarks/methods.py --data fashion-mnist --fraction 0.1 --epochs 20
    python benchmarks/methods.py --data fashion-mnist --fraction 0.1 --budget 90

Each method trains with its own default learning rate in its own process and is scored like every bench
cell (kNN, linear probe and few-shot on the whole labelled splits, accuracy over time); the folder gets
report.md, results.json and results.csv (BENCHMARKS.md's methods table was made by the older runner).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))


def bench_argv(a: argparse.Namespace) -> list[str]:
    mode = f"b{a.budget:g}s" if a.budget else f"e{a.epochs}"
    tag = f"methods-{a.data.split(':')[0]}-{a.backbone}-f{a.fraction:g}-{mode}"
    length = ["--budget", f"{a.budget:g}s"] if a.budget else ["--epochs", str(a.epochs)]
    argv = ["bench", "--data", a.data, "--profile", "methods", "--backbones", a.backbone, "--fractions",
            f"{a.fraction:g}", *length, "--batch-size", str(a.batch_size), "--seed", str(a.seed), "--device", a.device,
            "--out", str(Path(a.work) / tag)]
    return argv + (["--methods", a.methods] if a.methods else []) + (["--cache-dir", a.cache_dir] if a.cache_dir else [])


def main(argv: list[str] | None = None) -> int:
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
    p.add_argument("--methods", default=None, help="comma-separated (default: every pretraining method)")
    p.add_argument("--work", default=str(ROOT / "runs"), help="where the bench folder goes")
    from leanssl.cli import main as leanssl

    a, rest = p.parse_known_args(argv)  # anything else goes to leanssl bench as given (e.g. --dry-run)
    return leanssl(bench_argv(a) + rest)


if __name__ == "__main__":
    sys.exit(main())
