"""Child processes of the benchmark: started pinned to a core, stopped on every exit path."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import IO, Any

import aiohttp

from tokenward.gateway.embedded import free_ports

from observe import process_trees

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")
TOKENWARD = str(ROOT / ".venv" / "bin" / "tokenward")
BENCH = ROOT / "bench"
SERVER_CORE = 0
CLIENT_CORE = 1
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark itself dies (even SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def pinned(core: int | None, argv: list[str]) -> list[str]:
    return argv if core is None else ["taskset", "-c", str(core), *argv]


def pin_all_threads(pid: int, core: int) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(pid)], check=True, capture_output=True)


class Processes:
    """Every process the benchmark starts; `stop_all` ends them (by pid) in reverse order."""

    def __init__(self) -> None:
        self._running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(
        self,
        name: str,
        argv: list[str],
        core: int | None,
        stdout: IO[bytes] | int = subprocess.DEVNULL,
        stderr: IO[bytes] | int = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            pinned(core, argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children ourselves
            preexec_fn=_die_with_parent,  # spawned from the main thread only (PDEATHSIG is per thread)
        )
        self._running.append((name, process))
        return process

    def adopt(self, name: str, process: subprocess.Popen[bytes]) -> None:
        """A process started elsewhere (the Valkey server) that we also account and stop."""
        self._running.append((name, process))

    def pids(self) -> list[int]:
        return [p.pid for _, p in self._running if p.poll() is None]

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._running = [(n, p) for n, p in self._running if p is not process]

    def stop_all(self) -> None:
        for _, process in reversed(list(self._running)):
            self.stop(process)


def free_port() -> int:
    return free_ports(1)[0]


def wait_http(url: str, process: subprocess.Popen[bytes], name: str, timeout: float = 30.0) -> None:
    """Until `url` answers 200; fails early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode} during start-up")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not answer {url} within {timeout:.0f}s")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def cores() -> int:
    return os.cpu_count() or 1


def machine_info(wrk_version: str) -> dict[str, Any]:
    """What the figures were measured on, for the results files."""
    return {
        "cpu": cpu_model(),
        "cores": cores(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "wrk": wrk_version,
        "server_core": SERVER_CORE,
        "client_core": CLIENT_CORE,
    }


def say(message: str) -> None:
    """Progress goes to stderr; results go to stdout."""
    print(message, file=sys.stderr, flush=True)


def run_main(main: Coroutine[Any, Any, int | None]) -> None:
    """Run a benchmark's main coroutine on uvloop (as `tokenward serve` does) and exit with
    its status. SIGTERM and Ctrl-C cancel it, so its `finally` blocks stop every process it
    started (a coroutine may also catch the cancellation, report what it has and return)."""

    async def until_signalled() -> int | None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main

    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            status = runner.run(until_signalled())
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted: every process the benchmark started has been stopped")
        sys.exit(130)
    sys.exit(status)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_quiet(pid: int, busy: float = 0.1, window: float = 0.5, timeout: float = 120.0) -> float:
    """Seconds until the process uses less than `busy` of a core over `window` (work queued
    by a load, e.g. argon2 verifications, goes on after the load generator stops)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        await asyncio.sleep(window)
        if cpu_seconds(pid) - before < busy * window:
            break
    return max(0.0, time.monotonic() - started - window)


def core_busy_seconds(core: int) -> float:
    """CPU time (user + nice + system + irq + softirq) one core has spent."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            fields = line.split()
            return sum(int(fields[i]) for i in (1, 2, 3, 6, 7)) / os.sysconf("SC_CLK_TCK")
    return 0.0


async def wait_core_quiet(core: int, busy: float = 0.15, window: float = 0.5, timeout: float = 60.0) -> float:
    """Seconds until `core` is less than `busy` used over `window`: what a load left behind
    (the store's append-only-file rewrite after a run's audit stream, a log still being
    written) must not land on the next server measured on that core."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = core_busy_seconds(core)
        await asyncio.sleep(window)
        if core_busy_seconds(core) - before < busy * window:
            break
    return max(0.0, time.monotonic() - started - window)


def machine_busy_seconds() -> float:
    """CPU time (user + nice + system) the whole machine has spent, all cores."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    return sum(int(v) for v in fields[1:4]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """How busy the machine was with processes that are not the benchmark's own (another
    user's test run skews every figure here: two cores are all there is)."""

    def __init__(self, processes: Processes) -> None:
        self.processes = processes

    def _own_seconds(self) -> float:
        times = os.times()  # this process's threads, and children already reaped (wrk)
        own = times.user + times.system + times.children_user + times.children_system
        for pid in process_trees(self.processes.pids()):  # a supervisor's workers too
            with contextlib.suppress(OSError, ValueError, IndexError):
                own += cpu_seconds(pid)
        return own

    def snapshot(self) -> tuple[float, float, float]:
        return time.monotonic(), machine_busy_seconds(), self._own_seconds()

    @staticmethod
    def other_share(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
        """Share of the machine's cores used by others between two snapshots (0..1)."""
        elapsed = after[0] - before[0]
        other = (after[1] - before[1]) - (after[2] - before[2])
        return max(0.0, other / (elapsed * cores())) if elapsed > 0 else 0.0
