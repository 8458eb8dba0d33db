"""The admin plane at volume beside an unrelated gateway caller (issue 10, item 5).

    .venv/bin/python bench/admin_load.py [--duration 10] [--tokens 5000] [--rate 200]

`tokenward serve` (one process: the gateway and the admin listener share its event loop)
with a team `crowded` of `--tokens` tokens. An unrelated caller (a token of team `bench`)
sends `--rate` req/s through the gateway (wrk, paced) in four phases of `--duration`
seconds each, and the table compares its latency:

- quiet: the caller alone (the baseline, in the same run);
- lists: `--listers` admin clients each walk the whole `crowded` token list, page by page
  (`limit=500`, following `next`), again and again;
- leaks: `--reporters` admin clients each post `POST /v1/leaks` batches of 100 reports
  again and again: wrong secrets for real key ids of `crowded`, unknown key ids and
  strings that are no token;
- both: the listers and the reporters at once.

Servers run on core 0, wrk and the admin clients (this process) on core 1. Prints a table
and writes bench/admin_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tokenward.gateway.records import TeamRecord, TokenRecord
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.tokens import BASE62, KEY_ID_LEN, SECRET_LEN, secret_check
from tokenward.service import issue_token

from loadgen import Load, LoadGenerator, LoadResult, ensure_wrk
from observe import expect_status, tokenward_counters
from services import BENCH, CLIENT_CORE, Processes, run_main, say
from stack import (
    ORG,
    PREFIX,
    ROUTE_PATH,
    TEAM,
    Stack,
    start_inproc_gateway,
    start_tokenward,
    start_upstream,
    start_valkey,
    wrong_secret,
)

RESULTS = BENCH / "admin_load.json"
CROWDED = "crowded"
LEAK_BATCH = 100  # the API's largest batch
ARGON2 = "tokenward_argon2_verifications_total"
THROTTLED = "tokenward_throttled_attempts_total"


@dataclass
class AdminCounts:
    pages: int = 0
    rows: int = 0
    walks: int = 0
    leak_calls: int = 0
    leak_reports: int = 0
    results: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    slowest_call_ms: float = 0.0


@dataclass
class Phase:
    name: str
    caller: LoadResult
    admin: AdminCounts
    argon2: float
    throttled: float


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--tokens", type=int, default=5000, help="tokens in the crowded team")
    parser.add_argument("--rate", type=float, default=200.0, help="the unrelated caller's req/s")
    parser.add_argument("--connections", type=int, default=8, help="the caller's wrk connections")
    parser.add_argument("--listers", type=int, default=4, help="admin clients walking the list")
    parser.add_argument("--reporters", type=int, default=2, help="admin clients reporting leaks")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args()


def random_base62(n: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(n))


async def seed(stack: Stack, count: int) -> tuple[str, str, list[str]]:
    """The caller's team and token, an org admin, and `count` tokens in `crowded` (records
    written through the store's create path, with a real secret check and argon2id hash of
    secrets nobody keeps: they are listed and reported, never presented to the gateway)."""
    assert stack.inproc is not None and stack.inproc.runtime is not None
    runtime = stack.inproc.runtime
    store = runtime.store
    for team in (TEAM, CROWDED):
        await store.create_team(TeamRecord(ORG, team, parse_scopes(["read:apis"]), time.time(), "bench"))
    admin, _ = await issue_token(
        runtime,
        org=ORG,
        team=None,
        name="bench-admin",
        scopes=parse_scopes(["admin:org"]),
        created_by="bench",
    )
    caller, _ = await issue_token(
        runtime,
        org=ORG,
        team=TEAM,
        name="bench-caller",
        scopes=parse_scopes(["read:apis"]),
        created_by="bench",
    )
    # one real argon2id hash (of a secret nobody keeps) for all of them: a report that
    # reaches verification costs what a real one does
    shared_hash = await runtime.hasher.hash(random_base62(SECRET_LEN))
    ids: list[str] = []
    base = time.time()
    for start in range(0, count, 200):
        batch = []
        for i in range(start, min(count, start + 200)):
            key_id = random_base62(KEY_ID_LEN)
            batch.append(
                TokenRecord(
                    id=key_id,
                    prefix=PREFIX,
                    org=ORG,
                    team=CROWDED,
                    name=f"crowd-{i}",
                    description="seeded by bench/admin_load.py",
                    scopes=parse_scopes(["read:apis"]),
                    secret_hash=shared_hash,
                    created_at=base + i / 1e6,
                    created_by="bench",
                    secret_check=secret_check(key_id, random_base62(SECRET_LEN)),
                )
            )
        # (a tree from before the quota has only create_token)
        create = getattr(store, "create_token_in_quota", None)
        quota = getattr(runtime.settings.tokens, "max_per_team", 0)
        await asyncio.gather(*(create(r, quota) if create else store.create_token(r) for r in batch))
        ids += [r.id for r in batch]
    return admin, caller, ids


async def timed(counts: AdminCounts, call: Any) -> Any:
    started = time.perf_counter()
    try:
        return await call
    finally:
        counts.slowest_call_ms = max(counts.slowest_call_ms, (time.perf_counter() - started) * 1000)


async def lister(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], counts: AdminCounts
) -> None:
    """Walks the whole list again and again, as `tokenward token list` does."""
    while True:
        cursor: str | None = None
        while True:
            params = {"limit": "500", **({"cursor": cursor} if cursor else {})}

            async def page(params: dict[str, str] = params) -> Any:
                async with session.get(url, params=params, headers=headers) as response:
                    if response.status != 200:
                        counts.errors += 1
                        await response.read()
                        return None
                    return orjson.loads(await response.read())

            data = await timed(counts, page())
            if data is None:
                await asyncio.sleep(0.1)
                break
            counts.pages += 1
            counts.rows += len(data["tokens"])
            cursor = data.get("next")  # (a tree from before pagination answers everything at once)
            if cursor is None:
                counts.walks += 1
                break


async def reporter(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], ids: list[str], counts: AdminCounts
) -> None:
    """Batches of 100 leak reports: 80 wrong secrets for real key ids, 10 unknown key ids,
    10 that are not tokens."""
    while True:
        batch = [wrong_secret(secrets.choice(ids)) for _ in range(80)]
        batch += [wrong_secret(random_base62(KEY_ID_LEN)) for _ in range(10)]
        batch += [f"{PREFIX}_not-a-token-{random_base62(20)}" for _ in range(10)]

        async def post(batch: list[str] = batch) -> Any:
            async with session.post(url, json={"tokens": batch}, headers=headers) as response:
                body = await response.read()
                return orjson.loads(body) if response.status == 200 else None

        data = await timed(counts, post())
        if data is None:
            counts.errors += 1
            await asyncio.sleep(0.1)
            continue
        counts.leak_calls += 1
        counts.leak_reports += len(data["results"])
        for result in data["results"]:
            counts.results[result["result"]] = counts.results.get(result["result"], 0) + 1


async def run_phase(
    name: str,
    gen: LoadGenerator,
    stack: Stack,
    args: argparse.Namespace,
    admin: str,
    caller: str,
    ids: list[str],
    listers: int,
    reporters: int,
) -> Phase:
    say(f"phase {name}: caller @ {args.rate:g} req/s, {listers} listers, {reporters} leak reporters")
    headers = {"Authorization": f"Bearer {admin}"}
    counts = AdminCounts()
    base = stack.tokenward_admin_url
    before = await tokenward_counters(base, (ARGON2, THROTTLED))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [
            asyncio.create_task(
                lister(session, f"{base}/v1/orgs/{ORG}/teams/{CROWDED}/tokens", headers, counts)
            )
            for _ in range(listers)
        ]
        tasks += [
            asyncio.create_task(reporter(session, f"{base}/v1/leaks", headers, ids, counts))
            for _ in range(reporters)
        ]
        try:
            if tasks:
                await asyncio.sleep(1.0)  # the admin load is running before the caller is measured
            load = Load(
                stack.tokenward_url + ROUTE_PATH,
                args.connections,
                args.duration,
                f"Bearer {caller}",
                rate=args.rate,
            )
            result = await gen.run(load)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    after = await tokenward_counters(base, (ARGON2, THROTTLED))
    return Phase(
        name,
        result,
        counts,
        after.get(ARGON2, 0.0) - before.get(ARGON2, 0.0),
        after.get(THROTTLED, 0.0) - before.get(THROTTLED, 0.0),
    )


def render(phases: list[Phase], args: argparse.Namespace) -> str:
    header = f"{'phase':<7} {'caller req/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'non-2xx':>7} {'others':>7}  admin work"
    lines = [header, "-" * len(header)]
    for p in phases:
        c, a = p.caller, p.admin
        work = []
        if a.pages:
            work.append(f"{a.pages} pages / {a.rows:,} rows / {a.walks} full walks")
        if a.leak_calls:
            work.append(f"{a.leak_reports:,} leak reports in {a.leak_calls} calls {a.results}")
        if a.pages or a.leak_calls:
            work.append(
                f"slowest admin call {a.slowest_call_ms:.0f} ms, argon2 {p.argon2:.0f}, errors {a.errors}"
            )
        lines.append(
            f"{p.name:<7} {c.rps:>12,.1f} {c.p50_ms:>8.2f} {c.p99_ms:>8.2f} {c.max_ms:>8.1f} "
            f"{c.non_2xx + c.socket_errors + c.timeouts:>7} {c.other_cpu_pct:>6.1f}%  {'; '.join(work) or '-'}"
        )
    lines.append(
        f"({args.tokens:,} tokens in team {CROWDED!r}; caller paced at {args.rate:g} req/s over "
        f"{args.connections} connections, {args.duration:g} s per phase; 'others' = CPU share of "
        "processes not ours)"
    )
    return "\n".join(lines)


async def benchmark(args: argparse.Namespace) -> None:
    wrk = ensure_wrk()
    processes = Processes()
    stack = Stack(Path(tempfile.mkdtemp(prefix="tokenward-admin-load-")), processes)
    phases: list[Phase] = []
    try:
        say("starting Valkey, upstream, tokenward serve …")
        start_valkey(stack)
        start_upstream(stack)
        start_tokenward(stack)
        await start_inproc_gateway(stack)  # only to seed the store
        started = time.perf_counter()
        admin, caller, ids = await seed(stack, args.tokens)
        say(f"seeded {len(ids):,} tokens in {time.perf_counter() - started:.1f}s")
        await stack.stop_inproc()
        os.sched_setaffinity(0, {CLIENT_CORE})  # the admin clients share the client core with wrk
        await expect_status(stack.tokenward_url + ROUTE_PATH, caller, 200)
        gen = LoadGenerator(wrk, processes)
        plan = [("quiet", 0, 0), ("lists", args.listers, 0), ("leaks", 0, args.reporters)]
        plan.append(("both", args.listers, args.reporters))
        for name, listers, reporters in plan:
            phases.append(await run_phase(name, gen, stack, args, admin, caller, ids, listers, reporters))
    finally:
        await stack.close()
        shutil.rmtree(stack.workdir, ignore_errors=True)
    print(render(phases, args))
    args.output.write_bytes(
        orjson.dumps(
            {
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "phases": [
                    {
                        "name": p.name,
                        "caller": p.caller.as_dict(),
                        "admin": vars(p.admin),
                        "argon2_verifications": p.argon2,
                        "throttled": p.throttled,
                    }
                    for p in phases
                ],
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    say(f"wrote {args.output}")


def main() -> None:
    run_main(benchmark(parse_args()))


if __name__ == "__main__":
    main()
