"""Frozen-feature extraction, the variants side by side: memory layout, batch size, conv-BN folding.

`leanssl eval` extracts features once per feature set (train and test splits): on Fashion-MNIST
70,000 forwards of the backbone. This times `extract_features` over the training split in a few
forms, the arms interleaved round by round, with the load average beside each figure:

    PYTHONPATH=$PWD python benchmarks/feature_speed.py --data fashion-mnist --rounds 2

Arms: `today` (channels_last, batch 512), `contiguous`, `batch 256` / `batch 1024`, and `folded`
(BatchNorm folded into the preceding convolution with torch.fx's eval-mode fusion, then as today).
Each arm's features are compared with today's (max abs difference) so a faster arm is not a wrong one.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.fx.experimental.optimization import fuse

from leanssl.data.sources import open_dataset
from leanssl.eval import features as feat
from leanssl.models.backbones import build_backbone


def arms(net):
    folded = fuse(net.eval())  # conv + BN -> one conv (eval mode only)

    def run(model, batch=512, layout=torch.channels_last):
        def go(x, info):
            model.to(memory_format=layout)
            saved = feat.to_model_input

            def to_input(*a):
                return saved(*a).contiguous(memory_format=layout)
            feat.to_model_input = to_input
            try:
                return feat.extract_features(model, x, *info, batch_size=batch, progress=False)
            finally:
                feat.to_model_input = saved
        return go
    return {"today": run(net), "contiguous": run(net, layout=torch.contiguous_format), "batch 256": run(net, 256),
            "batch 1024": run(net, 1024), "folded": run(folded)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--backbone", default="small_cnn")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    ds = open_dataset(a.data, None, None, progress=False)
    torch.manual_seed(0)
    net = build_backbone(a.backbone, ds.channels, ds.resolution)
    info = ((0.3,) * ds.channels, (0.3,) * ds.channels, ds.channels, ds.resolution, torch.device("cpu"))
    x = ds.train.x
    print(f"{a.data}: {len(x)} images at {ds.resolution} px, {a.backbone}, {torch.get_num_threads()} threads")
    fns, ref, best = arms(net), None, {}
    for r in range(a.rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            out = fn(x, info)
            s = time.perf_counter() - t
            ref = out if ref is None else ref
            best[name] = min(best.get(name, s), s)
            print(f"round {r}  {name:11s} {s:6.1f} s  {len(x) / s:7.0f} images/s  max|Δ| vs today "
                  f"{(out - ref).abs().max().item():.2e}  (load {os.getloadavg()[0]:.2f})", flush=True)
    print("best of rounds: " + ", ".join(f"{k} {v:.1f} s" for k, v in best.items()))


if __name__ == "__main__":
    main()
