"""Linear probe on frozen features: L2-regularised multinomial logistic regression.

The protocol of Ericsson et al., "How well do self-supervised models transfer?" (CVPR 2021), after
Kornblith et al. (2019): scikit-learn's objective `C · Σ_i CE_i + ½‖W‖²`, with C swept over 45
log-spaced values (their weight-decay range 1e-6..1e5, C = 1/wd: 1e-5..1e6), chosen on a validation
split carved from the training split (never the test split), then the probe is refit on the whole
training split with that C. Features are standardised with training statistics. On a large split the
sweep's probes are fitted on a 10k-image stratified subset of the 80% (`SWEEP_MAX_TRAIN`): the
refit uses every image, and the test accuracy moved by at most 0.16 points on Fashion-MNIST for 4x less time.

Both solvers minimise `mean_i CE_i + wd·‖W‖²` with wd = 1 / (2·C·n), the same objective:
- `lbfgs`: full-batch L-BFGS, warm-started along the sweep from strong to weak regularisation.
  The sweep is coarse-to-fine: every `COARSE_STEP`-th C (one per decade at 45 values) from strong
  to weak, stopping once validation accuracy has not risen for `PATIENCE` coarse values, then
  bisecting around the best (two, then one grid step either side). Each fit costs one pass over the data per
  function evaluation, and the weakly regularised fits run to the iteration cap, so skipping the
  C values past the peak is most of the saving (docs/evaluation.md has the counts);
- `sgd`: minibatch Adam for feature sets too large for full-batch steps (a GPU's job), fitting
  every C of the sweep at once, in one pass over the data per epoch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.subsets import stratified_subset


def c_grid(values: int = 45) -> tuple[float, ...]:
    """`values` log-spaced C in Ericsson et al.'s range, 1e-5..1e6 (their 1 / logspace(-6, 5, 45) at 45)."""
    return tuple(float(c) for c in np.logspace(-5, 6, values))


C_GRID = c_grid()
DEFAULT_C = 1.0  # scikit-learn's default, for a training split too small to carve a validation split from
SWEEP_MAX_ITER = 100  # L-BFGS iterations per C in the sweep: scikit-learn's default, which Ericsson et al. ran
REFIT_MAX_ITER = 100  # and in the refit at the chosen C, which starts from that C's sweep fit
# Stop once the largest gradient entry is below this: torch's default. scikit-learn's `tol` (1e-4, its L-BFGS `gtol`
# on the same mean objective) saved nothing on Fashion-MNIST, whose fits run to the cap either way, and moved
# digits' trained probe by -0.44 points (benchmarks/probe_agreement.py --tols; docs/evaluation.md).
GTOL = 1e-7
COARSE_STEP = 4  # coarse sweep: every 4th C of the grid (one per decade at 45 values)
PATIENCE = 2  # coarse values without a better validation accuracy before the sweep stops
LBFGS_MAX_ELEMENTS = 1 << 26  # "auto" solver: above this many feature values (N × D), use sgd
SOLVERS = ("auto", "lbfgs", "sgd")
SWEEPS = ("auto", "fast", "full")  # full: every C of the grid, the exhaustive sweep (a reference for the fast one)
# "auto": the full sweep for a training split this small (N × D feature values), where it costs seconds and the
# fast sweep's early stop is least safe: a validation split of a few dozen images scores in coarse, noisy steps
# (digits raw pixels, 10 labels/class: the fast sweep stopped at C = 1e-5, 80.4% test; the full one 89.3%).
FULL_SWEEP_MAX_ELEMENTS = 1 << 21
# The sweep's probes are fitted on at most this many of the training images (a seeded, class-stratified subset
# of the 80% split; validation still scores all of the 20%); the refit at the chosen C uses every image. At
# 48k images every pass cost ~5x a 10k one and the weakly regularised fits run to the cap (docs/evaluation.md).
SWEEP_MAX_TRAIN = 10_000


def weight_decay_for(c: float, n: int) -> float:
    """`mean CE + wd·‖W‖²` equals scikit-learn's `C·ΣCE + ½‖W‖²` divided by C·n."""
    return 1.0 / (2.0 * c * n)


