"""The methods, by the name used on the command line.

Importing this package defines (and so registers, methods/base.py) the built-in methods, in the order
listed here: the order of `--method`'s help, of the gpu bench profile and of the benchmark tables.
"""

from __future__ import annotations

from . import essl, npid, simclr, mocov2, byol, simsiam, swav, barlow, dino, twist, simreg  # noqa: F401
from .base import Method
from .registry import METHODS, get_method, is_multi_view, pretraining_methods

__all__ = ["METHODS", "Method", "get_method", "is_multi_view", "pretraining_methods"]
