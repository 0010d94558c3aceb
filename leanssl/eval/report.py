"""The evaluation report for people: `eval-<data>.md` in the run folder.

One column per feature set — raw pixels, the same architecture randomly initialised, the
pretrained backbone — so every number has its floors beside it, and each row names the protocol
settings it was measured with.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from .knn import KNN_K_SMALL
from .linear import SWEEP_MAX_TRAIN

COLUMNS = (("raw_pixels", "raw pixels"), ("random_init", "{backbone}, random init"), ("ssl", "{backbone}, {method}"))


def report_name(data: str, labels_per_class: int | None = None, fraction: float | None = None) -> str:
    """`fashion-mnist` -> eval-fashion-mnist.md, `npz:/x/tiny.npz` -> eval-npz-tiny.md, plus the label subset."""
    kind, _, path = data.partition(":")
    name = kind + (f"-{Path(path.rstrip('/')).stem}" if path else "")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/")) or "data"
    if labels_per_class is not None:
        name += f"-{labels_per_class}perclass"
    if fraction is not None:
        name += f"-f{fraction:g}"
    return f"eval-{name}.md"


def report_path(run_dir, data: str, labels_per_class=None, fraction=None) -> Path:
    return Path(run_dir) / report_name(data, labels_per_class, fraction)


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _columns(res: dict) -> list[tuple[str, str, dict]]:
    sets = {"ssl": res, **res.get("baselines", {})}
    return [(key, title.format(**res), sets[key]) for key, title in COLUMNS if key in sets]


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def _linear(r: dict) -> str:
    return "–" if r.get("linear_top1") is None else f"{_pct(r['linear_top1'])} (C={r['linear_C']:.3g})"


def _cell(key: str | None, low: str | None = None):
    """A column's cell: accuracy `key` (None: the linear probe with its C), of the low-label subset `low` if given."""
    def cell(r: dict) -> str:
        if low is not None:
            r = r.get("lowlabel", {}).get(low, {})
        return _linear(r) if key is None else _pct(r.get(key))
    return cell


def _accuracy_rows(res: dict, cols) -> list[list[str]]:
    s, ft = res["settings"], res["settings"]["finetune"]
    cs = s["linear_C"]
    rows = []

    def row(name, setting, cell):
        cells = [cell(r) for _, _, r in cols]
        if any(c != "–" for c in cells):
            rows.append([name, setting] + cells)

    row("kNN", f"cosine, {_k_text(s['knn_k'], res)}, T={s['knn_t']}, weighted votes", _cell("knn_top1"))
    row("kNN", f"{_k_text(KNN_K_SMALL, res)}, T={s['knn_t']}", _cell("knn20_top1"))
    row("linear probe", f"logistic regression ({res.get('linear_solver', s['linear_solver'])}), C of {cs['values']} "
        f"log-spaced in {cs['min']:.0e}..{cs['max']:.0e} chosen on a {s['val_fraction']:.0%} validation split of train "
        f"(its probes fitted on at most {SWEEP_MAX_TRAIN:,} of the rest), refit on all of train; standardised features",
        _cell(None))
    row("fine-tune", f"{ft['epochs']:g} epochs ({res.get('finetune_steps')} steps), batch {res.get('finetune_batch_size')}, "
        f"SGD-Nesterov lr {ft['lr']:g} cosine, wd {ft['weight_decay']:g}; crop {ft['crop_scale'][0]:g}–"
        f"{ft['crop_scale'][1]:g} + flip; BN in train mode", _cell("finetune_top1"))
    row("fine-tune, linear warm-up", "head from the linear probe (frozen backbone, BN frozen), then as above",
        _cell("finetune_warmup_top1"))
    for low, entry in res.get("lowlabel", {}).items():
        what = f"{entry['labels']} labels, class-balanced, seed {res['seed']}"
        row(f"{low} labels: linear", f"{what}; probe as above", _cell(None, low))
        row(f"{low} labels: fine-tune", f"{what}; {entry.get('finetune_steps')} steps, as above", _cell("finetune_top1", low))
        row(f"{low} labels: fine-tune, warm-up", f"{what}; head from that probe", _cell("finetune_warmup_top1", low))
    return rows


