"""Where to read a small_cnn's features for kNN: the global pooling of its last feature map, eval only.

    python benchmarks/knn_readout.py RUN [RUN ...] [--data fashion-mnist] [--ks 200,20]

For each finished (or checkpointed) run folder of a small_cnn-family backbone, the last feature map is
pooled five ways (average, as small_cnn is trained; GeM with p = 2, 3, 4; max) and scored by the
evaluation's own weighted kNN (T = 0.1) against every training label, on the full test split. No
training: it says how much of a network's kNN accuracy is lost to the read-out alone, and whether
that loss is the same for every method. Results go to the terminal and, with --json, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from common import commit_label, cpu_name
from leanssl.data.sources import open_dataset
from leanssl.eval.features import to_model_input
from leanssl.eval.knn import knn_top1s
from leanssl.export import load_run_backbone


def gem(p: float):
    return lambda h: h.clamp(min=1e-6).pow(p).mean((2, 3)).pow(1 / p)


POOLS = {"avg": lambda h: h.mean((2, 3)), "gem2": gem(2), "gem3": gem(3), "gem4": gem(4),
         "max": lambda h: h.amax((2, 3))}


@torch.no_grad()
def pooled(backbone, x: np.ndarray, info: dict, batch: int = 1000) -> dict[str, torch.Tensor]:
    """Every pooling of the last feature map of `backbone.features` (small_cnn's layout) for images x."""
    out = {k: [] for k in POOLS}
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(np.array(x[i:i + batch]))
        h = backbone.features(to_model_input(xb, info["mean"], info["std"], info["channels"], info["resolution"]))
        for k, pool in POOLS.items():
            out[k].append(pool(h))
    return {k: torch.cat(v) for k, v in out.items()}


def score_run(run: str, data: str, ks: tuple[int, ...]) -> dict:
    backbone, cfg, info = load_run_backbone(run)
    if not hasattr(backbone, "features"):
        raise SystemExit(f"{run}: backbone {cfg.backbone} is not small_cnn-shaped (no .features)")
    backbone.eval()
    ds = open_dataset(data, resolution=info["resolution"], progress=False)
    ytr, yte = (torch.from_numpy(np.asarray(s.y)).long() for s in (ds.train, ds.test))
    tr, te = pooled(backbone, ds.train.x, info), pooled(backbone, ds.test.x, info)
    n_cls = int(ytr.max()) + 1
    acc = {k: {str(kk): v for kk, v in knn_top1s(tr[k], ytr, te[k], yte, n_cls, ks=ks).items()} for k in POOLS}
    return {"run": run, "method": cfg.method, "backbone": cfg.backbone, "knn": acc}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--ks", default="200,20", help="kNN k values (the first is the protocol's)")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args()
    ks = tuple(int(k) for k in a.ks.split(","))
    rows = [score_run(r, a.data, ks) for r in a.runs]
    print(f"{cpu_name()}, commit {commit_label()}, load {os.getloadavg()[0]:.2f}; kNN T=0.1, k={ks}")
    print("| run | method | " + " | ".join(POOLS) + " |\n|---|---|" + "---|" * len(POOLS))
    for r in rows:
        cells = ["/".join(f"{100 * r['knn'][k][str(kk)]:.2f}" for kk in ks) for k in POOLS]
        print(f"| {r['run']} | {r['method']} | " + " | ".join(cells) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps({"data": a.data, "ks": ks, "commit": commit_label(), "rows": rows},
                                           indent=2) + "\n")


if __name__ == "__main__":
    main()
