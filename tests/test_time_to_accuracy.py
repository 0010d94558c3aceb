"""benchmarks/time_to_accuracy.py on tiny data in seconds: slices taken in turns, kNN off the clock, resumable."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import time_to_accuracy as tta  # noqa: E402

from leanssl.data.sources import open_dataset  # noqa: E402
from leanssl.eval.evaluate import evaluate  # noqa: E402

try:  # lightly's arm runs when the bench extra is installed; `.[test]` alone does not bring lightly
    import lightly  # noqa: F401

    ARMS = ["essl", "essl:resolution=8:tau=0.3", "lightly-simclr:workers=0"]
except ImportError:
    ARMS = ["essl", "essl:resolution=8:tau=0.3"]


def _knn_by_hand(xtr, ytr, xte, k=200, t=0.1) -> np.ndarray:
    """NPID's weighted kNN in NumPy: cosine similarity, the k nearest vote with exp(s / T)."""
    a = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    b = xte / np.linalg.norm(xte, axis=1, keepdims=True)
    s = b @ a.T
    k = min(k, len(a))
    idx = np.argsort(-s, axis=1)[:, :k]
    votes = np.zeros((len(b), ytr.max() + 1))
    for i in range(len(b)):
        np.add.at(votes[i], ytr[idx[i]], np.exp(s[i, idx[i]] / t))
    return votes.argmax(1)


def test_time_to_accuracy_round_robin_resumes_and_scores_each_arm(tiny_npz, tmp_path, monkeypatch):
    data, out = f"npz:{tiny_npz}", tmp_path / "tta"
    argv = ["--data", data, "--tiny", "--budget", "2s", "--slice", "1s", "--points", "1s,2s", "--device", "cpu",
            "--arms", ",".join(ARMS), "--cache-dir", str(tmp_path / "c"),
            "--out", str(out), "--targets", "0.5"]
    calls = []
    real = tta.train_slice
    monkeypatch.setattr(tta, "train_slice", lambda arm, a, run, end: calls.append((arm.name, end)) or real(arm, a, run, end))
    assert tta.main(argv) == 0
    names = ARMS
    assert calls == [(n, 1.0) for n in names] + [(n, 2.0) for n in reversed(names)]  # the order flips every round

    res = json.loads((out / "results.json").read_text())
    for name in names:
        r = res["arms"][name]
        clocks = [p["seconds"] for p in r["points"]]
        assert clocks == sorted(clocks) and clocks[0] >= 1.0 and r["final"] is not None
        assert 0 <= r["final"]["linear_top1"] <= 1 and set(r["knn_at"]) == {"1 s", "2 s"}
        assert set(r["minutes_to"]) == {f"{100 * res['raw_pixels_knn']:.1f}", "50.0"}
    small = out / "arms" / "essl_resolution_8_tau_0.3" / "run"
    assert json.loads((small / "data.json").read_text())["resolution"] == 8
    assert json.loads((small / "config.json").read_text())["method_args"] == {"tau": 0.3}
    # The small-resolution arm is scored at its 8 px, as `leanssl eval` scores it.
    ev = evaluate(small, data, ["knn"], baselines=False, device="cpu", cache_dir=str(tmp_path / "c"), progress=False,
                  report=False)
    assert res["arms"]["essl:resolution=8:tau=0.3"]["final"]["knn_top1"] == pytest.approx(ev["knn_top1"], abs=1e-6)
    native = tta.Scorer(data, str(tmp_path / "c"), torch.device("cpu"), None, None, 0, at="native")
    ev = evaluate(small, data, ["knn"], baselines=False, device="cpu", cache_dir=str(tmp_path / "c"), progress=False,
                  report=False, resolution="native")
    assert native.knn(*native.features(small))[200] == pytest.approx(ev["knn_top1"], abs=1e-6) and ev["resolution"] == 12
    # The raw-pixel floor against an independent NumPy kNN on the centred pixels.
    ds = open_dataset(data, None, str(tmp_path / "c"), progress=False)
    xtr = ds.train.x.reshape(len(ds.train.x), -1) / 255.0
    xte = ds.test.x.reshape(len(ds.test.x), -1) / 255.0
    mu = xtr.mean(0)
    for key, k in (("raw_pixels_knn", 200), ("raw_pixels_knn_small", tta.K_SMALL)):  # k=200 and the secondary k
        expected = (_knn_by_hand(xtr - mu, np.asarray(ds.train.y), xte - mu, k=k) == np.asarray(ds.test.y)).mean()
        assert res[key] == pytest.approx(expected, abs=1e-6)
    assert all(0 <= p["knn_small_top1"] <= 1 for r in res["arms"].values() for p in r["points"])
    report = (out / "report.md").read_text()
    assert (out / "knn_vs_time.png").stat().st_size > 0 and "Raw-pixel kNN" in report
    assert f"kNN k={tta.K_SMALL} @ 2 s" in report

    calls.clear()
    assert tta.main(argv) == 0 and calls == []  # rerunning the same command continues: nothing left to do
    assert tta.main([*argv[:4], "3s", *argv[5:]]) == 2  # another budget in the same folder is refused
    assert tta.main([*argv, "--batch-size", "16"]) == 2
    assert tta.main([*argv, "--eval-resolution", "native"]) == 2  # scored otherwise: another benchmark


def test_arm_and_points_parsing():
    arm = tta.parse_arm("essl:resolution=20:lr=0.3:bank_update=ema")
    assert (arm.method, arm.options) == ("essl", {"resolution": 20, "lr": 0.3, "bank_update": "ema"})
    assert tta.parse_times("2m,90s,1") == [60.0, 90.0, 120.0]
    assert tta.slice_ends([120.0, 300.0, 600.0], 600.0, 250.0) == [120.0, 250.0, 300.0, 500.0, 600.0]
    for bad in ("nosuch", "essl:tau"):
        with pytest.raises(tta.LeansslError):
            tta.parse_arm(bad)


def test_a_bad_arm_is_refused_before_any_arm_trains(tiny_npz, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tta, "train_slice", lambda *args: pytest.fail("an arm trained"))
    base = ["--data", f"npz:{tiny_npz}", "--tiny", "--device", "cpu", "--cache-dir", str(tmp_path / "c"),
            "--out", str(tmp_path / "tta")]
    # The tiny data are 12 px: a progressive start at 12 px is no smaller (the digits run met this one
    # only after its first arm's first slice).
    for arms, message in (("essl,essl:progressive=12", "--progressive 12: the first part's views must be smaller"),
                          ("essl,essl:tau=-1", "tau must be"), ("simclr,essl:nosuch=1", "has no setting nosuch"),
                          ("essl,lightly-simclr:tau=0.2", "lightly arms take lr, batch_size and workers only")):
        assert tta.main([*base, "--arms", arms]) == 2
        err = capsys.readouterr().err
        assert message in err and arms.split(",")[1] in err
