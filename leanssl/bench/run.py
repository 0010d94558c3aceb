"""The bench driver: every cell in its own process, finished cells skipped, results in one place.

    OUT/bench.json        what was asked (data, profile, settings) and where it ran
    OUT/cells/KEY/        one folder per cell: cell.json (its spec), run/ (the training run), result.json
    OUT/floors/           raw pixels and randomly initialised backbones, scored like the cells
    OUT/results.json      every finished cell, the floors, the failures, the machine
    OUT/results.csv       one row per finished cell
    OUT/report.md, OUT/plots/*.png

Rerunning the same command continues: cells with a result.json are skipped, a cell killed during
training resumes from its checkpoint, one killed during evaluation keeps what it had measured.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import LeansslError
from ..runfolder import RunFolder
from .cell import write_json
from .grid import Cell, EvalPlan


@dataclass
class BenchPlan:
    data: str
    cells: list[Cell]
    out: Path
    profile: str
    batch_size: int
    eval: EvalPlan
    seed: int = 0
    device: str = "auto"
    cache_dir: str | None = None
    command: str = ""
    floors: bool = True


def cell_spec(plan: BenchPlan, cell: Cell) -> dict:
    """Everything that determines a cell's numbers (compared with what an existing cell folder was run with)."""
    return {"kind": "cell", "key": cell.key, "cell": cell.spec(), "data": plan.data, "batch_size": plan.batch_size,
            "seed": plan.seed, "device": plan.device, "eval": asdict(plan.eval)}


def _method_source(cell: Cell) -> dict:
    """For a method defined outside leanssl: the file the cell's process imports to know it."""
    from ..methods.registry import source_file

    path = source_file(cell.method)
    return {"method_source": path} if path else {}


def check_data(plan: BenchPlan) -> None:
    """Before any training: the data opens, has labels to evaluate with, and every fraction holds a batch."""
    from ..data.sources import open_dataset, stratified_subset

    if plan.batch_size < 2:
        raise LeansslError("--batch-size must be at least 2 (BatchNorm needs more than one sample)")
    ds = open_dataset(plan.data, None, plan.cache_dir, progress=True)
    if ds.train is None or ds.test is None or ds.train.y is None or ds.test.y is None:
        raise LeansslError(f"the bench evaluates on labelled train and test splits, and '{plan.data}' has none")
    for f in sorted({c.fraction for c in plan.cells}):
        n = len(ds.pretrain.x) if f == 1 else len(stratified_subset(ds.pretrain.y, len(ds.pretrain.x), f, plan.seed))
        if n < plan.batch_size:
            raise LeansslError(f"fraction {f:g} of '{plan.data}' is {n} images, fewer than the batch size "
                               f"{plan.batch_size}: drop that fraction or lower --batch-size")


def _identity(spec: dict) -> dict:
    """The spec as it reads back from JSON (tuples as lists), less what does not change the numbers."""
    return {k: v for k, v in json.loads(json.dumps(spec)).items()
            if k not in ("flops_per_image", "cache_dir", "commit", "method_source")}


def _prepare(folder: Path, spec: dict) -> None:
    """Write the cell's spec, or refuse when the folder holds the same cell run with other settings."""
    path = folder / "cell.json"
    if path.exists():
        old = json.loads(path.read_text())
        if _identity(old) != _identity(spec):
            diff = [k for k in set(_identity(old)) | set(_identity(spec)) if old.get(k) != spec.get(k)]
            raise LeansslError(f"{folder} holds this cell run with other settings ({', '.join(sorted(diff))}): "
                               f"use another --out, or delete the folder to run it again")
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, spec)


def _spawn(folder: Path) -> int:
    """Run one cell's process. Ctrl-C reaches it too (it checkpoints and stops); SIGTERM is passed on."""
    proc = subprocess.Popen([sys.executable, "-m", "leanssl.bench.cell", str(folder)])

    def forward(signum, frame):
        proc.send_signal(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, forward) if _main_thread() else None
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=120)  # the cell finishes its step and writes its checkpoint
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            proc.kill()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def machine() -> dict:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version(), "commit": git_commit()}


