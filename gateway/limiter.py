"""Decision step `rate_limit`: the limits a request meets and the token's credit budget.

After the token is authorized (scope), a request meets the limits of its token, of its team,
of its service account, and its route's defaults (per token). `Limiter.check` answers:

- exact mode: one SPEND script call (gateway/store_limits.py): every limit and the budget
  checked and spent together on the store, the same for every worker and gateway;
- local mode: per-process counters (the same GCRA, on this process's clock), synced to the
  store every `sync_interval` in the background (each sync sends what this process spent and
  takes back what everyone did); a token's budget is taken from the store `credit_lease`
  uses at a time (atomically: never over-spent), and given back when idle or at shutdown.

Refused: 429 `rate_limited` at step `rate_limit`, with Retry-After and the RateLimit-Policy /
RateLimit headers. Store down: `on_store_error: open` keeps deciding on local counters,
`closed` answers 503; a credit budget is never spent without the store (503 either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from tokenward.gateway.cache import VerificationCache
from tokenward.gateway.limit_config import RateLimitSettings
from tokenward.gateway.limits import Credits, RateLimit, Verdict
from tokenward.gateway.records import AccountRecord, TeamRecord, TokenRecord
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.routes import Route
from tokenward.gateway.store_limits import LimitStore, Spent, limit_key, route_holder
from tokenward.gateway.store_link import StoreUnavailable, pool_exhausted

log = structlog.get_logger("tokenward")

MAX_COUNTERS = 100_000  # local mode: counters held at once (idle ones are dropped first)
SYNC_CONCURRENCY = 64
HOLDER_MAX_AGE = 3600.0  # store down: a team or account record read this long ago still lends its limits
JUST_READ = 1.0  # seconds: a record read this recently is the one authentication just used
LEASE_IDLE_SYNCS = 10  # local mode: a lease unused for this many syncs goes back to the store


class RateLimited(Refusal):
    """A 429 with the rate-limit headers."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(429, "rate_limited", Step.RATE_LIMIT, verdict.message())
        self.headers = verdict.headers()


def limits_unavailable() -> Refusal:
    return Refusal(503, "store_unavailable", Step.RATE_LIMIT, "rate limit store unavailable; retry shortly")


@dataclass(frozen=True, slots=True)
class Holders:
    """The limits a principal carries besides its token's: its team's and its service account's."""

    team: tuple[RateLimit, ...] = ()
    account: tuple[RateLimit, ...] = ()
    account_id: str | None = None


NO_HOLDERS = Holders()


@dataclass(slots=True)
class _Counter:
    org: str
    limit: RateLimit
    interval: float  # seconds per request
    period: float
    tat: float = 0.0  # theoretical arrival time (time.time() seconds)
    pending: int = 0  # spent here, not yet synced


@dataclass(slots=True)
class _Lease:
    held: int
    left: int  # the store's count after the lease was taken
    period: int
    low: int  # when this many are left, the next lease is asked for
    idle: int = 0


