"""The audit stream keeps up with a saturated gateway: a flush writes its events in about
16 writes, each one pipelined call per 25 events, so a big backlog costs few round trips
(before, one round trip per 25 events fell behind a busy event loop, and past 100,000
waiting events the stream lost them: 54,297 of 182,367 in a 10 s bench run)."""

from __future__ import annotations

import io

from tokenward.gateway.audit import AuditLog
from tokenward.gateway.logs import LogOutput
from tokenward.gateway.settings import LogSettings, RedisSettings
from tokenward.gateway.store import Store
from tokenward.gateway.store_audit import AUDIT_WRITE
from tokenward.gateway.store_connect import connect


async def test_a_big_backlog_goes_out_in_a_few_big_writes(redis_url: str) -> None:
    store = Store(connect(RedisSettings(url=redis_url)))
    writes: list[int] = []
    append = store.append_audit

    async def counted(events: list[bytes], maxlen: int) -> None:
        writes.append(len(events))
        await append(events, maxlen)

    store.append_audit = counted  # type: ignore[method-assign]  (a spy: the real store writes)
    try:
        audit = AuditLog(store, 1_000_000, flush_interval=3600, output=LogOutput(LogSettings(level="warning"), io.BytesIO()))
        for n in range(30_000):
            audit.emit_request("request.allowed", {"method": "GET", "n": n})
        await audit.flush()
        assert sum(writes) == 30_000 and max(writes) == AUDIT_WRITE and len(writes) == 75
        for n in range(300):  # a small backlog: small writes (the store's turns stay short)
            audit.emit_request("request.allowed", {"method": "GET", "n": 30_000 + n})
        writes.clear()
        await audit.flush()
        assert writes == [50] * 6
        rows = await store.read_audit(count=1_000_000, reverse=False)
        assert [event["n"] for _, event in rows] == list(range(30_300)) and audit.dropped == 0
        assert rows[0][1]["action"] == "request.allowed"
    finally:
        await store.close()
