"""After a store restart, a dead pooled connection must cost no request: once the store
answers PING again, every request succeeds, however large the connection pool had grown,
for one server (`url`), Redis Sentinel and Redis Cluster.

Timing-free: the assertions are counts of failed requests after the store is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.gateway import APIS, Gateway, LogReader
from tests.helpers.topology import (
    Cluster,
    SentinelSet,
    client,
    drill_config,
    raw,
    start_gateway,
    stop_gateway,
    wait_until,
)
from tokenward.gateway.embedded import EmbeddedServer, free_port
from tokenward.gateway.tokens import generate

BURST = 64  # concurrent requests: the pool grows to its limit (32)
AFTER = 300  # requests counted once the store answers again


async def status_of(gw: Gateway, token: str) -> int:
    try:
        async with gw.session.get(gw.url + APIS, headers=gw.auth(token)) as r:
            await r.read()
            return r.status
    except Exception:
        return 599


async def prepared(gw: Gateway) -> tuple[list[str], list[str]]:
    await gw.team("platform", ["read:apis"])
    valid = [(await gw.token("platform", ["read:apis"]))[0] for _ in range(4)]
    unknown = [generate("tw_sat")[0] for _ in range(BURST)]
    return valid, unknown


async def grow_pool(gw: Gateway, valid: list[str], unknown: list[str]) -> None:
    tokens = valid + unknown
    statuses = await asyncio.gather(*(status_of(gw, tokens[i % len(tokens)]) for i in range(BURST)))
    assert sorted(set(statuses)) == [200, 401]


async def failures_after_recovery(gw: Gateway, valid: list[str], unknown: list[str]) -> list[int]:
    """AFTER requests (half one by one, half in concurrent bursts): the statuses that are
    not the right answer (200 for a valid token, 401 for an unknown one)."""
    tokens = valid + unknown
    sent = [tokens[i % len(tokens)] for i in range(AFTER)]
    statuses = [await status_of(gw, token) for token in sent[: AFTER // 2]]
    for start in range(AFTER // 2, AFTER, BURST):
        statuses += await asyncio.gather(*(status_of(gw, token) for token in sent[start : start + BURST]))
    return [
        status
        for token, status in zip(sent, statuses, strict=True)
        if status != (200 if token in valid else 401)
    ]


async def failed_admin_writes(gw: Gateway, admin: str, count: int = 10) -> list[int]:
    """`count` admin writes (issue a token, each on a pinned connection of the pool, and
    revoke it) right after the store is back: the statuses that are not success."""
    auth = gw.auth(admin)
    wrong = []
    for i in range(count):
        url = f"{gw.admin_url}/v1/orgs/acme/teams/platform/tokens"
        async with gw.session.post(
            url, json={"name": f"after-{i}", "scopes": ["read:apis"]}, headers=auth
        ) as r:
            if r.status != 201:
                wrong.append(r.status)
                continue
            key_id = (await r.json())["id"]
        async with gw.session.post(f"{url}/{key_id}/revoke", headers=auth) as r:
            if r.status != 200:
                wrong.append(r.status)
    return wrong


async def grow_admin_connections(gw: Gateway, admin: str) -> None:
    """Concurrent admin writes: several pinned connections in the pool(s)."""
    url = f"{gw.admin_url}/v1/orgs/acme/teams/platform/tokens"

    async def one(i: int) -> int:
        async with gw.session.post(
            url, json={"name": f"grow-{i}", "scopes": ["read:apis"]}, headers=gw.auth(admin)
        ) as r:
            return r.status

    assert set(await asyncio.gather(*(one(i) for i in range(16)))) == {201}


def store_errors(logs: LogReader) -> list[dict[str, Any]]:
    """What the gateway logged about the store: the cause, when a test fails."""
    return [
        e
        for e in logs.events()
        if str(e.get("logger", "")).startswith("tokenward.store") or "store" in e["event"]
    ]


def replica_online(master_port: int) -> bool:
    """The master sees a replica in sync (admin writes wait for one: WAIT 1)."""
    info = client(master_port).info("replication")
    return any(
        isinstance(v, dict) and v.get("state") == "online" for k, v in info.items() if k.startswith("slave")
    )


def connected_clients(port: int) -> int:
    return int(client(port).info("clients")["connected_clients"])


def restart(server: EmbeddedServer) -> None:
    server.stop()
    server.start()


# -- one server ------------------------------------------------------------------------------
async def test_no_failed_request_after_a_restart_of_one_server(
    start_gateway: Any, config: dict[str, Any], tmp_path: Path
) -> None:
    server = EmbeddedServer(tmp_path / "store", port=free_port())
    server.start()
    try:
        gw = await start_gateway(drill_config(config, {}), url=server.url)
        valid, unknown = await prepared(gw)
        admin = await gw.org_admin()
        assert server.port is not None
        for _ in range(3):  # three restarts, each with a full pool
            await grow_admin_connections(gw, admin)
            await grow_pool(gw, valid, unknown)
            assert connected_clients(server.port) >= 8  # the pool grew
            restart(server)
            wait_until(lambda: bool(client(server.port or 0).ping()), "the store to answer")
            assert await failed_admin_writes(gw, admin) == []
            assert await failures_after_recovery(gw, valid, unknown) == []
    finally:
        server.stop()


async def test_the_embedded_unix_socket_store_recovers_too(
    start_gateway: Any, config: dict[str, Any], tmp_path: Path
) -> None:
    server = EmbeddedServer(tmp_path / "store")
    server.start()
    try:
        gw = await start_gateway(drill_config(config, {}), url=server.url)
        valid, unknown = await prepared(gw)
        await grow_pool(gw, valid, unknown)
        restart(server)
        assert await failures_after_recovery(gw, valid, unknown) == []
    finally:
        server.stop()


# -- Sentinel --------------------------------------------------------------------------------
@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    topology = SentinelSet(tmp_path / "sentinel")
    topology.start()
    # a restart of the master, not a failover: the sentinels must not give up on it meanwhile
    for sentinel in topology.sentinels:
        raw(sentinel.port or 0, "SENTINEL", "SET", topology.name, "down-after-milliseconds", "60000")
    yield topology
    topology.stop()


async def test_no_failed_request_after_a_restart_of_the_sentinel_master(
    sentinels: SentinelSet, config: dict[str, Any]
) -> None:
    gw = await start_gateway(
        drill_config(config, {"sentinel": {"master": sentinels.name, "nodes": sentinels.nodes}})
    )
    try:
        valid, unknown = await prepared(gw)
        admin = await gw.org_admin()
        port = sentinels.master.port or 0
        await grow_admin_connections(gw, admin)
        await grow_pool(gw, valid, unknown)
        assert connected_clients(port) >= 8
        restart(sentinels.master)
        wait_until(lambda: client(port).info("replication")["role"] == "master", "the master to answer")
        wait_until(lambda: replica_online(port), "the replica to be in sync again")
        assert sentinels.current_master() == port  # restarted, not failed over
        assert await failed_admin_writes(gw, admin) == []
        assert await failures_after_recovery(gw, valid, unknown) == []
    finally:
        await stop_gateway(gw)


# -- Cluster ---------------------------------------------------------------------------------
@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    topology = Cluster(tmp_path / "cluster")
    topology.start()
    # a restart of a master, not a failover: its replica must not take over meanwhile
    for port in topology.ports:
        raw(port, "CONFIG", "SET", "cluster-node-timeout", "60000")
    yield topology
    topology.stop()


@pytest.fixture
async def cluster_gateway(cluster: Cluster, config: dict[str, Any]) -> AsyncIterator[Gateway]:
    gw = await start_gateway(drill_config(config, {"cluster": {"nodes": cluster.seeds}}))
    yield gw
    await stop_gateway(gw)


async def test_no_failed_request_after_a_restart_of_every_cluster_master(
    logs: LogReader, cluster: Cluster, cluster_gateway: Gateway
) -> None:
    gw = cluster_gateway
    valid, unknown = await prepared(gw)
    admin = await gw.org_admin()
    masters = cluster.ports[: cluster.master_count]
    for port in masters:
        await grow_admin_connections(gw, admin)
        await grow_pool(gw, valid, unknown)
        restart(cluster.servers[port])
        wait_until(cluster.healthy, "the cluster to be whole again")
        wait_until(lambda port=port: replica_online(port), "its replica to be in sync again")
        assert sorted(p for p in cluster.live if "master" in cluster.view_of(p)["flags"]) == sorted(
            masters
        )  # restarted, not failed over
        assert await failed_admin_writes(gw, admin) == [], store_errors(logs)
        assert await failures_after_recovery(gw, valid, unknown) == [], store_errors(logs)
