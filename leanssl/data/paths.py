"""Resolving and naming the paths a SPEC points at."""

from __future__ import annotations

import os
import re

from leanssl.errors import LeansslError


def existing(path: str, spec: str) -> str:
    """Resolved absolute path, or the 'data path not found' error."""
    p = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(p):
        raise LeansslError(f"data path not found: {p} (from spec '{spec}')")
    return os.path.realpath(p)


def find_subfolder(path: str, sub: str, markers: list[str]) -> str:
    """``path`` if it holds one of ``markers``, else ``path/sub`` if that does, else ``path``."""
    for folder in (path, os.path.join(path, sub)):
        if any(os.path.isfile(os.path.join(folder, m)) for m in markers):
            return folder
    return path


def safe_name(text: str) -> str:
    """``text`` made safe for a cache entry's folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "data"
