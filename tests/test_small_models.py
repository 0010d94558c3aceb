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
from leanssl.runfolder import load_checkpoint
from leanssl.train import TrainConfig, train

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
    assert main(["eval", str(student), "--data", f"npz:{tiny_npz}", "--json", "--no-baselines", "--quantize", "8,4",
                 "--linear-c-values", "3", "--cache-dir", str(tmp_path / "cache")]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["method"] == "simreg" and res["knn_top1"] > 0.5
    assert set(res["quantized"]) == {"8", "4"} and res["quantized"]["8"]["how"].startswith("int8")
    assert abs(res["quantized"]["8"]["knn_top1"] - res["knn_top1"]) <= 0.1  # 32 test images: 3 of them
    assert "simulated W4A4" in (student / "eval-npz-tiny.md").read_text()
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


# --- quantised evaluation -------------------------------------------------------------------------

def _fq(x, scale, zero, qmin, qmax):
    return (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero) * scale


def _act_qparams(x, qmin, qmax):
    """Per-tensor affine scale and zero point from the observed range (which always includes 0)."""
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    scale = (hi - lo) / (qmax - qmin)
    return scale, qmin - round(lo / scale)


def _hand_quantized(net, x, calib, bits):
    """conv -> relu -> global average pool, quantised by hand: symmetric per-output-channel weights,
    per-tensor affine activations with the ranges seen on `calib` by the float network."""
    conv = net[0]
    aq = (0, 127) if bits == 8 else (0, 2 ** bits - 1)  # 8 bits: the x86 backend's 7-bit activation range
    wq = (-2 ** (bits - 1), 2 ** (bits - 1) - 1)
    w = conv.weight.detach()
    w_scale = w.abs().amax(dim=(1, 2, 3), keepdim=True) / ((wq[1] - wq[0]) / 2)
    w_q = _fq(w, w_scale, 0, *wq)
    s_in, z_in = _act_qparams(calib, *aq)
    s_out, z_out = _act_qparams(torch.relu(F.conv2d(calib, w, conv.bias, padding=1)), *aq)
    y = torch.relu(F.conv2d(_fq(x, s_in, z_in, *aq), w_q, conv.bias, padding=1))
    y = _fq(y, s_out, z_out, *aq)
    return _fq(y.mean(dim=(2, 3)), s_out, z_out, *aq), s_out  # the pool keeps its input's quantisation


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_backbone_matches_a_hand_quantized_reference(bits):
    from leanssl.quantize import quantize_backbone

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten()).eval()
    calib, x = torch.randn(64, 2, 8, 8), torch.randn(64, 2, 8, 8) * 0.8
    with torch.no_grad():
        got = quantize_backbone(net, bits, calib)(x)
        ref, step = _hand_quantized(net, x, calib, bits)
        full = net(x)
    same = lambda a: ((a - ref).abs() < 0.01 * step).float().mean().item()  # noqa: E731
    assert (got - ref).abs().max().item() <= 1.01 * step  # int32 requantisation may round a tie the other way
    assert same(got) > 0.9 and same(full) < 0.1  # on the reference's grid point for point; the float net is not


def test_the_default_backbone_quantizes_to_int8_close_to_fp32():
    """lean_cnn's global max pool goes through torch.ao's int8 path as the average pool does."""
    from leanssl.quantize import quantize_backbone

    torch.manual_seed(0)
    net = build_backbone("lean_cnn", 1, 16).eval()
    calib, x = torch.randn(64, 1, 16, 16), torch.randn(32, 1, 16, 16)
    with torch.no_grad():
        got, full = quantize_backbone(net, 8, calib)(x), net(x)
    assert not torch.equal(got, full) and F.cosine_similarity(got, full).min().item() > 0.98


