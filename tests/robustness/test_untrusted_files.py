"""Untrusted files: checkpoints, exported weights and CIFAR pickles never unpickle arbitrary objects
(a crafted file is refused, its payload not run); paths inside configs cannot send writes elsewhere."""

from __future__ import annotations

import ast
import json
import os
import pickle
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import leanssl
from leanssl.cli import _train_config, build_parser, main
from leanssl.errors import LeansslError
from leanssl.train import load_run_config, train


class Payload:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def fake_run(folder: Path, cfg) -> Path:
    """A run folder as train writes it, without training."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(asdict(cfg)))
    (folder / "data.json").write_text(json.dumps({"num_images": 96, "channels": 1, "resolution": 12,
                                                  "mean": [0.3], "std": [0.2]}))
    return folder


@pytest.mark.parametrize("fmt", ["torch.save", "plain pickle"])
def test_a_crafted_checkpoint_is_refused_by_resume_and_eval_and_never_run(fmt, tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg()
    run = fake_run(Path(cfg.out), cfg)
    proof = tmp_path / "pwned"
    evil = {"model": {"w": 0.0}, "epoch": Payload(proof)}
    if fmt == "torch.save":
        torch.save(evil, run / "checkpoint.pt")
    else:
        (run / "checkpoint.pt").write_bytes(pickle.dumps(evil, protocol=2))
    assert main(["train", "--data", cfg.data, "--out", cfg.out, "--cache-dir", cfg.cache_dir, "--resume",
                 "--no-progress"]) == 2
    assert main(["eval", cfg.out, "--data", cfg.data, "--cache-dir", cfg.cache_dir, "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("leanssl: error: ") for line in err), err
    assert all(str(run / "checkpoint.pt") in line for line in err)
    assert "refusing to load" in err[0] and "could run code" in err[0] and "io.open" in err[0]
    assert not proof.exists()


def test_damaged_exported_weights_are_a_clear_error(tiny_cfg, capsys):
    cfg = tiny_cfg()
    run = fake_run(Path(cfg.out), cfg)
    (run / "backbone.safetensors").write_bytes(b"\xff" * 64)
    assert main(["eval", cfg.out, "--data", cfg.data, "--cache-dir", cfg.cache_dir, "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged or not a safetensors file" in err[0]


@pytest.mark.parametrize("weights", [{"x": torch.zeros(1)}, {"features.0.weight": torch.zeros(2, 1, 3, 3)}])
def test_weights_of_another_architecture_are_a_clear_error(weights, tiny_cfg, capsys):
    cfg = tiny_cfg()
    run = fake_run(Path(cfg.out), cfg)
    save_file(weights, str(run / "backbone.safetensors"))
    assert main(["eval", cfg.out, "--data", cfg.data, "--cache-dir", cfg.cache_dir, "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not fit backbone lean_cnn" in err[0], err


def test_a_crafted_cifar_batch_is_refused_and_never_run(tmp_path):
    folder = tmp_path / "cifar"
    folder.mkdir()
    proof = tmp_path / "pwned"
    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(good, protocol=2))
    (folder / "data_batch_3").write_bytes(pickle.dumps({**good, b"batch_label": Payload(proof)}, protocol=2))
    with pytest.raises(LeansslError, match=r"data_batch_3: .*refused to load io.open"):
        leanssl.data.sources.open_dataset(f"cifar10:{folder}", cache_dir=tmp_path / "cache", progress=False)
    assert not proof.exists()


def _calls(tree: ast.AST, dotted: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == dotted:
            yield node


def test_every_load_in_the_package_refuses_arbitrary_objects():
    """torch.load always with weights_only=True, np.load never with pickles, and no bare pickle.load."""
    offenders = []
    for path in Path(leanssl.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for call in _calls(tree, "torch.load"):
            kw = {k.arg: k.value for k in call.keywords}
            if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                offenders.append(f"{path.name}:{call.lineno} torch.load without weights_only=True")
        for call in _calls(tree, "np.load"):
            if any(k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                   for k in call.keywords):
                offenders.append(f"{path.name}:{call.lineno} np.load(allow_pickle=...)")
        for name in ("pickle.load", "pickle.loads", "pickle.Unpickler"):
            offenders += [f"{path.name}:{c.lineno} {name}" for c in _calls(tree, name)]
    assert offenders == []


def test_paths_inside_a_config_or_checkpoint_cannot_send_writes_elsewhere(tiny_cfg, tmp_path):
    cfg = tiny_cfg(stop_after=1)
    train(cfg)
    run = Path(cfg.out)
    elsewhere = tmp_path / "elsewhere"
    # A copied or crafted run folder whose config and checkpoint name another place.
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "out": str(elsewhere), "cache_dir": str(elsewhere)}))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["config"].update(out=str(elsewhere), cache_dir=str(elsewhere))
    torch.save(state, run / "checkpoint.pt")
    assert load_run_config(run).out == str(run)
    assert train(tiny_cfg(), resume=True)["complete"]
    assert not elsewhere.exists() and (run / "backbone.safetensors").exists()


def test_a_config_with_unknown_fields_is_a_clear_error(tiny_cfg):
    cfg = tiny_cfg()
    run = fake_run(Path(cfg.out), cfg)
    (run / "config.json").write_text(json.dumps({**asdict(cfg), "post_hook": "rm -rf /"}))
    with pytest.raises(LeansslError, match=r"config.json: not a config of this leanssl version \(unknown post_hook\)"):
        load_run_config(run)


def test_the_default_run_folder_stays_under_runs_whatever_the_data_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec in ["../../etc", "/etc/passwd", "folder:../../x", "..", "npz:/../../a.npz"]:
        args = build_parser().parse_args(["train", "--data", spec])
        out = Path(_train_config(args).out).resolve()
        assert out.parent == tmp_path / "runs", (spec, out)


def test_a_planted_temp_file_symlink_is_not_written_through(tiny_cfg, tmp_path):
    cfg = tiny_cfg(epochs=2, stop_after=1)  # planted between a run and its --resume (a fresh run clears the folder)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    train(cfg)
    os.symlink(victim, Path(cfg.out) / "checkpoint.pt.tmp")
    train(cfg, resume=True)
    assert victim.read_text() == "precious" and (Path(cfg.out) / "checkpoint.pt").is_file()
