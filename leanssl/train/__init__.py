"""Pretraining: what a run is asked to do (config) and the loop that does it (loop).

Modules:
    config      TrainConfig, and reading it back from a run folder (load_run_config)
    loop        train(): prepare (data, method, resume or calibrate) -> epochs -> finish
    schedule    Schedule: warm-up, cosine decay, a time budget's step estimate, progressive views (lr_at)
    build       the method for a config and its data (build_method), its SGD optimizer (param_groups)
    step        TrainStep: one optimisation step, also what benchmarks/throughput.py times
    state       RunState: where a run is, which is what its checkpoint holds
    resume      continuing from a checkpoint: the same run, the same schedule, a state that fits
    images      the images a run pretrains on
    logger      the per-step log (log.csv, TensorBoard)
    divergence  when a run has diverged, and the error that says so
    stop        SIGINT/SIGTERM: a clean stop after the step, with a checkpoint (TrainingInterrupted)
    callbacks   Callback: on_setup, on_step_end, on_epoch_end (train(cfg, callbacks=[...]))
Elsewhere: the run folder's files and checkpoints (leanssl.runfolder), the device (leanssl.device),
the process context, one process or torchrun's (leanssl.distributed).

Importing a module of this package does not import the loop: `train` loads it on first use.
"""

from importlib import import_module

from .config import TrainConfig, config_from_dict, load_run_config

_LAZY = {"train": ".loop", "Run": ".loop", "TrainingInterrupted": ".stop", "Callback": ".callbacks"}
__all__ = ["TrainConfig", "config_from_dict", "load_run_config", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
