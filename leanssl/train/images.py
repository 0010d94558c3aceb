"""The images a run pretrains on: its source decoded once (per machine), the --fraction subset, the test split
with --all-images, and the batch capped to what there is."""

from __future__ import annotations

import sys

import numpy as np

from ..data.sources import open_dataset
from ..data.subsets import stratified_subset
from ..errors import LeansslError
from ..methods.base import DataInfo
from ..runfolder import RunFolder
from .config import TrainConfig


def pretraining_images(cfg: TrainConfig, ctx, folder: RunFolder) -> tuple:
    """(the opened source, the pretraining images, their DataInfo); sets cfg.resolution to the data's and caps
    cfg.batch_size to the images. Rank 0 lists undecodable images in skipped.txt."""
    def open_data():
        return open_dataset(cfg.data, cfg.resolution, cfg.cache_dir, strict=cfg.strict_images,
                            progress=cfg.progress and ctx.local_rank == 0)

    ds = ctx.main_first(open_data)  # one decode per machine
    cfg.resolution = ds.resolution
    if ds.skipped and ctx.is_main:
        folder.write_skipped(ds.skipped)
        print(f"leanssl: skipped {len(ds.skipped)} undecodable image(s), listed in {folder.skipped_path}",
              file=sys.stderr)
    x = ds.pretrain.x
    if cfg.fraction != 1.0:
        x = x[stratified_subset(ds.pretrain.y, len(x), cfg.fraction, cfg.seed)]
    x = _with_test_images(cfg, ds, x, ctx.is_main)
    _cap_batch(cfg, len(x), ctx.world, ctx.is_main)
    check_progressive(cfg, ds.resolution)
    return ds, x, DataInfo(len(x), ds.channels, ds.resolution, tuple(ds.mean), tuple(ds.std))


def check_progressive(cfg: TrainConfig, resolution: int) -> None:
    """--progressive's first views must be smaller than the data's own size."""
    if cfg.progressive is not None and not 1 <= cfg.progressive < resolution:
        raise LeansslError(f"--progressive {cfg.progressive}: the first part's views must be smaller than the "
                           f"data's {resolution} px (and at least 1)")


def _with_test_images(cfg: TrainConfig, ds, x: np.ndarray, main: bool) -> np.ndarray:
    """The pretraining images: with --all-images the test split's too; else a note when a split was held out."""
    n_test = len(ds.test) if ds.test is not None else 0
    if cfg.all_images and n_test:
        if cfg.fraction != 1.0:
            raise LeansslError("use either --all-images or --fraction, not both")
        if main:
            print(f"leanssl: note: --all-images: pretraining on all {len(x) + n_test} images, the {n_test} of the test "
                  f"split included (an eval on this source's test split is then not on unseen images)", file=sys.stderr)
        return np.concatenate([np.asarray(x), np.asarray(ds.test.x)])
    if ds.held_out and main:
        print(f"leanssl: note: {cfg.data} is labelled but has no test split: {n_test} images (20% of each class, "
              f"seeded) are held out as the test split for eval, so pretraining uses {len(x)} of "
              f"{len(ds.pretrain) + n_test}; --all-images pretrains on every image", file=sys.stderr)
    return x


def _cap_batch(cfg: TrainConfig, n: int, world: int, main: bool) -> None:
    """A batch larger than the data becomes the data (a multiple of the processes), with a note."""
    if n >= cfg.batch_size:
        return
    capped = n - n % world
    if capped < 2 * world:
        raise LeansslError(f"only {n} training images: too few for a batch of at least 2 per process")
    if main:
        lr = "" if cfg.lr is not None else " (the default lr scales with it)"
        print(f"leanssl: note: only {n} training images: batch size capped from {cfg.batch_size} to {capped}{lr}",
              file=sys.stderr)
    cfg.batch_size = capped
