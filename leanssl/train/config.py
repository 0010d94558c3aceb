"""What a training run is asked to do (TrainConfig), and reading it back from a run folder.

Every field's default and help text are declared here once (leanssl.options.opt); `leanssl train`'s
flags are generated from them (leanssl.cli_args), so the Python API and the command line cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ..checks import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, Choice, Range, checked
from ..errors import LeansslError
from ..methods import get_method
from ..models.backbones import DEFAULT_BACKBONE
from ..options import opt
from ..runfolder import RunFolder

BUDGET_EPOCH_CAP = 10_000  # epochs under a time budget when none are given: no limit in practice

# Fields that must match for --resume to continue the same run.
_RUN_IDENTITY = ("data", "method", "backbone", "batch_size", "seed", "fraction", "resolution", "method_args",
                 "all_images", "progressive", "progressive_fraction")


@dataclass
@checked("--", {"time_budget": "--budget"}, epochs=AT_LEAST_1, batch_size=Range(2), lr=POSITIVE,
         weight_decay=NON_NEGATIVE, momentum=FRACTION, warmup_epochs=NON_NEGATIVE, seed=NON_NEGATIVE,
         fraction=Range(0, 1, lo_open=True), resolution=Range(1, 4096), log_every=AT_LEAST_1, stop_after=AT_LEAST_1,
         checkpoint_every=AT_LEAST_1, grad_norm_limit=POSITIVE, time_budget=POSITIVE, dist_timeout=POSITIVE,
         on_nan=Choice(("stop", "skip")), lr_schedule=Choice(("step", "epoch")), precision=Choice(("bf16", "fp32")),
         progressive=AT_LEAST_1, progressive_fraction=Range(0, 1, lo_open=True), stop_at=POSITIVE)
class TrainConfig:
    data: str = opt("digits", "data SPEC: digits, fashion-mnist[:PATH], mnist:PATH, cifar10:PATH, cifar100:PATH, "
                              "stl10:PATH, folder:PATH (or a bare folder), npz:PATH", required=True)
    method: str = opt("essl", "the method (default {default}); its flags are listed by `leanssl train --method NAME --help`")
    backbone: str = opt(DEFAULT_BACKBONE, "lean_cnn (default; --resume: the run's own), lean_cnn_wide, small_cnn, "
                                          "resnet18_cifar, resnet50_cifar, vit_tiny_cifar or any timm model name",
                        cli_default=None)
    epochs: int = opt(100, "epochs (default {default}; with --budget, a cap)", cli_default=None)
    batch_size: int | None = opt(None, "global batch (default: the method's, essl and npid 128, the others 256): under "
                                       "torchrun it is split evenly across the processes")
    lr: float | None = opt(None, "peak learning rate (default: the method's rate per 256 images x global batch/256; "
                                 "essl 0.5)")
    weight_decay: float = opt(5e-4, "SGD weight decay, not applied to biases and norm layers unless "
                                    "--decay-norm-bias (default {default})")
    decay_norm_bias: bool = opt(False, "weight decay on biases and normalisation parameters too (the essl authors' "
                                       "recipe)")
    momentum: float = opt(0.9, "SGD momentum", flag=None)
    warmup_epochs: float = opt(2.0, "linear learning-rate warm-up before the cosine decay (default {default})")
    lr_schedule: str = opt("step", "cosine updated every step (default) or once per epoch (the essl authors' recipe)")
    seed: int = opt(0, "seed of every random draw (default {default})")
    device: str = opt("auto", "auto (a CUDA GPU if visible, default), cpu or cuda")
    fraction: float = opt(1.0, "pretrain on a seeded, class-stratified fraction of the training split")
    resolution: int | None = opt(None, "training resolution (default: the source's); below the source's, evaluate "
                                       "with `leanssl eval --resolution native`")
    progressive: int | None = opt(None, "progressive resolution: views at PX px for the first part of the run, then "
                                        "full size", metavar="PX")
    progressive_fraction: float = opt(0.75, "the part of the run (steps; with --budget, time) at the --progressive "
                                            "size (default {default})", metavar="F")
    out: str = opt("runs/run", "run folder (default runs/<data>-<method>-<backbone>)", cli_default=None)
    cache_dir: str | None = opt(None, "decoded-data cache (default $LEANSSL_CACHE or ~/.cache/leanssl)")
    log_every: int = opt(10, "steps between progress-bar updates", flag=None)
    stop_after: int | None = opt(None, "stop after N epochs in this invocation (resume later)")
    stop_at: float | None = opt(None, "end this invocation after the step during which training passed this many "
                                      "seconds (a checkpoint is written; resume continues): wall-clock slices",
                                flag=None)
    progress: bool = opt(True, "no progress bars", flag="--no-progress")
    method_args: dict = opt(help="the method's settings, e.g. {\"kl_weight\": 0} (its flags, --method-arg)",
                            factory=dict, flag=None)
    checkpoint_every: int | None = opt(None, "also checkpoint every N steps within an epoch (default: every epoch "
                                             "only)")
    on_nan: str = opt("stop", "a non-finite loss or gradient norm stops the run (default) or skips that batch")
    grad_norm_limit: float | None = opt(None, "treat a total gradient norm above this as divergence, like NaN "
                                              "(default: only non-finite)")
    strict_images: bool = opt(False, "an undecodable image is an error (default: skipped and listed)")
    time_budget: float | None = opt(None, "train for this wall-clock time (e.g. 90s, 10m, 1.5h; a bare number is "
                                          "seconds); lr and EMA schedules follow the time", flag="--budget",
                                    type="duration", metavar="TIME")
    sync_bn: bool = opt(False, "under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm), as in "
                               "one process")
    dist_timeout: float = opt(300.0, "under torchrun: how long a process waits for another before it stops with an "
                                     "error (default {default} s)", type="duration", metavar="TIME")
    all_images: bool = opt(False, "pretrain on the test split's images too (by default a labelled folder or npz "
                                  "without a test split keeps 20%% of each class back as one, for eval)")
    precision: str | None = opt(None, "bf16 autocast (matmuls and convolutions; weights and method state stay fp32) "
                                      "or fp32 (default: bf16 on CUDA, fp32 on a CPU)")
    compile: bool = opt(False, "torch.compile the networks (a one-off compile, then faster steps)")

    def base_lr(self) -> float:
        return self.lr if self.lr is not None else get_method(self.method).default_lr * self.batch() / 256

    def batch(self) -> int:
        """The global batch: as given, else the method's default (a resumed run: its own, set by the loop)."""
        return self.batch_size if self.batch_size is not None else get_method(self.method).default_batch_size



def config_from_dict(values: dict, where) -> TrainConfig:
    """A TrainConfig from a saved dict (config.json, a checkpoint); unknown keys are a clear error."""
    unknown = sorted(set(values) - {f.name for f in fields(TrainConfig)}) if isinstance(values, dict) else ["(not a dict)"]
    if unknown:
        raise LeansslError(f"{where}: not a config of this leanssl version (unknown {', '.join(map(str, unknown))})")
    try:
        return TrainConfig(**values)
    except LeansslError as e:  # a value out of range: name the file it came from
        raise LeansslError(f"{where}: {e}") from None


def load_run_config(run_dir: Path) -> TrainConfig:
    folder = RunFolder(run_dir)
    cfg = config_from_dict(folder.config_values(), folder.path / folder.CONFIG)
    cfg.out = str(run_dir)  # never the path recorded inside: a copied or crafted config cannot send writes elsewhere
    return cfg


