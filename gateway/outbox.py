"""Socket writes held to the end of the event loop's turn, then made together (`Outbox`).

A write to a socket whose reader sleeps wakes that reader, and the writer pays for the
wake-up: on a virtual machine, waking a thread on another core costs the writing core an
inter-processor interrupt (12 % of the gateway's core went to `sock_def_readable` under
load, bench/README.md). One turn of the loop decides every request whose bytes arrived
together; held to the turn's end, their responses (and the request heads they send the
upstreams) go out back to back: the first write wakes the reader, the others find it awake.
Nothing waits longer than the loop's next round of callbacks (uvloop runs it after its next
poll for I/O, whose socket callbacks come first).

The bytes held for one transport keep their order, and anything else written to it (a
streamed reply, a tunnel's bytes, a 100 Continue), its `write_eof` and its `close` come after
them: whoever writes to or ends a transport directly calls `release(transport)` first, and
so does a protocol whose transport closes on the peer's end of stream (`eof_received`).
"""

from __future__ import annotations

import asyncio

import structlog

log = structlog.get_logger("tokenward")


class Outbox:
    """The writes held for the end of this loop turn, per transport, in order."""

    __slots__ = ("_held", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held: dict[asyncio.Transport, list[bytes]] = {}
        self._scheduled = False

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        """`transport.write(data)` at the end of this turn, after what is held for it already."""
        held = self._held.get(transport)
        if held is not None:
            held.append(data)
            return
        self._held[transport] = [data]
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def release(self, transport: asyncio.Transport) -> None:
        """Write what is held for `transport` now (before writing to it or ending it directly)."""
        held = self._held.pop(transport, None)
        if held is not None:
            _write(transport, held)

    def flush(self) -> None:
        """Write everything held: the call scheduled by the turn's first `write`."""
        self._scheduled = False
        held, self._held = self._held, {}
        for transport, chunks in held.items():
            try:
                _write(transport, chunks)
            except Exception:  # one connection's fault ends that connection, not the others' writes
                log.exception("held write failed")
                transport.abort()


def _write(transport: asyncio.Transport, chunks: list[bytes]) -> None:
    if transport.is_closing():
        return  # closed meanwhile (the peer left): nobody reads these bytes any more
    if len(chunks) == 1:
        transport.write(chunks[0])
    else:
        transport.writelines(chunks)
