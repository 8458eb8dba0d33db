"""structlog set-up and the `[Service Token]` audit events.

Every decision (allowed or denied) and every admin change is one event, JSON lines by
default (`JSONRenderer(serializer=orjson.dumps)` on `BytesLoggerFactory`), pretty on a TTY.
Lines for a real file descriptor (stdout: a pipe, a file, a TTY) are written by a thread of
their own (`LogWriter`), so a reader that stalls never blocks the event loop.
Audit events are also appended, write-behind and batched, to a capped Redis stream; the
`last_used_at` of tokens is batched the same way. Neither is ever on a request's critical
path, and both are flushed on shutdown.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import logging
import os
import re
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from tokenward.gateway.aio import cancel_and_wait
from tokenward.gateway.settings import LogSettings
from tokenward.gateway.store import Store
from tokenward.gateway.store_audit import AUDIT_BATCH
from tokenward.gateway.store_link import StoreUnavailable
from tokenward.gateway.text import printable

LABEL = "[Service Token]"
# Where JSON log lines go when logging is JSON (None: pretty console, through structlog);
# audit events are rendered straight to it, the same line structlog would write.
_json_sink: Any = None
_audit_enabled = True
STOP_SECONDS = 10.0  # how long shutdown waits for a slow store to take the buffered events
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


QUEUE_LINES = 20_000  # log lines waiting for a slow reader, at most; more are dropped and counted
# The writer thread wakes by itself this often, and early only once this many lines wait: a
# wake-up per event-loop turn would hand the GIL back and forth a thousand times a second,
# and each hand-off can hold the event loop up behind the writer (bench/run.py, paced p99).
WRITER_PERIOD = 0.02
WRITER_EARLY_LINES = 512
DRAIN_SECONDS = 5.0  # at exit, how long queued lines may wait for a stalled reader


class LogWriter:
    """Writes log lines to a file descriptor from a thread of its own.

    `write()` only queues (a line beyond `capacity` queued is dropped and counted) and
    `flush()` only wakes the thread, so neither ever blocks, however long the reader stalls
    (a full pipe, a paused log shipper). Once the thread has caught up, it writes one line
    saying how many lines were dropped. Writes go to the descriptor itself, never through
    Python's buffered stdout, whose lock a thread blocked at exit would hold.
    """

    def __init__(self, fd: int, notice: Callable[[int], bytes], capacity: int = QUEUE_LINES) -> None:
        self.fd = fd
        self.notice = notice
        self.capacity = capacity
        self.dropped = 0  # lines dropped so far (the metric)
        self._reported = 0  # of those, how many the log has been told about
        self._lines: deque[bytes] = deque()
        self._wake = threading.Event()
        self._sleeping = False
        self._busy = False  # lines taken from the queue, not yet all written
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tokenward-log-writer", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> int:
        if len(self._lines) >= self.capacity:
            self.dropped += 1
            return 0
        self._lines.append(data)
        return len(data)

    def flush(self) -> None:
        if self._sleeping and len(self._lines) >= WRITER_EARLY_LINES:
            self._wake.set()

    def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds until every queued line is written."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self._lines or self._busy or self.dropped != self._reported:
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            time.sleep(0.002)
        return True

    def close(self, timeout: float = 1.0) -> None:
        self.drain(timeout)
        self._closed = True
        self._wake.set()

    def _run(self) -> None:
        lines = self._lines
        while not self._closed:
            if not lines:
                if self.dropped != self._reported:  # caught up after dropping some
                    dropped = self.dropped
                    self._write_all(self.notice(dropped - self._reported))
                    self._reported = dropped
                    continue
                self._wake.clear()
                self._sleeping = True
                self._wake.wait(WRITER_PERIOD)  # or until a flush() finds many lines waiting
                self._sleeping = False
                continue
            self._busy = True
            # Whole lines, at most PIPE_BUF bytes per write (unless one line is longer): such
            # writes to a pipe are atomic, so workers sharing stdout never split a line.
            batch = [lines.popleft()]
            size = len(batch[0])
            while lines and size + len(lines[0]) <= select.PIPE_BUF:
                line = lines.popleft()
                batch.append(line)
                size += len(line)
            self._write_all(b"".join(batch) if len(batch) > 1 else batch[0])
            self._busy = False

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:  # the descriptor was made non-blocking by someone
                select.select([], [self.fd], [], 1.0)
                continue
            except InterruptedError:
                continue
            except OSError:
                return  # the reader is gone (EPIPE) or the descriptor closed: nothing to do
            view = view[written:]


class _TextLogWriter:
    """The str face of a LogWriter, for structlog's WriteLogger (pretty console lines)."""

    def __init__(self, writer: LogWriter) -> None:
        self.writer = writer

    def write(self, text: str) -> int:
        return self.writer.write(text.encode("utf-8", "replace"))

    def flush(self) -> None:
        self.writer.flush()


_writer: LogWriter | None = None


