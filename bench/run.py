"""tokenward benchmark: throughput and latency against a bare aiohttp proxy (proxied and
forward-auth), memory per connection and per cached token, --workers 2, the cost of cold and
hostile credentials, and revocation propagation. See bench/README.md.

    .venv/bin/python bench/run.py [--duration 10] [--connections 64]

Servers run on core 0, wrk (one thread) on core 1; all traffic goes to 127.0.0.1.
Prints a table and writes bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

import footprint
import pyspy
import revocation
import scaling
from loadgen import Load, LoadGenerator, LoadResult, ensure_wrk, wrk_version
from observe import expect_status, tokenward_counters
from rows import Row, alternating, table
from services import BENCH, TOKENWARD, Processes, cores, machine_info, run_main, say, wait_quiet
from stack import (
    ORG,
    ROUTE_PATH,
    SUBJECTS,
    TEAM,
    Stack,
    bad_checksum,
    seed,
    start_helpers,
    start_inproc_gateway,
    start_tokenward,
    start_valkey,
    start_workers_gateway,
    write_tokens,
    wrong_secret,
)

RESULTS = BENCH / "results.json"
FLOOD_TOKENS = 60_000  # distinct wrong secrets per flood, so the negative cache never helps
EQUAL_LOAD_SHARE = 0.5  # the paced lines run at this share of the bare proxy's req/s
ARGON2 = "tokenward_argon2_verifications_total"
THROTTLED = "tokenward_throttled_attempts_total"
COUNTERS = (ARGON2, THROTTLED, "tokenward_cache_hits_total", "tokenward_cache_misses_total")
PUSH_JITTER = 0.05  # random pause before each revocation trial (s)
POLL_JITTER = 0.5  # without push: spread trials over the whole change-log poll interval
VERIFY_PATH = "/_tokenward/verify" + ROUTE_PATH  # forward-auth, Envoy style: the path asked about appended
WARM_TOKENS = 16  # new tokens verified before the per-token memory reading (argon2's buffers)


@dataclass(frozen=True)
class Options:
    duration: float
    connections: int
    warmup: float
    cold_duration: float
    cold_connections: int
    cold_tokens: int
    trials: int
    profile: bool
    output: Path
    quick: bool = False
    rounds: int = 3
    idle_connections: int = 2000
    memory_tokens: int = 256


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    revocation: list[dict[str, Any]] = field(default_factory=list)
    derived: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    memory: list[footprint.Footprint] = field(default_factory=list)

    def row(self, key: str) -> LoadResult:
        return next(r.result for r in self.rows if r.key == key)


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=None, help="seconds per load run (default 10; 5 with --quick)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of discarded load first (2; 1 with --quick)")
    parser.add_argument("--cold-duration", type=float, default=None, help="cold-cache run (default 8)")
    parser.add_argument("--cold-connections", type=int, default=4)
    parser.add_argument("--cold-tokens", type=int, default=400, help="distinct tokens for the cold run")
    parser.add_argument("--trials", type=int, default=100, help="revocations timed per variant")
    parser.add_argument("--profile", action="store_true", help="also py-spy tokenward under load")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--quick", action="store_true", help="no cold, flood and revocation lines; shorter loads (~3 min)"
    )
    parser.add_argument("--idle-connections", type=int, default=2000, help="for the memory per connection")
    parser.add_argument("--memory-tokens", type=int, default=256, help="new tokens for the memory per token")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating runs of bare proxy and tokenward (median; default 3)"
    )
    args = parser.parse_args(argv)
    duration = args.duration if args.duration is not None else 5.0 if args.quick else 10.0
    warmup = args.warmup if args.warmup is not None else 1.0 if args.quick else 2.0
    cold = args.cold_duration if args.cold_duration is not None else min(8.0, duration)
    return Options(
        duration,
        args.connections,
        warmup,
        cold,
        args.cold_connections,
        args.cold_tokens,
        args.trials,
        args.profile,
        args.output,
        args.quick,
        args.rounds,
        args.idle_connections,
        args.memory_tokens,
    )


# -- setup -----------------------------------------------------------------------------------------
async def build_stack(stack: Stack, opts: Options, report: Report) -> None:
    say("starting Valkey, upstream, bare proxy, tokenward serve, in-process gateway …")
    start_valkey(stack)
    start_helpers(stack)
    report.notes.append(f"upstream: {stack.upstream_kind}")
    start_tokenward(stack)
    await start_inproc_gateway(stack)
    started = time.perf_counter()
    cold, spare = 2 if opts.quick else opts.cold_tokens, WARM_TOKENS + opts.memory_tokens
    say(f"minting {cold + spare + 2 + SUBJECTS} tokens with default argon2id parameters …")
    await seed(stack, cold, spare)
    say(f"  done in {time.perf_counter() - started:.1f}s")


async def sanity_checks(stack: Stack) -> None:
    """Each credential does what the scenario claims before any load is measured."""
    creds, url = stack.creds, stack.tokenward_url + ROUTE_PATH
    await expect_status(url, creds.legit, 200)
    await expect_status(stack.tokenward_url + VERIFY_PATH, creds.legit, 200)  # 403: 127.0.0.1 not trusted
    await expect_status(url, bad_checksum(creds.legit), 401)
    await expect_status(url, wrong_secret(creds.legit_id), 401)
    for token, _ in creds.subjects:
        await expect_status(stack.inproc_url + ROUTE_PATH, token, 200)
        await expect_status(stack.tokenward_url + ROUTE_PATH, token, 200)


# -- throughput ------------------------------------------------------------------------------------
async def direct_row(gen: LoadGenerator, stack: Stack, opts: Options) -> list[Row]:
    c, d, w = opts.connections, opts.duration, opts.warmup
    say(f"load: direct upstream ({d:g}s after {w:g}s warm-up)")
    return [Row("direct", "direct upstream", await gen.measured(Load(stack.upstream_url + ROUTE_PATH, c, d), w))]


async def proxy_rows(gen: LoadGenerator, stack: Stack, opts: Options) -> list[Row]:
    c, d = opts.connections, opts.duration
    bearer = f"Bearer {stack.creds.legit}"
    return await alternating(
        gen,
        [
            ("bare", "bare aiohttp proxy", Load(stack.bare_url + ROUTE_PATH, c, d)),
            ("cached", "tokenward, cached token", Load(stack.tokenward_url + ROUTE_PATH, c, d, bearer)),
            ("verify", "tokenward, forward-auth (verify), cached", Load(stack.tokenward_url + VERIFY_PATH, c, d, bearer)),
        ],
        "rps",
        opts.rounds,
        opts.warmup,
    )


async def equal_load_rows(gen: LoadGenerator, stack: Stack, opts: Options, report: Report) -> list[Row]:
    """Latency at the same moderate rate (half the bare proxy's capacity) for both: the
    closed-loop lines above run at saturation, where p99 mostly restates throughput."""
    rate = round(report.row("bare").rps * EQUAL_LOAD_SHARE)
    c, d = opts.connections, opts.duration
    bearer = f"Bearer {stack.creds.legit}"
    return await alternating(
        gen,
        [
            ("bare_paced", f"bare aiohttp proxy @ {rate:,} req/s", Load(stack.bare_url + ROUTE_PATH, c, d, rate=rate)),
            (
                "cached_paced",
                f"tokenward, cached token @ {rate:,} req/s",
                Load(stack.tokenward_url + ROUTE_PATH, c, d, bearer, rate=rate),
            ),
        ],
        "p99",
        opts.rounds,
        opts.warmup,
    )


async def cold_rows(gen: LoadGenerator, stack: Stack, opts: Options) -> list[Row]:
    tokens = write_tokens(stack.workdir / "cold.txt", stack.creds.cold)
    url = stack.tokenward_url + ROUTE_PATH
    load = Load(url, opts.cold_connections, opts.cold_duration, None, tokens, timeout=30.0)
    say(f"load: cold cache, a new token per request ({opts.cold_duration:g}s)")
    result = await gen.run(load)
    wrapped = result.sent > len(stack.creds.cold)
    note = "WRAPPED: some tokens were reused (cached)" if wrapped else f"{result.sent} distinct tokens sent"
    return [Row("cold", "tokenward, cold cache (new token each)", result, note)]


async def malformed_rows(gen: LoadGenerator, stack: Stack, opts: Options) -> list[Row]:
    bearer = f"Bearer {bad_checksum(stack.creds.legit)}"
    load = Load(stack.tokenward_url + ROUTE_PATH, opts.connections, opts.duration, bearer)
    say("load: malformed token (bad checksum)")
    return [Row("malformed", "tokenward, bad checksum -> 401", await gen.run(load), "all 401 expected")]


async def flood_rows(
    gen: LoadGenerator, stack: Stack, opts: Options, report: Report, key_ids: list[str], name: str
) -> list[Row]:
    """A wrong-secret flood and the legit cached token, two wrk processes at the same time."""
    flood = [wrong_secret(key_ids[i % len(key_ids)]) for i in range(FLOOD_TOKENS)]
    tokens = write_tokens(stack.workdir / f"flood-{name}.txt", flood)
    url = stack.tokenward_url + ROUTE_PATH
    flood_load = Load(url, opts.connections, opts.duration, None, tokens)
    legit_load = Load(url, opts.connections, opts.duration, f"Bearer {stack.creds.legit}")
    ids = "1 key id (legit's)" if len(key_ids) == 1 else f"{len(key_ids)} key ids"
    say(f"load: wrong-secret flood on {ids}, legit token beside it")
    flood_result, legit_result = await gen.run_together(flood_load, legit_load)
    wrapped = " (WRAPPED)" if flood_result.sent > FLOOD_TOKENS else ""
    share = legit_result.rps / report.row("cached").rps
    return [
        Row(f"flood_{name}", f"tokenward, wrong-secret flood, {ids}", flood_result, f"all 401{wrapped}"),
        Row(f"flood_{name}_legit", "  legit token beside it", legit_result, f"{share:.0%} of unloaded req/s"),
    ]


async def settle(stack: Stack, rows: list[Row], before: dict[str, float]) -> None:
    """Wait until tokenward is idle again; note how long it kept working after the load,
    and how many argon2 verifications and throttled attempts the load caused."""
    assert stack.tokenward is not None
    busy = await wait_quiet(stack.tokenward.pid)
    after = await tokenward_counters(stack.tokenward_admin_url, COUNTERS)
    row = rows[0]
    row.busy_after_s = round(busy, 1)
    row.counters = {name: after[name] - before.get(name, 0.0) for name in after}
    verified, throttled = row.counters.get(ARGON2), row.counters.get(THROTTLED)
    if verified is not None and throttled is not None and (verified or throttled):
        row.note += f"; {verified:.0f} argon2, {throttled:.0f} throttled"
    if busy >= 1.0:
        row.note += f"; busy {busy:.0f}s after wrk stopped"
    row.note = row.note.lstrip("; ")


async def workers_throughput_rows(gen: LoadGenerator, stack: Stack, opts: Options, report: Report) -> list[Row]:
    """`tokenward serve --workers 2` against one process, both fresh and unpinned (scaling.py)."""
    if not serve_has_workers():
        report.notes.append("tokenward serve has no --workers here: no --workers 2 lines")
        return []
    pair = await scaling.start_pair(stack)
    try:
        loads = scaling.loads(stack, pair, opts.connections, opts.duration)
        rows = await alternating(gen, loads, "rps", opts.rounds, opts.warmup)
    finally:
        scaling.stop_pair(stack, pair)
    report.notes.append(scaling.NOTE)
    return rows


async def throughput(gen: LoadGenerator, stack: Stack, opts: Options, report: Report) -> None:
    report.rows.extend(await direct_row(gen, stack, opts))
    report.rows.extend(await proxy_rows(gen, stack, opts))
    report.rows.extend(await equal_load_rows(gen, stack, opts, report))
    report.rows.extend(await workers_throughput_rows(gen, stack, opts, report))
    groups: list[Callable[[], Awaitable[list[Row]]]] = [
        lambda: cold_rows(gen, stack, opts),
        lambda: malformed_rows(gen, stack, opts),
        lambda: flood_rows(gen, stack, opts, report, [stack.creds.legit_id], "one_key"),
        lambda: flood_rows(gen, stack, opts, report, stack.creds.cold_ids, "many_keys"),
    ]
    if opts.quick:
        groups = [groups[1]]
    for group in groups:
        before = await tokenward_counters(stack.tokenward_admin_url, COUNTERS)
        rows = await group()
        report.rows.extend(rows)
        await settle(stack, rows, before)
    cached, bare = report.row("cached"), report.row("bare")
    paced, bare_paced = report.row("cached_paced"), report.row("bare_paced")
    report.derived.update(
        cached_over_bare_rps=round(cached.rps / bare.rps, 3),
        verify_over_bare_rps=round(report.row("verify").rps / bare.rps, 3),
        p50_difference_ms=round(cached.p50_ms - bare.p50_ms, 3),
        p99_difference_ms=round(cached.p99_ms - bare.p99_ms, 3),
        equal_load_rps=round(bare_paced.rps),
        equal_load_p50_difference_ms=round(paced.p50_ms - bare_paced.p50_ms, 3),
        equal_load_p99_difference_ms=round(paced.p99_ms - bare_paced.p99_ms, 3),
    )
    if any(r.key == "workers2" for r in report.rows):
        ratio = report.row("workers2").rps / report.row("workers1").rps
        report.derived["workers2_over_workers1_rps"] = round(ratio, 3)


async def memory(stack: Stack, opts: Options, report: Report) -> None:
    """Memory per cached token and per idle connection (footprint.py), before any load."""
    report.memory = await footprint.measure(stack, opts.idle_connections, WARM_TOKENS)
    for f in report.memory:  # None: skipped (the server's open-file limit is too low)
        report.derived[f"{f.key}_bytes"] = round(f.per_unit_bytes) if f.count else None


# -- revocation ------------------------------------------------------------------------------------
def serve_has_workers() -> bool:
    out = subprocess.run([TOKENWARD, "serve", "--help"], capture_output=True, text=True, check=False)
    return "--workers" in out.stdout


async def stop_push(stack: Stack) -> None:
    """Cancel the in-process gateway's pub/sub task: only the change-log poll remains."""
    assert stack.inproc is not None and stack.inproc.runtime is not None
    tasks = stack.inproc.runtime.listener._tasks
    push = [task for task in tasks if task.get_name() == "tokenward-push"]
    if len(push) != 1:
        raise RuntimeError("could not find the ChangeListener's push task")
    push[0].cancel()
    await asyncio.wait(push, timeout=2.0)
    if not push[0].done():
        raise RuntimeError("the push task did not stop")


def subjects(stack: Stack, gateway_url: str) -> list[revocation.Subject]:
    url = gateway_url + ROUTE_PATH
    return [revocation.Subject(ORG, TEAM, key_id, token, url) for token, key_id in stack.creds.subjects]


async def revocation_rows(stack: Stack, opts: Options, report: Report) -> None:
    creds = stack.creds
    subject = subjects(stack, stack.tokenward_url)
    inproc = subjects(stack, stack.inproc_url)
    async with aiohttp.ClientSession() as session:
        admin = revocation.AdminClient(session, stack.tokenward_admin_url, creds.admin)
        variants = [
            ("push_same", "push: tokenward serve, revoked via its own admin API", subject),
            ("push_other", "push: 2nd gateway, revoked via the other's admin API", inproc),
        ]
        for key, label, target in variants:
            say(f"revocation: {label} ({opts.trials} trials)")
            [summary] = await revocation.measure(admin, target, opts.trials, PUSH_JITTER)
            report.revocation.append({"key": key, "label": label, **summary})
        await stop_push(stack)
        label = "no push: 2nd gateway, change-log poll (0.5 s) only"
        say(f"revocation: {label} ({opts.trials} trials)")
        [summary] = await revocation.measure(admin, inproc, opts.trials, POLL_JITTER)
        report.revocation.append({"key": "poll_only", "label": label, **summary})
        await workers_rows(stack, opts, report, admin)


async def workers_rows(stack: Stack, opts: Options, report: Report, admin: revocation.AdminClient) -> None:
    if not serve_has_workers():
        report.notes.append("tokenward serve has no --workers here: revocation measured on single processes")
        return
    workers = max(2, cores())
    url, _ = start_workers_gateway(stack, workers)
    subject = subjects(stack, url)
    say(f"revocation: tokenward serve --workers {workers} ({opts.trials} trials)")
    first, every = await revocation.measure(admin, subject, opts.trials, PUSH_JITTER, every_worker=True)
    report.revocation.append(
        {"key": "workers_first", "label": f"push, --workers {workers}: first 401", **first}
    )
    report.revocation.append(
        {"key": "workers_all", "label": f"push, --workers {workers}: 401 on every worker", **every}
    )


# -- output ----------------------------------------------------------------------------------------
def throughput_table(report: Report) -> str:
    headers = ["scenario", "conns", "req/s", "p50 ms", "p99 ms", "non-2xx", "errors", "others", "note"]
    rows = [
        [
            r.label,
            str(r.result.connections),
            f"{r.result.rps:,.0f}" if r.result.rps >= 100 else f"{r.result.rps:.1f}",
            f"{r.result.p50_ms:.2f}",
            f"{r.result.p99_ms:.2f}",
            str(r.result.non_2xx),
            str(r.result.socket_errors + r.result.timeouts),
            f"{r.result.other_cpu_pct:.0f}%",
            r.note,
        ]
        for r in report.rows
    ]
    return table(headers, rows)


def revocation_table(report: Report) -> str:
    headers = ["revocation: revoke response -> first 401", "trials", "p50 ms", "p99 ms", "max ms", "failed"]
    rows = [
        [
            r["label"],
            str(r["trials"]),
            f"{r.get('p50_ms', float('nan')):.1f}",
            f"{r.get('p99_ms', float('nan')):.1f}",
            f"{r.get('max_ms', float('nan')):.1f}",
            str(r["failures"]),
        ]
        for r in report.revocation
    ]
    return table(headers, [*rows]) if rows else "(no revocation trials)"


def summary_lines(report: Report) -> list[str]:
    d = report.derived
    lines = [
        f"tokenward (cached) / bare proxy req/s: {d['cached_over_bare_rps']:.2f}   "
        f"forward-auth (verify) / bare proxy req/s: {d['verify_over_bare_rps']:.2f}",
        f"tokenward (cached) - bare proxy, saturated: "
        f"p50 difference: {d['p50_difference_ms']:+.2f} ms   p99 difference: {d['p99_difference_ms']:+.2f} ms",
        f"at equal load ({d['equal_load_rps']:,} req/s, both paced): p50 difference "
        f"{d['equal_load_p50_difference_ms']:+.2f} ms   p99 difference {d['equal_load_p99_difference_ms']:+.2f} ms",
    ]
    if "workers2_over_workers1_rps" in d:
        lines.append(f"tokenward --workers 2 / 1 process req/s: {d['workers2_over_workers1_rps']:.2f} (not pinned, see note)")
    if all(d.get(f"{key}_bytes") is not None for key in ("cached_token", "idle_connection", "bare_idle_connection")):
        lines.append(
            f"memory: {d['cached_token_bytes']:,} bytes per cached token; per idle keep-alive connection "
            f"{d['idle_connection_bytes']:,} bytes (bare aiohttp proxy: {d['bare_idle_connection_bytes']:,})"
        )
    return lines + [f"note: {n}" for n in report.notes]


def render(report: Report) -> str:
    parts = [throughput_table(report), "", *summary_lines(report)]
    if report.memory:
        parts += ["", table(footprint.FOOTPRINT_HEADERS, footprint.footprint_table(report.memory))]
    parts += ["", revocation_table(report)]
    extra = pyspy.profile_lines(report.profile)
    return "\n".join(parts + (["", *extra] if extra else []))


def results_json(report: Report, opts: Options, wrk: str, elapsed: float) -> bytes:
    data = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": round(elapsed, 1),
        "machine": machine_info(wrk_version(wrk)),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in opts.__dict__.items()},
        "throughput": {
            r.key: {
                "label": r.label,
                "note": r.note,
                "busy_after_s": r.busy_after_s,
                "tokenward_counters": r.counters,
                **r.result.as_dict(),
            }
            for r in report.rows
        },
        "derived": report.derived,
        "memory": [f.as_dict() for f in report.memory],
        "revocation": report.revocation,
        "notes": report.notes,
        "profile": report.profile,
    }
    return orjson.dumps(data, option=orjson.OPT_INDENT_2)


