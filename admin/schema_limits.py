"""JSON Schemas of rate limits and usage budgets (gateway/limits.py) in the admin API."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

PERIOD: Schema = {
    "type": "string",
    "pattern": r"^[0-9]+(s|m|h|d|w|mo)$",
    "description": "a period: a whole number and a unit (s, m, h, d, w, or mo = 30 days), 1s to 366d",
}
RATE_LIMIT: Schema = {
    "type": "object",
    "description": "at most `limit` requests per `per` (GCRA: a burst of `limit`, then evenly)",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,31}$"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000},
        "per": PERIOD,
    },
    "required": ["limit", "per"],
    "additionalProperties": False,
}
RATE_LIMITS: Schema = {"type": "array", "items": RATE_LIMIT, "maxItems": 10}
REFILL: Schema = {
    "type": ["object", "null"],
    "description": "at each whole `every` since issuance, the remaining uses are set to `amount`",
    "properties": {"every": PERIOD, "amount": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000}},
    "required": ["every"],
    "additionalProperties": False,
}
MAX_USES: Schema = {
    "type": ["integer", "null"],
    "minimum": 1,
    "maximum": 1_000_000_000,
    "description": "a budget of requests; spent, the gateway answers 429 rate_limited",
}
# what a token create request takes, and what a token view shows
LIMITS_CREATE: Schema = {"rate_limits": RATE_LIMITS, "max_uses": MAX_USES, "refill": REFILL}
LIMITS_VIEW: Schema = {
    **LIMITS_CREATE,
    "remaining": {"type": ["integer", "null"], "description": "uses left (tokens with max_uses only)"},
}
LIMITS_BODY: Schema = {
    "type": "object",
    "description": "a team's or service account's whole list of rate limits (`[]`: none)",
    "properties": {"rate_limits": RATE_LIMITS},
    "required": ["rate_limits"],
    "additionalProperties": False,
}
