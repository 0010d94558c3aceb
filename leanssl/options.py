"""Config fields that document themselves: the help text, and how the field is spelt as a flag, in its metadata.

    dim: int = opt(128, "bank width D")

Method configs and TrainConfig declare their fields this way, and `leanssl train`'s flags are generated
from them (leanssl.cli_args), so a default, its flag and its help text live in one place.
Metadata keys besides "help" (a TrainConfig help text shows its default as {default}; a method setting's
help gets its default appended):
    flag         the flag's spelling when it is not --field-name (e.g. --budget), or None: not a flag
    type         "duration": the value is a time such as 90s, 10m or 1.5h (the annotation gives the others)
    metavar      the value's name in --help
    required     the flag must be given
    cli_default  the flag's default when it is not the field's (None: "not given", resolved by the command)
"""

from __future__ import annotations

from dataclasses import MISSING, Field, field


def opt(default=MISSING, help: str = "", *, factory=MISSING, **cli) -> Field:
    """A dataclass field with its help text (and flag spelling, for TrainConfig) in its metadata."""
    return field(default=default, default_factory=factory, metadata={"help": help, **cli})


def help_of(f: Field) -> str:
    return f.metadata.get("help", "")
