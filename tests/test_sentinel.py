"""Redis Sentinel: a real master, replica and three sentinels on loopback.

The gateway finds the master through the sentinels; when the master is killed under steady
traffic, the sentinels promote the replica and the gateway follows, with no request wrongly
allowed, no token lost and errors only in the failover window.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers.gateway import Gateway
from tests.helpers.topology import Drill, SentinelSet, drill_config, start_gateway, stop_gateway


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    topology = SentinelSet(tmp_path / "sentinel")
    topology.start()
    yield topology
    topology.stop()


@pytest.fixture
async def gateways(sentinels: SentinelSet, config: dict[str, Any]) -> AsyncIterator[list[Gateway]]:
    settings = drill_config(config, {"sentinel": {"master": sentinels.name, "nodes": sentinels.nodes}})
    started = [await start_gateway(settings), await start_gateway(settings)]
    yield started
    for gw in started:
        await stop_gateway(gw)


async def test_master_failover_under_traffic(sentinels: SentinelSet, gateways: list[Gateway]) -> None:
    drill = Drill(gateways)
    await drill.prepare()
    old_master = sentinels.current_master()
    await drill.run(sentinels.master.kill)
    window = drill.report("sentinel")
    assert window < 20.0
    assert sentinels.current_master() == sentinels.replicas[0].port != old_master
    await drill.check_nothing_lost()
    for gw in gateways:  # one outage, told once, and over
        assert gw.runtime.store.up and gw.runtime.store.outages == 1
        assert gw.runtime.listener.push_connected
    lag = await drill.revoke_propagates()
    print(f"sentinel: a revocation after the failover reached both gateways in {lag * 1000:.0f} ms")


async def test_an_admin_write_returns_only_once_the_replica_has_it(
    sentinels: SentinelSet, gateways: list[Gateway]
) -> None:
    """A token is on the replica when its creator sees it (a failover cannot lose it); with
    the replica stalled, issuance is refused with 503 rather than shown unreplicated."""
    assert gateways[0].runtime.store_description == (
        f"sentinel master 'tokenward' at 127.0.0.1:{sentinels.master.port} (persistence: aof+waitaof)"
    )
    drill = Drill(gateways)
    await drill.prepare(valid=1, revoked=0, unknown=0)
    replica = sentinels.replicas[0]
    assert replica.process is not None and replica.port is not None
    status, body = await drill.issue()
    assert status == 201
    with redis.Redis(host="127.0.0.1", port=replica.port) as conn:
        assert conn.hget(f"tw:tok:{{{body['id']}}}", "data") is not None
    os.kill(replica.process.pid, signal.SIGSTOP)  # connected, but acknowledges nothing
    try:
        started = time.monotonic()
        status, body = await drill.issue()
        assert status == 503 and body["error"] == "store_unavailable"
        assert 1.9 < time.monotonic() - started < 5.0  # WAIT's 2 s
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    status, _ = await drill.issue()
    assert status == 201
