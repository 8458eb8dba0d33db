"""The ordered request decision.

1 route · 2 credential · 3 token (known, secret matches) · 4 status (revoked, expired,
allowed_cidrs) · 5 org · 6 team · 7 constraints · 8 scope.

Identity (steps 2–4, `Authenticator`) is kept apart from authorization (steps 5–8,
`authorize`); both raise `Denied`, which carries the stable step and reason that the
HTTP edge turns into a response and the audit log records.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from gateway import tokens
from gateway.cache import VerificationCache
from gateway.records import EXPIRED, REVOKED, TeamRecord, TokenRecord
from gateway.routes import Match
from gateway.scopes import Scope, effective_covers, effective_scopes
from gateway.store import Store, StoreUnavailable, now

T = TypeVar("T")

# step names, as they appear in responses, audit and metrics
STEP_PATH = "path"
STEP_ROUTE = "route"
STEP_CREDENTIAL = "credential"
STEP_TOKEN = "token"
STEP_STATUS = "status"
STEP_ORG = "org"
STEP_TEAM = "team"
STEP_CONSTRAINTS = "constraints"
STEP_SCOPE = "scope"
STEP_STORE = "store"


class Denied(Exception):
    """A refused request: HTTP status, error code, failing step and a human message."""

    def __init__(self, status: int, error: str, step: str, message: str, scope: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.step = step
        self.message = message
        self.scope = scope


def _unauthorized(step: str, message: str, error: str = "invalid_token") -> Denied:
    return Denied(401, error, step, message)


def _forbidden(step: str, message: str, scope: str | None = None) -> Denied:
    return Denied(403, "insufficient_scope" if step == STEP_SCOPE else "forbidden", step, message, scope)


def store_unavailable() -> Denied:
    return Denied(503, "store_unavailable", STEP_STORE, "token store unavailable; retry shortly")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token and, for a team token, its team's permission set."""

    token: TokenRecord
    team_permissions: tuple[Scope, ...] | None  # None: an org-level token

    def can(self, required: Scope) -> bool:
        return effective_covers(self.token.scopes, self.team_permissions, required)

    @property
    def effective_scopes(self) -> tuple[Scope, ...]:
        return effective_scopes(self.token.scopes, self.team_permissions)


def bearer_token(values: Sequence[str]) -> str:
    """The token in the Authorization header(s); exactly one Bearer credential."""
    if not values:
        raise _unauthorized(STEP_CREDENTIAL, "missing bearer token", error="missing_token")
    if len(values) > 1:
        raise Denied(400, "invalid_request", STEP_CREDENTIAL, "more than one Authorization header")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise _unauthorized(
            STEP_CREDENTIAL, "Authorization must use the Bearer scheme", error="missing_token"
        )
    token = token.strip()
    if not token or " " in token:
        raise _unauthorized(STEP_CREDENTIAL, "token is malformed")
    return token


class Throttled(Exception):
    """The failure throttle refused to verify a secret now (not a verdict on the token)."""


class FailureThrottle:
    """Token buckets for failed secret verifications: one per key id and one overall.

    A flood of wrong secrets (or unknown ids) may not turn into unbounded argon2 work (one
    default argon2id verification is ~150 ms of a core here, so 4 failures/s overall keeps a
    flood under two thirds of one core): once
    a bucket is empty, unproven tokens are refused without verification ("invalid token",
    as always). A token whose secret was already proven is never throttled.
    """

    def __init__(
        self,
        per_key_burst: float = 5,
        per_key_rate: float = 1.0,
        global_burst: float = 16,
        global_rate: float = 4.0,
        max_keys: int = 100_000,
    ) -> None:
        self.per_key = (per_key_burst, per_key_rate)
        self.overall = (global_burst, global_rate)
        self._keys: dict[str, tuple[float, float]] = {}
        self._global = (global_burst, time.monotonic())
        self.max_keys = max_keys
        self.refused = 0

    @staticmethod
    def _level(state: tuple[float, float], burst: float, rate: float, now: float) -> float:
        level, at = state
        return min(burst, level + (now - at) * rate)

    def allows(self, key_id: str) -> bool:
        now = time.monotonic()
        g_burst, g_rate = self.overall
        k_burst, k_rate = self.per_key
        state = self._keys.get(key_id)
        if self._level(self._global, g_burst, g_rate, now) < 1 or (
            state is not None and self._level(state, k_burst, k_rate, now) < 1
        ):
            self.refused += 1
            return False
        return True

    def failed(self, key_id: str) -> None:
        now = time.monotonic()
        g_burst, g_rate = self.overall
        k_burst, k_rate = self.per_key
        self._global = (self._level(self._global, g_burst, g_rate, now) - 1, now)
        state = self._keys.pop(key_id, (k_burst, now))
        self._keys[key_id] = (self._level(state, k_burst, k_rate, now) - 1, now)
        if len(self._keys) > self.max_keys:
            self._keys.pop(next(iter(self._keys)))


