"""Behaviour pinned across refactors: a fixed-seed CPU run's per-step losses and final weights.

The reference (tests/golden/train.json) was recorded before the training package was refactored.
On the CPU model and torch version it was recorded with, every loss and every weight must match
bit for bit; elsewhere (another CPU's vector units round differently) to a tight tolerance.
Re-record only for a deliberate change of behaviour: LEANSSL_RECORD_GOLDEN=1 python -m pytest tests/test_golden.py
"""

import csv
import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from leanssl.train import TrainConfig, train

REFERENCE = Path(__file__).parent / "golden" / "train.json"
RUNS = {  # a single-view method with a memory bank, and a two-view one
    "essl": {"dim": 16, "proj_hidden": 32, "negatives": 20, "tau": 0.2},  # τ as recorded (the default is now 0.3)
    "simclr": {"dim": 16, "proj_hidden": 32},
}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _run(tiny_npz, out: Path, method: str) -> dict:
    torch.set_num_threads(1)  # one thread: the reduction order, hence every bit, does not depend on the machine's cores
    train(TrainConfig(data=f"npz:{tiny_npz}", method=method, backbone="small_cnn", epochs=2, batch_size=16,
                      out=str(out), cache_dir=str(out.parent / "cache"), progress=False, method_args=RUNS[method]))
    with open(out / "log.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    weights = load_file(out / "backbone.safetensors")
    return {"losses": losses,
            "weights": {k: [float(v.double().sum()), float(v.double().abs().sum())] for k, v in sorted(weights.items())
                        if v.is_floating_point()}}


@pytest.mark.parametrize("method", sorted(RUNS))
def test_a_fixed_seed_run_matches_the_recorded_one(tiny_npz, tmp_path, method):
    got = _run(tiny_npz, tmp_path / method, method)
    here = {"cpu": _cpu(), "torch": torch.__version__}
    if os.environ.get("LEANSSL_RECORD_GOLDEN"):
        ref = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
        ref.update(here)
        ref[method] = got
        REFERENCE.write_text(json.dumps(ref, indent=1) + "\n")
        pytest.skip("reference recorded")
    ref = json.loads(REFERENCE.read_text())
    want = ref[method]
    assert len(got["losses"]) == len(want["losses"]) == 2 * (96 // 16)
    assert sorted(got["weights"]) == sorted(want["weights"])
    if {"cpu": ref["cpu"], "torch": ref["torch"]} == here:  # the recording machine: identical, bit for bit
        assert got == want
    else:
        # Another CPU rounds differently and training amplifies it step by step (an AMD EPYC drifted 1e-3
        # relative by the 8th simclr step): the first epoch is held tight, the rest
        # looser, each tensor's sums within 5% of its absolute sum (a small BatchNorm bias drifted 3%).
        first = len(want["losses"]) // 2
        np.testing.assert_allclose(got["losses"][:first], want["losses"][:first], rtol=1e-4)
        np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-2)
        for k in want["weights"]:  # [signed sum, absolute sum]: a signed sum near zero is judged on the tensor's scale
            (s, a), (ws, wa) = got["weights"][k], want["weights"][k]
            assert abs(a - wa) <= 5e-2 * wa + 1e-4 and abs(s - ws) <= 5e-2 * wa + 1e-4, \
                f"{k}: sums {s}, {a} vs {ws}, {wa}"
