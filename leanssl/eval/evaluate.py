"""Evaluate a run's backbone (and its floors: a random backbone, raw pixels) on a labelled source.

Protocols (`evaluate(..., protocols=...)`, `leanssl eval --protocol`):
- knn: weighted kNN on frozen features (k=200, T=0.1; also k=20);
- linear: the Ericsson et al. linear probe (C chosen on a validation split of train, refit);
- finetune: full fine-tuning, without and with the linear-probe warm-up (the random backbone: without only);
- fewshot: N-way K-shot episodes, nearest-centroid and logistic, mean and worst cases;
- lowlabel: the linear probe and fine-tuning on 1% and 10% of the labels (class-balanced, seeded).
Features are extracted once per feature set and shared by every protocol.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from ..data.cache import cache_root
from ..data.sources import open_dataset, per_class_subset, stratified_subset
from ..device import resolve_device
from ..errors import LeansslError
from ..export import load_backbone as load_exported, load_run_backbone, read_metadata
from ..models.backbones import build_backbone
from ..runfolder import RunFolder
from ..train.config import TrainConfig
from .features import extract_features, pixel_features
from .fewshot import FewShotConfig, fewshot_eval
from .finetune import FinetuneConfig, finetune
from .floors import floor_key, load_floors, save_floors
from .knn import KNN_K, KNN_K_SMALL, KNN_T, knn_top1s
from .linear import C_GRID, SOLVERS, SWEEPS, linear_probe
from .report import report_path, write_report

PROTOCOLS = ("knn", "linear", "finetune", "fewshot", "lowlabel")
DEFAULT_PROTOCOLS = ("knn", "linear")


@dataclass
class EvalSettings:
    """Every protocol setting; printed beside the numbers in the report and returned under "settings"."""

    knn_k: int = KNN_K
    knn_t: float = KNN_T
    linear_cs: tuple[float, ...] = C_GRID
    linear_solver: str = "auto"
    linear_sweep: str = "auto"  # coarse-to-fine C search ("fast") on large training splits, every C ("full") on small ones
    val_fraction: float = 0.2  # of the labelled training images, to choose C on
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    lowlabel_fractions: tuple[float, ...] = (0.01, 0.1)

    def summary(self) -> dict:
        out = asdict(self)
        cs = out.pop("linear_cs")
        out["linear_C"] = {"values": len(cs), "min": min(cs), "max": max(cs)}
        return out


def load_evaluable(path) -> tuple:
    """(backbone, run config, data info, training state) of a run folder or an exported backbone file/folder.

    The state ({"epoch", "epochs", "complete"}) says whether the weights are the finished run's or a checkpoint's.
    """
    path = Path(path)
    meta = read_metadata(path)  # a clear error for a path that is neither
    state = {k: meta.get(k) for k in ("epoch", "epochs", "complete", "time_budget", "train_seconds")}
    if RunFolder(path).is_run():
        return (*load_run_backbone(path), state)
    info = {k: meta[k] for k in ("channels", "resolution", "mean", "std")}
    cfg = TrainConfig(data=meta["data"], method=meta["method"], backbone=meta["architecture"])  # seed: the default 0
    return load_exported(path), cfg, info, state


def eval_resolution(resolution, info: dict) -> int | None:
    """The side to decode evaluation images at: the run's (None), the data's own ("native", None to open_dataset), or N."""
    if resolution is None or resolution == "run":
        return info["resolution"]
    if resolution == "native":
        return None
    try:
        return int(resolution)
    except (TypeError, ValueError):
        raise LeansslError(f"eval resolution must be run, native or a number of pixels, got {resolution!r}") from None


def parse_protocols(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in PROTOCOLS]
    if bad or not names:
        raise LeansslError(f"unknown protocol {', '.join(bad) or repr(text)}: choose from {', '.join(PROTOCOLS)}")
    return names


def _check_settings(s: EvalSettings) -> None:
    problems = [msg for bad, msg in [
        (s.knn_k < 1, f"kNN k must be at least 1, got {s.knn_k}"),
        (not s.knn_t > 0, f"kNN temperature must be positive, got {s.knn_t}"),
        (s.linear_solver not in SOLVERS, f"unknown linear solver '{s.linear_solver}': choose from {', '.join(SOLVERS)}"),
        (not s.linear_cs or min(s.linear_cs) <= 0, "linear-probe C values must be positive"),
        (s.linear_sweep not in SWEEPS, f"unknown linear sweep '{s.linear_sweep}': choose from {', '.join(SWEEPS)}"),
        (s.finetune.epochs < 0, f"fine-tune epochs must be at least 0, got {s.finetune.epochs}"),
        (s.fewshot.ways < 2, f"few-shot ways must be at least 2, got {s.fewshot.ways}"),
        (s.fewshot.episodes < 1, f"few-shot episodes must be at least 1, got {s.fewshot.episodes}"),
        (not s.fewshot.shots or min(s.fewshot.shots) < 1, "few-shot shots must be at least 1"),
        (any(not 0 < f <= 1 for f in s.lowlabel_fractions), "low-label fractions must be in (0, 1]"),
    ] if bad]
    if problems:
        raise LeansslError("; ".join(problems))


def _probe_fields(p: dict) -> dict:
    return {"linear_top1": p["top1"], "linear_C": p["C"], "linear_weight_decay": p["weight_decay"],
            "linear_val_top1": p["val_top1"], "linear_solver": p["solver"]}


def evaluate(run_dir, data: str, protocols=DEFAULT_PROTOCOLS, labels_per_class: int | None = None,
             fraction: float | None = None, baselines: bool = True, device: str = "auto", seed: int = 0,
             cache_dir=None, progress: bool = True, backbone=None, info=None, run_cfg=None,
             settings: EvalSettings | None = None, report: bool = True, quantize: tuple[int, ...] = (),
             resolution=None, floor_cache: bool = True) -> dict:
    """Top-1 accuracies (fractions) of each protocol on `data`'s test split.

    `baselines=True` adds the same protocols on a randomly initialised backbone of the same
    architecture and on raw pixels (no fine-tuning there), under "baselines". `report=True` writes
    the markdown report `eval-<data>.md` into `run_dir` (its path is returned under "report").
    `quantize` (bit-widths) adds the backbone quantised to each, under "quantized" (leanssl.quantize).
    `resolution`: the side the images are decoded at and the backbone sees: None for the run's
    training resolution, "native" for `data`'s own (a run pretrained small, evaluated full size), or pixels.
    `floor_cache=True` reuses baselines cached by an earlier evaluation with the same data and settings.
    """
    settings = settings or EvalSettings()
    _check_settings(settings)
    protocols = list(protocols)
    dev = resolve_device(device)
    run_state = None
    if backbone is None:
        backbone, run_cfg, info, run_state = load_evaluable(run_dir)
    ds = open_dataset(data, eval_resolution(resolution, info), cache_dir, progress=progress)
    info = {**info, "resolution": ds.resolution, "train_resolution": info.get("train_resolution", info["resolution"])}
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
    ytr_np = np.asarray(ds.train.y if tr_idx is None else ds.train.y[tr_idx], dtype=np.int64)
    ytr, yte = torch.from_numpy(ytr_np).to(dev), torch.from_numpy(np.asarray(ds.test.y, dtype=np.int64)).to(dev)
    num_classes = int(max(ytr.max(), yte.max())) + 1
    probe_args = dict(seed=seed, cs=settings.linear_cs, val_fraction=settings.val_fraction, solver=settings.linear_solver,
                      sweep=settings.linear_sweep, progress=progress)

    def fine_tunes(net, head, idx, tag: str, warmup: bool) -> dict:
        """The plain fine-tune, and with `warmup` the one from the probe's head. The random-init floor skips the
        warm-up: a probe on a random net's eval-mode features is no warm-up, and it cost a fifth of the full set."""
        x, y = (xtr, ytr_np) if idx is None else (xtr[idx], ytr_np[idx])
        out = {}
        variants = (("finetune", None),) + ((("finetune_warmup", head),) if warmup else ())
        for key, start in variants:
            r = finetune(net, start, x, y, ds.test.x, ds.test.y, num_classes, info, dev, settings.finetune, seed,
                         progress, desc=f"{tag} {key}")
            out[f"{key}_top1"] = r["top1"]
        out["finetune_steps"], out["finetune_batch_size"] = r["steps"], r["batch_size"]
        return out

    seconds: dict[str, float] = {}  # wall-clock per protocol, over every feature set scored here

    @contextmanager
    def timed(what: str):
        t = time.perf_counter()
        yield
        seconds[what] = seconds.get(what, 0.0) + time.perf_counter() - t

    def score(net, ftr, fte, tag: str, warmup: bool = True) -> dict:
        """Every requested protocol on one feature set; `net` (None for raw pixels) is what fine-tuning trains,
        `warmup` whether it also fine-tunes from the linear probe's head."""
        ftr, fte = ftr.to(dev), fte.to(dev)
        res = {}
        if "knn" in protocols:
            with timed("knn"):
                acc = knn_top1s(ftr, ytr, fte, yte, num_classes, (settings.knn_k, KNN_K_SMALL), settings.knn_t)
            res["knn_top1"], res["knn20_top1"] = acc[settings.knn_k], acc[KNN_K_SMALL]
        finetuning = "finetune" in protocols and net is not None
        if "linear" in protocols or finetuning:  # fine-tuning's warm-up starts from the probe
            with timed("linear"):
                probe = linear_probe(ftr, ytr, fte, yte, num_classes, desc=f"{tag} linear probe", **probe_args)
            res.update(_probe_fields(probe))
        if finetuning:
            with timed("finetune"):
                res.update(fine_tunes(net, probe["head"], None, tag, warmup))
        if "fewshot" in protocols:
            with timed("fewshot"):
                res["fewshot"] = fewshot_eval(ftr, ytr, fte, yte, settings.fewshot, progress, desc=f"{tag} few-shot")
        if "lowlabel" in protocols:
            with timed("lowlabel"):
                res["lowlabel"] = lowlabel(net, ftr, fte, tag, warmup)
        return res

    def lowlabel(net, ftr, fte, tag: str, warmup: bool) -> dict:
        """The linear probe (and fine-tuning, given a net) on each low-label fraction of the training labels."""
        out = {}
        for frac in settings.lowlabel_fractions:
            idx = stratified_subset(ytr_np, len(ytr_np), frac, seed)
            t = torch.from_numpy(idx).to(dev)
            probe = linear_probe(ftr[t], ytr[t], fte, yte, num_classes, desc=f"{tag} {100 * frac:g}% linear probe",
                                 **probe_args)
            entry = {"fraction": frac, "labels": len(idx), **_probe_fields(probe)}
            if net is not None:
                entry.update(fine_tunes(net, probe["head"], idx, f"{tag} {100 * frac:g}%", warmup))
            out[f"{100 * frac:g}%"] = entry
        return out

    def backbone_features(net, tag):
        net = net.to(dev, memory_format=torch.channels_last)
        args = (info["mean"], info["std"], info["channels"], info["resolution"], dev)
        with timed("features"):
            return (extract_features(net, xtr, *args, progress=progress, desc=f"{tag} features (train)"),
                    extract_features(net, ds.test.x, *args, progress=progress, desc=f"{tag} features (test)"))

    result = {"data": data, "pretrain_data": run_cfg.data, "transfer": data != run_cfg.data,
              "backbone": run_cfg.backbone, "method": run_cfg.method, "run": str(run_dir) if run_dir else None,
              "train_images": len(xtr), "test_images": len(ds.test.x), "labels_per_class": labels_per_class,
              "label_fraction": fraction, "num_classes": num_classes,
              "resolution": info["resolution"], "train_resolution": info["train_resolution"],
              "data_channels": ds.channels, "model_channels": info["channels"],
              "run_epoch": (run_state or {}).get("epoch"), "run_epochs": (run_state or {}).get("epochs"),
              "run_complete": (run_state or {}).get("complete"),
              "run_budget": (run_state or {}).get("time_budget"), "run_seconds": (run_state or {}).get("train_seconds"),
              "knn_k": settings.knn_k, "knn_k_used": min(settings.knn_k, len(xtr)), "knn_t": settings.knn_t, "protocols": protocols, "device": str(dev), "seed": seed,
              "settings": settings.summary()}
    result.update(score(backbone, *backbone_features(backbone, "ssl"), "ssl"))
    if quantize:
        from ..quantize import how, quantized_features

        result["quantized"] = {str(b): {"how": how(b), **score(None, *quantized_features(
            backbone, b, xtr, ds.test.x, info, seed, progress), f"{b}-bit")} for b in quantize}
    if baselines:
        parts = {"data": Path(ds.cache_path).name, "protocols": sorted(protocols), "settings": asdict(settings),
                 "seed": seed, "backbone": run_cfg.backbone, "model": [info["channels"], info["resolution"],
                 list(info["mean"]), list(info["std"])], "labels_per_class": labels_per_class,
                 "fraction": [fraction, run_cfg.seed] if fraction is not None else None}
        key, root = floor_key(**parts), cache_root(cache_dir)
        floor_cache = floor_cache and bool(ds.cache_path)  # data without a cache entry has no fingerprint to key on
        floors = load_floors(root, key, protocols) if floor_cache else None
        result["floors_cached"] = floors is not None
        if floors is None:
            torch.manual_seed(seed)
            rand = build_backbone(run_cfg.backbone, info["channels"], info["resolution"])
            floors = {"random_init": score(rand, *backbone_features(rand, "random"), "random", warmup=False),
                      "raw_pixels": score(None, *pixel_features(xtr, ds.test.x), "pixels")}
            if floor_cache:
                save_floors(root, key, floors, parts)
        result["baselines"] = floors
    result["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    if report and run_dir is not None:
        path = report_path(run_dir, data, labels_per_class, fraction)
        if Path(run_dir).is_file():  # an exported backbone: the report goes beside it
            path = Path(run_dir).with_name(f"{Path(run_dir).stem}-{path.name}")
        try:
            write_report(path, result)
            result["report"] = str(path)
        except OSError as e:  # a read-only run folder: the numbers still come back
            print(f"leanssl: could not write the report {path}: {e.strerror or e}", file=sys.stderr)
    return result
