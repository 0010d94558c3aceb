"""The bench report: a markdown table, PNG plots, and which of the paper's claims held on this data.

    OUT/report.md
    OUT/plots/accuracy_vs_cost.png      kNN top-1 against wall-clock and against training FLOPs, Pareto front per fraction
    OUT/plots/accuracy_vs_fraction.png  kNN and linear top-1 against the pretraining data fraction, per method
    OUT/plots/accuracy_vs_time.png      kNN (curve subsample) during training, per cell group

The claims (Cao & Wu, arXiv 2404.19289), checked only where the grid holds the cells to check them:
less training overhead than multi-view methods; accuracy at least theirs at equal epochs and at equal
wall-clock; an advantage that grows as the data shrinks and as the model shrinks.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from ..methods import METHODS

PLOTS = ("accuracy_vs_cost", "accuracy_vs_fraction", "accuracy_vs_time")


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def fewshot_mean(ev: dict, classifier: str = "logistic") -> float | None:
    return next((v[classifier]["mean"] for v in ev.get("fewshot", {}).values() if classifier in v), None)


def fewshot_setting(ev: dict) -> str:
    return next((k for k, v in ev.get("fewshot", {}).items() if "logistic" in v), "few-shot")


def _length(r: dict) -> str:
    return f"{r['budget']:g} s" if r.get("budget") is not None else f"{r['epochs']} epoch{'s' * (r['epochs'] != 1)}"


def _name(r: dict) -> str:
    """A cell's name in tables and plots: its variant's (an ablation row), else its method's."""
    return r.get("variant") or r["method"]


def _multi_view(names) -> list[str]:
    """The multi-view methods among `names`, in METHODS' order (a method this version lacks counts as not)."""
    return [m for m, cls in METHODS.items() if m in names and cls.views > 1]


def _group(r: dict) -> tuple:
    """Cells trained alike: same backbone, data fraction and training length."""
    return (r["backbone"], r["fraction"], r["mode"], r.get("budget") or r.get("epochs"))


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(x) + " |" for x in rows]


def results_table(cells: list[dict]) -> list[str]:
    rows = []
    order = sorted(cells, key=lambda r: (r["mode"], r["backbone"], r["fraction"], r.get("budget") or r["epochs"]))
    for r in order:
        ev = r["eval"]
        best = r.get("best_epoch_images_per_s")
        load = r.get("loadavg_before"), r.get("loadavg_after")
        rows.append([f"`{_name(r)}`", r["backbone"], f"{r['fraction']:g} ({r['train_images']})", _length(r),
                     f"{r['epochs_done']} / {r['steps_done']}", f"{r['train_seconds']:.0f}",
                     f"{r['images_per_s'] or 0:.0f}" + (f" ({best:.0f})" if best else ""),
                     f"{r['peak_mem_mb']:.0f}", f"{r['flops_per_image'] / 1e9:.3f}",
                     f"{r['flops_per_image'] * r['images_seen'] / 1e12:.3g}",
                     _pct(ev["knn_top1"]), _pct(ev["linear_top1"]), _pct(fewshot_mean(ev)),
                     "–" if None in load else f"{load[0]:.1f}→{load[1]:.1f}"])
    head = ["method", "backbone", "fraction (images)", "training", "epochs / steps", "train s",
            "images/s (best epoch)", "peak MB", "GFLOPs/image", "total TFLOPs", "kNN %", "linear %",
            f"{fewshot_setting(cells[0]['eval']) if cells else 'few-shot'} %", "load avg"]
    return _table(head, rows)


def floors_table(floors: dict) -> list[str]:
    if not floors:
        return []
    rows = [[name, _pct(ev["knn_top1"]), _pct(ev["linear_top1"]), _pct(fewshot_mean(ev))] for name, ev in floors.items()]
    return _table(["features", "kNN %", "linear %", "few-shot %"], rows)


# ---------------------------------------------------------------------------------------------
# the paper's claims


# Throughput differences below this are not called either way: on a shared machine, repeated short runs of
# one cell differ about this much (a cell's own epochs, when it has several, may show more: see _rate_noise).
RATE_NOISE = 0.10


