"""Pretraining: what a run is asked to do (config) and the loop that does it (loop)."""

from .config import TrainConfig, config_from_dict, load_run_config
from .loop import (MAX_SKIPS_IN_A_ROW, TrainingInterrupted, atomic_save, build_method, load_checkpoint, lr_at,
                   param_groups, peak_memory_mb, resolve_device, train)

__all__ = ["TrainConfig", "config_from_dict", "load_run_config", "TrainingInterrupted", "train", "build_method",
           "load_checkpoint", "lr_at", "param_groups", "peak_memory_mb", "resolve_device", "atomic_save",
           "MAX_SKIPS_IN_A_ROW"]
