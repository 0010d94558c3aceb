"""A run folder (`--out`): what a training run writes, and everything that reads it back (eval, export, bench).

    config.json           the run's TrainConfig (leanssl.train.config.load_run_config)
    data.json             the pretraining data: num_images and the input contract (channels, resolution, mean, std)
    checkpoint.pt         everything needed to resume (leanssl.train.state.RunState), written atomically every
                          epoch, every --checkpoint-every steps and on SIGINT/SIGTERM
    log.csv               per logged step: epoch, step, lr, loss, ce, kl
    epochs.csv            per epoch: epoch, loss, seconds, images_per_s, peak_mem_mb
    summary.json          what the last invocation did (strict JSON), written when it ends
    backbone.safetensors  the clean backbone, written when the run is complete
    skipped.txt           the undecodable images left out (file TAB reason), when there were any
    tb/                   TensorBoard events, when TensorBoard is installed
    .leanssl-run.lock     the lock of the run that owns the folder

Modules: `folder` (RunFolder: the layout, each file written and read), `lock` (one run owns the
folder), `files` (writes that never follow a planted symlink nor leave half a file), `checkpoint`
(finite, atomic, and unpickled without running code), `contract` (data.json's bounds).
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .contract import MAX_CHANNELS, MAX_RESOLUTION, check_input_contract
from .files import atomic_save, json_safe, open_append, read_json, write_bytes, write_text
from .folder import RunFolder
from .lock import LOCK, Lock

__all__ = ["RunFolder", "Lock", "LOCK", "load_checkpoint", "save_checkpoint", "check_input_contract", "MAX_CHANNELS",
           "MAX_RESOLUTION", "atomic_save", "json_safe", "open_append", "read_json", "write_bytes", "write_text"]
