"""Wiring: the gateway listener over a `Runtime` (gateway/runtime.py), built by
`create_proxy_server(runtime)`: the lean llhttp listener (gateway/listener.py) handing every
request to `tokenward.gateway.pipeline.Pipeline`; and the head deadline the admin API's
aiohttp connections get (`HeadDeadlineHandler`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from tokenward.gateway.edge import new_request_id
from tokenward.gateway.listener import GatewayConnection
from tokenward.gateway.outbox import Outbox
from tokenward.gateway.pipeline import Pipeline
from tokenward.gateway.reply import Clock
from tokenward.gateway.runtime import Runtime


class HeadDeadlineHandler(RequestHandler):
    """aiohttp's connection handler with a deadline for every request head (the admin API's;
    the gateway listener has its own, gateway/listener.py):
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
        self._tw_timer: asyncio.TimerHandle | None = self._loop.call_at(
            self._tw_deadline, self._tw_head_deadline
        )

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


async def finish_then_close(conn: GatewayConnection, timeout: float) -> None:
    """A busy connection at shutdown: its request finishes (within `timeout`, else the
    handler is cancelled), a tunnel ends; then it closes."""
    task = conn.task
    if task is not None:
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), timeout)
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if conn.relay_eof is not None:
        conn.relay_eof()
    conn.close()


def create_proxy_server(runtime: Runtime) -> Listener:
    """The gateway listener over `runtime` (not yet listening: `await listener.start(host, port)`)."""
    return Listener(runtime, Pipeline(runtime), new_request_id)


class Listener:
    """The gateway's listening socket and its connections, over one runtime's pipeline."""

    def __init__(self, runtime: Runtime, pipeline: Pipeline, new_request_id: Callable[[], str]) -> None:
        self.runtime = runtime
        self.pipeline = pipeline
        self.new_request_id = new_request_id
        self.clock = Clock()
        self.loop = asyncio.get_running_loop()
        self.connections: set[GatewayConnection] = set()
        self.closing = False
        self.outbox = Outbox(self.loop)
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen (SO_REUSEPORT: under --workers every worker binds the port); the bound port."""
        self.server = await self.loop.create_server(
            lambda: GatewayConnection(self), host, port, reuse_port=True, backlog=1024
        )
        for sock in self.server.sockets:
            address: Any = sock.getsockname()
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(address[1])
        return port

    async def stop(self, timeout: float) -> None:
        """Stop accepting, let each request in progress finish within `timeout`, close all."""
        self.closing = True
        server, self.server = self.server, None
        if server is not None:
            server.close()
        connections = list(self.connections)
        for conn in connections:
            if conn.task is None and conn.relay is None:
                conn.close()
        busy = [conn for conn in connections if conn.task is not None or conn.relay is not None]
        if busy:
            await asyncio.gather(*(finish_then_close(conn, timeout) for conn in busy), return_exceptions=True)
        for conn in list(self.connections):
            conn.close()
        await asyncio.sleep(0)