def audit_note(stack: Stack) -> str:
    assert stack.tokenward_log is not None
    lines = stack.tokenward_log.read_bytes().count(b"\n")
    size = stack.tokenward_log.stat().st_size / 1e6
    return f"tokenward serve wrote {lines:,} JSON log lines ({size:.0f} MB) to its log file during the run"


async def check_machine_quiet(gen: LoadGenerator, report: Report) -> None:
    before = gen.meter.snapshot()
    await asyncio.sleep(2.0)
    other = gen.meter.other_share(before, gen.meter.snapshot())
    report.derived["other_cpu_before_pct"] = round(100 * other, 1)
    if other > 0.05:
        message = f"other processes kept {other:.0%} of the machine busy before the loads: figures are skewed"
        say(f"WARNING: {message}")
        report.notes.append(message)


# -- main ------------------------------------------------------------------------------------------
async def benchmark(opts: Options) -> None:
    started = time.perf_counter()
    wrk = ensure_wrk()
    if opts.profile:
        pyspy.find_py_spy()  # missing: say so now, not after the measurements
    footprint.raise_fd_limit(opts.idle_connections + footprint.FD_MARGIN)  # the servers inherit it
    processes = Processes()
    stack = Stack(Path(tempfile.mkdtemp(prefix="tokenward-bench-")), processes)
    report = Report()
    try:
        await build_stack(stack, opts, report)
        await sanity_checks(stack)
        gen = LoadGenerator(wrk, processes)
        await check_machine_quiet(gen, report)
        await memory(stack, opts, report)
        await throughput(gen, stack, opts, report)
        report.notes.append(audit_note(stack))
        if not opts.quick:
            await revocation_rows(stack, opts, report)
        if opts.profile:
            report.profile = await pyspy.profile(gen, stack, opts.connections)
    finally:
        await stack.close()
        shutil.rmtree(stack.workdir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    print(render(report))
    opts.output.write_bytes(results_json(report, opts, wrk, elapsed))
    say(f"\nwrote {opts.output} ({elapsed:.0f}s in all)")


def main() -> None:
    run_main(benchmark(parse_args()))


if __name__ == "__main__":
    main()
