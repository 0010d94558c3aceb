"""What a new user meets in the first hour: messages that say what happened, no silent surprises.

Each test drives the command line (in-process) and asserts the message the user reads.
"""

import json
import os
import stat

import pytest

from leanssl.cli import main


def _train(tiny_npz, tmp_path, *extra, out="run"):
    return main(["train", "--data", f"npz:{tiny_npz}", "--batch-size", "16", "--out", str(tmp_path / out),
                 "--cache-dir", str(tmp_path / "cache"), "--dim", "16", "--proj-hidden", "32", "--negatives", "20",
                 "--no-progress", "--device", "cpu", *extra])


def _err_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


@pytest.mark.parametrize("argv,needle", [
    (["train", "--data", "digits", "--budget", "0"], "argument --budget: '0': the budget must be positive"),
    (["train", "--data", "digits", "--budget", "5x"], "'5x' is not a duration"),
    (["select", "run", "--data", "digits", "--count", "ten", "--out", "x.csv"], "argument --count: invalid int value"),
    (["train"], "the following arguments are required: --data"),
])
def test_usage_errors_are_one_line_with_a_help_hint(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("leanssl: error: ") and needle in lines[0], lines
    assert f"(see `leanssl {argv[0]} --help`)" in lines[0]


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"leanssl {version('leanssl')}"


def test_every_flag_has_help_text(capsys):
    from leanssl.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = [f"{name} {a.option_strings or a.dest}" for name, p in sub.choices.items() for a in p._actions
               if a.help is None and a.dest != "help"]
    assert missing == []


def test_a_file_or_a_missing_path_given_to_data_says_so(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert main(["train", "--data", str(text), "--out", str(tmp_path / "o")]) == 2
    assert _err_lines(capsys) == [f"leanssl: error: data path {text} is a file, not a folder of images"]
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert _err_lines(capsys) == [f"leanssl: error: no such file or folder: {tmp_path / 'nope'}"]


def test_start_line_resume_line_and_a_finished_run_refuses_a_longer_schedule(tiny_npz, tmp_path, capsys):
    assert _train(tiny_npz, tmp_path, "--epochs", "2", "--stop-after", "1") == 0
    err = capsys.readouterr().err
    assert (f"leanssl: training essl (lean_cnn) on 96 images of npz:{tiny_npz} at 12 px, batch 16, lr 0.03125, "
            f"2 epochs x 6 steps = 12 steps, on cpu -> {tmp_path / 'run'}") in err
    # A stopped run continues with its own length when none is given, and says from where.
    assert _train(tiny_npz, tmp_path, "--resume") == 0
    assert "leanssl: resuming (step 6 of 12, 1 of 2 epochs done)" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs_done"] == 2
    # A finished run asked for more epochs refuses (its cosine has decayed to zero) and says what to do.
    assert _train(tiny_npz, tmp_path, "--epochs", "5", "--resume") == 2
    msg = _err_lines(capsys)[-1]
    assert msg.startswith("leanssl: error: --resume: this run finished (--epochs 2)") and "another --out" in msg
    # Resumed as it was: nothing to train, and it says so.
    assert _train(tiny_npz, tmp_path, "--epochs", "2", "--resume") == 0
    assert "already finished (step 12 of 12, 2 of 2 epochs done): nothing to train" in capsys.readouterr().err


def test_an_unfinished_run_refuses_another_length(tiny_npz, tmp_path, capsys):
    assert _train(tiny_npz, tmp_path, "--epochs", "3", "--stop-after", "1") == 0
    capsys.readouterr()
    assert _train(tiny_npz, tmp_path, "--epochs", "5", "--resume") == 2
    assert "planned for --epochs 3; resume with --epochs 3" in _err_lines(capsys)[-1]


def test_batch_larger_than_the_data_is_capped_with_a_note(tiny_npz, tmp_path, capsys):
    assert main(["train", "--data", f"npz:{tiny_npz}", "--epochs", "1", "--out", str(tmp_path / "run"),
                 "--cache-dir", str(tmp_path / "cache"), "--dim", "16", "--negatives", "20", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert ("leanssl: note: only 96 training images: batch size capped from 128 to 96 "  # essl's default batch
            "(the default lr scales with it)") in err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batch_size"] == 96
    # A resume with the same (default) command line is the same run.
    assert main(["train", "--data", f"npz:{tiny_npz}", "--out", str(tmp_path / "run"), "--resume",
                 "--cache-dir", str(tmp_path / "cache"), "--dim", "16", "--negatives", "20", "--no-progress"]) == 0


def test_budget_start_line_says_seconds(tiny_npz, tmp_path, capsys):
    assert _train(tiny_npz, tmp_path, "--budget", "1") == 0
    assert "for 1 s (--budget; at most 10000 epochs)" in capsys.readouterr().err


def test_summary_json_is_strict_json():
    from leanssl.runfolder import json_safe

    s = json_safe({"final_loss": float("nan"), "peak": float("inf"), "n": 3, "x": 0.5})
    assert json.loads(json.dumps(s, allow_nan=False)) == {"final_loss": None, "peak": None, "n": 3, "x": 0.5}


def test_eval_of_an_unfinished_budget_run_says_the_time_not_the_epoch_cap(tiny_npz, tmp_path, capsys):
    from leanssl.train import TrainConfig, train

    train(TrainConfig(data=f"npz:{tiny_npz}", epochs=10_000, time_budget=60, stop_at=0.5, batch_size=16,
                      out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), progress=False,
                      method_args={"dim": 16, "negatives": 20}))
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", f"npz:{tiny_npz}", "--protocol", "knn", "--json",
                 "--no-baselines", "--cache-dir", str(tmp_path / "cache")]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out.strip().splitlines()[-1])
    assert res["run_budget"] == 60 and 0.5 <= res["run_seconds"] < 60
    assert f"after {res['run_seconds']:.0f} s of its 60 s budget" in err and "10000" not in err
    # Resuming says the same time, the stopped epoch's part included (not only the finished epochs').
    train(TrainConfig(data=f"npz:{tiny_npz}", epochs=10_000, time_budget=60, stop_at=res["run_seconds"] + 0.3,
                      batch_size=16, out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), progress=False,
                      method_args={"dim": 16, "negatives": 20}), resume=True)
    assert f"resuming ({res['run_seconds']:.0f} s of the 60 s budget spent" in capsys.readouterr().err


