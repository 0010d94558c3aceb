"""One bench cell in its own process: train, count FLOPs, evaluate, measure the accuracy curve.

    python -m leanssl.bench.cell FOLDER

`FOLDER/cell.json` (written by `leanssl.bench.run`) says what to run; the answer is
`FOLDER/result.json`, written last, so its presence means the cell is finished. The run itself is
`FOLDER/run` (a normal leanssl run folder): a killed cell continues from its checkpoint
(`train(..., resume=True)`), and a finished training is never repeated when only the evaluation
was cut short. One process per cell makes the peak memory per run (process RSS on a CPU).

The accuracy-over-time curve: the backbone is saved at the start of training and the first time
the run passes each of `curve_points` (fractions of its steps; under a time budget, of the steps the
budget is estimated to hold), by a training callback (`CurveSnapshots`) that changes nothing the
loop computes; after training, each saved backbone is scored by kNN on a fixed subsample.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..data.sources import open_dataset, stratified_subset
from ..device import resolve_device
from ..errors import LeansslError
from ..eval.features import extract_features, pixel_features
from ..eval.fewshot import FewShotConfig, fewshot_eval
from ..eval.knn import knn_top1
from ..eval.linear import c_grid, linear_probe
from ..export import load_run_backbone
from ..methods.base import DataInfo
from ..models.backbones import build_backbone
from ..runfolder import RunFolder
from ..train import TrainConfig, TrainingInterrupted, train
from ..train.callbacks import Callback
from ..train.config import BUDGET_EPOCH_CAP
from .flops import training_flops_per_image
from .grid import EvalPlan


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


class EvalSet:
    """The labelled images every cell is scored on: seeded, class-stratified subsets of the train and
    test splits (the whole split when the plan says None), and the curve's smaller subsample of those."""

    def __init__(self, data: str, resolution: int | None, plan: EvalPlan, seed: int, cache_dir, device):
        self.plan, self.device = plan, device
        ds = open_dataset(data, resolution, cache_dir, progress=False)
        if ds.train is None or ds.test is None or ds.train.y is None or ds.test.y is None:
            raise LeansslError(f"the bench evaluates on labelled train and test splits, and '{data}' has none")
        self.ds = ds
        self.tr = _subset(ds.train.y, plan.train_images, seed)
        self.te = _subset(ds.test.y, plan.test_images, seed)
        self.ytr = torch.from_numpy(np.asarray(ds.train.y[self.tr], dtype=np.int64))
        self.yte = torch.from_numpy(np.asarray(ds.test.y[self.te], dtype=np.int64))
        self.num_classes = int(max(self.ytr.max(), self.yte.max())) + 1
        # The curve's subsample: positions inside the evaluation subsets (so the last point reuses their features).
        self.ctr = _subset(self.ytr.numpy(), plan.curve_train, seed)
        self.cte = _subset(self.yte.numpy(), plan.curve_test, seed)

    def sizes(self) -> dict:
        return {"eval_train_images": len(self.tr), "eval_test_images": len(self.te),
                "curve_train_images": len(self.ctr), "curve_test_images": len(self.cte)}

    def features(self, backbone, info: dict, curve: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        tr, te = (self.tr[self.ctr], self.te[self.cte]) if curve else (self.tr, self.te)
        args = (info["mean"], info["std"], info["channels"], info["resolution"], self.device)
        backbone = backbone.to(self.device, memory_format=torch.channels_last)
        return (extract_features(backbone, self.ds.train.x[tr], *args, progress=False),
                extract_features(backbone, self.ds.test.x[te], *args, progress=False))

    def curve_knn(self, ftr: torch.Tensor, fte: torch.Tensor, subsampled: bool) -> float:
        """kNN top-1 on the curve subsample; `subsampled` says the features are of it already."""
        if not subsampled:
            ftr, fte = ftr[torch.from_numpy(self.ctr)], fte[torch.from_numpy(self.cte)]
        p = self.plan
        return knn_top1(ftr.to(self.device), self.ytr[self.ctr].to(self.device), fte.to(self.device),
                        self.yte[self.cte].to(self.device), self.num_classes, p.knn_k, p.knn_t)

    def score(self, ftr: torch.Tensor, fte: torch.Tensor, seed: int) -> dict:
        """kNN (k and 20), the linear probe and few-shot episodes on one feature set."""
        p, dev = self.plan, self.device
        ftr, fte, ytr, yte = ftr.to(dev), fte.to(dev), self.ytr.to(dev), self.yte.to(dev)
        out = {"knn_top1": knn_top1(ftr, ytr, fte, yte, self.num_classes, p.knn_k, p.knn_t),
               "knn20_top1": knn_top1(ftr, ytr, fte, yte, self.num_classes, 20, p.knn_t)}
        probe = linear_probe(ftr, ytr, fte, yte, self.num_classes, seed=seed, cs=c_grid(p.linear_c_values))
        out.update(linear_top1=probe["top1"], linear_C=probe["C"])
        shots = FewShotConfig(ways=p.fewshot_ways, shots=tuple(p.fewshot_shots), episodes=p.fewshot_episodes)
        out["fewshot"] = fewshot_eval(ftr, ytr, fte, yte, shots)
        return out


def _subset(y: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    if n is None or n >= len(y):
        return np.arange(len(y), dtype=np.int64)
    return stratified_subset(np.asarray(y), len(y), n / len(y), seed)


class CurveSnapshots(Callback):
    """Saves the backbone to `folder` at the start of a fresh run and after the first step that passes each of
    `points` (fractions of the total steps; under a time `budget`, of their estimate), and says so (the cell's
    progress); folder/points.json lists them. Their training seconds are read from the run's epochs.csv
    afterwards (`_step_seconds`)."""

    def __init__(self, label: str, folder: Path, points, batch_size: int, budget: bool):
        self.label, self.folder, self.batch_size, self.budget = label, folder, batch_size, budget
        folder.mkdir(parents=True, exist_ok=True)
        self.index = folder / "points.json"
        self.records = json.loads(self.index.read_text()) if self.index.exists() else []
        taken = {p for r in self.records for p in r["points"]}
        self.todo = [p for p in points if p not in taken]

    def on_setup(self, run) -> None:
        if not run.resumed and not any(r["step"] == 0 for r in self.records):
            self._save(run, 0, [0.0])

    def on_step_end(self, run) -> None:
        done, total = run.steps_done, run.schedule.total_steps
        due = [p for p in self.todo if done >= p * total]
        if due:
            self.todo = [p for p in self.todo if p not in due]
            self._save(run, done, due)
            print(f"bench: {self.label}: step {done} of {'~' * self.budget}{total} ({100 * done / total:.0f}%)",
                  flush=True)

    def _save(self, run, step: int, due: list) -> None:
        name = f"step{step}.safetensors"
        weights = {k: v.detach().cpu().contiguous() for k, v in run.method.backbone.state_dict().items()}
        save_file(weights, str(self.folder / name))
        self.records.append({"step": step, "images_seen": step * self.batch_size, "points": due, "file": name})
        write_json(self.index, self.records)


def run_cell(folder: Path, spec: dict) -> dict:
    c, plan = spec["cell"], EvalPlan(**spec["eval"])
    run = RunFolder(folder / "run")
    cfg = TrainConfig(data=spec["data"], method=c["method"], backbone=c["backbone"], fraction=c["fraction"],
                      epochs=c["epochs"] or BUDGET_EPOCH_CAP, time_budget=c["budget"], batch_size=spec["batch_size"],
                      seed=spec["seed"], device=spec["device"], out=str(run.path), cache_dir=spec.get("cache_dir"),
                      progress=False,  # progress: a line at each curve point (per-epoch lines flood short epochs)
                      method_args=c.get("method_args", {}))
    parts_path = folder / "parts.json"  # what is measured so far (a cell killed during evaluation keeps it)
    parts = json.loads(parts_path.read_text()) if parts_path.exists() else {}
    if not (run.summary() or {}).get("complete"):
        resume = run.has_checkpoint()
        parts["resumed"] = parts.get("resumed", False) or resume
        parts.setdefault("loadavg_before", os.getloadavg()[0])
        curve = CurveSnapshots(cfg.method, folder / "curve", plan.curve_points, cfg.batch_size, c["budget"] is not None)
        summary = train(cfg, resume=resume, callbacks=[curve])
        if not summary["complete"]:
            raise LeansslError(f"{run.path}: training stopped before its end ({summary['epochs_done']} epochs)")
        parts["loadavg_after"] = os.getloadavg()[0]
        write_json(parts_path, parts)
    summary = run.summary()
    device = resolve_device(cfg.device)

    if "flops_per_image" not in parts:
        parts["flops_per_image"] = spec.get("flops_per_image") or _count_flops(cfg, device)
        write_json(parts_path, parts)

    backbone, _, info = load_run_backbone(run.path)
    evalset = EvalSet(cfg.data, info["resolution"], plan, cfg.seed, cfg.cache_dir, device)
    if "eval" not in parts:
        print(f"bench: evaluating {c['method']} {c['backbone']} (kNN, linear probe, few-shot)", flush=True)
        ftr, fte = evalset.features(backbone, info)
        parts["eval"] = {**evalset.score(ftr, fte, cfg.seed), **evalset.sizes()}
        parts["final_curve_knn"] = evalset.curve_knn(ftr, fte, subsampled=False)
        write_json(parts_path, parts)
    if plan.quantize and "quantized" not in parts:
        from ..quantize import how, quantized_features

        print(f"bench: evaluating {c['method']} {c['backbone']} quantised to {plan.quantize} bits", flush=True)
        parts["quantized"] = {str(b): {"how": how(b), **evalset.score(*quantized_features(
            backbone, b, evalset.ds.train.x[evalset.tr], evalset.ds.test.x[evalset.te], info, cfg.seed), cfg.seed)}
            for b in plan.quantize}
        write_json(parts_path, parts)
    if "curve" not in parts:
        parts["curve"] = _curve(folder / "curve", evalset, cfg, info, summary, parts["final_curve_knn"])
        write_json(parts_path, parts)
        for f in (folder / "curve").glob("*.safetensors"):  # the numbers are kept; the weights are not needed
            f.unlink()

    keep = ("train_images", "epochs_done", "steps_done", "images_seen", "train_seconds", "images_per_s", "peak_mem_mb",
            "final_loss", "device", "skipped_steps")
    result = {"key": spec["key"], **c, "mode": "budget" if c["budget"] is not None else "epochs",
              "data": spec["data"], "batch_size": cfg.batch_size, "seed": cfg.seed,
              **{k: summary[k] for k in keep},
              "memory": "GPU max allocated" if summary["device"].startswith("cuda") else "process peak RSS",
              "best_epoch_images_per_s": run.best_epoch_rate(), **parts, "commit": spec.get("commit", "unknown"),
              "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    result.pop("final_curve_knn")
    write_json(folder / "result.json", result)
    return result


def _count_flops(cfg: TrainConfig, device: torch.device) -> float:
    info = RunFolder(cfg.out).data_info()
    data = DataInfo(info["num_images"], info["channels"], info["resolution"], tuple(info["mean"]), tuple(info["std"]))
    ds = open_dataset(cfg.data, data.resolution, cfg.cache_dir, progress=False)
    x = ds.pretrain.x
    if cfg.fraction != 1.0:
        x = x[stratified_subset(ds.pretrain.y, len(x), cfg.fraction, cfg.seed)]
    return training_flops_per_image(cfg, data, x, device)


def _step_seconds(run: RunFolder, summary: dict, batch_size: int):
    """Training seconds at the end of step s, as the loop counts them: its setup (essl's calibration), the
    epochs before, and the step's share of its epoch (epochs.csv gives each epoch's seconds)."""
    epochs = [float(r["seconds"]) for r in run.epochs()]
    setup = summary["train_seconds"] - sum(epochs)
    per_epoch = max(1, summary["train_images"] // batch_size)

    def seconds(step: int) -> float:
        if step == 0:
            return 0.0
        e = min((step - 1) // per_epoch, len(epochs) - 1)
        steps_in = min(per_epoch, summary["steps_done"] - e * per_epoch)  # the last epoch of a budget run is partial
        return setup + sum(epochs[:e]) + epochs[e] * min(1.0, (step - e * per_epoch) / max(1, steps_in))

    return seconds


def _curve(folder: Path, evalset: EvalSet, cfg: TrainConfig, info: dict, summary: dict, final_knn: float) -> list[dict]:
    """kNN on the curve subsample for each saved backbone, then the finished one."""
    index = folder / "points.json"
    records = json.loads(index.read_text()) if index.exists() else []
    seconds = _step_seconds(RunFolder(cfg.out), summary, cfg.batch_size)
    points = []
    for r in sorted(records, key=lambda r: r["step"]):
        path = folder / r["file"]
        if r["step"] >= summary["steps_done"] or not path.exists():
            continue  # a point on the last step is the finished backbone, scored below
        net = build_backbone(cfg.backbone, info["channels"], info["resolution"])
        net.load_state_dict(load_file(str(path)))
        knn = evalset.curve_knn(*evalset.features(net, info, curve=True), subsampled=True)
        points.append({"step": r["step"], "images_seen": r["images_seen"], "seconds": seconds(r["step"]),
                       "knn_top1": knn})
    points.append({"step": summary["steps_done"], "images_seen": summary["images_seen"],
                   "seconds": summary["train_seconds"], "knn_top1": final_knn})
    return points


def run_floors(folder: Path, spec: dict) -> dict:
    """The floors every cell should beat: raw pixels, and each backbone randomly initialised."""
    plan, device = EvalPlan(**spec["eval"]), resolve_device(spec["device"])
    path = folder / "result.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    evalset = EvalSet(spec["data"], None, plan, spec["seed"], spec.get("cache_dir"), device)
    ds = evalset.ds
    info = {"mean": list(ds.mean), "std": list(ds.std), "channels": ds.channels, "resolution": ds.resolution}
    if "raw pixels" not in result:
        print("bench: floors: raw pixels", flush=True)
        result["raw pixels"] = evalset.score(*pixel_features(ds.train.x[evalset.tr], ds.test.x[evalset.te]), spec["seed"])
        write_json(path, result)
    for name in spec["backbones"]:
        if f"random {name}" in result:
            continue
        print(f"bench: floors: {name}, random init", flush=True)
        torch.manual_seed(spec["seed"])  # the same initial weights as the runs' (train seeds, then builds the backbone)
        net = build_backbone(name, ds.channels, ds.resolution)
        result[f"random {name}"] = evalset.score(*evalset.features(net, info), spec["seed"])
        write_json(path, result)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m leanssl.bench.cell FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    spec = json.loads((folder / "cell.json").read_text())
    try:
        if spec.get("method_source"):  # a method defined outside leanssl registers when its file is imported
            from ..methods.registry import import_file

            import_file(spec["method_source"])
        (run_floors if spec["kind"] == "floors" else run_cell)(folder, spec)
    except LeansslError as e:
        print(f"leanssl: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(f"leanssl: {e.summary['interrupted']}: cell stopped, checkpoint saved", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # outside the training loop (setup, evaluation): what was saved stays valid
        print("leanssl: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