def fit_logistic_batched(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int = 200,
                         init: tuple[torch.Tensor, torch.Tensor] | None = None,
                         stats: dict | None = None, tol: float = GTOL) -> tuple[torch.Tensor, torch.Tensor]:
    """E independent problems at once: x (E, n, D), y (E, n) -> weights (E, K, D), biases (E, K).

    Full-batch L-BFGS on Σ_e [mean CE_e + weight_decay·‖W_e‖²]; the problems share no parameter,
    so the sum's minimiser is every problem's own minimiser (few-shot fits 600 episodes in one go).
    `stats`, if given, accumulates "fits", "iters" and "evals" (function evaluations = data passes).
    `tol`: stop when no gradient entry exceeds it.
    """
    e, n, d = x.shape
    w = torch.zeros(e, num_classes, d, device=x.device) if init is None else init[0].detach().clone()
    b = torch.zeros(e, num_classes, device=x.device) if init is None else init[1].detach().clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=tol)
    flat, labels = x.reshape(-1, d) if e == 1 else None, y.reshape(-1)

    def closure():
        opt.zero_grad()
        # Classes in the last dim, one 2-D product for one problem: on a CPU the batched (1, n, D) product's
        # backward and a cross-entropy over (E, K, n) cost ~14x the plain 2-D form at n = 60k (docs/evaluation.md).
        logits = flat @ w[0].t() + b[0] if e == 1 else torch.matmul(x, w.transpose(1, 2)) + b.unsqueeze(1)
        loss = F.cross_entropy(logits.reshape(-1, num_classes), labels, reduction="sum") / n + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    if stats is not None:
        state = opt.state[w]
        for key, v in (("fits", 1), ("iters", state.get("n_iter", 0)), ("evals", state.get("func_evals", 0))):
            stats[key] = stats.get(key, 0) + v
    return w.detach(), b.detach()


def _linear(w: torch.Tensor, b: torch.Tensor) -> torch.nn.Linear:
    lin = torch.nn.Linear(w.shape[1], w.shape[0]).to(w.device)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return lin


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int = 200,
                 init: torch.nn.Linear | None = None, stats: dict | None = None, tol: float = GTOL) -> torch.nn.Linear:
    """Full-batch L-BFGS on mean cross-entropy + weight_decay·‖W‖²; `init` warm-starts it."""
    start = None if init is None else (init.weight[None], init.bias[None])
    w, b = fit_logistic_batched(x[None], y[None], num_classes, weight_decay, max_iter, start, stats, tol)
    return _linear(w[0], b[0])