def log_dropped() -> int:
    """Log lines dropped because the reader did not keep up (for the metric)."""
    return _writer.dropped if _writer is not None else 0


def _drain_at_exit() -> None:
    if _writer is not None:
        _writer.drain(DRAIN_SECONDS)


atexit.register(_drain_at_exit)


def _descriptor(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None  # an in-memory stream (tests): written synchronously, it never blocks


def _drop_notice(pretty: bool) -> Callable[[int], bytes]:
    def notice(count: int) -> bytes:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1_000_000):06d}Z"
        event = f"dropped {count} log lines"
        if pretty:
            return f"{stamp} [warning  ] {event}\n".encode()
        line = {"dropped": count, "event": event, "level": "warning", "timestamp": stamp}
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)

    return notice


def configure_logging(settings: LogSettings, stream: Any = None, *, background: bool | None = None) -> None:
    """Set up structlog; `stream` is a text or binary file (default: stdout). With a real
    file descriptor under it (or `background=True`), lines are written by a LogWriter thread;
    an in-memory stream is written synchronously."""
    stream = stream or sys.stdout
    pretty = settings.format == "console" or (settings.format == "auto" and stream.isatty())
    global _writer
    if _writer is not None:
        _writer.close()
        _writer = None
    fd = _descriptor(stream) if background is not False else None
    if fd is not None:
        with contextlib.suppress(OSError, ValueError):
            stream.flush()  # what went through the file object so far goes first
        _writer = LogWriter(fd, _drop_notice(pretty))
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    binary: Any = _writer if _writer is not None else getattr(stream, "buffer", stream)
    if pretty:
        processors = [*shared, _printable_values, structlog.dev.ConsoleRenderer()]
        factory: Any = (
            structlog.WriteLoggerFactory(_TextLogWriter(_writer))  # type: ignore[arg-type]
            if _writer is not None
            else structlog.PrintLoggerFactory(stream)
        )
    else:
        processors = [
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory = structlog.BytesLoggerFactory(binary)
    global _json_sink, _audit_enabled
    _json_sink = None if pretty else binary
    _audit_enabled = _LEVELS[settings.level] <= logging.INFO
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings.level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def _printable_values(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """On a terminal, names and other values from clients or the store are escaped (JSON
    lines escape them already): a token name must not drive the operator's terminal."""
    return {k: printable(v) if isinstance(v, str) else v for k, v in event.items()}


_second = -1
_second_text = ""


def iso_timestamp(now: float) -> str:
    """`2026-11-23T23:37:40.143725Z`, as structlog's TimeStamper(fmt="iso", utc=True)."""
    global _second, _second_text
    second = int(now)
    if second != _second:
        _second, _second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second_text}.{int((now - second) * 1_000_000):06d}Z"


class AuditLog:
    """Emits audit events to the log and buffers them for the Redis audit stream."""

    def __init__(self, store: Store | None, stream_maxlen: int, flush_interval: float = 0.25) -> None:
        self.store = store
        self.stream_maxlen = stream_maxlen
        self.flush_interval = flush_interval
        self._log = structlog.get_logger("tokenward.audit")
        self._pending: list[bytes] = []
        self._used: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self._sink_flush_pending = False
        self._flushing = False  # a flush() is between taking the buffer and its last store call

    def emit(self, action: str, *, in_stream: bool = False, **fields: Any) -> None:
        """Log the event and queue it for the audit stream (`in_stream`: an admin change whose
        event was written to the stream with the change itself, see Store.change_token)."""
        fields["action"] = action
        now = time.time()
        sink = _json_sink
        if sink is None:
            self._log.info(f"{LABEL} {action}", **fields)
        elif _audit_enabled:
            # What structlog's JSON chain would write, without walking it for every request.
            line = {**fields, "event": f"{LABEL} {action}", "level": "info", "timestamp": iso_timestamp(now)}
            sink.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
            self._flush_soon(sink)
        if self.store is not None and not in_stream:
            fields["ts"] = now
            if len(self._pending) < 100_000:
                self._pending.append(orjson.dumps(fields))
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
        if _json_sink is not None:
            self._flush_sink(_json_sink)
        while self.store is not None and (self._pending or self._used):
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
        if self._pending or self._used:
            structlog.get_logger("tokenward").error(
                "audit events not written to the store stream at shutdown",
                events=len(self._pending),
                last_used=len(self._used),
            )

    async def flush(self) -> None:
        """Append the buffered events to the stream, AUDIT_BATCH per call; on any failure,
        cancellation included, whatever was not confirmed goes back in the buffer."""
        if self.store is None:
            return
        events, self._pending = self._pending, []
        used, self._used = self._used, {}
        done = 0
        self._flushing = True
        try:
            while done < len(events):
                await self.store.append_audit(events[done : done + AUDIT_BATCH], self.stream_maxlen)
                done += AUDIT_BATCH
            if used:
                await self.store.touch_last_used(used)
                used = {}
        except BaseException:
            # keep what we have for the next try (bounded)
            self._pending = (events[done:] + self._pending)[-100_000:]
            for kid, at in used.items():
                self._used[kid] = max(at, self._used.get(kid, 0.0))
            raise
        finally:
            self._flushing = False

    async def _run(self) -> None:
        while self._task is not None:
            await asyncio.sleep(self.flush_interval)
            with contextlib.suppress(StoreUnavailable):
                await self.flush()


# -- redaction ---------------------------------------------------------------------------------
# Anything that may carry a credential is redacted before it is logged or stored: request
# targets (the raw one of a refused request, the canonical one of an allowed request, the
# X-Original-URI of a forward-auth check), refusal reasons that quote client input, and the
# client's own request id. `redact` is the one function for all of them.
REDACTED = "[REDACTED]"
# Cheap test first: a target with none of "%@=_" and no run of 16 alphanumerics holds nothing
# `redact` would change.
_LONG_RUN = re.compile(r"[A-Za-z0-9+]{16}")
_TOKEN_SHAPED = re.compile(
    # a prefix_body token (tw_sat_…, ghp_…, sk_live_…): a 16+ character alphanumeric body
    r"(?<![A-Za-z0-9])[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*_[A-Za-z0-9]{16,}"
    # a JWT
    r"|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?"
    # a long opaque string: 32+ alphanumerics (keys, digests, a token without its prefix) ...
    r"|[A-Za-z0-9]{32,}"
    # ... or 20+ of them mixing upper case, lower case and digits (random-looking)
    r"|(?=[A-Za-z0-9+]{20})(?=[A-Za-z0-9+]*?[a-z])(?=[A-Za-z0-9+]*?[A-Z])(?=[A-Za-z0-9+]*?[0-9])"
    r"[A-Za-z0-9+]{20,}=*"
)
# name=value pairs in a query string or in `;` path parameters, and URL userinfo
_PARAM = re.compile(r"(?:^|[?&;])([^=&;?#/]*)=([^&;#]*)")
_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#@]*)@")
_SENSITIVE_WORD = re.compile(
    r"token|secret|passw|apikey|api-key|api_key|credential|session|jwt|private|authori[sz]|authent"
    r"|(?:^|[^a-z])(?:key|sig|signature|code|pass|pw|pwd|sid|auth|bearer|cookie)(?:$|[^a-z])"
)


def _unescape(text: str, starts: list[int], ends: list[int]) -> tuple[str, list[int], list[int]]:
    """One round of percent-decoding, each escape read as one character; for every decoded
    character, the span of the original text it came from."""
    out: list[str] = []
    new_starts: list[int] = []
    new_ends: list[int] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "%" and i + 2 < n and _is_hex(text[i + 1 : i + 3]):
            out.append(chr(int(text[i + 1 : i + 3], 16)))
            new_starts.append(starts[i])
            new_ends.append(ends[i + 2])
            i += 3
        else:
            out.append(char)
            new_starts.append(starts[i])
            new_ends.append(ends[i])
            i += 1
    return "".join(out), new_starts, new_ends


def _is_hex(pair: str) -> bool:
    return len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair)


