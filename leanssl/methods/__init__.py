"""The methods, by the name used on the command line.

Importing this package defines (and so registers, methods/base.py) the built-in methods, in the order
listed here: the order of `--method`'s help, of the gpu bench profile and of the benchmark tables.
Then it imports the files named in $LEANSSL_METHODS (paths separated by the OS's path separator), so
a method in a file of your own is known to the `leanssl` command too (docs/adding-a-method.md).
"""

from __future__ import annotations

import os

from . import essl, npid, simclr, mocov2, byol, simsiam, swav, barlow, dino, twist, simreg  # noqa: F401
from .base import Method
from .registry import METHODS, get_method, import_file, is_multi_view, pretraining_methods

for _path in filter(None, os.environ.get("LEANSSL_METHODS", "").split(os.pathsep)):
    import_file(_path)

__all__ = ["METHODS", "Method", "get_method", "is_multi_view", "pretraining_methods"]
