"""The demo's recipe (essl on scikit-learn digits, 60 epochs, batch 128) with small_cnn and lean_cnn, in turns.

    python benchmarks/demo_backbones.py [--out runs/demo-backbones] [--seeds 0,1] [--backbones small_cnn,lean_cnn]

Prints one JSON line per run: kNN and linear top-1 on the 450 test images, images/s, load. It is
the check behind the demo keeping small_cnn while `leanssl train` defaults to lean_cnn.
"""

from __future__ import annotations

import argparse
import json
import os

from leanssl.eval.evaluate import evaluate
from leanssl.train import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo-backbones")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--backbones", default="small_cnn,lean_cnn", help="comma-separated, trained in turns per seed")
    a = p.parse_args()
    for seed in (int(s) for s in a.seeds.split(",")):
        for backbone in a.backbones.split(","):
            out = f"{a.out}/{backbone}-s{seed}"
            cfg = TrainConfig(data="digits", method="essl", backbone=backbone, epochs=60, batch_size=128, out=out,
                              seed=seed, device="cpu", progress=False)
            summary = train(cfg)
            r = evaluate(out, "digits", protocols=["knn", "linear"], progress=False, baselines=False, report=False,
                         device="cpu")
            print(json.dumps({"backbone": backbone, "seed": seed, "knn": r["knn_top1"], "linear": r["linear_top1"],
                              "images_per_s": summary["images_per_s"], "load": os.getloadavg()[0]}), flush=True)


if __name__ == "__main__":
    main()
