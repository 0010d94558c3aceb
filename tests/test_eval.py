"""kNN and the linear probe on synthetic data with a known answer, and frozen feature extraction."""

import numpy as np
import torch

from leanssl.eval.features import extract_features, pixel_features
from leanssl.eval.knn import knn_predict, knn_top1
from leanssl.eval.linear import linear_probe
from leanssl.models.backbones import SmallCNN


def _clusters(n_per, classes=5, dim=32, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(classes).repeat_interleave(n_per)
    x = centres[y] + spread * torch.randn(len(y), dim, generator=g)
    return x, y


def test_knn_and_linear_separate_separable_classes():
    xtr, ytr = _clusters(40)
    xte, yte = _clusters(20, seed=1)
    g = torch.Generator().manual_seed(5)
    centres = torch.stack([xtr[ytr == c].mean(0) for c in range(5)])
    xte = centres[yte] + 0.3 * torch.randn(len(yte), 32, generator=g)
    assert knn_top1(xtr, ytr, xte, yte, 5) > 0.98
    assert linear_probe(xtr, ytr, xte, yte, 5)["top1"] > 0.98


def test_shuffled_labels_stay_near_chance():
    xtr, ytr = _clusters(60)
    xte, yte = _clusters(60, seed=1)
    g = torch.Generator().manual_seed(3)
    ytr = ytr[torch.randperm(len(ytr), generator=g)]
    assert knn_top1(xtr, ytr, xte, yte, 5) < 0.4
    assert linear_probe(xtr, ytr, xte, yte, 5)["top1"] < 0.4


def test_knn_weighted_vote_by_hand():
    # Two training points of class 0 at cos 0.6, one of class 1 at cos 1.0:
    # votes exp(6)+exp(6) = 806.9 < exp(10) = 22026 -> class 1 wins with T = 0.1.
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    ytr = torch.tensor([1, 0, 0])
    test = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train, ytr, test, 2, k=3, t=0.1).item() == 1
    # With a large temperature the two class-0 votes outweigh the closer one.
    assert knn_predict(train, ytr, test, 2, k=3, t=100.0).item() == 0


def test_linear_probe_never_looks_at_the_test_split():
    xtr, ytr = _clusters(30, spread=3.0)
    xte, yte = _clusters(30, seed=1, spread=3.0)
    a = linear_probe(xtr, ytr, xte, yte, 5)
    b = linear_probe(xtr, ytr, xte * 0 + torch.randn_like(xte), torch.zeros_like(yte), 5)
    assert a["weight_decay"] == b["weight_decay"] and a["val_top1"] == b["val_top1"]


def test_feature_extraction_uses_eval_mode_and_keeps_batchnorm_stats():
    net = SmallCNN(1, widths=(4, 8))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = np.random.default_rng(0).integers(0, 256, size=(10, 1, 12, 12), dtype=np.uint8)
    f1 = extract_features(net, x, (0.5,), (0.25,), 1, 12, torch.device("cpu"), batch_size=3, progress=False)
    f2 = extract_features(net, x[:1], (0.5,), (0.25,), 1, 12, torch.device("cpu"), progress=False)
    assert net.training  # mode restored
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(f1[:1], f2)  # eval mode: a feature does not depend on its batch


def test_pixel_floor_is_centred_by_the_training_mean():
    xtr = np.full((4, 1, 2, 2), 100, dtype=np.uint8)
    xte = np.full((2, 1, 2, 2), 110, dtype=np.uint8)
    ftr, fte = pixel_features(xtr, xte)
    assert torch.allclose(ftr, torch.zeros_like(ftr)) and torch.allclose(fte, torch.full_like(fte, 10 / 255))
