"""checkpoint.pt: written only when finite and only atomically, read back without running any code in it.

torch is imported on first use, so the scripts that only read a run folder's other files stay light.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from ..errors import LeansslError
from .files import atomic_save


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's contents, unpickled with weights_only=True: tensors, numbers, strings and plain
    containers only, so a crafted file cannot run code. A refused or damaged file is a LeansslError."""
    import torch

    from ..checks import check_finite

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message ends with how to allowlist the object; keep only what was refused.
        what = next((ln.split("WeightsUnpickler error:")[-1].split(". ")[0].strip()
                     for ln in str(e).splitlines() if "Unsupported" in ln), "")
        if "Unsupported global" not in what and "Unsupported class" not in what:  # not a refused object: bad bytes
            raise LeansslError(f"cannot load checkpoint {path}: damaged or not a leanssl checkpoint "
                               f"({what or type(e).__name__})") from None
        raise LeansslError(f"refusing to load {path}: it holds Python objects other than tensors and plain data, "
                           f"and unpickling them could run code ({what})") from None
    except OSError as e:
        raise LeansslError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except Exception as e:  # torch raises RuntimeError, KeyError, EOFError... on a damaged file
        msg = str(e).split(". ")[0].strip() or type(e).__name__
        raise LeansslError(f"cannot load checkpoint {path}: damaged or not a leanssl checkpoint ({msg})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise LeansslError(f"{path} is not a leanssl checkpoint (no model state in it)")
    check_finite(state["model"], str(path))
    return state


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` ({"model", "optimizer", ...}) over `path`; on any failure the previous checkpoint stays valid."""
    from ..checks import first_nonfinite

    kept = "the previous checkpoint is intact" if path.exists() else "no checkpoint had been written yet"
    # A step with a finite loss can still leave Inf in a buffer (BatchNorm's running_var at a huge lr):
    # a checkpoint is only written, and only called good, when the whole state is finite.
    bad = first_nonfinite({"model": state["model"], "optimizer": state["optimizer"]["state"]})
    if bad is not None:
        raise LeansslError(f"the run diverged: {bad} holds NaN or Inf values, so no checkpoint is written; {kept}; "
                           f"try a lower --lr")
    try:
        atomic_save(state, path)
    except OSError as e:  # a full disk, a quota: the previous checkpoint is still the valid one
        raise LeansslError(f"cannot write checkpoint {path}: {e.strerror or e}; {kept}") from None
    except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk) as "unexpected pos ..."
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LeansslError(f"cannot write checkpoint {path} (is the disk full? torch: {first}); {kept}") from None