@dataclass(slots=True)
class Limiter:
    store: LimitStore
    settings: RateLimitSettings
    _counters: dict[str, _Counter] = field(default_factory=dict)
    _leases: dict[str, tuple[_Lease, str]] = field(default_factory=dict)  # token id -> (lease, org)
    _periods: dict[RateLimit, tuple[float, float]] = field(default_factory=dict)
    _leasing: dict[str, asyncio.Task[Spent]] = field(default_factory=dict)  # token id -> its lease call
    _task: asyncio.Task[None] | None = None
    store_ok: bool = True
    cache: VerificationCache | None = None  # team and account records (their limits), as authenticated
    syncs: int = 0
    refused: int = 0

    def holders_of(self, token: TokenRecord) -> Holders | None:
        """The limits of the token's team and service account, from the records its
        authentication just read (the verification cache; set with the admin API); None
        when the cache cannot say (not trusted now, say): then `read_holders`."""
        cache = self.cache
        if cache is None:
            return NO_HOLDERS
        team = account = None
        # the copy authentication used: the cache's, or one it read from the store just now
        if token.team is not None:
            team = cache.team(token.org, token.team) or cache.stale_team(token.org, token.team, JUST_READ)
            if team is None:
                return None
        if token.service_account_id is not None:
            account_id = token.service_account_id
            account = cache.account(token.org, account_id) or cache.stale_account(token.org, account_id, JUST_READ)
            if account is None:
                return None
        return _holders(token, team, account)

    async def read_holders(self, token: TokenRecord) -> Holders:
        """`holders_of` from the store (a cached copy only while the store is down)."""
        team = account = None
        try:
            if token.team is not None:
                team = await self.store.get_team(token.org, token.team)  # type: ignore[attr-defined]
            if token.service_account_id is not None:
                account = await self.store.get_account(token.org, token.service_account_id)  # type: ignore[attr-defined]
        except StoreUnavailable:
            if self.cache is not None and token.team is not None:
                team = self.cache.stale_team(token.org, token.team, HOLDER_MAX_AGE)
            if self.cache is not None and token.service_account_id is not None:
                account = self.cache.stale_account(token.org, token.service_account_id, HOLDER_MAX_AGE)
        return _holders(token, team, account)

    @staticmethod
    def applies(route: Route, token: TokenRecord, holders: Holders) -> bool:
        return bool(route.rate_limits or token.rate_limits or token.max_uses is not None or holders.team or holders.account)

    def plan(self, route: Route, token: TokenRecord, holders: Holders) -> list[tuple[str, RateLimit]]:
        org = token.org
        owner = limit_owner(token)
        items = [(limit_key(org, f"tok:{owner}", limit.name), limit) for limit in token.rate_limits]
        if route.rate_limits:
            holder = route_holder(route.label, owner)
            items += [(limit_key(org, holder, limit.name), limit) for limit in route.rate_limits]
        if holders.team and token.team is not None:
            items += [(limit_key(org, f"team:{token.team}", limit.name), limit) for limit in holders.team]
        if holders.account and holders.account_id is not None:
            items += [(limit_key(org, f"acct:{holders.account_id}", limit.name), limit) for limit in holders.account]
        return items

    async def check(
        self, route: Route, token: TokenRecord, holders: Holders = NO_HOLDERS, cost: int = 1
    ) -> Verdict:
        """Spend this request's limits and budget, `cost` of each (an MCP batch of n tool calls
        costs n), all or nothing; RateLimited (429) or a 503 Refusal."""
        items = self.plan(route, token, holders)
        credits = Credits(token.max_uses, token.refill, token.created_at) if token.max_uses is not None else None
        if self.settings.mode == "exact":
            try:
                spent = await self.store.spend(
                    token.org, [k for k, _ in items], [limit for _, limit in items], credits=credits, key_id=token.id,
                    cost=cost, want=cost,
                )  # fmt: skip
            except StoreUnavailable as exc:
                # fail open (local counters) only on an outage, never on this process's own
                # pool running dry under a burst: a client could cause that at will
                if self.settings.on_store_error == "closed" or credits is not None or pool_exhausted(exc):
                    raise limits_unavailable() from None
                verdict = self._local(items, commit=True, sync=False, cost=cost)
            else:
                verdict = _verdict(spent, [limit for _, limit in items])
        else:
            if self.settings.on_store_error == "closed" and not self.store_ok:
                raise limits_unavailable()
            self._start()
            verdict = self._local(items, commit=True, sync=True, cost=cost)
            if verdict.allowed and credits is not None:
                try:
                    left = await self._take_credits(token, credits, cost)
                except Refusal:
                    self._refund(items, cost)  # refused for the budget: this request spent no limit
                    raise
                verdict = Verdict(True, verdict.limits, verdict.remaining, verdict.reset, 0.0, None, left)
        if not verdict.allowed:
            self.refused += 1
            raise RateLimited(verdict)
        return verdict

    # -- local counters --------------------------------------------------------------------------
    def _period(self, limit: RateLimit) -> tuple[float, float]:
        found = self._periods.get(limit)
        if found is None:
            period = limit.seconds
            found = self._periods[limit] = (period / limit.limit, period)
        return found

    def _local(
        self, items: Sequence[tuple[str, RateLimit]], *, commit: bool, sync: bool, cost: int = 1
    ) -> Verdict:
        now = time.time()
        remaining, reset, retry, denied = [], [], 0.0, None
        counters = []
        for key, limit in items:
            counter = self._counters.get(key)
            if counter is None:
                interval, period = self._period(limit)
                counter = _Counter(self._org_of(key), limit, interval, period)
                if commit:
                    if len(self._counters) >= MAX_COUNTERS:
                        self._drop_idle(now)
                    self._counters[key] = counter
            tat = max(counter.tat, now)
            new = tat + counter.interval * cost
            wait = new - counter.period - now
            if wait > 0:
                denied = denied or limit
                retry = max(retry, wait)
                remaining.append(0)
                reset.append(tat - now)
            else:
                remaining.append(max(0, math.floor((counter.period - (new - now)) / counter.interval)))
                reset.append(new - now)
            counters.append((counter, new))
        if denied is None and commit:
            for counter, new in counters:
                counter.tat = new
                if sync:
                    counter.pending += cost
        limits = [limit for _, limit in items]
        return Verdict(denied is None, limits, remaining, reset, retry, denied, None)

    def _refund(self, items: Sequence[tuple[str, RateLimit]], cost: int = 1) -> None:
        for key, _ in items:
            counter = self._counters.get(key)
            if counter is not None and counter.pending >= cost:
                counter.tat -= counter.interval * cost
                counter.pending -= cost

    async def _take_credits(self, token: TokenRecord, credits: Credits, cost: int) -> int:
        """`cost` uses of the budget, all or none: those taken are given back to this
        process's lease when one is refused."""
        taken = 0
        try:
            left = 0
            for _ in range(cost):
                left = await self._take_credit(token, credits)
                taken += 1
            return left
        except Refusal:
            found = self._leases.get(token.id)
            if taken and found is not None:
                found[0].held += taken
            raise

    @staticmethod
    def _org_of(key: str) -> str:
        return key[key.index("{") + 1 : key.index("}")]

    def _drop_idle(self, now: float) -> None:
        for key in [k for k, c in self._counters.items() if c.tat < now and not c.pending]:
            del self._counters[key]

    async def _take_credit(self, token: TokenRecord, credits: Credits) -> int:
        """One use of the token's budget, from this process's lease. The next lease is asked
        for ahead, when a quarter of this one is left, so that a steady caller never waits
        for the store; a request that finds none held waits for the one in flight (all
        concurrent ones wait for the same)."""
        while True:
            found = self._leases.get(token.id)
            if found is not None and credits.refill is not None:
                period = math.floor((time.time() - credits.anchor) / credits.refill.seconds)
                if found[0].period != period:
                    # uses leased in a period that has ended: never spent in this one (the
                    # store refilled it; spending them too would over-spend, review of issue 16)
                    del self._leases[token.id]
                    found = None
            if found is not None and found[0].held > 0:
                lease = found[0]
                lease.held -= 1
                lease.idle = 0
                if lease.held <= lease.low and token.id not in self._leasing:
                    self._leasing_task(token, credits)  # ahead of need, in the background
                return lease.left + lease.held
            spent = await asyncio.shield(self._leasing.get(token.id) or self._leasing_task(token, credits))
            if not spent.allowed:
                raise RateLimited(_verdict(spent, []))

    def _leasing_task(self, token: TokenRecord, credits: Credits) -> asyncio.Task[Spent]:
        task = asyncio.ensure_future(self._lease(token, credits))
        self._leasing[token.id] = task

        def done(finished: asyncio.Task[Spent]) -> None:
            self._leasing.pop(token.id, None)
            if not finished.cancelled():
                finished.exception()  # retrieved, even when nobody waited for it

        task.add_done_callback(done)
        return task

    async def _lease(self, token: TokenRecord, credits: Credits) -> Spent:
        try:
            spent = await self.store.spend(
                token.org, [], [], credits=credits, key_id=token.id, want=self.settings.credit_lease, up_to=True
            )
        except StoreUnavailable:
            raise limits_unavailable() from None
        if spent.allowed:
            period = math.floor((time.time() - credits.anchor) / credits.refill.seconds) if credits.refill else 0
            left = spent.credits_left or 0
            found = self._leases.get(token.id)
            if found is not None and found[0].period == period:
                found[0].held += spent.credits_granted
                found[0].left = left
                found[0].low = spent.credits_granted // 4
            else:
                self._leases[token.id] = (_Lease(spent.credits_granted, left, period, spent.credits_granted // 4), token.org)
        return spent

    # -- the background sync (local mode) --------------------------------------------------------
    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sync_interval)
            try:
                await self.sync()
            except Exception:  # never let the loop die: the next tick tries again
                log.exception("rate limit sync failed")

    async def sync(self) -> None:
        """Send each counter's spend since the last sync, and take everyone's back."""
        now = time.time()
        work = []
        for key, counter in list(self._counters.items()):
            if counter.pending or counter.tat > now:
                work.append((key, counter, counter.pending))
            else:
                del self._counters[key]  # idle: its quota is whole again
        ok = True
        for start in range(0, len(work), SYNC_CONCURRENCY):
            batch = work[start : start + SYNC_CONCURRENCY]
            results = await asyncio.gather(
                *(self.store.spend(c.org, [k], [c.limit], cost=n, force=True) for k, c, n in batch),
                return_exceptions=True,
            )
            for (_, counter, sent), result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    ok = False
                    continue
                counter.pending -= sent
                counter.tat = max(counter.tat, time.time() + result.reset[0])
        self.store_ok = ok
        self.syncs += 1
        await self._return_idle_leases()

    async def _return_idle_leases(self, every: bool = False) -> None:
        for token_id, (lease, org) in list(self._leases.items()):
            lease.idle += 1
            if lease.held <= 0:
                del self._leases[token_id]
            elif every or lease.idle >= LEASE_IDLE_SYNCS:
                held, lease.held = lease.held, 0
                del self._leases[token_id]
                with contextlib.suppress(StoreUnavailable):
                    await self.store.return_credits(org, token_id, held, lease.period)

    async def close(self) -> None:
        """Stop syncing; send the last spend and give back unused credits."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            with contextlib.suppress(Exception):
                await self.sync()
        with contextlib.suppress(Exception):
            await self._return_idle_leases(every=True)


def limit_owner(token: TokenRecord) -> str:
    """Whose buckets a token's own and per-token route limits count in: its own, or for a
    child token (which carries its parent's limits) its root ancestor's, so that no number of
    descendants gets more than the token they came from."""
    return token.ancestors[0] if token.ancestors else token.id


def _holders(token: TokenRecord, team: TeamRecord | None, account: AccountRecord | None) -> Holders:
    team_limits = team.rate_limits if team is not None else ()
    account_limits = account.rate_limits if account is not None else ()
    if not team_limits and not account_limits:
        return NO_HOLDERS
    return Holders(team_limits, account_limits, token.service_account_id)


def _verdict(spent: Spent, limits: Sequence[RateLimit]) -> Verdict:
    denied = limits[spent.denied - 1] if spent.denied > 0 else None
    return Verdict(
        allowed=spent.allowed,
        limits=limits,
        remaining=spent.remaining,
        reset=spent.reset,
        retry_after=spent.retry_after,
        denied=denied,
        credits_left=spent.credits_left,
        credits_spent=spent.denied == -1,
    )
