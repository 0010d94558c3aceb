"""The essl ablation (npid, then one component at a time, up to full essl) — now the bench's `ablation`
profile; this script only translates its old flags.

    leanssl bench --data fashion-mnist --profile ablation --fractions 1 --epochs 10 --out runs/ablation
    leanssl bench --data fashion-mnist --profile ablation --fractions 0.1 --epochs 30 --methods npid,essl

The old command lines still work and run that command (--rows picks rows by number, as before; other
`leanssl bench` flags, e.g. --dry-run, pass through):

    python benchmarks/ablation.py --data fashion-mnist --epochs 10 --fraction 1.0
    python benchmarks/ablation.py --data fashion-mnist --epochs 30 --fraction 0.1 --rows 0,4

Each row is a bench cell with the row's method settings (leanssl/bench/grid.py lists them), trained in
its own process and scored like every cell, with raw pixels and a random backbone as floors; the folder
gets report.md, results.json and results.csv (BENCHMARKS.md's ablation tables were made by the older
runner, which also scored a fraction's labels alone: `leanssl eval RUN --fraction F` does that).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))


def bench_argv(a: argparse.Namespace) -> list[str]:
    from leanssl.bench.grid import PROFILES

    rows = [m if isinstance(m, str) else m.name for m in PROFILES["ablation"].methods]
    tag = f"ablation-{a.data.split(':')[0]}-{a.backbone}-f{a.fraction:g}-e{a.epochs}"
    argv = ["bench", "--data", a.data, "--profile", "ablation", "--backbones", a.backbone, "--fractions",
            f"{a.fraction:g}", "--epochs", str(a.epochs), "--batch-size", str(a.batch_size), "--seed", str(a.seed),
            "--device", a.device, "--out", str(Path(a.work) / tag)]
    if a.rows:
        argv += ["--methods", ",".join(rows[int(i)] for i in a.rows.split(","))]
    return argv + (["--cache-dir", a.cache_dir] if a.cache_dir else [])


def main(argv: list[str] | None = None) -> int:
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
    p.add_argument("--work", default=str(ROOT / "runs"), help="where the bench folder goes")
    from leanssl.cli import main as leanssl

    a, rest = p.parse_known_args(argv)  # anything else goes to leanssl bench as given (e.g. --dry-run)
    return leanssl(bench_argv(a) + rest)


if __name__ == "__main__":
    sys.exit(main())
