"""Rate limits and usage credits: what they are, as plain data (no I/O).

A `RateLimit` is a named limit, `limit` requests per `per` (`{"name": "burst", "limit": 5,
"per": "1m"}`), held by a token, a service account, a team or a route (the route's apply per
token). A `Credits` budget is a token's `max_uses`, optionally refilled (`{"every": "1d",
"amount": N}`: at each whole `every` since the token was issued its remaining uses are set to
`amount`). The store enforces both (gateway/store_limits.py: one script, one round trip);
gateway/limiter.py decides which limits a request meets and renders the answers.

The 429's headers follow draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy:
"burst";q=5;w=60` (quota, window seconds) and `RateLimit: "burst";r=0;t=12` (remaining,
seconds until the quota is back), with `Retry-After`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenward.gateway.durations import parse_duration

LIMIT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
MAX_LIMITS = 10  # named limits on one holder (token, account, team, route)
MAX_COUNT = 1_000_000_000
MIN_PER, MAX_PER = 1.0, 366 * 86400.0
_MONTHS = re.compile(r"^(\d+)mo\Z")
MONTH = 30 * 86400  # `1mo` is 30 days (documented: not a calendar month)
PER_EXAMPLES = "a whole number and a unit, e.g. '1s', '1m', '1h', '1d'"


class LimitError(ValueError):
    """A rate limit or credit given in a request or the config is malformed."""


def parse_period(text: object) -> float:
    """Seconds in a period: a duration (`30s`, `1m`, `1h`, `1d`, `2w`) or months (`1mo`: 30 days)."""
    if isinstance(text, str) and (match := _MONTHS.match(text.strip())):
        seconds = float(int(match.group(1)) * MONTH)
    else:
        try:
            seconds = parse_duration(text)
        except ValueError:
            raise LimitError(f"{str(text)[:40]!r} is not a period: use {PER_EXAMPLES} or '1mo'") from None
    if not MIN_PER <= seconds <= MAX_PER:
        raise LimitError(f"{text!r} is out of range: a period is 1s to 366d")
    return seconds


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
        raise LimitError(f"{what} must be a whole number 1..{MAX_COUNT}")
    return value


@dataclass(frozen=True, slots=True)
class RateLimit:
    name: str
    limit: int
    per: str  # as given (`1m`); `seconds` is its length
    seconds: float = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seconds", parse_period(self.per))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "limit": self.limit, "per": self.per}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RateLimit:
        return cls(name=data["name"], limit=int(data["limit"]), per=str(data["per"]))

    def policy(self) -> str:
        """This limit's `RateLimit-Policy` item."""
        return f'"{self.name}";q={self.limit};w={max(1, round(self.seconds))}'


@dataclass(frozen=True, slots=True)
class Refill:
    every: str
    amount: int
    seconds: float = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seconds", parse_period(self.every))

    def to_json(self) -> dict[str, Any]:
        return {"every": self.every, "amount": self.amount}


def parse_rate_limits(value: object, where: str = "rate_limits") -> tuple[RateLimit, ...]:
    """A list of `{"name", "limit", "per"}` (LimitError naming the item at fault)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise LimitError(f"{where}: expected a list like [{{name: burst, limit: 5, per: 1m}}]")
    if len(value) > MAX_LIMITS:
        raise LimitError(f"{where}: at most {MAX_LIMITS} limits")
    found: list[RateLimit] = []
    for i, item in enumerate(value):
        here = f"{where}[{i}]"
        if not isinstance(item, dict) or set(item) - {"name", "limit", "per"} or not {"limit", "per"} <= set(item):
            raise LimitError(f"{here}: expected {{name, limit, per}}, e.g. {{name: burst, limit: 5, per: 1m}}")
        per = item["per"]
        name = item.get("name", f"l{i}" if len(value) > 1 else "default")
        if not isinstance(name, str) or not LIMIT_NAME.match(name):
            raise LimitError(f"{here}.name: {str(name)[:40]!r} is not a name: [a-z][a-z0-9_-]*, at most 32")
        if any(limit.name == name for limit in found):
            raise LimitError(f"{here}.name: {name!r} is given twice")
        try:
            seconds = parse_period(per)
            limit = _count(item["limit"], "limit")
        except LimitError as exc:
            raise LimitError(f"{here}: {exc}") from None
        if limit > seconds * 1_000_000:
            # the store spaces requests in whole microseconds: more than one a microsecond would
            # be silently loosened (review of issue 16)
            raise LimitError(f"{here}: {limit} per {per} is more than one request a microsecond")
        found.append(RateLimit(name, limit, per if isinstance(per, str) else f"{int(seconds)}s"))
    return tuple(found)


def parse_refill(value: object, max_uses: int | None) -> Refill | None:
    if value is None:
        return None
    if max_uses is None:
        raise LimitError("refill: needs max_uses")
    if not isinstance(value, dict) or set(value) - {"every", "amount"} or "every" not in value:
        raise LimitError("refill: expected {every, amount}, e.g. {every: 1d, amount: 100}")
    every = value["every"]
    try:
        parse_period(every)
        amount = _count(value.get("amount", max_uses), "refill.amount")
    except LimitError as exc:
        raise LimitError(f"refill: {exc}") from None
    if not isinstance(every, str):
        raise LimitError("refill.every: a period like '1d' or '1mo'")
    return Refill(every, amount)


def parse_max_uses(value: object) -> int | None:
    return None if value is None else _count(value, "max_uses")


def parse_limit_option(text: str) -> dict[str, Any]:
    """The CLI's `--rate-limit NAME=LIMIT/PER` (`burst=5/1m`; `5/1m` names it `default`)."""
    name, equals, rest = text.rpartition("=")
    count, _, per = rest.partition("/")
    if not count.isdigit() or not per or (equals and not name):
        raise LimitError(f"{text!r} is not a rate limit: use NAME=LIMIT/PER, e.g. burst=5/1m")
    return {"name": name or "default", "limit": int(count), "per": per}


