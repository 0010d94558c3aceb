"""Commands beyond train and eval: export, embed, map, select, bench (registered by cli.build_parser)."""

from __future__ import annotations

import argparse

from .cli_args import parse_duration


def _add_data_args(p: argparse.ArgumentParser, split_default: str) -> None:
    p.add_argument("run_dir", help="run folder (or an exported .safetensors file / timm folder)")
    p.add_argument("--data", required=True, help="data SPEC (as for train)")
    p.add_argument("--split", default=split_default,
                   help=f"all (pretrain then test), pretrain (train + unlabeled), train (labelled) or test "
                        f"(default {split_default})")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--batch-size", type=int, default=512, help="images per forward pass (default 512; memory only)")
    p.add_argument("--cache-dir", default=None, help="decoded-data cache (default $LEANSSL_CACHE or ~/.cache/leanssl)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _embed(a: argparse.Namespace):
    import sys

    from .data.sources import held_out_test_split
    from .embeddings import embed

    if a.split == "pretrain" and held_out_test_split(a.data):
        print(f"leanssl: note: {a.data} has no test split, so 20% of each class is held out as one and --split "
              f"pretrain leaves it out; --split all includes every image", file=sys.stderr)
    return embed(a.run_dir, a.data, a.split, a.device, a.batch_size, a.cache_dir, progress=not a.no_progress)


def cmd_export(a: argparse.Namespace) -> None:
    import json

    from .export import export_backbone

    meta_path = export_backbone(a.run_dir, a.format, a.out, a.quantize, a.calibration_data, a.cache_dir)
    meta = json.loads(meta_path.read_text())
    print(f"exported {meta['architecture']} ({a.format}) -> {a.out}; metadata {meta_path}\nload with: {meta['load']}")


def cmd_embed(a: argparse.Namespace) -> None:
    emb = _embed(a)
    npy, index = emb.save(a.out)
    print(f"{len(emb)} embeddings of dimension {emb.features.shape[1]} -> {npy} (index: {index})")


def cmd_map(a: argparse.Namespace) -> None:
    from pathlib import Path

    from .errors import LeansslError
    from .export import read_metadata
    from .viz import draw_map

    if Path(a.out).suffix.lower() in (".png", ".jpg", ".jpeg", ".csv"):
        raise LeansslError(f"map --out {a.out}: --out is a folder (map.png, map.csv and neighbours.png go into it); "
                           f"try --out {Path(a.out).with_suffix('')}")
    emb = _embed(a)
    meta = read_metadata(a.run_dir)
    paths = draw_map(emb, a.out, f"{meta['method']} {meta['architecture']} on {a.data} ({a.split})", a.max_points,
                     a.queries, a.neighbours, a.seed)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def cmd_select(a: argparse.Namespace) -> None:
    from pathlib import Path

    from .embeddings import write_csv
    from .selection import select

    from .errors import LeansslError

    if a.count is None:
        raise LeansslError("select needs --count K: how many images to label")
    emb = _embed(a)
    picks = select(emb.features, a.count, seed=a.seed)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out, [{"rank": i, **rec} for i, rec in enumerate(emb.rows(picks))])
    print(f"selected {len(picks)} of {len(emb)} images to label -> {out}")


def _bench_command(a: argparse.Namespace) -> str:
    """The command line that reproduces this bench (what was given, in a fixed order)."""
    import shlex

    parts = ["leanssl", "bench", "--data", a.data, "--profile", a.profile]
    for flag in ("methods", "backbones", "fractions", "epochs", "batch_size", "out", "device", "seed", "quantize"):
        value = getattr(a, flag)
        if value is not None and not (flag == "seed" and value == 0) and not (flag == "device" and value == "auto"):
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    if a.budget is not None:
        parts += ["--budget", f"{a.budget:g}s"]
    return shlex.join(parts)


