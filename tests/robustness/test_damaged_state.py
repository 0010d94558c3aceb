"""Nothing damaged is called good: a checkpoint is written only when the whole state is finite, NaN/Inf
weights are refused by eval, export, load_backbone and --resume, and an edited cache meta.json is noticed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import leanssl
from leanssl.errors import LeansslError
from leanssl.cli import main
from leanssl.data.cache import META
from leanssl.data.sources import open_dataset
from leanssl.methods.essl import ESSL
from leanssl.runfolder import load_checkpoint
from leanssl.train import train

from .conftest import tiny_argv
from .conftest import one_error_line




@pytest.mark.parametrize("on_nan", ["stop", "skip"])
def test_a_state_with_inf_is_never_checkpointed(on_nan, tiny_cfg, monkeypatch, capsys):
    """A step whose loss and gradients are finite can still leave Inf in a buffer (running_var at lr 1e6, seen
    on digits); here step 5 does it. The step-3 checkpoint stays, and the error names the tensor."""
    cfg = tiny_cfg(epochs=1, checkpoint_every=3)
    real = ESSL.after_step

    def after_step(self):
        real(self)
        if self.step == 4:
            self.backbone.features[1].running_var[:3] = float("inf")

    monkeypatch.setattr(ESSL, "after_step", after_step)
    assert main(tiny_argv(cfg, "--checkpoint-every", "3", "--on-nan", on_nan)) == 2
    ckpt = Path(cfg.out) / "checkpoint.pt"
    assert one_error_line(capsys) == (
        "leanssl: error: the run diverged: model.backbone.features.1.running_var holds NaN or Inf values, so no "
        "checkpoint is written; the previous checkpoint is intact; try a lower --lr")
    state = load_checkpoint(ckpt)  # finite, or it would be refused
    assert (state["epoch"], state["step_in_epoch"]) == (0, 3)
    assert not (Path(cfg.out) / "backbone.safetensors").exists()


def test_an_optimizer_state_with_nan_is_never_checkpointed(tiny_cfg, monkeypatch):
    cfg = tiny_cfg(epochs=1)
    real, calls = torch.optim.SGD.step, []

    def step(self, *a, **kw):
        out = real(self, *a, **kw)
        calls.append(1)
        if len(calls) == 6:  # the epoch's last step: the weights stay finite, the momentum does not
            next(iter(self.state.values()))["momentum_buffer"].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    with pytest.raises(LeansslError, match=r"optimizer\.\d+\.momentum_buffer holds NaN or Inf"):
        train(cfg)
    assert not (Path(cfg.out) / "checkpoint.pt").exists()


@pytest.fixture
def poisoned_run(tiny_cfg):
    """A finished run whose checkpoint and final backbone both hold one NaN weight (a crafted or damaged file)."""
    cfg = tiny_cfg(epochs=2, stop_after=1)
    train(cfg)
    out = Path(cfg.out)
    ckpt = out / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    state["model"]["backbone.features.0.weight"].view(-1)[7] = float("nan")
    torch.save(state, ckpt)
    return cfg, out


def test_nan_weights_are_refused_by_resume_eval_and_export(poisoned_run, tmp_path, capsys):
    cfg, out = poisoned_run
    where = f"{out / 'checkpoint.pt'}: tensor backbone.features.0.weight holds NaN or Inf values"
    assert main(tiny_argv(cfg, "--resume")) == 2
    assert where in one_error_line(capsys)
    assert main(["eval", cfg.out, "--data", cfg.data, "--cache-dir", cfg.cache_dir, "--json", "--no-baselines",
                 "--protocol", "knn"]) == 2
    assert where in one_error_line(capsys)
    assert main(["export", cfg.out, "--out", str(tmp_path / "b.safetensors")]) == 2
    assert where in one_error_line(capsys)
    assert not (tmp_path / "b.safetensors").exists()


def test_nan_in_a_final_backbone_or_an_export_is_refused(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg(epochs=1)
    train(cfg)
    out = Path(cfg.out)
    assert main(["export", cfg.out, "--out", str(tmp_path / "b.safetensors")]) == 0
    capsys.readouterr()
    for path in (out / "backbone.safetensors", tmp_path / "b.safetensors"):
        w = load_file(str(path))
        w["features.0.weight"].view(-1)[0] = float("inf")
        meta = __import__("safetensors").safe_open(str(path), "pt").metadata()
        save_file(w, str(path), metadata=meta)
    with pytest.raises(LeansslError, match="backbone.safetensors: tensor features.0.weight holds NaN or Inf"):
        leanssl.load_backbone(out)
    with pytest.raises(LeansslError, match="b.safetensors: tensor features.0.weight holds NaN or Inf"):
        leanssl.load_backbone(tmp_path / "b.safetensors")


def test_an_edited_cache_meta_json_is_noticed_and_rebuilt(tiny_npz, tmp_path, capsys):
    spec, cache_dir = f"npz:{tiny_npz}", tmp_path / "cache"
    first = open_dataset(spec, cache_dir=cache_dir, progress=False)
    (meta_path,) = cache_dir.glob(f"*/{META}")
    for key, value in (("mean", [0.9]), ("std", [5.0]), ("n_train", 10)):
        meta = json.loads(meta_path.read_text())
        meta[key] = value
        meta_path.write_text(json.dumps(meta))
        capsys.readouterr()
        again = open_dataset(spec, cache_dir=cache_dir, progress=False)
        assert "meta.json does not match its checksum" in capsys.readouterr().err, key
        assert (again.mean, again.std, len(again.pretrain.x)) == (first.mean, first.std, len(first.pretrain.x))