def git_commit() -> str:
    try:
        r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        return "unknown"
    return (r.stdout.strip() + ("+changes" if dirty else "")) or "unknown"


def _summary_line(r: dict) -> str:
    ev = r["eval"]
    shot = next((v["logistic"]["mean"] for v in ev["fewshot"].values() if "logistic" in v), None)
    return (f"{r['train_seconds']:.0f} s training, {r['images_per_s'] or 0:.0f} img/s, peak {r['peak_mem_mb']:.0f} MB, "
            f"{r['flops_per_image'] / 1e9:.3g} GFLOPs/img; kNN {100 * ev['knn_top1']:.1f}%, "
            f"linear {100 * ev['linear_top1']:.1f}%" + (f", few-shot {100 * shot:.1f}%" if shot is not None else ""))


def _flops_key(c: Cell) -> tuple:
    """Cells that share this share their FLOPs per image (the same step on the same data size; batch and
    resolution are the same for the whole bench)."""
    return (c.method, c.method_args, c.backbone, c.fraction)


def collect(plan: BenchPlan, failed: dict, info: dict) -> dict:
    """results.json and results.csv from the finished cells of this grid (in grid order)."""
    cells = []
    for c in plan.cells:
        path = plan.out / "cells" / c.key / "result.json"
        if path.exists():
            cells.append(json.loads(path.read_text()))
    floors_path = plan.out / "floors" / "result.json"
    results = {"bench": info, "cells": cells, "failed": [{"key": k, "error": v} for k, v in failed.items()],
               "floors": json.loads(floors_path.read_text()) if floors_path.exists() else {}}
    write_json(plan.out / "results.json", results)
    write_csv(plan.out / "results.csv", cells)
    return results


CSV_FIELDS = ("key", "method", "backbone", "fraction", "mode", "epochs", "budget", "batch_size", "train_images",
              "epochs_done", "steps_done", "images_seen", "train_seconds", "images_per_s", "best_epoch_images_per_s",
              "peak_mem_mb", "memory", "flops_per_image", "knn_top1", "knn20_top1", "linear_top1", "linear_C",
              "fewshot_logistic", "fewshot_nearest_centroid", "fewshot_setting", "eval_train_images", "eval_test_images",
              "device", "loadavg_before", "loadavg_after", "resumed", "final_loss", "finished_at")


def flat(r: dict) -> dict:
    """One CSV row of a cell's result."""
    ev = r["eval"]
    row = {k: r.get(k) for k in CSV_FIELDS}
    row.update({k: ev.get(k) for k in ("knn_top1", "knn20_top1", "linear_top1", "linear_C", "eval_train_images",
                                       "eval_test_images")})
    setting, shots = next(((k, v) for k, v in ev["fewshot"].items() if "logistic" in v), (None, {}))
    row.update(fewshot_setting=setting, fewshot_logistic=shots.get("logistic", {}).get("mean"),
               fewshot_nearest_centroid=shots.get("nearest_centroid", {}).get("mean"))
    return row


