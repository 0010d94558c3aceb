"""`leanssl demo`: pretrain essl on scikit-learn's digits (no download) and report honestly.

The table puts the SSL backbone beside its floors — raw pixels and the same architecture with
random weights — under kNN and a linear probe, with all labels and with 10 labels per class.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from .eval.evaluate import evaluate
from .runfolder import RunFolder
from .train import TrainConfig, train

DEMO_EPOCHS = 60


def _row(name: str, full: dict, few: dict) -> str:
    cells = [full.get("knn_top1"), full.get("linear_top1"), few.get("knn_top1"), few.get("linear_top1")]
    return f"| {name} | " + " | ".join(f"{100 * c:.1f}%" for c in cells) + " |"


def run_demo(out: Path, epochs: int | None = None, device: str = "auto") -> dict:
    epochs = epochs or DEMO_EPOCHS
    # One run folder per length: a rerun continues (or reuses) the run of the same length, never another's.
    run = out / ("run" if epochs == DEMO_EPOCHS else f"run-{epochs}ep")
    # small_cnn, not the default lean_cnn: on digits' 16-px images at the demo's fixed epochs lean_cnn's kNN
    # was 95.1% and 96.4% over two seeds against 96.9% and 96.4% (BENCHMARKS.md); the first is under raw pixels.
    cfg = TrainConfig(data="digits", method="essl", backbone="small_cnn", epochs=epochs,
                      batch_size=128, out=str(run), device=device)
    resume = RunFolder(run).has_checkpoint()
    plural = "epoch" if epochs == 1 else "epochs"
    doing = "continuing (or reusing) the earlier demo run" if resume else "pretraining"
    print(f"leanssl demo: {doing}: essl ({cfg.backbone}) on scikit-learn digits for {epochs} {plural} -> {run}")
    summary = train(cfg, resume=resume)
    results = {}
    for key, k in (("all_labels", None), ("10_per_class", 10)):
        print(f"evaluating ({'all labels' if k is None else f'{k} labels per class'}) ...")
        results[key] = evaluate(run, "digits", labels_per_class=k, baselines=True, device=device)

    full, few = results["all_labels"], results["10_per_class"]
    lines = [
        "# leanssl demo: essl on scikit-learn digits",
        "",
        f"Pretraining: `essl`, backbone `{cfg.backbone}`, {summary['epochs_done']} epochs on {summary['train_images']} "
        f"unlabelled training images at {RunFolder(run).data_info()['resolution']} px; "
        f"{summary['train_seconds']:.0f} s, {summary['images_per_s']:.0f} images/s, peak memory {summary['peak_mem_mb']:.0f} MB "
        f"on {summary['device']}.",
        f"Test split: {full['test_images']} images. kNN: cosine, k={full['knn_k']} (capped at the number of labelled images), "
        f"T={full['knn_t']}, weighted votes. Linear: L-BFGS logistic regression, L2 chosen on a split of the labelled training images.",
        "",
        f"| features | kNN, all {full['train_images']} labels | linear, all labels | kNN, 10 labels/class | linear, 10 labels/class |",
        "|---|---|---|---|---|",
        _row("raw pixels", full["baselines"]["raw_pixels"], few["baselines"]["raw_pixels"]),
        _row(f"{cfg.backbone}, random init", full["baselines"]["random_init"], few["baselines"]["random_init"]),
        _row(f"{cfg.backbone}, essl-pretrained", full, few),
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"date {time.strftime('%Y-%m-%d %H:%M')}. Reproduce: `leanssl demo --out {out}"
        f"{'' if epochs == DEMO_EPOCHS else f' --epochs {epochs}'}`.",
    ]
    report = "\n".join(lines) + "\n"
    (out / "report.md").write_text(report)
    (out / "report.json").write_text(json.dumps({"train": summary, "eval": results}, indent=2))
    print("\n" + report)
    return results