def _verdict(outcomes: list) -> str:
    """One verdict from comparisons that held (True), did not (False) or were within the noise (None)."""
    total, held, failed = len(outcomes), outcomes.count(True), outcomes.count(False)
    unsure = total - held - failed
    if total == 0:
        return "not tested"
    if held == total:
        return "held"
    if failed == total:
        return "did not hold"
    if unsure == total:
        return "inconclusive (every difference within the noise)"
    if unsure == 0:
        return f"mixed ({held} of {total})"
    return f"mixed ({held} held, {failed} did not, {unsure} within the noise, of {total})"


def _call(diff: float, margin: float):
    """True / False when `diff` is beyond the noise `margin` either way, None (inconclusive) within it."""
    return True if diff > margin else (False if diff < -margin else None)


def _rate_noise(*cells: dict) -> float:
    """Relative noise of measured images/s: the spread between a cell's mean and fastest epoch, at least RATE_NOISE."""
    spreads = [r["best_epoch_images_per_s"] / r["images_per_s"] - 1 for r in cells
               if r.get("best_epoch_images_per_s") and r.get("images_per_s")]
    return max([RATE_NOISE] + spreads)


def _acc_variance(r: dict, key: str) -> float:
    """Binomial variance of a top-1 accuracy on the cell's test images (0 when their number is unknown)."""
    n, p = r["eval"].get("eval_test_images"), r["eval"][key]
    return p * (1 - p) / n if n else 0.0


def _pairs(cells: list[dict], mode: str | None = None):
    """(essl result, multi-view result) for every group holding both."""
    groups = defaultdict(dict)
    for r in cells:
        groups[_group(r)][_name(r)] = r
    for g, by in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if "essl" in by and (mode is None or g[2] == mode):
            for m in _multi_view(by):
                yield by["essl"], by[m]


def _where(r: dict) -> str:
    return f"{r['backbone']}, fraction {r['fraction']:g}, {_length(r)}"


def claim_overhead(cells: list[dict]) -> tuple[str, list[str]]:
    pairs = list(_pairs(cells))
    lines, outcomes = [], []
    for e, m in pairs:
        f_ratio = m["flops_per_image"] / e["flops_per_image"]  # counted: no noise
        s_ratio = (e["images_per_s"] or 0) / max(m["images_per_s"] or 1e-9, 1e-9)
        noise = _rate_noise(e, m)
        speed = _call(s_ratio - 1, noise)
        ok = False if f_ratio <= 1 or speed is False else speed
        outcomes.append(ok)
        lines.append(f"  - {_where(e)}: `{m['method']}` needs {f_ratio:.2f}× essl's FLOPs per image; essl trains "
                     f"{s_ratio:.2f}× as many images/s ({e['images_per_s'] or 0:.0f} vs {m['images_per_s'] or 0:.0f})"
                     + ("" if ok else " — **not less overhead here**" if ok is False else
                        f" — images/s within the ±{100 * noise:.0f}% noise of one run per cell: inconclusive"))
    return _verdict(outcomes), lines


def claim_accuracy(cells: list[dict], mode: str) -> tuple[str, list[str]]:
    pairs = list(_pairs(cells, mode))
    lines, outcomes = [], []
    for e, m in pairs:
        calls, text = [], []
        for key, name in (("knn_top1", "kNN"), ("linear_top1", "linear")):
            diff = e["eval"][key] - m["eval"][key]
            margin = 2 * (_acc_variance(e, key) + _acc_variance(m, key)) ** 0.5  # about a 95% interval
            calls.append(_call(diff, margin))
            text.append(f"{100 * diff:+.1f} {name}" + (f" (±{100 * margin:.1f})" if margin else ""))
        ok = False if False in calls else (None if None in calls else True)
        outcomes.append(ok)
        lines.append(f"  - {_where(e)}: essl − `{m['method']}` = {', '.join(text)}"
                     + ("" if ok else " — **essl lower here**" if ok is False else " — within the noise: inconclusive"))
    return _verdict(outcomes), lines


