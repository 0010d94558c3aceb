"""The device check: everything the GPU path needs proven, in one command, within a device-time budget.

    bash benchmarks/gpu_check.sh                 # on a CUDA machine (about 8 minutes)
    bash benchmarks/gpu_check.sh --minutes 14    # every stage, with time to spare
    python benchmarks/gpu_check.py --dry-run     # anywhere: every stage at toy size on the CPU, in about a minute

Stages, in order of what matters most; each runs in its own process under a time limit, and a stage
that no longer fits in what is left of the budget is skipped and reported as such:

  install        pip install -e . (no dependencies, no network)
  tests          the GPU-path tests on CUDA (tests/test_gpu_path.py: bf16, sync debug mode "error",
                 inductor) and the CUDA-only augmentation test
  tp-bf16        benchmarks/throughput.py, every method and lightly's SimCLR: bf16, eager
                 (images/s, ratio to lightly, MFU, peak memory per method)
  train          one essl run of 200 epochs on 50k synthetic 3x32x32 images, resnet18_cifar, batch 512,
                 bf16, --compile, timed end to end (capped by --budget at what is left)
  tp-bf16-compile  throughput, bf16 + torch.compile: essl, simclr and lightly's SimCLR
  tp-fp32        throughput, fp32 eager: essl, simclr and lightly's SimCLR
  tp-fp32-compile  throughput, fp32 + torch.compile: essl and simclr
  suite          the rest of the test suite on the machine (CUDA where tests use --device auto)

Writes <out>/report.json and <out>/report.md (default benchmarks/results/gpu-check/) after every stage,
so a check cut short still leaves its report; each stage's output is in <out>/logs/, and the bulky
files (the synthetic data, its cache, the training run) are in <out>/work/ (git-ignored). The targets (issue 7) are checked in the report:
essl >= 40,000 images/s end to end, two-view methods >= 20,000, essl >= 10x lightly's SimCLR,
essl's peak memory below simclr's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
from common import commit_label  # noqa: E402

TWO_VIEW = ("simclr", "mocov2", "byol", "simsiam", "barlow", "twist")
PEER = "lightly-simclr"

# name -> (seconds it may take at most, throughput settings or None); full size on a GPU
FULL = {"install": 60, "tests": 180, "tp-bf16": 120, "train": 330, "tp-bf16-compile": 240, "tp-fp32": 90,
        "tp-fp32-compile": 200, "suite": 300}
THROUGHPUT = {  # stage -> (methods, precision, compile, peer)
    "tp-bf16": ("all", "bf16", False, True),
    "tp-bf16-compile": ("essl,simclr", "bf16", True, True),
    "tp-fp32": ("essl,simclr", "fp32", False, True),
    "tp-fp32-compile": ("essl,simclr", "fp32", True, False),
}


def sizes(dry: bool) -> dict:
    """The data, model and step counts of every stage: the issue's on a GPU, toys for a CPU dry run."""
    if dry:
        return dict(device="cpu", shape=(3, 12, 12), images=64, backbone="small_cnn", batch=16, rounds=1, steps=1,
                    warmup=1, epochs=2, methods="essl,simclr", backend="aot_eager")
    return dict(device="cuda", shape=(3, 32, 32), images=50_000, backbone="resnet18_cifar", batch=512, rounds=3,
                steps=20, warmup=5, epochs=200, methods="all", backend="inductor")


