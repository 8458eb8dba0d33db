"""The `[Service Token]` audit events, and the redaction of what they quote.

Every decision (allowed or denied) and every admin change is one event, written to the
runtime's `LogOutput` (gateway/logs.py): JSON lines rendered straight to its sink (the line
structlog's JSON chain would write), or through its structlog logger when pretty.
Audit events are also appended, write-behind and batched, to a capped Redis stream; the
`last_used_at` of tokens is batched the same way. Neither is ever on a request's critical
path, and both are flushed on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

import orjson
import structlog

from tokenward.gateway.aio import cancel_and_wait
from tokenward.gateway.bounded import BoundedMap
from tokenward.gateway.logs import LogOutput, process_output
from tokenward.gateway.store import Store
from tokenward.gateway.store_audit import AUDIT_BATCH
from tokenward.gateway.store_link import StoreUnavailable

LABEL = "[Service Token]"
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
            self._second, self._text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._text}.{int((now - second) * 1_000_000):06d}Z"


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
        self.redact = Redactor()  # the request path's memoized `redact`
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
        sink = self._sink
        if sink is None:
            self._log.info(f"{LABEL} {action}", **fields)
        elif self._enabled:
            # What structlog's JSON chain would write, without walking it for every request.
            line = {**fields, "event": f"{LABEL} {action}", "level": "info", "timestamp": self._timestamp(now)}
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
        if self._sink is not None:
            self._flush_sink(self._sink)
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


def redact(text: str) -> str:
    """`text` (a request target, or any client-supplied string) with every credential-like
    part replaced by `[REDACTED]`: values of sensitive query or `;` parameters (`access_token`,
    `api_key`, `password`, `sig`, ...), URL userinfo, and anything token-shaped, also when
    percent-encoded (up to three times). The rest is kept as it was sent."""
    if "%" not in text and "@" not in text and "=" not in text and "_" not in text and not _LONG_RUN.search(text):
        return text
    return _redact(text)


class Redactor:
    """`redact` with a memo of recent short texts that had nothing to redact (never a
    secret: only texts returned unchanged are kept), for the request path, where the same
    paths come again and again. One per `AuditLog`, so no two runtimes share it."""

    __slots__ = ("_clean",)

    def __init__(self, size: int = 4096) -> None:
        self._clean: BoundedMap[str, bool] = BoundedMap(size)

    def __call__(self, text: str) -> str:
        if text in self._clean:
            return text
        result = redact(text)
        if result is text and len(text) <= 256:
            self._clean.put(text, True)
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
