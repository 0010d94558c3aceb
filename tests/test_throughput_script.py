"""benchmarks/throughput.py's measurement runs leanssl's step sequence (no lightly needed: --no-peer)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import throughput  # noqa: E402


def test_measure_one_method_two_steps():
    x, info = throughput.synthetic((1, 12, 12), 32)
    out = throughput.measure(["essl"], x, info, "small_cnn", 8, torch.device("cpu"), rounds=2, steps=1, warmup=1,
                             peer=False, log=lambda *_: None)
    r = out["results"]["essl"]
    assert len(r["images_per_s"]) == 2 and r["median_images_per_s"] > 0
    assert r["flops_per_step"] > 0 and 0 < r["mfu"] < 10
    assert "ratio_to_peer" not in r and len(out["loadavg"]) == 3


def test_step_profile_names_the_step_operators(capsys):
    import step_profile

    table = step_profile.main(["--images", "64", "--batch-size", "8", "--steps", "1", "--backbone", "small_cnn",
                               "--shapes", "--rows", "200"])
    assert "aten::convolution_backward" in table and "aten::mm" in table  # the backbone's backward, the bank's scores
    assert capsys.readouterr().out.startswith("essl, small_cnn, batch 8, 1 steps")


def test_bank_gather_times_every_variant():
    import bank_gather

    out = bank_gather.main(["--rows", "100", "--dim", "4", "--cols", "10", "--repeats", "1"])
    assert len(out) == 4 and all(v > 0 for v in out.values())
