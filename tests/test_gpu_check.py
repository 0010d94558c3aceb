"""benchmarks/gpu_check.py, the device check, proven on a CPU before a GPU sees it: every stage's command is
accepted by the program it calls, a real stage runs in its own process into the report, a stage that
overruns its limit is stopped and reported, and throughput results become the report's tables and targets."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402
import throughput  # noqa: E402

from leanssl.cli import build_parser  # noqa: E402


@pytest.mark.parametrize("dry", [True, False])
def test_every_stage_command_is_accepted_by_the_program_it_runs(dry, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "synthetic_npz", lambda path, shape, n: path)  # not 50k images here
    s = gpu_check.sizes(dry)
    for name in gpu_check.FULL:
        cmd, env = gpu_check.stage_command(name, s, tmp_path, 480, dry)
        if name in gpu_check.THROUGHPUT:
            a = throughput.parser().parse_args(cmd[2:])
            assert a.device == s["device"] and a.precision == gpu_check.THROUGHPUT[name][1]
            assert a.compile == gpu_check.THROUGHPUT[name][2]
        elif name == "train":
            a = build_parser().parse_args(cmd[3:])
            assert a.method == "essl" and a.precision == "bf16" and a.epochs == s["epochs"] and a.compile == (not dry)
            assert 10 <= a.budget <= gpu_check.FULL["train"]
        elif name in ("tests", "suite"):
            assert cmd[1:3] == ["-m", "pytest"] and all(Path(gpu_check.REPO, c.split("::")[0]).exists()
                                                        for c in cmd if c.startswith("tests"))
        else:
            assert "pip" in cmd
    assert not dry or gpu_check.sizes(dry)["device"] == "cpu"


def test_dry_run_trains_into_the_report_and_a_stage_past_its_limit_is_stopped(tmp_path, monkeypatch):
    out = tmp_path / "check"
    report = gpu_check.main(["--dry-run", "--stages", "install,train", "--out", str(out)])
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["install"]["status"].startswith("skipped") and stages["train"]["status"] == "ok"
    assert report["train"]["epochs_done"] == 2 and report["train"]["precision"] == "bf16"
    saved = json.loads((out / "report.json").read_text())
    assert saved["train"]["complete"] and "## essl end to end" in (out / "report.md").read_text()
    (out / "tp-bf16.json").write_text("{}")  # a previous check's result: a rerun does not report it
    report = gpu_check.main(["--dry-run", "--stages", "install", "--out", str(out)])
    assert "throughput" not in report or report["throughput"] == {}

    slow = gpu_check.run_stage("slow", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"],
                               2, out)
    assert slow["status"] == "timed out after 2 s" and slow["seconds"] < 20 and slow["tail"][-1] == "started"


def test_throughput_results_become_tables_and_targets(tmp_path):
    s = gpu_check.sizes(True)
    cmd, _ = gpu_check.stage_command("tp-bf16", s, tmp_path, 480, True)
    throughput.main(cmd[2:] + ["--no-peer"])  # in this process: the stage's real measurement at toy size
    report = {"dry_run": True, "minutes": 8, "command": "test", "seconds_used": 1.0, "stages": [],
              "environment": gpu_check.environment()}
    gpu_check.collect(report, tmp_path)
    assert set(report["throughput"]["tp-bf16"]) == {"essl", "simclr", "_matmul_peak_tflop_s"}
    targets = {t["target"]: t for t in report["targets"]}
    assert targets["simclr >= 20,000 images/s"]["pass"] is False  # a CPU toy is far from the GPU target
    assert targets["byol >= 20,000 images/s"]["value"] is None  # not measured
    md = gpu_check.markdown(report)
    assert "| essl |" in md and "## tp-bf16" in md and "DRY RUN" in md
