"""Optional: sample `tokenward serve` with py-spy under load and summarize where time goes:
by area (upstream client, inbound HTTP server, tokenward's code, store client, event loop,
other), by
function (own time) and by tokenward function (inclusive time). See bench/README.md."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from loadgen import Load, LoadGenerator
from services import ROOT, Processes, cpu_seconds, say
from stack import ROUTE_PATH, Stack

VENV_PY_SPY = ROOT / ".venv" / "bin" / "py-spy"
SECONDS = 10
_LINE_NUMBER = re.compile(r":\d+\)$")
_FRAME = re.compile(r"^(.*) \((.*)\)$")
_TOKENWARD_FILE = re.compile(r"(?:^|/)tokenward/(gateway/)?(\w+\.py)$")  # installed, or the editable link tree
_REPOSITORY_FILE = re.compile(r"(?:^|/)((?:gateway|admin)/\w+\.py)$")  # a checkout on the path
_LIBRARY_DIR = re.compile(r"^.*/(?:site-packages|lib/python3\.\d+)/")
_OURS = re.compile(r"\((gateway|admin)/")
_ROOTS = re.compile(r"^(run|main|cmd_serve|_worker_main) \(")

# Areas, by the file of a sample's innermost Python frame (first match wins). uvloop runs the
# loop in C: its time shows under the innermost Python frame below it, asyncio's Runner.run.
AREAS: list[tuple[str, str, re.Pattern[str]]] = [
    ("upstream_client", "upstream client (gateway/upstream*.py, httptools)", re.compile(r"^(gateway/upstream\w*\.py|httptools/)")),
    (
        "inbound_server",
        "inbound HTTP server (aiohttp, multidict, yarl; gateway/listener.py)",
        re.compile(r"^(aiohttp|multidict|yarl|propcache)/|^gateway/listener\.py$"),
    ),
    # the held replies and upstream request heads, written together: the kernel's send, mostly
    ("socket_writes", "socket writes (gateway/outbox.py)", re.compile(r"^gateway/outbox\.py$")),
    ("tokenward", "tokenward's own code (gateway/, admin/)", re.compile(r"^(gateway|admin)/")),
    ("store_client", "store client (redis-py: audit stream, usage)", re.compile(r"^redis/")),
    ("event_loop", "event loop (asyncio, uvloop, selectors)", re.compile(r"^(asyncio|uvloop)/|^selectors\.py$")),
]
OTHER = ("other", "other (log writer thread, logging, json, ...)")
# asyncio's streams, locks and queues count as the caller's (redis-py writes through streams)
_ON_BEHALF = re.compile(r"\(asyncio/(streams|locks|queues)\.py\)$")
# a thread blocked on a lock or condition (the log writer between batches): waiting, not
# working, though py-spy --nonblocking samples it; left out of every share
_WAITING = re.compile(r"^(\w+\.)?(wait|_wait_for_tstate_lock) \(threading\.py\)$")


def find_py_spy() -> str:
    """py-spy in the project's venv, else on PATH; it is no dependency of tokenward."""
    for candidate in (str(VENV_PY_SPY), shutil.which("py-spy")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")


def start_recording(processes: Processes, pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    argv = [find_py_spy(), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200"]
    argv += ["--nonblocking", "--format", "raw", "--output", str(out)]
    return processes.spawn("py-spy", argv, None)


def short_path(path: str) -> str:
    """A frame's file as the repository names it (gateway/app.py, admin/server.py) or from
    its library's folder (aiohttp/web_protocol.py, asyncio/events.py)."""
    ours = _TOKENWARD_FILE.search(path)
    if ours:
        return ("gateway/" if ours.group(1) else "admin/") + ours.group(2)
    checkout = _REPOSITORY_FILE.search(path)
    if checkout:
        return checkout.group(1)
    return _LIBRARY_DIR.sub("", path)


def _frame(name: str) -> str:
    """'handle (/…/tokenward/gateway/app.py:123)' -> 'handle (gateway/app.py)'."""
    match = _FRAME.match(_LINE_NUMBER.sub(")", name))
    return f"{match.group(1)} ({short_path(match.group(2))})" if match else name


def area_of(frames: list[str]) -> str:
    """The area key of a sample (its shortened frames, outermost first): by the file of its
    innermost frame, or of the caller of asyncio's stream, lock or queue code."""
    leaf = next((f for f in reversed(frames) if not _ON_BEHALF.search(f)), frames[-1])
    match = _FRAME.match(leaf)
    path = match.group(2) if match else ""
    return next((key for key, _, pattern in AREAS if pattern.search(path)), OTHER[0])


def summarize(raw: Path, top: int = 12) -> dict[str, Any]:
    """Share of samples by area and own time (leaf frames), and inclusive time per function."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        if _WAITING.match(frames[-1]):
            waiting += count
            continue
        total += count
        own[frames[-1]] += count
        areas[area_of(frames)] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)]

    ours = Counter({f: n for f, n in inclusive.items() if _OURS.search(f) and not _ROOTS.search(f)})
    if not total:
        return {}
    labels = dict([(key, label) for key, label, _ in AREAS] + [OTHER])
    return {
        "samples": total,
        "waiting_samples": waiting,
        "areas_pct": [[key, labels[key], round(100 * areas[key] / total, 1)] for key in labels],
        "own_pct": share(own),
        "inclusive_pct": share(inclusive),
        "tokenward_inclusive_pct": share(ours),
    }


async def profile(gen: LoadGenerator, stack: Stack, connections: int, seconds: int = SECONDS) -> dict[str, Any]:
    """py-spy on `tokenward serve` for `seconds` under cached-token load (wrk runs a second
    longer), and the process's CPU time per request over the load."""
    assert stack.tokenward is not None
    pid = stack.tokenward.pid
    raw = stack.workdir / "py-spy.txt"
    say(f"profile: py-spy on tokenward serve for {seconds}s under cached-token load")
    recorder = start_recording(stack.processes, pid, seconds, raw)
    load = Load(stack.tokenward_url + ROUTE_PATH, connections, seconds + 1, f"Bearer {stack.creds.legit}")
    cpu = cpu_seconds(pid)
    result = await gen.run(load)
    cpu = cpu_seconds(pid) - cpu
    await asyncio.to_thread(recorder.wait)
    summary = summarize(raw) if raw.exists() else {}
    if not summary:
        return {"error": "py-spy wrote nothing"}
    summary.update(rps=result.rps, cpu_us_per_request=round(1e6 * cpu / max(1, result.requests), 1))
    return summary


def profile_lines(profile: dict[str, Any]) -> list[str]:
    if not profile.get("samples"):
        return [f"py-spy: {profile['error']}"] if profile.get("error") else []
    per_request = profile.get("cpu_us_per_request", 0.0)
    lines = [
        f"py-spy, tokenward serve under cached-token load ({profile['samples']} samples, "
        f"{profile.get('waiting_samples', 0)} of a waiting thread left out; {profile.get('rps', 0):,.0f} req/s, "
        f"{per_request:.0f} µs of CPU per request): by area",
    ]
    lines += [f"  {pct:5.1f}%  {pct * per_request / 100:5.0f} µs  {label}" for _, label, pct in profile["areas_pct"]]
    lines += ["own time"]
    lines += [f"  {pct:5.1f}%  {name}" for name, pct in profile["own_pct"]]
    lines += ["inclusive time in tokenward's own functions"]
    lines += [f"  {pct:5.1f}%  {name}" for name, pct in profile["tokenward_inclusive_pct"]]
    return lines
