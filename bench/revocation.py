"""Revocation propagation: from the revoke call's HTTP response to the gateway's first 401.

Each trial revokes a warm (cached) token through an admin API, then polls the gateway
with it back to back until the first 401; the token is then restored and is seen to work
again before its next turn, so no trial pays for an argon2 verification.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

TRIAL_DEADLINE = 5.0  # the contract says 1 s even without the push channel
CONSECUTIVE = 24  # "every worker": this many answers in a row on fresh connections


class AdminClient:
    """Issue, revoke, restore and delete tokens through a tokenward admin API."""

    def __init__(self, session: aiohttp.ClientSession, admin_url: str, admin_token: str) -> None:
        self.session = session
        self.admin_url = admin_url
        self.headers = {"Authorization": f"Bearer {admin_token}"}

    async def _call(
        self, method: str, path: str, expected: int, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        url = f"{self.admin_url}/v1{path}"
        async with self.session.request(method, url, headers=self.headers, json=body) as response:
            raw = await response.read()
            if response.status != expected:
                raise RuntimeError(f"{method} {path} returned {response.status}")
        return dict(orjson.loads(raw)) if raw else {}

    async def create(self, org: str, team: str, name: str, scopes: list[str]) -> tuple[str, str]:
        """A new token: (plaintext, id)."""
        body = {"name": name, "scopes": scopes}
        created = await self._call("POST", f"/orgs/{org}/teams/{team}/tokens", 201, body)
        return str(created["token"]), str(created["id"])

    async def revoke(self, org: str, team: str, token_id: str) -> None:
        await self._call("POST", f"/orgs/{org}/teams/{team}/tokens/{token_id}/revoke", 200)

    async def restore(self, org: str, team: str, token_id: str) -> None:
        await self._call("POST", f"/orgs/{org}/teams/{team}/tokens/{token_id}/restore", 200)

    async def delete(self, org: str, team: str, token_id: str) -> None:
        await self._call("DELETE", f"/orgs/{org}/teams/{team}/tokens/{token_id}", 204)


@dataclass(frozen=True)
class Subject:
    """The token whose revocation is timed, and where it is used."""

    org: str
    team: str
    token_id: str
    token: str
    gateway_url: str  # full URL of a route the token may call


async def status_of(session: aiohttp.ClientSession, subject: Subject) -> int:
    headers = {"Authorization": f"Bearer {subject.token}"}
    async with session.get(subject.gateway_url, headers=headers) as response:
        await response.read()
        return response.status


async def wait_for_status(session: aiohttp.ClientSession, subject: Subject, wanted: int) -> float:
    """Poll back to back; the monotonic time at which the first `wanted` status arrived."""
    deadline = time.perf_counter() + TRIAL_DEADLINE
    while time.perf_counter() < deadline:
        if await status_of(session, subject) == wanted:
            return time.perf_counter()
    raise TimeoutError(f"no {wanted} within {TRIAL_DEADLINE}s")


async def wait_every_worker(
    session: aiohttp.ClientSession, subject: Subject, wanted: int
) -> tuple[float, float]:
    """With a fresh connection per request (so SO_REUSEPORT spreads them over the workers):
    the time of the first `wanted` status, and of the first one after the last other status,
    once `CONSECUTIVE` requests in a row got `wanted`."""
    deadline = time.perf_counter() + TRIAL_DEADLINE
    first: float | None = None
    settled: float | None = None
    streak = 0
    while streak < CONSECUTIVE:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"not {wanted} on every worker within {TRIAL_DEADLINE}s")
        status = await status_of(session, subject)
        now = time.perf_counter()
        if status == wanted:
            first = first or now
            settled = settled or now
            streak += 1
        else:
            settled, streak = None, 0
    assert first is not None and settled is not None
    return first, settled


async def served(session: aiohttp.ClientSession, subject: Subject, every_worker: bool) -> None:
    """Until the gateway (every worker of it) accepts the token: it may just have been restored."""
    if every_worker:
        await wait_every_worker(session, subject, 200)
    else:
        await wait_for_status(session, subject, 200)


async def one_trial(
    session: aiohttp.ClientSession, admin: AdminClient, subject: Subject, every_worker: bool, jitter: float
) -> list[float]:
    """Seconds from the revoke response to the first 401 (and to 401 on every worker)."""
    await served(session, subject, every_worker)
    await asyncio.sleep(random.uniform(0, jitter))  # noqa: S311 - decorrelate from poll timers
    await admin.revoke(subject.org, subject.team, subject.token_id)
    revoked = time.perf_counter()
    try:
        if every_worker:
            first, settled = await wait_every_worker(session, subject, 401)
            return [first - revoked, settled - revoked]
        return [await wait_for_status(session, subject, 401) - revoked]
    finally:
        # seen again before this token's next turn, while the other subjects take theirs
        await admin.restore(subject.org, subject.team, subject.token_id)


def summarize(samples: list[float], failures: int) -> dict[str, Any]:
    if not samples:
        return {"trials": failures, "failures": failures}
    ordered = sorted(samples)
    p99_index = min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    return {
        "trials": len(samples) + failures,
        "failures": failures,
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[p99_index] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def measure(
    admin: AdminClient, subjects: list[Subject], trials: int, jitter: float, every_worker: bool = False
) -> list[dict[str, Any]]:
    """Summaries of `trials` revocations: first 401 (and, with `every_worker`, all workers).

    The subjects take turns, so a restored token has time to be served again before its
    next trial. Each trial starts after a random pause of up to `jitter` seconds, so that
    trials do not fall into step with the gateway's own timers (the 0.5 s change-log poll)."""
    connector = aiohttp.TCPConnector(force_close=every_worker, limit=1)
    series: list[list[float]] = [[], []] if every_worker else [[]]
    failures = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        for subject in subjects:  # every worker verifies each token once (argon2) before timing
            await served(session, subject, every_worker)
        for trial in range(trials):
            subject = subjects[trial % len(subjects)]
            try:
                times = await one_trial(session, admin, subject, every_worker, jitter)
            except TimeoutError:
                failures += 1
                continue
            for bucket, value in zip(series, times, strict=True):
                bucket.append(value)
    return [summarize(samples, failures) for samples in series]
