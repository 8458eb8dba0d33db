"""Wiring: the gateway listener over a `Runtime` (gateway/runtime.py), built by
`create_proxy_server(runtime)`: aiohttp's low-level server with our connection handler,
handing every request to `tokenward.gateway.pipeline.Pipeline`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from tokenward.gateway.edge import error_response, new_request_id
from tokenward.gateway.pipeline import Pipeline
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.runtime import Runtime

log = structlog.get_logger("tokenward")


class HeadDeadlineHandler(RequestHandler):
    """aiohttp's connection handler with a deadline for every request head (both listeners):
    while the connection waits for a request (the first one, or the next one after a
    response), it is closed unless a complete head arrives within `limits.header_timeout` of
    the connection opening, of the previous response completing, or of the first byte of the
    head (whichever is latest). A slow head is never held for the keep-alive time, and an
    idle keep-alive connection lasts at most header_timeout. Its server has a `runtime`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        runtime: Runtime = self._manager.runtime  # type: ignore[union-attr]
        self._tw_timeout = runtime.settings.limits.header_timeout
        self._tw_deadline = self._loop.time() + self._tw_timeout
        self._tw_head_begun = False  # a byte of the awaited head has arrived
        self._tw_timer: asyncio.TimerHandle | None = self._loop.call_at(self._tw_deadline, self._tw_head_deadline)

    def data_received(self, data: bytes) -> None:
        if not self._tw_head_begun and not self._request_in_progress:
            # the first byte of the next head: it has header_timeout from now
            self._tw_head_begun = True
            self._tw_deadline = self._loop.time() + self._tw_timeout
        super().data_received(data)

    async def _handle_request(self, *args: Any, **kwargs: Any) -> tuple[web.StreamResponse, bool]:
        try:
            return await super()._handle_request(*args, **kwargs)
        finally:
            # the response is done: the next head has header_timeout from now
            self._tw_head_begun = False
            self._tw_deadline = self._loop.time() + self._tw_timeout

    def _tw_head_deadline(self) -> None:
        self._tw_timer = None
        if self.transport is None:
            return
        now = self._loop.time()
        if now < self._tw_deadline:  # moved on meanwhile
            self._tw_timer = self._loop.call_at(self._tw_deadline, self._tw_head_deadline)
            return
        if self._request_in_progress:  # a request is being handled: look again later
            self._tw_timer = self._loop.call_at(now + self._tw_timeout, self._tw_head_deadline)
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self.transport.close()  # no complete request head in time
        else:
            # between requests but not waiting yet (reading a refused request's leftover body)
            self._tw_timer = self._loop.call_at(now + self._tw_timeout, self._tw_head_deadline)

    def connection_lost(self, exc: BaseException | None) -> None:
        timer = getattr(self, "_tw_timer", None)
        if timer is not None:
            timer.cancel()
        super().connection_lost(exc)


class GatewayRequestHandler(HeadDeadlineHandler):
    """The gateway listener's connection handler: head deadlines, and JSON errors (audited)
    for malformed requests."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        denied = classify_protocol_error(status, exc)
        server = self._manager
        request_id = new_request_id()
        if isinstance(server, ProxyServer):
            server.runtime.audit.emit(
                "request.denied",
                method=request.method,
                path=None,
                route=None,
                status=denied.status,
                step=denied.step,
                reason=denied.message,
                client_ip=request.remote,
                request_id=request_id,
                duration_ms=0.0,
            )
        if denied.status >= 500:
            log.error("request handler failed", error=type(exc).__name__ if exc else None)
        response = error_response(denied, request_id)
        response.force_close()
        return response


def classify_protocol_error(status: int, exc: BaseException | None) -> Refusal:
    """An HTTP parse error (or handler crash) as a JSON error with the right status."""
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        line_bytes = line.encode() if isinstance(line, str) else bytes(line)
        if line_bytes.startswith((b"/", b"http", b"*")):
            return Refusal(414, "uri_too_long", Step.LIMITS, "request target too long")
        return Refusal(431, "headers_too_large", Step.LIMITS, "request header too large")
    if isinstance(exc, HttpProcessingError):
        text = exc.message if isinstance(exc.message, str) else "malformed request"
        if "Too many headers" in text:
            return Refusal(431, "headers_too_large", Step.LIMITS, "too many request headers")
        first = text.strip().splitlines()[0] if text.strip() else "malformed request"
        return Refusal(400, "invalid_request", Step.FRAMING, f"malformed request: {first.rstrip(':')}")
    if status == 504:
        return Refusal(504, "gateway_timeout", Step.INTERNAL, "request timed out")
    return Refusal(500, "internal_error", Step.INTERNAL, "internal error")


class ProxyServer(web.Server):
    """The gateway listener: one low-level handler, no router, our connection handler."""

    def __init__(self, runtime: Runtime, **kwargs: Any) -> None:
        limits = runtime.settings.limits
        # aiohttp's own hard limits sit above ours, so requests between the two get our
        # precise 414/431 from check_request and only grosser ones stop in the parser.
        kwargs.setdefault("max_line_size", limits.max_url_length + 1024)
        kwargs.setdefault("max_field_size", limits.max_header_bytes)
        kwargs.setdefault("max_headers", limits.max_header_count + 16)
        kwargs.setdefault("keepalive_timeout", 75.0)
        # after an early error response, read a stalled client's leftovers only briefly
        kwargs.setdefault("lingering_time", 2.0)
        # bodies go upstream as sent: aiohttp would inflate a gzip body under the sender's
        # Content-Length and Content-Encoding (a desync the upstream reads as a second request)
        kwargs.setdefault("auto_decompress", False)
        # the audit event is the access line (user agent, bytes, upstream, latency): aiohttp's
        # own access log would be a second, costlier line per request in another format
        kwargs.setdefault("access_log", None)
        self.pipeline = Pipeline(runtime)
        super().__init__(self.pipeline.handle, **kwargs)
        self.runtime = runtime

    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, **self._kwargs)


def create_proxy_server(runtime: Runtime) -> ProxyServer:
    return ProxyServer(runtime)
