"""What a training run is asked to do (TrainConfig), and reading it back from a run folder."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from ..checks import AT_LEAST_1, FRACTION, NON_NEGATIVE, POSITIVE, Choice, Range, checked
from ..errors import LeansslError
from ..methods import get_method
from ..runfolder import RunFolder

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
    data: str = "digits"
    method: str = "essl"
    backbone: str = "small_cnn"
    epochs: int = 100
    batch_size: int = 256            # the global batch: under torchrun, split evenly across the processes
    lr: float | None = None          # None: the method's default_lr x (global) batch/256 (essl: 0.5, the authors' 1.0 at 512)
    weight_decay: float = 5e-4
    decay_norm_bias: bool = False    # weight decay on biases and norm parameters too (the essl authors' script)
    momentum: float = 0.9
    warmup_epochs: float = 2.0
    lr_schedule: str = "step"        # cosine updated every "step", or once per "epoch" (the essl authors' script)
    seed: int = 0
    device: str = "auto"
    fraction: float = 1.0
    resolution: int | None = None    # None: the source's native resolution
    progressive: int | None = None   # views at this many px for the first part of the run, then at `resolution`
    progressive_fraction: float = 0.75  # that part: of the steps, or under a time budget of the time
    out: str = "runs/run"
    cache_dir: str | None = None
    log_every: int = 10
    stop_after: int | None = None    # stop after this many epochs in this invocation (time slicing, tests)
    stop_at: float | None = None     # end this invocation after the step during which training passed this many
                                     # seconds (a checkpoint is written; resume continues): wall-clock slices
    progress: bool = True
    method_args: dict = field(default_factory=dict)  # method config overrides, e.g. {"kl_weight": 0}
    checkpoint_every: int | None = None  # also checkpoint every N steps within an epoch (a kill then loses less)
    on_nan: str = "stop"             # a non-finite loss or gradient norm: "stop" the run, or "skip" that batch
    grad_norm_limit: float | None = None  # a total gradient norm above this counts as diverged, like NaN
    strict_images: bool = False      # an undecodable image is an error instead of being skipped
    time_budget: float | None = None  # seconds of training; the run ends when they are spent (epochs is then a cap)
    sync_bn: bool = False            # under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm)
    dist_timeout: float = 300.0      # under torchrun: seconds a collective may wait for another rank before failing
    all_images: bool = False         # pretrain on the test split's images too (nothing of the source held out)
    precision: str | None = None     # "bf16" or "fp32" (leanssl.accel); None: bf16 on CUDA, fp32 on a CPU
    compile: bool = False            # torch.compile the method's networks (leanssl.accel.compile_networks)

    def base_lr(self) -> float:
        return self.lr if self.lr is not None else get_method(self.method).default_lr * self.batch_size / 256



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


