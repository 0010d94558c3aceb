"""The `leanssl` command: demo, train, eval."""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
from pathlib import Path

from . import installed_version
from .cli_args import Parser, parse_duration  # noqa: F401 (scripts import parse_duration from here)
from .errors import LeansslError


def _add_train_args(p: argparse.ArgumentParser, distill: bool = False) -> None:
    """TrainConfig's flags and every method's settings (leanssl.cli_args), then what only the command has."""
    from .cli_args import add_config_flags, add_method_flags
    from .methods import METHODS
    from .models.backbones import DEFAULT_BACKBONE
    from .train import TrainConfig

    if distill:  # the method is simreg; the backbone is the student
        p.add_argument("teacher", help="the teacher's run folder (its backbone is frozen)")
        p.add_argument("--student", dest="backbone", default=None,
                       help=f"the student backbone (as train --backbone; default {DEFAULT_BACKBONE}, "
                            "--resume: the run's own)")
        p.set_defaults(method="simreg")
    add_config_flags(p, TrainConfig, skip=("method", "backbone") if distill else ())
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="set a field of the method's config, e.g. local_crops=2 or global_scale=0.2,1 (repeatable; "
                        "`leanssl train --method NAME --help` lists the fields and their defaults)")
    p.add_argument("--force", action="store_true",
                   help="start a fresh run in --out even if it holds other files or an earlier run (the files a run "
                        "writes are replaced; others are left)")
    add_method_flags(p, METHODS)


def _methods_epilog() -> str:
    from .methods import METHODS
    from .train import TrainConfig

    width = max(map(len, METHODS))
    return "methods (`leanssl train --method NAME --help` shows NAME's settings):\n" + "\n".join(
        f"  {name:<{width}}  {cls.description}" + (" (default)" if name == TrainConfig.method else "")
        for name, cls in METHODS.items())


def _train_config(a: argparse.Namespace):
    """The TrainConfig a parsed `train` / `distill` command line asks for."""
    from .cli_args import config_values, method_arg_values, method_values
    from .methods import get_method
    from .models.backbones import DEFAULT_BACKBONE
    from .train import TrainConfig
    from .train.config import BUDGET_EPOCH_CAP

    values = config_values(a, TrainConfig)
    method = get_method(a.method)  # an unknown name: one clear error
    method_args = method_values(a, method)
    if getattr(a, "teacher", None):  # distill's argument
        from .train import load_run_config

        load_run_config(Path(a.teacher))  # a bad teacher folder fails before any data is decoded
        method_args.update(teacher=str(Path(a.teacher).resolve()))
    method_args.update(method_arg_values(method, a.method_arg))
    if values["backbone"] is None:  # as a resumed run's batch: a default that changed since does not break a resume
        values["backbone"] = _resumed_backbone(a) or DEFAULT_BACKBONE
    if values["epochs"] is None:
        values["epochs"] = BUDGET_EPOCH_CAP if a.budget is not None else TrainConfig.epochs
    data_name = a.data.split(":")[0].strip("/").replace("/", "_") or "data"
    values["out"] = a.out or f"runs/{data_name}-{a.method}-{values['backbone']}"
    return TrainConfig(**values, method_args=method_args)


def _resumed_backbone(a: argparse.Namespace) -> str | None:
    """The backbone of the run that `--resume --out DIR` continues (None when there is none to read:
    the resume itself then says what is wrong)."""
    from .runfolder import RunFolder

    folder = RunFolder(a.out) if a.resume and a.out else None
    if folder is None or not folder.is_run():
        return None
    try:
        return folder.config_values().get("backbone")
    except (LeansslError, OSError, AttributeError):
        return None


def _report_skips(summary: dict, out: str) -> None:
    """What the run left out, said again at the end where it is seen."""
    if summary["skipped_images"]:
        print(f"leanssl: skipped {summary['skipped_images']} undecodable image(s), listed in {Path(out) / 'skipped.txt'}",
              file=sys.stderr)
    if summary["skipped_steps"]:
        print(f"leanssl: skipped {summary['skipped_steps']} diverged batch(es) (--on-nan skip)", file=sys.stderr)


