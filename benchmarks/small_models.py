"""Small models for small devices (issue 17): distillation vs direct pretraining, and quantisation.

    # distillation: a teacher, then each student distilled from it and pretrained directly with essl,
    # at equal student epochs (--student-epochs) or equal student wall-clock (--student-budget, quiet machine)
    python benchmarks/small_models.py distill --data digits --teacher-epochs 20 --teacher-resolution 8 --student-epochs 30
    python benchmarks/small_models.py distill --data fashion-mnist --student-budget 10m
    # quantisation: fp32 vs 8-bit vs 4-bit kNN / linear for essl, essl + SSQL and simclr
    python benchmarks/small_models.py quant --data digits --epochs 30

Every run goes through the CLI (`leanssl train` / `leanssl distill`, then `leanssl eval --json`) in
its own process; a finished run folder is reused on a rerun. Results go to
`benchmarks/results/small-models-<part>-<data>.json` and a markdown table (machine, date, commit,
load, command) is printed. Only accuracies are reported; the training time of each run is recorded
in the JSON (`train_seconds`) but means something only on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, commit_label, cpu_name
from leanssl.runfolder import RunFolder

EVAL = ["--protocol", "knn,linear,fewshot", "--fewshot-shots", "5", "--fewshot-episodes", "200",
        "--linear-c-values", "12", "--no-baselines"]


def cli(args: list[str], capture: bool = False) -> str:
    print("[run] leanssl " + " ".join(args), flush=True)
    r = subprocess.run([sys.executable, "-m", "leanssl.cli", *args], check=True, text=True,
                       capture_output=capture)
    return r.stdout if capture else ""


def run(kind: str, args: list[str], out: Path, a: argparse.Namespace, eval_extra: list[str] = ()) -> dict:
    """Train (or distill) into `out` unless it is finished, then evaluate it on a.data."""
    common = ["--data", a.data, "--batch-size", str(a.batch_size), "--seed", str(a.seed), "--device", a.device,
              "--no-progress"] + (["--cache-dir", a.cache_dir] if a.cache_dir else []) + \
             (["--fraction", str(a.fraction)] if a.fraction else [])  # pretraining only: eval uses every label
    folder = RunFolder(out)
    if not (folder.summary() or {}).get("complete"):
        resume = ["--resume"] if folder.has_checkpoint() else []
        cli([kind, *args, *common, "--out", str(out), *resume])
    ev = ["eval", str(out), "--data", a.data, "--json", "--device", a.device, *EVAL, *eval_extra]
    res = json.loads(cli(ev + (["--cache-dir", a.cache_dir] if a.cache_dir else []), capture=True).splitlines()[-1])
    summary = folder.summary()
    return {"run": str(out), "args": args, "eval": res, "train_seconds": summary["train_seconds"],
            "epochs_done": summary["epochs_done"], "loadavg": os.getloadavg()[0], "train_flops_per_image": flops(out)}


def flops(run_dir: Path) -> float:
    """Training FLOPs per image of one step, counted by torch's FLOP counter (the cost that load cannot change)."""
    import torch

    from leanssl.bench.cell import _count_flops
    from leanssl.train import load_run_config

    return _count_flops(load_run_config(run_dir), torch.device("cpu"))


def fraction_tag(a: argparse.Namespace) -> str:
    """The pretraining fraction in run-folder and result names ("" for all images)."""
    return f"-f{a.fraction:g}" if a.fraction else ""


def length(a: argparse.Namespace) -> list[str]:
    return ["--budget", a.student_budget] if a.student_budget else ["--epochs", str(a.student_epochs)]


def distill(a: argparse.Namespace, root: Path) -> dict:
    teacher = Path(a.teacher_run) if a.teacher_run else root / f"teacher-{a.teacher}"
    if a.teacher_run and not (RunFolder(teacher).summary() or {}).get("complete"):
        raise SystemExit(f"--teacher-run {teacher}: not a finished leanssl run folder")
    res = ["--resolution", str(a.teacher_resolution)] if a.teacher_resolution else []
    rows = {"teacher": run("train", ["--method", "essl", "--backbone", a.teacher, "--epochs", str(a.teacher_epochs),
                                     *res], teacher, a)}  # a finished --teacher-run is only evaluated
    for s in a.students.split(","):
        tag = a.student_budget or f"e{a.student_epochs}"
        rows[f"{s} distilled"] = run("distill", [str(teacher), "--student", s, *length(a)], root / f"{s}-distill-{tag}", a)
        rows[f"{s} essl"] = run("train", ["--method", "essl", "--backbone", s, *length(a)], root / f"{s}-essl-{tag}", a)
    return rows


def quant(a: argparse.Namespace, root: Path) -> dict:
    rows = {}
    for name, flags in (("essl", ["--method", "essl"]),
                        (f"essl + SSQL (w={a.ssql_weight:g})", ["--method", "essl", "--ssql-weight", str(a.ssql_weight)]),
                        ("simclr", ["--method", "simclr"])):
        out = root / f"{a.backbone}-{name.split(' ')[0]}{'-ssql' if 'SSQL' in name else ''}-e{a.epochs}{fraction_tag(a)}"
        rows[name] = run("train", [*flags, "--backbone", a.backbone, "--epochs", str(a.epochs)], out, a,
                         ["--quantize", a.bits])
    return rows


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def mflops(r: dict) -> str:
    return f"{r['train_flops_per_image'] / 1e6:.1f}" if r.get("train_flops_per_image") else "–"


