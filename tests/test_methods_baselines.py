"""The baselines (SimCLR, MoCo v2, BYOL, SimSiam, SwAV, Barlow Twins, DINO, TWIST): each loss against an
independent reference (NumPy, written from the papers' formulas), the state each method keeps (queue,
centre, prototypes, EMA teacher), and each method end to end: it learns on a fixed batch, and a run
resumed from its checkpoint ends in the same state as an uninterrupted one."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leanssl.cli import main
from leanssl.methods import get_method
from leanssl.methods.barlow import barlow_loss
from leanssl.methods.base import DataInfo
from leanssl.methods.byol import byol_loss
from leanssl.methods.common import cosine_momentum, ema_update, encode_by_size
from leanssl.methods.dino import dino_loss
from leanssl.methods.mocov2 import moco_logits
from leanssl.methods.simclr import nt_xent
from leanssl.methods.simsiam import neg_cosine
from leanssl.methods.swav import sinkhorn, swav_loss
from leanssl.methods.twist import twist_loss
from leanssl.models.backbones import SmallCNN
from leanssl.train import TrainConfig, train
from leanssl.train.build import param_groups

BASELINES = ("simclr", "mocov2", "byol", "simsiam", "swav", "barlow", "dino", "twist")

# Config fields small enough for a CPU test (everything else: the method's defaults).
TINY = {
    "simclr": dict(dim=8, proj_hidden=16),
    "mocov2": dict(dim=8, proj_hidden=16),
    "byol": dict(dim=8, proj_hidden=16),
    "simsiam": dict(dim=8, proj_hidden=16, pred_hidden=4),
    "swav": dict(dim=8, proj_hidden=16, prototypes=10, local_crops=2),
    "barlow": dict(dim=16, proj_hidden=16),
    "dino": dict(dim=16, proj_hidden=16, bottleneck=8, local_crops=2),
    "twist": dict(dim=16, proj_hidden=16),
}


def _method(name, n=40, res=12, **kw):
    torch.manual_seed(0)
    info = DataInfo(num_images=n, channels=1, resolution=res, mean=(0.5,), std=(0.25,))
    cls = get_method(name)
    return cls(SmallCNN(1, widths=(4, 8)), info, cls.Config(**{**TINY[name], **kw}))


def _images(n, res=12, seed=0):
    return torch.randint(0, 256, (n, 1, res, res), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _step(m, x, idx, step=0, total=100, per_epoch=10, seed=1):
    m.set_progress(step, total, per_epoch)
    return m.training_step(x, idx, torch.Generator().manual_seed(seed), np.random.default_rng(seed))


def np_log_softmax(s):
    s = s - s.max(-1, keepdims=True)
    return s - np.log(np.exp(s).sum(-1, keepdims=True))


def np_softmax(s):
    return np.exp(np_log_softmax(s))


def np_cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ---------------------------------------------------------------------------------------------
# Losses against references


@pytest.mark.parametrize("b,tau", [(2, 0.5), (5, 0.1), (7, 1.0)])
def test_nt_xent_has_2b_minus_2_negatives_and_matches_numpy(b, tau):
    rng = np.random.default_rng(b)
    z1, z2 = rng.normal(size=(b, 6)), rng.normal(size=(b, 6))
    z = np.concatenate([z1, z2])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    losses = []
    for i in range(2 * b):
        pos = (i + b) % (2 * b)
        negatives = [j for j in range(2 * b) if j not in (i, pos)]
        assert len(negatives) == 2 * b - 2
        logits = np.array([z[i] @ z[pos]] + [z[i] @ z[j] for j in negatives]) / tau
        losses.append(-np_log_softmax(logits)[0])
    got = nt_xent(torch.tensor(z1, dtype=torch.float32), torch.tensor(z2, dtype=torch.float32), tau)
    assert got.item() == pytest.approx(np.mean(losses), rel=1e-5)


def test_byol_loss_is_2_minus_2_cos_with_gradient_only_on_the_online_side():
    rng = np.random.default_rng(0)
    p_np, z_np = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    p = torch.tensor(p_np, dtype=torch.float32, requires_grad=True)
    z = torch.tensor(z_np, dtype=torch.float32, requires_grad=True)
    loss = byol_loss(p, z)
    assert loss.item() == pytest.approx(np.mean(2 - 2 * np_cos(p_np, z_np)), rel=1e-5)
    loss.backward()
    assert p.grad is not None and p.grad.abs().sum() > 0 and z.grad is None

    m = _method("byol")
    loss, _ = _step(m, _images(8), torch.arange(8))
    loss.backward()
    target = [*m.target_backbone.parameters(), *m.target_projector.parameters()]
    online = [*m.backbone.parameters(), *m.projector.parameters(), *m.predictor.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in target)
    assert all(p.grad is not None for p in online)
    optimised = {id(p) for g in param_groups(m, 1e-4) for p in g["params"]}
    assert optimised == {id(p) for p in online}


def test_simsiam_loss_stops_gradient_on_the_projection():
    rng = np.random.default_rng(1)
    p_np, z_np = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    p = torch.tensor(p_np, dtype=torch.float32, requires_grad=True)
    z = torch.tensor(z_np, dtype=torch.float32, requires_grad=True)
    loss = neg_cosine(p, z)
    assert loss.item() == pytest.approx(-np.mean(np_cos(p_np, z_np)), rel=1e-5)
    loss.backward()
    assert p.grad is not None and z.grad is None
    # The projector ends with BatchNorm without affine; 2 layers for small images, 3 for large ones.
    for res, layers in ((12, 2), (64, 3)):
        proj = _method("simsiam", res=res).projector
        assert isinstance(proj[-1], nn.BatchNorm1d) and not proj[-1].affine
        assert sum(isinstance(mod, nn.Linear) for mod in proj) == layers


@pytest.mark.parametrize("lambd", [0.0, 0.0051, 1.0])
def test_barlow_loss_matches_numpy_and_weights_only_off_diagonal_terms_by_lambda(lambd):
    rng = np.random.default_rng(2)
    b, d = 10, 5
    a1, a2 = rng.normal(size=(b, d)) * 3 + 1, rng.normal(size=(b, d))
    standardise = lambda a: (a - a.mean(0)) / np.sqrt(a.var(0) + 1e-5)  # BatchNorm, training mode
    c = standardise(a1).T @ standardise(a2) / b
    off = c ** 2
    np.fill_diagonal(off, 0)
    expect = ((1 - np.diag(c)) ** 2).sum() + lambd * off.sum()
    bn = nn.BatchNorm1d(d, affine=False)
    z1, z2 = (bn(torch.tensor(a, dtype=torch.float32)) for a in (a1, a2))
    assert barlow_loss(z1, z2, lambd).item() == pytest.approx(expect, rel=1e-4)
    # The method's projector standardises each dimension over the batch (its last module).
    m = _method("barlow")
    z = m.projector(torch.randn(8, m.backbone.out_dim))
    torch.testing.assert_close(z.mean(0), torch.zeros(z.shape[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(z.shape[1]), atol=1e-2, rtol=0)


def np_sinkhorn(scores, eps, iters):
    """Sinkhorn-Knopp in scaling-vector form: Q = diag(u) exp(Sᵀ/ε) diag(v), rows → 1/K, columns → 1/B."""
    kernel = np.exp(scores.T / eps)
    k, b = kernel.shape
    u, v = np.ones(k), np.ones(b)
    for _ in range(iters):
        u = (1.0 / k) / (kernel @ v)
        v = (1.0 / b) / (kernel.T @ u)
    return (u[:, None] * kernel * v[None, :]).T * b


@pytest.mark.parametrize("iters", [3, 200])
def test_sinkhorn_matches_scaling_form_and_balances_prototypes(iters):
    rng = np.random.default_rng(3)
    b, k = 16, 5
    scores = np.tanh(rng.normal(size=(b, k)) * 2)  # cosines
    q = sinkhorn(torch.tensor(scores, dtype=torch.float32), 0.05, iters).double().numpy()
    np.testing.assert_allclose(q, np_sinkhorn(scores, 0.05, iters), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(q.sum(1), np.ones(b), atol=1e-5)  # each sample's code is a distribution
    if iters == 200:  # converged: every prototype holds an equal share, B/K
        np.testing.assert_allclose(q.sum(0), np.full(k, b / k), rtol=1e-3)
    else:  # already far more balanced than the raw softmax
        raw = np_softmax(scores / 0.05).sum(0)
        assert np.abs(q.sum(0) - b / k).max() < 0.5 * np.abs(raw - b / k).max()


def test_swav_loss_is_the_swapped_prediction():
    rng = np.random.default_rng(4)
    b, k, n_crops, tau = 6, 7, 4, 0.1
    scores = [rng.normal(size=(b, k)) for _ in range(n_crops)]
    codes = [np_softmax(rng.normal(size=(b, k))) for _ in range(2)]
    expect = np.mean([np.mean([-(codes[i] * np_log_softmax(scores[v] / tau)).sum(1).mean()
                               for v in range(n_crops) if v != i]) for i in range(2)])
    t = lambda xs: [torch.tensor(a, dtype=torch.float32) for a in xs]
    assert swav_loss(t(scores), t(codes), tau).item() == pytest.approx(expect, rel=1e-5)


def test_swav_prototypes_unit_frozen_first_epoch_and_queue_only_when_full():
    m = _method("swav", queue_length=32, queue_start_epoch=1)
    x, idx = _images(8), torch.arange(8)
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(10))
    loss, _ = _step(m, x, idx, step=3, per_epoch=10)  # epoch 0: prototypes frozen, queue off
    loss.backward()
    assert m.prototypes.weight.grad is None and not m.queue_on()
    m.zero_grad()
    with torch.no_grad():
        m.prototypes.weight.mul_(3)
    m.after_step()
    torch.testing.assert_close(m.prototypes.weight.norm(dim=1), torch.ones(10))
    assert torch.count_nonzero(m.queue) == 0
    # Epoch 1: the queue fills with the global crops' embeddings, newest first; used once 4 x 8 >= 32.
    for step in range(10, 15):
        m.set_progress(step, 100, 10)
        assert m.queue_full(8) == (step >= 14)
        loss, _ = _step(m, x, idx, step=step, per_epoch=10, seed=step)
        loss.backward()
        assert m.prototypes.weight.grad is not None
        m.zero_grad()
        newest = m._pending
        m.after_step()
        torch.testing.assert_close(m.queue[:, :8], newest)
    assert m.queue.shape == (2, 32, 8)


def test_dino_loss_centres_and_sharpens_the_teacher():
    rng = np.random.default_rng(5)
    b, k, n_crops, ts, tt = 5, 9, 4, 0.1, 0.04
    student = [rng.normal(size=(b, k)) for _ in range(n_crops)]
    teacher = [rng.normal(size=(b, k)) for _ in range(2)]
    center = rng.normal(size=(1, k))
    terms = [-(np_softmax((teacher[i] - center) / tt) * np_log_softmax(student[v] / ts)).sum(1).mean()
             for i in range(2) for v in range(n_crops) if v != i]
    assert len(terms) == 2 * n_crops - 2
    t = lambda xs: [torch.tensor(a, dtype=torch.float32) for a in xs]
    got = dino_loss(t(student), t(teacher), torch.tensor(center, dtype=torch.float32), ts, tt)
    assert got.item() == pytest.approx(np.mean(terms), rel=1e-4)


def test_dino_centre_ema_teacher_temperature_warmup_and_frozen_last_layer():
    m = _method("dino", local_crops=1)
    x, idx = _images(8), torch.arange(8)
    c0 = torch.randn(1, 16)
    m.center.copy_(c0)
    loss, _ = _step(m, x, idx, step=0)
    loss.backward()
    assert m.head.last_layer.weight.grad is None  # frozen during the first epoch
    with torch.no_grad():  # the teacher's outputs on the same two global crops (same generator draws)
        g = torch.Generator().manual_seed(1)
        globals_ = [aug(x, g) for aug in m.global_augs]
        t = m.teacher_head(encode_by_size(m.teacher_backbone, globals_))
    m.after_step()
    torch.testing.assert_close(m.center, 0.9 * c0 + 0.1 * t.mean(0, keepdim=True), rtol=1e-5, atol=1e-6)
    m.zero_grad()
    loss, _ = _step(m, x, idx, step=10, per_epoch=10)  # epoch 1: the last layer trains
    loss.backward()
    assert m.head.last_layer.weight.grad is not None
    temps = {}
    for epoch in (0, 15, 29, 30, 100):
        m.set_progress(epoch * 10, 10**4, 10)
        temps[epoch] = m.teacher_temp()
    assert temps[0] == pytest.approx(0.04) and temps[29] == pytest.approx(0.07)
    assert temps[15] == pytest.approx(0.04 + 0.03 * 15 / 29) and temps[30] == temps[100] == pytest.approx(0.07)


def test_moco_logits_mask_the_querys_own_image_and_match_numpy():
    rng = np.random.default_rng(6)
    b, k, d, tau = 4, 9, 5, 0.2
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    q, key, queue = unit(rng.normal(size=(b, d))), unit(rng.normal(size=(b, d))), unit(rng.normal(size=(k, d)))
    idx = np.array([3, 7, 1, 0])
    queue_idx = np.array([3, 5, 7, 3, -1, 2, 1, 8, 9])
    expect = []
    for r in range(b):
        negatives = [queue[j] for j in range(k) if queue_idx[j] != idx[r]]
        logits = np.array([q[r] @ key[r]] + [q[r] @ n for n in negatives]) / tau
        expect.append(-np_log_softmax(logits)[0])
    t = lambda a: torch.tensor(a, dtype=torch.float32)
    logits = moco_logits(t(q), t(key), t(queue), torch.tensor(queue_idx), torch.tensor(idx), tau)
    assert torch.isinf(logits).sum() == sum((queue_idx == i).sum() for i in idx)
    got = F.cross_entropy(logits, torch.zeros(b, dtype=torch.long))
    assert got.item() == pytest.approx(np.mean(expect), rel=1e-5)


def test_moco_queue_is_sized_from_n_and_is_a_ring_of_keys_and_indices():
    assert _method("mocov2", n=10000).queue.shape == (4096, 8)  # the small-image K
    assert _method("mocov2", n=10000, res=64).queue.shape == (10000, 8)  # K = 65536 capped at N
    m = _method("mocov2", n=20)
    assert m.queue.shape == (20, 8) and (m.queue_idx == -1).all()
    for step in range(3):
        k, idx = F.normalize(torch.randn(8, 8), dim=1), torch.arange(8) + 8 * step
        m.enqueue(k, idx % 20)
        pos = (torch.arange(8) + 8 * step) % 20
        torch.testing.assert_close(m.queue[pos], k)
        assert torch.equal(m.queue_idx[pos], idx % 20)
    assert m.queue_ptr.item() == 24 % 20


def test_moco_on_data_smaller_than_the_queue_never_uses_own_keys_as_negatives():
    m = _method("mocov2", n=12)  # K = min(4096, N) = 12 < 2 batches: every image's old keys are in the queue
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05)
    x = _images(12)
    for step in range(4):
        idx = torch.randperm(12, generator=torch.Generator().manual_seed(step))[:8]
        queue, queue_idx = m.queue.clone(), m.queue_idx.clone()
        loss, _ = _step(m, x[idx], idx, step=step, seed=step)
        k, _ = m._pending
        with torch.no_grad():  # reference: InfoNCE over the queue entries of *other* images only
            q = F.normalize(m.head(m.backbone(m.augment(x[idx], torch.Generator().manual_seed(step)))), dim=1)
        expect = []
        for r in range(8):
            neg = queue[queue_idx != idx[r]]
            logits = torch.cat([(q[r] * k[r]).sum().view(1), neg @ q[r]]) / m.tau
            expect.append(-F.log_softmax(logits, 0)[0])
        assert loss.item() == pytest.approx(torch.stack(expect).mean().item(), rel=1e-4)
        if step >= 2:
            assert any((queue_idx == i).any() for i in idx)  # the case the mask is for did occur
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step()


def test_twist_loss_terms_match_numpy_and_both_views_get_gradient():
    rng = np.random.default_rng(7)
    f1_np, f2_np = rng.normal(size=(6, 8)) * 2, rng.normal(size=(6, 8))
    eps = 1e-5
    for tau, lam1, lam2 in ((1.0, 0.0, 1.0), (0.5, -0.6, 1.0), (2.0, 0.3, 0.5)):
        p1, p2 = np_softmax(f1_np), np_softmax(f2_np)
        kl = lambda a, c: (a * (np.log(a + eps) - np.log(c + eps))).sum(1).mean()
        s1, s2 = np_softmax(f1_np / tau), np_softmax(f2_np / tau)
        eh = 0.5 * sum(-(s * np.log(s + eps)).sum(1).mean() for s in (s1, s2))
        he = 0.5 * sum(-(s.mean(0) * np.log(s.mean(0) + eps)).sum() for s in (s1, s2))
        consistency = 0.5 * (kl(p1, p2) + kl(p2, p1))
        f1 = torch.tensor(f1_np, dtype=torch.float32, requires_grad=True)
        f2 = torch.tensor(f2_np, dtype=torch.float32, requires_grad=True)
        loss, logs = twist_loss(f1, f2, tau, lam1, lam2, eps)
        assert logs["kl"].item() == pytest.approx(consistency, rel=1e-4)
        assert logs["eh"].item() == pytest.approx(eh, rel=1e-4) and logs["he"].item() == pytest.approx(he, rel=1e-4)
        assert loss.item() == pytest.approx(consistency + (1 + lam1) * eh - lam2 * he, rel=1e-4, abs=1e-6)
        loss.backward()
        assert f1.grad.abs().sum() > 0 and f2.grad.abs().sum() > 0  # no stop-gradient


# ---------------------------------------------------------------------------------------------
# EMA teachers


def test_ema_update_and_cosine_momentum_follow_the_formula():
    torch.manual_seed(0)
    t, s = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    s(torch.randn(5, 3))  # the student's running statistics move; the teacher keeps its own
    t0 = {k: v.clone() for k, v in t.state_dict().items()}
    ema_update([t], [s], 0.9)
    for name, p in t.named_parameters():
        torch.testing.assert_close(p, 0.9 * t0[name] + 0.1 * dict(s.named_parameters())[name])
    torch.testing.assert_close(t[1].running_mean, t0["1.running_mean"])
    assert cosine_momentum(0.99, 0.0) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 0.5) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 1.0) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["byol", "dino", "mocov2"])
def test_teacher_update_uses_the_scheduled_momentum(name):
    m = _method(name)
    teacher = {"byol": ["target_backbone", "target_projector"], "dino": ["teacher_backbone", "teacher_head"],
               "mocov2": ["key_backbone", "key_head"]}[name]
    student = {"byol": ["backbone", "projector"], "dino": ["backbone", "head"], "mocov2": ["backbone", "head"]}[name]
    loss, _ = _step(m, _images(8), torch.arange(8), step=30, total=100)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    loss.backward()
    opt.step()
    before = [p.clone() for t in teacher for p in getattr(m, t).parameters()]
    online = [p.detach().clone() for s in student for p in getattr(m, s).parameters()]
    m.after_step()
    base = {"byol": 0.99, "dino": 0.996}.get(name)
    mom = cosine_momentum(base, 0.3) if base else 0.99  # MoCo v2: constant
    after = [p for t in teacher for p in getattr(m, t).parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    for a, b, o in zip(after, before, online):
        torch.testing.assert_close(a, mom * b + (1 - mom) * o)


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.mark.parametrize("name", BASELINES)
def test_registered_and_learns_on_a_fixed_batch(name):
    """Repeated SGD steps on one batch (same images, same views) lower the loss.

    DINO's target moves with its teacher and centre, so here they are held (momenta 1) and the
    student is trained towards them; MoCo's first step scores the random initial queue, so the
    comparison starts once the queue holds real keys (one batch fills it: N = 16)."""
    assert get_method(name).name == name
    fixed = {"dino": dict(momentum=1.0, center_momentum=1.0, freeze_last_layer_epochs=0)}.get(name, {})
    m = _method(name, n=16, **fixed)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    x, idx = _images(16), torch.arange(16)
    losses = []
    for step in range(16):
        loss, _ = _step(m, x, idx, step=step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step()
        losses.append(loss.item())
    losses = losses[1:] if name == "mocov2" else losses
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.02 * abs(np.mean(losses[:3])), losses


def _cfg(tiny_npz, out, name, **kw):
    state = {"swav": dict(queue_length=32, queue_start_epoch=1),  # the queue fills and is used in epoch 2
             "dino": dict(warmup_teacher_temp_epochs=2)}.get(name, {})
    return TrainConfig(data=f"npz:{tiny_npz}", method=name, backbone="small_cnn", epochs=2, batch_size=16,
                       out=str(out), cache_dir=str(out.parent / "cache"), progress=False, lr=0.05,
                       method_args={**TINY[name], **state}, **kw)


def _losses(run):
    with open(run / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("name", BASELINES)
def test_trains_in_the_loop_and_resumes_to_the_same_state(tiny_npz, tmp_path, name):
    full = train(_cfg(tiny_npz, tmp_path / "a", name))
    assert full["complete"]
    train(_cfg(tiny_npz, tmp_path / "b", name, stop_after=1))
    assert train(_cfg(tiny_npz, tmp_path / "b", name), resume=True)["complete"]
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(a) == 2 * (96 // 16) and np.isfinite(a).all() and len(set(a)) > 1
    np.testing.assert_allclose(b, a, rtol=1e-6)
    sa = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    sb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6, msg=k)
    state = {"mocov2": ["queue", "queue_idx", "queue_ptr", "key_backbone."], "byol": ["target_backbone."],
             "swav": ["queue", "prototypes.weight"], "dino": ["center", "teacher_head."]}.get(name, [])
    for prefix in state:  # the method's own state is checkpointed (and was compared above)
        assert any(k.startswith(prefix) for k in sa), prefix
    if name == "swav":
        assert torch.count_nonzero(sa["queue"]) > 0


def test_cli_selects_a_baseline_and_sets_its_config_fields(tiny_npz, tmp_path, capsys):
    run = tmp_path / "cli"
    argv = ["train", "--data", f"npz:{tiny_npz}", "--method", "swav", "--epochs", "1", "--batch-size", "16",
            "--out", str(run), "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--dim", "8",
            "--proj-hidden", "16", "--method-arg", "prototypes=10", "--method-arg", "local_crops=1",
            "--method-arg", "local_scale=0.1,0.3"]
    assert main(argv) == 0
    args = json.loads((run / "config.json").read_text())["method_args"]
    assert args["prototypes"] == 10 and args["local_crops"] == 1 and list(args["local_scale"]) == [0.1, 0.3]
    assert args["dim"] == 8 and args["proj_hidden"] == 16
    assert main(argv[:-2] + ["--method-arg", "nosuch=1", "--out", str(tmp_path / "x")]) == 2
    assert "nosuch" in capsys.readouterr().err
