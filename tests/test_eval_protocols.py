"""The evaluation protocols beyond kNN: the C sweep and its SGD path, few-shot episodes, fine-tuning,
low-label, the report, and `leanssl eval` with every protocol. Small synthetic data with known answers."""

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from leanssl.cli import main
from leanssl.eval.evaluate import EvalSettings, evaluate, parse_protocols
from leanssl.eval.fewshot import FewShotConfig, episode_stats, fewshot_eval, sample_episodes
from leanssl.eval.finetune import FinetuneConfig, finetune
from leanssl.eval.linear import C_GRID, fit_logistic, fit_logistic_batched, linear_probe, weight_decay_for
from leanssl.models.backbones import SmallCNN
from leanssl.train import TrainConfig


def _clusters(n_per, classes=5, dim=16, spread=0.3, seed=0, centre_seed=0):
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(centre_seed)) * 3
    y = torch.arange(classes).repeat_interleave(n_per)
    return centres[y] + spread * torch.randn(len(y), dim, generator=torch.Generator().manual_seed(seed)), y


def _shuffled(y, seed=3):
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


# --- linear probe: the sweep over C -----------------------------------------------------------

def test_c_grid_is_ericssons():
    # 45 log-spaced values of C = 1/wd for wd in 1e-6..1e5 (Ericsson et al. 2021): a silent change moves every number.
    assert len(C_GRID) == 45 and math.isclose(C_GRID[0], 1e-5) and math.isclose(C_GRID[-1], 1e6)
    assert weight_decay_for(1.0, 50) == 0.01  # C·ΣCE + ½‖W‖², divided by C·n


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
def test_probe_separates_classes_and_shuffled_labels_stay_near_chance(solver):
    xtr, ytr = _clusters(40)
    xte, yte = _clusters(20, seed=1)
    cs = (1e-3, 1e-1, 10.0)
    assert linear_probe(xtr, ytr, xte, yte, 5, cs=cs, solver=solver)["top1"] > 0.98
    assert linear_probe(xtr, _shuffled(ytr), xte, yte, 5, cs=cs, solver=solver)["top1"] < 0.4


@pytest.mark.parametrize("solver", ["lbfgs", "sgd"])
def test_c_is_chosen_without_the_test_split(solver):
    xtr, ytr = _clusters(30, spread=3.0)
    xte, yte = _clusters(30, seed=1, spread=3.0)
    cs = (1e-4, 1e-2, 1.0, 100.0)
    a = linear_probe(xtr, ytr, xte, yte, 5, cs=cs, solver=solver)
    # Test features that are all NaN would poison any fit or score that touched them.
    b = linear_probe(xtr, ytr, torch.full_like(xte, float("nan")), torch.zeros_like(yte), 5, cs=cs, solver=solver)
    assert a["C"] == b["C"] and a["val_top1"] == b["val_top1"] and a["solver"] == solver
    assert a["weight_decay"] == pytest.approx(weight_decay_for(a["C"], len(xtr)))


def test_probe_head_works_on_unstandardised_features():
    xtr, ytr = _clusters(30, spread=2.0)
    xte, yte = _clusters(30, seed=1, spread=2.0)
    p = linear_probe(xtr * 5 + 3, ytr, xte * 5 + 3, yte, 5, cs=(0.1, 10.0))
    with torch.no_grad():
        assert (p["head"](xte * 5 + 3).argmax(1) == yte).float().mean().item() == pytest.approx(p["top1"])


def test_batched_logistic_fits_each_problem_as_alone():
    xs, ys = zip(*(_clusters(6, classes=3, spread=2.0, seed=s, centre_seed=s) for s in range(3)))
    w, b = fit_logistic_batched(torch.stack(xs), torch.stack(ys), 3, 0.01)

    def objective(x, y, w, b):  # mean CE + wd·‖W‖², each problem on its own
        return (nn.functional.cross_entropy(x @ w.T + b, y) + 0.01 * w.pow(2).sum()).item()

    for i in range(3):
        alone = fit_logistic(xs[i], ys[i], 3, 0.01)
        assert objective(xs[i], ys[i], w[i], b[i]) == pytest.approx(
            objective(xs[i], ys[i], alone.weight.detach(), alone.bias.detach()), rel=1e-4)
        assert objective(xs[i], ys[i], w[i], b[i]) < objective(xs[i], ys[i], w[(i + 1) % 3], b[(i + 1) % 3])


