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
from .errors import LeansslError

# Method options: flag -> (config field, type, help). None on the command line keeps the method's default.
_METHOD_FLAGS = {
    "--dim": ("dim", int, "bank / projection width D"),
    "--proj-hidden": ("proj_hidden", int, "projection MLP hidden width"),
    "--negatives": ("negatives", int, "k bank rows sampled as negatives per step"),
    "--tau": ("tau", float, "temperature of the instance-discrimination CE"),
    "--kl-weight": ("kl_weight", float, "λ_KL of SqrtKL self-distillation (0: off)"),
    "--cutmix-alpha": ("cutmix_alpha", float, "CutMix Beta(α, α) (0: off)"),
    "--bank-update": ("bank_update", str, "bank update rule: grad or ema"),
    "--bank-momentum": ("bank_momentum", float, "m of the ema bank rule"),
    "--bank-lr": ("bank_lr", float, "η of the grad bank rule (summed-loss convention)"),
    "--ssql-weight": ("ssql_weight", float, "essl, simclr: weight of the SSQL quantisation term (0: off; bit range: "
                      "--method-arg ssql_bits=2,8)"),
}


class Parser(argparse.ArgumentParser):
    """A usage error is one line, `leanssl: error: ...`, with where to look, not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"leanssl: error: {message} (see `{self.prog} --help`)\n")


def _add_train_args(p: argparse.ArgumentParser, distill: bool = False) -> None:
    p.add_argument("--data", required=True, help="data SPEC: digits, fashion-mnist[:PATH], mnist:PATH, cifar10:PATH, "
                   "cifar100:PATH, stl10:PATH, folder:PATH (or a bare folder), npz:PATH")
    if distill:  # the method is simreg; the backbone is the student
        p.add_argument("teacher", help="the teacher's run folder (its backbone is frozen)")
        p.add_argument("--student", dest="backbone", default="small_cnn", help="the student backbone (as train --backbone)")
        p.add_argument("--head-layers", type=int, default=None,
                       help="depth of the student's prediction MLP, dropped from the export (default 4)")
        p.set_defaults(method="simreg")
    else:
        p.add_argument("--method", default="essl",
                       help="essl (default), npid, simclr, mocov2, byol, simsiam, swav, barlow, dino or twist")
        p.add_argument("--backbone", default="small_cnn",
                       help="small_cnn, resnet18_cifar, resnet50_cifar, vit_tiny_cifar or any timm model name")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default 100; with --budget, a cap)")
    p.add_argument("--budget", type=parse_duration, default=None, metavar="TIME",
                   help="train for this wall-clock time (e.g. 90s, 10m, 1.5h; a bare number is seconds); "
                        "lr and EMA schedules follow the time")
    p.add_argument("--batch-size", type=int, default=256,
                   help="global batch (default 256): under torchrun it is split evenly across the processes")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: the method's rate per 256 images x global batch/256; essl 0.5)")
    p.add_argument("--weight-decay", type=float, default=5e-4,
                   help="SGD weight decay, not applied to biases and norm layers unless --decay-norm-bias (default 5e-4)")
    p.add_argument("--decay-norm-bias", action="store_true",
                   help="weight decay on biases and normalisation parameters too (the essl authors' recipe)")
    p.add_argument("--warmup-epochs", type=float, default=2.0,
                   help="linear learning-rate warm-up before the cosine decay (default 2)")
    p.add_argument("--lr-schedule", choices=("step", "epoch"), default="step",
                   help="cosine updated every step (default) or once per epoch (the essl authors' recipe)")
    p.add_argument("--out", default=None, help="run folder (default runs/<data>-<method>-<backbone>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU if visible, default), cpu or cuda")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help="bf16 autocast (matmuls and convolutions; weights and method state stay fp32) or fp32 "
                        "(default: bf16 on CUDA, fp32 on a CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (a one-off compile, then faster steps)")
    p.add_argument("--fraction", type=float, default=1.0, help="pretrain on a seeded, class-stratified fraction of the training split")
    p.add_argument("--all-images", action="store_true",
                   help="pretrain on the test split's images too (by default a labelled folder or npz without a "
                        "test split keeps 20%% of each class back as one, for eval)")
    p.add_argument("--resolution", type=int, default=None, help="training resolution (default: the source's); "
                   "below the source's, evaluate with `leanssl eval --resolution native`")
    p.add_argument("--progressive", type=int, default=None, metavar="PX",
                   help="progressive resolution: views at PX px for the first part of the run, then full size")
    p.add_argument("--progressive-fraction", type=float, default=0.75, metavar="F",
                   help="the part of the run (steps; with --budget, time) at the --progressive size (default 0.75)")
    p.add_argument("--cache-dir", default=None, help="decoded-data cache (default $LEANSSL_CACHE or ~/.cache/leanssl)")
    p.add_argument("--stop-after", type=int, default=None, help="stop after N epochs in this invocation (resume later)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--strict-images", action="store_true", help="an undecodable image is an error (default: skipped and listed)")
    p.add_argument("--on-nan", choices=("stop", "skip"), default="stop",
                   help="a non-finite loss or gradient norm stops the run (default) or skips that batch")
    p.add_argument("--grad-norm-limit", type=float, default=None,
                   help="treat a total gradient norm above this as divergence, like NaN (default: only non-finite)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="also checkpoint every N steps within an epoch (default: every epoch only)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm), as in one process")
    p.add_argument("--dist-timeout", type=parse_duration, default=300.0, metavar="TIME",
                   help="under torchrun: how long a process waits for another before it stops with an error "
                        "(default 5m)")
    for flag, (_, typ, help_) in _METHOD_FLAGS.items():
        p.add_argument(flag, type=typ, default=None, help=help_)
    p.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=None,
                   help="feature-calibrated bank initialisation (essl default on, npid off)")
    p.add_argument("--kl-to-bank", action=argparse.BooleanOptionalAction, default=None,
                   help="let SqrtKL's gradient reach the bank in the grad rule")
    p.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="set a field of the method's config, e.g. local_crops=2 or global_scale=0.2,1 "
                        "(repeatable; the fields and their defaults are in leanssl/methods/<method>.py)")
    p.add_argument("--force", action="store_true",
                   help="start a fresh run in --out even if it holds other files or an earlier run (the files a run "
                        "writes are replaced; others are left)")
    _show_ranges(p)


def _show_ranges(p: argparse.ArgumentParser) -> None:
    """Append each option's valid range, as its config declares it (leanssl.checks), to its --help line."""
    from .checks import range_help
    from .methods.essl import EsslConfig
    from .train import TrainConfig

    method_fields = {flag.lstrip("-").replace("-", "_"): field for flag, (field, _, _) in _METHOD_FLAGS.items()}
    for action in p._actions:
        text = (range_help(EsslConfig, method_fields[action.dest]) if action.dest in method_fields
                else range_help(TrainConfig, "time_budget" if action.dest == "budget" else action.dest))
        if text:
            action.help = f"{action.help + '; ' if action.help else ''}{text}"