def fit_logistic_sgd(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decays, epochs: int = 30,
                     min_steps: int = 500, batch_size: int = 1024, lr: float = 0.01,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One probe per weight decay, trained together by minibatch Adam (cosine lr): weights (P, K, D), biases (P, K).

    Each probe's loss is its own `mean CE + wd·‖W‖²`, so summing them trains them independently.
    At least `min_steps` steps: on synthetic data that is where the objective reaches L-BFGS's.
    """
    wds = torch.as_tensor(weight_decays, dtype=torch.float32, device=x.device)
    p, (n, d) = len(wds), x.shape
    w = torch.zeros(p, num_classes, d, device=x.device, requires_grad=True)
    b = torch.zeros(p, num_classes, device=x.device, requires_grad=True)
    batch_size = min(batch_size, n)
    total = max(epochs * math.ceil(n / batch_size), min_steps)
    opt = torch.optim.Adam([w, b], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    g = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(n, generator=g).to(x.device), 0
    with torch.enable_grad():
        for _ in range(total):
            if pos >= n:
                perm, pos = torch.randperm(n, generator=g).to(x.device), 0
            idx, pos = perm[pos:pos + batch_size], pos + batch_size
            logits = torch.einsum("nd,pkd->pnk", x[idx], w) + b[:, None]
            ce = F.cross_entropy(logits.reshape(-1, num_classes), y[idx].repeat(p), reduction="sum") / len(idx)
            loss = ce + (wds * w.pow(2).sum((1, 2))).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return w.detach(), b.detach()


def _split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation indices; classes with a single example stay in training."""
    rng = np.random.default_rng(seed)
    tr, va = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = int(round(len(idx) * val_fraction)) if len(idx) > 1 else 0
        va.append(idx[:n_val])
        tr.append(idx[n_val:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


@torch.no_grad()
def _accuracy(lin, x, y) -> float:
    return (lin(x).argmax(1) == y).float().mean().item()


def _sweep_order(n: int, scores: dict, coarse_step: int, patience: int):
    """Grid indices (ascending C) to fit, each with the fitted index that warm-starts it; `scores` fills as they are fitted.

    Coarse pass: every `coarse_step`-th index (and the last) from strong to weak regularisation,
    stopping after `patience` without a better score. Fine pass: halve the step around the best so
    far (ties: the smaller C) until it is 1. Each fit starts from the fit at the nearest smaller C.
    """
    def best():
        return max(scores, key=lambda i: (scores[i], -i))

    def warm(i):
        return max((j for j in scores if j < i), default=None)

    since = 0
    for i in sorted(set(range(0, n, coarse_step)) | {n - 1}):
        before = best() if scores else None
        yield i, warm(i)
        since = 0 if before is None or best() == i else since + 1
        if since >= patience:
            break
    step = coarse_step
    while step > 1:
        step //= 2
        centre = best()
        for i in (centre - step, centre + step):
            if 0 <= i < n and i not in scores:
                yield i, warm(i)


def _sweep(x, y, xv, yv, num_classes, cs, solver, seed, sweep="fast", stats=None, bar=None, tol=GTOL) -> tuple[dict, dict]:
    """{grid index: validation accuracy} of the probes fitted on (x, y), and their L-BFGS fits (to warm-start the refit)."""
    if solver == "sgd":
        w, b = fit_logistic_sgd(x, y, num_classes, [weight_decay_for(c, len(x)) for c in cs], seed=seed)
        with torch.no_grad():
            pred = (torch.einsum("nd,pkd->pnk", xv, w) + b[:, None]).argmax(2)
        return dict(enumerate((pred == yv).float().mean(1).tolist())), {}
    order = sorted(range(len(cs)), key=cs.__getitem__)  # strong to weak regularisation
    scores, fits, ranked = {}, {}, {}
    step, patience = (COARSE_STEP, PATIENCE) if sweep == "fast" else (1, len(cs))
    for r, warm in _sweep_order(len(cs), ranked, step, patience):
        i = order[r]
        fits[i] = fit_logistic(x, y, num_classes, weight_decay_for(cs[i], len(x)), SWEEP_MAX_ITER,
                               init=None if warm is None else fits.get(order[warm]), stats=stats, tol=tol)
        scores[i] = ranked[r] = _accuracy(fits[i], xv, yv)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(C=f"{cs[i]:.2g}", val=f"{100 * scores[i]:.1f}%")
    return scores, fits


def linear_probe(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, seed: int = 0, cs=C_GRID, val_fraction: float = 0.2, solver: str = "auto",
                 sweep: str = "auto", progress: bool = False, desc: str = "linear probe", tol: float = GTOL,
                 sweep_max_train: int | None = SWEEP_MAX_TRAIN, refit_max_iter: int = REFIT_MAX_ITER) -> dict:
    """Returns {"top1", "C", "weight_decay", "val_top1", "solver", "head", "cost"}.

    C is chosen on the validation split (ties: the smaller C, i.e. the stronger regulariser), the
    probe refit on all of train. `head` is the refit probe as an nn.Linear on the *unstandardised*
    features (the fine-tune warm-up starts from it); `weight_decay` is the refit's equivalent wd.
    `cost` counts the L-BFGS fits, iterations and function evaluations (sweep and refit). `tol`: L-BFGS's
    gradient tolerance; `sweep_max_train`: the most training images a sweep probe is fitted on (None: all
    of the split); `refit_max_iter`: the refit's L-BFGS iterations.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown linear-probe solver {solver!r}: choose from {', '.join(SOLVERS)}")
    if sweep not in SWEEPS:
        raise ValueError(f"unknown linear-probe sweep {sweep!r}: choose from {', '.join(SWEEPS)}")
    if solver == "auto":
        solver = "sgd" if train_f.numel() > LBFGS_MAX_ELEMENTS else "lbfgs"
    if sweep == "auto":
        sweep = "full" if train_f.numel() <= FULL_SWEEP_MAX_ELEMENTS else "fast"
    mu, sd = train_f.mean(0), train_f.std(0) + 1e-6  # standardise with training statistics only
    xtr, xte = (train_f - mu) / sd, (test_f - mu) / sd
    y_np = train_y.cpu().numpy()
    tr, va = _split(y_np, val_fraction, seed)
    if sweep_max_train is not None and len(tr) > sweep_max_train:
        tr = tr[stratified_subset(y_np[tr], len(tr), sweep_max_train / len(tr), seed + 1)]
    cs = [float(c) for c in cs]
    val_top1, start, stats = None, None, {"fits": 0, "iters": 0, "evals": 0}
    if len(va):
        tr_t, va_t = torch.from_numpy(tr).to(xtr.device), torch.from_numpy(va).to(xtr.device)
        with tqdm(total=len(cs) if sweep == "full" else None, desc=desc, disable=None if progress else True, leave=False, unit="C") as bar:
            scores, fits = _sweep(xtr[tr_t], train_y[tr_t], xtr[va_t], train_y[va_t], num_classes, cs, solver, seed,
                                  sweep, stats, bar, tol)
        best = max(scores, key=lambda i: (scores[i], -cs[i]))
        c, val_top1, start = cs[best], scores[best], fits.get(best)
    else:
        c = DEFAULT_C
    wd = weight_decay_for(c, len(xtr))
    if solver == "sgd":
        lin = _linear(*(t[0] for t in fit_logistic_sgd(xtr, train_y, num_classes, [wd], seed=seed)))
    else:  # the refit starts from the chosen C's sweep fit (on the 80% split, or its subset)
        lin = fit_logistic(xtr, train_y, num_classes, wd, refit_max_iter, init=start, stats=stats, tol=tol)
    with torch.no_grad():  # fold the standardisation into the head: W·(f − μ)/σ + b = (W/σ)·f + (b − W·μ/σ)
        head = _linear(lin.weight / sd, lin.bias - (lin.weight / sd) @ mu)
    return {"top1": _accuracy(lin, xte, test_y), "C": c, "weight_decay": wd, "val_top1": val_top1,
            "solver": solver, "sweep": sweep, "head": head, "cost": stats}
