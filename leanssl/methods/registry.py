"""Every method by the name `--method` takes: filled by defining them (methods/base.py's Method.__init_subclass__).

A method defined outside leanssl (a user's module, a test file) is known in this process once its module
is imported; `source_file` says which file another process (a bench cell) must import to know it too.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import is_dataclass
from pathlib import Path

from ..errors import LeansslError

METHODS: dict[str, type] = {}  # in the order they were defined (the built-ins: as leanssl.methods imports them)


def register(cls) -> None:
    """Add a method to METHODS; a method of the same name defined elsewhere is an error."""
    name, old = cls.name, METHODS.get(cls.name)
    if not name or any(c in name for c in " ,=/") or not is_dataclass(cls.Config) or cls.views < 1:
        raise LeansslError(f"method {cls.__qualname__}: needs a name without spaces, commas, '=' or '/', a "
                           f"dataclass Config and views >= 1")
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise LeansslError(f"method name '{name}' is taken by {old.__module__}.{old.__qualname__}")
    METHODS[name] = cls


def get_method(name: str):
    if name not in METHODS:
        raise LeansslError(f"unknown method '{name}': choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]


def pretraining_methods() -> list[str]:
    """The methods that pretrain from scratch (all but those that distil a teacher), in METHODS' order."""
    return [n for n, m in METHODS.items() if not m.needs_teacher]


def is_multi_view(name: str) -> bool:
    """Whether the method encodes two or more augmented views of every image per step ("two-branch")."""
    return get_method(name).views > 1


def source_file(name: str) -> str | None:
    """The file defining a method from outside leanssl (None for leanssl's own, or one with no file)."""
    cls = get_method(name)
    if cls.__module__.split(".")[0] == "leanssl":
        return None
    try:
        return str(Path(inspect.getsourcefile(cls)).resolve())
    except (TypeError, OSError):  # defined interactively
        return None


def import_file(path: str) -> None:
    """Import a Python file as a module (once), so the methods it defines register ($LEANSSL_METHODS, a bench
    cell's process)."""
    name = f"leanssl_methods_from_{Path(path).stem}"
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(Path(path).resolve()):
        return
    spec = importlib.util.spec_from_file_location(name, Path(path).resolve())
    if spec is None or not Path(path).is_file():
        raise LeansslError(f"no Python file {path} (a file that defines methods: $LEANSSL_METHODS, a bench cell)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