def _train_config(a: argparse.Namespace):
    from .train import TrainConfig

    method_args = {field: getattr(a, flag[2:].replace("-", "_")) for flag, (field, _, _) in _METHOD_FLAGS.items()}
    method_args.update(calibrate=a.calibrate, kl_to_bank=a.kl_to_bank)
    if a.method == "simreg":
        from .train import load_run_config

        load_run_config(Path(a.teacher))  # a bad teacher folder fails before any data is decoded
        method_args.update(teacher=str(Path(a.teacher).resolve()), head_layers=a.head_layers)
    method_args.update(_method_arg_values(a.method, a.method_arg))
    data_name = a.data.split(":")[0].strip("/").replace("/", "_") or "data"
    return TrainConfig(
        data=a.data, method=a.method, backbone=a.backbone, batch_size=a.batch_size, lr=a.lr,
        epochs=a.epochs if a.epochs is not None else (100 if a.budget is None else 10_000), time_budget=a.budget,
        weight_decay=a.weight_decay, decay_norm_bias=a.decay_norm_bias, warmup_epochs=a.warmup_epochs,
        lr_schedule=a.lr_schedule, seed=a.seed, device=a.device,
        fraction=a.fraction, resolution=a.resolution, progressive=a.progressive,
        progressive_fraction=a.progressive_fraction, out=a.out or f"runs/{data_name}-{a.method}-{a.backbone}",
        cache_dir=a.cache_dir, stop_after=a.stop_after, progress=not a.no_progress,
        method_args={k: v for k, v in method_args.items() if v is not None},
        strict_images=a.strict_images, on_nan=a.on_nan, grad_norm_limit=a.grad_norm_limit,
        checkpoint_every=a.checkpoint_every, sync_bn=a.sync_bn, dist_timeout=a.dist_timeout,
        all_images=a.all_images, precision=a.precision, compile=a.compile)


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1.5h' -> seconds (argparse type: a bad value is a usage error)."""
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        seconds = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use seconds or a number with s, m or h") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the budget must be positive")
    return seconds


def _method_arg_values(method: str, items: list[str]) -> dict:
    """--method-arg KEY=VALUE pairs as config values (Python literals; anything else is a string)."""
    if not items:
        return {}
    import ast
    from dataclasses import fields

    from .methods import get_method

    known = {f.name for f in fields(get_method(method).Config)}
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise LeansslError(f"--method-arg {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        try:
            values[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            values[key] = text.strip()
    return values


def _report_skips(summary: dict, out: str) -> None:
    """What the run left out, said again at the end where it is seen."""
    if summary["skipped_images"]:
        print(f"leanssl: skipped {summary['skipped_images']} undecodable image(s), listed in {Path(out) / 'skipped.txt'}",
              file=sys.stderr)
    if summary["skipped_steps"]:
        print(f"leanssl: skipped {summary['skipped_steps']} diverged batch(es) (--on-nan skip)", file=sys.stderr)


def _saved_schedule(cfg) -> None:
    """`train --resume` without --epochs/--budget continues the length the run was started with."""
    from .train import load_run_config

    if (Path(cfg.out) / "config.json").is_file():
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

    p = sub.add_parser("train", help="pretrain a backbone")
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="distil a trained run's backbone into a small student (SimReg feature regression)")
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
    p.add_argument("--linear-sweep", choices=("fast", "full"), default=None,
                   help="linear probe's C search: coarse-to-fine (default fast), or every C of the grid (full)")
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
    args = build_parser().parse_args(argv)
    try:
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