async def _join(inflight: dict[Any, asyncio.Task[Any]], key: Any, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` once for every concurrent caller with this key. It runs in its own task
    and every caller (the first included) waits through a shield, so a caller that is
    cancelled leaves the others their result instead of a CancelledError."""
    task = inflight.get(key)
    if task is None:

        async def run() -> T:
            return await work()

        task = asyncio.ensure_future(run())
        inflight[key] = task

        def done(finished: asyncio.Task[Any]) -> None:
            if inflight.get(key) is finished:
                del inflight[key]
            if not finished.cancelled():
                finished.exception()  # retrieved, even if every caller has gone

        task.add_done_callback(done)
    return cast(T, await asyncio.shield(task))


class Authenticator:
    """Steps 2–4: who holds this token, and may it be used right now?"""

    def __init__(
        self,
        store: Store,
        cache: VerificationCache,
        hasher: tokens.SecretHasher,
        accepted_prefixes: frozenset[str],
        argon2_slots: int = 2,
    ) -> None:
        self.store = store
        self.cache = cache
        self.hasher = hasher
        self.accepted_prefixes = accepted_prefixes
        self._inflight: dict[Any, asyncio.Task[Any]] = {}  # verifications, by fingerprint
        # store reads in flight, by (kind, key, cache epoch): concurrent misses share one
        self._reads: dict[Any, asyncio.Task[Any]] = {}
        self.prefiltered = 0  # wrong secrets refused by the secret check, without argon2
        self.argon2_verifications = 0
        self.stale_if_error = 0.0  # seconds; set from redis.stale_if_error
        self.stale_served = 0
        self.throttle = FailureThrottle()
        self._argon2_slots = asyncio.Semaphore(argon2_slots)

    async def authenticate(self, token: str, client_ip: str | None) -> Principal:
        try:
            parsed = tokens.parse(token, self.accepted_prefixes)
        except tokens.TokenFormatError as exc:
            raise _unauthorized(STEP_CREDENTIAL, str(exc)) from None
        fingerprint = tokens.fingerprint(token)
        try:
            key_id = await self._identify(fingerprint, parsed)
            # The record as the cache has it *now*: never one read before an invalidation
            # that this process has already seen (say, during an argon2 verification).
            record = await self._record(key_id) if key_id is not None else None
            if record is None:
                raise _unauthorized(STEP_TOKEN, "invalid token")
            status = record.status(now())
            if status == REVOKED:
                raise _unauthorized(STEP_STATUS, "token revoked")
            if status == EXPIRED:
                raise _unauthorized(STEP_STATUS, "token expired")
            if not record.client_allowed(client_ip):
                raise _unauthorized(STEP_STATUS, "client address not allowed for this token")
            team = await self._team(record) if record.team is not None else None
        except StoreUnavailable:
            raise store_unavailable() from None
        permissions = None if record.team is None else (team.permissions if team else ())
        return Principal(record, permissions)

    async def _identify(
        self, fingerprint: str, parsed: tokens.ParsedToken, report_throttled: bool = False
    ) -> str | None:
        """The key id this token proves to hold, or None (Throttled instead, if asked, when
        the failure throttle refused to verify it)."""
        key_id = self.cache.proof(fingerprint)
        if key_id is not None:
            return key_id
        if self.cache.failed(fingerprint):
            return None
        try:
            return await _join(self._inflight, fingerprint, lambda: self._verify(fingerprint, parsed))
        except Throttled:
            if report_throttled:
                raise
            return None

    async def prove(self, token: str) -> TokenRecord | None:
        """The record whose secret `token` holds, whatever its status (leak reports): through
        the same format check, cheap secret check, failure throttle and argon2 slots (off the
        event loop) as a request. None: not a token of this store, or a wrong secret;
        TokenFormatError: not a token at all; Throttled: retry later."""
        parsed = tokens.parse(token, self.accepted_prefixes)
        key_id = await self._identify(tokens.fingerprint(token), parsed, report_throttled=True)
        return await self._record(key_id) if key_id is not None else None

    async def _verify(self, fingerprint: str, parsed: tokens.ParsedToken) -> str | None:
        # An unknown key id, or a secret that fails the 16-bit secret check, is refused
        # with no argon2 work: a flood of made-up tokens costs a store read each, at most.
        record = await self._record(parsed.key_id)
        if record is None or (
            record.secret_check
            and not hmac.compare_digest(record.secret_check, tokens.secret_check(parsed.key_id, parsed.secret))
        ):
            self.prefiltered += 1
            self.cache.store_failure(fingerprint)
            return None
        # At most `argon2_slots` verifications run at once; the failure buckets are checked
        # once a slot is ours, so a queued flood is refused without argon2 work as soon as
        # the first failures are recorded, and proven tokens never wait here at all.
        async with self._argon2_slots:
            if not self.throttle.allows(parsed.key_id):
                raise Throttled()
            self.argon2_verifications += 1
            ok = await self.hasher.verify(record.secret_hash, parsed.secret)
            if not ok:
                self.cache.store_failure(fingerprint)
                self.throttle.failed(parsed.key_id)
                return None
        self.cache.store_proof(fingerprint, record.id)
        return record.id

    async def _shared(self, kind: str, key: str, fetch: Callable[[], Awaitable[T]]) -> T:
        """One store read for all concurrent cache misses on `key` in the current cache
        epoch (a miss after an invalidation never joins a read from before it)."""
        return await _join(self._reads, (kind, key, self.cache.epoch), fetch)

    async def _record(self, key_id: str) -> TokenRecord | None:
        record = self.cache.record(key_id)
        if record is None:
            return await self._shared("token", key_id, lambda: self._fetch_record(key_id))
        return record

    async def _fetch_record(self, key_id: str) -> TokenRecord | None:
        epoch = self.cache.epoch
        try:
            record = await self.store.get_token(key_id)
        except StoreUnavailable:
            record = self.cache.stale_record(key_id, self.stale_if_error)
            if record is None:
                raise
            self.stale_served += 1  # store down: a recently verified token keeps working
            return record
        if record is not None:
            self.cache.store_record(record, epoch)
        return record

    async def _team(self, record: TokenRecord) -> TeamRecord | None:
        assert record.team is not None
        team = self.cache.team(record.org, record.team)
        if team is None:
            return await self._shared("team", f"{record.org}/{record.team}", lambda: self._fetch_team(record))
        return team

    async def _fetch_team(self, record: TokenRecord) -> TeamRecord | None:
        assert record.team is not None
        epoch = self.cache.epoch
        try:
            team = await self.store.get_team(record.org, record.team)
        except StoreUnavailable:
            team = self.cache.stale_team(record.org, record.team, self.stale_if_error)
            if team is None:
                raise
            return team
        if team is not None:
            self.cache.store_team(team, epoch)
        return team


def authorize(match: Match, principal: Principal) -> None:
    """Steps 5–8 against the matched route and its path parameters."""
    route, params = match.route, match.params
    token = principal.token
    org_param = route.resource.get("org")
    if org_param is not None and params[org_param] != token.org:
        raise _forbidden(STEP_ORG, "token org does not match resource org")
    team_param = route.resource.get("team")
    if team_param is not None and token.team is not None and params[team_param] != token.team:
        raise _forbidden(STEP_TEAM, "token is not in the same team as the resource")
    for name, pinned in sorted(token.constraints.items()):
        param = route.resource.get(name)
        if param is None:
            raise _forbidden(
                STEP_CONSTRAINTS,
                f"token is constrained to {name}={pinned} and this route does not name a {name}",
            )
        if params[param] != pinned:
            raise _forbidden(
                STEP_CONSTRAINTS,
                f"token is constrained to {name}={pinned}; this request is for {name}={params[param]}",
            )
    for required in route.scopes:
        if not principal.can(required):
            raise _forbidden(STEP_SCOPE, f"token lacks required permission: {required}", scope=str(required))
