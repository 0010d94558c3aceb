"""How long `leanssl eval` takes: the default protocols cold (floors not cached) and warm (floors
cached), and the full protocol set, each as its own `leanssl eval` process, load average beside it.

Run on a quiet machine (timings under load mean nothing), with a trained run, e.g.

    PYTHONPATH=$PWD python -m leanssl train --data fashion-mnist --epochs 1 --out runs/fm1
    PYTHONPATH=$PWD python benchmarks/eval_speed.py runs/fm1 --data fashion-mnist

The data is decoded into the benchmark's own cache first (not timed: a user has decoded it when
training); that cache starts without floors, so the first evaluation is cold. Targets (issue 19,
2-core CPU): default cold <= 180 s, warm <= 60 s, full protocol set <= 900 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import commit_label, cpu_jiffies, cpu_name, steal_percent

from leanssl.data.sources import open_dataset
from leanssl.runfolder import RunFolder

FULL = "knn,linear,finetune,fewshot,lowlabel"


def run_command(cmd: list[str]) -> str:
    """stdout of a command that must succeed."""
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def timed_eval(run: str, data: str, cache: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "leanssl.cli", "eval", run, "--data", data, "--cache-dir", cache, "--json", *extra]
    load, jiffies = os.getloadavg()[0], cpu_jiffies()
    t = time.perf_counter()
    out = run_command(cmd)
    res = json.loads(out.strip().splitlines()[-1])
    return {"command": shlex.join(["leanssl", *cmd[3:]]), "seconds": round(time.perf_counter() - t, 3),
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
            "steal_percent": steal_percent(jiffies, cpu_jiffies()),
            "floors_cached": res.get("floors_cached"), "knn_top1": res.get("knn_top1"), "linear_top1": res.get("linear_top1"),
            "protocol_seconds": res.get("seconds")}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--cache-dir", default=None, help="a fresh temporary folder by default (it must hold no floors)")
    ap.add_argument("--extra", default="", help="more `leanssl eval` flags for every row (e.g. a smaller C grid for a smoke test)")
    ap.add_argument("--full-protocols", default=FULL, help=f"the third row's protocols (default {FULL})")
    ap.add_argument("--full-extra", default="", help="more flags for the full-protocol row only")
    ap.add_argument("--rows", default="cold,warm,full", help="which rows to time, in this order (default all three)")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    a = ap.parse_args(argv)
    cache = a.cache_dir or tempfile.mkdtemp(prefix="leanssl-eval-speed-")
    if (Path(cache) / "floors").exists():
        sys.exit(f"{cache} already holds floors: the cold row would be warm")
    resolution = RunFolder(a.run).data_info()["resolution"]
    open_dataset(a.data, resolution, cache, progress=False)  # decode first, untimed
    extra = shlex.split(a.extra)
    rows = {}
    every = {"cold": ("default, cold", []), "warm": ("default, floors cached", []),
             "full": ("full protocol set, cold", ["--protocol", a.full_protocols, *shlex.split(a.full_extra)])}
    wanted = [w for w in a.rows.split(",") if w]
    if not wanted or any(w not in every for w in wanted):
        sys.exit(f"--rows: choose from {','.join(every)}, got {a.rows!r}")
    for name, flags in (every[w] for w in wanted):
        rows[name] = timed_eval(a.run, a.data, cache, extra + flags)
        r = rows[name]
        where = ", ".join(f"{k} {v:.0f}" for k, v in (r["protocol_seconds"] or {}).items())
        print(f"{name:26s} {r['seconds']:7.1f} s  load {r['load_before']:.2f} -> {r['load_after']:.2f}  "
              f"CPU steal {r['steal_percent']}%  "
              f"floors cached: {r['floors_cached']}  [{where}]  ({r['command']})", flush=True)
    out = {"machine": cpu_name(), "cores": os.cpu_count(), "commit": commit_label(),
           "date": time.strftime("%Y-%m-%d %H:%M %Z"), "rows": rows}
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"{out['machine']}, {out['cores']} cores, commit {out['commit']}, {out['date']}")
    return out


if __name__ == "__main__":
    main()
