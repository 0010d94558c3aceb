"""Command-line flags generated from config dataclasses: TrainConfig's, and every method's settings.

TrainConfig's fields (leanssl.options metadata) become `leanssl train`'s fixed flags. Every registered
method's Config fields become flags too, one per field name (`--kl-weight`, `--local-crops`), shared by
the methods that have that field; a flag the chosen method does not have is an error naming its flags,
and `leanssl train --method NAME --help` shows NAME's flags with its own help texts and defaults.
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import MISSING, fields

from .checks import Choice, range_help
from .errors import LeansslError
from .options import help_of

METHOD_FLAGS = "_method_flags"  # the namespace attribute listing the method flags' dests


class Parser(argparse.ArgumentParser):
    """A usage error is one line, `leanssl: error: ...`, with where to look, not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"leanssl: error: {message} (see `{self.prog} --help`)\n")


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1.5h' -> seconds (argparse type: a bad value is a usage error)."""
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        seconds = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use seconds or a number with s, m or h") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the budget must be positive")
    return seconds


def literal(text: str):
    """A setting's value as written after KEY= or a flag: a Python literal (2,8 is a tuple), else the string."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def _kind(f) -> str:
    """bool, int, float or str from a field's annotation; 'literal' for anything else (tuples, lists)."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for kind in ("bool", "float", "int", "str"):
        if text.replace(" | None", "") == kind:
            return kind
    return "literal"


def flag_of(f) -> str | None:
    """The field's flag (--field-name unless its metadata spells it otherwise), or None when it is not one."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _default(f):
    return f.default if f.default is not MISSING else f.default_factory()


def _shown(value) -> str:
    """A default as --help shows it: 5e-4 as 0.0005, 2.0 as 2, (2, 8) as 2,8, booleans as on / off."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(_shown, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _with_range(cls, name: str, text: str) -> str:
    rng = range_help(cls, name)
    return f"{text}; {rng}" if rng else text


# ---------------------------------------------------------------------------------------------
# TrainConfig's flags


def add_config_flags(p, cls, skip=()) -> None:
    """One flag per field of `cls` that is a flag (leanssl.options), in field order, less those in `skip`.
    A field's Choice range becomes argparse choices."""
    for f in fields(cls):
        flag = flag_of(f)
        if flag is None or f.name in skip:
            continue
        kind, meta = _kind(f), f.metadata
        text = help_of(f).replace("{default}", _shown(f.default))
        kw = dict(help=_with_range(cls, f.name, text), default=meta.get("cli_default", _default(f)))
        if kind == "bool":  # --no-progress is stored as given and turned round by config_values
            kw["action"] = "store_true"
            kw.pop("default")
        else:
            kw["type"] = parse_duration if meta.get("type") == "duration" else {"int": int, "float": float}.get(kind)
            rng = getattr(cls, "RANGES", {}).get(f.name)
            if isinstance(rng, Choice):
                kw["choices"] = rng.names
            kw.update({k: meta[k] for k in ("metavar", "required") if k in meta})
        p.add_argument(flag, **kw)


def config_values(a: argparse.Namespace, cls) -> dict:
    """The values of `cls`'s flags in a parsed namespace, by field name (a flag the command lacks: not there)."""
    values = {}
    for f in fields(cls):
        flag = flag_of(f)
        dest = flag and flag[2:].replace("-", "_")
        if flag is not None and dest in a:
            values[f.name] = (not getattr(a, dest)) if flag.startswith("--no-") else getattr(a, dest)
    return values


# ---------------------------------------------------------------------------------------------
# the methods' flags


def _method_fields(methods: dict) -> dict:
    """field name -> [(method name, field)] over every method's Config, fields that are flags only."""
    out: dict = {}
    for name, cls in methods.items():
        for f in fields(cls.Config):
            if flag_of(f) is not None:
                out.setdefault(f.name, []).append((name, f))
    return out


def _method_help(method_cls, f) -> str:
    """The help line of one method's field: its text, its default, its range (argparse-escaped)."""
    text = help_of(f).replace("%", "%%") or f.name
    if _default(f) is not None:
        text += f" (default {_shown(_default(f))})"
    return _with_range(method_cls.Config, f.name, text)


def add_method_flags(p: argparse.ArgumentParser, methods: dict) -> None:
    """Every method's settings as flags (default None: the method's own default), in one group; a name
    already taken by a training flag is set with --method-arg only."""
    taken = {a.dest for a in p._actions}
    group = p.add_argument_group("method settings")
    dests = []
    for name, owners in _method_fields(methods).items():
        if name in taken:
            continue
        first_method, f = owners[0]
        kind = _kind(f)
        kw = dict(default=None, help=_method_help(methods[first_method], f))
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = {"int": int, "float": float, "str": str}.get(kind, literal)
            kw["metavar"] = name.upper() if kind == "literal" else None
        group.add_argument(flag_of(f), dest=name, **kw)
        dests.append(name)
    p.set_defaults(**{METHOD_FLAGS: tuple(dests)})
    p.add_argument("-h", "--help", action=_MethodHelp, methods=methods, group=group,
                   help="show this help (for the --method given before it: its settings) and exit")


class _MethodHelp(argparse.Action):
    """--help that shows the chosen method's settings only, with its own help texts and defaults."""

    def __init__(self, option_strings, dest, methods, group, help=None):
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)
        self.methods, self.group = methods, group

    def __call__(self, parser, namespace, values, option_string=None):
        cls = self.methods.get(getattr(namespace, "method", None))
        if cls is not None:
            own = {f.name: f for f in fields(cls.Config)}
            order = list(own)
            for action in self.group._group_actions:
                f = own.get(action.dest)
                action.help = _method_help(cls, f) if f is not None else argparse.SUPPRESS
            self.group._group_actions.sort(key=lambda a: order.index(a.dest) if a.dest in own else len(order))
            self.group.title = (f"settings of --method {cls.name} (also as --method-arg KEY=VALUE)" if own
                                else f"--method {cls.name} has no settings")
        parser.print_help()
        parser.exit()


def method_values(a: argparse.Namespace, cls) -> dict:
    """The method flags given, by field; a flag the method `cls` does not have is an error naming its flags."""
    dests = getattr(a, METHOD_FLAGS, ())
    given = {d: getattr(a, d) for d in dests if getattr(a, d) is not None}
    own = [f.name for f in fields(cls.Config) if f.name in dests]
    foreign = [d for d in given if d not in own]
    if foreign:
        flags = ", ".join(f"--{d.replace('_', '-')}" for d in own) or "none"
        bad = ", ".join(f"--{d.replace('_', '-')}" for d in foreign)
        raise LeansslError(f"{bad}: not a setting of --method {cls.name} (its flags: {flags}; "
                           f"`leanssl train --method {cls.name} --help` describes them)")
    return given


def method_arg_values(method_cls, items: list[str]) -> dict:
    """--method-arg KEY=VALUE pairs as config values (Python literals; anything else is a string)."""
    known = {f.name for f in fields(method_cls.Config)}
    values = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise LeansslError(f"--method-arg {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        values[key] = literal(text)
    return values
