"""RunFolder: the one place that knows a run folder's files, and how each is written and read.

torch is imported on first use (weights, checkpoints): reading the JSON and CSV files needs none.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LeansslError
from . import checkpoint, lock
from .contract import check_input_contract
from .files import one_line, open_append, read_json, truncate_csv, write_bytes, write_text

if TYPE_CHECKING:
    from torch import nn


class RunFolder:
    """A run folder (`--out`) by its path; writing into it is for the run that holds its `claim`."""

    CONFIG, DATA, CHECKPOINT = "config.json", "data.json", "checkpoint.pt"
    LOG, EPOCHS, SUMMARY = "log.csv", "epochs.csv", "summary.json"
    BACKBONE, SKIPPED, TENSORBOARD = "backbone.safetensors", "skipped.txt", "tb"
    # What a run writes (besides the lock): cleared before a fresh run so no file of an earlier attempt stays.
    FILES = (CONFIG, DATA, LOG, EPOCHS, SUMMARY, CHECKPOINT, CHECKPOINT + ".tmp", BACKBONE, SKIPPED, TENSORBOARD)
    LOG_COLUMNS = ("epoch", "step", "lr", "loss", "ce", "kl")
    EPOCH_COLUMNS = ("epoch", "loss", "seconds", "images_per_s", "peak_mem_mb")

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def skipped_path(self) -> Path:
        return self.path / self.SKIPPED

    @property
    def tensorboard_path(self) -> Path:
        return self.path / self.TENSORBOARD

    def is_run(self) -> bool:
        """Whether the folder holds a run (what it trained and on what data), finished or not."""
        return (self.path / self.CONFIG).is_file() and (self.path / self.DATA).is_file()

    def claim(self, resume: bool, force: bool = False) -> lock.Lock:
        """Own the folder for this run (leanssl.runfolder.lock); `release()` the result when the run ends."""
        return lock.claim(self, resume, force)

    # -- config.json and data.json: what the run trains, and the data's input contract --------------

    def write_config(self, values: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.path / self.CONFIG, json.dumps(values, indent=2))

    def config_values(self) -> dict:
        """config.json as saved (leanssl.train.config.load_run_config makes a TrainConfig of it)."""
        path = self.path / self.CONFIG
        if not path.is_file():
            raise LeansslError(f"not a leanssl run folder (no config.json): {self.path}")
        try:
            return json.loads(path.read_text())
        except (ValueError, OSError) as e:
            raise LeansslError(f"{path}: unreadable ({e})") from None

    def write_data_info(self, values: dict) -> None:
        write_text(self.path / self.DATA, json.dumps(values, indent=2))

    def data_info(self) -> dict:
        """data.json (num_images, channels, resolution, mean, std), checked."""
        path = self.path / self.DATA
        return check_input_contract(read_json(path, "a run folder holds one"), path)

    # -- checkpoint.pt ---------------------------------------------------------------------------

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def save_checkpoint(self, state: dict) -> None:
        checkpoint.save_checkpoint(self.checkpoint_path, state)

    def load_checkpoint(self) -> dict:
        return checkpoint.load_checkpoint(self.checkpoint_path)

    # -- log.csv (per step) and epochs.csv (per epoch) -----------------------------------------------

    def start_logs(self, resume: bool) -> None:
        """The logs' headers: a fresh run starts both; a resumed one appends (log.csv is started if missing)."""
        if not resume or not (self.path / self.LOG).exists():
            write_text(self.path / self.LOG, ",".join(self.LOG_COLUMNS) + "\n")
        if not resume:
            self.start_epoch_log()

    def start_epoch_log(self) -> None:
        """epochs.csv alone (a run that logs no steps: benchmarks/peer_lightly.py)."""
        write_text(self.path / self.EPOCHS, ",".join(self.EPOCH_COLUMNS) + "\n")

    def truncate_logs(self, step: int, epoch: int) -> None:
        """Drop the rows of steps from `step` and of epochs after `epoch` (a killed run logged them after its
        checkpoint: the resumed run replays them)."""
        truncate_csv(self.path / self.LOG, lambda r: int(r["step"]) < step)
        truncate_csv(self.path / self.EPOCHS, lambda r: int(r["epoch"]) <= epoch)

    def append_log(self, rows) -> None:
        """Rows of (epoch, step, lr, loss, ce, kl); the losses as repr, exact."""
        with open_append(self.path / self.LOG) as f:
            w = csv.writer(f)
            for epoch, step, lr, loss, ce, kl in rows:
                w.writerow([epoch, step, f"{lr:.6g}", repr(loss), repr(ce), repr(kl)])

    def append_epoch(self, number: int, loss: float, seconds: float, images_per_s: float, peak_mem_mb: float) -> None:
        """One finished epoch, `number` counted from 1."""
        with open_append(self.path / self.EPOCHS) as f:
            f.write(f"{number},{loss:.6f},{seconds:.3f},{images_per_s:.1f},{peak_mem_mb:.1f}\n")

    def epochs(self) -> list[dict]:
        """epochs.csv's rows (values as text)."""
        with open(self.path / self.EPOCHS, newline="") as f:
            return list(csv.DictReader(f))

    def best_epoch_rate(self) -> float | None:
        """images/s of the fastest epoch (on a shared machine, the epoch least slowed by other work); None without one."""
        try:
            rates = [float(r["images_per_s"]) for r in self.epochs()]
        except (OSError, ValueError, KeyError):
            return None
        return max(rates) if rates else None

    # -- summary.json, backbone.safetensors, skipped.txt ---------------------------------------------

    def write_summary(self, summary: dict) -> None:
        """`summary` as strict JSON (make NaN null first: leanssl.runfolder.json_safe)."""
        write_text(self.path / self.SUMMARY, json.dumps(summary, indent=2, allow_nan=False))

    def summary(self) -> dict | None:
        """summary.json, or None before the first invocation has ended."""
        path = self.path / self.SUMMARY
        return read_json(path) if path.is_file() else None

    def has_backbone(self) -> bool:
        """Whether the run is complete: its final backbone is written."""
        return (self.path / self.BACKBONE).is_file()

    def write_backbone(self, backbone: nn.Module) -> None:
        from safetensors.torch import save

        weights = {k: v.contiguous() for k, v in backbone.state_dict().items()}
        write_bytes(self.path / self.BACKBONE, save(weights))

    def backbone_weights(self) -> tuple[dict, Path]:
        """The trained backbone's weights (the final ones, else the last checkpoint's) and the file they are from."""
        final = self.path / self.BACKBONE
        if final.is_file():
            from safetensors.torch import load_file

            try:
                weights, source = load_file(str(final)), final
            except Exception as e:  # safetensors holds tensors only; a damaged header is all that can go wrong
                raise LeansslError(f"cannot load {final}: damaged or not a safetensors file ({e})") from None
        elif self.has_checkpoint():
            state = self.load_checkpoint()["model"]
            weights = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
            source = self.checkpoint_path
        else:
            raise LeansslError(f"{self.path} has no trained weights yet (no backbone.safetensors or checkpoint.pt)")
        from ..checks import check_finite

        check_finite(weights, str(source))
        return weights, source

    def write_skipped(self, skipped: list[tuple[str, str]]) -> None:
        """(file, reason) of each undecodable image, one tab-separated line each."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.skipped_path, "".join(f"{one_line(p)}\t{one_line(why)}\n" for p, why in skipped))
