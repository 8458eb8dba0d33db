"""structlog set-up and the `[Service Token]` audit events.

Every decision (allowed or denied) and every admin change is one event, JSON lines by
default (`JSONRenderer(serializer=orjson.dumps)` on `BytesLoggerFactory`), pretty on a TTY.
Audit events are also appended, write-behind and batched, to a capped Redis stream; the
`last_used_at` of tokens is batched the same way. Neither is ever on a request's critical
path, and both are flushed on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
from typing import Any

import orjson
import structlog

from gateway.aio import cancel_and_wait
from gateway.settings import LogSettings
from gateway.store import Store, StoreUnavailable
from gateway.text import printable

LABEL = "[Service Token]"
# Where JSON log lines go when logging is JSON (None: pretty console, through structlog);
# audit events are rendered straight to it, the same line structlog would write.
_json_sink: Any = None
_audit_enabled = True
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(settings: LogSettings, stream: Any = None) -> None:
    """Set up structlog; `stream` is a text or binary file (default: stdout)."""
    stream = stream or sys.stdout
    pretty = settings.format == "console" or (settings.format == "auto" and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if pretty:
        processors = [*shared, _printable_values, structlog.dev.ConsoleRenderer()]
        factory: Any = structlog.PrintLoggerFactory(stream)
    else:
        processors = [
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory = structlog.BytesLoggerFactory(getattr(stream, "buffer", stream))
    global _json_sink, _audit_enabled
    _json_sink = None if pretty else getattr(stream, "buffer", stream)
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

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait([task])
        if _json_sink is not None:
            self._flush_sink(_json_sink)
        with contextlib.suppress(StoreUnavailable):
            await self.flush()

    async def flush(self) -> None:
        if self.store is None:
            return
        events, self._pending = self._pending, []
        used, self._used = self._used, {}
        try:
            if events:
                await self.store.append_audit(events, self.stream_maxlen)
            if used:
                await self.store.touch_last_used(used)
        except StoreUnavailable:
            # keep what we have for the next try (bounded)
            self._pending = (events + self._pending)[-100_000:]
            for kid, at in used.items():
                self._used[kid] = max(at, self._used.get(kid, 0.0))
            raise

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