def test_eval_says_a_run_is_incomplete_and_caps_k(tiny_npz, tmp_path, capsys):
    assert _train(tiny_npz, tmp_path, "--epochs", "3", "--stop-after", "1") == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", f"npz:{tiny_npz}", "--protocol", "knn", "--json",
                 "--no-baselines", "--labels-per-class", "3", "--cache-dir", str(tmp_path / "cache")]) == 0
    out, err = capsys.readouterr()
    res = json.loads(out.strip().splitlines()[-1])
    assert (res["run_complete"], res["run_epoch"], res["run_epochs"], res["knn_k_used"]) == (False, 1, 3, 12)
    assert "leanssl: note: incomplete run: scored the checkpoint after epoch 1 of 3" in err
    report = (tmp_path / "run" / "eval-npz-tiny-3perclass.md")
    text = next(tmp_path.joinpath("run").glob("eval-*.md")).read_text() if not report.exists() else report.read_text()
    assert "**Incomplete run: scored the checkpoint after epoch 1 of 3" in text
    assert "k=12 (200 asked; capped at the 12 labelled images)" in text


def test_exported_backbone_is_world_readable_and_evaluable(tiny_npz, tmp_path, capsys):
    assert _train(tiny_npz, tmp_path, "--epochs", "1") == 0
    old = os.umask(0o022)
    try:
        assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "b.safetensors")]) == 0
    finally:
        os.umask(old)
    for f in (tmp_path / "b.safetensors", tmp_path / "run" / "backbone.safetensors"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "b.safetensors"), "--data", f"npz:{tiny_npz}", "--protocol", "knn", "--json",
                 "--no-baselines", "--cache-dir", str(tmp_path / "cache")]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["run_complete"] is True and 0 <= res["knn_top1"] <= 1
    assert list(tmp_path.glob("b-eval-*.md"))  # the report lies beside the file


