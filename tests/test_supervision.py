"""Supervision: what tokenward does when one of its own processes dies or cannot start.

- the embedded store killed under `serve`: restarted (with backoff, and a log line), /readyz
  comes back and the tokens are still there;
- `serve --workers N` with the supervisor killed -9: no worker (nor the store) outlives it;
- a worker that cannot bind: one log line, exit status 1, nothing left behind;
- a worker crashing later: restarted with crash-loop backoff;
- SIGTERM with a hung worker: the supervisor still exits, killing it after the drain time.

Assertions are counts (processes left, restarts, log lines), never timings; waits for a
state have generous caps only so that a broken build fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.helpers.gateway import APIS, LogReader, base_config
from tests.helpers.process import ServeConfig, env_for_subprocess, serve_config, start_serve
from tokenward.gateway.records import TeamRecord
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.settings import settings_from_dict
from tokenward.server import Server
from tokenward.service import issue_token

CAP = 60.0  # seconds: only so that a broken build fails instead of hanging
MARK = "TOKENWARD_TEST_DEPLOYMENT"


async def until(check: Any, what: str, cap: float = CAP) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cap
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.05)


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def processes_marked(mark: str) -> list[int]:
    """Live processes started with MARK=`mark` in their environment (inherited by every
    process a `serve` starts: workers, the store, multiprocessing's helpers)."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if needle in environ and alive(int(entry)):
            found.append(int(entry))
    return found


# -- (a) the embedded store under a single `serve` ---------------------------------------------
@pytest.fixture
async def embedded_server(tmp_path: Path, upstream: int) -> AsyncIterator[Server]:
    config = base_config(upstream)
    config["data_dir"] = str(tmp_path / "data")
    config["tokens"]["cache_ttl"] = "0s"  # every request reads the store
    config["redis"] = {"stale_if_error": "0s"}
    server = Server(settings_from_dict(copy.deepcopy(config), "test"), shutdown_timeout=1.0)
    await server.start()
    yield server
    await server.stop()


async def test_the_embedded_store_is_restarted_when_it_dies(embedded_server: Server, logs: LogReader) -> None:
    server = embedded_server
    runtime = server.runtime
    assert runtime is not None and runtime.embedded is not None
    await runtime.store.create_team(TeamRecord("acme", "platform", parse_scopes(["read:apis"]), 0.0, "t"))
    token, _ = await issue_token(
        runtime, org="acme", team="platform", name="t", scopes=parse_scopes(["read:apis"]), created_by="test"
    )
    proxy, admin = f"http://127.0.0.1:{server.proxy_port}", f"http://127.0.0.1:{server.admin_port}"
    async with aiohttp.ClientSession() as session:

        async def status(url: str, headers: dict[str, str] | None = None) -> int:
            async with session.get(url, headers=headers) as r:
                return r.status

        auth = {"Authorization": f"Bearer {token}"}
        assert await status(proxy + APIS, auth) == 200
        for kills in (1, 2):
            process = runtime.embedded.process
            assert process is not None
            os.kill(process.pid, signal.SIGKILL)

            async def back(kills: int = kills) -> bool:
                return server.store_restarts == kills and await status(admin + "/readyz") == 200

            await until(back, f"the store restarted ({kills}) and /readyz 200")
            assert await status(proxy + APIS, auth) == 200  # durable: the token survived
    events = [e["event"] for e in logs.events()]
    assert events.count("embedded store exited; restarting it") == 2
    assert events.count("embedded store restarted") == 2


# -- serve --workers as real processes ---------------------------------------------------------
class Served:
    def __init__(self, served: ServeConfig, log_path: Path, process: asyncio.subprocess.Process) -> None:
        self.served, self.log_path, self.process = served, log_path, process

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in self.log_path.read_bytes().splitlines() if x.startswith(b"{")]

    def worker_pids(self) -> set[int]:
        return {e["pid"] for e in self.events() if e.get("event") == "tokenward started"}

    async def exited(self, cap: float = CAP) -> int:
        return await asyncio.wait_for(self.process.wait(), cap)

    def left_behind(self) -> list[int]:
        """Processes of this deployment still alive: those started with its mark, and its
        store (Valkey overwrites its environment with its process title, but runs in the data
        dir)."""
        return sorted(set(processes_marked(str(self.served.path))) | set(self.stores()))

    def stores(self) -> list[int]:
        data_dir = str(Path(self.served.config["data_dir"]).resolve())
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/cwd") == data_dir and alive(int(entry)):
                        found.append(int(entry))
                except OSError:
                    continue
        return found

    async def nothing_left(self) -> None:
        """Every process of this deployment gone (multiprocessing's resource tracker leaves
        a moment after the supervisor; anything else left would be a leak: the cap fails it)."""

        async def gone() -> bool:
            return not self.left_behind()

        await until(gone, "every process of the deployment to exit", cap=20.0)


STARTED: list[Served] = []