def parse_refill_option(text: str) -> dict[str, Any]:
    """The CLI's `--refill EVERY:AMOUNT` (`1d:100`)."""
    every, _, amount = text.partition(":")
    if not every or not amount.isdigit():
        raise LimitError(f"{text!r} is not a refill: use EVERY:AMOUNT, e.g. 1d:100")
    return {"every": every, "amount": int(amount)}


@dataclass(frozen=True, slots=True)
class Credits:
    """A token's usage budget, as the store script needs it."""

    max_uses: int
    refill: Refill | None
    anchor: float  # refill periods count from here (the token's created_at)


def remaining_now(stored: tuple[int, int] | None, credits: Credits, now: float) -> int:
    """The uses left, from the stored (left, period) pair (None: never used)."""
    period = math.floor((now - credits.anchor) / credits.refill.seconds) if credits.refill else 0
    if stored is None:
        return credits.max_uses
    left, at = stored
    if credits.refill is not None and period > at:
        return credits.refill.amount
    return left


@dataclass(frozen=True, slots=True)
class Verdict:
    """The store's answer for one request's limits and credits."""

    allowed: bool
    limits: Sequence[RateLimit]
    remaining: Sequence[int]  # per limit, after this request (0 when refused)
    reset: Sequence[float]  # per limit: seconds until its whole quota is back
    retry_after: float  # refused: seconds until a retry can pass
    denied: RateLimit | None  # the limit that refused (None: none, or the credits)
    credits_left: int | None  # None: no budget
    credits_spent: bool = False  # refused for the budget

    def headers(self) -> dict[str, str]:
        """RateLimit-Policy / RateLimit (and Retry-After when refused)."""
        headers: dict[str, str] = {}
        if self.limits:
            headers["RateLimit-Policy"] = ", ".join(limit.policy() for limit in self.limits)
            headers["RateLimit"] = ", ".join(
                f'"{limit.name}";r={left};t={max(0, math.ceil(reset))}'
                for limit, left, reset in zip(self.limits, self.remaining, self.reset, strict=True)
            )
        if not self.allowed and not (self.credits_spent and self.retry_after <= 0):
            # a budget spent for good (no refill) has no time to retry at: no Retry-After,
            # rather than telling a runaway agent to come back every second
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers

    def message(self) -> str:
        if self.credits_spent:
            return "usage budget spent: this token has no uses left" + (
                f"; retry in {max(1, math.ceil(self.retry_after))}s (refill)" if self.retry_after > 0 else ""
            )
        assert self.denied is not None
        limit = self.denied
        return f"rate limit {limit.name!r} exceeded ({limit.limit} per {limit.per}); retry in {max(1, math.ceil(self.retry_after))}s"


@dataclass(frozen=True, slots=True)
class TokenLimits:
    """What a token is issued with: its rate limits and usage budget."""

    rate_limits: tuple[RateLimit, ...] = ()
    max_uses: int | None = None
    refill: Refill | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> TokenLimits:
        """From a create request's `rate_limits`, `max_uses` and `refill` (LimitError)."""
        max_uses = parse_max_uses(body.get("max_uses"))
        return cls(parse_rate_limits(body.get("rate_limits")), max_uses, parse_refill(body.get("refill"), max_uses))


NO_LIMITS = TokenLimits()
