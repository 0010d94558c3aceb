"""The essl recipe against its authors' arithmetic, and the gradient scale each default lr assumes."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from leanssl.data.loader import DeviceLoader
from leanssl.methods import get_method
from leanssl.methods.base import DataInfo
from leanssl.methods.essl import ESSL, cutmix
from leanssl.models.backbones import SmallCNN
from leanssl.train.build import param_groups
from leanssl.train.schedule import lr_at


def _authors_kept_area(rng: np.random.Generator, alpha: float, h: int, w: int) -> float:
    """The authors' cutmix_data + rand_bbox, re-derived: λ = max(λ, 1-λ), a box of side sqrt(1-λ), clipped."""
    lam = rng.beta(alpha, alpha)
    lam = max(lam, 1 - lam)
    cut = math.sqrt(1 - lam)
    cw, ch = int(w * cut), int(h * cut)
    cx, cy = rng.integers(w), rng.integers(h)
    x1, x2 = np.clip([cx - cw // 2, cx + cw // 2], 0, w)
    y1, y2 = np.clip([cy - ch // 2, cy + ch // 2], 0, h)
    return 1 - (x2 - x1) * (y2 - y1) / (w * h)


def test_cutmix_never_pastes_the_larger_part_and_matches_the_authors_mean():
    v = torch.zeros(4, 1, 32, 32)
    gen = torch.Generator().manual_seed(0)
    ours = [cutmix(v, 0.5, np.random.default_rng(s), gen)[2] for s in range(3000)]
    assert min(ours) >= 0.5  # before clipping the kept part is max(λ, 1-λ) >= 1/2; clipping only adds to it
    ref_rng = np.random.default_rng(12345)  # an independent stream: the means agree, not the draws
    ref = [_authors_kept_area(ref_rng, 0.5, 32, 32) for _ in range(3000)]
    assert np.mean(ours) == pytest.approx(np.mean(ref), abs=0.01)
    # The analytic mean of max(λ, 1-λ) for λ ~ Beta(½, ½) (the arcsine law) is ½ + 1/π; clipping raises it.
    lam = np.random.default_rng(1).beta(0.5, 0.5, 200_000)
    assert np.maximum(lam, 1 - lam).mean() == pytest.approx(0.5 + 1 / math.pi, abs=0.003)
    assert np.mean(ours) > 0.5 + 1 / math.pi - 0.01


def _captured(method, name, x, seed=1):
    """Run one training step, capturing (in call order) the outputs of submodule `name`."""
    outs = []
    handle = getattr(method, name).register_forward_hook(lambda mod, inp, out: outs.append(out))
    method.set_progress(0, 100, 10)
    loss, _ = method.training_step(x, torch.arange(len(x)), torch.Generator().manual_seed(seed),
                                   np.random.default_rng(seed))
    handle.remove()
    return loss, outs


def _tiny(name):
    torch.manual_seed(0)
    info = DataInfo(num_images=16, channels=1, resolution=12, mean=(0.5,), std=(0.25,))
    cls = get_method(name)
    return cls(SmallCNN(1, widths=(4, 8)), info, cls.Config(dim=8, proj_hidden=16))


def _x(n=8):
    return torch.randint(0, 256, (n, 1, 12, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_byol_gradient_has_lightlys_scale_which_its_default_lr_assumes():
    m = _tiny("byol")
    loss, p = _captured(m, "predictor", _x())
    z = [t.detach() for t in _captured(_tiny("byol"), "target_projector", _x())[1]]
    # lightly's BYOL loss: 0.5 * (NegativeCosineSimilarity(p1, z2) + NegativeCosineSimilarity(p2, z1))
    ref = 0.5 * (-F.cosine_similarity(p[0], z[1]).mean() - F.cosine_similarity(p[1], z[0]).mean())
    got = torch.autograd.grad(loss, p, retain_graph=True)
    want = torch.autograd.grad(ref, p)
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)
    assert get_method("byol").default_lr == pytest.approx(0.12)  # lightly's CIFAR-10 SGD rate, 0.06 per 128


def test_simsiam_gradient_has_the_papers_scale_which_its_default_lr_assumes():
    m = _tiny("simsiam")
    loss, p = _captured(m, "predictor", _x())
    z = [t.detach() for t in _captured(_tiny("simsiam"), "projector", _x())[1]]
    ref = 0.5 * -F.cosine_similarity(p[0], z[1]).mean() + 0.5 * -F.cosine_similarity(p[1], z[0]).mean()
    for g, r in zip(torch.autograd.grad(loss, p, retain_graph=True), torch.autograd.grad(ref, p)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)
    assert get_method("simsiam").default_lr == pytest.approx(0.03)  # the paper's CIFAR rate, 0.03 per 256


def test_per_epoch_cosine_is_the_authors_adjust_learning_rate():
    base, epochs, per = 1.0, 7, 5
    for step in range(epochs * per):
        epoch = step // per
        assert lr_at(step, epochs * per, 0, base, per) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * epoch / epochs)))
    assert lr_at(3, 100, 0, base) != lr_at(2, 100, 0, base)  # the default stays per step


def test_decay_norm_bias_puts_every_parameter_under_weight_decay():
    m = _tiny("essl")
    params = {id(p) for p in m.parameters() if p.requires_grad}
    default = param_groups(m, 1e-4)
    assert {id(p) for p in default[0]["params"]} != params and default[1]["params"]
    everything = param_groups(m, 1e-4, decay_norm_bias=True)
    assert {id(p) for g in everything if g["weight_decay"] == 1e-4 for p in g["params"]} == params


def test_augmented_calibration_fills_every_row_from_training_views():
    n, bs = 37, 16
    x = torch.randint(0, 256, (n, 1, 12, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    rows = {}
    for views in ("plain", "augmented"):
        torch.manual_seed(0)
        info = DataInfo(num_images=n, channels=1, resolution=12, mean=(0.5,), std=(0.25,))
        m = ESSL(SmallCNN(1, widths=(4, 8)), info, ESSL.Config(dim=8, proj_hidden=16, calibrate_views=views))
        random_rows = m.bank.weight.clone()
        m.setup(DeviceLoader(x.numpy(), "cpu"), bs)
        assert not torch.isclose(m.bank.weight, random_rows).all(1).any()  # every row written
        rows[views] = m.bank.weight.clone()
    cos = (rows["plain"] * rows["augmented"]).sum(1)
    assert (cos < 0.9999).all()  # other views, other batches: every row differs from the plain pass
