"""The audit stream in the store: a capped stream of JSON events, and admin writes that carry
their own audit event.

The gateway's decisions are appended in batches (`append_audit`: AUDIT_BATCH events per
script call, the calls of one write packed here and sent at once on one connection, as
redis-py's per-command path cost more than the request itself; a flush makes a few such
writes, see AuditLog.flush). An admin change's event (`AuditEntry`) goes into the same
MULTI as the change (`_write_audited`) on one server or Sentinel, so a change confirmed to
the caller has its event in the stream. A cluster keeps the stream in its own slot: there
the event is a second durable write after the change and before the response (see
SECURITY.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tokenward.gateway import store_scripts
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.store_link import StoreLink, StoreUnavailable

AUDIT_BATCH = 25  # events per call: Valkey works in slices the requests can run between
AUDIT_WRITE = 16 * AUDIT_BATCH  # events per append_audit at most: its calls go in one write

# EVAL, the script, one key: the start of every batch's command (the script's text each time,
# so a store restarted or flushed meanwhile needs no reload; the server caches it by digest)
_SCRIPT = store_scripts.APPEND_AUDIT.encode()
_EVAL = b"$4\r\nEVAL\r\n$%d\r\n%b\r\n$1\r\n1\r\n" % (len(_SCRIPT), _SCRIPT)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin change's audit event (the stream's JSON), written with the change itself."""

    payload: bytes
    maxlen: int


@dataclass(slots=True)
class AppendProgress:
    """How many of an append_audit's events the store confirmed (from the first)."""

    appended: int = 0


class AuditStream(StoreLink):
    """Appending to and reading the audit stream; admin writes with their audit event."""

    async def append_audit(self, events: Sequence[bytes], maxlen: int, progress: AppendProgress | None = None) -> None:
        """Append `events` (JSON) to the capped stream: one APPEND_AUDIT call per AUDIT_BATCH,
        all written at once on one connection to the stream's master, then every reply read.
        `progress.appended` counts the events confirmed so far (from the first), whatever
        ends the write: those are never to be sent again."""
        packed, calls = pack_appends(events, maxlen)
        progress = progress or AppendProgress()

        async def op() -> None:
            async with self._pinned(Keys.audit) as conn:
                await conn.send_packed_command(packed, check_health=False)
                for _ in range(calls):
                    await conn.read_response()  # a script error raises here
                    progress.appended = min(len(events), progress.appended + AUDIT_BATCH)

        if not calls:
            return
        try:
            await self._call(op, retry=False)  # never twice here: the flush sends what is left
        except StoreUnavailable as exc:
            await self._relearn_after(exc)
            raise

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


def pack_appends(events: Sequence[bytes], maxlen: int) -> tuple[bytes, int]:
    """The RESP of `EVAL APPEND_AUDIT 1 <stream> <maxlen> <event>...` per AUDIT_BATCH events,
    and how many commands that is (each event is a bulk string: bytes as they are)."""
    key = Keys.audit.encode()
    tail = b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(key), key, len(str(maxlen)), str(maxlen).encode())
    parts: list[bytes] = []
    calls = 0
    for start in range(0, len(events), AUDIT_BATCH):
        batch = events[start : start + AUDIT_BATCH]
        parts += (b"*%d\r\n" % (5 + len(batch)), _EVAL, tail)
        parts += [b"$%d\r\n%b\r\n" % (len(event), event) for event in batch]
        calls += 1
    return b"".join(parts), calls


def _xadd(audit: AuditEntry) -> tuple[Any, ...]:
    return ("XADD", Keys.audit, "MAXLEN", "~", audit.maxlen, "*", "e", audit.payload)