def test_int8_onnx_export_runs_in_onnxruntime_and_keeps_the_fp32_accuracy(teacher, tiny_npz, tmp_path):
    """The int8 model against the fp32 one its export traced (that export is itself checked against PyTorch
    to 1e-4, recorded as fp32_max_abs_diff_vs_pytorch): the same kNN accuracy on held-out images."""
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from leanssl.eval.knn import knn_top1
    from leanssl.export import load_backbone

    data = np.load(tiny_npz)
    assert main(["export", str(teacher), "--format", "onnx", "--quantize", "8", "--out", str(tmp_path / "int8.onnx"),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    meta = json.loads((tmp_path / "int8.onnx.json").read_text())
    assert meta["quantized"]["bits"] == 8 and meta["fp32_max_abs_diff_vs_pytorch"] < 1e-3
    assert not (tmp_path / "int8.fp32.onnx").exists()
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node)
    sess = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    fp32_net = load_backbone(teacher)

    def accuracy(run):
        inputs = [to_model_input(torch.from_numpy(x[:, None]), meta["mean"], meta["std"], 1, 12).contiguous()
                  for x in (data["x"], data["x_test"])]
        feats = [run(x) for x in inputs]
        return knn_top1(feats[0], torch.from_numpy(data["y"]), feats[1], torch.from_numpy(data["y_test"]), 4, k=20)

    int8 = accuracy(lambda x: torch.from_numpy(sess.run(None, {"images": x.numpy()})[0]))
    with torch.no_grad():
        fp32 = accuracy(fp32_net)
    assert abs(int8 - fp32) <= 0.1, (fp32, int8)  # 32 test images: at most 3 change
    assert meta["quantized"]["mean_cosine_vs_fp32"] > 0.95


def test_export_quantize_is_onnx_int8_only(teacher, tmp_path, capsys):
    assert main(["export", str(teacher), "--format", "safetensors", "--quantize", "8", "--out", str(tmp_path / "a")]) == 2
    assert "only --format onnx --quantize 8" in capsys.readouterr().err


# --- the SSQL term --------------------------------------------------------------------------------

def _essl(ssql_weight):
    from leanssl.methods.essl import ESSL, EsslConfig

    torch.manual_seed(0)
    info = DataInfo(40, 1, 12, (0.5,), (0.25,))
    return ESSL(build_backbone("small_cnn", 1, 12), info, EsslConfig(dim=8, proj_hidden=16, negatives=10,
                                                                       ssql_weight=ssql_weight, ssql_bits=(4, 4)))


def _hand_ssql(method, v, z_full, bits):
    """The term from a separate network holding the rounded weights as its own leaves, layer inputs rounded
    (identity gradient); returns the term and that copy, whose weight gradients the STE must reproduce."""
    import copy

    from torch import nn

    q = copy.deepcopy(method.backbone)
    for m in q.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight.detach()
            qmax = 2 ** (bits - 1) - 1
            s = w.abs().flatten(1).amax(1).view(-1, *[1] * (w.ndim - 1)) / qmax
            m.weight = nn.Parameter(_fq(w, s, 0, -qmax, qmax))

            def hook(_, args, bits=bits):
                x = args[0]
                s_, z_ = _act_qparams(x.detach(), 0, 2 ** bits - 1)
                return (x + (_fq(x, s_, z_, 0, 2 ** bits - 1) - x).detach(),)
            m.register_forward_pre_hook(hook)
    z_q = method.head(q(v))
    return (2 - 2 * F.cosine_similarity(z_q, z_full.detach(), dim=1)).mean(), q


def test_ssql_gradient_reaches_the_single_full_precision_copy_as_the_straight_through_estimate():
    from torch import nn

    from leanssl.methods.ssql import ssql_term

    method = _essl(1.0)
    assert [n for n, _ in method.named_parameters()] == [n for n, _ in _essl(0.0).named_parameters()]  # no 2nd copy
    method.train()
    v = torch.randn(16, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    z_full = method.embed(v)
    stats = {n: b.clone() for n, b in method.backbone.named_buffers()}
    term = ssql_term(method.backbone, method.head, v, z_full, bits=4)
    assert all(torch.equal(b, stats[n]) for n, b in method.backbone.named_buffers())  # BN running stats untouched
    ref, copy_ = _hand_ssql(method, v, z_full, 4)
    assert term.item() == pytest.approx(ref.item(), rel=1e-4)
    method.zero_grad()
    term.backward()
    got = [m.weight.grad for m in method.backbone.modules() if isinstance(m, nn.Conv2d)]
    ref.backward()
    want = [m.weight.grad for m in copy_.modules() if isinstance(m, nn.Conv2d)]
    assert all(g is not None and g.abs().sum() > 0 for g in got)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-3, atol=1e-6)


def test_ssql_option_trains_essl_and_simclr_and_changes_the_loss(tiny_npz, tmp_path):
    losses = {}
    for method, weight in (("essl", 0.0), ("essl", 1.0), ("simclr", 1.0)):
        out = tmp_path / f"{method}-{weight}"
        args = dict(TINY_ESSL) if method == "essl" else {"dim": 16}
        s = train(TrainConfig(data=f"npz:{tiny_npz}", method=method, epochs=1, batch_size=16, out=str(out),
                              cache_dir=str(tmp_path / "cache"), progress=False,
                              method_args={**args, "ssql_weight": weight, "ssql_bits": (2, 8)}))
        losses[method, weight] = s["final_loss"]
    assert losses["essl", 1.0] != losses["essl", 0.0]
    assert all(np.isfinite(v) for v in losses.values())


def test_ssql_bad_bit_range_is_one_line(tiny_npz, tmp_path, capsys):
    assert main(["train", "--data", f"npz:{tiny_npz}", "--epochs", "1", "--batch-size", "16", "--out", str(tmp_path / "r"),
                 "--ssql-weight", "1", "--method-arg", "ssql_bits=1,8", "--no-progress"]) == 2
    assert "ssql_bits" in capsys.readouterr().err


def test_bench_cells_score_the_quantised_backbone(tiny_npz, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the cell process inherits it
    out = tmp_path / "bench"
    assert main(["bench", "--data", f"npz:{tiny_npz}", "--methods", "essl", "--backbones", "small_cnn", "--fractions",
                 "1", "--epochs", "1", "--batch-size", "16", "--quantize", "8", "--no-floors", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]) == 0
    cell = json.loads((out / "results.json").read_text())["cells"][0]
    q = cell["quantized"]["8"]
    assert q["how"].startswith("int8") and abs(q["knn_top1"] - cell["eval"]["knn_top1"]) <= 0.1
