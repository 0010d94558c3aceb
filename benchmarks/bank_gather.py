"""The memory bank's row gather and scatter on this machine: advanced indexing against index_select/index_copy_.

    python benchmarks/bank_gather.py            # 60000 x 128 fp32 bank, 10128 rows: essl's defaults on Fashion-MNIST

essl gathers the scored rows W[C] once per step and writes them back once. Each variant is timed
over 50 calls, five times, in turns; the median is printed beside the minimum. Every variant
returns or writes the same values (checked before timing).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from common import commit_label, cpu_name


def per_call_ms(f, n: int = 50) -> float:
    f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e3


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=60_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--cols", type=int, default=10_128)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    w = torch.nn.functional.normalize(torch.randn(a.rows, a.dim, generator=g), dim=1)
    cols = torch.randperm(a.rows, generator=g)[: a.cols]
    new = torch.randn(a.cols, a.dim, generator=g)
    assert torch.equal(w[cols], w.index_select(0, cols))
    variants = {"W[cols]": lambda: w[cols], "W.index_select(0, cols)": lambda: w.index_select(0, cols),
                "W[cols] = v": lambda: w.__setitem__(cols, new), "W.index_copy_(0, cols, v)": lambda: w.index_copy_(0, cols, new)}
    times = {k: [] for k in variants}
    for _ in range(a.repeats):
        for k, f in variants.items():
            times[k].append(per_call_ms(f))
    print(f"{a.rows} x {a.dim} bank, {a.cols} rows; {cpu_name()}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.2f}; commit {commit_label()}")
    out = {}
    for k, v in times.items():
        out[k] = sorted(v)[len(v) // 2]
        print(f"{k:28s} median {out[k]:.3f} ms  (min {min(v):.3f})")
    return out


if __name__ == "__main__":
    main()
