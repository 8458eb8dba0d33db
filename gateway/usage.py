"""Usage per token: counted in the process, written to the store in batches.

Every decision that names a token (allowed, or refused at steps 4–8, where the token is
known: see SECURITY.md "Refusal attribution") is counted here, per token and UTC day: the
requests by route, the refusals by step, and for allowed requests the scopes the route
required, so that the flush can tell which of the token's granted scopes covered them (the
least-privilege report: `unused_scopes`). A request costs a few dict operations and no store
call: the audit writer (`AuditLog.flush`) takes the tally with its events and writes it in
one pipeline, one script call per (token, day) hash, each adding its counts atomically and at
most once (see `Store.add_usage`). Memory is bounded: at most `max_entries` (token, day)
pairs between two flushes (routes, steps and scopes per pair are bounded by the config); a
request beyond that is counted in `dropped` (the metric `tokenward_usage_dropped`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tokenward.gateway.records import TokenRecord
from tokenward.gateway.scopes import Scope

MAX_ENTRIES = 20_000  # (token, day) pairs counted between two flushes
DAY = 86_400
# How many days of usage the store keeps (the widest window a report may ask for) and the
# margin its day hashes live beyond that, so that the oldest day of the window is whole.
USAGE_DAYS = 90
USAGE_TTL = (USAGE_DAYS + 2) * DAY

# The fields of a (token, day) hash in the store: totals, then one per route, step and scope.
REQUESTS, ALLOWED = "n", "a"
ROUTE, REFUSED, SCOPE = "r:", "x:", "s:"
TOOL = "t:"  # allowed MCP tool calls per tool (a name the route's `mcp` policy lists, or UNLISTED)
UNLISTED_TOOL = "(unlisted)"  # tools allowed by a policy's `default` scope: one count for all


def day_of(at: float) -> str:
    """The UTC date of `at` (the day hashes' name and the report's by_day keys)."""
    return time.strftime("%Y-%m-%d", time.gmtime(at))


class _RouteCount:
    __slots__ = ("allowed", "refused", "required")

    def __init__(self, required: tuple[Scope, ...]) -> None:
        self.allowed = 0
        self.refused = 0
        self.required = required  # the route's scopes when it was counted


class _DayCount:
    """One token's counts on one day, between two flushes."""

    __slots__ = ("granted", "refused", "routes", "tool_scopes", "tools")

    def __init__(self, granted: tuple[Scope, ...]) -> None:
        self.granted = granted  # the token's scopes (fixed at issuance)
        self.routes: dict[str, _RouteCount] = {}
        self.refused: dict[str, int] = {}
        self.tools: dict[str, int] = {}  # allowed MCP tool calls (names bounded by the config)
        self.tool_scopes: dict[Scope, int] = {}  # the scopes those calls needed


@dataclass(frozen=True, slots=True)
class UsageBatch:
    """What one flush writes: per (token id, day) the fields to add. `worker` and `seq` make
    the write idempotent: a (token, day) hash takes each worker's batch at most once, so a
    batch whose outcome is unknown (the connection dropped) is sent again as it is."""

    worker: str
    seq: int
    rows: tuple[tuple[str, str, tuple[tuple[str, int], ...]], ...]


def covering(granted: Sequence[Scope], required: Scope) -> Scope | None:
    """The granted scope that exercised `required`: of those that cover it, the narrowest
    (one that every other covering scope covers too), else the first; None if none does."""
    found = [scope for scope in granted if scope.covers(required)]
    for scope in found:
        if all(other.covers(scope) for other in found):
            return scope
    return found[0] if found else None


class UsageTally:
    """This process's usage counts since the last flush (see the module's docstring)."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self.dropped = 0  # requests not counted: the tally was full
        self.worker = secrets.token_hex(6)  # this tally's name in the day hashes (see UsageBatch)
        self._seq = 0
        self._days: dict[int, dict[str, _DayCount]] = {}  # day number -> token id -> counts
        self._entries = 0  # (token, day) pairs in _days
        # the day being counted: its token map and its bounds (a string key, one comparison)
        self._today: dict[str, _DayCount] = {}
        self._day_start = self._day_end = 0.0
        self.unsent: UsageBatch | None = None  # a batch whose write failed: sent again, first

    @property
    def waiting(self) -> int:
        """(token, day) pairs counted and not yet written."""
        return self._entries + (len(self.unsent.rows) if self.unsent is not None else 0)

    def count(
        self, token: TokenRecord, route: str, required: tuple[Scope, ...], allowed: bool, step: str, at: float
    ) -> None:
        """One decision about `token` on `route` (the route's `required` scopes); refused at
        `step` unless `allowed`. The hot path: a comparison and a few dict operations."""
        if not self._day_start <= at < self._day_end:
            number = int(at // DAY)
            self._today = self._days.setdefault(number, {})
            self._day_start, self._day_end = number * DAY, (number + 1) * DAY
        day = self._today.get(token.id)
        if day is None:
            if self._entries >= self.max_entries:
                self.dropped += 1
                return
            self._entries += 1
            day = self._today[token.id] = _DayCount(token.scopes)
        counts = day.routes.get(route)
        if counts is None:
            counts = day.routes[route] = _RouteCount(required)
        if allowed:
            counts.allowed += 1
        else:
            counts.refused += 1
            day.refused[step] = day.refused.get(step, 0) + 1

    def count_tools(self, token_id: str, tools: Sequence[tuple[str, Scope]], at: float) -> None:
        """The MCP tools an allowed request called (`count` counted the request first):
        per tool label and the scope each needed (for `unused_scopes`)."""
        if not self._day_start <= at < self._day_end:
            return  # (the day turned between the two calls: the request's day has its count)
        day = self._today.get(token_id)
        if day is None:
            return  # the tally was full: the request was not counted either
        for label, scope in tools:
            day.tools[label] = day.tools.get(label, 0) + 1
            day.tool_scopes[scope] = day.tool_scopes.get(scope, 0) + 1

    def take(self) -> UsageBatch | None:
        """The counts so far as one batch (None: nothing counted); the tally starts over."""
        days, self._days = self._days, {}
        self._entries, self._day_start, self._day_end = 0, 0.0, 0.0  # the next count finds its day again
        rows = tuple(
            (token_id, day_of(number * DAY), _fields(count))
            for number, tokens in days.items()
            for token_id, count in tokens.items()
        )
        if not rows:
            return None
        self._seq += 1
        return UsageBatch(self.worker, self._seq, rows)


def _fields(day: _DayCount) -> tuple[tuple[str, int], ...]:
    allowed = sum(route.allowed for route in day.routes.values())
    refused = sum(day.refused.values())
    fields: dict[str, int] = {REQUESTS: allowed + refused, ALLOWED: allowed}
    scopes: dict[str, int] = {}
    for label, route in day.routes.items():
        fields[ROUTE + label] = route.allowed + route.refused
        if route.allowed:
            exercised = {covering(day.granted, required) for required in route.required}
            for scope in exercised:
                if scope is not None:
                    name = SCOPE + str(scope)
                    scopes[name] = scopes.get(name, 0) + route.allowed
    for step, n in day.refused.items():
        fields[REFUSED + step] = n
    for required, n in day.tool_scopes.items():
        scope = covering(day.granted, required)
        if scope is not None:
            scopes[SCOPE + str(scope)] = scopes.get(SCOPE + str(scope), 0) + n
    for label, n in day.tools.items():
        fields[TOOL + label] = n
    fields.update(scopes)
    return tuple((name, n) for name, n in fields.items() if n)
