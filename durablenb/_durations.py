"""Durations written as ``90``, ``90s``, ``30m``, ``12h``, ``7d`` or ``2w``."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in *text*; `ValueError` when it is not a duration."""
    m = _DURATION.match(text or "")
    if not m:
        raise ValueError(f"cannot read the duration {text!r}: use for example 90s, 30m, 12h, 7d, 2w")
    return float(m.group(1)) * _UNITS[m.group(2)]