def _gaps(cells: list[dict], vary: str) -> dict:
    """essl's kNN minus the best multi-view method's, per group, grouped by everything but `vary`."""
    out = defaultdict(dict)
    by_group = defaultdict(dict)
    for r in cells:
        by_group[_group(r)][_name(r)] = r
    for g, by in by_group.items():
        if "essl" not in by or not _multi_view(by):
            continue
        backbone, fraction, mode, length = g
        rest = (mode, length) + ((backbone,) if vary == "fraction" else (fraction,))
        x = fraction if vary == "fraction" else by["essl"]["flops_per_image"]
        best = max((by[m] for m in _multi_view(by)), key=lambda r: r["eval"]["knn_top1"])
        var = _acc_variance(by["essl"], "knn_top1") + _acc_variance(best, "knn_top1")
        out[rest][x] = (by["essl"]["eval"]["knn_top1"] - best["eval"]["knn_top1"], backbone, var)
    return {k: v for k, v in out.items() if len(v) >= 2}


def claim_grows(cells: list[dict], vary: str) -> tuple[str, list[str]]:
    """The gap is larger at the smallest fraction (or cheapest backbone) than at the largest."""
    lines, outcomes = [], []
    for rest, series in sorted(_gaps(cells, vary).items(), key=str):
        xs = sorted(series)
        (small, _, v_small), (large, _, v_large) = series[xs[0]], series[xs[-1]]
        outcomes.append(_call(small - large, 2 * (v_small + v_large) ** 0.5))
        if vary == "fraction":
            where = f"{rest[2]}, {rest[1]:g} s" if rest[0] == "budget" else f"{rest[2]}, {rest[1]} epochs"
            pts = ", ".join(f"{x:g}: {100 * series[x][0]:+.1f}" for x in xs)
            lines.append(f"  - {where}: essl − best multi-view kNN by fraction: {pts}")
        else:
            where = f"fraction {rest[2]:g}, " + (f"{rest[1]:g} s" if rest[0] == "budget" else f"{rest[1]} epochs")
            pts = ", ".join(f"{series[x][1]}: {100 * series[x][0]:+.1f}" for x in xs)
            lines.append(f"  - {where}: essl − best multi-view kNN, backbones from smallest to largest "
                         f"(by essl's FLOPs/image): {pts}")
    return _verdict(outcomes), lines


def claims_section(cells: list[dict]) -> list[str]:
    checks = [
        ("essl has less training overhead than multi-view methods (fewer FLOPs per image and more images/s, "
         "same backbone, data and training length)", claim_overhead(cells)),
        ("essl's accuracy is at least the multi-view methods' at equal epochs (kNN and linear)",
         claim_accuracy(cells, "epochs")),
        ("essl's accuracy is at least the multi-view methods' at equal wall-clock (kNN and linear)",
         claim_accuracy(cells, "budget")),
        ("essl's kNN advantage over the best multi-view method grows as the data shrinks "
         "(larger at the smallest fraction than at the largest)", claim_grows(cells, "fraction")),
        ("essl's kNN advantage grows as the model shrinks (larger on the smallest backbone than the largest)",
         claim_grows(cells, "backbone")),
    ]
    lines = ["## The paper's claims on this data", "",
             "Cao & Wu (arXiv 2404.19289) claim that single-branch essl trains with less overhead than two-branch "
             "methods at equal or better accuracy, and that its advantage grows as data and model shrink. "
             "Checked here only on the cells this grid holds, at these (short) training lengths; "
             "`held` means in every comparison the grid allows. A difference is called only beyond its noise: "
             "accuracies beyond twice the binomial standard error on the test images (±, about a 95% interval), "
             f"images/s beyond ±{100 * RATE_NOISE:.0f}% (or a cell's own epoch-to-epoch spread, if larger): one run "
             "per cell on a shared machine varies that much. Within it a comparison is *inconclusive*; "
             "repeating cells (other seeds) would narrow it.", ""]
    for text, (verdict, detail) in checks:
        lines.append(f"- **{verdict}**: {text}." + ("" if detail else " The grid holds no cells to compare."))
        lines += detail
    return lines


# ---------------------------------------------------------------------------------------------
# plots


