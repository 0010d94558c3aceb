"""The full evaluation table: every protocol, in-domain and transfer, for a set of runs.

    python benchmarks/eval_table.py runs/fm-essl runs/fm-npid runs/digits-essl --cache-dir /tmp/lcache
    python benchmarks/eval_table.py runs/fm-essl --datasets fashion-mnist --protocol knn,linear,fewshot

Each run is evaluated with `leanssl.eval.evaluate` (protocols knn, linear, finetune, fewshot,
lowlabel by default, with the raw-pixel and random-init baselines) on every data set in
--datasets: on its own pretraining data that is in-domain, on the others it is transfer —
Fashion-MNIST runs (28 px, 1 channel) on scikit-learn's digits decoded at 28 px, digits runs
(16 px, 1 channel) on Fashion-MNIST decoded at 16 px. Every evaluation also writes its
`eval-<data>.md` into the run folder. Finished (run, data, settings) results are kept in --json and
skipped on a rerun, so a killed benchmark continues. Prints markdown tables with the machine, the
date and the commit.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from common import cpu_name, git_commit  # (this folder is on sys.path when run as a script)

from leanssl.eval.evaluate import PROTOCOLS, EvalSettings, evaluate, parse_protocols
from leanssl.eval.linear import c_grid

ROOT = Path(__file__).resolve().parent
ACCURACY_COLUMNS = [("kNN", None, "knn_top1"), ("linear", None, "linear_top1"), ("fine-tune", None, "finetune_top1"),
                    ("FT + warm-up", None, "finetune_warmup_top1")]


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def run_label(res: dict) -> str:
    return f"{res['method']} ({res['backbone']}, pretrained on {res['pretrain_data']})"


def feature_rows(entries: list[dict]) -> list[tuple[str, dict]]:
    """(label, result) per row: each run's backbone, then the floors, once per architecture and input size."""
    rows, floors = [], {}
    for res in entries:
        rows.append((run_label(res), res))
        key = (res["backbone"], res["resolution"], res["model_channels"])
        if "baselines" in res and key not in floors:
            floors[key] = [(f"*{res['backbone']} random init, {res['resolution']} px*", res["baselines"]["random_init"]),
                           (f"*raw pixels, {res['resolution']} px*", res["baselines"]["raw_pixels"])]
    return rows + [row for rs in floors.values() for row in rs]


