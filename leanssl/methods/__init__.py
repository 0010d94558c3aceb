"""The methods, by the name used on the command line."""

from __future__ import annotations

from ..errors import LeansslError
from .essl import ESSL
from .npid import NPID

METHODS = {m.name: m for m in (ESSL, NPID)}


def get_method(name: str):
    if name not in METHODS:
        raise LeansslError(f"unknown method '{name}': choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]
