"""tokenward soak: a long run at ~80% of capacity with token churn; memory, open files,
errors and latency over time should stay flat. See bench/README.md.

    .venv/bin/python bench/soak.py [--minutes 10] [--interval 10]

Valkey, the upstream and `tokenward serve` run on core 0, wrk (one thread) on core 1.
Prints a line per interval and a summary; writes bench/soak-results.json. Exit status 0
when flat, 1 when not, 130 when stopped early (Ctrl-C or SIGTERM: the intervals done so far
are still summarized and written).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis.asyncio as redis

from tokenward.gateway.settings import AuditSettings

from churn import POOL, Churn, ChurnCounts
from loadgen import Load, LoadGenerator, LoadResult, ensure_wrk, wrk_version
from observe import expect_status, open_fds, process_tree, rss_bytes, tokenward_counters, valkey_memory
from revocation import AdminClient
from services import BENCH, Processes, machine_info, run_main, say
from stack import ROUTE_PATH, Stack, seed, start_inproc_gateway, start_tokenward, start_upstream, start_valkey

RESULTS = BENCH / "soak-results.json"
CAPACITY_WARMUP = 2  # seconds of full-speed load thrown away before the capacity run
MIB = 1024 * 1024
COUNTERS = {  # tokenward /metrics series kept per interval (deltas)
    "tokenward_cache_hits_total": "cache_hits",
    "tokenward_cache_misses_total": "cache_misses",
    "tokenward_cache_invalidations_total": "cache_invalidations",
    "tokenward_argon2_verifications_total": "argon2",
    "tokenward_throttled_attempts_total": "throttled",
    "tokenward_store_errors_total": "store_errors",
}
AUDIT_STREAM_MAXLEN = AuditSettings().stream_maxlen  # the soak's config keeps the default
# "flat": late vs early medians after the warm-up (see `checks`)
RSS_GROWTH = 0.05
FD_DRIFT = 4
P99_GROWTH, P99_SLACK_MS = 0.5, 2.0
RATE_SHORTFALL = 0.05
VALKEY_GROWTH = 0.10


@dataclass(frozen=True)
class Options:
    minutes: float
    interval: int
    connections: int
    share: float
    capacity_seconds: int
    warmup: float
    output: Path


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    parser.add_argument("--interval", type=int, default=10, help="seconds per line (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--share", type=float, default=0.8, help="share of capacity to run at (default 0.8)")
    parser.add_argument(
        "--capacity-seconds", type=int, default=8, help="max-rate run that sets capacity (default 8)"
    )
    parser.add_argument(
        "--warmup", type=float, default=60.0, help="seconds of the soak the flat verdict ignores (default 60)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.interval < 1 or args.minutes * 60 < args.interval or args.capacity_seconds < 1:
        parser.error(
            "need 1 <= --interval <= --minutes * 60 and --capacity-seconds >= 1 (wrk: whole seconds)"
        )
    if not 0 < args.share <= 1:
        parser.error("need 0 < --share <= 1")
    return Options(**vars(args))


@dataclass(frozen=True)
class Resources:
    """tokenward's and Valkey's footprint at one moment."""

    tokenward_processes: int
    tokenward_rss: int
    tokenward_fds: dict[str, int]  # by kind: see `Soak.fd_ports`
    valkey_rss: int
    valkey_used_memory: int
    audit_stream: int
    argon2_quiet: bool  # no churn token was being hashed or first verified (64 MiB each)

    @property
    def fds(self) -> int:
        return sum(self.tokenward_fds.values())

    @property
    def fixed_fds(self) -> int:
        """Open files minus the connections from wrk and to the upstream, whose number follows
        the load's concurrency (the upstream pool grows when requests pile up)."""
        return self.fds - self.tokenward_fds["clients"] - self.tokenward_fds["upstream"]


@dataclass(frozen=True)
class Interval:
    elapsed_s: float  # since the soak load started, at the end of this interval
    load: LoadResult
    churn: ChurnCounts
    resources: Resources  # sampled halfway through the interval, under load
    counters: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "elapsed_s": self.elapsed_s,
            "load": self.load.as_dict(),
            "churn": self.churn.as_dict(),
            "resources": asdict(self.resources),
            "counters": self.counters,
        }