def test_map_out_must_be_a_folder_and_select_budget_is_now_count(tiny_npz, tmp_path, capsys):
    assert _train(tiny_npz, tmp_path, "--epochs", "1") == 0
    capsys.readouterr()
    common = ["--data", f"npz:{tiny_npz}", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(["map", str(tmp_path / "run"), *common, "--out", str(tmp_path / "map.png")]) == 2
    assert _err_lines(capsys) == [f"leanssl: error: map --out {tmp_path / 'map.png'}: --out is a folder (map.png, "
                                  f"map.csv and neighbours.png go into it); try --out {tmp_path / 'map'}"]
    assert not (tmp_path / "map.png").exists()
    assert main(["select", str(tmp_path / "run"), *common, "--budget", "4", "--out", str(tmp_path / "s.csv")]) == 0
    out, err = capsys.readouterr()
    assert "leanssl: warning: select --budget is now --count" in err and "selected 4 of 96" in out
    assert main(["select", str(tmp_path / "run"), *common, "--out", str(tmp_path / "s.csv")]) == 2
    assert "select needs --count K" in _err_lines(capsys)[-1]


def test_demo_keeps_one_run_per_length(tmp_path, monkeypatch, capsys):
    import leanssl.demo as demo

    seen = []

    def fake_train(cfg, resume=False):
        seen.append((cfg.out, cfg.epochs, resume))
        raise KeyboardInterrupt  # stop before the (slow) evaluation

    monkeypatch.setattr(demo, "train", fake_train)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")  # an earlier full-length demo
    for epochs in (1, None):
        with pytest.raises(KeyboardInterrupt):
            demo.run_demo(tmp_path, epochs=epochs)
    assert seen == [(str(tmp_path / "run-1ep"), 1, False), (str(tmp_path / "run"), demo.DEMO_EPOCHS, True)]
    out = capsys.readouterr().out
    assert "pretraining: essl (small_cnn) on scikit-learn digits for 1 epoch ->" in out
    assert f"continuing (or reusing) the earlier demo run: essl (small_cnn) on scikit-learn digits for " \
           f"{demo.DEMO_EPOCHS} epochs" in out


def test_neighbour_grid_has_title_headers_class_names_and_legend(tmp_path):
    import numpy as np
    from PIL import Image

    from leanssl.embeddings import Embeddings
    from leanssl.viz import neighbour_grid_png

    rng = np.random.default_rng(0)
    n = 6
    emb = Embeddings(features=rng.normal(size=(n, 4)).astype(np.float32), split=np.array(["train"] * n),
                     index=np.arange(n), label=np.array([0, 0, 1, 1, 0, 1]), paths=None, classes=["cat", "dog"],
                     images=[rng.integers(0, 255, size=(n, 1, 8, 8), dtype=np.uint8)])
    neighbour_grid_png(emb, np.array([0, 2]), 3, tmp_path / "n.png", title="my title")
    img = np.asarray(Image.open(tmp_path / "n.png").convert("RGB"))
    head, row_h = 56, 64 + 8 + 16
    assert (img[:head] < 128).any()  # title and column headers are drawn above the grid
    legend_y = head + 2 * row_h + 8 + 7
    assert tuple(img[legend_y, 11]) == (0x2C, 0xA0, 0x2C) and tuple(img[legend_y, 227]) == (0xD6, 0x27, 0x28)
    caption = img[head + 72: head + 88, 4:60]  # the query's class name under its thumbnail
    assert (caption < 128).any()


def _class_folder(root, per_class=10):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_a_held_out_test_split_is_announced_and_all_images_pretrains_on_everything(tmp_path, capsys):
    data = _class_folder(tmp_path / "pics")
    common = ["--data", str(data), "--epochs", "1", "--batch-size", "8", "--resolution", "8", "--dim", "16",
              "--negatives", "8", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(["train", *common, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert (f"leanssl: note: {data} is labelled but has no test split: 4 images (20% of each class, seeded) are held "
            f"out as the test split for eval, so pretraining uses 16 of 20; --all-images pretrains on every image") in err
    assert main(["train", *common, "--out", str(tmp_path / "b"), "--all-images"]) == 0
    err = capsys.readouterr().err
    assert "--all-images: pretraining on all 20 images, the 4 of the test split included" in err
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["train_images"] == 20
    assert main(["select", str(tmp_path / "a"), "--data", str(data), "--count", "3", "--cache-dir",
                 str(tmp_path / "cache"), "--no-progress", "--out", str(tmp_path / "s.csv")]) == 0
    out, err = capsys.readouterr()
    assert "--split pretrain leaves it out; --split all includes every image" in err and "selected 3 of 16" in out