def _fewshot_lines(res: dict, cols) -> list[str]:
    if "fewshot" not in res:
        return []
    f = res["settings"]["fewshot"]
    lines = ["", f"Few-shot: {f['episodes']} episodes per setting, support images from the training split and "
                 f"{f['queries']} query images per class (fewer if a class has fewer) from the test split, episode seed "
                 f"{f['seed']} (the same episodes for every column). Nearest centroid: cosine to the class mean of "
                 f"L2-normalised features; logistic: C={f['c']:g} on L2-normalised features. Cells: mean ± 95% interval "
                 f"/ minimum / mean of the worst 10% of episodes, in %.", ""]
    rows = []
    for setting, entry in res["fewshot"].items():
        if "skipped" in entry:
            rows.append([setting, "–"] + ["skipped: " + entry["skipped"]] * len(cols))
            continue
        for clf, name in (("nearest_centroid", "nearest centroid"), ("logistic", "logistic")):
            cells = []
            for _, _, r in cols:
                st = r.get("fewshot", {}).get(setting, {}).get(clf)
                cells.append("–" if st is None else
                             f"{100 * st['mean']:.1f} ± {100 * st['ci95']:.1f} / {100 * st['min']:.0f} / {100 * st['worst10']:.1f}")
            rows.append([setting, name] + cells)
    return lines + _table(["episodes", "classifier"] + [title for _, title, _ in cols], rows)


def _k_text(k: int, res: dict) -> str:
    """k as used: at most the number of labelled training images."""
    n = res["train_images"]
    return f"k={k}" if k <= n else f"k={n} ({k} asked; capped at the {n} labelled images)"


def incomplete_note(res: dict) -> str | None:
    """What an evaluation of an unfinished run scored, or None for a finished run (or unknown state)."""
    if res.get("run_complete") is not False:
        return None
    if res.get("run_budget") is not None:  # a --budget run's epochs are a cap, not a plan: say the time
        where = (f"{res.get('run_seconds') or 0:.0f} s of its {res['run_budget']:g} s budget "
                 f"({res.get('run_epoch')} epochs finished)")
    else:
        where = f"epoch {res.get('run_epoch')} of {res.get('run_epochs')}"
    return (f"incomplete run: scored the checkpoint after {where} "
            f"(training is still running or was stopped; continue it with train --resume)")


def _quantized_lines(res: dict) -> list[str]:
    if "quantized" not in res:
        return []
    rows = [["fp32", _pct(res.get("knn_top1")), _linear(res), "the backbone as trained"]]
    rows += [[f"{bits}-bit", _pct(r.get("knn_top1")), _linear(r), r["how"]] for bits, r in res["quantized"].items()]
    return ["", f"Quantised `{res['backbone']}` ({res['method']}): weights per output channel, activations per tensor, "
                "calibrated on at most 512 training images; protocols as above.", ""] + _table(
        ["weights/activations", "kNN", "linear probe", "how"], rows)


def _fewshot_headline(r: dict, setting: str):
    entry = r.get("fewshot", {}).get(setting, {})
    return entry.get("nearest_centroid", {}).get("mean")


