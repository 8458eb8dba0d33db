"""The ordered request decision.

1 route · 2 credential · 3 token (known, secret matches) · 4 status (revoked, expired,
allowed_cidrs) · 4b environment (live/test, where a route or upstream says) · 5 org · 6 team · 7 constraints · 8 scope.

Identity (steps 2–4, `Authenticator`) is kept apart from authorization (steps 5–8,
`authorize`); both raise `Refusal`, which carries the stable step and reason that the
HTTP edge turns into a response and the audit log records.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import orjson

from tokenward.gateway import legacy_keys, lineage, tokens
from tokenward.gateway.cache import VerificationCache
from tokenward.gateway.environments import describe
from tokenward.gateway.principal import Principal as Principal  # where it was: imported from here
from tokenward.gateway.principal import known_principal
from tokenward.gateway.records import ACTIVE, AccountRecord, TeamRecord, TokenRecord
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.routes import Match
from tokenward.gateway.scopes import Scope, parse_scopes
from tokenward.gateway.store import Store, now
from tokenward.gateway.store_link import StoreUnavailable
from tokenward.gateway.throttle import CLEAN, SUSPECT, FailureThrottle, LookupBudget, PriorityGate, Throttled

T = TypeVar("T")

def _unauthorized(step: Step, message: str, error: str = "invalid_token") -> Refusal:
    return Refusal(401, error, step, message)


def _forbidden(step: Step, message: str, scope: str | None = None) -> Refusal:
    return Refusal(403, "insufficient_scope" if step == Step.SCOPE else "forbidden", step, message, scope)


def store_unavailable() -> Refusal:
    return Refusal(503, "store_unavailable", Step.STORE, "token store unavailable; retry shortly")


class TokenRefused(Refusal):
    """A 401 at step 3 or 4 that knows more than its answer says, for the audit event only:
    the key id the credential claimed (unproven at step 3: anyone can name any key id), and
    at step 4, where the secret was proven, the token itself (attributed: `token_id`, name,
    org, team, service account). See SECURITY.md, "Refusal attribution"."""

    def __init__(self, step: Step, message: str, claimed_id: str | None, token: TokenRecord | None = None) -> None:
        super().__init__(401, "invalid_token", step, message)
        self.claimed_id = claimed_id
        self.token = token


def bearer_token(values: Sequence[str]) -> str:
    """The token in the Authorization header(s); exactly one Bearer credential."""
    if not values:
        raise _unauthorized(Step.CREDENTIAL, "missing bearer token", error="missing_token")
    if len(values) > 1:
        raise Refusal(400, "invalid_request", Step.CREDENTIAL, "more than one Authorization header")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise _unauthorized(
            Step.CREDENTIAL, "Authorization must use the Bearer scheme", error="missing_token"
        )
    token = token.strip()
    if not token or " " in token:
        raise _unauthorized(Step.CREDENTIAL, "token is malformed")
    return token


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
        # tokens.legacy_lookup_key: imported keys are looked up only with it (legacy_keys.py)
        self.legacy_lookup_key: str | None = None
        self._inflight: dict[Any, asyncio.Task[Any]] = {}  # verifications, by fingerprint
        # store reads in flight, by (kind, key, cache epoch): concurrent misses share one
        self._reads: dict[Any, asyncio.Task[Any]] = {}
        self.prefiltered = 0  # wrong secrets refused by the secret check, without argon2
        self.argon2_verifications = 0
        self.stale_if_error = 0.0  # seconds; set from redis.stale_if_error
        self.stale_served = 0
        self.throttle = FailureThrottle()
        self.lookups = LookupBudget()  # imported keys' lookups that find nothing (legacy_keys.py)
        self.imports = LookupBudget.for_imports()  # imports by calling token: each one is a lookup
        # One slot stays free for clean key ids with a keyed check (brand-new tokens, new
        # admin logins): a flood's verifications never hold more than the other one(s).
        self._argon2_slots = PriorityGate(argon2_slots, reserved=1, reserved_for=CLEAN)
        # Stands in for the record of an unknown key id, so that an unknown id costs what a
        # known one with a wrong secret costs: the same check (with a random key, so it too
        # passes 1 time in 65 536), and then argon2 against the hasher's decoy hash.
        decoy_key = tokens.new_check_key()
        self._decoy = TokenRecord(
            id=tokens.generate("tw_sat")[1].key_id,
            prefix="tw_sat",
            org="decoy",
            team="decoy",
            name="decoy",
            description="",
            scopes=parse_scopes(["read:apis"]),
            secret_hash=hasher.decoy_hash,
            created_at=time.time(),
            created_by="token:decoy",
            expires_at=time.time(),
            secret_check=tokens.secret_check("", tokens.new_check_key(), decoy_key),
            check_key=decoy_key,
        )
        self._decoy_json = orjson.dumps(self._decoy.to_json())  # parsed for each unknown id
        self._background: set[asyncio.Task[Any]] = set()
        self.checks_keyed = 0  # legacy records given a keyed secret check

    async def authenticate(self, token: str, client_ip: str | None, *, imported: bool = True) -> Principal:
        """The principal `token` proves. `imported`: an imported key (legacy_keys.py) may be
        one; the admin API says False, and such a credential is refused before any lookup."""
        fingerprint = None
        if token[: -tokens.BODY_LEN - 1] in self.accepted_prefixes and token.isascii():  # shaped as ours
            fingerprint = tokens.fingerprint(token)  # proven, records cached, allowed now: principal.py
            known = known_principal(self.cache, self.accepted_prefixes, fingerprint, client_ip)
            if known is not None:
                return known
        parsed: tokens.ParsedToken | None = None
        try:
            parsed = tokens.parse(token, self.accepted_prefixes)
        except tokens.TokenFormatError as exc:
            # not ours: an imported key, if the server looks them up and it can be one
            if self.legacy_lookup_key is None or not legacy_keys.candidate(token, self.accepted_prefixes):
                raise _unauthorized(Step.CREDENTIAL, str(exc)) from None
            if not imported:
                raise _unauthorized(Step.CREDENTIAL, f"{exc}; {legacy_keys.NOT_FOR_ADMIN}") from None
        fingerprint = fingerprint or tokens.fingerprint(token)
        try:
            if parsed is None:
                key_id = await self._identify_legacy(fingerprint, token, client_ip)
            else:
                key_id = await self._identify(fingerprint, parsed)
            # The record as the cache has it *now*: never one read before an invalidation
            # that this process has already seen (say, during an argon2 verification).
            record = await self._record(key_id) if key_id is not None else None
            if record is None:
                # an imported key claims no key id: nothing to name
                raise TokenRefused(Step.TOKEN, "invalid token", parsed.key_id if parsed is not None else None)
            status = record.status(now()) if record.parent_id is None else await lineage.status(record, self._record)
            if status != ACTIVE:  # "revoked" or "expired" (a child: also its ancestors', gateway/lineage.py)
                raise TokenRefused(Step.STATUS, f"token {status}", record.id, record)
            if not record.client_allowed(client_ip):
                raise TokenRefused(Step.STATUS, "client address not allowed for this token", record.id, record)
            team = await self._team(record) if record.team is not None else None
            account = None
            if record.service_account_id is not None:  # cached: no coroutine on the hot path
                account = self.cache.account(record.org, record.service_account_id) or await self._account(record)
                if account is not None and record.team not in account.teams:  # a cached copy may be older
                    account = await self._fetch_account(record.org, record.service_account_id)
                if account is None or record.team not in account.teams:
                    # its account was deleted (or left the team) while it was revoked, in a store
                    # from before restores checked it: never forward a name another account may hold
                    raise TokenRefused(Step.STATUS, "token's service account no longer exists", record.id, record)
        except StoreUnavailable:
            raise store_unavailable() from None
        permissions = None if record.team is None else (team.permissions if team else ())
        return Principal(record, permissions, account.name if account is not None else None)

    async def _identify(self, fingerprint: str, parsed: tokens.ParsedToken) -> str | None:
        """The key id this token proves to hold, or None."""
        key_id = self.cache.proof(fingerprint)
        if key_id is not None:
            return key_id
        if self.cache.failed(fingerprint):
            return None
        return await _join(self._inflight, fingerprint, lambda: self._verify(fingerprint, parsed))

    async def _identify_legacy(self, fingerprint: str, key: str, client: str | None) -> str | None:
        """The key id an imported key proves to hold, or None: its lookup digest gives the key
        id (no argon2 for an unknown digest, one store read; none while no key was ever
        imported), then the key is verified as a token of ours is, the key as its secret.
        Unlike a token of ours, the key does not hold its key id: a proof is only good while
        its record exists (deleted, the same key may be imported again as another token)."""
        key_id = self.cache.proof(fingerprint)
        if key_id is not None and await self._record(key_id) is not None:
            return key_id
        if self.cache.failed(fingerprint):
            return None
        return await _join(self._inflight, fingerprint, lambda: self._verify_legacy(fingerprint, key, client))

    async def _verify_legacy(self, fingerprint: str, key: str, client: str | None) -> str | None:
        lookup_key = self.legacy_lookup_key
        present = self.cache.legacy_present()
        if present is None:
            epoch = self.cache.epoch
            present = await self.store.legacy_keys_present()
            self.cache.store_legacy_present(present, epoch)
        key_id = None
        if present and lookup_key is not None:
            if not self.lookups.take(client):
                return None  # too many misses: refused unread (not a verdict: never cached)
            key_id = await self.store.legacy_key_id(legacy_keys.lookup_digest(lookup_key, key))
            if key_id is not None:
                self.lookups.found(client)
        if key_id is None or not tokens.KEY_ID_RE.match(key_id):
            self.cache.store_failure(fingerprint)
            return None
        # an imported record's prefix is "": no token of our format can ever prove it
        return await self._verify(fingerprint, tokens.ParsedToken("", key_id, key))

    async def _verify(self, fingerprint: str, parsed: tokens.ParsedToken) -> str | None:
        record, wrong = await self._prove(parsed, bind_prefix=True)
        if record is None:
            if wrong:  # (a throttled attempt is not known to be wrong: never cached)
                self.cache.store_failure(fingerprint)
            return None
        self.cache.store_proof(fingerprint, record.id, parsed.prefix)  # bound: the record's prefix
        return record.id

    async def prove(self, parsed: tokens.ParsedToken, *, bind_prefix: bool = True) -> TokenRecord | None:
        """The record whose secret `parsed` holds (and that was issued with `parsed.prefix`,
        unless `bind_prefix` is false), or None: the gateway's own verification, with its
        pre-check and throttle, for callers that hold a plaintext (e.g. leak reports).
        Throttled: the throttle refused to find out now (retry later). A token whose secret
        a request proved already (the proof cache) costs no argon2 again."""
        head = f"{parsed.prefix}_{parsed.key_id}{parsed.secret}"
        if self.cache.proof(tokens.fingerprint(head + tokens.checksum(head))) == parsed.key_id:
            proven = await self._record(parsed.key_id)
            if proven is not None:
                return proven
        record, wrong = await self._prove(parsed, bind_prefix=bind_prefix)
        if record is None and not wrong:
            raise Throttled()
        if record is not None and parsed.prefix == record.prefix:  # never a proof for a moved prefix
            self.cache.store_proof(tokens.fingerprint(head + tokens.checksum(head)), record.id)
        return record

    async def prove_legacy(self, key: str, client: str | None) -> TokenRecord | None:
        """The record of the imported key `key`, or None: the gateway's lookup (on the same
        budget as requests) and verification, for callers holding a plaintext (leak reports).
        Throttled: a budget refused to find out now. No proof is cached."""
        lookup_key = self.legacy_lookup_key
        if lookup_key is None or not legacy_keys.candidate(key, self.accepted_prefixes):
            return None
        if not self.lookups.take(client):
            raise Throttled()
        key_id = await self.store.legacy_key_id(legacy_keys.lookup_digest(lookup_key, key))
        if key_id is None or not tokens.KEY_ID_RE.match(key_id):
            return None
        self.lookups.found(client)
        record, wrong = await self._prove(tokens.ParsedToken("", key_id, key), bind_prefix=True)
        if record is None and not wrong:
            raise Throttled()
        return record

    async def _prove(self, parsed: tokens.ParsedToken, *, bind_prefix: bool) -> tuple[TokenRecord | None, bool]:
        """(record, False) when the secret is proven; (None, True) when it is wrong;
        (None, False) when the throttle refused to find out.

        No caches: one store read, the secret check, and argon2 only for a secret that
        passes the check, in the throttle's order. A known key id and an unknown one cost
        the same: one store read (never a cached record, whose presence would tell a known
        id from an unknown one), the same keyed check against the record or a decoy, argon2
        for the 1 in 65 536 that pass it, and a failure charged to the key id either way; a
        store outage is a 503 for both (stale records are only for proven tokens). A wrong
        prefix with the right secret is refused at the check, as a wrong secret is."""
        record = await self._shared("verify", parsed.key_id, lambda: self._read_record(parsed.key_id))
        candidate = record if record is not None else self._decoy
        check_ok = tokens.check_passes(candidate.secret_check, candidate.check_key, parsed)
        issued_with = record.prefix if record is not None else parsed.prefix
        prefix_ok = hmac.compare_digest(issued_with.encode(), parsed.prefix.encode())
        if not (check_ok and (prefix_ok or not bind_prefix)):
            self.prefiltered += 1
            return None, True
        # At most `argon2_slots` verifications run at once, key ids with no recent failure
        # first; the buckets are checked once a slot is ours, so a queued flood is refused
        # without argon2 work as soon as the first failures are recorded.
        priority = self.throttle.priority(parsed.key_id, keyed_check=bool(candidate.check_key))
        if priority == SUSPECT and not self.throttle.allows(parsed.key_id, take=False):
            return None, False  # refused now rather than after waiting in the queue
        async with self._argon2_slots.slot(priority):
            if not self.throttle.allows(parsed.key_id):
                return None, False
            self.argon2_verifications += 1
            ok = await self.hasher.verify(record.secret_hash if record is not None else None, parsed.secret)
            if not ok or record is None:
                self.throttle.failed(parsed.key_id)
                return None, True
        if not record.check_key:
            self._key_legacy_check(record, parsed)
        return record, False

    def _key_legacy_check(self, record: TokenRecord, parsed: tokens.ParsedToken) -> None:
        """A legacy record's secret was just proven: give it a keyed check (in the
        background; the request does not wait for the store)."""
        check_key = tokens.new_check_key()
        check = tokens.secret_check(parsed.key_id, parsed.secret, check_key)

        async def write() -> None:
            with contextlib.suppress(StoreUnavailable):
                if await self.store.key_secret_check(record.id, record.secret_hash, check_key, check):
                    self.checks_keyed += 1

        task = asyncio.ensure_future(write())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _read_record(self, key_id: str) -> TokenRecord | None:
        """A fresh read for a verification (cached for the proven path afterwards)."""
        epoch = self.cache.epoch
        record = await self.store.get_token(key_id)
        if record is not None:
            self.cache.store_record(record, epoch)
        else:  # parse a record as a known id does (tens of µs: measurable over many probes)
            TokenRecord.from_json(orjson.loads(self._decoy_json))
        return record

    async def _shared(self, kind: str, key: str, fetch: Callable[[], Awaitable[T]]) -> T:
        """One store read for all concurrent cache misses on `key` in the current cache
        epoch (a miss after an invalidation never joins a read from before it)."""
        return await _join(self._reads, (kind, key, self.cache.epoch), fetch)

    async def _record(self, key_id: str) -> TokenRecord | None:
        record = self.cache.record(key_id)
        if record is None:
            return await self._shared("token", key_id, lambda: self._fetch_record(key_id))
        return record

    def stale_window(self) -> float:
        """How old a cached record may be and still be served while the store is down. A
        record was current for `cache_ttl` after it was read, and a token verified from it
        any time in that span must keep working for `stale_if_error` after (the promise):
        so the two together, counted from the read; none when `stale_if_error` is off."""
        return self.cache.ttl + self.stale_if_error if self.stale_if_error > 0 else 0.0

    async def _fetch_record(self, key_id: str) -> TokenRecord | None:
        epoch = self.cache.epoch
        try:
            record = await self.store.get_token(key_id)
        except StoreUnavailable:
            record = self.cache.stale_record(key_id, self.stale_window())
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
            team = self.cache.stale_team(record.org, record.team, self.stale_window())
            if team is None:
                raise
            return team
        if team is not None:
            self.cache.store_team(team, epoch)
        return team

    async def _account(self, record: TokenRecord) -> AccountRecord | None:
        """The token's org-level service account (its name now), cached like a team."""
        assert record.service_account_id is not None
        org, account_id = record.org, record.service_account_id
        account = self.cache.account(org, account_id)
        if account is None:
            return await self._shared("account", f"{org}/{account_id}", lambda: self._fetch_account(org, account_id))
        return account

    async def _fetch_account(self, org: str, account_id: str) -> AccountRecord | None:
        epoch = self.cache.epoch
        try:
            account = await self.store.get_account(org, account_id)
        except StoreUnavailable:
            account = self.cache.stale_account(org, account_id, self.stale_window())
            if account is None:
                raise
            return account
        if account is not None:
            self.cache.store_account(account, epoch)
        return account


