"""The benchmark's upstream: aiohttp's low-level server answering every request with the
same small body. `python bench/upstream.py --port PORT`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web

BODY = b'{"apis": ["billing", "search"]}\n'


async def handle(request: web.BaseRequest) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


async def serve(port: int) -> None:
    runner = web.ServerRunner(web.Server(handle), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.port))


if __name__ == "__main__":
    main()