def _saved_schedule(cfg) -> None:
    """`train --resume` without --epochs/--budget continues the length the run was started with."""
    from .runfolder import RunFolder
    from .train import load_run_config

    if (Path(cfg.out) / RunFolder.CONFIG).is_file():
        saved = load_run_config(Path(cfg.out))
        cfg.epochs, cfg.time_budget = saved.epochs, saved.time_budget


def cmd_train(a: argparse.Namespace) -> int:
    from .train import TrainingInterrupted, train

    cfg = _train_config(a)
    if a.resume and a.epochs is None and a.budget is None:
        _saved_schedule(cfg)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 reports for all
    try:
        summary = train(cfg, resume=a.resume, force=a.force)
    except TrainingInterrupted as e:
        if not main:
            return 128 + signal.Signals[e.summary["interrupted"]]
        _report_skips(e.summary, cfg.out)
        print(f"leanssl: {e.summary['interrupted']}: stopped at step {e.summary['steps_done']}, checkpoint saved in "
              f"{cfg.out} (continue with --resume)", file=sys.stderr)
        return 128 + signal.Signals[e.summary["interrupted"]]  # the shell's convention for "ended by this signal"
    if not main:
        return 0
    _report_skips(summary, cfg.out)
    state = "finished" if summary["complete"] else f"stopped after epoch {summary['epochs_done']} (continue with --resume)"
    print(f"{state}: {summary['train_images']} images, {summary['train_seconds']:.1f} s, "
          f"{summary['images_per_s'] or 0:.0f} img/s, peak memory {summary['peak_mem_mb']:.0f} MB -> {cfg.out}")
    return 0


def _eval_settings(a: argparse.Namespace):
    """The protocol settings: EvalSettings' defaults, with what the command line gave."""
    from dataclasses import replace

    from .eval.evaluate import EvalSettings
    from .eval.linear import c_grid

    def given(**kw) -> dict:
        return {k: v for k, v in kw.items() if v is not None}

    s = EvalSettings()
    shots = None
    if a.fewshot_shots is not None:
        try:
            shots = tuple(int(k) for k in a.fewshot_shots.split(","))
        except ValueError:
            raise LeansslError(f"--fewshot-shots wants comma-separated integers, got {a.fewshot_shots!r}") from None
    if a.linear_c_values is not None and a.linear_c_values < 1:
        raise LeansslError(f"--linear-c-values must be at least 1, got {a.linear_c_values}")
    cs = c_grid(a.linear_c_values) if a.linear_c_values is not None else None
    return replace(s, **given(knn_k=a.knn_k, knn_t=a.knn_t, linear_solver=a.linear_solver, linear_cs=cs,
                              linear_sweep=a.linear_sweep),
                   finetune=replace(s.finetune, **given(epochs=a.finetune_epochs)),
                   fewshot=replace(s.fewshot, **given(ways=a.fewshot_ways, shots=shots, episodes=a.fewshot_episodes)))


def cmd_eval(a: argparse.Namespace) -> None:
    from .eval.evaluate import evaluate, parse_protocols
    from .eval.report import format_report
    from .quantize import parse_bits

    res = evaluate(a.run_dir, a.data, parse_protocols(a.protocol), a.labels_per_class, a.fraction, baselines=a.baselines,
                   device=a.device, seed=a.seed, cache_dir=a.cache_dir, progress=not a.json, settings=_eval_settings(a),
                   quantize=parse_bits(a.quantize) if a.quantize else (), resolution=a.resolution,
                   floor_cache=a.floor_cache)
    from .eval.report import incomplete_note

    if incomplete_note(res):
        print(f"leanssl: note: {incomplete_note(res)}", file=sys.stderr)
    if a.json:
        print(json.dumps(res))
        return
    print(format_report(res))
    if "report" in res:
        print(f"(written to {res['report']})")


