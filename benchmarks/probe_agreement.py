"""The fast linear-probe sweep against the exhaustive one (every C of the grid) on the same features.

For each feature set — raw pixels, the run's architecture randomly initialised, the run's trained
backbone — prints test top-1, the chosen C, and the L-BFGS cost (fits, iterations, function
evaluations = passes over the data) of both sweeps. Counts are machine-independent; wall times are
printed with the load average beside them and mean nothing on a loaded machine.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/probe_agreement.py RUN --data fashion-mnist
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/probe_agreement.py RUN --data digits --labels-per-class 10 --seeds 0,1,2

`--labels-per-class N` probes on N seeded labelled images per class (as `leanssl eval --labels-per-class`),
once per seed of `--seeds`; `--sweeps` may include `auto` (the default: full below 2M feature values).
`--sweep-max-train 0,10000` compares the sweep fitted on all of the 80% split with one on a 10k subset of it;
`--tols 1e-7,1e-4` compares L-BFGS gradient tolerances (torch's default, which the probe uses, and
scikit-learn's, which was measured and not adopted) on the same sweep.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from leanssl.data.sources import open_dataset
from leanssl.data.subsets import per_class_subset
from leanssl.export import load_run_backbone
from leanssl.eval.features import extract_features, pixel_features
from leanssl.eval.linear import GTOL, REFIT_MAX_ITER, SWEEP_MAX_TRAIN, linear_probe
from leanssl.models.backbones import build_backbone


def feature_sets(run_dir, data, cache_dir, seed, wanted):
    backbone, cfg, info = load_run_backbone(run_dir)
    ds = open_dataset(data, info["resolution"], cache_dir, progress=False)
    torch.manual_seed(seed)
    rand = build_backbone(cfg.backbone, info["channels"], info["resolution"])
    args = (info["mean"], info["std"], info["channels"], info["resolution"], torch.device("cpu"))
    if "raw pixels" in wanted:
        yield "raw pixels", ds, pixel_features(ds.train.x, ds.test.x)
    for name, net in (("random init", rand), ("trained", backbone)):
        if name in wanted:
            yield name, ds, (extract_features(net, ds.train.x, *args, progress=False),
                         extract_features(net, ds.test.x, *args, progress=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (validation split, label subset)")
    ap.add_argument("--labels-per-class", type=int, default=None)
    ap.add_argument("--sweeps", default="fast,full")
    ap.add_argument("--sets", default="raw pixels,random init,trained")
    ap.add_argument("--tols", default=None, help="comma-separated L-BFGS gradient tolerances (default: the probe's)")
    ap.add_argument("--refit-max-iter", default=None, help="comma-separated refit iteration caps (default: the probe's)")
    ap.add_argument("--sweep-max-train", default=None,
                    help="comma-separated caps on the sweep's training images, 0 for none (default: the probe's)")
    a = ap.parse_args()
    print(f"threads {torch.get_num_threads()}")
    seeds = [int(v) for v in a.seeds.split(",")]
    for name, ds, (ftr_all, fte) in feature_sets(a.run, a.data, a.cache_dir, seeds[0], a.sets.split(",")):
        y_all = np.asarray(ds.train.y, dtype=np.int64)
        yte = torch.from_numpy(np.asarray(ds.test.y, dtype=np.int64))
        k = int(max(y_all.max(), yte.max())) + 1
        tols = [float(v) for v in a.tols.split(",")] if a.tols else [GTOL]
        caps = [int(v) or None for v in a.sweep_max_train.split(",")] if a.sweep_max_train else [SWEEP_MAX_TRAIN]
        refits = [int(v) for v in a.refit_max_iter.split(",")] if a.refit_max_iter else [REFIT_MAX_ITER]
        for seed, sweep, tol, cap, refit in ((s, w, t, m, r) for s in seeds for w in a.sweeps.split(",") for t in tols
                                             for m in caps for r in refits):
            idx = per_class_subset(y_all, a.labels_per_class, seed) if a.labels_per_class else np.arange(len(y_all))
            ftr, ytr = ftr_all[torch.from_numpy(idx)], torch.from_numpy(y_all[idx])
            t = time.perf_counter()
            p = linear_probe(ftr, ytr, fte, yte, k, seed=seed, sweep=sweep, tol=tol, sweep_max_train=cap,
                             refit_max_iter=refit)
            c = p["cost"]
            print(f"{a.data:14s} {name:12s} D={ftr.shape[1]:4d} n={len(idx)} seed {seed} {p['sweep']:4s} tol {tol:.0e} sweep on {cap or 'all'} refit {refit}: top1 {100 * p['top1']:.2f}%  "
                  f"C={p['C']:.3g}  val {100 * p['val_top1']:.2f}%  fits {c['fits']:2d} iters {c['iters']:5d} "
                  f"evals {c['evals']:5d}  {time.perf_counter() - t:6.1f}s (load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
