"""Commands that use a finished run: export, embed, map, select (registered by cli.build_parser)."""

from __future__ import annotations

import argparse


def _add_data_args(p: argparse.ArgumentParser, split_default: str) -> None:
    p.add_argument("run_dir", help="run folder (or an exported .safetensors file / timm folder)")
    p.add_argument("--data", required=True, help="data SPEC (as for train)")
    p.add_argument("--split", default=split_default,
                   help="all (pretrain then test), pretrain (train + unlabeled), train (labelled) or test")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--no-progress", action="store_true")


def _embed(a: argparse.Namespace):
    from .embeddings import embed

    return embed(a.run_dir, a.data, a.split, a.device, a.batch_size, a.cache_dir, progress=not a.no_progress)


def cmd_export(a: argparse.Namespace) -> None:
    import json

    from .export import export_backbone

    meta_path = export_backbone(a.run_dir, a.format, a.out)
    meta = json.loads(meta_path.read_text())
    print(f"exported {meta['architecture']} ({a.format}) -> {a.out}; metadata {meta_path}\nload with: {meta['load']}")


def cmd_embed(a: argparse.Namespace) -> None:
    emb = _embed(a)
    npy, index = emb.save(a.out)
    print(f"{len(emb)} embeddings of dimension {emb.features.shape[1]} -> {npy} (index: {index})")


def cmd_map(a: argparse.Namespace) -> None:
    from .export import read_metadata
    from .viz import draw_map

    emb = _embed(a)
    meta = read_metadata(a.run_dir)
    paths = draw_map(emb, a.out, f"{meta['method']} {meta['architecture']} on {a.data} ({a.split})", a.max_points,
                     a.queries, a.neighbours, a.seed)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def cmd_select(a: argparse.Namespace) -> None:
    from pathlib import Path

    from .embeddings import write_csv
    from .selection import select

    emb = _embed(a)
    picks = select(emb.features, a.budget, seed=a.seed)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out, [{"rank": i, **rec} for i, rec in enumerate(emb.rows(picks))])
    print(f"selected {len(picks)} of {len(emb)} images to label -> {out}")


def add_commands(sub) -> None:
    p = sub.add_parser("export", help="write the run's backbone alone, with a metadata file, for use elsewhere")
    p.add_argument("run_dir")
    p.add_argument("--format", default="safetensors",
                   help="safetensors (default), timm (a folder for timm.create_model('local-dir:PATH')), "
                        "torchscript, onnx (needs pip install 'leanssl[export]')")
    p.add_argument("--out", required=True, help="output file (a folder for --format timm)")
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
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_map)

    p = sub.add_parser("select", help="choose K images to label, diverse and representative (USL)")
    _add_data_args(p, "pretrain")
    p.add_argument("--budget", type=int, required=True, help="number of images to label (K)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--out", required=True, help="CSV of the picks (rank, row, split, index, label, class, path)")
    p.set_defaults(func=cmd_select)
