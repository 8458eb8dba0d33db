import asyncio, fcntl, time, sys
import aiohttp
from tests.conftest import CLI, ROOT, bootstrap_admin, env_for_subprocess, serve_config
from tests.test_serve_process import wait_ready

BAD = [
 b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
 b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
 b"GET /v1/orgs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab",
 b"POST /v1/orgs/acme/teams HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nContent-Type: application/json\r\n\r\n{\"a\":",
 b"GET /v1/orgs/acme/teams HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
 b"POST /v1/orgs/acme/teams HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
 b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
]

async def blast(port):
    for data in BAD:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(data); await w.drain()
            await asyncio.sleep(0.01)
            w.transport.abort()
        except Exception as e:
            print("blast", e)

async def test_x(tmp_path, upstream):
    served = serve_config(tmp_path, upstream)
    serve = await asyncio.create_subprocess_exec(*CLI, "serve", "--config", str(served.path),
        cwd=ROOT, env=env_for_subprocess(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    pipe = serve.stdout._transport.get_extra_info("pipe")
    fcntl.fcntl(pipe.fileno(), 1031, 4096)
    slow = 0; worst = 0
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            await wait_ready(session, f"{served.admin_url}/readyz", serve)
            serve.stdout._transport.pause_reading()
            for i in range(40):
                await blast(served.port); await blast(served.admin_port)
                t0 = time.monotonic()
                async with session.get(f"{served.admin_url}/healthz") as r:
                    assert r.status == 200
                async with session.get(f"{served.url}/health") as r:
                    assert r.status == 200
                d = time.monotonic() - t0
                worst = max(worst, d)
    finally:
        serve.stdout._transport.resume_reading()
        serve.terminate()
        out = await serve.stdout.read()
        await serve.wait()
    print("WORST", round(worst, 3))
    print("NONJSON", [l[:200] for l in out.splitlines() if not l.startswith(b"{")][:10])
