"""Checks shared by configs and saved state: numeric ranges declared beside the fields, finite tensors.

A config dataclass declares its ranges with ``@checked(field=Range(...))`` (under ``@dataclass``):
constructing it with a value out of range, of the wrong kind or not finite is one LeansslError, and
the CLI shows the same ranges in ``--help``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from .errors import LeansslError


@dataclass(frozen=True)
class Range:
    """lo <= value (lo < value when lo_open), value <= hi (value < hi when hi_open); None is always allowed
    (it means "the default"). Integers only when the field is declared int."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, v: float) -> bool:
        return (self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)) and \
               (self.hi is None or (v < self.hi if self.hi_open else v <= self.hi))

    def describe(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


@dataclass(frozen=True)
class Choice:
    """One of a few names (None allowed, as for a Range)."""

    names: tuple[str, ...]

    def describe(self) -> str:
        return " or ".join(self.names)


POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_1 = Range(1)
FRACTION = Range(0, 1)  # a momentum, a probability


def checked(prefix: str = "", labels: dict | None = None, **ranges: Range | Choice):
    """Class decorator (put it *under* @dataclass): validate these fields on construction.

    `prefix` names fields in messages: "--" for TrainConfig (its fields are flags), "" for method configs;
    `labels` overrides the name of some (a field whose flag is spelt otherwise).
    Subclasses inherit the ranges (and may add their own).
    """
    def wrap(cls):
        cls.RANGES = {**getattr(cls, "RANGES", {}), **ranges}
        cls.RANGE_PREFIX = prefix
        cls.RANGE_LABELS = {**getattr(cls, "RANGE_LABELS", {}), **(labels or {})}

        def __post_init__(self):
            check_ranges(self)
        cls.__post_init__ = __post_init__
        return cls
    return wrap


def _is_int_field(annotation) -> bool:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return "int" in text and "float" not in text


def check_ranges(cfg) -> None:
    kinds = {f.name: f.type for f in fields(cfg)}
    for name, rng in cfg.RANGES.items():
        v = getattr(cfg, name)
        if v is None:
            continue
        flag = name.replace("_", "-") if cfg.RANGE_PREFIX else name
        label = cfg.RANGE_LABELS.get(name) or f"{cfg.RANGE_PREFIX}{flag}"
        if isinstance(rng, Choice):
            if v not in rng.names:
                raise LeansslError(f"{label} must be {rng.describe()}, got {v!r}")
            continue
        integer = _is_int_field(kinds[name])
        ok_kind = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok_kind or not math.isfinite(v) or not rng.holds(v):
            kind = "an integer" if integer else "a number"
            raise LeansslError(f"{label} must be {kind} {rng.describe()}, got {v!r}")


def range_help(cls, name: str) -> str | None:
    """'>= 1'-style text for a field's --help line, or None when it declares no numeric range (the help
    text of a choice already lists its names)."""
    rng = getattr(cls, "RANGES", {}).get(name)
    return rng.describe() if isinstance(rng, Range) else None


def first_nonfinite(tensors: dict) -> str | None:
    """The name of the first floating tensor holding NaN or Inf in a (nested) dict/list of tensors, or None.

    One host sync per device holding the state."""
    named = list(_floating(tensors, ""))
    flags: dict[torch.device, list[tuple[int, torch.Tensor]]] = {}
    for i, (_, t) in enumerate(named):  # one reduction per tensor, one transfer per device
        flags.setdefault(t.device, []).append((i, torch.isfinite(t).all()))
    bad = [i for group in flags.values()
           for i, ok in zip((i for i, _ in group), torch.stack([f for _, f in group]).tolist()) if not ok]
    return named[min(bad)][0] if bad else None


def _floating(obj, prefix: str):
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _floating(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _floating(v, f"{prefix}[{i}]")


def check_finite(tensors: dict, where: str) -> None:
    """A LeansslError naming the tensor when some weight or buffer is NaN/Inf (a diverged, damaged or crafted file)."""
    name = first_nonfinite(tensors)
    if name is not None:
        raise LeansslError(f"{where}: tensor {name} holds NaN or Inf values (a diverged or damaged run); "
                           f"refusing to use it")
