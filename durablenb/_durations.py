"""Durations written as ``90``, ``90s``, ``30m``, ``12h``, ``7d`` or ``2w``."""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in *text*; `ValueError` when it is not a duration."""
    m = _DURATION.match(text or "")
    if not m:
        raise ValueError(f"cannot read the duration {text!r}: use for example 90s, 30m, 12h, 7d, 2w")
    return float(m.group(1)) * _UNITS[m.group(2)]


def format_seconds(seconds: float | None) -> str:
    """``34.2 s``, ``5.3 min``, ``2.1 h``, ``3.0 d``; empty for an unknown duration."""
    if seconds is None or seconds != seconds:  # None or NaN
        return ""
    for limit, unit, size in ((120, "s", 1), (7200, "min", 60), (172800, "h", 3600)):
        if seconds < limit:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds / 86400:.1f} d"


def format_durations(column: Any) -> Any:
    """A pandas column of Timedeltas as `format_seconds` text."""
    return column.map(lambda d: format_seconds(None if d is None or d != d else d.total_seconds()))