def _style(cells: list[dict]):
    methods = list(dict.fromkeys(_name(r) for r in cells))
    backbones = list(dict.fromkeys(r["backbone"] for r in cells))
    import matplotlib

    colours = matplotlib.colormaps["tab10"]
    return ({m: colours(i % 10) for i, m in enumerate(methods)},
            {b: "osD^vP*X"[i % 8] for i, b in enumerate(backbones)})


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both cost (lower) and accuracy (higher), by increasing cost."""
    front, best = [], float("-inf")
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((cost, acc))
            best = acc
    return front


def _grid(plt, n: int, cols: int, w: float = 4.2, h: float = 3.4, rows_of: int | None = None):
    cols = max(1, min(cols, n))
    rows = rows_of or -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(w * cols, 7.5), h * rows + 0.6), squeeze=False)  # + the titles
    return fig, axes


def _log_x(ax, values) -> None:
    """A log x axis when the values span more than a decade (with labelled decades only), else a linear one."""
    from matplotlib.ticker import NullFormatter

    values = [v for v in values if v > 0]
    if values and max(values) > 10 * min(values):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())


def _floor_lines(ax, floors: dict, backbones, key: str = "knn_top1", ls: str = "-") -> None:
    """The floors a panel's cells should beat: raw pixels and its backbones at random init, as labelled lines."""
    for name, ev in floors.items():
        if ev.get(key) is None or not (name == "raw pixels" or name.removeprefix("random ") in backbones):
            continue
        y = 100 * ev[key]
        ax.axhline(y, color="dimgrey" if name == "raw pixels" else "silver", lw=1, ls=ls, zorder=1)
        ax.annotate(f"{name} ({key.split('_')[0]})", (0.01, y), xycoords=("axes fraction", "data"), fontsize=6.5,
                    color="dimgrey", va="bottom")


def _zero_x(ax, values) -> str:
    """Start a linear cost axis at zero (a narrow range would make small differences look large); say when log."""
    _log_x(ax, values)
    if ax.get_xscale() == "log":
        return " (log: the costs span more than a decade)"
    ax.set_xlim(left=0, right=max(values, default=1) * 1.08)
    return ""


def _finish(fig, plt, path: Path, title: str, colours, markers=None) -> None:
    """Title, one legend for the whole figure (methods, and backbones by marker), save, close."""
    from matplotlib.lines import Line2D

    fig.suptitle(title, fontsize=10)
    handles = [Line2D([], [], color=c, marker="o", linestyle="-", label=m) for m, c in colours.items()]
    if markers and len(markers) > 1:
        handles += [Line2D([], [], color="grey", marker=k, linestyle="", label=b) for b, k in markers.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))  # (tight_layout leaves the suptitle its room)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost(cells: list[dict], path: Path, plt, floors: dict | None = None) -> None:
    colours, markers = _style(cells)
    fractions = sorted({r["fraction"] for r in cells})
    costs = [("train_seconds", "training wall-clock (s)", 1.0),
             ("total_flops", "training FLOPs (TFLOPs, counted)", 1e12)]
    fig, axes = _grid(plt, len(fractions) * 2, len(fractions), rows_of=2)
    for col, f in enumerate(fractions):
        here = [r for r in cells if r["fraction"] == f]
        for row, (key, label, scale) in enumerate(costs):
            ax = axes[row][col]
            pts = []
            for r in here:
                cost = r["train_seconds"] if key == "train_seconds" else r["flops_per_image"] * r["images_seen"]
                x, y = cost / scale, 100 * r["eval"]["knn_top1"]
                pts.append((x, y))
                ax.scatter(x, y, color=colours[_name(r)], marker=markers[r["backbone"]], s=36, zorder=3,
                           facecolors="none" if r["mode"] == "budget" else colours[_name(r)])
            front = _pareto(pts)
            ax.plot([p[0] for p in front], [p[1] for p in front], color="black", lw=1, ls="--", drawstyle="steps-post",
                    zorder=2)
            ax.scatter([p[0] for p in front], [p[1] for p in front], s=110, facecolors="none", edgecolors="black",
                       lw=0.8, zorder=2)
            _floor_lines(ax, floors or {}, {r["backbone"] for r in here})
            ax.set_xlabel(label + _zero_x(ax, [p[0] for p in pts]), fontsize=8)
            ax.set_ylabel("kNN top-1 (%)", fontsize=8)
            ax.set_title(f"data fraction {f:g}", fontsize=9)
            ax.grid(alpha=0.3)
    _finish(fig, plt, path, "Accuracy vs cost\nfilled: equal epochs, open: equal wall-clock; ringed and dashed: "
            "Pareto front\ngrey lines: floors (raw pixels, random init)", colours, markers)


