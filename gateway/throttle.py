"""Who may spend argon2 time on an unproven secret, and in which order.

`FailureThrottle` budgets failed verifications per key id and for suspect callers as a whole;
`PriorityGate` lets verifications in by class (`CLEAN` before `CLEAN_LEGACY` before
`SUSPECT`), so a flood of guesses never queues ahead of a known-good caller. `Authenticator`
(gateway/decision.py) uses both and raises `Throttled` when the budget says no.
`LookupBudget` bounds the store reads of imported keys' lookups that find nothing (per client
and overall), which have no key id to charge.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import itertools
import time
from collections.abc import AsyncIterator

from tokenward.gateway.bounded import BoundedMap


class Throttled(Exception):
    """The failure throttle refused to verify a secret now (not a verdict on the token)."""


# Classes in the argon2 queue, served in this order (FIFO within a class).
CLEAN = 0  # no recent failure, and the record's secret check is keyed: nobody can craft for it
CLEAN_LEGACY = 1  # no recent failure, but a legacy (unkeyed) check: crafted secrets pass it
SUSPECT = 2  # a failed verification in the last `memory` seconds


class FailureThrottle:
    """Who may spend argon2 work on an unproven secret, and in which order.

    Failures are charged to the key id they were made against, never to everyone:
    - each key id has a bucket (burst 5, 1/s); once empty, that key id's unproven tokens
      are refused without verification ("invalid token", as always);
    - a key id with a failure in the last `memory` seconds is a *suspect*: suspects share a
      budget of `suspect_rate` verifications/s (burst `suspect_burst`), however many
      key ids a flood spreads over;
    - a key id with no recent failure never waits for that budget and is queued ahead of
      every suspect (`priority`); one of the argon2 slots is kept for key ids whose record
      has a keyed check (`Authenticator`), so a brand-new token or a new admin login waits
      at most for one verification in progress, however many other key ids are flooded.
    Wrong secrets that pass a keyed check are 1 in 65 536, whoever made them, so a flood
    reaches argon2 mostly through legacy records (crafted secrets, or no check at all):
    their first failure is unbudgeted (once per key id per `memory`, on one slot at most),
    every later one is a suspect's. A token whose secret was already proven never comes here.
    """

    def __init__(
        self,
        per_key_burst: float = 5,
        per_key_rate: float = 1.0,
        suspect_burst: float = 16,
        suspect_rate: float = 4.0,
        memory: float = 600.0,
        max_keys: int = 100_000,
    ) -> None:
        self.per_key = (per_key_burst, per_key_rate)
        self.suspects = (suspect_burst, suspect_rate)
        self.memory = memory
        # key id -> (bucket level, level's time, time of the last failure); the key ids least
        # recently failed or asked about go first when more than `max_keys` are remembered
        self._keys: BoundedMap[str, tuple[float, float, float]] = BoundedMap(max_keys)
        self._budget = (suspect_burst, time.monotonic())
        self.max_keys = max_keys
        self.refused = 0

    @staticmethod
    def _level(level: float, at: float, burst: float, rate: float, now: float) -> float:
        return min(burst, level + (now - at) * rate)

    def suspect(self, key_id: str, now: float | None = None) -> bool:
        state = self._keys.get(key_id)
        return state is not None and (now or time.monotonic()) - state[2] < self.memory

    def priority(self, key_id: str, keyed_check: bool) -> int:
        if self.suspect(key_id):
            return SUSPECT
        return CLEAN if keyed_check else CLEAN_LEGACY

    def allows(self, key_id: str, *, take: bool = True) -> bool:
        """May one verification for `key_id` run now? Takes a unit of the suspects' budget
        when `key_id` is a suspect (unless `take` is false: only asking, before queueing)."""
        now = time.monotonic()
        state = self._keys.get(key_id)
        if state is None or now - state[2] >= self.memory:
            return True
        k_burst, k_rate = self.per_key
        s_burst, s_rate = self.suspects
        budget = self._level(*self._budget, s_burst, s_rate, now)
        if self._level(state[0], state[1], k_burst, k_rate, now) < 1 or budget < 1:
            self.refused += 1
            return False
        if take:
            self._budget = (budget - 1, now)
        return True

    def failed(self, key_id: str) -> None:
        now = time.monotonic()
        k_burst, k_rate = self.per_key
        level, at, _ = self._keys.get(key_id) or (k_burst, now, now)
        self._keys.put(key_id, (self._level(level, at, k_burst, k_rate, now) - 1, now, now))


class PriorityGate:
    """`slots` holders at once, let in by (priority, arrival), lowest first. Priorities
    above `reserved_for` hold at most `slots - reserved` of them (at least one), so that
    `reserved` slots are always free soon for the best-placed callers."""

    def __init__(self, slots: int, reserved: int = 0, reserved_for: int = 0) -> None:
        self.slots = slots
        self._low_limit = max(1, slots - reserved)
        self._reserved_for = reserved_for
        self._busy = 0
        self._low_busy = 0
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._arrivals), turn))
        self._dispatch()
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release(priority)  # our turn came as we were cancelled: pass it on
            raise
        try:
            yield
        finally:
            self._release(priority)

    def _dispatch(self) -> None:
        # The head is the best-placed waiter: if it may not start, no one behind it may.
        while self._waiting:
            priority, _, turn = self._waiting[0]
            if turn.done():  # cancelled while waiting
                heapq.heappop(self._waiting)
                continue
            low = priority > self._reserved_for
            if self._busy >= self.slots or (low and self._low_busy >= self._low_limit):
                return
            heapq.heappop(self._waiting)
            self._busy += 1
            self._low_busy += low
            turn.set_result(None)

    def _release(self, priority: int) -> None:
        self._busy -= 1
        self._low_busy -= priority > self._reserved_for
        self._dispatch()


# Imports of old keys (admin/imports.py), charged to the calling token, every attempt: an
# import answers whether the key is held already, in any org (409), so unbudgeted it would be
# a guessing oracle at the admin API's speed. (per token: burst, per second; everyone's.)
IMPORT_BUDGET = ((10.0, 0.2), (100.0, 2.0))


class LookupBudget:
    """Lookups of credentials that are not in our format (imported keys, gateway/legacy_keys.py)
    that found nothing. Such a credential names no key id, so `FailureThrottle` has nothing to
    charge; without a budget every new garbage string would cost a store read, and online
    guessing of imported keys would run at the store's speed.

    Each lookup takes a unit from its client's bucket (`per_client`: burst, refill per second;
    an IPv6 client by its /64) and from one bucket for all clients (`overall`) before the store
    is read; a lookup that finds a key gives both back, so only misses are charged. While
    either bucket is empty, lookups are refused without a store read (the caller answers 401,
    as for an unknown key) and counted in `refused`. Keys proven recently are answered from the
    verification cache and never come here, so a flood delays only keys no process has seen
    lately, and one client's flood only its own until it joins a flood from many."""

    def __init__(
        self,
        per_client: tuple[float, float] = (20, 2.0),
        overall: tuple[float, float] = (200, 50.0),
        max_clients: int = 10_000,
    ) -> None:
        self.per_client = per_client
        self.overall = overall
        self._clients: BoundedMap[str, tuple[float, float]] = BoundedMap(max_clients)
        self._all = (overall[0], time.monotonic())
        self.refused = 0

    @classmethod
    def for_imports(cls) -> LookupBudget:
        """The budget of imports, charged to the calling token's id (IMPORT_BUDGET)."""
        return cls(*IMPORT_BUDGET)

    @staticmethod
    def client_key(client: str | None) -> str:
        if client is None:
            return ""
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return client
        if address.version == 6:
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        return str(address)

    def take(self, client: str | None) -> bool:
        """Reserve a lookup for `client` (an address; None: not known); False (and counted)
        when its bucket or everyone's is empty."""
        now = time.monotonic()
        key = self.client_key(client)
        c_burst, c_rate = self.per_client
        a_burst, a_rate = self.overall
        level, at = self._clients.get(key) or (c_burst, now)
        mine = FailureThrottle._level(level, at, c_burst, c_rate, now)
        everyone = FailureThrottle._level(*self._all, a_burst, a_rate, now)
        if mine < 1 or everyone < 1:
            self.refused += 1
            return False
        self._clients.put(key, (mine - 1, now))
        self._all = (everyone - 1, now)
        return True

    def found(self, client: str | None) -> None:
        """The reserved lookup found a key: give its units back."""
        now = time.monotonic()
        key = self.client_key(client)
        c_burst, c_rate = self.per_client
        a_burst, a_rate = self.overall
        level, at = self._clients.get(key) or (c_burst, now)
        self._clients.put(key, (min(c_burst, FailureThrottle._level(level, at, c_burst, c_rate, now) + 1), now))
        self._all = (min(a_burst, FailureThrottle._level(*self._all, a_burst, a_rate, now) + 1), now)
