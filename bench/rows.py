"""The load lines of the benchmarks: one wrk run each, or the median of runs that alternate
between the servers compared; and the plain-text table they are printed as."""

from __future__ import annotations

from dataclasses import dataclass, field

from loadgen import Load, LoadGenerator, LoadResult
from services import SERVER_CORE, say, wait_core_quiet


@dataclass
class Row:
    key: str
    label: str
    result: LoadResult
    note: str = ""
    busy_after_s: float = 0.0  # tokenward kept working this long after wrk stopped
    counters: dict[str, float] = field(default_factory=dict)  # /metrics deltas over the load


async def alternating(
    gen: LoadGenerator, loads: list[tuple[str, str, Load]], median_of: str, rounds: int, warmup: float
) -> list[Row]:
    """The servers compared, one run each in turn, `rounds` times; each line is its median
    run (by req/s, or by p99 for paced loads). Run-to-run spread on this shared machine is
    larger than the difference being measured, so one run each is not enough, and
    alternating keeps a slow phase of the machine from landing on one side."""
    runs: dict[str, list[LoadResult]] = {key: [] for key, _, _ in loads}
    waited = 0.0
    for round_ in range(rounds):
        for key, label, load in loads:
            waited += await wait_core_quiet(SERVER_CORE)  # nothing the previous run left behind
            say(f"load: {label} ({load.duration:g}s after {warmup:g}s warm-up), round {round_ + 1}/{rounds}")
            runs[key].append(await gen.measured(load, warmup))
    if waited >= 1.0:
        say(f"  waited {waited:.1f}s in all for the server core to be quiet between runs")
    rows = []
    for key, label, _ in loads:
        results = runs[key]
        ranked = sorted(results, key=lambda r: r.rps if median_of == "rps" else r.p99_ms)
        median = ranked[len(ranked) // 2]
        spread = ", ".join(f"{r.rps:,.0f}" if median_of == "rps" else f"{r.p99_ms:.2f}" for r in results)
        unit = "req/s" if median_of == "rps" else "p99 ms"
        rows.append(Row(key, label, median, f"median of {len(results)} ({unit}: {spread})"))
    return rows


def table(headers: list[str], rows: list[list[str]]) -> str:
    """First column left-aligned, the last one (a note) as it is, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:-1], widths[1:-1], strict=True)]
        return "  ".join([first, *rest, cells[-1]]).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])