def cmd_demo(a: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(Path(a.out), epochs=a.epochs, device=a.device)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="leanssl", description="Single-branch self-supervised pretraining for small compute.")
    parser.add_argument("--version", action="version", version=f"leanssl {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="pretrain essl on scikit-learn's digits and compare with raw pixels and a random backbone")
    p.add_argument("--out", default="runs/demo", help="demo folder: the run, report.md and report.json (default runs/demo)")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default: the demo's budget)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="pretrain a backbone", add_help=False, epilog=_methods_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="distil a trained run's backbone into a small student (SimReg feature regression)",
                       add_help=False)
    _add_train_args(p, distill=True)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's backbone on a labelled source")
    p.add_argument("run_dir", help="run folder (or an exported .safetensors backbone)")
    p.add_argument("--data", required=True, help="data SPEC with labels (may differ from the pretraining data: transfer)")
    p.add_argument("--protocol", default="knn,linear",
                   help="comma-separated: knn, linear, finetune, fewshot, lowlabel (default knn,linear)")
    p.add_argument("--resolution", default="run", metavar="{run,native,N}",
                   help="image side the backbone is evaluated at: the run's training resolution (default), the data's "
                        "own (native: for a run pretrained at a smaller --resolution or --progressive) or N px")
    p.add_argument("--labels-per-class", type=int, default=None, help="use only K labelled training images per class")
    p.add_argument("--fraction", type=float, default=None,
                   help="use only this seeded, class-stratified fraction of the labelled training images (as train --fraction)")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate a random backbone of the same architecture and raw pixels (default on)")
    p.add_argument("--knn-k", type=int, default=None, help="kNN neighbours (default 200; k=20 is always reported too)")
    p.add_argument("--knn-t", type=float, default=None, help="kNN temperature (default 0.1)")
    p.add_argument("--linear-solver", choices=("auto", "lbfgs", "sgd"), default=None,
                   help="linear probe: full-batch L-BFGS, or minibatch SGD for large feature sets (default auto)")
    p.add_argument("--linear-c-values", type=int, default=None,
                   help="how many log-spaced C in 1e-5..1e6 the probe chooses from (default 45, Ericsson et al.; fewer is faster)")
    p.add_argument("--linear-sweep", choices=("auto", "fast", "full"), default=None,
                   help="linear probe's C search: coarse-to-fine (fast), every C of the grid (full), or auto (default): "
                        "full for a small training split (at most 2M feature values), fast above")
    p.add_argument("--floor-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse the raw-pixel and random-init results of an earlier eval on the same data and settings "
                        "(cached under --cache-dir; default on)")
    p.add_argument("--finetune-epochs", type=float, default=None, help="fine-tuning schedule (default 3, at least 200 steps)")
    p.add_argument("--fewshot-ways", type=int, default=None, help="N of N-way episodes (default 5)")
    p.add_argument("--fewshot-shots", default=None, help="comma-separated K of K-shot episodes (default 1,5,20)")
    p.add_argument("--fewshot-episodes", type=int, default=None, help="episodes per setting (default 600)")
    p.add_argument("--quantize", default=None, metavar="BITS",
                   help="also score the backbone quantised to these bit-widths, e.g. 8,4 (8: real int8 on the CPU; "
                        "fewer: simulated)")
    p.add_argument("--json", action="store_true", help="print one JSON object (the markdown report is still written)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the probes' splits and episodes (default 0)")
    p.add_argument("--cache-dir", default=None, help="decoded-data cache (default $LEANSSL_CACHE or ~/.cache/leanssl)")
    p.set_defaults(func=cmd_eval)
    from .cli_tools import add_commands
    add_commands(sub)
    return parser


def _is_out_of_memory(e: BaseException) -> bool:
    # CUDA: torch.OutOfMemoryError ("CUDA out of memory"); CPU: "DefaultCPUAllocator: can't allocate memory".
    text = str(e).lower()
    return isinstance(e, MemoryError) or any(s in text for s in ("out of memory", "can't allocate memory", "not enough memory"))


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # (building it imports LEANSSL_METHODS' files: an error is one line)
        return args.func(args) or 0
    except LeansslError as e:
        print(f"leanssl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("leanssl: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as e:
        if not _is_out_of_memory(e):
            raise
        print("leanssl: error: out of memory: try a smaller --batch-size (or a smaller --resolution / backbone)", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"leanssl: error: disk full{where}: {e.strerror}; free space and run the command again", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
