"""Key-id enumeration by timing, and lockout by a flood of crafted wrong secrets, measured
against the real `tokenward serve` (issue 10, items 15 and 16). See bench/README.md.

    .venv/bin/python bench/timing_oracle.py [--samples 4000]
        latency of a wrong secret for a known key id (a token in active use) and of an
        unknown key id, interleaved on one keep-alive connection; percentiles side by side
    .venv/bin/python bench/timing_oracle.py --flood [--duration 20] [--key-ids 400] [--unchecked-ids 100]
        wrk floods wrong secrets crafted to pass the legacy 16-bit check, across many key ids
        of tokens issued before the keyed check; meanwhile a new org admin logs in, mints a
        token through the admin API, and that token makes its first request

tokenward serve and Valkey run on core 0, the client (this process, wrk) on core 1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from tokenward.gateway.records import TokenRecord
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.tokens import BASE62, KEY_ID_LEN, checksum
from tokenward.service import issue_token

from loadgen import Load, LoadGenerator, LoadResult, ensure_wrk
from observe import tokenward_counters
from services import CLIENT_CORE, Processes, run_main, say
from stack import (
    ORG,
    PREFIX,
    ROUTE_PATH,
    TEAM,
    Stack,
    seed,
    start_inproc_gateway,
    start_tokenward,
    start_upstream,
    start_valkey,
    write_tokens,
    wrong_secret,
)

ARGON2 = "tokenward_argon2_verifications_total"
THROTTLED = "tokenward_throttled_attempts_total"
PERCENTILES = (10, 50, 90, 99)


def percentile(sorted_values: list[float], p: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def p_faster(a: list[float], b: list[float]) -> float:
    """P(a sample of `a` < a sample of `b`), ties count half (the Mann-Whitney AUC): 0.5
    means a threshold on latency tells the two apart no better than a coin."""
    ranked = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    rank_sum_a, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mean_rank = (i + j + 1) / 2  # ranks i+1 .. j
        rank_sum_a += mean_rank * sum(1 for k in range(i, j) if ranked[k][1] == 0)
        i = j
    u_a = rank_sum_a - len(a) * (len(a) + 1) / 2
    return 1 - u_a / (len(a) * len(b))


def random_key_id() -> str:
    return "".join(secrets.choice(BASE62) for _ in range(KEY_ID_LEN))


# -- timing ------------------------------------------------------------------------------------
async def timing(stack: Stack, samples: int, warmup: int) -> None:
    url = stack.tokenward_url + ROUTE_PATH
    legit, legit_id = stack.creds.legit, stack.creds.legit_id
    lines: dict[str, list[float]] = {"known": [], "unknown": []}
    connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection, like one prober
    async with aiohttp.ClientSession(connector=connector) as session:

        async def probe(token: str) -> tuple[int, float]:
            started = time.perf_counter_ns()
            async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
                await response.read()
            return response.status, (time.perf_counter_ns() - started) / 1e6

        for _ in range(5):
            assert (await probe(legit))[0] == 200
        say(f"timing: {warmup} discarded + {samples} samples per line, interleaved in random order")
        for i in range(warmup + samples):
            if i % 100 == 0:
                await probe(legit)  # the token stays in use (its record in the cache)
            pair = [("known", wrong_secret(legit_id)), ("unknown", wrong_secret(random_key_id()))]
            random.shuffle(pair)
            for kind, token in pair:
                status, ms = await probe(token)
                if status != 401:
                    raise RuntimeError(f"{kind} probe answered {status}, not 401")
                if i >= warmup:
                    lines[kind].append(ms)
    known, unknown = sorted(lines["known"]), sorted(lines["unknown"])
    header = f"{'ms':<28}" + "".join(f"{'p' + str(p):>8}" for p in PERCENTILES) + f"{'mean':>8}"
    print(f"key id probes against tokenward serve, {samples} samples each, interleaved")
    print(header)
    for label, values in (("known id, wrong secret", known), ("unknown id", unknown)):
        row = "".join(f"{percentile(values, p):8.3f}" for p in PERCENTILES)
        print(f"{label:<28}{row}{sum(values) / len(values):8.3f}")
    diff = "".join(f"{percentile(unknown, p) - percentile(known, p):+8.3f}" for p in PERCENTILES)
    print(f"{'unknown - known':<28}{diff}{sum(unknown) / len(unknown) - sum(known) / len(known):+8.3f}")
    print(f"P(known probe faster than unknown probe) = {p_faster(known, unknown):.3f} (0.5: indistinguishable)")


# -- flood -------------------------------------------------------------------------------------
def legacy_check(key_id: str, secret: str) -> str:
    """The secret check as tokenward computed it before it was keyed: anyone can compute it."""
    return hashlib.sha256(f"{key_id}:{secret}".encode()).hexdigest()[:4]


def colliding_secrets(key_id: str) -> tuple[str, str]:
    """A real secret and a crafted wrong one with the same legacy check (~320 hashes)."""
    seen: dict[str, str] = {}
    i = 0
    while True:
        secret = f"{i:032d}"
        check = legacy_check(key_id, secret)
        if check in seen:
            return seen[check], secret
        seen[check] = secret
        i += 1


async def legacy_tokens(stack: Stack, crafted_ids: int, unchecked_ids: int, unchecked_tokens: int) -> list[str]:
    """Records as tokenward stored them before the keyed check, written straight into the
    store: `crafted_ids` with a legacy check (one crafted wrong secret each that passes it)
    and `unchecked_ids` from before checks existed (every wrong secret passes; they get
    `unchecked_tokens` random ones between them). The flood's tokens, interleaved."""
    assert stack.inproc is not None and stack.inproc.runtime is not None
    runtime = stack.inproc.runtime
    stale_hash = await runtime.hasher.hash(secrets.token_hex(16))
    crafted, unchecked, unchecked_kids = [], [], []
    pipe = runtime.store.client.pipeline(transaction=False)
    for n in range(crafted_ids + unchecked_ids):
        key_id = random_key_id()
        real, wrong = colliding_secrets(key_id) if n < crafted_ids else ("", "")
        data = TokenRecord(
            id=key_id,
            prefix=PREFIX,
            org=ORG,
            team=TEAM,
            name="legacy",
            description="",
            scopes=parse_scopes(["read:apis"]),
            secret_hash=stale_hash,
            created_at=time.time(),
            created_by="bench",
            secret_check=legacy_check(key_id, real) if real else "",
        ).to_json()
        data.pop("check_key", None)
        pipe.hset(Keys.token(key_id), "data", orjson.dumps(data))
        if real:
            head = f"{PREFIX}_{key_id}{wrong}"
            crafted.append(head + checksum(head))
        else:
            unchecked_kids.append(key_id)
    await pipe.execute()
    for n in range(unchecked_tokens if unchecked_kids else 0):
        unchecked.append(wrong_secret(unchecked_kids[n % len(unchecked_kids)]))
    tokens: list[str] = []
    ratio = max(1, len(unchecked) // max(1, len(crafted)))
    rest = iter(unchecked)
    for token in crafted:
        tokens.append(token)
        tokens.extend(t for _, t in zip(range(ratio), rest, strict=False))
    tokens.extend(rest)
    return tokens


@dataclass
class Attempt:
    at_s: float
    admin_status: int = 0
    admin_ms: float = 0.0
    mint_status: int = 0
    first_status: int = 0
    first_ms: float = 0.0


@dataclass
class FloodReport:
    attempts: list[Attempt] = field(default_factory=list)
    counters: dict[str, float] = field(default_factory=dict)


async def new_admin_and_token(stack: Stack, session: aiohttp.ClientSession, started: float) -> Attempt:
    """A new org admin logs in (its first request), mints a team token through the admin
    API, and the new token makes its first request through the gateway."""
    assert stack.inproc is not None and stack.inproc.runtime is not None
    attempt = Attempt(round(time.monotonic() - started, 1))
    admin, _ = await issue_token(
        stack.inproc.runtime, org=ORG, team=None, name="new-admin", scopes=parse_scopes(["admin:org"]),
        created_by="bench",
    )
    headers = {"Authorization": f"Bearer {admin}"}
    t0 = time.perf_counter()
    async with session.get(stack.tokenward_admin_url + "/v1/whoami", headers=headers) as r:
        await r.read()
        attempt.admin_status, attempt.admin_ms = r.status, (time.perf_counter() - t0) * 1000
    if attempt.admin_status != 200:
        return attempt
    body = {"name": "new", "scopes": ["read:apis"]}
    async with session.post(
        f"{stack.tokenward_admin_url}/v1/orgs/{ORG}/teams/{TEAM}/tokens", json=body, headers=headers
    ) as r:
        attempt.mint_status = r.status
        token = (await r.json()).get("token") if r.status == 201 else None
    if token is None:
        return attempt
    t0 = time.perf_counter()
    async with session.get(stack.tokenward_url + ROUTE_PATH, headers={"Authorization": f"Bearer {token}"}) as r:
        await r.read()
        attempt.first_status, attempt.first_ms = r.status, (time.perf_counter() - t0) * 1000
    return attempt


async def flood(stack: Stack, processes: Processes, args: argparse.Namespace) -> None:
    duration, connections = args.duration, args.connections
    say(
        f"flood: {args.key_ids} legacy-check records (one crafted wrong secret each) and "
        f"{args.unchecked_ids} records without a check ({args.unchecked_tokens} random wrong secrets) …"
    )
    crafted = await legacy_tokens(stack, args.key_ids, args.unchecked_ids, args.unchecked_tokens)
    tokens = write_tokens(stack.workdir / "crafted.txt", crafted)
    gen = LoadGenerator(ensure_wrk(), processes)
    load = Load(stack.tokenward_url + ROUTE_PATH, connections, duration, None, tokens, timeout=30.0)
    before = await tokenward_counters(stack.tokenward_admin_url, (ARGON2, THROTTLED))
    report = FloodReport()
    say(f"flood: wrk, {connections} connections, {duration:g}s; a new admin + new token every few seconds")
    started = time.monotonic()
    wrk = asyncio.create_task(gen.run(load))
    async with aiohttp.ClientSession() as session:
        at = 2.0
        while at < duration - 1:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            report.attempts.append(await new_admin_and_token(stack, session, started))
            at += max(2.0, (duration - 3) / 6)
    result: LoadResult = await wrk
    after = await tokenward_counters(stack.tokenward_admin_url, (ARGON2, THROTTLED))
    report.counters = {name: after[name] - before.get(name, 0.0) for name in after}
    print(
        f"flood: {result.requests} crafted-secret requests in {result.duration_s:g}s "
        f"({result.rps:,.0f} req/s, {result.non_2xx} non-2xx, p99 {result.p99_ms:.1f} ms, "
        f"{result.sent} sent of {len(crafted)} distinct); tokenward: "
        f"{report.counters.get(ARGON2, 0):.0f} argon2 verifications, "
        f"{report.counters.get(THROTTLED, 0):.0f} throttled; other processes: {result.other_cpu_pct:.0f}% of the machine"
    )
    print(f"{'at s':>6} {'new admin /v1/whoami':>22} {'mint':>6} {'new token 1st request':>23}")
    for a in report.attempts:
        print(
            f"{a.at_s:6.1f} {a.admin_status:>9} {a.admin_ms:9.1f} ms {a.mint_status:>6}"
            f" {a.first_status:>10} {a.first_ms:9.1f} ms"
        )
    ok = sum(1 for a in report.attempts if a.admin_status == 200 and a.first_status == 200)
    print(f"{ok} of {len(report.attempts)} new admins and new tokens succeeded during the flood")


# -- main --------------------------------------------------------------------------------------
async def main(args: argparse.Namespace) -> int:
    processes = Processes()
    stack = Stack(Path(tempfile.mkdtemp(prefix="tokenward-oracle-")), processes)
    try:
        say("starting Valkey, upstream, tokenward serve, in-process gateway (for minting) …")
        start_valkey(stack)
        start_upstream(stack)
        start_tokenward(stack)
        await start_inproc_gateway(stack)
        await seed(stack, 0)
        os.sched_setaffinity(0, {CLIENT_CORE})
        if args.flood:
            await flood(stack, processes, args)
        else:
            await timing(stack, args.samples, args.warmup)
    finally:
        await stack.close()
        shutil.rmtree(stack.workdir, ignore_errors=True)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4000, help="timed probes per line (default 4000)")
    parser.add_argument("--warmup", type=int, default=300, help="discarded probe pairs first")
    parser.add_argument("--flood", action="store_true", help="the lockout flood instead of the timing")
    parser.add_argument("--duration", type=float, default=20.0, help="flood seconds (default 20)")
    parser.add_argument("--key-ids", type=int, default=400, help="legacy-check key ids, one crafted secret each")
    parser.add_argument("--unchecked-ids", type=int, default=100, help="key ids of records without a check")
    parser.add_argument("--unchecked-tokens", type=int, default=40_000, help="random wrong secrets for those")
    parser.add_argument("--connections", type=int, default=64, help="flood wrk connections (default 64)")
    return parser.parse_args()


if __name__ == "__main__":
    run_main(main(parse_args()))
