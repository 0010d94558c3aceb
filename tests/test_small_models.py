"""Small models for small devices: SimReg distillation, quantised evaluation and export, the SSQL term."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from leanssl.cli import main
from leanssl.eval.features import to_model_input
from leanssl.methods.base import DataInfo
from leanssl.methods.simreg import SimReg, SimregConfig, regression_loss
from leanssl.models.backbones import build_backbone
from leanssl.train import TrainConfig, load_checkpoint, train

TINY_ESSL = {"dim": 16, "proj_hidden": 32, "negatives": 20}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_npz):
    out = tmp_path_factory.mktemp("teacher")
    train(TrainConfig(data=f"npz:{tiny_npz}", backbone="small_cnn", epochs=2, batch_size=16, out=str(out / "run"),
                      cache_dir=str(out / "cache"), progress=False, method_args=TINY_ESSL))
    return out / "run"


@pytest.fixture(scope="module")
def student(tmp_path_factory, tiny_npz, teacher):
    """A narrower student at another resolution than the teacher's 12 px: the views are resized for the teacher."""
    out = tmp_path_factory.mktemp("student") / "run"
    assert main(["distill", str(teacher), "--student", "small_cnn", "--data", f"npz:{tiny_npz}", "--resolution", "16",
                 "--epochs", "8", "--batch-size", "16", "--head-layers", "3", "--proj-hidden", "64", "--lr", "0.2",
                 "--out", str(out), "--cache-dir", str(out.parent / "cache"), "--no-progress"]) == 0
    return out


def _plain_loss(method: SimReg, x: torch.Tensor) -> float:
    method.eval()
    with torch.no_grad():
        v = method.augment.plain(x)
        return regression_loss(method.head(method.backbone(v)), method.teacher(method.teacher_input(v))).item()


def test_regression_loss_is_two_minus_two_cosine():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert regression_loss(p, t).item() == pytest.approx((2 - 2 * F.cosine_similarity(p, t)).mean().item(), abs=1e-5)


def test_distillation_reduces_the_regression_loss_and_exports_the_student_alone(student, tiny_npz):
    cfg = json.loads((student / "config.json").read_text())
    info = DataInfo(**json.loads((student / "data.json").read_text()))
    assert info.resolution == 16 and cfg["method"] == "simreg"
    x = torch.from_numpy(np.load(tiny_npz)["x"][:, None])
    x = F.interpolate(x.float(), size=16, mode="bilinear").round().clamp(0, 255).to(torch.uint8)
    torch.manual_seed(cfg["seed"])  # the run's initial student
    fresh = SimReg(build_backbone("small_cnn", 1, 16), info, SimregConfig(**cfg["method_args"]))
    before = _plain_loss(fresh, x)
    fresh.load_state_dict(load_checkpoint(student / "checkpoint.pt")["model"])
    after = _plain_loss(fresh, x)
    assert after < 0.6 * before, (before, after)

    keys = set(load_file(str(student / "backbone.safetensors")))
    assert keys == set(build_backbone("small_cnn", 1, 16).state_dict())  # no head, no teacher
    assert not any(k.startswith(("head.", "teacher.")) for k in keys)


def test_student_run_evaluates_and_exports_like_any_run(student, tiny_npz, tmp_path, capsys):
    assert main(["eval", str(student), "--data", f"npz:{tiny_npz}", "--json", "--no-baselines",
                 "--linear-c-values", "3", "--cache-dir", str(tmp_path / "cache")]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["method"] == "simreg" and res["knn_top1"] > 0.5
    assert main(["export", str(student), "--out", str(tmp_path / "s.safetensors")]) == 0


def test_teacher_view_is_the_transfer_mapping_of_the_same_pixels(teacher):
    """The student's normalised view, un-normalised, equals the uint8 pixels evaluation would map."""
    info = DataInfo(10, 3, 20, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    m = SimReg(build_backbone("small_cnn", 3, 20), info, SimregConfig(teacher=str(teacher)))
    x = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8)
    t = m.teacher_info
    expected = to_model_input(x, t["mean"], t["std"], t["channels"], t["resolution"])
    got = m.teacher_input(m.augment.plain(x))
    assert got.shape == (2, 1, 12, 12)
    assert torch.allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("argv, needle", [
    (["distill", "no-such-run", "--data", "digits"], "not a leanssl run folder"),
])
def test_distill_bad_teacher_is_one_line(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
