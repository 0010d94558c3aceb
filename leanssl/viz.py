"""Pictures to judge a representation by: a 2-D map of the embeddings coloured by label, and a grid
of query images with their nearest neighbours.

Drawn with Pillow (already a dependency), so `leanssl map` needs nothing extra. The map uses UMAP
when `umap-learn` is installed, else scikit-learn's t-SNE (after PCA to 50 dimensions, the usual
speed-up), on at most `max_points` seeded random rows: t-SNE is quadratic-ish in N on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .embeddings import Embeddings, write_csv

# matplotlib's tab20, ordered so the first 10 are tab10: distinct colours for up to 20 classes.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5"]
UNLABELED = "#444444"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def project_2d(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 2) coordinates and the name of the method used."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import normalize

    z = normalize(features)  # cosine geometry, as the kNN protocol and select use
    try:
        import umap

        return umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(z), "UMAP"
    except ImportError:
        from sklearn.manifold import TSNE

        if z.shape[1] > 50 and len(z) > 50:
            z = PCA(50, random_state=seed).fit_transform(z)
        perplexity = max(1.0, min(30.0, (len(z) - 1) / 3))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(z), "t-SNE"


def scatter_png(xy: np.ndarray, labels: np.ndarray, classes: list[str] | None, out: Path, title: str,
                seed: int = 0, size: int = 900) -> None:
    """Points coloured by label (grey when unlabelled), legend on the right."""
    legend_w, top = 200, 40
    img = Image.new("RGB", (size + legend_w, size + top), "white")
    d = ImageDraw.Draw(img)
    lo, hi = xy.min(0), xy.max(0)
    p = 20 + (xy - lo) / np.maximum(hi - lo, 1e-12) * (size - 40)
    r = 3 if len(xy) < 2000 else 2
    for i in np.random.default_rng(seed).permutation(len(xy)):  # no class systematically drawn on top
        colour = PALETTE[labels[i] % len(PALETTE)] if labels[i] >= 0 else UNLABELED
        x, y = p[i, 0], top + size - p[i, 1]
        d.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    d.text((20, 10), title, fill="black", font=_font(16))
    present = sorted(set(int(v) for v in labels if v >= 0))
    for j, c in enumerate(present[:40]):
        y = top + 20 + 22 * j
        d.rectangle((size + 10, y, size + 24, y + 14), fill=PALETTE[c % len(PALETTE)])
        d.text((size + 32, y), classes[c] if classes and c < len(classes) else str(c), fill="black", font=_font(14))
    img.save(out)


def _thumb(image: np.ndarray, side: int) -> Image.Image:
    a = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    return Image.fromarray(np.ascontiguousarray(a)).convert("RGB").resize((side, side), Image.Resampling.NEAREST)


def neighbour_grid_png(emb: Embeddings, queries: np.ndarray, k: int, out: Path, side: int = 64,
                       title: str = "") -> np.ndarray:
    """One row per query: the query, a gap, then its k nearest neighbours by cosine similarity.

    A title and column headers on top; each image's class name under it; a neighbour is framed
    green when its label matches the query's, red when not (no frame: no labels), as the legend
    at the bottom says. Returns the (len(queries), k) neighbour rows.
    """
    import torch
    import torch.nn.functional as F

    z = F.normalize(torch.from_numpy(emb.features), dim=1)
    sim = z[torch.as_tensor(queries)] @ z.T
    sim[torch.arange(len(queries)), torch.as_tensor(queries)] = -float("inf")  # not its own neighbour
    nbrs = sim.topk(min(k, len(emb) - 1), dim=1).indices.numpy()
    labelled = bool((emb.label >= 0).any())
    pad, gap, caption = 4, side // 2, 16 if labelled else 0
    cell, row_h, head, foot = side + 2 * pad, side + 2 * pad + caption, 56, 30 if labelled else 0
    width = max(cell * (nbrs.shape[1] + 1) + gap, 520)
    img = Image.new("RGB", (width, head + row_h * len(queries) + foot), "white")
    d = ImageDraw.Draw(img)
    small = _font(11)
    d.text((pad, 6), title or "nearest neighbours", fill="black", font=_font(15))
    d.text((pad, 34), "query", fill="black", font=_font(13))
    d.text((cell + gap + pad, 34), f"its {nbrs.shape[1]} nearest neighbours by cosine similarity, nearest first",
           fill="black", font=_font(13))

    def name(row: int) -> str:
        c = int(emb.label[row])
        return "" if c < 0 else (emb.classes[c] if emb.classes and c < len(emb.classes) else str(c))[:12]

    for i, q in enumerate(queries):
        y0 = head + i * row_h
        img.paste(_thumb(emb.image(int(q)), side), (pad, y0 + pad))
        d.text((pad, y0 + cell), name(int(q)), fill="black", font=small)
        for j, n in enumerate(nbrs[i]):
            x0 = cell * (j + 1) + gap
            if emb.label[q] >= 0 and emb.label[n] >= 0:
                same = emb.label[n] == emb.label[q]
                d.rectangle((x0 + 1, y0 + 1, x0 + cell - 2, y0 + cell - 2), fill="#2ca02c" if same else "#d62728")
            img.paste(_thumb(emb.image(int(n)), side), (x0 + pad, y0 + pad))
            d.text((x0 + pad, y0 + cell), name(int(n)), fill="black", font=small)
    if labelled:
        y = head + row_h * len(queries) + 8
        for x, colour, text in ((pad, "#2ca02c", "same class as the query"), (220, "#d62728", "another class")):
            d.rectangle((x, y, x + 14, y + 14), fill=colour)
            d.text((x + 20, y), text, fill="black", font=_font(13))
    img.save(out)
    return nbrs


def draw_map(emb: Embeddings, out_dir, title: str = "", max_points: int = 5000, queries: int = 8,
             neighbours: int = 8, seed: int = 0) -> dict:
    """Write map.png, map.csv (the 2-D coordinates) and neighbours.png to `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(emb), size=min(max_points, len(emb)), replace=False))
    xy, how = project_2d(emb.features[rows], seed)
    shown = f"{len(rows)} of {len(emb)} images" if len(rows) < len(emb) else f"{len(emb)} images"
    scatter_png(xy, emb.label[rows], emb.classes, out / "map.png", f"{title}  {how}, {shown}".strip(), seed)
    write_csv(out / "map.csv", [{**rec, "x": float(a), "y": float(b)} for rec, (a, b) in zip(emb.rows(rows), xy)])
    q = rng.choice(len(emb), size=min(queries, len(emb)), replace=False)
    neighbour_grid_png(emb, q, neighbours, out / "neighbours.png", title=title)
    return {"map": out / "map.png", "coordinates": out / "map.csv", "neighbours": out / "neighbours.png"}
