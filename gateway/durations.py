"""Human durations used in config and the admin API: `500ms`, `30s`, `15m`, `1h`, `90d`, `2w`.

A token's lifetime (`expires_in`, `--expires-in`) also takes a bare number of days, as envshed's
CLI does: `90` is `90d` (`parse_lifetime`). Elsewhere (config timeouts) an integer is seconds.
A time (`expires_at`) is RFC 3339 with a zone, or a bare date, `2027-01-01`, which means
00:00 UTC at the start of that day (`parse_time`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)\Z")
_DAYS = re.compile(r"^\d+\Z")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")
DURATION_EXAMPLES = "a whole number and a unit (ms, s, m, h, d or w), e.g. '30s', '15m', '1h', '90d', '2w'"
LIFETIME_EXAMPLES = "a number of days (e.g. 90) or " + DURATION_EXAMPLES
TIME_EXAMPLES = "a date, e.g. '2027-01-01' (00:00 UTC), or an RFC 3339 time with a zone, e.g. '2027-01-01T12:00:00Z'"
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: object) -> float:
    """Seconds in `text`; raises ValueError with the accepted forms."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"{_shown(text)} is not a duration: use e.g. '30s', '15m', '1h', '90d'")
    if isinstance(text, int):
        return float(text)
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{_shown(text)} is not a duration: use e.g. '500ms', '30s', '15m', '1h', '90d'")
    value = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return float(value)


def parse_lifetime(text: object) -> float:
    """Seconds in a token lifetime: a duration, or a bare whole number of days (`90`, `"90"`)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return float(text * 86400)
    if isinstance(text, str) and _DAYS.match(text.strip()):
        return float(int(text.strip()) * 86400)
    if isinstance(text, str) and _DURATION.match(text.strip()):
        return parse_duration(text)
    raise ValueError(f"{_shown(text)} is not a lifetime: use {LIFETIME_EXAMPLES}")


def parse_time(text: object) -> float:
    """A POSIX time from an RFC 3339 time with a zone, or a date (00:00 UTC that day)."""
    if not isinstance(text, str):
        raise ValueError(f"{_shown(text)} is not a date or time: use {TIME_EXAMPLES}")
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{_shown(text)} is not a date or time: use {TIME_EXAMPLES}") from None
    if _DATE.match(value):
        return parsed.replace(tzinfo=UTC).timestamp()
    if parsed.tzinfo is None:
        raise ValueError(f"{_shown(text)} has no time zone: add one, e.g. 'Z' for UTC ('2027-01-01T12:00:00Z')")
    return parsed.timestamp()


def _shown(value: object) -> str:
    """The value in an error message, cut short (a request may send anything)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_duration(seconds: float) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms"