@dataclass
class Soak:
    stack: Stack
    gen: LoadGenerator
    churn: Churn
    valkey: redis.Redis
    opts: Options
    capacity: LoadResult | None = None
    target_rps: float = 0.0
    intervals: list[Interval] = field(default_factory=list)
    interrupted: bool = False

    @property
    def url(self) -> str:
        return self.stack.tokenward_url + ROUTE_PATH

    def fd_ports(self) -> dict[str, int]:
        stack = self.stack
        assert stack.valkey is not None
        return {
            "clients": stack.config["listen"]["port"],
            "admin": stack.config["admin_listen"]["port"],
            "upstream": stack.upstream_port,
            "store": stack.valkey.port,
        }

    async def sample(self, delay: float, longest_wait: float) -> Resources:
        """tokenward's (all its processes) and Valkey's footprint, `delay` seconds from now, at
        the first moment when the churn runs no argon2 (if one comes within `longest_wait`)."""
        await asyncio.sleep(delay)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(longest_wait):
                await self.churn.no_argon2.wait()
        quiet = self.churn.no_argon2.is_set()
        assert self.stack.tokenward is not None and self.stack.valkey is not None
        assert self.stack.valkey.process is not None
        tokenward = process_tree(self.stack.tokenward.pid)
        rss, fds = rss_bytes(tokenward), open_fds(tokenward, self.fd_ports())
        valkey_rss = rss_bytes([self.stack.valkey.process.pid])
        used, audit = await valkey_memory(self.valkey)
        return Resources(len(tokenward), rss, fds, valkey_rss, used, audit, quiet)

    async def counters(self) -> dict[str, float]:
        raw = await tokenward_counters(self.stack.tokenward_admin_url, COUNTERS)
        return {COUNTERS[name]: value for name, value in raw.items()}

    async def measure_capacity(self) -> None:
        load = Load(self.url, self.opts.connections, self.opts.capacity_seconds, self.bearer())
        say(
            f"capacity: wrk at full speed for {self.opts.capacity_seconds}s "
            f"(after {CAPACITY_WARMUP}s warm-up), churn running"
        )
        self.capacity = await self.gen.measured(load, CAPACITY_WARMUP)
        self.target_rps = round(self.capacity.rps * self.opts.share, 1)
        self.churn.take()

    def bearer(self) -> str:
        return f"Bearer {self.stack.creds.legit}"

    async def run_intervals(self) -> None:
        """Consecutive wrk runs of one interval each at the target rate, until the time is up
        or Ctrl-C/SIGTERM (which ends the soak early: what was measured is still reported)."""
        seconds = self.opts.interval
        count = max(1, round(self.opts.minutes * 60 / seconds))
        load = Load(self.url, self.opts.connections, seconds, self.bearer(), rate=self.target_rps)
        print(header(), flush=True)
        started = time.monotonic()
        before = await self.counters()
        try:
            for _ in range(count):
                async with asyncio.TaskGroup() as group:
                    result = group.create_task(self.gen.run(load))
                    # under load, 40-80 % of the way through the wrk run
                    resources = group.create_task(self.sample(0.4 * seconds, 0.4 * seconds))
                after = await self.counters()
                deltas = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
                before = after
                interval = Interval(
                    round(time.monotonic() - started, 1),
                    result.result(),
                    self.churn.take(),
                    resources.result(),
                    deltas,
                )
                self.intervals.append(interval)
                print(row(interval), flush=True)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.uncancel() > 0:
                raise
            self.interrupted = True
            say(f"interrupted after {len(self.intervals)} intervals: stopping, then reporting them")


# -- output ----------------------------------------------------------------------------------------
COLUMNS: list[tuple[str, int, Callable[[Interval], str]]] = [
    ("t s", 5, lambda i: f"{i.elapsed_s:.0f}"),
    ("req/s", 6, lambda i: f"{i.load.rps:.0f}"),
    ("p50 ms", 6, lambda i: f"{i.load.p50_ms:.1f}"),
    ("p99 ms", 6, lambda i: f"{i.load.p99_ms:.1f}"),
    ("non-2xx", 7, lambda i: str(i.load.non_2xx)),
    ("sock err", 8, lambda i: str(i.load.socket_errors + i.load.timeouts)),
    ("churn", 5, lambda i: str(i.churn.ticks)),
    ("churn err", 9, lambda i: str(i.churn.errors)),
    ("revoke ms", 9, lambda i: revoke_ms(i.churn)),
    ("revoked 200", 11, lambda i: str(i.churn.revoked_served)),
    ("tw RSS MiB", 10, lambda i: rss_mib(i.resources)),
    ("tw fds", 6, lambda i: str(i.resources.fds)),
    ("fixed fds", 9, lambda i: str(i.resources.fixed_fds)),
    ("vk RSS MiB", 10, lambda i: f"{i.resources.valkey_rss / MIB:.1f}"),
    ("vk used MiB", 11, lambda i: f"{i.resources.valkey_used_memory / MIB:.1f}"),
    ("audit len", 9, lambda i: str(i.resources.audit_stream)),
    ("others", 6, lambda i: f"{i.load.other_cpu_pct:.0f}%"),
]


