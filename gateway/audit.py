"""The `[Service Token]` audit events (what they quote is redacted: gateway/redaction.py).

Every decision (allowed or denied) and every admin change is one event, written to the
runtime's `LogOutput` (gateway/logs.py): JSON lines rendered straight to its sink (the line
structlog's JSON chain would write), or through its structlog logger when pretty.
Audit events are also appended, write-behind and batched, to a capped Redis stream; the
`last_used_at` of tokens and their usage counts (gateway/usage.py) are batched the same way.
None is ever on a request's critical path, and all are flushed on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import structlog

from tokenward.gateway.aio import cancel_and_wait
from tokenward.gateway.logs import LogOutput, LogWriter, process_output
from tokenward.gateway.redaction import REDACTED, Redactor, redact
from tokenward.gateway.store import Store
from tokenward.gateway.store_audit import AUDIT_BATCH, AUDIT_WRITE, AppendProgress
from tokenward.gateway.store_link import StoreUnavailable
from tokenward.gateway.usage import UsageTally

__all__ = ["LABEL", "REDACTED", "AuditLog", "IsoTimestamps", "Redactor", "redact"]  # redact: gateway/redaction.py

LABEL = "[Service Token]"
REQUEST_ACTIONS = ("request.allowed", "request.denied")  # the events of Pipeline.record (emit_request)
STOP_SECONDS = 10.0  # how long shutdown waits for a slow store to take the buffered events


class IsoTimestamps:
    """`2026-11-23T23:37:40.143725Z`, as structlog's TimeStamper(fmt="iso", utc=True), with
    the date and time of the current second formatted once per second (one per AuditLog)."""

    __slots__ = ("_second", "_text")

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._turn(second)
        return f"{self._text}.{int((now - second) * 1_000_000):06d}Z"

    def date_time(self, second: int) -> str:
        """The text of a timestamp up to its second (`2026-11-23T23:37:40`)."""
        if second != self._second:
            self._turn(second)
        return self._text

    def _turn(self, second: int) -> None:
        self._second, self._text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


MAX_PENDING = 100_000  # events waiting for the store's stream; past it the newest are dropped, counted


def _line_tail(action: str) -> bytes:
    """What a JSON line has after an event's own fields, up to its timestamp's value."""
    head = orjson.dumps({"event": f"{LABEL} {action}", "level": "info", "logger": "tokenward.audit", "timestamp": ""})
    return b"," + head[1:-2]  # without the braces and the timestamp's closing quote


class AuditLog:
    """Emits audit events to the log and buffers them for the Redis audit stream."""

    def __init__(
        self, store: Store | None, stream_maxlen: int, flush_interval: float = 0.25, output: LogOutput | None = None
    ) -> None:
        """`output`: where the events are logged (default: the process's, see
        configure_logging; structlog's own set-up when there is none)."""
        self.store = store
        self.stream_maxlen = stream_maxlen
        self.flush_interval = flush_interval
        output = output or process_output()
        # JSON lines are rendered here, straight to the sink; pretty ones go through structlog
        self._sink: Any = output.sink if output is not None else None
        self._enabled = output.audit_enabled if output is not None else True
        self._log: Any = output.logger if output is not None else structlog.get_logger("tokenward.audit")
        self._timestamp = IsoTimestamps()
        # per action of REQUEST_ACTIONS, its JSON line after the event's fields up to the
        # timestamp's microseconds, for the current second (emit_request)
        self._heads: dict[str, bytes] = {}
        self._heads_second = -1
        # a LogWriter wakes its thread by itself when lines pile up; other sinks are flushed
        self._flush_per_turn = not isinstance(self._sink, LogWriter)
        self.redact = Redactor()  # the request path's memoized `redact`
        self._pending: list[bytes] = []
        self._used: dict[str, float] = {}
        self.usage = UsageTally()  # usage per token, flushed with the events
        self._usage_lock = asyncio.Lock()  # one usage write at a time: batches land in order
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self._sink_flush_pending = False
        self._flushing = False  # a flush() is between taking the buffer and its last store call

    def emit(self, action: str, *, in_stream: bool = False, **fields: Any) -> None:
        """Log the event and queue it for the audit stream (`in_stream`: an admin change whose
        event was written to the stream with the change itself, see Store.change_token)."""
        fields["action"] = action
        now = time.time()
        sink = self._sink
        if sink is None:
            self._log.info(f"{LABEL} {action}", **fields)
        elif self._enabled:
            # What structlog's JSON chain would write, without walking it for every request.
            line = {
                **fields,
                "event": f"{LABEL} {action}",
                "level": "info",
                "logger": "tokenward.audit",
                "timestamp": self._timestamp(now),
            }
            sink.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
            if self._flush_per_turn:
                self._flush_soon(sink)
        if self.store is not None and not in_stream:
            fields["ts"] = now
            if len(self._pending) < MAX_PENDING:
                self._pending.append(orjson.dumps(fields))
            else:
                self.dropped += 1

    def emit_request(self, action: str, fields: dict[str, Any]) -> None:
        """`emit(action, **fields)` for the request path (`action`: one of REQUEST_ACTIONS,
        else this is emit), the same line and stream entry byte for byte: `fields` (taken
        over, in order, none named event, level, logger, timestamp or ts) is dumped once,
        and the log line and the stream entry are both made of those bytes."""
        sink = self._sink
        if sink is None or action not in REQUEST_ACTIONS:
            self.emit(action, **fields)
            return
        fields["action"] = action
        now = time.time()
        streamed = self.store is not None
        if not (self._enabled or streamed):
            return
        body = orjson.dumps(fields)[:-1]  # `{"method":...,"action":"..."` (never empty)
        if self._enabled:
            second = int(now)
            if second != self._heads_second:
                stamp = self._timestamp.date_time(second).encode()
                self._heads = {name: _line_tail(name) + stamp + b"." for name in REQUEST_ACTIONS}
                self._heads_second = second
            # IsoTimestamps' microseconds, the same digits
            micros = b"%06d" % int((now - second) * 1_000_000)
            sink.write(b"".join((body, self._heads[action], micros, b'Z"}\n')))
            if self._flush_per_turn:
                self._flush_soon(sink)
        if streamed:
            if len(self._pending) < MAX_PENDING:
                self._pending.append(b"".join((body, b',"ts":', orjson.dumps(now), b"}")))
            else:
                self.dropped += 1

    def _flush_soon(self, sink: Any) -> None:
        """Flush the log at the end of this event-loop turn: the lines of every request
        decided in one turn go out in one write, none waits longer than that turn."""
        if self._sink_flush_pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            sink.flush()
            return
        self._sink_flush_pending = True
        loop.call_soon(self._flush_sink, sink)

    def _flush_sink(self, sink: Any) -> None:
        self._sink_flush_pending = False
        with contextlib.suppress(OSError, ValueError):
            sink.flush()

    def mark_used(self, key_id: str, at: float) -> None:
        self._used[key_id] = at

    async def start(self) -> None:
        if self.store is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="tokenward-audit-flush")

    async def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Write out everything buffered, waiting for a slow store up to `timeout` seconds:
        first for the flush in progress (never cancelled mid-call while time remains), then
        for what was buffered since. Whatever still could not be written is counted in the
        log, never dropped silently."""
        deadline = asyncio.get_running_loop().time() + timeout
        task, self._task = self._task, None
        if task is not None and not self._flushing:
            await cancel_and_wait([task])  # asleep between flushes: nothing in flight
        elif task is not None:
            await asyncio.wait([task], timeout=timeout)
            await cancel_and_wait([task])  # past the deadline: flush() puts its batch back
        if self._sink is not None:
            self._flush_sink(self._sink)
        while self.store is not None and (self._pending or self._used or self.usage.waiting):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await self.flush()
            except StoreUnavailable:
                await asyncio.sleep(min(self.flush_interval, max(0.0, remaining)))
            except TimeoutError:
                break
        if self._pending or self._used or self.usage.waiting:
            structlog.get_logger("tokenward").error(
                "audit events not written to the store stream at shutdown",
                events=len(self._pending),
                last_used=len(self._used),
                usage=self.usage.waiting,
            )

    async def flush(self) -> None:
        """Append the buffered events to the stream, up to AUDIT_WRITE per call; on any failure,
        cancellation included, whatever was not confirmed goes back in the buffer."""
        if self.store is None:
            return
        events, self._pending = self._pending, []
        used, self._used = self._used, {}
        done = 0
        self._flushing = True
        # Writes as small as the backlog allows: the store works through each write in one
        # go, and a big one delays the requests (on its core too) meanwhile; a backlog that
        # grows gets bigger writes, fewer round trips, until the flush keeps up again.
        size = AUDIT_BATCH * min(AUDIT_WRITE // AUDIT_BATCH, max(2, len(events) // (16 * AUDIT_BATCH)))
        progress = AppendProgress()
        try:
            while done < len(events):
                progress = AppendProgress()
                await self.store.append_audit(events[done : done + size], self.stream_maxlen, progress)
                done += size
            if used:
                await self.store.touch_last_used(used)
                used = {}
            await self._flush_usage(self.store)
        except BaseException:
            if done < len(events):
                done += progress.appended  # the part of the write confirmed before it ended
            # keep what we have for the next try (bounded: the oldest go, counted)
            kept = events[done:] + self._pending
            self.dropped += max(0, len(kept) - MAX_PENDING)
            self._pending = kept[-MAX_PENDING:]
            for kid, at in used.items():
                self._used[kid] = max(at, self._used.get(kid, 0.0))
            raise
        finally:
            self._flushing = False

    async def _flush_usage(self, store: Store) -> None:
        """The usage batch a failed flush left (sent again as it was: it counts once), then
        the counts since; a batch stays `unsent` until its write is confirmed."""
        usage = self.usage
        async with self._usage_lock:  # (a flush now and the periodic one may overlap)
            if usage.unsent is not None:
                await store.add_usage(usage.unsent)
            usage.unsent = usage.take()
            if usage.unsent is not None:
                await store.add_usage(usage.unsent)
                usage.unsent = None

    async def _run(self) -> None:
        while self._task is not None:
            await asyncio.sleep(self.flush_interval)
            with contextlib.suppress(StoreUnavailable):
                await self.flush()
