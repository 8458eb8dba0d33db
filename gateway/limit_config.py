"""The `rate_limits` config section (gateway/limiter.py) and the route key `rate_limits`.

    rate_limits:
      mode: exact            # exact: every request asks the store (one script, one round trip)
                             # local: per-process counters, synced to the store every sync_interval
      on_store_error: open   # open: local counters only while the store is down; closed: 503
      sync_interval: 100ms   # local mode: how often counters are synced (bounds the overshoot)
      credit_lease: 100      # local mode: uses of a token's budget a process takes at a time
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenward.gateway.config_decode import Checker, described, integer, one_of, setting
from tokenward.gateway.durations import parse_duration
from tokenward.gateway.limits import LimitError, RateLimit, parse_rate_limits


@described(lambda d: d.value(parse_duration))
def _interval(value: object) -> float:
    seconds = parse_duration(value)
    if not 0.01 <= seconds <= 60:
        raise ValueError(f"{value!r} is out of range: 10ms to 60s")
    return seconds


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    mode: str = setting("exact", one_of("exact", "local"))
    on_store_error: str = setting("open", one_of("open", "closed"))
    sync_interval: float = setting(0.1, _interval)
    credit_lease: int = setting(100, integer(1, 10_000))


LIMIT_ITEM = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,31}$"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
        "per": {"type": ["string", "integer"]},
    },
    "required": ["limit", "per"],
    "additionalProperties": False,
}
LIMITS_SCHEMA = {"type": "array", "maxItems": 10, "items": LIMIT_ITEM}


def decode_route_limits(checker: Checker, raw: object, loc: str) -> tuple[RateLimit, ...]:
    """A route's `rate_limits`: defaults applied per token on that route."""
    try:
        return parse_rate_limits(raw, loc)
    except LimitError as exc:
        checker.problem("", str(exc))  # it names the item at fault (`routes[2].rate_limits[0]: ...`)
        return ()
