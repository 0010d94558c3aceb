"""The fast evaluation: the coarse-to-fine C search against scikit-learn and the exhaustive sweep,
the floor cache, and the report's line on the floors."""

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from leanssl.eval.evaluate import EvalSettings, evaluate
from leanssl.eval import linear as linear_module
from leanssl.eval.linear import C_GRID, REFIT_MAX_ITER, _sweep_order, fit_logistic, linear_probe, weight_decay_for
from leanssl.eval.report import floor_line, time_line
from leanssl.train import TrainConfig


def _overlapping(n_per, seed, classes=4, dim=12):
    """Gaussian classes that overlap, so the best C is interior and test accuracy is well below 100%."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0))
    y = torch.arange(classes).repeat_interleave(n_per)
    return centres[y] + 1.2 * torch.randn(len(y), dim, generator=torch.Generator().manual_seed(seed)), y


def test_sweep_order_finds_the_peak_of_a_unimodal_curve_with_few_fits():
    for peak in (0, 7, 21, 44):
        scores, visited = {}, []
        for i, warm in _sweep_order(45, scores, 4, 2):
            assert warm is None or (warm < i and warm in scores)  # warm-started from an already fitted, smaller C
            visited.append(i)
            scores[i] = -abs(i - peak)
        assert max(scores, key=lambda i: (scores[i], -i)) == peak and len(visited) <= 16 and len(set(visited)) == len(visited)
    scores = {}  # a plateau after the peak: stop 2 coarse values later, keep the smaller C (as the full sweep's tie rule)
    for i, _ in _sweep_order(45, scores, 4, 2):
        scores[i] = min(i, 10)
    assert max(scores, key=lambda i: (scores[i], -i)) == 10 and max(scores) <= 20


def test_fast_probe_matches_the_full_sweep_and_scikit_learn():
    xtr, ytr = _overlapping(120, seed=1)
    xte, yte = _overlapping(100, seed=2)
    fast = linear_probe(xtr, ytr, xte, yte, 4, cs=C_GRID, sweep="fast")
    full = linear_probe(xtr, ytr, xte, yte, 4, cs=C_GRID, sweep="full")
    assert 0.5 < full["top1"] < 0.97  # a real problem, not a separable one
    assert abs(fast["top1"] - full["top1"]) <= 0.01 and fast["val_top1"] == full["val_top1"]
    assert fast["cost"]["fits"] < full["cost"]["fits"] / 2
    # The independent reference: scikit-learn's multinomial logistic regression at the chosen C on the same standardised features.
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    ref = LogisticRegression(C=fast["C"], tol=1e-8, max_iter=5000).fit(((xtr - mu) / sd).numpy(), ytr.numpy())
    ours = fast["head"](xte).argmax(1).numpy()
    assert (ours == ref.predict(((xte - mu) / sd).numpy())).mean() >= 0.99
    assert abs(fast["top1"] - ref.score(((xte - mu) / sd).numpy(), yte.numpy())) <= 0.01


def test_probe_fit_lands_on_scikit_learns_optimum_within_the_iteration_cap():
    x, y = _overlapping(150, seed=3)
    x = (x - x.mean(0)) / x.std(0)
    for c in (1e-3, 1.0, 1e3):  # strong, moderate and weak regularisation
        stats = {}
        ours = fit_logistic(x, y, 4, weight_decay_for(c, len(x)), max_iter=REFIT_MAX_ITER, stats=stats)
        ref = LogisticRegression(C=c, tol=1e-8, max_iter=5000).fit(x.numpy(), y.numpy())

        def objective(w, b):  # scikit-learn's C·ΣCE + ½‖W‖², by hand
            logits = x.double() @ torch.as_tensor(w).double().T + torch.as_tensor(b).double()
            return (c * nn.functional.cross_entropy(logits, y, reduction="sum") + 0.5 * torch.as_tensor(w).double().pow(2).sum()).item()

        with torch.no_grad():
            mine, theirs = objective(ours.weight, ours.bias), objective(ref.coef_, ref.intercept_)
        assert abs(mine - theirs) <= 1e-4 * abs(theirs), (c, mine, theirs)
        assert (ours(x).argmax(1).numpy() == ref.predict(x.numpy())).mean() >= 0.99
        assert stats["iters"] <= REFIT_MAX_ITER


def test_sweep_probes_fit_a_stratified_subset_and_the_refit_every_image():
    xtr, ytr = _overlapping(300, seed=1)  # 1200 images, 960 in the 80% split
    xte, yte = _overlapping(100, seed=2)
    seen = []
    real = linear_module.fit_logistic

    def spy(x, y, *a, **kw):
        seen.append(np.bincount(y.numpy()).tolist())
        return real(x, y, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(linear_module, "fit_logistic", spy)
        p = linear_probe(xtr, ytr, xte, yte, 4, cs=(0.01, 1.0, 100.0), sweep="full", sweep_max_train=200)
    assert seen[:-1] == [[50] * 4] * 3 and seen[-1] == [300] * 4  # the sweep on 200 (50 per class), the refit on all
    full = linear_probe(xtr, ytr, xte, yte, 4, cs=(0.01, 1.0, 100.0), sweep="full", sweep_max_train=None)
    assert abs(p["top1"] - full["top1"]) <= 0.03


def test_auto_sweep_fits_every_c_on_a_small_split_and_searches_on_a_large_one(monkeypatch):
    xtr, ytr = _overlapping(120, seed=1)
    xte, yte = _overlapping(100, seed=2)
    auto = linear_probe(xtr, ytr, xte, yte, 4, cs=C_GRID)
    full = linear_probe(xtr, ytr, xte, yte, 4, cs=C_GRID, sweep="full")
    assert auto["sweep"] == "full" and auto["C"] == full["C"] and auto["cost"]["fits"] == len(C_GRID) + 1  # + the refit
    monkeypatch.setattr("leanssl.eval.linear.FULL_SWEEP_MAX_ELEMENTS", xtr.numel() - 1)  # the same split, now "large"
    big = linear_probe(xtr, ytr, xte, yte, 4, cs=C_GRID)
    assert big["sweep"] == "fast" and big["cost"]["fits"] < len(C_GRID) / 2


class Pool(nn.Module):
    """A parameter-free 'backbone' for tiny_npz: 2x2 average pooling."""

    out_dim = 4

    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


def _eval(tmp_path, tiny_npz, **kw):
    info = {"channels": 1, "resolution": 12, "mean": [0.3], "std": [0.3]}
    run_cfg = TrainConfig(data=f"npz:{tiny_npz}", backbone="small_cnn", method="essl")
    settings = EvalSettings(linear_cs=(0.01, 1.0, 100.0))
    return evaluate(tmp_path, f"npz:{tiny_npz}", ("knn", "linear"), device="cpu", cache_dir=tmp_path / "cache",
                    progress=False, backbone=Pool(), info=info, run_cfg=run_cfg, settings=settings, **kw)


def test_floors_are_cached_reused_keyed_by_seed_and_a_damaged_entry_is_recomputed(tiny_npz, tmp_path, capsys):
    first = _eval(tmp_path, tiny_npz)
    assert not first["floors_cached"]
    second = _eval(tmp_path, tiny_npz)
    assert second["floors_cached"] and second["baselines"] == first["baselines"]
    assert "from the floor cache" in (tmp_path / "eval-npz-tiny.md").read_text()
    assert not _eval(tmp_path, tiny_npz, seed=1)["floors_cached"]  # another seed: another random backbone
    assert not _eval(tmp_path, tiny_npz, floor_cache=False)["floors_cached"]
    entries = list((tmp_path / "cache" / "floors").glob("*.json"))
    assert len(entries) == 2
    for damage in ('{"key": "x"', json.dumps({"key": "wrong", "baselines": {}})):
        for e in entries:
            e.write_text(damage)
        capsys.readouterr()
        again = _eval(tmp_path, tiny_npz)
        assert not again["floors_cached"] and again["baselines"] == first["baselines"]
        assert "damaged: recomputing" in capsys.readouterr().err


def test_the_report_says_where_the_time_went_per_protocol(tiny_npz, tmp_path):
    cold, warm = _eval(tmp_path, tiny_npz), _eval(tmp_path, tiny_npz)
    assert set(cold["seconds"]) == {"features", "knn", "linear"} and all(v >= 0 for v in cold["seconds"].values())
    report = (tmp_path / "eval-npz-tiny.md").read_text()
    assert "Time: feature extraction" in report and "kNN" in report.split("Time:")[1]
    assert "floors from the cache: not recomputed" in report.split("Time:")[1] and warm["floors_cached"]
    assert time_line({"seconds": {}}) is None


def test_floor_line_says_where_the_numbers_stand():
    res = {"knn_top1": 0.85, "linear_top1": 0.80,
           "baselines": {"raw_pixels": {"knn_top1": 0.83, "linear_top1": 0.82}, "random_init": {"knn_top1": 0.7}}}
    line = floor_line(res)
    assert "kNN 2.0 points above raw pixels, 15.0 points above random init" in line
    assert "linear probe 2.0 points below raw pixels" in line and line.endswith("below a floor on linear probe.")
    assert floor_line({"knn_top1": 0.9}) is None


def test_eval_speed_script_times_cold_warm_and_full_rows(tiny_npz, tmp_path, monkeypatch, capsys):
    # Each row is its own `leanssl eval` process; here it runs in this one (three torch imports would take a minute).
    # Fine-tuning runs at least 200 steps per feature set, so the third row leaves it out.
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import eval_speed
    from test_eval_protocols import _fake_run

    from leanssl.cli import main

    def in_process(cmd):
        assert cmd[1:4] == ["-m", "leanssl.cli", "eval"] and main(cmd[3:]) == 0
        return capsys.readouterr().out

    monkeypatch.setattr(eval_speed, "run_command", in_process)
    run = _fake_run(tmp_path / "run", tiny_npz)
    out = eval_speed.main([str(run), "--data", f"npz:{tiny_npz}", "--cache-dir", str(tmp_path / "c"),
                           "--extra", "--linear-c-values 3 --device cpu",
                           "--full-protocols", "knn,linear,fewshot", "--full-extra", "--fewshot-episodes 4 --fewshot-shots 1"])
    rows = out["rows"]
    assert [r["floors_cached"] for r in rows.values()] == [False, True, False]
    assert all(r["seconds"] > 0 and "load_before" in r for r in rows.values())


def test_knn_for_several_k_from_one_pass_matches_one_k_at_a_time():
    from leanssl.eval.knn import knn_predict, knn_predict_many
    xtr, ytr = _overlapping(60, seed=3)
    xte, _ = _overlapping(30, seed=4)
    many = knn_predict_many(xtr, ytr, xte, 4, ks=(200, 20, 1))
    for k in (200, 20, 1):
        assert torch.equal(many[k], knn_predict(xtr, ytr, xte, 4, k=k))
    # k=1 is the nearest neighbour by cosine, computed independently here
    sim = torch.nn.functional.normalize(xte, dim=1) @ torch.nn.functional.normalize(xtr, dim=1).t()
    assert torch.equal(many[1], ytr[sim.argmax(1)])
