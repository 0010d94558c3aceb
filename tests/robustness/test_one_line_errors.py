"""Faults that used to end in a traceback (or a Bus error) are one `leanssl: error:` line naming the file:
a full disk under torch.save and under the cache build, a cache entry that is not a folder, undecodable
file names, checkpoints that do not fit the run, malformed data.json and export metadata, random bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import leanssl
from leanssl.cli import main
from leanssl.data.sources import open_dataset
from leanssl.errors import LeansslError
from leanssl.export import read_metadata
from leanssl.train import train

from .conftest import tiny_argv
from .conftest import one_error_line




def run_with_file_size_limit(argv: list[str], limit: int) -> subprocess.CompletedProcess:
    """The CLI in a child whose files cannot grow past `limit` bytes (RLIMIT_FSIZE): every write beyond fails
    as on a full disk (EFBIG instead of ENOSPC), without filling a real disk."""
    code = ("import resource, signal, sys, torch\n"
            "torch.set_num_threads(1)\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
            "from leanssl.cli import main\n"
            f"sys.exit(main({argv!r}))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_a_full_disk_inside_torch_save_is_one_line(tiny_cfg):
    cfg = tiny_cfg(epochs=1)
    open_dataset(cfg.data, cache_dir=cfg.cache_dir, progress=False)  # the cache is built before the limit
    got = run_with_file_size_limit(tiny_argv(cfg), 50_000)  # the checkpoint is larger
    assert got.returncode == 2, got.stderr
    line = one_error_line(got.stderr)
    assert line.startswith(f"leanssl: error: cannot write checkpoint {Path(cfg.out) / 'checkpoint.pt'} (is the disk "
                           f"full? torch: "), line
    assert line.endswith("no checkpoint had been written yet")
    assert sorted(p.name for p in Path(cfg.out).glob("checkpoint*")) == []


def test_a_full_disk_while_building_the_cache_is_one_line(tiny_cfg):
    cfg = tiny_cfg(epochs=1)
    got = run_with_file_size_limit(tiny_argv(cfg), 5_000)  # the image array (96 x 12 x 12 + header) cannot fit
    assert got.returncode == 2, got.stderr
    line = one_error_line(got.stderr)
    assert line.startswith(f"leanssl: error: cannot build the cache in {cfg.cache_dir}: "), line
    assert "MiB needed; free space, or set --cache-dir elsewhere" in line


def test_a_cache_entry_replaced_by_a_file_is_rebuilt(tiny_npz, tmp_path, capsys):
    spec, cache_dir = f"npz:{tiny_npz}", tmp_path / "cache"
    first = open_dataset(spec, cache_dir=cache_dir, progress=False)
    (entry,) = [p for p in cache_dir.iterdir() if p.is_dir()]
    for _ in range(2):
        import shutil

        shutil.rmtree(entry)
        entry.write_text("not a folder")
        again = open_dataset(spec, cache_dir=cache_dir, progress=False)
        assert entry.is_dir() and np.array_equal(again.pretrain.x, first.pretrain.x)
    assert "rebuilding it" in capsys.readouterr().err


def test_undecodable_and_multiline_file_names_are_listed_one_per_line(tmp_path, capsys):
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    bad_names = [os.fsencode(imgs) + b"/bad\xff\xfe.jpg", os.fsencode(imgs) + b"/two\nlines\tand tab.jpg"]
    for name in bad_names:
        with open(name, "wb") as f:
            f.write(b"not an image")
    out = tmp_path / "run"
    for _ in range(2):  # once decoding, once from the cache
        assert main(["train", "--data", f"folder:{imgs}", "--epochs", "1", "--batch-size", "4", "--dim", "8",
                     "--proj-hidden", "16", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                     "--no-progress", "--device", "cpu", "--force"]) == 0
        lines = (out / "skipped.txt").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 2 and all(len(ln.split("\t")) == 2 for ln in lines), lines
        names = sorted(ln.split("\t")[0] for ln in lines)
        assert names == sorted([f"{imgs}/bad\\xff\\xfe.jpg", f"{imgs}/two\\nlines\\tand tab.jpg"])
    assert "skipped 2 undecodable image(s)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def stopped_run(tiny_npz, tmp_path_factory):
    """A run stopped after epoch 1 of 2 (its checkpoint to damage, per test, in a copy)."""
    from .conftest import tiny_config

    cfg = tiny_config(tiny_npz, tmp_path_factory.mktemp("stopped"), epochs=2, stop_after=1)
    train(cfg)
    return cfg


def damaged_copy(stopped_run, tmp_path, damage):
    import shutil
    from dataclasses import replace

    cfg = replace(stopped_run, out=str(tmp_path / "copy"), stop_after=None)
    shutil.copytree(stopped_run.out, cfg.out)
    ckpt = Path(cfg.out) / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    damage(state)
    torch.save(state, ckpt)
    return cfg


def _wrong_momentum(state):
    buf = state["optimizer"]["state"][0]["momentum_buffer"]
    state["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(buf.numel() + 1)


RESUME_MISFITS = {
    "wrong shape": (lambda s: s["model"].__setitem__("head.0.weight", torch.zeros(3, 3)), "size mismatch"),
    "missing optimizer": (lambda s: s.pop("optimizer"), "no optimizer in it"),
    "missing epoch": (lambda s: s.pop("epoch"), "no epoch in it"),
    "wrong momentum": (_wrong_momentum, "optimizer momentum_buffer of shape"),
    "optimizer of another model": (lambda s: s["optimizer"]["param_groups"][0]["params"].pop(), "optimizer"),
}


@pytest.mark.parametrize("case", sorted(RESUME_MISFITS))
def test_resume_from_a_checkpoint_that_does_not_fit_is_one_line(case, stopped_run, tmp_path, capsys):
    damage, words = RESUME_MISFITS[case]
    cfg = damaged_copy(stopped_run, tmp_path, damage)
    assert main(tiny_argv(cfg, "--resume")) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"leanssl: error: --resume: {Path(cfg.out) / 'checkpoint.pt'} does not fit this run ("), line
    assert words in line, line


def test_a_random_bytes_checkpoint_is_called_damaged_not_code(stopped_run, tmp_path, capsys):
    cfg = damaged_copy(stopped_run, tmp_path, lambda s: None)
    (Path(cfg.out) / "checkpoint.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    assert main(tiny_argv(cfg, "--resume")) == 2
    line = one_error_line(capsys)
    assert "damaged or not a leanssl checkpoint" in line and "could run code" not in line, line


DATA_JSON = {
    "not JSON": "{",
    "missing channels": json.dumps({"resolution": 12, "mean": [0.3], "std": [0.2]}),
    "resolution 1e9": json.dumps({"channels": 1, "resolution": 10**9, "mean": [0.3], "std": [0.2]}),
    "mean of a string": json.dumps({"channels": 1, "resolution": 12, "mean": "x", "std": [0.2]}),
    "a list": "[1, 2]",
}


@pytest.mark.parametrize("case", sorted(DATA_JSON))
def test_a_malformed_data_json_is_one_line_for_export_and_load_backbone(case, stopped_run, tmp_path, capsys):
    cfg = damaged_copy(stopped_run, tmp_path, lambda s: None)
    data_json = Path(cfg.out) / "data.json"
    data_json.write_text(DATA_JSON[case])
    assert main(["export", cfg.out, "--out", str(tmp_path / "b.safetensors")]) == 2
    assert one_error_line(capsys).startswith(f"leanssl: error: {data_json}: ")
    with pytest.raises(LeansslError, match=str(data_json)):
        leanssl.load_backbone(cfg.out)


SIDECARS = {
    "not JSON": lambda m: "{",
    "no architecture": lambda m: json.dumps({k: v for k, v in m.items() if k != "architecture"}),
    "resolution 1e9": lambda m: json.dumps({**m, "resolution": 10**9}),
    "channels a string": lambda m: json.dumps({**m, "channels": "3"}),
}


@pytest.mark.parametrize("case", sorted(SIDECARS))
def test_a_malformed_export_sidecar_is_one_line(case, stopped_run, tmp_path):
    exported = tmp_path / "b.safetensors"
    assert main(["export", stopped_run.out, "--out", str(exported)]) == 0
    side = exported.with_name(exported.name + ".json")
    side.write_text(SIDECARS[case](json.loads(side.read_text())))
    with pytest.raises(LeansslError, match=str(side)):
        leanssl.load_backbone(exported)


def test_a_damaged_safetensors_header_is_one_line(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={"leanssl": "{not json"})
    with pytest.raises(LeansslError, match="damaged or not a safetensors file"):
        read_metadata(path)
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(LeansslError, match="damaged or not a safetensors file"):
        read_metadata(path)
