"""The audit stream in the store: a capped stream of JSON events, and admin writes that carry
their own audit event.

The gateway's decisions are appended in batches (`append_audit`, AUDIT_BATCH events per
script call). An admin change's event (`AuditEntry`) goes into the same MULTI as the change
(`_write_audited`) on one server or Sentinel, so a change confirmed to the caller has its
event in the stream. A cluster keeps the stream in its own slot: there the event is a second
durable write after the change and before the response (see SECURITY.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from tokenward.gateway import store_scripts
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.store_link import StoreLink, StoreUnavailable

AUDIT_BATCH = 25  # events per call: Valkey works in slices the requests can run between


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin change's audit event (the stream's JSON), written with the change itself."""

    payload: bytes
    maxlen: int


class AuditStream(StoreLink):
    """Appending to and reading the audit stream; admin writes with their audit event."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        super().__init__(client)
        self._append_audit = client.register_script(store_scripts.APPEND_AUDIT)

    async def append_audit(self, events: Sequence[bytes], maxlen: int) -> None:
        async def op() -> None:
            for start in range(0, len(events), AUDIT_BATCH):
                batch = events[start : start + AUDIT_BATCH]
                await self._append_audit(keys=[Keys.audit], args=[maxlen, *batch])

        await self._call(op)

    async def read_audit(
        self, start: str = "-", end: str = "+", count: int = 100, reverse: bool = True
    ) -> list[tuple[str, dict[str, Any]]]:
        if reverse:
            rows = await self._call(lambda: self.client.xrevrange(Keys.audit, end, start, count=count))
        else:
            rows = await self._call(lambda: self.client.xrange(Keys.audit, start, end, count=count))
        return [(i.decode(), orjson.loads(f[b"e"])) for i, f in rows]

    async def _write_audited(
        self, key: str, commands: Sequence[tuple[Any, ...]], audit: AuditEntry | None
    ) -> list[Any]:
        """`commands` (on `key`'s slot) in one MULTI with `audit`'s stream append (not in a
        cluster: there the append follows, durably, before returning). Their replies."""
        stream: list[tuple[Any, ...]] = []
        if audit is not None and not self.cluster:
            stream = [_xadd(audit)]
        replies = await self._write(key, ("MULTI",), *commands, *stream, ("EXEC",))
        executed = replies[-1]
        if not isinstance(executed, list):
            raise StoreUnavailable("store error: the transaction was aborted")
        for reply in executed:
            if isinstance(reply, Exception):
                raise StoreUnavailable(f"store error: {type(reply).__name__}")
        if audit is not None and self.cluster:
            await self._append_audit_durably(audit)
        return executed[: len(commands)]

    async def _create_audited(
        self,
        key: str,
        data: bytes,
        audit: AuditEntry | None,
        *,
        kind: str = "string",
        name: str = "",
        name_keys: tuple[str, str] | None = None,
    ) -> bool:
        """Create `key` (`kind` 'string': SET NX; 'hash': HSETNX `data`) only if it is absent,
        adding `name` to the two `name_keys` (a set and a sorted set in `key`'s slot) and
        appending `audit`'s event in the same script: a create that finds the record already
        there writes nothing, no event either. Whether it was created."""
        keys = [key, *(name_keys or ())]
        in_script = audit is not None and not self.cluster
        if in_script:
            keys.append(Keys.audit)
        args = [kind, data, name, audit.maxlen if audit else 0, audit.payload if in_script and audit else b""]
        (created,) = await self._write(key, ("EVAL", store_scripts.CREATE_AUDITED, len(keys), *keys, *args))
        if int(created) and audit is not None and self.cluster:
            await self._append_audit_durably(audit)
        return bool(int(created))

    async def _append_audit_durably(self, audit: AuditEntry) -> None:
        await self._write(Keys.audit, _xadd(audit))


def _xadd(audit: AuditEntry) -> tuple[Any, ...]:
    return ("XADD", Keys.audit, "MAXLEN", "~", audit.maxlen, "*", "e", audit.payload)
