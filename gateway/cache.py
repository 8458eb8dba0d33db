"""In-process verification cache and its invalidation.

Three bounded maps, all keyed without plaintext:
- proofs:   sha256(token) -> `Proof` (key id, prefix), once argon2 verified the secret (a proof
  never goes stale);
- failures: sha256(token) -> time, a wrong secret or unknown id (negative cache);
- records:  key id -> token record, and (org, team) -> team record, for `cache_ttl` at most;
  and whether the store holds imported keys at all (gateway/legacy_keys.py), as long.

Status, expiry, org/team, constraints and scopes are re-checked on every request against
the cached records. Every change in the store is pushed on a pub/sub channel; the listener
drops what changed at once. While that channel is down, no cached token or team record is
trusted: each request reads its records from the store (a revocation made meanwhile by
another process is seen by the very next request, a store round trip later), the change
log is read at once and then polled fast, and the whole cache is cleared when the channel
is back. Proofs (argon2 results) stay: a change never makes a proof wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import structlog

from tokenward.gateway.aio import cancel_and_wait
from tokenward.gateway.bounded import BoundedMap
from tokenward.gateway.records import AccountRecord, TeamRecord, TokenRecord
from tokenward.gateway.store import Store
from tokenward.gateway.store_changes import Change
from tokenward.gateway.store_link import StoreUnavailable

log = structlog.get_logger("tokenward.cache")


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    invalidations: int = 0
    clears: int = 0


class Proof:
    """A credential whose secret argon2 verified: the key id it holds, the prefix it was
    issued with ("" for an imported key, which is never a token of ours), and what the
    decision derived from the records it last saw (gateway/principal.py; rebuilt whenever
    any of them is another object)."""

    __slots__ = ("key_id", "memo", "prefix")

    def __init__(self, key_id: str, prefix: str) -> None:
        self.key_id = key_id
        self.prefix = prefix
        self.memo: Any = None


class VerificationCache:
    def __init__(self, ttl: float, max_entries: int = 100_000, negative_ttl: float = 60.0) -> None:
        self.ttl = ttl
        self.negative_ttl = min(negative_ttl, ttl) if ttl > 0 else 0.0
        self.proofs: BoundedMap[str, Proof] = BoundedMap(max_entries)
        self.failures: BoundedMap[str, float] = BoundedMap(max_entries)
        self.records: BoundedMap[str, TokenRecord] = BoundedMap(max_entries)
        self.teams: BoundedMap[tuple[str, str], TeamRecord] = BoundedMap(max_entries)
        # (org, id) -> org-level service account: its current name, forwarded and audited
        self.accounts: BoundedMap[tuple[str, str], AccountRecord] = BoundedMap(max_entries)
        self.stats = CacheStats()
        # Bumped on every invalidation; a fetch that started before a bump must not be
        # cached, or a record read just before a revoke could outlive the revoke.
        self.epoch = 0
        # False while the push channel is down: a change made then could be missed, so every
        # record is read from the store until the channel is back (and the cache cleared).
        self.trusted = True
        # Whether the store holds imported keys (gateway/legacy_keys.py), and when that was read
        self._legacy: tuple[bool, float] | None = None

    def legacy_present(self) -> bool | None:
        """Whether imported keys exist, as read within `ttl` (None: unknown, read the store)."""
        if self._legacy is None or not self.trusted or time.monotonic() - self._legacy[1] > self.ttl:
            return None
        return self._legacy[0]

    def store_legacy_present(self, present: bool, epoch: int) -> None:
        if epoch == self.epoch:
            self._legacy = (present, time.monotonic())

    def proof(self, fingerprint: str) -> str | None:
        proof = self.proofs.get(fingerprint)
        return proof.key_id if proof is not None else None

    def failed(self, fingerprint: str) -> bool:
        return self.negative_ttl > 0 and self.failures.get(fingerprint, self.negative_ttl) is not None

    def record(self, key_id: str) -> TokenRecord | None:
        found = self.records.get(key_id, self.ttl) if self.trusted else None
        if found is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return found

    def team(self, org: str, team: str) -> TeamRecord | None:
        return self.teams.get((org, team), self.ttl) if self.trusted else None

    def account(self, org: str, account_id: str) -> AccountRecord | None:
        return self.accounts.get((org, account_id), self.ttl) if self.trusted else None

    def stale_account(self, org: str, account_id: str, max_age: float) -> AccountRecord | None:
        return self.accounts.get((org, account_id), max_age)

    def store_account(self, account: AccountRecord, epoch: int) -> None:
        if self.ttl > 0 and epoch == self.epoch:
            self.accounts.put((account.org, account.id), account)

    def stale_record(self, key_id: str, max_age: float) -> TokenRecord | None:
        """For a store outage: a record fetched within `max_age`, however old for the cache."""
        return self.records.get(key_id, max_age)

    def stale_team(self, org: str, team: str, max_age: float) -> TeamRecord | None:
        return self.teams.get((org, team), max_age)

    def store_record(self, record: TokenRecord, epoch: int) -> None:
        if self.ttl > 0 and epoch == self.epoch:
            if record.metadata:  # (up to 4 KiB) never read on the request path: not kept here
                record = replace(record, metadata={})
            self.records.put(record.id, record)

    def store_team(self, team: TeamRecord, epoch: int) -> None:
        if self.ttl > 0 and epoch == self.epoch:
            self.teams.put((team.org, team.name), team)

    def store_proof(self, fingerprint: str, key_id: str, prefix: str = "") -> None:
        """`prefix`: the one the credential was parsed with and its record issued with
        ("": an imported key, or unknown: the hot path never takes it, gateway/principal.py)."""
        self.proofs.put(fingerprint, Proof(key_id, prefix))

    def store_failure(self, fingerprint: str) -> None:
        if self.negative_ttl > 0:
            self.failures.put(fingerprint, time.monotonic())

    def apply(self, change: Change) -> None:
        self.epoch += 1
        self.stats.invalidations += 1
        if change.kind == "token":
            self.records.pop(change.ident)
        elif change.kind == "team":
            org, _, team = change.ident.partition("/")
            self.teams.pop((org, team))
        elif change.kind == "legacy":  # a key was imported: look keys up, forget refusals
            self._legacy = None
            self.failures.clear()
        elif change.kind == "service_account":
            org, _, account_id = change.ident.partition("/")
            self.accounts.pop((org, account_id))
        else:
            self.clear()

    def clear(self) -> None:
        self.epoch += 1
        self.stats.clears += 1
        self.records.clear()
        self.teams.clear()
        self.accounts.clear()
        self.failures.clear()
        self._legacy = None


FAST_POLL_INTERVAL = 0.05  # seconds between change-log reads while the push channel is down
FIRST_SUBSCRIPTION_WAIT = 2.0  # seconds start() waits for the channel (records untrusted until then)


class ChangeListener:
    """Keeps a cache coherent: pub/sub push; while it is down, records untrusted and the
    change log read at once then polled fast; the cache cleared when the push is back."""

    def __init__(
        self,
        store: Store,
        cache: VerificationCache,
        poll_interval: float = 0.5,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.poll_interval = poll_interval
        self.push_connected = False
        cache.trusted = False  # until the first subscription is confirmed
        self._wake = asyncio.Event()  # set when the push channel drops: read the log now
        self._subscribed = asyncio.Event()
        self.last_id = "0-0"
        self.last_poll_ok = 0.0
        self._on_state = on_state
        self.lags: list[float] = []  # seconds from publish to apply, drained by the metrics
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        store.local_listeners.append(cache.apply)

    async def start(self) -> None:
        with contextlib.suppress(StoreUnavailable):
            self.last_id = await self.store.changelog_tail()
            self.last_poll_ok = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._push_loop(), name="tokenward-push"),
            asyncio.create_task(self._poll_loop(), name="tokenward-poll"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), FIRST_SUBSCRIPTION_WAIT)

    async def stop(self) -> None:
        # redis-py's pubsub.get_message can swallow a cancellation, so the loops also
        # watch a flag, and we never wait on them for more than a moment.
        self._stopping = True
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def _push_loop(self) -> None:
        backoff = 0.05
        while not self._stopping:
            try:
                # one server, the sentinels' current master, or one node of a cluster
                async with self.store.subscription() as pubsub:
                    # Subscribed (confirmed by the store): from here every change reaches
                    # us, and anything could have changed while we were not listening.
                    self.cache.clear()
                    self.cache.trusted = True
                    self._set_connected(True)
                    self._subscribed.set()
                    backoff = 0.05
                    while not self._stopping:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None and message.get("type") == "message":
                            self._apply(Change.decode(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of the link: note it, retry with backoff
                # A change published from now on may never reach us: stop trusting cached
                # records at once, and have the poll loop read the change log now.
                self.cache.trusted = False
                self._wake.set()
                if self.push_connected:
                    log.warning("push channel lost", error=type(exc).__name__)
                self._set_connected(False)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _apply(self, change: Change) -> None:
        self.cache.apply(change)
        if change.at and len(self.lags) < 10_000:
            self.lags.append(max(0.0, time.time() - change.at))

    def _set_connected(self, value: bool) -> None:
        if value != self.push_connected:
            self.push_connected = value
            if value:
                log.info("push channel connected")
            if self._on_state is not None:
                self._on_state(value)

    async def poll_once(self) -> None:
        last_id, changes, gap = await self.store.changes_since(self.last_id)
        if gap:
            self.cache.clear()
        for change in changes:
            self._apply(change)
        self.last_id = last_id
        self.last_poll_ok = time.monotonic()

    async def _poll_loop(self) -> None:
        failing = False
        while not self._stopping:
            interval = self.poll_interval if self.push_connected else FAST_POLL_INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                await self.poll_once()
                if failing:
                    self.cache.clear()  # changes may have been missed while the store was away
                    failing = False
            except StoreUnavailable:
                failing = True
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("change poll failed")
                failing = True