# -- steps 5, 6 and 8, shared by `authorize` and the admin API (tokenward.rules) ----------------
def require_org(principal: Principal, org: str) -> None:
    if principal.token.org != org:
        raise _forbidden(Step.ORG, "token org does not match resource org")


def require_team(principal: Principal, team: str) -> None:  # an org-level token: the caller decides
    if principal.token.team != team:
        raise _forbidden(Step.TEAM, "token is not in the same team as the resource")


def lacks(required: Scope | str) -> Refusal:
    return _forbidden(Step.SCOPE, f"token lacks required permission: {required}", scope=str(required))


def require_scope(principal: Principal, required: Scope) -> None:
    if not principal.can(required):
        raise lacks(required)


def require_environment(accepted: frozenset[str] | None, token: TokenRecord) -> None:
    """Step 4b: a route or upstream with `environments` refuses tokens of the others."""
    if accepted is not None and token.environment not in accepted:
        raise _forbidden(
            Step.ENVIRONMENT,
            f"this route accepts {describe(accepted)} tokens only; this is a {token.environment} token",
        )


def authorize(match: Match, principal: Principal) -> None:
    """Steps 4b (environment) and 5–8 against the matched route and its path parameters."""
    route, params = match.route, match.params
    token = principal.token
    passed = principal.passed  # routes whose environment and scopes this principal passes
    known = passed is not None and principal.has_passed(route)
    if not known:
        require_environment(route.environments, token)
    if (org_param := route.resource.get("org")) is not None:
        require_org(principal, params[org_param])
    if (team_param := route.resource.get("team")) is not None and token.team is not None:
        require_team(principal, params[team_param])  # an org-level token passes step 6 here
    for name, pinned in sorted(token.constraints.items()) if token.constraints else ():
        param = route.resource.get(name)
        if param is None:
            raise _forbidden(
                Step.CONSTRAINTS,
                f"token is constrained to {name}={pinned} and this route does not name a {name}",
            )
        if params[param] != pinned:
            raise _forbidden(
                Step.CONSTRAINTS,
                f"token is constrained to {name}={pinned}; this request is for {name}={params[param]}",
            )
    if not known:
        for required in route.scopes:
            require_scope(principal, required)
        principal.note_passed(route)
