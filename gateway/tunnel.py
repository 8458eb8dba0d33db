"""WebSocket pass-through: after the upstream's 101, bytes flow both ways untouched, with
backpressure each way; and a tunnel lives only as long as its token would still be
allowed: every open tunnel is re-decided whenever the cache drops anything (a revoke, a
team change, a reconnect), and every few seconds anyway (expiry, reloads)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from tokenward.gateway.aio import cancel_and_wait
from tokenward.gateway.cache import VerificationCache
from tokenward.gateway.inbound import Request
from tokenward.gateway.refusal import Refusal
from tokenward.gateway.upstream import Connection

log = structlog.get_logger("tokenward.tunnel")

HIGH_WATER = 256 * 1024  # bytes queued towards one side before the other side is paused


def is_websocket_upgrade(request: Request) -> bool:
    headers = request.headers
    if request.method != "GET" or headers.get("Upgrade", "").strip().lower() != "websocket":
        return False
    tokens = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    return "upgrade" in tokens


class Tunnel:
    def __init__(self, request: Request, conn: Connection) -> None:
        assert request.transport is not None
        self.request = request
        self.client = request.transport
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[str] = self.loop.create_future()
        self.bytes_up = 0
        self.bytes_down = 0
        self.opened = time.monotonic()
        self.next_check = 0.0
        self.epoch = 0  # the cache epoch its last decision started in
        self._draining: asyncio.Task[None] | None = None

    def start(self) -> None:
        # Bytes go to either transport directly from now. Nothing is held for them: the
        # upstream's 101 came after its held request head went out, and the client's
        # transport was released when this tunnel took it (`request.transport`).
        conn = self.conn
        conn.relay = self.to_client
        conn.on_lost = lambda: self.close("upstream closed")
        conn.on_resume_writing = self._resume_client
        if conn.tail:
            tail, conn.tail = conn.tail, b""
            self.to_client(tail)
        # the client's bytes (those already after the upgrade head first) go upstream from now
        self.request.protocol.set_relay(self.to_upstream, lambda: self.close("client closed"))

    def to_client(self, data: bytes) -> None:
        if self.done.done() or self.client.is_closing():
            self.close("client closed")
            return
        self.bytes_down += len(data)
        self.client.write(data)
        if self.client.get_write_buffer_size() > HIGH_WATER and self._draining is None:
            if self.conn.transport is not None:
                self.conn.transport.pause_reading()
            self._draining = self.loop.create_task(self._drain_client())

    async def _drain_client(self) -> None:
        try:
            await self.request.protocol.drain()
        except (ConnectionError, RuntimeError):
            self.close("client closed")
        finally:
            self._draining = None
        if not self.done.done() and self.conn.transport is not None and not self.conn.closed:
            self.conn.transport.resume_reading()

    def to_upstream(self, data: bytes) -> None:
        transport = self.conn.transport
        if self.done.done() or transport is None or self.conn.closed:
            self.close("upstream closed")
            return
        self.bytes_up += len(data)
        transport.write(data)
        if self.conn.paused_writing:
            self.client.pause_reading()

    def _resume_client(self) -> None:
        if not self.done.done() and not self.client.is_closing():
            self.client.resume_reading()

    def close(self, reason: str) -> None:
        if self.done.done():
            return
        self.done.set_result(reason)
        self.conn.relay = None
        self.conn.on_lost = None
        self.conn.close()
        self.client.close()  # what was written still goes out first


Recheck = Callable[[], Awaitable[float | None]]  # raises Refusal; returns the token's expiry


class TunnelWatch:
    """Re-decides open tunnels: at once when the cache drops anything, else every `every`
    seconds. A refusal (401/403/404) closes the tunnel; a store outage does not."""

    def __init__(self, cache: VerificationCache, interval: float = 0.1, every: float = 5.0) -> None:
        self.cache = cache
        self.interval = interval
        self.every = every
        self.open: dict[Tunnel, Recheck] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, tunnel: Tunnel, recheck: Recheck, expires_at: float | None, epoch: int) -> None:
        """`epoch`: the cache epoch the tunnel's decision started in; if the cache has moved
        on since, the next round re-decides it."""
        tunnel.next_check = self._next_check(time.monotonic(), expires_at)
        tunnel.epoch = epoch
        self.open[tunnel] = recheck
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tokenward-tunnels")

    def _next_check(self, now: float, expires_at: float | None) -> float:
        """In `every` seconds, or right after the token expires if that is sooner."""
        if expires_at is None:
            return now + self.every
        return now + min(self.every, max(0.0, expires_at - time.time()) + 0.01)

    def remove(self, tunnel: Tunnel) -> None:
        self.open.pop(tunnel, None)

    def close_all(self, reason: str) -> None:
        for tunnel in list(self.open):
            tunnel.close(reason)

    async def stop(self) -> None:
        self.close_all("shutting down")
        task, self._task = self._task, None
        await cancel_and_wait([task])

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            for tunnel, recheck in list(self.open.items()):
                epoch = self.cache.epoch
                if tunnel.done.done() or (tunnel.epoch == epoch and now < tunnel.next_check):
                    continue
                tunnel.next_check = now + self.every  # also when the check fails below
                tunnel.epoch = epoch
                try:
                    expires_at = await recheck()
                except Refusal as denied:
                    if denied.status < 500:
                        tunnel.close(f"{denied.step}: {denied.message}")
                    continue  # a store outage is not a bad token: checked again later
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # the watch itself is stopping
                    log.warning("websocket re-check was cancelled; retried next round")
                    tunnel.epoch = -1
                    continue
                except Exception:  # a check that fails for another reason must not end the watch
                    log.exception("websocket re-check failed")
                    continue
                tunnel.next_check = self._next_check(now, expires_at)
