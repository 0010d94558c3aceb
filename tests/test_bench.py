"""`leanssl bench`: a tiny grid end to end, resumability, FLOP counting against hand formulas, the report's logic."""

import csv
import json

import pytest
import torch
from torch import nn

from leanssl.bench import run as bench_run
from leanssl.bench.flops import count_flops, method_step_flops
from leanssl.bench.grid import PROFILES, build_grid
from leanssl.bench.report import _pareto, claim_accuracy, claim_overhead
from leanssl.cli import main


def _argv(tiny_npz, tmp_path, out, *extra):
    return ["bench", "--data", f"npz:{tiny_npz}", "--backbones", "small_cnn", "--epochs", "2", "--batch-size", "16",
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", *extra]


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the cell processes inherit it


def test_tiny_grid_end_to_end_resumes_a_killed_cell_and_a_rerun_trains_nothing(tiny_npz, tmp_path, monkeypatch,
                                                                                  capsys, one_thread):
    from leanssl.train import TrainConfig, train

    out = tmp_path / "bench"
    argv = _argv(tiny_npz, tmp_path, out, "--methods", "essl,simclr", "--fractions", "0.5,1")
    # What a bench killed after the first epoch of one cell leaves: that run's checkpoint (the bench's settings).
    killed = out / "cells" / "essl-small_cnn-f1-e2" / "run"
    train(TrainConfig(data=f"npz:{tiny_npz}", method="essl", backbone="small_cnn", epochs=2, batch_size=16,
                      device="cpu", out=str(killed), cache_dir=str(tmp_path / "cache"), progress=False, stop_after=1))
    assert main(argv) == 0
    assert "essl small_cnn fraction 1, 2 epochs: resuming its checkpoint" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    cells = {r["key"]: r for r in results["cells"]}
    assert sorted(cells) == ["essl-small_cnn-f0.5-e2", "essl-small_cnn-f1-e2", "simclr-small_cnn-f0.5-e2",
                             "simclr-small_cnn-f1-e2"]
    for r in cells.values():
        assert r["epochs_done"] == 2 and r["steps_done"] == 2 * r["train_images"] // 16
        assert r["resumed"] == (r["key"] == "essl-small_cnn-f1-e2")
        assert r["train_seconds"] > 0 and r["images_per_s"] > 0 and r["peak_mem_mb"] > 0
        assert r["memory"] == "process peak RSS" and r["flops_per_image"] > 0
        ev = r["eval"]
        assert 0 <= ev["knn_top1"] <= 1 and 0 <= ev["linear_top1"] <= 1
        shots = ev["fewshot"]["4-way 5-shot"]  # 4 classes in the tiny set
        assert shots["logistic"]["episodes"] == PROFILES["cpu"].eval.fewshot_episodes
        steps = [p["step"] for p in r["curve"]]
        seconds = [p["seconds"] for p in r["curve"]]
        assert steps[-1] == r["steps_done"] and steps == sorted(set(steps))
        if not r["resumed"]:  # (the killed cell's first epoch ran outside the bench, without snapshots)
            assert steps[0] == 0 and len(steps) >= 4
        assert seconds == sorted(seconds) and seconds[-1] == pytest.approx(r["train_seconds"])
        assert not list((out / "cells" / r["key"] / "curve").glob("*.safetensors"))  # scored, then removed
    with open(killed / "log.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(12))  # each step once, none lost
    # Counted, not guessed: one view against two, on the same backbone and data.
    assert cells["essl-small_cnn-f1-e2"]["flops_per_image"] < cells["simclr-small_cnn-f1-e2"]["flops_per_image"]
    assert {"raw pixels", "random small_cnn"} <= set(results["floors"])
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["key"] for r in rows} == set(cells) and all(float(r["knn_top1"]) >= 0 for r in rows)
    for name in ("accuracy_vs_cost", "accuracy_vs_fraction", "accuracy_vs_time"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "## The paper's claims on this data" in report and "essl − `simclr`" in report
    assert "(plots/accuracy_vs_cost.png)" in report and "200 episodes" in report

    # A rerun finds every cell finished: no cell process is started, no run folder is touched.
    logs = {k: (out / "cells" / k / "run" / "log.csv").stat().st_mtime_ns for k in cells}

    def no_process(*a, **k):
        raise AssertionError("a finished bench started a cell process")

    monkeypatch.setattr(bench_run, "_spawn", no_process)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, skipped") == 4 and "4 finished earlier, 0 to run" in printed
    assert logs == {k: (out / "cells" / k / "run" / "log.csv").stat().st_mtime_ns for k in cells}


@pytest.mark.parametrize("extra,needle", [
    (["--methods", "essl,nosuch"], "unknown method nosuch"),
    (["--methods", "essl", "--backbones", "resnet1800"], "unknown backbone 'resnet1800'"),
    (["--methods", "essl", "--fractions", "0.1"], "fraction 0.1 of 'npz:"),  # 10 images, batch 16
])
def test_bad_grid_is_refused_before_any_training(tiny_npz, tmp_path, capsys, extra, needle):
    out = tmp_path / "bench"
    argv = _argv(tiny_npz, tmp_path, out, *extra)
    if "--backbones" in extra:
        argv = argv[:3] + argv[5:]  # drop the default --backbones small_cnn
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_profiles_name_real_methods_and_backbones_and_flags_replace_them():
    for profile in PROFILES.values():
        cells = build_grid(profile)  # raises on an unknown name or setting
        assert len(cells) == len(set(cells)) and len(cells) == len({c.key for c in cells})
        if profile.name in ("cpu", "gpu"):
            assert {c.mode for c in cells} == {"epochs", "budget"}  # both of the paper's comparisons
    cells = build_grid(PROFILES["cpu"], methods=("essl", "byol"), backbones=("small_cnn",), fractions=(0.5, 1.0),
                       budget=30.0)
    assert [(c.method, c.fraction, c.budget, c.epochs) for c in cells] == [
        ("essl", 0.5, 30.0, None), ("byol", 0.5, 30.0, None), ("essl", 1.0, 30.0, None), ("byol", 1.0, 30.0, None)]
    assert {c.method for c in build_grid(PROFILES["cpu"], methods=("npid",))} == {"npid"}


def test_flop_counter_matches_hand_formulas():
    torch.manual_seed(0)
    b, n_in, n_out = 5, 8, 4
    lin = nn.Linear(n_in, n_out, bias=False)
    x = torch.randn(b, n_in, requires_grad=True)
    fwd = 2 * n_in * n_out * b
    assert count_flops(lambda: lin(x)) == fwd
    assert count_flops(lambda: lin(x).sum().backward()) == 3 * fwd  # backward: input and weight gradients
    conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
    img = torch.randn(2, 3, 10, 10)  # no input gradient: forward + weight gradient only
    assert count_flops(lambda: conv(img).sum().backward()) == 2 * (2 * 3 * 6 * 9 * 10 * 10 * 2)

    class Toy(nn.Module):  # the method interface the training loop uses
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(144, 8, bias=False)

        def set_progress(self, *args):
            pass

        def training_step(self, x, idx, gen, rng):
            return self.lin(x.float().flatten(1)).pow(2).mean(), {}

        def after_step(self):
            pass

    xb = torch.randint(0, 255, (16, 1, 12, 12), dtype=torch.uint8)
    assert method_step_flops(Toy(), xb, torch.arange(16)) / 16 == 2 * (2 * 144 * 8)


def _cell(method, knn, linear, flops, rate, mode="epochs", fraction=0.1):
    return {"method": method, "backbone": "small_cnn", "fraction": fraction, "mode": mode, "epochs": 10,
            "budget": None if mode == "epochs" else 60.0, "flops_per_image": flops, "images_per_s": rate,
            "eval": {"knn_top1": knn, "linear_top1": linear}}


def test_claims_and_pareto_front_from_known_numbers():
    cells = [_cell("essl", 0.80, 0.85, 1e8, 1500), _cell("simclr", 0.78, 0.86, 1.5e8, 800),
             _cell("byol", 0.75, 0.80, 2.5e8, 600), _cell("essl", 0.7, 0.7, 1e8, 1500, "budget"),
             _cell("npid", 0.9, 0.9, 1e8, 1500, "budget")]
    verdict, lines = claim_overhead(cells)
    assert verdict == "held" and len(lines) == 2 and "1.50×" in lines[0] + lines[1]
    verdict, lines = claim_accuracy(cells, "epochs")
    assert verdict == "mixed (1 of 2)" and any("essl lower here" in ln for ln in lines)  # linear below simclr's
    assert claim_accuracy(cells, "budget")[0] == "not tested"  # npid is single-view: nothing to compare
    assert _pareto([(1, 50), (2, 40), (3, 60), (3, 55), (4, 60)]) == [(1, 50), (3, 60)]


def _two_cell_budget_grid():
    """The issue's grid: essl and simclr, one fraction, 30 s each; raw pixels beat both."""
    def cell(method, seconds, rate, knn, linear, flops):
        return {"method": method, "backbone": "small_cnn", "fraction": 0.1, "mode": "budget", "epochs": 10_000,
                "budget": 30.0, "train_seconds": seconds, "images_per_s": rate, "images_seen": int(rate * seconds),
                "flops_per_image": flops, "best_epoch_images_per_s": None,
                "curve": [{"seconds": 0.0, "knn_top1": 0.3, "step": 0}, {"seconds": seconds, "knn_top1": knn, "step": 9}],
                "eval": {"knn_top1": knn, "linear_top1": linear, "eval_test_images": 2000}}
    cells = [cell("essl", 31.57, 104.0, 0.700, 0.740, 1e8), cell("simclr", 31.86, 114.0, 0.710, 0.730, 2e8)]
    floors = {"raw pixels": {"knn_top1": 0.75, "linear_top1": 0.78}, "random small_cnn": {"knn_top1": 0.5,
                                                                                           "linear_top1": 0.6}}
    return cells, floors


def test_verdicts_within_the_noise_are_inconclusive():
    cells, _ = _two_cell_budget_grid()
    verdict, lines = claim_overhead(cells)  # 104 vs 114 img/s from one run each: within ±10%
    assert verdict.startswith("inconclusive") and "within the ±10% noise" in lines[0]
    verdict, lines = claim_accuracy(cells, "budget")  # -1.0 kNN, +1.0 linear on 2000 test images: ±2.9
    assert verdict.startswith("inconclusive") and "(±2.9)" in lines[0]
    cells[1]["images_per_s"], cells[1]["eval"]["knn_top1"], cells[1]["eval"]["linear_top1"] = 60.0, 0.60, 0.62
    assert claim_overhead(cells)[0] == "held" and claim_accuracy(cells, "budget")[0] == "held"


def test_plots_draw_floors_start_cost_at_zero_and_skip_what_the_grid_cannot_fill(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leanssl.bench.report import plot_cost, unfillable_plots, write_plots

    cells, floors = _two_cell_budget_grid()
    assert set(unfillable_plots(cells)) == {"accuracy_vs_fraction"}  # one fraction: no line to draw
    (tmp_path / "accuracy_vs_fraction.png").write_bytes(b"stale")
    paths = write_plots(cells, tmp_path, floors)
    assert [p.name for p in paths] == ["accuracy_vs_cost.png", "accuracy_vs_time.png"]
    assert not (tmp_path / "accuracy_vs_fraction.png").exists()
    captured = {}
    real_close = plt.close
    plt.close = lambda fig: captured.setdefault("fig", fig)
    try:
        plot_cost(cells, tmp_path / "c.png", plt, floors)
    finally:
        plt.close = real_close
    ax = captured["fig"].axes[0]
    assert ax.get_xlim()[0] == 0  # 31.57 vs 31.86 s drawn from zero: a 0.3-s gap looks like one
    floor_ys = sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "-"
                      and len(line.get_ydata()) == 2 and line.get_ydata()[0] == line.get_ydata()[1])
    assert floor_ys == [50.0, 75.0]  # random init and raw pixels
    real_close(captured["fig"])


def test_dry_run_estimates_the_grid_asked_for(capsys):
    assert main(["bench", "--data", "digits", "--methods", "essl,simclr", "--fractions", "0.1", "--budget", "30s",
                 "--dry-run"]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert head.startswith("2 cells, batch 256") and "1.0 min of training in the budget cells" in head
    assert "45-60" not in head  # the full profile's estimate is not this grid's
    assert main(["bench", "--data", "digits", "--dry-run"]) == 0
    assert "the full cpu profile: about 45-60 minutes" in capsys.readouterr().out.splitlines()[0]


def test_a_variant_cell_carries_its_method_settings_and_a_plain_cell_is_as_before():
    from dataclasses import replace

    from leanssl.bench.grid import Variant
    from leanssl.errors import LeansslError

    plain, variant = build_grid(PROFILES["ablation"], methods=("npid", "npid+calibration+grad"))
    assert (plain.key, variant.key) == ("npid-small_cnn-f1-e8", "npid+calibration+grad-small_cnn-f1-e8")
    assert plain.spec() == {"method": "npid", "backbone": "small_cnn", "fraction": 1.0, "epochs": 8, "budget": None}
    assert variant.spec()["method_args"] == {"calibrate": True, "bank_update": "grad"}
    assert variant.label.startswith("npid+calibration+grad small_cnn")
    with pytest.raises(LeansslError, match="npid has no setting lr"):
        build_grid(replace(PROFILES["ablation"], methods=(Variant("bad", "npid", (("lr", 1.0),)),)))


def test_the_old_runner_scripts_run_their_profiles(tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import ablation
    import methods

    assert ablation.main(["--data", "digits", "--rows", "0,4", "--epochs", "3", "--work", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"2 cells, batch 256, results in {tmp_path / 'ablation-digits-small_cnn-f1-e3'}")
    assert "1. npid small_cnn fraction 1, 3 epochs" in out and "2. essl small_cnn fraction 1, 3 epochs" in out
    assert methods.main(["--data", "digits", "--budget", "90", "--methods", "essl,byol", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 cells, batch 256") and "2. byol small_cnn fraction 0.1, 90 s" in out
