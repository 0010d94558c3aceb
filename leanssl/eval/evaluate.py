"""Evaluate a run's backbone (and its floors: a random backbone, raw pixels) on a labelled source."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..data.sources import open_dataset, per_class_subset, stratified_subset
from ..errors import LeansslError
from ..models.backbones import build_backbone
from ..train import load_checkpoint, load_run_config, resolve_device
from .features import extract_features, pixel_features
from .knn import KNN_K, KNN_T, knn_top1
from .linear import linear_probe

PROTOCOLS = ("knn", "linear")


def load_backbone(run_dir: Path):
    """The run's trained backbone (final export, else the last checkpoint) and its data info."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    info = json.loads((run_dir / "data.json").read_text())
    backbone = build_backbone(cfg.backbone, info["channels"], info["resolution"])
    final, ckpt = run_dir / "backbone.safetensors", run_dir / "checkpoint.pt"
    if final.is_file():
        try:
            weights, source = load_file(str(final)), final
        except Exception as e:  # safetensors holds tensors only; a damaged header is all that can go wrong
            raise LeansslError(f"cannot load {final}: damaged or not a safetensors file ({e})") from None
    elif ckpt.is_file():
        state = load_checkpoint(ckpt)["model"]
        weights, source = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}, ckpt
    else:
        raise LeansslError(f"{run_dir} has no trained weights yet (no backbone.safetensors or checkpoint.pt)")
    misfit = f"the weights in {source} do not fit backbone {cfg.backbone}"
    try:
        missing, unexpected = backbone.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shapes of another architecture
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), type(e).__name__)
        raise LeansslError(f"{misfit}: {detail}") from None
    if missing or unexpected:
        raise LeansslError(f"{misfit}: {len(missing)} missing tensor(s) (e.g. {', '.join(missing[:2]) or '-'}), "
                           f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:2]) or '-'})")
    return backbone, cfg, info


def parse_protocols(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in PROTOCOLS]
    if bad or not names:
        raise LeansslError(f"unknown protocol {', '.join(bad) or repr(text)}: choose from {', '.join(PROTOCOLS)}")
    return names


def evaluate(run_dir, data: str, protocols=PROTOCOLS, labels_per_class: int | None = None, fraction: float | None = None,
             baselines: bool = False,
             device: str = "auto", seed: int = 0, cache_dir=None, progress: bool = True, backbone=None, info=None,
             run_cfg=None) -> dict:
    """Top-1 accuracies (fractions) of each protocol on `data`'s test split.

    `baselines=True` adds the same protocols on a randomly initialised backbone of the same
    architecture and on raw pixels, under "baselines".
    """
    dev = resolve_device(device)
    if backbone is None:
        backbone, run_cfg, info = load_backbone(run_dir)
    ds = open_dataset(data, info["resolution"], cache_dir, progress=progress)
    if ds.train is None or ds.test is None or ds.train.y is None:
        raise LeansslError(f"evaluation needs a labelled train and test split, and '{data}' has none")
    tr_idx = None
    if fraction is not None:  # the same seeded, stratified subset `train --fraction` pretrains on
        tr_idx = stratified_subset(ds.train.y, len(ds.train.y), fraction, run_cfg.seed)
    if labels_per_class is not None:
        if labels_per_class < 1:
            raise LeansslError("--labels-per-class must be at least 1")
        if tr_idx is not None:
            raise LeansslError("use either --labels-per-class or --fraction, not both")
        tr_idx = per_class_subset(ds.train.y, labels_per_class, seed)
    xtr = ds.train.x if tr_idx is None else ds.train.x[tr_idx]
    ytr = torch.from_numpy(ds.train.y if tr_idx is None else ds.train.y[tr_idx]).long()
    yte = torch.from_numpy(ds.test.y).long()
    num_classes = int(max(ytr.max(), yte.max())) + 1

    def score(ftr, fte) -> dict:
        res = {}
        if "knn" in protocols:
            res["knn_top1"] = knn_top1(ftr, ytr, fte, yte, num_classes, KNN_K, KNN_T)
            res["knn20_top1"] = knn_top1(ftr, ytr, fte, yte, num_classes, 20, KNN_T)
        if "linear" in protocols:
            lp = linear_probe(ftr, ytr, fte, yte, num_classes, seed=seed)
            res["linear_top1"], res["linear_weight_decay"] = lp["top1"], lp["weight_decay"]
        return res

    def backbone_features(net, tag):
        net = net.to(dev, memory_format=torch.channels_last)
        args = (info["mean"], info["std"], info["channels"], info["resolution"], dev)
        return (extract_features(net, xtr, *args, progress=progress, desc=f"{tag} features (train)"),
                extract_features(net, ds.test.x, *args, progress=progress, desc=f"{tag} features (test)"))

    result = {"data": data, "pretrain_data": run_cfg.data, "transfer": data != run_cfg.data,
              "backbone": run_cfg.backbone, "method": run_cfg.method,
              "train_images": len(xtr), "test_images": len(ds.test.x), "labels_per_class": labels_per_class,
              "label_fraction": fraction,
              "knn_k": KNN_K, "knn_t": KNN_T, "protocols": list(protocols)}
    result.update(score(*backbone_features(backbone, "ssl")))
    if baselines:
        torch.manual_seed(seed)
        rand = build_backbone(run_cfg.backbone, info["channels"], info["resolution"])
        result["baselines"] = {"random_init": score(*backbone_features(rand, "random")),
                               "raw_pixels": score(*pixel_features(xtr, ds.test.x))}
    return result
