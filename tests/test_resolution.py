"""Small-resolution pretraining (S3L): a run trained below the data's resolution, evaluated at full size."""

import csv

import numpy as np
import pytest
import torch

from leanssl.data.sources import open_dataset
from leanssl.errors import LeansslError
from leanssl.eval.evaluate import evaluate
from leanssl.export import load_run_backbone
from leanssl.eval.knn import knn_top1
from leanssl.train import TrainConfig, train


def _cfg(tiny_npz, tmp_path, **kw):
    base = dict(data=f"npz:{tiny_npz}", method="essl", backbone="small_cnn", epochs=1, batch_size=16,
                out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), progress=False,
                method_args={"dim": 16, "proj_hidden": 32, "negatives": 20})
    base.update(kw)
    return TrainConfig(**base)


def _features_by_hand(net, x: np.ndarray, mean, std) -> torch.Tensor:
    v = (torch.from_numpy(np.array(x)).float() / 255 - mean[0]) / std[0]
    net.eval()
    with torch.no_grad():
        return net(v)


def test_eval_at_native_resolution_decodes_at_the_datas_size(tiny_npz, tmp_path):
    train(_cfg(tiny_npz, tmp_path, resolution=8))  # the tiny data is 12 px
    run = tmp_path / "run"
    kw = dict(protocols=["knn"], baselines=False, device="cpu", cache_dir=str(tmp_path / "cache"), progress=False,
              report=False)
    small = evaluate(run, f"npz:{tiny_npz}", **kw)
    native = evaluate(run, f"npz:{tiny_npz}", resolution="native", **kw)
    assert (small["resolution"], native["resolution"], native["train_resolution"]) == (8, 12, 8)
    # Reference: the 12-px images through the backbone, normalised with the run's statistics, then kNN.
    net, _, info = load_run_backbone(run)
    ds = open_dataset(f"npz:{tiny_npz}", None, str(tmp_path / "cache"), progress=False)
    ftr, fte = (_features_by_hand(net, s.x, info["mean"], info["std"]) for s in (ds.train, ds.test))
    ytr, yte = (torch.from_numpy(np.asarray(s.y, dtype=np.int64)) for s in (ds.train, ds.test))
    assert native["knn_top1"] == pytest.approx(knn_top1(ftr, ytr, fte, yte, 4), abs=1e-6)
    with pytest.raises(LeansslError, match="run, native or a number"):
        evaluate(run, f"npz:{tiny_npz}", resolution="full", **kw)


def test_progressive_views_small_first_then_full_size_and_resume_replays(tiny_npz, tmp_path, monkeypatch):
    from leanssl.methods.essl import ESSL

    sizes = []
    embed = ESSL.embed
    monkeypatch.setattr(ESSL, "embed", lambda self, v: sizes.append(v.shape[-1]) or embed(self, v))
    cfg = dict(epochs=2, progressive=8, progressive_fraction=0.5)
    full = train(_cfg(tiny_npz, tmp_path / "a", **cfg))
    steps = 96 // 16
    # calibration (6 batches) at the first part's size, then 6 steps at 8 px and 6 at the data's 12 px
    assert sizes == [8] * steps + [8] * steps + [12] * steps and full["complete"]
    train(_cfg(tiny_npz, tmp_path / "b", stop_after=1, **cfg))
    train(_cfg(tiny_npz, tmp_path / "b", **cfg), resume=True)
    losses = [[float(r["loss"]) for r in csv.DictReader(open(d / "run" / "log.csv"))] for d in (tmp_path / "a", tmp_path / "b")]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)
    with pytest.raises(LeansslError, match="smaller than the data's 12 px"):
        train(_cfg(tiny_npz, tmp_path / "c", progressive=12))
    with pytest.raises(LeansslError, match="started with different progressive"):
        train(_cfg(tiny_npz, tmp_path / "b", epochs=2, progressive=6, progressive_fraction=0.5), resume=True)


def test_view_size_scales_every_view_recipe_and_returns():
    from leanssl.methods.base import DataInfo
    from leanssl.methods.swav import SwAV
    from leanssl.models.backbones import build_backbone

    m = SwAV(build_backbone("small_cnn", 1, 32), DataInfo(64, 1, 32, (0.5,), (0.25,)))
    before = sorted(a.size for a in m._augmenters())
    assert before == [16, 32]  # SwAV's small-image local crops are half the side
    m.set_view_size(16)
    assert sorted(a.size for a in m._augmenters()) == [8, 16]
    m.set_view_size(None)
    assert sorted(a.size for a in m._augmenters()) == before


def test_progressive_under_a_time_budget_switches_by_time(tiny_npz, tmp_path, monkeypatch):
    from leanssl.methods.essl import ESSL

    sizes = []
    embed = ESSL.embed
    monkeypatch.setattr(ESSL, "embed", lambda self, v: sizes.append(v.shape[-1]) or embed(self, v))
    s = train(_cfg(tiny_npz, tmp_path, epochs=100_000, time_budget=1.5, warmup_epochs=0.5, progressive=8,
                   progressive_fraction=0.5))
    assert s["complete"]
    switch = sizes.index(12)
    assert switch > 6 and set(sizes[:switch]) == {8} and set(sizes[switch:]) == {12}
    with open(tmp_path / "run" / "log.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    peak = max(lrs)
    assert lrs[-1] < 0.2 * peak  # the cosine still anneals towards zero by the end of the budget