def _headlines(res: dict) -> list[tuple[str, object]]:
    """(name, getter) of the numbers the floor line compares: kNN, linear probe, and one few-shot setting."""
    out = [("kNN", lambda r: r.get("knn_top1")), ("linear probe", lambda r: r.get("linear_top1"))]
    settings = [k for k, v in res.get("fewshot", {}).items() if "skipped" not in v]
    if settings:  # the middle K: 1-shot is mostly noise, the largest K is closest to the linear probe
        mid = settings[len(settings) // 2]
        out.append((f"few-shot ({mid}, centroid)", lambda r, m=mid: _fewshot_headline(r, m)))
    return out


def _versus(diff: float, label: str) -> str:
    return f"{abs(100 * diff):.1f} points {'above' if diff >= 0 else 'below'} {label}"


def floor_line(res: dict) -> str | None:
    """One line on what the numbers mean against the floors, e.g. "kNN: 2.1 points above raw pixels, ..."."""
    floors = res.get("baselines")
    if not floors:
        return None
    parts, below = [], []
    for name, get in _headlines(res):
        v = get(res)
        if v is None:
            continue
        diffs = [(v - f, label) for key, label in (("raw_pixels", "raw pixels"), ("random_init", "random init"))
                 if (f := get(floors.get(key, {}))) is not None]
        if diffs:
            parts.append(f"{name} {', '.join(_versus(d, label) for d, label in diffs)}")
            if any(d < 0 for d, _ in diffs):
                below.append(name)
    if not parts:
        return None
    verdict = f"below a floor on {', '.join(below)}" if below else "above both floors on each"
    return f"Against the floors: {'; '.join(parts)} — {verdict}."


def format_report(res: dict) -> str:
    cols = _columns(res)
    labels = ("all labelled training images" if res["labels_per_class"] is None and res["label_fraction"] is None else
              f"{res['labels_per_class']} per class" if res["labels_per_class"] is not None else
              f"a class-stratified fraction {res['label_fraction']:g}")
    if res["transfer"]:
        where = (f"**Transfer**: evaluated on `{res['data']}`, pretrained on `{res['pretrain_data']}`; images decoded at the "
                 f"backbone's {res['resolution']} px, {res['data_channels']} → {res['model_channels']} channel(s).")
    else:
        where = f"In-domain: evaluated on the labelled splits of the pretraining data `{res['data']}`."
    lines = [f"# leanssl eval: `{res['backbone']}` ({res['method']}) on `{res['data']}`", "",
             f"- Run: `{res['run']}`, backbone `{res['backbone']}` pretrained with `{res['method']}` on `{res['pretrain_data']}`.",
             f"- {where}",
             f"- Labels: {labels} ({res['train_images']} images, {res['num_classes']} classes); test split: {res['test_images']} "
             f"images. Every number is top-1 accuracy on the test split; nothing is tuned on it.",
             f"- Device {res['device']}, seed {res['seed']}, {time.strftime('%Y-%m-%d %H:%M')}.",
             ""]
    if incomplete_note(res):
        lines.insert(3, f"- **{incomplete_note(res).capitalize()}.**")
    if "baselines" not in res:
        lines += ["No baselines in this report (evaluated with --no-baselines).", ""]
    elif res.get("floors_cached"):
        lines += ["The raw-pixel and random-init columns come from the floor cache (same data, settings and seed).", ""]
    lines += _table(["protocol", "settings"] + [title for _, title, _ in cols], _accuracy_rows(res, cols))
    if floor_line(res):
        lines += ["", floor_line(res)]
    lines += _fewshot_lines(res, cols)
    lines += _quantized_lines(res)
    if time_line(res):
        lines += ["", time_line(res)]
    return "\n".join(lines) + "\n"


TIMED = (("features", "feature extraction"), ("knn", "kNN"), ("linear", "linear probe"), ("finetune", "fine-tuning"),
         ("fewshot", "few-shot"), ("lowlabel", "low-label"))


def time_line(res: dict) -> str | None:
    """Where this evaluation's time went, per protocol, summed over the columns computed (not those from the cache)."""
    sec = res.get("seconds") or {}
    parts = [f"{name} {sec[key]:.0f} s" for key, name in TIMED if key in sec]
    if not parts:
        return None
    cached = " (floors from the cache: not recomputed)" if res.get("floors_cached") else ""
    return f"Time: {', '.join(parts)}; {sum(sec.values()):.0f} s in all{cached}."


def write_report(path: Path, res: dict) -> None:
    Path(path).write_text(format_report(res))
