"""The input contract of a backbone (channels, resolution, mean, std), as data.json and export metadata state it.

The bounds keep a damaged or crafted file from building an absurd model (a resolution of 10^9
would try to allocate it).
"""

from __future__ import annotations

import math

from ..errors import LeansslError

MAX_CHANNELS, MAX_RESOLUTION = 64, 4096


def check_input_contract(values, where) -> dict:
    """`values` (parsed data.json or export metadata) if its channels, resolution, mean and std make sense."""
    def bad(why: str) -> LeansslError:
        return LeansslError(f"{where}: {why} (damaged or not written by leanssl)")

    if not isinstance(values, dict):
        raise bad("not a JSON object")
    for key, hi in (("channels", MAX_CHANNELS), ("resolution", MAX_RESOLUTION)):
        v = values.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise bad(f"{key} must be an integer in [1, {hi}], got {v!r}")
    for key in ("mean", "std"):
        v = values.get(key)
        if not isinstance(v, (list, tuple)) or len(v) != values["channels"] or \
                not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            raise bad(f"{key} must be {values['channels']} finite number(s), got {v!r}")
    if not all(x > 0 for x in values["std"]):
        raise bad(f"std must be positive, got {values['std']!r}")
    return values