def cmd_bench(a: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from .bench.grid import PROFILES, build_grid, estimate, parse_fractions, parse_list
    from .bench.run import BenchPlan, report_only, run_bench
    from .quantize import parse_bits

    profile = PROFILES[a.profile]
    cells = build_grid(profile, methods=parse_list(a.methods, "methods") if a.methods else None,
                       backbones=parse_list(a.backbones, "backbones") if a.backbones else None,
                       fractions=parse_fractions(a.fractions) if a.fractions else None, epochs=a.epochs, budget=a.budget)
    data_name = a.data.split(":")[0].strip("/").replace("/", "_") or "data"
    plan = BenchPlan(data=a.data, cells=cells, out=Path(a.out or f"runs/bench-{data_name}-{a.profile}"),
                     profile=a.profile, batch_size=a.batch_size or profile.batch_size,
                     eval=replace(profile.eval, quantize=parse_bits(a.quantize)) if a.quantize else profile.eval, seed=a.seed,
                     device=a.device, cache_dir=a.cache_dir, command=_bench_command(a), floors=a.floors)
    if a.dry_run:
        print(f"{len(cells)} cells, batch {plan.batch_size}, results in {plan.out}; time: {estimate(cells, profile)}:")
        for i, c in enumerate(cells, 1):
            print(f"  {i:3d}. {c.label}")
        return 0
    results = report_only(plan) if a.report_only else run_bench(plan)
    return 1 if results["failed"] else 0


class _DeprecatedCount(argparse.Action):
    """`select --budget K`, the old name of --count (train's --budget is a time): still works, with a warning."""

    def __call__(self, parser, namespace, values, option_string=None):
        import sys

        print("leanssl: warning: select --budget is now --count (--budget is a time for train and bench)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_commands(sub) -> None:
    p = sub.add_parser("export", help="write the run's backbone alone, with a metadata file, for use elsewhere")
    p.add_argument("run_dir", help="run folder")
    p.add_argument("--format", default="safetensors",
                   help="safetensors (default), timm (a folder for timm.create_model('local-dir:PATH')), "
                        "torchscript, onnx (needs the export extra: pip install -e '.[export]' in a clone)")
    p.add_argument("--out", required=True, help="output file (a folder for --format timm)")
    p.add_argument("--quantize", type=int, default=None, metavar="BITS",
                   help="with --format onnx: 8 writes an int8 model (onnxruntime static quantisation, per-channel weights)")
    p.add_argument("--calibration-data", default=None, metavar="SPEC",
                   help="images that calibrate --quantize's activation ranges (default: the run's training data)")
    p.add_argument("--cache-dir", default=None, help="decoded-data cache for --calibration-data (default $LEANSSL_CACHE or ~/.cache/leanssl)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("embed", help="embeddings of every image: FILE.npy plus FILE.csv (split, index, label, path)")
    _add_data_args(p, "all")
    p.add_argument("--out", required=True, help="FILE.npy")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("map", help="a 2-D map of the embeddings (map.png) and a nearest-neighbour grid (neighbours.png)")
    _add_data_args(p, "pretrain")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-points", type=int, default=5000, help="seeded random subset drawn on the map")
    p.add_argument("--queries", type=int, default=8, help="rows of the neighbour grid")
    p.add_argument("--neighbours", type=int, default=8, help="neighbours shown per query")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and the queries (default 0)")
    p.set_defaults(func=cmd_map)

    p = sub.add_parser("select", help="choose K images to label, diverse and representative (USL)")
    _add_data_args(p, "pretrain")
    p.add_argument("--count", type=int, default=None, help="(required) number of images to label (K)")
    p.add_argument("--budget", type=int, dest="count", action=_DeprecatedCount, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--out", required=True, help="CSV of the picks (rank, row, split, index, label, class, path)")
    p.set_defaults(func=cmd_select)

    from .bench.grid import PROFILES

    p = sub.add_parser("bench", help="methods x data fractions x backbones: cost and accuracy of each, report, plots",
                       description="Train every cell of the grid in its own process, evaluate it (kNN, linear probe, "
                       "few-shot, accuracy over time), and write results.json, results.csv, report.md and plots/ into "
                       "--out. Rerun the same command to continue a killed bench: finished cells are skipped.")
    p.add_argument("--data", required=True, help="data SPEC with labelled train and test splits (as for train)")
    p.add_argument("--profile", choices=tuple(PROFILES), default="cpu",
                   help="preset grid (default cpu): " + "; ".join(f"{k}: {v.about}" for k, v in PROFILES.items()))
    p.add_argument("--methods", default=None,
                   help="comma-separated methods, or the profile's variants, e.g. the ablation's rows (default: the "
                        "profile's)")
    p.add_argument("--backbones", default=None, help="comma-separated backbones (default: the profile's)")
    p.add_argument("--fractions", default=None, help="comma-separated pretraining data fractions, e.g. 0.01,0.1,1.0")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, default=None, help="equal epochs: every run trains this many")
    length.add_argument("--budget", type=parse_duration, default=None, metavar="TIME",
                        help="equal wall-clock: every run trains for this long (e.g. 90s, 10m)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size of every run (default: the profile's)")
    p.add_argument("--out", default=None, help="bench folder (default runs/bench-<data>-<profile>)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default 0)")
    p.add_argument("--cache-dir", default=None, help="decoded-data cache (default $LEANSSL_CACHE or ~/.cache/leanssl)")
    p.add_argument("--floors", action=argparse.BooleanOptionalAction, default=True,
                   help="also score raw pixels and each backbone at random initialisation (default on)")
    p.add_argument("--quantize", default=None, metavar="BITS",
                   help="also score every cell's backbone quantised to these bit-widths, e.g. 8,4 (as eval --quantize)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and exit")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite results and report from the finished cells, run nothing")
    p.set_defaults(func=cmd_bench)