def _fraction_groups(cells: list[dict]) -> dict:
    """Cells trained alike but for the data fraction, where there are at least two fractions to draw a line."""
    groups = defaultdict(list)
    for r in cells:
        groups[(r["backbone"], r["mode"], _length(r))].append(r)
    return {g: rs for g, rs in groups.items() if len({r["fraction"] for r in rs}) >= 2}


def plot_fraction(cells: list[dict], path: Path, plt, floors: dict | None = None) -> None:
    colours, _ = _style(cells)
    groups = _fraction_groups(cells)
    keys = sorted(groups, key=lambda g: (-len({r["fraction"] for r in groups[g]}), g))
    fig, axes = _grid(plt, len(keys), 3)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, g in zip(axes.flat, keys):
        by_method = defaultdict(list)
        for r in groups[g]:
            by_method[_name(r)].append(r)
        for m, rs in by_method.items():
            rs.sort(key=lambda r: r["fraction"])
            xs = [r["fraction"] for r in rs]
            ax.plot(xs, [100 * r["eval"]["knn_top1"] for r in rs], color=colours[m], marker="o", label=f"{m} kNN")
            ax.plot(xs, [100 * r["eval"]["linear_top1"] for r in rs], color=colours[m], marker="s", ls=":",
                    label=f"{m} linear")
        _floor_lines(ax, floors or {}, {g[0]})
        _floor_lines(ax, floors or {}, {g[0]}, "linear_top1", ":")
        _log_x(ax, [r["fraction"] for r in groups[g]])
        ax.set_xlabel("pretraining data fraction", fontsize=8)
        ax.set_ylabel("top-1 (%)", fontsize=8)
        ax.set_title(f"{g[0]}, {g[2]}", fontsize=9)
        ax.grid(alpha=0.3)
    _finish(fig, plt, path, "Accuracy vs pretraining data fraction\nsolid: kNN, dotted: linear probe\n"
            "grey: floors (raw pixels, random init)", colours)


def plot_time(cells: list[dict], path: Path, plt, floors: dict | None = None) -> None:
    colours, _ = _style(cells)
    groups = defaultdict(list)
    for r in cells:
        if r.get("curve"):
            groups[_group(r)].append(r)
    keys = sorted(groups, key=str)
    fig, axes = _grid(plt, max(1, len(keys)), 4)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, g in zip(axes.flat, keys):
        for r in groups[g]:
            pts = r["curve"]
            ax.plot([p["seconds"] for p in pts], [100 * p["knn_top1"] for p in pts], color=colours[_name(r)],
                    marker="o", ms=3, label=_name(r))
        r0 = groups[g][0]
        ax.set_xlim(left=0)
        ax.set_title(f"{r0['backbone']}, fraction {r0['fraction']:g}, {_length(r0)}", fontsize=9)
        ax.set_xlabel("training seconds", fontsize=8)
        ax.set_ylabel("kNN top-1 (%), curve subsample", fontsize=8)
        ax.grid(alpha=0.3)
    _finish(fig, plt, path, "Accuracy during training (kNN on a fixed subsample)\nfloors: see the other plots "
            "(they are scored on the full evaluation set)", colours)


def unfillable_plots(cells: list[dict]) -> dict[str, str]:
    """The plots this grid cannot fill, with why (they are not drawn)."""
    why = {}
    if not _fraction_groups(cells):
        why["accuracy_vs_fraction"] = "no backbone and training length was run at two or more data fractions"
    if not any(r.get("curve") for r in cells):
        why["accuracy_vs_time"] = "no cell has an accuracy-over-time curve"
    return why