def write_csv(path: Path, cells: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in cells:
            w.writerow(flat(r))
    os.replace(tmp, path)


def run_bench(plan: BenchPlan) -> dict:
    """Run every unfinished cell of the plan, then write results and the report. Returns results.json's dict."""
    out = plan.out
    bench_path = out / "bench.json"
    if bench_path.exists():
        old = json.loads(bench_path.read_text())
        if old.get("data") != plan.data:
            raise LeansslError(f"{out} holds a bench on '{old.get('data')}', not '{plan.data}': use another --out")
    done = {c.key for c in plan.cells if (out / "cells" / c.key / "result.json").exists()}
    todo = [c for c in plan.cells if c.key not in done]
    print(f"bench: {len(plan.cells)} cells on {plan.data} ({plan.profile} profile): {len(done)} finished earlier, "
          f"{len(todo)} to run -> {out}", flush=True)
    if todo:
        check_data(plan)
    info = {"data": plan.data, "profile": plan.profile, "command": plan.command, "batch_size": plan.batch_size,
            "seed": plan.seed, "eval": asdict(plan.eval), "machine": machine(), "date": time.strftime("%Y-%m-%d"),
            "cells_in_grid": len(plan.cells)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(bench_path, info)
    failed: dict[str, str] = {}
    start = time.perf_counter()
    flops = {}
    for c in plan.cells:
        if c.key in done:
            r = json.loads((out / "cells" / c.key / "result.json").read_text())
            flops[_flops_key(c)] = r.get("flops_per_image")
    if plan.floors:
        _run_floors(plan, failed)
    for i, c in enumerate(plan.cells, 1):
        folder = out / "cells" / c.key
        tag = f"[{i}/{len(plan.cells)}] {c.label}"
        if c.key in done:
            print(f"{tag}: finished earlier, skipped", flush=True)
            continue
        spec = {**cell_spec(plan, c), "cache_dir": plan.cache_dir, "flops_per_image": flops.get(_flops_key(c)),
                "commit": info["machine"]["commit"], **_method_source(c)}
        _prepare(folder, spec)
        state = "resuming its checkpoint" if RunFolder(folder / "run").has_checkpoint() else "training"
        print(f"{tag}: {state} ({folder})", flush=True)
        t0 = time.perf_counter()
        rc = _spawn(folder)
        if rc == 130:
            raise KeyboardInterrupt
        result_path = folder / "result.json"
        if rc != 0 or not result_path.exists():
            failed[c.key] = f"cell process exited with status {rc}; rerun the bench to retry it (output above)"
            print(f"{tag}: FAILED (exit status {rc})", flush=True)
            continue
        r = json.loads(result_path.read_text())
        flops[_flops_key(c)] = r["flops_per_image"]
        left = sum(1 for d in plan.cells[i:] if d.key not in done)
        print(f"{tag}: done in {time.perf_counter() - t0:.0f} s: {_summary_line(r)} "
              f"[bench {(time.perf_counter() - start) / 60:.1f} min, {left} cells left]", flush=True)
        collect(plan, failed, info)
    results = collect(plan, failed, info)
    from .report import write_report

    paths = write_report(out, results)
    print(f"bench: {len(results['cells'])} of {len(plan.cells)} cells finished; report {paths['report']}, "
          f"results {out / 'results.csv'}", flush=True)
    return results


def report_only(plan: BenchPlan) -> dict:
    """Results and report from the cells finished so far, running nothing."""
    from .report import write_report

    if not (plan.out / "bench.json").exists():
        raise LeansslError(f"no bench in {plan.out} (no bench.json): run the bench first")
    results = collect(plan, {}, json.loads((plan.out / "bench.json").read_text()))
    paths = write_report(plan.out, results)
    print(f"bench: {len(results['cells'])} of {len(plan.cells)} cells finished; report {paths['report']}", flush=True)
    return results


def _run_floors(plan: BenchPlan, failed: dict) -> None:
    folder = plan.out / "floors"
    backbones = list(dict.fromkeys(c.backbone for c in plan.cells))
    path = folder / "result.json"
    have = json.loads(path.read_text()) if path.exists() else {}
    if "raw pixels" in have and all(f"random {b}" in have for b in backbones):
        return
    spec = {"kind": "floors", "data": plan.data, "backbones": backbones, "seed": plan.seed, "device": plan.device,
            "eval": asdict(plan.eval), "cache_dir": plan.cache_dir}
    folder.mkdir(parents=True, exist_ok=True)
    if path.exists() and (folder / "cell.json").exists():
        old = json.loads((folder / "cell.json").read_text())
        if any(old.get(k) != _identity(spec)[k] for k in ("data", "seed", "eval")):
            raise LeansslError(f"{folder} holds floors scored with other settings (seed or evaluation): "
                               "use another --out")
    write_json(folder / "cell.json", spec)
    print("bench: floors (raw pixels, random backbones)", flush=True)
    rc = _spawn(folder)
    if rc == 130:
        raise KeyboardInterrupt
    if rc != 0:
        failed["floors"] = f"floors process exited with status {rc}"
