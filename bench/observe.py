"""What the benchmarks read from the running system, from outside: the status a request
gets, tokenward's /metrics counters, a process tree's memory and open files, Valkey's memory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import redis.asyncio as redis

from tokenward.gateway.store_keys import Keys


async def expect_status(url: str, token: str, wanted: int) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        await response.read()
        if response.status != wanted:
            raise RuntimeError(f"sanity check: {url} gave {response.status}, expected {wanted}")


async def tokenward_counters(admin_url: str, names: Iterable[str]) -> dict[str, float]:
    """These series from tokenward's Prometheus /metrics, summed over labels (empty if it has none)."""
    wanted = set(names)
    async with aiohttp.ClientSession() as session, session.get(admin_url + "/metrics") as response:
        if response.status != 200:
            return {}
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.partition("{")[0].partition(" ")[0]  # with labels or without
        if name in wanted:
            values[name] = values.get(name, 0.0) + float(line.rpartition(" ")[2])
    return values


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (`tokenward serve --workers N` forks its workers)."""
    return process_trees([pid])


def process_trees(pids: Iterable[int]) -> list[int]:
    """These processes and all their descendants, each once (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    tree: list[int] = []
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            tree.append(current)
            todo.extend(children.get(current, []))
    return tree


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident memory (VmRSS) summed over processes; ones that are gone count 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def _tcp_ports() -> dict[str, tuple[int, int]]:
    """Socket inode -> (local port, remote port), for every TCP socket on the machine."""
    ports: dict[str, tuple[int, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = (int(address.rpartition(":")[2], 16) for address in fields[1:3])
                ports[fields[9]] = (local, remote)
    return ports


def open_fds(pids: Iterable[int], ports: dict[str, int]) -> dict[str, int]:
    """Open file descriptors by kind: TCP connections to or from each of the named `ports`
    (a listening socket counts with its port), other sockets, and everything else."""
    tcp = _tcp_ports()
    counts = dict.fromkeys([*ports, "other sockets", "other"], 0)
    by_port = {port: name for name, port in ports.items()}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    kind = "other"
                    if target.startswith("socket:["):
                        local, remote = tcp.get(target[8:-1], (0, 0))
                        kind = by_port.get(local) or by_port.get(remote) or "other sockets"
                    counts[kind] += 1
    return counts


async def valkey_memory(client: redis.Redis) -> tuple[int, int]:
    """Valkey's `used_memory` (bytes) and the length of tokenward's audit stream."""
    info = await client.info("memory")
    return int(info["used_memory"]), int(await client.xlen(Keys.audit))
