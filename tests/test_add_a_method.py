"""Adding a method is one file: a toy method defined here, and nowhere else, trains, benches and evaluates,
its settings are `leanssl train` flags, and $LEANSSL_METHODS makes the command know it (docs/adding-a-method.md)."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from leanssl.cli import main
from leanssl.methods.base import Method
from leanssl.models.heads import mlp
from leanssl.options import opt
from leanssl.train import TrainConfig, train


@dataclass
class ToyConfig:
    dim: int = opt(8, "embedding width")
    t: float = opt(2.0, "sharpness of the uniformity loss")


class Toy(Method):
    """One view per image; the batch's embeddings are spread over the sphere (Wang & Isola's uniformity loss)."""

    name = "toy"
    description = "a single-view toy defined in tests/test_add_a_method.py"
    Config = ToyConfig

    def __init__(self, backbone, data, cfg=None, aug=None):
        super().__init__(backbone, data, aug)
        self.cfg = cfg or self.Config()
        self.head = mlp(backbone.out_dim, 16, self.cfg.dim, layers=2)

    def training_step(self, x, idx, gen, rng):
        z = F.normalize(self.head(self.backbone(self.augment(x, gen))), dim=1)
        loss = torch.pdist(z.float()).pow(2).mul(-self.cfg.t).exp().mean().log()
        return loss, {}


def _common(tiny_npz, tmp_path):
    return ["--data", f"npz:{tiny_npz}", "--batch-size", "16", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]


def test_a_method_defined_in_a_test_file_trains_evaluates_and_benches(tiny_npz, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    summary = train(TrainConfig(data=f"npz:{tiny_npz}", method="toy", epochs=2, batch_size=16, device="cpu",
                                out=str(run), cache_dir=str(tmp_path / "cache"), progress=False,
                                method_args={"dim": 4}))
    assert summary["complete"] and summary["steps_done"] == 12
    assert main(["eval", str(run), "--data", f"npz:{tiny_npz}", "--protocol", "knn", "--json", "--no-baselines",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["method"] == "toy" and 0 <= res["knn_top1"] <= 1

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the cell's process inherits it (and imports this file)
    out = tmp_path / "bench"
    assert main(["bench", *_common(tiny_npz, tmp_path), "--methods", "toy,essl", "--backbones", "small_cnn",
                 "--fractions", "1", "--epochs", "1", "--out", str(out), "--no-floors"]) == 0
    cells = {r["method"]: r for r in json.loads((out / "results.json").read_text())["cells"]}
    assert set(cells) == {"toy", "essl"} and cells["toy"]["epochs_done"] == 1
    assert cells["toy"]["flops_per_image"] < cells["essl"]["flops_per_image"]  # no bank, a smaller head
    assert "| `toy` |" in (out / "report.md").read_text()


def test_its_settings_are_flags_and_another_method_s_flag_is_an_error(tiny_npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_common(tiny_npz, tmp_path), "--method", "toy", "--t", "3", "--dim", "4", "--epochs", "1",
                 "--out", str(run), "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["method_args"] == {"t": 3.0, "dim": 4}
    capsys.readouterr()
    assert main(["train", *_common(tiny_npz, tmp_path), "--method", "toy", "--kl-weight", "5",
                 "--out", str(tmp_path / "no")]) == 2
    assert capsys.readouterr().err.strip() == ("leanssl: error: --kl-weight: not a setting of --method toy (its flags: "
                                               "--dim, --t; `leanssl train --method toy --help` describes them)")
    assert not (tmp_path / "no").exists()
    with pytest.raises(SystemExit):
        main(["train", "--method", "toy", "--help"])
    text = capsys.readouterr().out
    assert "settings of --method toy" in text and "sharpness of the uniformity loss (default 2)" in text
    assert "--kl-weight" not in text and "a single-view toy defined in tests/test_add_a_method.py" in text


def test_the_leanssl_command_knows_it_from_leanssl_methods(tmp_path):
    env = {**os.environ, "LEANSSL_METHODS": __file__}
    r = subprocess.run([sys.executable, "-m", "leanssl", "train", "--method", "toy", "--help"], env=env,
                       capture_output=True, text=True, check=True)
    assert "--t T" in r.stdout and "sharpness of the uniformity loss" in r.stdout
    env["LEANSSL_METHODS"] = str(tmp_path / "nothing.py")
    r = subprocess.run([sys.executable, "-m", "leanssl", "train", "--help"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"leanssl: error: no Python file {tmp_path / 'nothing.py'} (a file that defines methods: $LEANSSL_METHODS, "
        "a bench cell)"]