@pytest.fixture(autouse=True)
def _clean_up() -> Any:
    """After each test (and its assertions): kill whatever a failed test left running."""
    yield
    while STARTED:
        run = STARTED.pop()
        if run.process.returncode is None:
            run.process.kill()
        for pid in run.left_behind():
            os.kill(pid, signal.SIGKILL)


async def serve(tmp_path: Path, served: ServeConfig, *args: str) -> Served:
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        env = {**env_for_subprocess(), MARK: str(served.path)}
        process = await start_serve(served.path, *args, env=env, stdout=log_file)
    STARTED.append(Served(served, log_path, process))
    return STARTED[-1]


async def workers_up(run: Served, count: int) -> None:
    async def up() -> bool:
        if run.process.returncode is not None:
            raise AssertionError(
                f"serve exited with {run.process.returncode}: {run.log_path.read_text()[-2000:]}"
            )
        return len(run.worker_pids()) >= count

    await until(up, f"{count} workers started")


async def test_workers_die_with_a_killed_supervisor(tmp_path: Path, upstream: int) -> None:
    served = serve_config(tmp_path, upstream)
    run = await serve(tmp_path, served, "--workers", "2")
    await workers_up(run, 2)
    pids = run.worker_pids()
    assert all(alive(pid) for pid in pids)
    run.process.send_signal(signal.SIGKILL)
    await run.exited()

    async def all_gone() -> bool:
        return not any(alive(pid) for pid in pids) and not run.left_behind()

    await until(all_gone, "every worker and the store to stop")
    with socket.socket() as probe:  # nobody serves the port any more
        assert probe.connect_ex(("127.0.0.1", served.port)) != 0


async def test_a_worker_that_cannot_bind_stops_the_supervisor_with_status_1(
    tmp_path: Path, upstream: int
) -> None:
    served = serve_config(tmp_path, upstream)
    with socket.socket() as taken:  # the proxy port, held without SO_REUSEPORT
        taken.bind(("127.0.0.1", served.port))
        taken.listen()
        run = await serve(tmp_path, served, "--workers", "2")
        assert await run.exited() == 1
    events = run.events()
    assert [e["event"] for e in events].count("worker failed to start; stopping") == 1
    assert not any(e["event"] == "tokenward started" for e in events)
    await run.nothing_left()


async def test_a_single_serve_that_cannot_bind_exits_non_zero(tmp_path: Path, upstream: int) -> None:
    served = serve_config(tmp_path, upstream)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", served.admin_port))
        taken.listen()
        run = await serve(tmp_path, served)
        assert await run.exited() != 0
    await run.nothing_left()


async def test_a_crashing_worker_is_restarted_with_backoff(tmp_path: Path, upstream: int) -> None:
    served = serve_config(tmp_path, upstream)
    run = await serve(tmp_path, served, "--workers", "2")
    await workers_up(run, 2)
    for kills in (1, 2, 3):
        victim = [e["pid"] for e in run.events() if e.get("event") == "tokenward started"][-1]
        os.kill(victim, signal.SIGKILL)
        await workers_up(run, 2 + kills)  # a new worker started in its place
    restarts = [e for e in run.events() if e["event"] == "worker exited; restarting"]
    assert [e["restart_in_s"] for e in restarts] == [0.5, 1.0, 2.0]  # the same worker, in a row
    assert all(e["exitcode"] == -signal.SIGKILL for e in restarts)
    run.process.send_signal(signal.SIGTERM)
    assert await run.exited() == 0
    await run.nothing_left()


async def test_sigterm_finishes_with_a_hung_worker(tmp_path: Path, upstream: int) -> None:
    served = serve_config(tmp_path, upstream)
    run = await serve(tmp_path, served, "--workers", "2", "--drain-timeout", "1")
    await workers_up(run, 2)
    hung = min(run.worker_pids())
    os.kill(hung, signal.SIGSTOP)  # alive, deaf to SIGTERM
    run.process.send_signal(signal.SIGTERM)
    assert await run.exited(cap=30.0) == 0  # the drain time (1 s) + grace (5 s), then SIGKILL
    events = [e["event"] for e in run.events()]
    assert events.count("worker did not stop in time; killed") == 1
    assert not alive(hung)
    await run.nothing_left()


async def test_the_supervisor_restarts_its_embedded_store(tmp_path: Path, upstream: int) -> None:
    served = serve_config(tmp_path, upstream)
    run = await serve(tmp_path, served, "--workers", "2")
    await workers_up(run, 2)
    stores = run.stores()
    assert len(stores) == 1
    os.kill(stores[0], signal.SIGKILL)
    async with aiohttp.ClientSession() as session:

        async def ready_again() -> bool:
            if "embedded store restarted" not in [e["event"] for e in run.events()]:
                return False
            async with session.get(served.admin_url + "/readyz") as r:
                return r.status == 200

        await until(ready_again, "the store restarted and /readyz 200")
    events = [e["event"] for e in run.events()]
    assert events.count("embedded store exited; restarting it") == 1
    run.process.send_signal(signal.SIGTERM)
    assert await run.exited() == 0
    await run.nothing_left()