# --- few-shot ---------------------------------------------------------------------------------

def test_worst_case_statistics_by_hand():
    acc = [0.5] * 18 + [0.1, 0.3]  # 20 episodes: the worst 10% are 0.1 and 0.3
    s = episode_stats(acc)
    assert s["mean"] == pytest.approx(0.47) and s["min"] == 0.1 and s["worst10"] == pytest.approx(0.2)
    # std (ddof 1) = sqrt((18·0.03² + 0.37² + 0.17²) / 19) = sqrt(0.182 / 19); 1.96·std/sqrt(20):
    assert s["ci95"] == pytest.approx(1.96 * math.sqrt(0.182 / 19) / math.sqrt(20))
    assert episode_stats([0.9, 0.2, 0.6])["worst10"] == 0.2  # at least one episode
    assert episode_stats([0.4] * 14 + [0.1])["worst10"] == pytest.approx(0.25)  # ceil(1.5) = 2 episodes


def test_episodes_are_reproducible_from_the_seed_and_well_formed():
    ytr, yte = np.repeat(np.arange(8), 30), np.repeat(np.arange(8), 10)
    a = sample_episodes(ytr, yte, ways=5, shots=3, queries=4, episodes=50, seed=7)
    b = sample_episodes(ytr, yte, ways=5, shots=3, queries=4, episodes=50, seed=7)
    c = sample_episodes(ytr, yte, ways=5, shots=3, queries=4, episodes=50, seed=8)
    assert np.array_equal(a.support, b.support) and np.array_equal(a.query, b.query)
    assert not np.array_equal(a.support, c.support)
    for sup, qry in zip(a.support, a.query):
        s_cls, q_cls = ytr[sup].reshape(5, 3), yte[qry].reshape(5, 4)
        assert (s_cls == s_cls[:, :1]).all() and (q_cls == s_cls[:, :1]).all()  # class-major, same class per row
        assert len(set(s_cls[:, 0])) == 5 and len(set(sup)) == 15 and len(set(qry)) == 20
    # The same seed gives the same accuracies.
    xtr, ytr_t = _clusters(30, classes=8, spread=4.0)
    xte, yte_t = _clusters(10, classes=8, spread=4.0, seed=1)
    cfg = FewShotConfig(shots=(1,), episodes=30, seed=7)
    assert fewshot_eval(xtr, ytr_t, xte, yte_t, cfg) == fewshot_eval(xtr, ytr_t, xte, yte_t, cfg)


def test_fewshot_separable_near_perfect_and_shuffled_near_chance():
    xtr, ytr = _clusters(30, classes=8)
    xte, yte = _clusters(20, classes=8, seed=1)
    cfg = FewShotConfig(shots=(1, 5), episodes=100)
    good = fewshot_eval(xtr, ytr, xte, yte, cfg)
    bad = fewshot_eval(xtr, _shuffled(ytr), xte, yte, cfg)
    for setting in ("5-way 1-shot", "5-way 5-shot"):
        for clf in ("nearest_centroid", "logistic"):
            assert good[setting][clf]["mean"] > 0.98 and good[setting][clf]["episodes"] == 100
            assert bad[setting][clf]["mean"] < 0.35  # chance is 1/5
    assert "skipped" in fewshot_eval(xtr, ytr, xte, yte, FewShotConfig(shots=(31,), episodes=5))["5-way 31-shot"]


# --- fine-tuning ------------------------------------------------------------------------------

