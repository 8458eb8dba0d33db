"""Human durations used in config and the admin API: `500ms`, `30s`, `15m`, `1h`, `90d`, `2w`."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)\Z")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: object) -> float:
    """Seconds in `text`; raises ValueError with the accepted forms."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"{text!r} is not a duration: use e.g. '30s', '15m', '1h', '90d'")
    if isinstance(text, int):
        return float(text)
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration: use e.g. '500ms', '30s', '15m', '1h', '90d'")
    value = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return float(value)


def format_duration(seconds: float) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms"
