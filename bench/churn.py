"""Token churn through the admin API, once a second, while load runs.

Every tick creates a token (`POST …/tokens`, one argon2 hash) and uses it once at the
gateway (one argon2 verification; it must get 200, and is cached from then on). Once
`POOL` churn tokens are live, the tick also revokes the oldest one (still cached) and polls
the gateway until it refuses it; a token revoked a second or more ago is asked once more,
must get 401 again, and is deleted, so the store holds a constant number of churn tokens.

Ticks start on a fixed one-second schedule whether or not the previous one has finished
(a loaded gateway answers slowly), with at most `MAX_IN_FLIGHT` of them at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from revocation import TRIAL_DEADLINE, AdminClient, Subject, status_of, wait_for_status
from services import say
from stack import ORG, TEAM

POOL = 3  # live churn tokens; each is revoked about POOL seconds after its first use
REVOCATION_BOUND = 1.0  # the contract: a revoked token is refused everywhere within 1 s
MAX_IN_FLIGHT = 4  # ticks at once; a tick due while this many run is skipped (and counted)
SHOWN_ERRORS = 10  # the first few error messages go to stderr as they happen


@dataclass
class ChurnCounts:
    ticks: int = 0  # ticks completed
    created: int = 0
    revoked: int = 0
    deleted: int = 0
    errors: int = 0  # an admin call that failed, a new token that was not accepted
    revoked_served: int = 0  # critical: a revoked token got 200 after REVOCATION_BOUND
    skipped: int = 0  # ticks not started: MAX_IN_FLIGHT were still running
    revoke_lags_s: list[float] = field(default_factory=list)  # revoke response -> first 401

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        lags = data.pop("revoke_lags_s")
        data["revoke_lag_max_ms"] = round(max(lags) * 1000, 1) if lags else None
        return data


class Churn:
    """`run()` ticks once a second until cancelled; `take()` returns the counts since the last take."""

    def __init__(self, admin: AdminClient, session: aiohttp.ClientSession, gateway_url: str) -> None:
        self.admin = admin
        self.session = session
        self.gateway_url = gateway_url  # full URL of the route the churn tokens may call
        self.counts = ChurnCounts()
        self.error_messages: list[str] = []
        self.live: deque[Subject] = deque()
        self.revoked: deque[tuple[float, Subject]] = deque()  # (when, token), oldest first
        self.hashing = 0  # ticks creating or first using a token: argon2 (64 MiB each) may run
        self.no_argon2 = asyncio.Event()  # set while hashing == 0
        self.no_argon2.set()

    def take(self) -> ChurnCounts:
        counts, self.counts = self.counts, ChurnCounts()
        return counts

    def error(self, message: str, critical: bool = False) -> None:
        if critical:
            self.counts.revoked_served += 1
        else:
            self.counts.errors += 1
        self.error_messages.append(message)
        if len(self.error_messages) <= SHOWN_ERRORS:
            say(f"churn {'CRITICAL' if critical else 'error'}: {message}")

    async def run(self) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        number = 0
        next_tick = time.monotonic()
        try:
            while True:
                if len(in_flight) < MAX_IN_FLIGHT:
                    task = asyncio.create_task(self.tick(number), name=f"soak-churn-{number}")
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                else:
                    self.counts.skipped += 1
                number += 1
                next_tick += 1.0
                await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def tick(self, number: int) -> None:
        try:
            await self.new_token(number)
            if len(self.live) > POOL:
                await self.revoke(self.live.popleft())
            now = time.perf_counter()
            while self.revoked and self.revoked[0][0] <= now - REVOCATION_BOUND:
                await self.probe_and_delete(self.revoked.popleft()[1])
            self.counts.ticks += 1
        except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
            self.error(f"tick {number}: {exc!r}")

    async def new_token(self, number: int) -> None:
        self.hashing += 1
        self.no_argon2.clear()
        try:
            token, token_id = await self.admin.create(ORG, TEAM, f"soak-churn-{number}", ["read:apis"])
            self.counts.created += 1
            subject = Subject(ORG, TEAM, token_id, token, self.gateway_url)
            status = await status_of(self.session, subject)
        finally:
            self.hashing -= 1
            if self.hashing == 0:
                self.no_argon2.set()
        self.live.append(subject)
        if status != 200:
            self.error(f"new token {token_id} got {status}, expected 200")

    async def revoke(self, subject: Subject) -> None:
        await self.admin.revoke(subject.org, subject.team, subject.token_id)
        revoked = time.perf_counter()
        self.counts.revoked += 1
        self.revoked.append((revoked, subject))
        try:
            lag = await wait_for_status(self.session, subject, 401) - revoked
        except TimeoutError:
            lag = TRIAL_DEADLINE
        self.counts.revoke_lags_s.append(lag)
        if lag > REVOCATION_BOUND:
            self.error(f"revoked token {subject.token_id} still served {lag:.2f}s later", critical=True)

    async def probe_and_delete(self, subject: Subject) -> None:
        status = await status_of(self.session, subject)
        if status != 401:
            critical = status == 200
            self.error(
                f"token {subject.token_id}, revoked over a second ago, got {status}", critical=critical
            )
        await self.admin.delete(subject.org, subject.team, subject.token_id)
        self.counts.deleted += 1
