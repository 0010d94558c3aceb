"""essl's loss and bank rules against independent references (NumPy formulas, autograd)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from leanssl.bank import MemoryBank
from leanssl.data.loader import DeviceLoader
from leanssl.methods import get_method
from leanssl.methods.base import DataInfo
from leanssl.methods.essl import ESSL, EsslConfig, cutmix, sqrt_kl
from leanssl.methods.npid import NPID
from leanssl.models.backbones import SmallCNN


def np_softmax(s):
    e = np.exp(s - s.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("b,c,scale", [(4, 7, 1.0), (16, 300, 1.0), (3, 50, 10.0)])
def test_sqrt_kl_matches_numpy_formula_and_gradient(b, c, scale):
    rng = np.random.default_rng(b * c)
    s = rng.normal(size=(b, c)) * scale
    p = np_softmax(s)
    u = np.sqrt(p) / np.sqrt(p).sum(1, keepdims=True)
    per_row = (p * (np.log(p) - np.log(u))).sum(1)
    # d/ds of Σ_c p_c (log p_c - log u_c) with u held constant (stop-gradient):
    # p_c * (log p_c - log u_c - Σ_j p_j (log p_j - log u_j)), divided by B for the row mean.
    grad = p * (np.log(p) - np.log(u) - per_row[:, None]) / b

    st = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    loss = sqrt_kl(st.float())
    loss.backward()
    assert loss.item() == pytest.approx(per_row.mean(), rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(st.grad.numpy(), grad, rtol=1e-3, atol=1e-6)


def test_sqrt_kl_is_zero_only_for_uniform():
    assert sqrt_kl(torch.zeros(2, 10)).item() == pytest.approx(0.0, abs=1e-7)
    assert sqrt_kl(torch.tensor([[3.0, 0.0, 0.0]])).item() > 0


def test_cutmix_lambda_is_kept_area_and_targets_are_the_pasted_image():
    b, h, w = 8, 13, 11
    v = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 2, h, w).contiguous()
    for seed in range(20):
        mixed, perm, lam = cutmix(v, 0.5, np.random.default_rng(seed), torch.Generator().manual_seed(seed))
        for r in range(b):
            own = (mixed[r] == r).float().mean().item()
            if perm[r] != r:
                assert own == pytest.approx(lam, abs=1e-6)
                assert (mixed[r] == perm[r]).float().mean().item() == pytest.approx(1 - lam, abs=1e-6)
        assert 0.0 <= lam <= 1.0


def _tiny_essl(n=40, cls=ESSL, **kw):
    torch.manual_seed(0)
    info = DataInfo(num_images=n, channels=1, resolution=12, mean=(0.5,), std=(0.25,))
    backbone = SmallCNN(1, widths=(4, 8))
    return cls(backbone, info, cls.Config(dim=8, proj_hidden=16, **kw))


def _batch(n, b, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    idx = torch.randperm(n, generator=g)[:b]
    return x, idx


@pytest.mark.parametrize("cutmix_alpha,kl_weight", [(0.0, 0.0), (0.5, 20.0)])
def test_grad_bank_update_matches_formula_and_autograd(cutmix_alpha, kl_weight):
    n, b, k, tau, eta = 40, 6, 10, 0.2, 0.3
    m = _tiny_essl(n, negatives=k, tau=tau, bank_update="grad", bank_lr=eta, cutmix_alpha=cutmix_alpha, kl_weight=kl_weight)
    x, idx = _batch(n, b)
    w0 = m.bank.weight.clone()
    loss, _ = m.training_step(x[idx], idx, torch.Generator().manual_seed(1), np.random.default_rng(2))
    loss.backward()
    _, cols, _, z, perm, lam = m._pending
    assert (lam < 1) == (cutmix_alpha > 0)  # rng 2 draws a box that is not clipped away
    m.after_step()

    # Reference 1, the formula of docs/method.md in NumPy: W_c <- normalize(W_c + (η/τ) Σ_r (T_rc - p_rc) z_r)
    zn, wc = z.double().numpy(), w0[cols].double().numpy()
    p = np_softmax(zn @ wc.T / tau)
    t = np.zeros_like(p)
    t[np.arange(b), np.arange(b)] += lam
    t[np.arange(b), perm.numpy()] += 1 - lam
    new = wc + eta / tau * (t - p).T @ zn
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    np.testing.assert_allclose(m.bank.weight[cols].double().numpy(), new, atol=1e-5)

    # Reference 2, an autograd descent step on the bank with the summed CE loss.
    wl = w0[cols].clone().requires_grad_(True)
    logits = z @ wl.t() / tau
    rows = torch.arange(b)
    ce = lam * F.cross_entropy(logits, rows, reduction="sum") + (1 - lam) * F.cross_entropy(logits, perm, reduction="sum")
    ce.backward()
    np.testing.assert_allclose(m.bank.weight[cols].numpy(), F.normalize(wl.detach() - eta * wl.grad, dim=1).numpy(), atol=1e-5)

    # Rows that were not scored are untouched.
    rest = torch.ones(n, dtype=torch.bool)
    rest[cols] = False
    assert torch.equal(m.bank.weight[rest], w0[rest])


@pytest.mark.parametrize("cutmix_alpha,kl_weight,bank_update", [(0.5, 20.0, "grad"), (0.0, 20.0, "grad"),
                                                               (0.5, 0.0, "grad"), (0.5, 20.0, "ema")])
def test_step_loss_and_gradients_match_plain_autograd(cutmix_alpha, kl_weight, bank_update):
    # The step scores the bank once and takes one log-softmax for both CE targets; the reference is the
    # loss written out with two products (SqrtKL's against a detached bank) and F.cross_entropy twice.
    tau = 0.2
    m = _tiny_essl(40, negatives=10, tau=tau, bank_update=bank_update, cutmix_alpha=cutmix_alpha, kl_weight=kl_weight)
    x, idx = _batch(40, 6)
    w0, seen = m.bank.weight.clone(), {}
    embed = m.embed
    m.embed = lambda v: seen.setdefault("z", embed(v))
    loss, _ = m.training_step(x[idx], idx, torch.Generator().manual_seed(1), np.random.default_rng(2))
    seen["z"].retain_grad()
    loss.backward()
    _, cols, w, _, perm, lam = m._pending
    assert (lam < 1) == (cutmix_alpha > 0)

    z = seen["z"].detach().clone().requires_grad_(True)
    wr = w0[cols].clone().requires_grad_(bank_update == "grad")
    logits = z @ wr.t() / tau
    rows = torch.arange(6)
    ref = lam * F.cross_entropy(logits, rows) + (1 - lam) * F.cross_entropy(logits, perm)
    if kl_weight:
        ref = ref + kl_weight * sqrt_kl(z @ wr.detach().t())
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(seen["z"].grad, z.grad)
    if bank_update == "grad":
        torch.testing.assert_close(w.grad, wr.grad)


def test_kl_to_bank_changes_the_bank_gradient():
    outs = []
    for flag in (False, True):
        m = _tiny_essl(negatives=10, bank_update="grad", kl_weight=20.0, cutmix_alpha=0.0, kl_to_bank=flag)
        x, idx = _batch(40, 6)
        loss, _ = m.training_step(x[idx], idx, torch.Generator().manual_seed(1), np.random.default_rng(1))
        loss.backward()
        outs.append(m._pending[2].grad.clone())
    assert not torch.allclose(outs[0], outs[1])


def test_ema_bank_update_matches_formula():
    m = _tiny_essl(negatives=10, bank_update="ema", bank_momentum=0.5, cutmix_alpha=0.0, kl_weight=0.0)
    x, idx = _batch(40, 6)
    w0 = m.bank.weight.clone()
    loss, _ = m.training_step(x[idx], idx, torch.Generator().manual_seed(1), np.random.default_rng(1))
    loss.backward()
    z = m._pending[3]
    m.after_step()
    expect = F.normalize(0.5 * w0[idx] + 0.5 * z, dim=1)
    torch.testing.assert_close(m.bank.weight[idx], expect)
    others = torch.ones(40, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(m.bank.weight[others], w0[others])


def test_bank_columns_put_batch_first_and_never_among_negatives():
    bank = MemoryBank(100, 4)
    idx = torch.tensor([5, 17, 99, 0])
    for seed in range(10):
        cols = bank.columns(idx, 30, torch.Generator().manual_seed(seed))
        assert torch.equal(cols[:4], idx)
        assert len(cols) == 34 and len(set(cols.tolist())) == 34
        assert not set(cols[4:].tolist()) & set(idx.tolist())
    # Small data: N <= k + B scores every row exactly once.
    cols = bank.columns(idx, 200, torch.Generator().manual_seed(0))
    assert torch.equal(cols[:4], idx) and sorted(cols.tolist()) == list(range(100))


def test_calibration_fills_every_row_including_last_partial_batch():
    n, bs = 37, 16  # 37 = 2 full batches + a partial one
    m = _tiny_essl(n)
    x, _ = _batch(n, 1)
    running_before = {k: v.clone() for k, v in m.state_dict().items() if "running" in k}
    w_random = m.bank.weight.clone()
    m.setup(DeviceLoader(x.numpy(), "cpu"), bs)
    for k, v in running_before.items():  # calibration must not disturb BatchNorm statistics
        assert torch.equal(m.state_dict()[k], v), k
    m.train()
    with torch.no_grad():
        expect = torch.cat([m.embed(m.augment.plain(x[s:s + bs])) for s in range(0, n, bs)])
    torch.testing.assert_close(m.bank.weight, expect, atol=1e-5, rtol=1e-5)
    assert not torch.isclose(m.bank.weight, w_random).all(1).any()  # no row left at its random init


def test_npid_is_essl_with_every_addition_off():
    cfg = NPID.Config()
    assert (cfg.kl_weight, cfg.cutmix_alpha, cfg.bank_update, cfg.calibrate) == (0.0, 0.0, "ema", False)
    ecfg = EsslConfig()
    assert (ecfg.tau, ecfg.negatives, ecfg.kl_weight, ecfg.cutmix_alpha, ecfg.bank_momentum) == (0.3, 10000, 20.0, 0.5, 0.5)
    assert NPID.Config().tau == ecfg.tau and NPID.default_batch_size == ESSL.default_batch_size == 128
    assert get_method("npid") is NPID and issubclass(NPID, ESSL)
    m = _tiny_essl(cls=NPID)
    w = m.bank.weight.clone()
    m.setup(DeviceLoader(_batch(40, 1)[0].numpy(), "cpu"), 16)
    assert torch.equal(m.bank.weight, w)  # npid keeps its random bank


def test_bank_is_in_the_state_dict():
    m = _tiny_essl()
    assert "bank.weight" in m.state_dict()


def test_bank_logits_under_bf16_autocast_match_autograd():
    # On a GPU the step runs under bf16 autocast: the shared product's backward must run in bf16 as
    # autocast's mm would, and hand back gradients in the inputs' dtypes.
    from leanssl.methods.essl import bank_logits

    g = torch.Generator().manual_seed(0)
    z0, w0 = F.normalize(torch.randn(6, 8, generator=g), dim=1), F.normalize(torch.randn(16, 8, generator=g), dim=1)
    grads = []
    for fused in (True, False):
        z, w = z0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s, s_kl = bank_logits(z, w) if fused else (z @ w.t(), z @ w.detach().t())
            loss = F.cross_entropy(s.float() / 0.2, torch.arange(6)) + 20 * sqrt_kl(s_kl)
        loss.backward()
        assert s.dtype == torch.bfloat16 and z.grad.dtype == w.grad.dtype == torch.float32
        grads.append((z.grad, w.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
