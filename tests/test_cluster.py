"""Redis Cluster: a real 3-master cluster with a replica per master, on loopback.

Every admin and gateway path runs against it (no command crosses slots; the tests marked
`also_on_cluster` run on it too), a change reaches a subscriber on any node, and a master
killed under steady traffic fails over to its replica with no request wrongly allowed, no
token lost and errors only in the failover window.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from tests.helpers.gateway import Gateway
from tests.helpers.topology import Cluster, Drill, drill_config, raw, start_gateway, stop_gateway, wait_until
from tokenward.gateway.settings import ClusterSettings, RedisSettings
from tokenward.gateway.store import Store
from tokenward.gateway.store_changes import Change
from tokenward.gateway.store_connect import connect
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.store_link import StoreUnavailable


def cluster_store(cluster: Cluster) -> Store:
    nodes = tuple(("127.0.0.1", int(seed.split(":")[1])) for seed in cluster.seeds)
    return Store(connect(RedisSettings(cluster=ClusterSettings(nodes))))


async def test_start_up_describes_the_cluster(cluster_gateway: Gateway) -> None:
    runtime = cluster_gateway.runtime
    assert runtime.store.cluster
    assert runtime.store_description == "cluster of 3 masters, 3 replicas (persistence: aof+waitaof)"
    assert runtime.store.waitaof_supported


async def test_a_change_reaches_a_subscriber_on_every_node(cluster: Cluster) -> None:
    """A classic PUBLISH is broadcast over the cluster bus, so a gateway process hears a
    change whichever node its subscription landed on (each new one moves to the next)."""
    store = cluster_store(cluster)
    async with contextlib.AsyncExitStack() as stack:
        subscribers = [await stack.enter_async_context(store.subscription()) for _ in cluster.ports]
        ports = {sub.connection.port for sub in subscribers}
        assert ports == set(cluster.ports)  # one on every node, replicas included
        await store.publish([Change("token", "abc")])
        for sub in subscribers:
            message = None
            deadline = time.monotonic() + 2.0
            while message is None and time.monotonic() < deadline:  # None: the subscribe reply
                message = await sub.get_message(timeout=0.5)
            assert message is not None and Change.decode(message["data"]).ident == "abc"
    await store.close()


async def test_the_audit_stream_follows_its_slot_to_a_new_master(tmp_path: Path) -> None:
    """The gateway's audit writes go on a connection pinned to the stream's master; after a
    failover of that slot the first write meets MOVED, the slots are learnt again, and the
    next flush reaches the new master (the link counts as up again)."""
    cluster = Cluster(tmp_path / "own")  # its own: this test moves a slot
    cluster.start()
    store = cluster_store(cluster)
    try:
        await store.append_audit([b'{"n": 0}'], 1000)
        old = cluster.master_of(Keys.audit)
        heir = cluster.replicas_of(old)[0]
        raw(heir, "CLUSTER", "FAILOVER")
        slot = int(raw(heir, "CLUSTER", "KEYSLOT", Keys.audit))

        def moved() -> bool:  # every node says so, and the old master took the replica's part
            if raw(old, "ROLE")[0] != b"slave":
                return False
            for port in cluster.live:
                owners = [int(m[1]) for start, end, m, *_ in raw(port, "CLUSTER", "SLOTS") if start <= slot <= end]
                if owners != [heir]:
                    return False
            return True

        wait_until(moved, "the failover")
        written, failed = 0, 0
        for n in range(1, 6):  # a flush, then the next ones
            try:
                await store.append_audit([b'{"n": %d}' % n], 1000)
                written += 1
            except StoreUnavailable:
                failed += 1
            await asyncio.sleep(0.05)
        assert failed <= 1 and written >= 4
        rows = await store.read_audit(count=10, reverse=False)
        assert [event["n"] for _, event in rows][-written:] == list(range(6 - written, 6))
    finally:
        await store.close()
        cluster.stop()


# The admin API and the gateway end to end on the cluster run as the same tests as on one
# server: those marked `also_on_cluster` in test_admin_api.py, test_lifecycle.py and
# test_lifecycle_races.py run a second time with their `gateway` on the `cluster` fixture.


async def test_last_used_audit_and_metrics_on_a_cluster(cluster_gateway: Gateway) -> None:
    """Write-behind paths: last_used_at (a script per token, tokens in many slots), the audit
    stream, and the expiring-tokens count that walks every org."""
    gw = cluster_gateway
    await gw.team("platform", ["read:apis"])
    soon = time.time() + 3600
    tokens = [await gw.token("platform", ["read:apis"], expires_at=soon) for _ in range(20)]
    for token, _ in tokens:
        async with gw.session.get(gw.url + "/orgs/acme/teams/platform/apis", headers=gw.auth(token)) as r:
            assert r.status == 200
    await gw.runtime.audit.flush()
    for _, kid in tokens:
        assert await gw.runtime.store.last_used(kid) is not None
    assert len(await gw.runtime.store.read_audit(count=1000)) >= 20
    from tokenward.gateway.metrics import count_expiring

    assert await count_expiring(gw.runtime) == 20


async def test_master_failover_under_traffic(tmp_path: Path, config: dict[str, Any]) -> None:
    cluster = Cluster(tmp_path / "cluster")
    cluster.start()
    gateways: list[Gateway] = []
    try:
        settings = drill_config(config, {"cluster": {"nodes": cluster.seeds}})
        gateways = [await start_gateway(settings), await start_gateway(settings)]
        drill = Drill(gateways)
        await drill.prepare()
        # the master of the org's slot: team records (read on every request) and the indexes
        victim = cluster.master_of(Keys.teams("acme"))
        heir = cluster.replicas_of(victim)[0]
        await drill.run(lambda: cluster.kill(victim))
        window = drill.report("cluster")
        assert window < 20.0
        assert cluster.master_of(Keys.teams("acme")) == heir  # the replica took over
        await drill.check_nothing_lost()
        for gw in gateways:  # the outage is over and was told a bounded number of times, not
            # once per call: one episode as a rule (redis-py's retries may even ride a
            # gateway's calls through without a failure); on a loaded machine a late error
            # from the killed node's connections can come after STATE_SETTLE of successes and
            # count as a second (seen once in a full run)
            assert gw.runtime.store.up and gw.runtime.store.outages <= 2
            assert gw.runtime.listener.push_connected
        lag = await drill.revoke_propagates()
        print(f"cluster: a revocation after the failover reached both gateways in {lag * 1000:.0f} ms")
    finally:
        for gw in gateways:
            await stop_gateway(gw)
        cluster.stop()


async def test_durable_write_waits_for_the_replica(cluster: Cluster) -> None:
    """An admin write returns only once the slot's replica has it: read straight from the
    replica right after, it is there."""
    store = cluster_store(cluster)
    await store.check_durability()
    try:
        from tokenward.gateway.records import TeamRecord
        from tokenward.gateway.scopes import parse_scopes

        for i in range(20):
            team = TeamRecord("durable", f"t{i}", parse_scopes(["read:apis"]), time.time(), "test")
            await store.create_team(team)
            master = cluster.master_of(Keys.team("durable", team.name))
            replica = cluster.replicas_of(master)[0]
            assert await asyncio.to_thread(replica_has, replica, Keys.team("durable", team.name))
    finally:
        await store.close()


def replica_has(port: int, key: str) -> bool:
    import redis

    with redis.Redis(host="127.0.0.1", port=port) as conn:
        conn.execute_command("READONLY")
        return bool(conn.exists(key))
