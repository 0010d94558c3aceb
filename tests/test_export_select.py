"""Using a finished run: export round-trips, embed, map, and the USL selection."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import leanssl
from leanssl.cli import main
from leanssl.errors import LeansslError
from leanssl.export import export_backbone, read_metadata
from leanssl.models.backbones import build_backbone
from leanssl.selection import select
from leanssl.train import TrainConfig, train


def _run(tmp_path_factory, tiny_npz, backbone):
    out = tmp_path_factory.mktemp(backbone)
    train(TrainConfig(data=f"npz:{tiny_npz}", backbone=backbone, epochs=1, batch_size=16, out=str(out / "run"),
                      cache_dir=str(out / "cache"), progress=False,
                      method_args={"dim": 16, "proj_hidden": 32, "negatives": 20}))
    return out / "run"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_npz):
    return _run(tmp_path_factory, tiny_npz, "small_cnn")


@pytest.fixture(scope="module")
def lean_run(tmp_path_factory, tiny_npz):
    return _run(tmp_path_factory, tiny_npz, "lean_cnn")


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory, tiny_npz):
    # timm's 0.37 M-parameter test ResNet (timm >= 1.0); a small real one before that
    return _run(tmp_path_factory, tiny_npz, "test_resnet" if timm.is_model("test_resnet") else "resnet10t")


def _inputs(meta, n=5):
    return torch.randn(n, *meta["input_size"], generator=torch.Generator().manual_seed(1))


def test_safetensors_export_has_only_backbone_keys_and_same_features(run, tmp_path):
    export_backbone(run, "safetensors", tmp_path / "b.safetensors")
    meta = read_metadata(tmp_path / "b.safetensors")
    assert meta["architecture"] == "small_cnn" and meta["input_size"] == [1, 12, 12] and meta["epoch"] == 1
    assert {"mean", "std", "channels", "method", "data", "leanssl_version", "load"} <= set(meta)
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "b.safetensors")))
    assert keys == set(build_backbone("small_cnn", 1, 12).state_dict())  # no projector, bank or "backbone." prefix
    x = _inputs(meta)
    with torch.no_grad():
        torch.testing.assert_close(leanssl.load_backbone(tmp_path / "b.safetensors")(x), leanssl.load_backbone(run)(x))
    # The header carries the metadata too, so the file alone is enough.
    (tmp_path / "b.safetensors.json").unlink()
    assert read_metadata(tmp_path / "b.safetensors")["architecture"] == "small_cnn"


def test_timm_exports_load_with_the_documented_lines(timm_run, tmp_path):
    ref = leanssl.load_backbone(timm_run)
    export_backbone(timm_run, "safetensors", tmp_path / "t.safetensors")
    meta = read_metadata(tmp_path / "t.safetensors")
    x = _inputs(meta)
    with torch.no_grad():
        model = eval(meta["load"], {"timm": timm}).eval()  # the one line the metadata documents
        torch.testing.assert_close(model(x), ref(x))
        export_backbone(timm_run, "timm", tmp_path / "tdir")
        folder = eval(read_metadata(tmp_path / "tdir")["load"], {"timm": timm}).eval()
        torch.testing.assert_close(folder(x), ref(x))
    assert list(folder.pretrained_cfg["mean"]) == meta["mean"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("which", ["run", "lean_run"])  # average and max global pooling
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_traced_exports_match_pytorch(request, which, tmp_path, fmt):
    run = request.getfixturevalue(which)
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
        ort = pytest.importorskip("onnxruntime")
    path = tmp_path / f"b.{'pt' if fmt == 'torchscript' else 'onnx'}"
    export_backbone(run, fmt, path)
    meta = read_metadata(path)
    x = _inputs(meta, 7)  # another batch size than the one traced
    with torch.no_grad():
        ref = leanssl.load_backbone(run)(x)
    if fmt == "torchscript":
        got = torch.jit.load(str(path))(x)
    else:
        got = torch.from_numpy(ort.InferenceSession(str(path)).run(None, {"images": x.numpy()})[0])
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_export_refuses_timm_format_for_leanssl_architectures(run, tmp_path):
    with pytest.raises(LeansslError, match="timm architecture"):
        export_backbone(run, "timm", tmp_path / "x")


def test_embed_map_select_commands(run, tiny_npz, tmp_path):
    common = ["--data", f"npz:{tiny_npz}", "--cache-dir", str(run.parent / "cache"), "--no-progress"]
    assert main(["embed", str(run), *common, "--out", str(tmp_path / "e.npy")]) == 0
    feats = np.load(tmp_path / "e.npy")
    rows = list(csv.DictReader(open(tmp_path / "e.csv")))
    assert feats.shape == (96 + 32, 256) and len(rows) == 128
    assert [r["split"] for r in rows].count("test") == 32 and {r["label"] for r in rows} == {"0", "1", "2", "3"}

    assert main(["map", str(run), *common, "--out", str(tmp_path / "map"), "--queries", "3", "--neighbours", "4"]) == 0
    for name in ("map.png", "neighbours.png"):
        with Image.open(tmp_path / "map" / name) as im:
            assert im.width > 100 and im.height > 50 and len(im.getcolors(1 << 16) or ()) > 3  # not blank
    assert len(list(csv.DictReader(open(tmp_path / "map" / "map.csv")))) == 96

    assert main(["select", str(run), *common, "--count", "6", "--out", str(tmp_path / "s.csv")]) == 0
    picks = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert len(picks) == 6 and len({p["row"] for p in picks}) == 6 and all(p["split"] == "train" for p in picks)


def test_embed_folder_rows_carry_their_paths(run, tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "a" / "1.png").write_bytes(b"not a png")  # skipped, so rows shift
    emb = leanssl.embed(run, str(tmp_path / "imgs"), cache_dir=tmp_path / "cache", progress=False)
    assert len(emb) == 5 and emb.paths is not None and not any(p.endswith("a/1.png") for p in emb.paths)
    for r in range(len(emb)):  # each row's pixels are its file's (decoded at the model's 12 px)
        expected = np.asarray(Image.open(emb.paths[r]).convert("RGB").resize((12, 12), Image.Resampling.BILINEAR))
        assert np.abs(emb.image(r).transpose(1, 2, 0).astype(int) - expected).mean() < 8


def _blobs(centres: int, per: int, dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(centres), per)
    x = 5 * np.eye(dim)[y] + rng.normal(0, 0.3, (len(y), dim))
    return x.astype(np.float32), y


def test_select_returns_distinct_deterministic_picks_one_per_separated_cluster():
    x, y = _blobs(6, 30)
    picks = select(x, 6, seed=3)
    assert len(picks) == 6 and len(set(picks.tolist())) == 6
    assert sorted(y[picks].tolist()) == [0, 1, 2, 3, 4, 5]
    np.testing.assert_array_equal(select(x, 6, seed=3), picks)
    big = select(x, 40, seed=0)
    assert len(set(big.tolist())) == 40


def test_select_prefers_the_dense_core_over_the_halo():
    rng = np.random.default_rng(0)
    core = np.array([1.0, 0, 0]) + rng.normal(0, 0.02, (60, 3))
    halo = np.array([1.0, 0, 0]) + rng.normal(0, 0.4, (20, 3))
    pick = select(np.concatenate([core, halo]).astype(np.float32), 1)[0]
    assert pick < 60


def test_regulariser_pushes_picks_of_neighbouring_clusters_apart():
    # Two touching clusters on an arc with flat density: only the regulariser separates the picks.
    t = np.concatenate([np.linspace(0, 0.5, 50), np.linspace(0.52, 1.02, 50)])
    x = np.stack([np.cos(t), np.sin(t)], 1).astype(np.float32)
    gap = lambda p: abs(t[p[0]] - t[p[1]])  # noqa: E731
    assert gap(select(x, 2, rounds=10)) > gap(select(x, 2, rounds=1)) + 0.1


def test_select_rejects_a_budget_larger_than_the_pool():
    with pytest.raises(LeansslError, match="budget"):
        select(np.zeros((5, 3), np.float32), 6)


def test_import_leanssl_stays_light():
    code = "import sys, leanssl; assert 'torch' not in sys.modules; print(leanssl.__all__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().replace("'", '"')) == ["load_backbone", "embed", "select"]