def run_stage(name: str, cmd: list[str], limit: float, out: Path, env: dict | None = None) -> dict:
    """Run one stage's command under a time limit; its output goes to <out>/logs/<name>.log."""
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        path = os.pathsep.join([str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
        # its own process group, so a stage stopped at its limit takes its workers with it
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": path, **(env or {})})
        try:
            rc = proc.wait(timeout=limit)
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, status = None, f"timed out after {limit:.0f} s"
    tail = log.read_text(errors="replace").splitlines()[-15:]
    return {"name": name, "status": status, "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
            "limit_s": round(limit), "command": " ".join(cmd), "log": str(log.relative_to(out)), "tail": tail}


def synthetic_npz(path: Path, shape: tuple[int, int, int], n: int) -> Path:
    """n random uint8 images (N, H, W, C) for `leanssl train --data npz:PATH` (contents do not change speed)."""
    if not path.exists():
        c, h, w = shape
        np.savez(path, x=np.random.default_rng(0).integers(0, 256, size=(n, h, w, c), dtype=np.uint8))
    return path


def stage_command(name: str, s: dict, out: Path, left: float, dry: bool, work: Path | None = None) -> tuple[list[str], dict]:
    """A stage's command and extra environment; results go to `out`, bulky files (data, cache, run) to `work`."""
    work = work or out
    py = sys.executable
    if name == "install":
        return [py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."], {}
    if name in ("tests", "suite"):  # a dry run runs one quick test of each
        if name == "tests":
            sel = (["tests/test_gpu_path.py::test_precision_defaults_and_bad_value"] if dry
                   else ["tests/test_gpu_path.py", "tests/test_augment.py"])
        else:
            sel = (["tests/test_train_cli.py::test_pinned_evaluation_defaults"] if dry
                   else ["tests", "--ignore=tests/test_gpu_path.py", "--ignore=tests/test_augment.py"])
        return ([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *sel, f"--junitxml={out / (name + '.xml')}"],
                {"LEANSSL_TEST_INDUCTOR": "1"} if name == "tests" and not dry else {})
    if name in THROUGHPUT:
        methods, precision, compile_, peer = THROUGHPUT[name]
        methods = s["methods"] if methods == "all" else methods
        return [py, "benchmarks/throughput.py", "--device", s["device"], "--methods", methods, "--precision", precision,
                "--shape", ",".join(map(str, s["shape"])), "--images", str(s["images"]), "--backbone", s["backbone"],
                "--batch-size", str(s["batch"]), "--rounds", str(s["rounds"]), "--steps", str(s["steps"]),
                "--warmup", str(s["warmup"]), "--out", str(out / f"{name}.json"), "--compile-backend", s["backend"],
                *(["--compile"] if compile_ else []), *([] if peer else ["--no-peer"])], {}
    if name == "train":
        work.mkdir(parents=True, exist_ok=True)
        data = synthetic_npz(work / "synthetic.npz", s["shape"], s["images"])
        budget = max(10, int(min(FULL["train"], left) - 90))  # the stage's time less data decoding and compilation
        return [py, "-m", "leanssl", "train", "--data", f"npz:{data}", "--method", "essl", "--backbone", s["backbone"],
                "--batch-size", str(s["batch"]), "--epochs", str(s["epochs"]), "--precision", "bf16",
                "--device", s["device"], "--budget", f"{budget}s", "--no-progress", "--out", str(work / "essl-run"),
                "--cache-dir", str(work / "cache"), *([] if dry else ["--compile"])], {}
    raise ValueError(name)


def junit_counts(path: Path) -> dict | None:
    if not path.is_file():
        return None
    import xml.etree.ElementTree as ET
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    get = lambda k: int(suite.get(k, 0))  # noqa: E731
    return {"tests": get("tests"), "failures": get("failures"), "errors": get("errors"), "skipped": get("skipped")}


def environment() -> dict:
    import torch
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "python": sys.version.split()[0], "commit": commit_label(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def collect(report: dict, out: Path, work: Path | None = None) -> None:
    """Read each finished stage's results into the report and check the targets."""
    tp = {}
    for name in THROUGHPUT:
        path = out / f"{name}.json"
        if path.is_file():
            tp[name] = json.loads(path.read_text())
    report["throughput"] = {k: {m: {f: e.get(f) for f in ("median_images_per_s", "median_ratio_to_peer", "mfu",
                                                            "achieved_tflop_s", "gflop_per_image", "peak_mem_mb")}
                                for m, e in v["results"].items()} | {"_matmul_peak_tflop_s": v["matmul_peak_tflop_s"]}
                            for k, v in tp.items()}
    summary = (work or out) / "essl-run" / "summary.json"
    if summary.is_file():
        report["train"] = json.loads(summary.read_text())
    for name in ("tests", "suite"):
        counts = junit_counts(out / f"{name}.xml")
        if counts:
            report.setdefault("test_counts", {})[name] = counts
    report["targets"] = targets(report)


def targets(report: dict) -> list[dict]:
    """The issue's GPU targets against what was measured (None: not measured)."""
    tp = report.get("throughput", {})

    def best(method: str, field: str = "median_images_per_s"):
        vals = [v[method][field] for k, v in tp.items() if method in v and v[method].get(field) is not None
                and k.startswith("tp-bf16")]
        return max(vals) if vals else None

    rows = []
    train = report.get("train")
    e2e = train.get("images_per_s") if train else None  # the run's own clock: compilation and calibration included
    rows.append({"target": "essl >= 40,000 images/s end to end (the 200-epoch run)",
                 "value": None if e2e is None else f"{e2e:,.0f} ({train['epochs_done']}/{train['epochs']} epochs)",
                 "pass": None if e2e is None else e2e >= 40_000})
    step = best("essl")
    rows.append({"target": "essl >= 40,000 images/s (throughput.py, best bf16 config)", "value": step,
                 "pass": None if step is None else step >= 40_000})
    for m in TWO_VIEW:
        v = best(m)
        rows.append({"target": f"{m} >= 20,000 images/s", "value": v, "pass": None if v is None else v >= 20_000})
    ratio = best("essl", "median_ratio_to_peer")
    rows.append({"target": "essl >= 10x lightly's SimCLR (same config)", "value": ratio,
                 "pass": None if ratio is None else ratio >= 10})
    mem = tp.get("tp-bf16", {})
    if "essl" in mem and "simclr" in mem and mem["essl"].get("peak_mem_mb") is not None:
        a, b = mem["essl"]["peak_mem_mb"], mem["simclr"]["peak_mem_mb"]
        rows.append({"target": "essl peak memory below simclr's", "value": f"{a:.0f} vs {b:.0f} MB", "pass": a < b})
    else:
        rows.append({"target": "essl peak memory below simclr's", "value": None, "pass": None})
    return rows


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Device check{' (DRY RUN on a CPU: sizes are toys, the numbers mean nothing)' if report['dry_run'] else ''}",
             "", f"Machine: {env.get('gpu', 'no GPU')}, {env['cpus']} CPUs; torch {env['torch']} (CUDA {env['cuda']}); "
             f"{env['date']}; commit {env['commit']}; load average {env['loadavg'][0]:.1f}.",
             f"Command: `{report['command']}`; budget {report['minutes']} min, used {report['seconds_used'] / 60:.1f} min.",
             "", "## Stages", "", "| stage | status | seconds (limit) |", "|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} ({s.get('limit_s', '–')}) |" for s in report["stages"]]
    for name, counts in report.get("test_counts", {}).items():
        lines.append(f"\n{name}: {counts['tests']} tests, {counts['failures']} failed, {counts['errors']} errors, "
                     f"{counts['skipped']} skipped.")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    fmt = lambda v: "–" if v is None else (f"{v:,.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    met = lambda t: "(dry run)" if report["dry_run"] else ("–" if t["pass"] is None else ("yes" if t["pass"] else "NO"))  # noqa: E731
    lines += [f"| {t['target']} | {fmt(t['value'])} | {met(t)} |" for t in report["targets"]]
    for stage, res in report.get("throughput", {}).items():
        lines += ["", f"## {stage} (matmul peak {res['_matmul_peak_tflop_s']:.3g} TFLOP/s)", "",
                  "| method | images/s | ÷ lightly | GFLOP/image | TFLOP/s | MFU | peak MB |", "|---|---|---|---|---|---|---|"]
        for m, e in res.items():
            if m.startswith("_"):
                continue
            lines.append(f"| {m} | {e['median_images_per_s']:.0f} | {fmt(e['median_ratio_to_peer'])} | "
                         f"{e['gflop_per_image']:.3f} | {e['achieved_tflop_s']:.3g} | {100 * e['mfu']:.1f}% | "
                         f"{fmt(e['peak_mem_mb'] and round(e['peak_mem_mb']))} |")
    if "train" in report:
        t = report["train"]
        lines += ["", "## essl end to end", "", f"{t['epochs_done']}/{t['epochs']} epochs of {t['train_images']} images "
                  f"in {t['train_seconds']:.1f} s: {t['images_per_s'] or 0:,.0f} images/s, peak memory "
                  f"{t['peak_mem_mb']:.0f} MB, precision {t.get('precision')}, compiled {t.get('compiled')}, "
                  f"final loss {t['final_loss']:.4f}."]
    failed = [s for s in report["stages"] if s["status"] not in ("ok",) and not s["status"].startswith("skipped")]
    for s in failed:
        lines += ["", f"### {s['name']}: {s['status']}", "", "```", *s["tail"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="every stage at toy size on the CPU (no install)")
    p.add_argument("--minutes", type=float, default=8.0, help="device-time budget for all stages (default 8)")
    p.add_argument("--stages", default=",".join(FULL), help=f"comma-separated subset of {','.join(FULL)}")
    p.add_argument("--out", default=str(ROOT / "results" / "gpu-check"), help="the report, logs and stage results")
    p.add_argument("--work", default=None, help="synthetic data, cache and the training run (default <out>/work)")
    a = p.parse_args(argv)
    dry, out = a.dry_run, Path(a.out)
    work = Path(a.work) if a.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    wanted = [s for s in a.stages.split(",") if s]
    unknown = set(wanted) - set(FULL)
    if unknown:
        p.error(f"unknown stage(s) {', '.join(sorted(unknown))}: choose from {', '.join(FULL)}")
    s = sizes(dry)
    if not dry:
        import torch
        if not torch.cuda.is_available():
            p.error("no CUDA GPU visible: run on the GPU machine, or pass --dry-run")
    for old in [out / f"{n}.json" for n in THROUGHPUT] + [out / "tests.xml", out / "suite.xml"]:
        old.unlink(missing_ok=True)  # a rerun reports only what it measured
    shutil.rmtree(work / "essl-run", ignore_errors=True)  # the data and its cache are kept for the next run
    start = time.perf_counter()
    report = {"dry_run": dry, "minutes": a.minutes, "sizes": s, "environment": environment(), "stages": [],
              "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv)}
    for name in FULL:
        if name not in wanted:
            continue
        left = a.minutes * 60 - (time.perf_counter() - start)
        if dry and name == "install":
            report["stages"].append({"name": name, "status": "skipped (dry run: the environment is left as it is)",
                                     "seconds": 0})
        elif not dry and (left < 60 or (name != "train" and left < 0.5 * FULL[name])):  # train shortens its budget
            report["stages"].append({"name": name, "status": f"skipped (no time left: {left:.0f} s)", "seconds": 0})
        else:
            cmd, env = stage_command(name, s, out, left, dry, work)
            print(f"[gpu_check] {name}: {' '.join(cmd)}", flush=True)
            report["stages"].append(run_stage(name, cmd, 600 if dry else min(FULL[name], left), out, env))
            print(f"[gpu_check] {name}: {report['stages'][-1]['status']} in {report['stages'][-1]['seconds']} s", flush=True)
        report["seconds_used"] = time.perf_counter() - start
        collect(report, out, work)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        (out / "report.md").write_text(markdown(report))
    print(f"[gpu_check] report: {out / 'report.md'}")
    return report


if __name__ == "__main__":
    main()
