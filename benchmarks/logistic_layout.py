"""Milliseconds per L-BFGS function evaluation of the linear probe's objective, in three layouts (issue 19).

    python benchmarks/logistic_layout.py                 # n=60000, D=256, K=10 (Fashion-MNIST, small_cnn features)
    python benchmarks/logistic_layout.py --n 6000 --d 784

One evaluation = the objective `Σ CE / n + wd·‖W‖²` and its gradient by autograd, as the probe's closure
computes it. Layouts: "batched (E,K,n) CE" — a (1, n, D) batched product and cross-entropy over
classes in dim 1, the probe's code before this measurement; "batched, classes last" — the same product,
cross-entropy over (n, K); "2-D" — one plain (n, D)·(D, K) product, what `fit_logistic_batched` does
now for a single problem. Interleaved rounds; the load average is printed beside the result.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F


def layouts(x, y, k, w, b):
    n = x.shape[1]

    def old():
        logits = torch.matmul(x, w.transpose(1, 2)) + b.unsqueeze(1)
        return F.cross_entropy(logits.transpose(1, 2), y, reduction="sum") / n

    def classes_last():
        logits = torch.matmul(x, w.transpose(1, 2)) + b.unsqueeze(1)
        return F.cross_entropy(logits.reshape(-1, k), y.reshape(-1), reduction="sum") / n

    def flat():
        return F.cross_entropy(x[0] @ w[0].t() + b[0], y[0], reduction="sum") / n

    return {"batched (E,K,n) CE": old, "batched, classes last": classes_last, "2-D": flat}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--evals", type=int, default=10)
    a = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, a.n, a.d, generator=g), torch.randint(0, a.k, (1, a.n), generator=g)
    w = torch.zeros(1, a.k, a.d, requires_grad=True)
    b = torch.zeros(1, a.k, requires_grad=True)
    fns = layouts(x, y, a.k, w, b)
    ms = {name: [] for name in fns}
    for r in range(a.rounds):
        for name, f in (fns.items() if r % 2 == 0 else reversed(fns.items())):
            (f() + 1e-3 * w.pow(2).sum()).backward()  # warm-up
            t = time.perf_counter()
            for _ in range(a.evals):
                w.grad = b.grad = None
                (f() + 1e-3 * w.pow(2).sum()).backward()
            ms[name].append((time.perf_counter() - t) / a.evals * 1000)
    print(f"n={a.n} D={a.d} K={a.k}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    out = {name: statistics.median(v) for name, v in ms.items()}
    for name, v in out.items():
        print(f"  {name:24s} {v:8.1f} ms per evaluation (median of {a.rounds} rounds)")
    return out


if __name__ == "__main__":
    main()
