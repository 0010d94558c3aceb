"""Small-resolution pretraining (S3L): a run trained below the data's resolution, evaluated at full size."""

import numpy as np
import pytest
import torch

from leanssl.data.sources import open_dataset
from leanssl.errors import LeansslError
from leanssl.eval.evaluate import evaluate, load_backbone
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
    net, _, info = load_backbone(run)
    ds = open_dataset(f"npz:{tiny_npz}", None, str(tmp_path / "cache"), progress=False)
    ftr, fte = (_features_by_hand(net, s.x, info["mean"], info["std"]) for s in (ds.train, ds.test))
    ytr, yte = (torch.from_numpy(np.asarray(s.y, dtype=np.int64)) for s in (ds.train, ds.test))
    assert native["knn_top1"] == pytest.approx(knn_top1(ftr, ytr, fte, yte, 4), abs=1e-6)
    with pytest.raises(LeansslError, match="run, native or a number"):
        evaluate(run, f"npz:{tiny_npz}", resolution="full", **kw)
