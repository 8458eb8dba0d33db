"""A raw HTTP/1.1 upstream in its own process (so its closes race the gateway's event loop
as a real server's do) that closes idle keep-alive connections.

    python -m tests.closing_upstream PORT IDLE [EXTRA_HEADER]

IDLE 0: close right after each response, without saying so; IDLE > 0: close a connection
that waited that many seconds for its next request. Each request is answered 200 "ok"; one
line per request goes to stdout (`<connection> <body>`), for tests to count.
"""

from __future__ import annotations

import asyncio
import sys

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n%s\r\nok"


async def main(port: int, idle: float, extra: bytes) -> None:
    reply = OK % (extra + b"\r\n" if extra else b"")
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number = connections
        answered = 0
        try:
            while True:
                try:
                    # A new connection waits for its first request (a real server's header
                    # timeout is longer): only keep-alive idleness is cut short.
                    wait = idle if idle and answered else None
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait)
                except TimeoutError:
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b"-"
                sys.stdout.buffer.write(b"%d %s\n" % (number, body))
                sys.stdout.flush()
                writer.write(reply)
                await writer.drain()
                answered += 1
                if not idle:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    sys.stdout.buffer.write(b"ready\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3].encode() if len(sys.argv) > 3 else b""))