def five_shot(ev: dict) -> float | None:
    entry = next((v for k, v in ev.get("fewshot", {}).items() if k.endswith(" 5-shot")), {})
    return entry.get("logistic", {}).get("mean")


def table(part: str, rows: dict) -> list[str]:
    if part == "distill":
        lines = ["| model | how | kNN | linear | 5-way 5-shot (logistic) | epochs | train MFLOPs/image |",
                 "|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            ev = r["eval"]
            lines.append(f"| {ev['backbone']} | {name} | {pct(ev.get('knn_top1'))} | {pct(ev.get('linear_top1'))} | "
                         f"{pct(five_shot(ev))} | {r['epochs_done']} | {mflops(r)} |")
        for name in rows:
            if name.endswith(" distilled"):
                s = name[:-len(" distilled")]
                gap = rows[name]["eval"]["knn_top1"] - rows[f"{s} essl"]["eval"]["knn_top1"]
                lines.append(f"\n{s}: distilled − direct = {100 * gap:+.1f} kNN points "
                             f"(target ≥ +1.0: {'met' if gap >= 0.01 else 'NOT met'})")
        return lines
    bits = list(next(iter(rows.values()))["eval"]["quantized"])
    head = [f"{b}-bit {m}" for m in ("kNN", "linear") for b in ["fp32"] + bits]
    lines = ["| method | " + " | ".join(h.replace("fp32-bit", "fp32") for h in head) + " | train MFLOPs/image |",
             "|---|" + "---|" * (len(head) + 1)]
    for name, r in rows.items():
        ev, q = r["eval"], r["eval"]["quantized"]
        cells = [pct(ev[f"{m}_top1"]) if b == "fp32" else pct(q[b][f"{m}_top1"]) for m in ("knn", "linear")
                 for b in ["fp32"] + bits]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mflops(r)} |")
    for name, r in rows.items():
        ev, q = r["eval"], r["eval"]["quantized"]
        drop = ev["knn_top1"] - q["8"]["knn_top1"]
        lines.append(f"\n{name}: 8-bit kNN {100 * drop:+.1f} points below fp32 (target ≤ 0.5: "
                     f"{'met' if drop <= 0.005 else 'NOT met'})")
    plain, ssql = rows["essl"]["eval"]["quantized"]["4"], next(v for k, v in rows.items() if "SSQL" in k)
    gain = ssql["eval"]["quantized"]["4"]["knn_top1"] - plain["knn_top1"]
    lines.append(f"\nSSQL: 4-bit kNN {100 * gain:+.1f} points vs essl without it (target ≥ +2.0: "
                 f"{'met' if gain >= 0.02 else 'NOT met'})")
    lines.append(f"\n8-bit: {rows['essl']['eval']['quantized']['8']['how']}; 4-bit: "
                 f"{rows['essl']['eval']['quantized']['4']['how']}.")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("distill", "quant"))
    p.add_argument("--data", default="digits")
    p.add_argument("--teacher", default="resnet18_cifar", help="teacher backbone (distill)")
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--teacher-run", default=None, help="a finished run folder to use as the teacher instead of "
                                                       "training one (distill)")
    p.add_argument("--teacher-resolution", type=int, default=None, help="the teacher's training resolution "
                   "(default: the data's; the students see it resized)")
    p.add_argument("--students", default="small_cnn,mobilenetv3_small_050", help="comma-separated student backbones")
    p.add_argument("--student-epochs", type=int, default=30)
    p.add_argument("--student-budget", default=None, help="equal student wall-clock instead of epochs, e.g. 10m")
    p.add_argument("--backbone", default="small_cnn", help="backbone of the quantisation runs")
    p.add_argument("--epochs", type=int, default=30, help="epochs of the quantisation runs")
    p.add_argument("--ssql-weight", type=float, default=1.0)
    p.add_argument("--bits", default="8,4", help="bit-widths the quantisation runs are evaluated at (8 and 4 needed)")
    p.add_argument("--fraction", type=float, default=None, help="pretrain on this seeded fraction of the training split")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--runs", default="runs/small-models", help="folder of the run folders")
    a = p.parse_args()
    root = Path(a.runs) / a.data.split(":")[0]
    t0 = time.time()
    rows = (distill if a.part == "distill" else quant)(a, root)
    result = {"part": a.part, "data": a.data, "command": "python benchmarks/small_models.py " + " ".join(sys.argv[1:]),
              "machine": cpu_name(), "cpus": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS"),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit_label(),
              "wall_seconds": time.time() - t0, "rows": rows}
    out = ROOT / "results" / f"small-models-{a.part}-{a.data.split(':')[0]}{fraction_tag(a)}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{result['command']}\n{result['machine']}, {result['cpus']} CPUs, OMP_NUM_THREADS={result['threads']}, "
          f"{result['date']}, commit {result['commit']}, load average at the end of each run "
          + ", ".join(f"{r['loadavg']:.1f}" for r in rows.values()) + "\n")
    print("\n".join(table(a.part, rows)))
    print(f"\n-> {out}")


if __name__ == "__main__":
    main()
