"""Floors computed once: the raw-pixel and random-init results, cached per data set and settings.

The floors depend on the evaluation data and its decoded resolution, the model's input (channels,
normalisation statistics), the random backbone's architecture, the protocols and their settings,
the label subset and the seed — not on the trained weights. So a second `leanssl eval` of another
run on the same data reuses them. An entry is one JSON file under `<cache>/floors/`; one that
cannot be read, or does not hold what the protocols produce, is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from pathlib import Path

# Bump when a protocol's computation changes: old entries then stop matching. 2: the probe's sweep on a subset and
# 100-iteration refit; the random backbone is fine-tuned without the warm-up variant.
FLOORS_VERSION = 2
FLOOR_SETS = ("random_init", "raw_pixels")
# a field every floor entry must hold for each requested protocol (fine-tuning is not run on raw pixels)
_REQUIRED = {"knn": "knn_top1", "linear": "linear_top1", "fewshot": "fewshot", "lowlabel": "lowlabel"}


def floor_key(**parts) -> str:
    blob = json.dumps({"floors_version": FLOORS_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def floor_path(cache_root: Path, key: str) -> Path:
    return Path(cache_root) / "floors" / f"{key}.json"


def _valid(entry, key: str, protocols) -> bool:
    if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("baselines"), dict):
        return False
    sets = entry["baselines"]
    need = [_REQUIRED[p] for p in protocols if p in _REQUIRED]
    return all(isinstance(sets.get(s), dict) and all(f in sets[s] for f in need) for s in FLOOR_SETS)


def load_floors(cache_root: Path, key: str, protocols) -> dict | None:
    """The cached floors, or None when there are none (or the entry is damaged: it is then recomputed)."""
    path = floor_path(cache_root, key)
    try:
        entry = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        entry = None
    if not _valid(entry, key, protocols):
        print(f"leanssl: the cached floors {path} are damaged: recomputing them", file=sys.stderr)
        return None
    return entry["baselines"]


def save_floors(cache_root: Path, key: str, baselines: dict, parts: dict) -> None:
    """Written to a temporary file and renamed into place, so a reader never sees half an entry."""
    path = floor_path(cache_root, key)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"key": key, "parts": parts, "baselines": baselines}, default=str))
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache: the floors are just not reused
        print(f"leanssl: could not cache the floors in {path}: {e.strerror or e}", file=sys.stderr)
        tmp.unlink(missing_ok=True)