def rss_mib(resources: Resources) -> str:
    """Marked `*` when sampled while the churn was hashing (argon2 holds 64 MiB meanwhile)."""
    return f"{resources.tokenward_rss / MIB:.1f}" + ("" if resources.argon2_quiet else "*")


def revoke_ms(counts: ChurnCounts) -> str:
    return f"{max(counts.revoke_lags_s) * 1000:.1f}" if counts.revoke_lags_s else "-"


def header() -> str:
    names = "  ".join(name.rjust(width) for name, width, _ in COLUMNS)
    return names + "\n" + "  ".join("-" * width for _, width, _ in COLUMNS)


def row(interval: Interval) -> str:
    return "  ".join(cell(interval).rjust(width) for _, width, cell in COLUMNS)


@dataclass(frozen=True)
class Check:
    name: str
    early: float
    late: float
    change: str
    limit: str
    ok: bool | None  # None: not judged (see the limit text)


def windows(count: int, start: int) -> tuple[slice, slice]:
    """The first and the last third of the intervals from `start` on (one each at least)."""
    width = max(1, (count - start) // 3)
    return slice(start, start + width), slice(count - width, count)


def median(values: Sequence[float | None]) -> float:
    """Of the usable values (None: a sample that does not count); NaN if there are none."""
    usable = [v for v in values if v is not None]
    return statistics.median(usable) if usable else math.nan


def early_late(values: Sequence[float | None], start: int) -> tuple[float, float]:
    early, late = windows(len(values), start)
    return median(values[early]), median(values[late])


def growth_check(name: str, values: Sequence[float | None], start: int, limit: float) -> Check:
    early, late = early_late(values, start)
    if math.isnan(early) or math.isnan(late):
        return Check(name, early, late, "-", "not judged: no usable sample in a window", None)
    growth = late / early - 1 if early else 0.0
    return Check(name, early, late, f"{growth:+.1%}", f"<= +{limit:.0%}", growth <= limit)


def warmup_rows(soak: Soak) -> int:
    """Intervals the verdict leaves out: those within --warmup, but never more than half."""
    count = len(soak.intervals)
    return max(0, min(math.ceil(soak.opts.warmup / soak.opts.interval), (count - 1) // 2))


def checks(soak: Soak) -> list[Check]:
    rows, start = soak.intervals, warmup_rows(soak)
    res = [i.resources for i in rows]
    found = [growth_check("tokenward RSS MiB", tokenward_rss_mib(soak), start, RSS_GROWTH)]
    early, late = early_late([float(r.fixed_fds) for r in res], start)
    found.append(
        Check(
            "tokenward fixed fds",
            early,
            late,
            f"{late - early:+.0f}",
            f"+-{FD_DRIFT}",
            abs(late - early) <= FD_DRIFT,
        )
    )
    early, late = early_late([i.load.p99_ms for i in rows], start)
    ok = late - early <= max(P99_GROWTH * early, P99_SLACK_MS)
    limit = f"<= +{P99_GROWTH:.0%} or +{P99_SLACK_MS:g} ms"
    found.append(Check("p99 ms", early, late, f"{late - early:+.1f} ms", limit, ok))
    early, late = early_late([i.load.rps for i in rows], start)
    short = 1 - late / soak.target_rps
    limit = f">= {1 - RATE_SHORTFALL:.0%} of {soak.target_rps:.0f}"
    found.append(
        Check("req/s (kept up)", early, late, f"{late / soak.target_rps:.1%}", limit, short <= RATE_SHORTFALL)
    )
    found.append(valkey_check(soak, start))
    return found


def valkey_check(soak: Soak, start: int) -> Check:
    """Valkey grows until the audit stream reaches its cap (audit.stream_maxlen); judged after."""
    used = [i.resources.valkey_used_memory / MIB for i in soak.intervals]
    full = [n for n, i in enumerate(soak.intervals) if i.resources.audit_stream >= AUDIT_STREAM_MAXLEN]
    name = "Valkey used MiB"
    if not full or full[0] > len(used) - 2:
        early, late = used[start], used[-1]
        stream = soak.intervals[-1].resources.audit_stream
        limit = f"not judged: audit stream {stream:,} of {AUDIT_STREAM_MAXLEN:,}, still filling"
        return Check(name, early, late, f"{late / early - 1:+.1%}", limit, None)
    check = growth_check(name, used, max(start, full[0]), VALKEY_GROWTH)
    at = soak.intervals[full[0]].elapsed_s
    return Check(
        name,
        check.early,
        check.late,
        check.change,
        f"{check.limit} once the stream is full ({at:.0f}s)",
        check.ok,
    )


def fd_kinds(soak: Soak, start: int) -> str:
    """Which connections or files a change in the fd count is made of."""
    kinds = soak.intervals[0].resources.tokenward_fds
    moves = []
    for kind in kinds:
        early, late = early_late([float(i.resources.tokenward_fds[kind]) for i in soak.intervals], start)
        moves.append(f"{kind} {early:.0f} -> {late:.0f}")
    return ", ".join(moves)


def error_totals(soak: Soak) -> dict[str, int]:
    rows = soak.intervals
    return {
        "non-2xx": sum(i.load.non_2xx for i in rows),
        "socket errors": sum(i.load.socket_errors + i.load.timeouts for i in rows),
        "churn errors": sum(i.churn.errors for i in rows),
        "revoked tokens served": sum(i.churn.revoked_served for i in rows),
        "store errors": round(sum(i.counters.get("store_errors", 0.0) for i in rows)),
    }


def tokenward_rss_mib(soak: Soak) -> list[float | None]:
    """None for the samples taken while the churn was hashing: argon2 holds 64 MiB meanwhile."""
    return [i.resources.tokenward_rss / MIB if i.resources.argon2_quiet else None for i in soak.intervals]


def rss_slope(soak: Soak) -> float:
    """tokenward RSS trend after the warm-up, MiB per minute (least squares, usable samples)."""
    start = warmup_rows(soak)
    points = [
        (i.elapsed_s / 60, rss)
        for i, rss in zip(soak.intervals[start:], tokenward_rss_mib(soak)[start:], strict=True)
        if rss is not None
    ]
    if len(points) < 2:
        return math.nan
    return statistics.linear_regression([t for t, _ in points], [rss for _, rss in points]).slope


def summary(soak: Soak) -> tuple[list[str], dict[str, Any]]:
    """The summary lines and the same figures for the results file."""
    start = warmup_rows(soak)
    early, late = windows(len(soak.intervals), start)
    found = checks(soak)
    errors = error_totals(soak)
    ticks = sum(i.churn.ticks for i in soak.intervals)
    skipped = sum(i.churn.skipped for i in soak.intervals)
    achieved = statistics.mean(i.load.rps for i in soak.intervals)
    lines = [
        "",
        f"after the warm-up ({start} intervals): early = median of intervals {early.start + 1}-{early.stop}, "
        f"late = median of intervals {late.start + 1}-{late.stop}",
        f"{'':20}  {'early':>8}  {'late':>8}  {'change':>8}  limit",
    ]
    for check in found:
        mark = "" if check.ok is None else "  ok" if check.ok else "  NOT FLAT"
        lines.append(
            f"{check.name:20}  {check.early:8.1f}  {check.late:8.1f}  {check.change:>8}  {check.limit}{mark}"
        )
    lines.append(f"tokenward RSS trend after the warm-up: {rss_slope(soak):+.2f} MiB/min")
    lines.append("tokenward fds by kind, early -> late: " + fd_kinds(soak, start))
    lines.append(
        f"load: target {soak.target_rps:.0f} req/s, achieved {achieved:.0f} on average ({achieved / soak.target_rps:.1%}); "
        f"churn: {ticks} ticks completed in {soak.intervals[-1].elapsed_s:.0f}s, {skipped} skipped"
    )
    lines.append(
        "errors over the whole soak: " + ", ".join(f"{name} {count}" for name, count in errors.items())
    )
    failed = [c.name for c in found if c.ok is False] + [name for name, count in errors.items() if count]
    verdict = "FLAT" if not failed else "NOT FLAT: " + ", ".join(failed)
    if soak.interrupted:
        verdict += " (interrupted: a partial soak)"
    lines.append(f"verdict: {verdict}")
    data = {
        "warmup_intervals": start,
        "checks": [asdict(c) for c in found],
        "tokenward_rss_mib_per_min": round(rss_slope(soak), 3),
        "achieved_rps_mean": round(achieved, 1),
        "churn_ticks": ticks,
        "churn_skipped_ticks": skipped,
        "errors": errors,
        "verdict": verdict,
        "flat": not failed,
    }
    return lines, data


def results_json(soak: Soak, summary_data: dict[str, Any], wrk: str, elapsed: float) -> bytes:
    data = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "elapsed_s": round(elapsed, 1),
        "machine": machine_info(wrk_version(wrk)),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(soak.opts).items()},
        "interrupted": soak.interrupted,
        "capacity": soak.capacity.as_dict() if soak.capacity else None,
        "target_rps": soak.target_rps,
        "churn_pool": POOL,
        "audit_stream_maxlen": AUDIT_STREAM_MAXLEN,
        "summary": summary_data,
        "churn_error_messages": soak.churn.error_messages[:50],
        "intervals": [i.as_dict() for i in soak.intervals],
    }
    return orjson.dumps(data, option=orjson.OPT_INDENT_2)


# -- main ------------------------------------------------------------------------------------------
async def build_stack(stack: Stack) -> None:
    """Valkey, the upstream, `tokenward serve`; the tokens are minted by an in-process gateway
    that is stopped again before any load (it would share the store's work otherwise)."""
    say("starting Valkey, upstream, tokenward serve; minting the admin and client tokens …")
    start_valkey(stack)
    start_upstream(stack)
    start_tokenward(stack)
    await start_inproc_gateway(stack)
    await seed(stack, cold_tokens=0)
    await stack.stop_inproc()
    await expect_status(stack.tokenward_url + ROUTE_PATH, stack.creds.legit, 200)


async def run_soak(stack: Stack, gen: LoadGenerator, opts: Options) -> Soak:
    assert stack.valkey is not None
    valkey = redis.Redis.from_url(stack.valkey.url)
    async with aiohttp.ClientSession() as session:
        admin = AdminClient(session, stack.tokenward_admin_url, stack.creds.admin)
        churn = Churn(admin, session, stack.tokenward_url + ROUTE_PATH)
        soak = Soak(stack, gen, churn, valkey, opts)
        churn_task = asyncio.create_task(churn.run(), name="soak-churn")
        try:
            await soak.measure_capacity()
            assert soak.capacity is not None
            say(
                f"capacity {soak.capacity.rps:.0f} req/s (p99 {soak.capacity.p99_ms:.1f} ms, "
                f"others {soak.capacity.other_cpu_pct:.0f}%); "
                f"soak at {opts.share:.0%} = {soak.target_rps:.0f} req/s for {opts.minutes:g} min, "
                f"a line every {opts.interval:g}s"
            )
            await soak.run_intervals()
        finally:
            churn_task.cancel()
            await asyncio.gather(churn_task, return_exceptions=True)
            await valkey.aclose()
    return soak


def audit_log_note(stack: Stack) -> str:
    assert stack.tokenward_log is not None
    size = stack.tokenward_log.stat().st_size / 1e6
    return f"tokenward serve wrote {size:.0f} MB of JSON log lines (to a file in a temp dir, removed at exit)"


async def main_async(opts: Options) -> int:
    started = time.perf_counter()
    wrk = ensure_wrk()
    processes = Processes()
    stack = Stack(Path(tempfile.mkdtemp(prefix="tokenward-soak-")), processes)
    try:
        await build_stack(stack)
        soak = await run_soak(stack, LoadGenerator(wrk, processes), opts)
        note = audit_log_note(stack)
    finally:
        await stack.close()
        shutil.rmtree(stack.workdir, ignore_errors=True)
    if not soak.intervals:
        say("no interval was completed: nothing to report")
        return 130
    lines, data = summary(soak)
    print("\n".join([*lines, f"note: {note}"]))
    opts.output.write_bytes(results_json(soak, data, wrk, time.perf_counter() - started))
    say(f"\nwrote {opts.output} ({time.perf_counter() - started:.0f}s in all)")
    return 130 if soak.interrupted else 0 if data["flat"] else 1


def main() -> None:
    run_main(main_async(parse_args()))


if __name__ == "__main__":
    main()