def write_plots(cells: list[dict], folder: Path, floors: dict | None = None) -> list[Path]:
    """The PNGs the grid can fill; [] when matplotlib is missing (the report says so)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    paths, skip = [], unfillable_plots(cells)
    for name, fn in zip(PLOTS, (plot_cost, plot_fraction, plot_time)):
        path = folder / f"{name}.png"
        if name in skip:
            path.unlink(missing_ok=True)  # a stale picture from an earlier grid would contradict the report
            continue
        fn(cells, path, plt, floors)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------


def format_report(results: dict, plots: list[Path]) -> str:
    b, cells = results["bench"], results["cells"]
    m, ev = b["machine"], b["eval"]
    commits = sorted({r.get("commit", "") for r in cells} - {""})
    sizes = cells[0]["eval"] if cells else {}
    lines = [f"# leanssl bench: `{b['data']}`, {b['profile']} profile", "",
             f"- Command: `{b['command']}`" if b.get("command") else "- Command: (Python API)",
             f"- Machine: {m['cpu']} ({m['cpu_count']} logical cores, {m['torch_threads']} torch threads)"
             + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU") + f"; torch {m['torch']}, Python {m['python']}.",
             f"- Code: commit {m['commit']}; report written {time.strftime('%Y-%m-%d %H:%M')}, "
             f"cells finished {min((r['finished_at'] for r in cells), default='–')} to "
             f"{max((r['finished_at'] for r in cells), default='–')}.",
             f"- {len(cells)} of {b['cells_in_grid']} cells finished; batch {b['batch_size']}, seed {b['seed']}.", ""]
    if results.get("failed"):
        lines += ["**Unfinished or failed:** " + "; ".join(f"`{f['key']}` ({f['error']})" for f in results["failed"]), ""]
    lines += ["## How it was measured", "",
              "- Each cell is one `leanssl train` run in its own process (same loop, data path and defaults as the "
              "command), then scored on the same labelled images as every other cell.",
              "- **train s** is the loop's training time (essl's feature calibration included, process start and "
              "evaluation not); **images/s** = images seen / train s, with the fastest epoch's rate in brackets "
              "(on a shared machine, the epoch least slowed by other work; see **load avg**, 1-minute load before → "
              "after training).",
              "- **peak MB**: the cell process's peak resident memory (CPU) or PyTorch's max allocated GPU memory.",
              "- **GFLOPs/image**: one training step (forward, backward, bank/queue/teacher update) counted by "
              "`torch.utils.flop_counter.FlopCounterMode` at the run's batch size, divided by the batch; matrix ops "
              "only (elementwise ops are not counted). **total TFLOPs** = that × images seen.",
              f"- **kNN**: cosine, k={ev['knn_k']}, T={ev['knn_t']}, weighted votes. **linear**: logistic regression on "
              f"frozen standardised features, C chosen among {ev['linear_c_values']} log-spaced values in 1e-5..1e6 on "
              "a 20% validation split of the labelled images (`leanssl eval` sweeps 45), refit. **few-shot**: "
              f"{ev['fewshot_ways']}-way {', '.join(map(str, ev['fewshot_shots']))}-shot, logistic classifier, mean of "
              f"{ev['fewshot_episodes']} episodes (`leanssl eval` runs 600: fewer here to keep the bench cheap).",
              f"- Labelled images: {sizes.get('eval_train_images', '–')} training (labels) and "
              f"{sizes.get('eval_test_images', '–')} test images, seeded class-stratified subsets, the same for every "
              "cell and independent of the pretraining fraction.",
              f"- Accuracy over time: kNN on a fixed subsample ({sizes.get('curve_train_images', '–')} labelled / "
              f"{sizes.get('curve_test_images', '–')} test images) of the backbone at the start, after "
              f"{', '.join(f'{100 * p:g}%' for p in ev['curve_points'])} of the steps (under a time budget: of the "
              "steps the budget was estimated to hold) and at the end.", ""]
    if commits:
        lines += [f"Cells ran at commit(s) {', '.join(commits)}.", ""]
    lines += ["## Results", ""] + results_table(cells) + [""]
    if results.get("floors"):
        lines += ["Floors, on the same labelled images: raw pixels (centred) and each backbone at its random "
                  "initialisation (the runs' seed).", ""] + floors_table(results["floors"]) + [""]
    lines += claims_section(cells) + [""]
    lines += ["## Plots", ""]
    if plots:
        lines += [f"![{p.stem.replace('_', ' ')}](plots/{p.name})" for p in plots]
        lines += [f"- `{name}` not drawn: {why}." for name, why in unfillable_plots(cells).items()]
    else:
        lines.append("Plots skipped: matplotlib is not installed (`pip install 'leanssl[plots]'`).")
    return "\n".join(lines) + "\n"


def write_report(out: Path, results: dict) -> dict:
    out = Path(out)
    plots = write_plots(results["cells"], out / "plots", results.get("floors")) if results["cells"] else []
    path = out / "report.md"
    path.write_text(format_report(results, plots))
    return {"report": path, "plots": plots}