_clean: dict[str, None] = {}  # recent short texts with nothing to redact (never a secret)


def redact(text: str) -> str:
    """`text` (a request target, or any client-supplied string) with every credential-like
    part replaced by `[REDACTED]`: values of sensitive query or `;` parameters (`access_token`,
    `api_key`, `password`, `sig`, ...), URL userinfo, and anything token-shaped, also when
    percent-encoded (up to three times). The rest is kept as it was sent."""
    if text in _clean:
        return text
    if "%" not in text and "@" not in text and "=" not in text and "_" not in text and not _LONG_RUN.search(text):
        result = text
    else:
        result = _redact(text)
    if result is text and len(text) <= 256:
        if len(_clean) >= 4096:
            _clean.clear()
        _clean[text] = None
    return result


def _redact(text: str) -> str:
    view, starts, ends = text, list(range(len(text))), list(range(1, len(text) + 1))
    spans: list[tuple[int, int]] = []
    for _ in range(4):
        for match in _TOKEN_SHAPED.finditer(view):
            spans.append((starts[match.start()], ends[match.end() - 1]))
        for match in _PARAM.finditer(view):
            name = match.group(1).lower()
            if match.end(2) > match.start(2) and _SENSITIVE_WORD.search(name):
                spans.append((starts[match.start(2)], ends[match.end(2) - 1]))
        userinfo = _USERINFO.match(view)
        if userinfo and userinfo.end(1) > userinfo.start(1):
            spans.append((starts[userinfo.start(1)], ends[userinfo.end(1) - 1]))
        if "%" not in view:
            break
        decoded = _unescape(view, starts, ends)
        if decoded[0] == view:
            break
        view, starts, ends = decoded
    if not spans:
        return text
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out: list[str] = []
    at = 0
    for start, end in merged:
        out.append(text[at:start])
        out.append(REDACTED)
        at = end
    out.append(text[at:])
    return "".join(out)
