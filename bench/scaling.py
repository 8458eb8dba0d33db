"""`tokenward serve --workers 2` against one process, cached token. See bench/README.md.

Both gateways are started for these lines alone, from the bench's config (own ports, audit
lines to a file each), with an upstream of their own; none of the three is pinned: on this
2-core machine the kernel places the gateway's processes, the upstream and wrk (still on
core 1) on the same two cores, so two workers never get two cores to themselves.
"""

from __future__ import annotations

import copy
import subprocess
from dataclasses import dataclass, field

from tokenward.gateway.embedded import free_ports

from loadgen import Load
from observe import expect_status
from services import BENCH, PYTHON, TOKENWARD, free_port, wait_http
from stack import ROUTE_PATH, Stack, write_config

WORKERS = 2
NOTE = (
    "--workers 2 vs 1 process: neither gateway nor their upstream is pinned; wrk (core 1) and the "
    "upstream share the machine's 2 cores with the workers, so 2 workers never have 2 cores to themselves"
)


@dataclass
class Pair:
    """The two gateways and their upstream, while the lines run."""

    single_url: str = ""
    workers_url: str = ""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


def _start_gateway(stack: Stack, pair: Pair, name: str, upstream_port: int, extra: list[str]) -> str:
    config = copy.deepcopy(stack.config)
    config["listen"]["port"], config["admin_listen"]["port"] = free_ports(2)
    config["upstreams"]["registry"]["url"] = f"http://127.0.0.1:{upstream_port}"
    path = write_config(stack, f"{name}.yaml", config)
    with (stack.workdir / f"{name}.log").open("wb") as log:
        process = stack.processes.spawn(name, [TOKENWARD, "serve", "--config", str(path), *extra], None, log)
    pair.processes.append(process)
    wait_http(f"http://127.0.0.1:{config['admin_listen']['port']}/readyz", process, name)
    return f"http://127.0.0.1:{config['listen']['port']}"


async def start_pair(stack: Stack, workers: int = WORKERS) -> Pair:
    """An unpinned upstream, then `tokenward serve` and `tokenward serve --workers N` on it;
    both answer the cached token 200 before any load."""
    pair = Pair()
    try:
        port = free_port()
        argv = [PYTHON, str(BENCH / "upstream.py"), "--port", str(port)]
        upstream = stack.processes.spawn("upstream (unpinned)", argv, None)
        pair.processes.append(upstream)
        wait_http(f"http://127.0.0.1:{port}/", upstream, "upstream (unpinned)")
        pair.single_url = _start_gateway(stack, pair, "tokenward-single", port, [])
        pair.workers_url = _start_gateway(stack, pair, "tokenward-workers2", port, ["--workers", str(workers)])
        for url in (pair.single_url, pair.workers_url):
            await expect_status(url + ROUTE_PATH, stack.creds.legit, 200)
    except BaseException:
        stop_pair(stack, pair)
        raise
    return pair


def stop_pair(stack: Stack, pair: Pair) -> None:
    for process in reversed(pair.processes):
        stack.processes.stop(process)
    pair.processes.clear()


def loads(stack: Stack, pair: Pair, connections: int, duration: float) -> list[tuple[str, str, Load]]:
    bearer = f"Bearer {stack.creds.legit}"
    return [
        ("workers1", "tokenward, cached, 1 process (unpinned)", Load(pair.single_url + ROUTE_PATH, connections, duration, bearer)),
        (
            "workers2",
            f"tokenward, cached, --workers {WORKERS} (unpinned)",
            Load(pair.workers_url + ROUTE_PATH, connections, duration, bearer),
        ),
    ]