def _blobs(n, seed):
    """4 classes: a bright 6x6 square in one quadrant of a noisy 12x12 grey image (as tests/conftest.py)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = rng.integers(0, 60, size=(n, 1, 12, 12)).astype(np.uint8)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 2)
        x[i, 0, r * 6:r * 6 + 6, q * 6:q * 6 + 6] += 150
    return x, y


INFO = {"channels": 1, "resolution": 12, "mean": [0.3], "std": [0.3]}
FT = FinetuneConfig(epochs=1, min_steps=60, batch_size=16, lr=0.05, flip_p=0.0, crop_scale=(0.8, 1.0))


def test_finetune_learns_separable_classes_shuffled_stay_near_chance_and_source_untouched():
    torch.manual_seed(0)
    net = SmallCNN(1, widths=(8, 16))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    xtr, ytr = _blobs(96, 0)
    xte, yte = _blobs(40, 1)
    cpu = torch.device("cpu")
    good = finetune(net, None, xtr, ytr, xte, yte, 4, INFO, cpu, FT, progress=False)
    bad = finetune(net, None, xtr, np.random.default_rng(0).permutation(ytr), xte, yte, 4, INFO, cpu, FT, progress=False)
    assert good["top1"] > 0.95 and good["steps"] == 60 and bad["top1"] < 0.5
    for k, v in net.state_dict().items():  # fine-tuning trains a copy: BatchNorm statistics included
        assert torch.equal(v, before[k]), k


def test_finetune_warmup_starts_from_the_given_head_and_grey_input_feeds_an_rgb_backbone():
    torch.manual_seed(0)
    net = SmallCNN(3, widths=(8, 16))
    head = nn.Linear(16, 4)
    head_before = head.weight.detach().clone()
    xtr, ytr = _blobs(96, 0)
    xte, yte = _blobs(40, 1)
    info = {"channels": 3, "resolution": 16, "mean": [0.3] * 3, "std": [0.3] * 3}  # 1 -> 3 channels, 12 -> 16 px
    r = finetune(net, head, xtr, ytr, xte, yte, 4, info, torch.device("cpu"), FT, progress=False)
    assert r["top1"] > 0.9 and torch.equal(head.weight, head_before)


# --- evaluate(): every protocol, the report, transfer -----------------------------------------

class Pool(nn.Module):
    """A parameter-free 'backbone' whose features separate the tiny_npz classes: 2x2 average pooling."""

    out_dim = 4

    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


SMALL = EvalSettings(linear_cs=(0.01, 1.0, 100.0), finetune=FinetuneConfig(epochs=1, min_steps=8, batch_size=32, flip_p=0.0),
                     fewshot=FewShotConfig(shots=(1, 5), episodes=40))


def test_evaluate_every_protocol_with_baselines_and_a_transfer_report(tiny_npz, tmp_path):
    info = {"channels": 1, "resolution": 12, "mean": [0.3], "std": [0.3]}
    run_cfg = TrainConfig(data="digits", backbone="small_cnn", method="essl")  # pretrained elsewhere: transfer
    res = evaluate(tmp_path, f"npz:{tiny_npz}", ("knn", "linear", "finetune", "fewshot", "lowlabel"), device="cpu",
                   cache_dir=tmp_path / "cache", progress=False, backbone=Pool(), info=info, run_cfg=run_cfg,
                   settings=SMALL)
    json.dumps(res)  # --json prints it
    assert res["transfer"] and res["train_images"] == 96 and res["test_images"] == 32
    for key in ("knn_top1", "linear_top1", "finetune_top1", "finetune_warmup_top1"):
        assert res[key] > 0.9, key
    assert res["fewshot"]["4-way 5-shot"]["logistic"]["mean"] > 0.9  # 4 classes: 5-way becomes 4-way
    low = res["lowlabel"]
    assert (low["1%"]["labels"], low["10%"]["labels"]) == (4, 8)  # class-balanced: 1 and 2 per class of 24
    assert low["10%"]["linear_top1"] > 0.9
    pixels, rand = res["baselines"]["raw_pixels"], res["baselines"]["random_init"]
    assert "finetune_top1" not in pixels and "finetune_top1" in rand and "fewshot" in pixels
    assert "finetune_warmup_top1" not in rand and "finetune_warmup_top1" not in rand["lowlabel"]["10%"]  # from scratch only
    text = (tmp_path / "eval-npz-tiny.md").read_text()
    assert res["report"] == str(tmp_path / "eval-npz-tiny.md")
    assert "**Transfer**" in text and "pretrained on `digits`" in text
    header = next(line for line in text.splitlines() if line.startswith("| protocol"))
    assert "raw pixels" in header and "small_cnn, random init" in header and "small_cnn, essl" in header
    n = res["train_images"]  # k is capped at the labelled images, and the report says so
    knn = "k=200, T=0.1" if n >= 200 else f"k={n} (200 asked; capped at the {n} labelled images), T=0.1"
    assert knn in text and "C of 3 log-spaced" in text and "40 episodes" in text and "4 labels" in text


def _fake_run(folder, tiny_npz):
    """A run folder as `leanssl train` leaves it, with an untrained small_cnn (no training needed here)."""
    folder.mkdir()
    cfg = TrainConfig(data=f"npz:{tiny_npz}", backbone="small_cnn", out=str(folder))
    (folder / "config.json").write_text(json.dumps(asdict(cfg)))
    (folder / "data.json").write_text(json.dumps({"num_images": 96, "channels": 1, "resolution": 12,
                                                  "mean": [0.3], "std": [0.3]}))
    torch.manual_seed(0)
    save_file(SmallCNN(1).state_dict(), str(folder / "backbone.safetensors"))
    return folder


def test_cli_eval_protocols_json_and_report(tiny_npz, tmp_path, capsys):
    run = _fake_run(tmp_path / "run", tiny_npz)
    common = ["--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    assert main(["eval", str(run), "--data", f"npz:{tiny_npz}", "--protocol", "knn,fewshot", "--fewshot-episodes", "10",
                 "--fewshot-shots", "1,2", "--json", *common]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not res["transfer"] and 0 <= res["knn_top1"] <= 1 and res["train_images"] == 96
    assert set(res["fewshot"]) == {"4-way 1-shot", "4-way 2-shot"} and "baselines" in res  # baselines by default
    assert "In-domain" in (run / "eval-npz-tiny.md").read_text()
    assert main(["eval", str(run), "--data", f"npz:{tiny_npz}", "--no-baselines", "--linear-c-values", "3", "--json",
                 *common]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "baselines" not in res and {"knn_top1", "linear_top1", "train_images", "test_images"} <= set(res)
    assert res["settings"]["linear_C"] == {"values": 3, "min": pytest.approx(1e-5), "max": pytest.approx(1e6)}


@pytest.mark.parametrize("argv,needle", [
    (["--protocol", "knn,bogus"], "unknown protocol bogus"),
    (["--fewshot-shots", "1,x"], "--fewshot-shots wants comma-separated integers"),
    (["--fewshot-ways", "1"], "few-shot ways must be at least 2"),
    (["--linear-c-values", "0"], "--linear-c-values must be at least 1"),
])
def test_cli_eval_bad_settings_are_one_line_errors(argv, needle, tiny_npz, tmp_path, capsys):
    run = _fake_run(tmp_path / "run", tiny_npz)
    assert main(["eval", str(run), "--data", f"npz:{tiny_npz}", "--cache-dir", str(tmp_path / "c"), *argv]) == 2
    assert needle in capsys.readouterr().err


def test_all_five_protocols_parse_and_the_default_stays_knn_linear():
    assert parse_protocols("knn,linear,finetune,fewshot,lowlabel") == ["knn", "linear", "finetune", "fewshot", "lowlabel"]
    from leanssl.cli import build_parser
    a = build_parser().parse_args(["eval", "run", "--data", "digits"])
    assert a.protocol == "knn,linear" and a.baselines