def accuracy_table(entries: list[dict]) -> list[str]:
    first = entries[0]
    lows = list(first.get("lowlabel", {}))
    cols = ACCURACY_COLUMNS + [(f"{low} {name}", low, key) for low in lows
                               for name, key in (("linear", "linear_top1"), ("FT", "finetune_top1"),
                                                 ("FT + warm-up", "finetune_warmup_top1"))]
    head = ["features"] + [name for name, _, _ in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in feature_rows(entries):
        cells = [_pct((r.get("lowlabel", {}).get(low, {}) if low else r).get(key)) for _, low, key in cols]
        if any(c != "–" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def fewshot_table(entries: list[dict]) -> list[str]:
    settings = [s for s in entries[0].get("fewshot", {}) if "skipped" not in entries[0]["fewshot"][s]]
    if not settings:
        return []
    clfs = (("nearest_centroid", "centroid"), ("logistic", "logistic"))
    head = ["features"] + [f"{s}, {name}" for s in settings for _, name in clfs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in feature_rows(entries):
        cells = []
        for s in settings:
            for clf, _ in clfs:
                st = r.get("fewshot", {}).get(s, {}).get(clf)
                cells.append("–" if st is None else f"{100 * st['mean']:.1f} ± {100 * st['ci95']:.1f} ({100 * st['worst10']:.1f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def settings_line(res: dict) -> str:
    s, ft, fs = res["settings"], res["settings"]["finetune"], res["settings"]["fewshot"]
    return (f"kNN: cosine, k={s['knn_k']}, T={s['knn_t']}. Linear: logistic regression, C from {s['linear_C']['values']} "
            f"log-spaced values in {s['linear_C']['min']:.0e}..{s['linear_C']['max']:.0e} chosen on a "
            f"{s['val_fraction']:.0%} validation split of train, refit. Fine-tune: {ft['epochs']:g} epochs (at least "
            f"{ft['min_steps']} steps), batch {ft['batch_size']}, SGD-Nesterov lr {ft['lr']:g} cosine, wd "
            f"{ft['weight_decay']:g}, crop {ft['crop_scale'][0]:g}–{ft['crop_scale'][1]:g} + flip; warm-up = head from the "
            f"linear probe on the frozen backbone. Low-label: {', '.join(f'{100 * f:g}%' for f in s['lowlabel_fractions'])} "
            f"of the labels, class-balanced, seed {res['seed']}. Few-shot: {fs['episodes']} episodes, {fs['queries']} "
            f"queries per class from the test split, episode seed {fs['seed']}; cells: mean ± 95% interval (mean of the "
            f"worst 10% of episodes).")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (leanssl train --out)")
    p.add_argument("--datasets", default="fashion-mnist,digits", help="comma-separated data SPECs to evaluate every run on")
    p.add_argument("--protocol", default=",".join(PROTOCOLS))
    p.add_argument("--finetune-epochs", type=float, default=None, help="shorter fine-tuning for a smoke test")
    p.add_argument("--fewshot-episodes", type=int, default=None, help="fewer episodes for a smoke test")
    p.add_argument("--linear-c-values", type=int, default=None, help="fewer C values for the probe (default 45)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--json", default=str(ROOT / "results" / "eval-table.json"), help="finished results, kept across reruns")
    a = p.parse_args(argv)

    protocols = parse_protocols(a.protocol)
    s = EvalSettings()
    if a.finetune_epochs is not None:
        s = replace(s, finetune=replace(s.finetune, epochs=a.finetune_epochs))
    if a.fewshot_episodes is not None:
        s = replace(s, fewshot=replace(s.fewshot, episodes=a.fewshot_episodes))
    if a.linear_c_values is not None:
        s = replace(s, linear_cs=c_grid(a.linear_c_values))
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(out.read_text()) if out.exists() else {}
    datasets = [d.strip() for d in a.datasets.split(",") if d.strip()]
    tag = json.dumps([protocols, s.summary(), a.seed], sort_keys=True)  # a result is reused only under the same settings
    by_data: dict[str, list[dict]] = {d: [] for d in datasets}
    for run in a.runs:
        for data in datasets:
            key = f"{Path(run).resolve()}|{data}|{tag}"
            if key not in done:
                print(f"[{run} on {data}] {','.join(protocols)}", flush=True)
                t0 = time.perf_counter()
                res = evaluate(run, data, protocols, device=a.device, seed=a.seed, cache_dir=a.cache_dir, settings=s)
                res["eval_seconds"] = time.perf_counter() - t0
                done[key] = res
                out.write_text(json.dumps(done, indent=1))
            by_data[data].append(done[key])

    dev = torch.device("cuda" if a.device != "cpu" and torch.cuda.is_available() else "cpu")
    machine = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{cpu_name()}, {torch.get_num_threads()} threads"
    first = next(iter(by_data.values()))[0]
    lines = [f"Evaluation table: {len(a.runs)} run(s) on {', '.join(datasets)}; protocols {', '.join(protocols)}.",
             f"Machine: {machine}, torch {torch.__version__}; {time.strftime('%Y-%m-%d')}; commit {git_commit()}.",
             f"Command: `python benchmarks/eval_table.py {' '.join(a.runs)} --datasets {a.datasets}`",
             "", settings_line(first), ""]
    for data, entries in by_data.items():
        transfer = sorted({e["pretrain_data"] for e in entries if e["transfer"]})
        lines += [f"### Evaluated on {data}" + (f" (transfer from {', '.join(transfer)})" if transfer else ""), "",
                  "Top-1 accuracy (%) on the test split:", ""] + accuracy_table(entries)
        fs = fewshot_table(entries)
        if fs:
            lines += ["", "Few-shot accuracy (%):", ""] + fs
        lines += ["", "Evaluation time: " + ", ".join(f"{run_label(e)} {e['eval_seconds']:.0f} s" for e in entries), ""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
