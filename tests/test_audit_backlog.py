"""The audit stream keeps up with a saturated gateway: a flush writes its events in writes of
50 to 400 (about 16 a flush, more for a backlog past 6,400), each one pipelined call per 25
events, so a big backlog costs few round trips (before, one round trip per 25 events fell
behind a busy event loop, and past 100,000 waiting events the stream lost them: 54,297 of
182,367 in a 10 s bench run). A write cut short keeps what the store did not confirm."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest
import redis.exceptions
from redis.asyncio.connection import AbstractConnection

from tokenward.gateway.audit import AuditLog
from tokenward.gateway.logs import LogOutput
from tokenward.gateway.settings import LogSettings, RedisSettings
from tokenward.gateway.store import Store
from tokenward.gateway.store_audit import AUDIT_WRITE, AppendProgress
from tokenward.gateway.store_connect import connect
from tokenward.gateway.store_link import StoreUnavailable


async def test_a_big_backlog_goes_out_in_a_few_big_writes(redis_url: str) -> None:
    store = Store(connect(RedisSettings(url=redis_url)))
    writes: list[int] = []
    append = store.append_audit

    async def counted(events: list[bytes], maxlen: int, progress: AppendProgress | None = None) -> None:
        writes.append(len(events))
        await append(events, maxlen, progress)

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


async def test_a_write_cut_short_keeps_what_was_not_confirmed(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection fails after two of a write's 16 replies: the flush keeps every event
    after the 50 confirmed (sent once more: at least once, never lost), the write is not
    retried inside the store link, and the connection left with replies unread is closed."""
    store = Store(connect(RedisSettings(url=redis_url)))
    audit = AuditLog(store, 1_000_000, flush_interval=3600, output=LogOutput(LogSettings(level="warning"), io.BytesIO()))
    read, disconnect, send = AbstractConnection.read_response, AbstractConnection.disconnect, AbstractConnection.send_packed_command
    replies = sends = disconnects = 0

    async def cut(self: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
        nonlocal replies
        replies += sends > 0  # the audit write's replies (not a new connection's handshake)
        if replies == 3:
            raise redis.exceptions.ConnectionError("cut")
        return await read(self, *args, **kwargs)

    async def counted_send(self: AbstractConnection, packed: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal sends
        sends += isinstance(packed, bytes) and b"EVAL" in packed[:40]  # an audit write
        await send(self, packed, *args, **kwargs)

    async def counted_disconnect(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        nonlocal disconnects
        disconnects += 1
        await disconnect(self, *args, **kwargs)

    try:
        for n in range(12_800):  # a backlog that gets 400-event writes: 16 calls each
            audit.emit_request("request.allowed", {"method": "GET", "n": n})
        with monkeypatch.context() as patched:
            patched.setattr(AbstractConnection, "read_response", cut)
            patched.setattr(AbstractConnection, "send_packed_command", counted_send)
            patched.setattr(AbstractConnection, "disconnect", counted_disconnect)
            with pytest.raises(StoreUnavailable):
                await audit.flush()
        assert (sends, disconnects) == (1, 1)  # one write, not sent again; its connection closed
        assert [orjson.loads(e)["n"] for e in audit._pending] == list(range(50, 12_800)) and audit.dropped == 0
        await audit.flush()
        rows = await store.read_audit(count=1_000_000, reverse=False)
        seen = [event["n"] for _, event in rows]
        assert sorted(set(seen)) == list(range(12_800))
        assert len(seen) == 12_800 + 350  # the unconfirmed rest of the cut write, twice
    finally:
        await store.close()
