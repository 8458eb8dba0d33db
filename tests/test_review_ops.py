"""Outside review of issue 10 (items 10-13, 17) and issue 11 (items 2, 3, 4, 7): variants the
first fixes were not tested with. Assertions are counts and fields, never timings."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers.gateway import APIS, Gateway, LogReader
from tests.helpers.process import start_serve
from tests.helpers.rawhttp import Recorder, hardening_config, raw, request
from tests.helpers.scripted import Seen


# -- issue 11 item 7: the audit event says what happened --------------------------------------
async def until(condition: Any) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


def open_proxy_connections(gw: Gateway) -> int:
    """Client connections of the proxy listener that the gateway has not seen close."""
    listener = gw.server.listener
    assert listener is not None
    return sum(1 for conn in listener.connections if conn.transport is not None)


@pytest.mark.parametrize("delimiter", [b"Content-Length: 1000", b"Transfer-Encoding: chunked"])
async def test_a_client_gone_before_the_response_head_is_audited_as_allowed_and_cut(
    scripted: Any, through: Any, logs: LogReader, delimiter: bytes
) -> None:
    """The upstream ran the request; the client left before its answer's head: the event is
    the allowed request, cut off by the client, not an internal error (nor a traceback)."""
    go = asyncio.Event()

    async def late(seen: Seen, writer: asyncio.StreamWriter) -> None:
        await go.wait()
        writer.write(b"HTTP/1.1 200 OK\r\n" + delimiter + b"\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    upstream = await scripted(late)
    gw = await through(upstream)
    port = int(gw.url.rsplit(":", 1)[1])
    for attempt in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: gone-{attempt}\r\n\r\n".encode())
        await writer.drain()
        await until(lambda n=attempt + 1: len(upstream.seen) == n)
        writer.transport.abort()
        await until(lambda: open_proxy_connections(gw) == 0)
        go.set()
        await until(
            lambda rid=f"gone-{attempt}": any(e.get("client_request_id") == rid for e in logs.events())
        )
        go.clear()
    events = [e for e in logs.events() if str(e.get("client_request_id", "")).startswith("gone-")]
    assert len(events) == 3
    for event in events:
        assert event["action"] == "request.allowed", event
        assert event["step"] != "internal" and event.get("client_aborted") is True, event
        assert event["bytes_sent"] == 0
    assert b"request failed" not in logs.raw()


# -- issue 10 item 10: other proxies' identity headers, more of the well-known ones ------------
# Names other authenticating proxies, front proxies and load balancers set for the app behind
# them (each in its canonical and `_` spelling): none may come from a client.
OTHER_PROXIES_IDENTITY = [
    "X-Remote-Extra-Scopes: admin",  # Kubernetes front proxy (requestheader-extra-headers-prefix)
    "X-Auth-Username: admin",  # Keycloak Gatekeeper / Louketo
    "X-Auth-Email: admin@example.com",
    "X-Auth-Userid: 1",
    "X-Auth-Subject: 1",
    "X-Auth-Roles: admin",
    "X-Auth-Groups: admins",
    "Tailscale-User-Login: admin@example.com",  # tailscale serve
    "Tailscale-User-Name: Admin",
    "OIDC_CLAIM_email: admin@example.com",  # Apache mod_auth_openidc
    "Oidc-Claim-Sub: 1",
    "OIDC_access_token: x",
    "X-SSL-Cert: -----BEGIN%20CERTIFICATE-----",  # nginx / HAProxy mTLS
    "X-SSL-Verify: SUCCESS",
    "X-SSL-Subject: CN=admin",
    "X-Amzn-Mtls-Clientcert: x",  # AWS ALB mTLS
    "X-Amzn-Mtls-Clientcert-Subject: CN=admin",
    "Teleport-Jwt-Assertion: x",  # Teleport application access
    "X-Endpoint-Api-Userinfo: eyJ4IjoxfQ",  # Google Cloud Endpoints (ESP)
    "Fly-Client-IP: 10.0.0.1",  # client address, kept only from trusted proxies
]


async def test_more_identity_headers_of_other_proxies_never_reach_the_upstream(
    start_gateway: Any, recorder: Recorder
) -> None:
    gw = await start_gateway(hardening_config(recorder.port))
    await gw.team("platform", ["read:apis"])
    token, _ = await gw.token("platform", ["read:apis"])
    host = f"127.0.0.1:{gw.server.proxy_port}"
    lines = OTHER_PROXIES_IDENTITY + [line.replace("-", "_", 3) for line in OTHER_PROXIES_IDENTITY]
    for line in lines:
        status, _, _ = await raw(gw.server.proxy_port, request(APIS, host, token, line, "X-Probe: 1"))
        assert status == 200, line
    assert len(recorder.seen) == len(lines)
    leaked = []
    for line, seen in zip(lines, recorder.seen, strict=True):
        names = {name.lower() for name, _ in seen["headers"]}
        assert "x-probe" in names
        if line.split(":")[0].lower() in names:
            leaked.append(line)
    assert leaked == []


# -- issue 11 item 3: SIGTERM of a real `tokenward serve` while the store is paused -----------
async def _serve_and_sigterm(
    tmp_path: Any, upstream: int, redis_url: str, pause_ms: int, marker: str, *args: str
) -> tuple[int, bytes]:
    """Start `tokenward serve` on the shared store, send 200 audited requests while the store
    takes no writes, SIGTERM it; returns (events of this run in the stream, its stdout)."""
    import aiohttp
    import redis as redis_sync

    from tests.helpers.process import serve_config, wait_ready
    from tokenward.gateway.store_keys import Keys

    served = serve_config(tmp_path, upstream, redis={"url": redis_url})
    serve = await start_serve(served.path, *args, stdout=asyncio.subprocess.PIPE)
    store = redis_sync.Redis.from_url(redis_url)
    out = b""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            await wait_ready(session, f"{served.admin_url}/readyz", serve)
            store.execute_command("CLIENT", "PAUSE", str(pause_ms), "WRITE")
            for i in range(200):
                async with session.get(
                    f"{served.url}/health", headers={"X-Request-Id": f"{marker}-{i}"}
                ) as r:
                    assert r.status == 200
        serve.terminate()
        assert serve.stdout is not None
        out = await serve.stdout.read()
        assert await serve.wait() == 0
    finally:
        if serve.returncode is None:
            serve.kill()
        store.execute_command("CLIENT", "UNPAUSE")
    seen = sum(1 for _, fields in store.xrange(Keys.audit) if marker.encode() in fields[b"e"])
    store.close()
    return seen, out


async def test_sigterm_with_the_store_paused_past_the_socket_timeout_loses_no_event(
    tmp_path: Any, upstream: int, redis_url: str
) -> None:
    seen, out = await _serve_and_sigterm(tmp_path, upstream, redis_url, 4000, "paused-4s")
    assert seen == 200, out[-2000:]  # every event once: none lost, none written twice


async def test_sigterm_of_two_workers_with_the_store_paused_loses_no_event(
    tmp_path: Any, upstream: int, redis_url: str
) -> None:
    seen, out = await _serve_and_sigterm(tmp_path, upstream, redis_url, 4000, "workers-4s", "--workers", "2")
    assert seen == 200, out[-2000:]


# -- issue 11 item 2: upstreams that close kept connections in other ways ---------------------
# A raw upstream in its own process: answers 200 "ok" and closes each connection, without
# saying so, after MAX responses (nginx keepalive_requests, Apache MaxKeepAliveRequests and
# many app servers do this); RESET=1 closes with a TCP reset instead of a FIN.
AFTER_N_UPSTREAM = r"""
import asyncio, socket, struct, sys
port, most, reset = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
async def handle(reader, writer):
    answered = 0
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b"-"
            sys.stdout.buffer.write(body + b"\n"); sys.stdout.flush()
            writer.write(OK)
            await writer.drain()
            answered += 1
            if answered >= most:
                if reset:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    sys.stdout.buffer.write(b"ready\n"); sys.stdout.flush()
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


async def _after_n_upstream(most: int, reset: bool) -> tuple[asyncio.subprocess.Process, int]:
    import sys

    from tokenward.gateway.embedded import free_port

    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        AFTER_N_UPSTREAM,
        str(port),
        str(most),
        "1" if reset else "0",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert await process.stdout.readline() == b"ready\n"
    return process, port


@pytest.mark.parametrize("most, reset", [(3, False), (3, True), (1, True)])
async def test_an_upstream_closing_after_n_responses_gets_no_502(
    start_gateway: Any, most: int, reset: bool
) -> None:
    """Mixed GETs and POSTs from concurrent clients: GETs on a stale connection are retried;
    POSTs (never replayed) must not be given a connection the upstream may be closing."""
    from collections import Counter

    from tests.helpers.gateway import base_config

    process, port = await _after_n_upstream(most, reset)
    try:
        gw = await start_gateway(base_config(port))
        await gw.team("team", ["read:apis", "write:apis"], org="org")
        token, _ = await gw.token("team", ["read:apis", "write:apis"], org="org")
        path = gw.url + "/orgs/org/teams/team/apis"
        statuses: Counter[tuple[str, int]] = Counter()
        todo = iter(range(900))

        # Until the upstream has closed one connection after its N-th response, nothing tells
        # a pooled connection's last exchange from the others: a few sequential GETs (retried
        # if stale) let the pool see the pattern, as any traffic would, whatever the machine's
        # load. From then on no request may fail.
        for _ in range(2 * most + 2):
            async with gw.session.get(path, headers=gw.auth(token)) as r:
                assert r.status == 200
                await r.read()
        assert [pool.max_exchanges for pool in gw.runtime.forwarder.pools.values()] == [most]

        async def client() -> None:
            for i in todo:
                if i % 3 == 2:
                    request = gw.session.post(path, data=b"body-%d" % i, headers=gw.auth(token))
                else:
                    request = gw.session.get(path, headers=gw.auth(token))
                async with request as r:
                    await r.read()
                    statuses[(r.method, r.status)] += 1

        await asyncio.gather(*(client() for _ in range(16)))
    finally:
        process.terminate()
        assert process.stdout is not None
        received = (await process.stdout.read()).splitlines()
        await process.wait()
    assert statuses == Counter({("GET", 200): 600, ("POST", 200): 300})
    posted = [line for line in received if line.startswith(b"body-")]
    assert len(posted) == len(set(posted)) == 300  # each body sent once


# -- issue 10 item 13: the admin listener's heads have the same deadline -----------------------
@pytest.mark.parametrize(
    "how", ["idle", "unfinished first head", "trickled first head", "unfinished later head"]
)
async def test_a_slow_head_on_the_admin_listener_is_cut_off(
    start_gateway: Any, recorder: Recorder, how: str
) -> None:
    """Both listeners share one process (its descriptors, its event loop): a slow head on the
    admin port is closed after header_timeout too, never held for aiohttp's keep-alive."""
    from tests.helpers.rawhttp import GENEROUS, closed_within, read_response, trickle

    gw = await start_gateway(hardening_config(recorder.port))  # header_timeout: 1s
    port = int(gw.admin_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    task = None
    try:
        if how == "unfinished first head":
            writer.write(healthz[:20])
        elif how == "trickled first head":
            task = asyncio.create_task(trickle(writer, healthz, 0.2))
        elif how == "unfinished later head":
            writer.write(healthz + healthz[:20])
            assert (await read_response(reader)).startswith(b"HTTP/1.1 200")
        assert await closed_within(reader, GENEROUS) == b""
    finally:
        if task is not None:
            task.cancel()
        writer.close()
    async with gw.session.get(gw.admin_url + "/healthz") as r:
        assert r.status == 200  # prompt requests are unaffected


# -- issue 11 item 7: `admin bootstrap`'s org-admin token is audited in the same write ---------
async def test_the_bootstrap_token_event_is_written_with_the_token(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, upstream: int
) -> None:
    """The process dies (kill -9) after the token is stored and before buffered events are
    flushed: the stream still has the org-admin token's `token.created`."""
    import copy

    import orjson
    import redis as redis_sync

    from tests.helpers.gateway import base_config
    from tokenward.cli_server import _bootstrap
    from tokenward.gateway.audit import AuditLog
    from tokenward.gateway.settings import settings_from_dict
    from tokenward.gateway.store_keys import Keys

    async def killed(self: AuditLog, timeout: float = 0.0) -> None:
        self._pending.clear()  # what a kill -9 does to the buffer
        if self._task is not None:
            self._task.cancel()

    monkeypatch.setattr(AuditLog, "stop", killed)
    raw_config = copy.deepcopy(base_config(upstream))
    raw_config["redis"] = {"url": redis_url}
    _, key_id = await _bootstrap(settings_from_dict(raw_config, "test"), "acme", "first-admin")
    store = redis_sync.Redis.from_url(redis_url)
    events = [orjson.loads(fields[b"e"]) for _, fields in store.xrange(Keys.audit)]
    store.close()
    created = [e for e in events if e.get("action") == "token.created" and e.get("token_id") == key_id]
    assert len(created) == 1
    assert created[0]["actor_id"] == "bootstrap" and created[0]["scopes"] == ["admin:org"]


async def test_a_learned_exchange_count_grows_back(gateway: Gateway) -> None:
    """An upstream restart closes connections right after their responses too: the count it
    teaches is raised again by retryable requests that a connection carried beyond it."""
    assert gateway.runtime.forwarder is not None
    pool = gateway.runtime.forwarder.pool(gateway.runtime.settings.upstreams["registry"])
    pool.closed_while_idle(0.0, 1)
    assert pool.max_exchanges == 1
    pool.closed_while_idle(5.0, 7)  # closed for idling, not for its count: nothing learned
    assert pool.max_exchanges == 1
    pool.alive_after(0.0, 2)
    pool.alive_after(0.0, 3)
    assert pool.max_exchanges == 3


# -- issue 11 item 7: a response cut by shutdown is audited as cut, with its real status -------
async def test_a_response_cut_by_shutdown_is_audited_with_what_the_client_got(
    scripted: Any, through: Any, logs: LogReader
) -> None:
    """Shutdown's drain time (1 s here) runs out while a response streams: the event has the
    status line the client got (200, not the 500 default), the bytes sent and the cause."""

    async def endless(seen: Seen, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100)
        await writer.drain()
        for _ in range(500):
            writer.write(b"y" * 10)
            await writer.drain()
            await asyncio.sleep(0.02)

    upstream = await scripted(endless)
    gw = await through(upstream)
    port = int(gw.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: drained-1\r\n\r\n")
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    assert len(await reader.readexactly(100)) == 100
    await gw.server.stop()
    writer.close()
    (event,) = [e for e in logs.events() if e.get("client_request_id") == "drained-1"]
    assert event["action"] == "request.allowed"
    assert event["status"] == 200 and event["step"] == "shutdown", event
    assert event["shutdown_aborted"] is True and event["bytes_sent"] >= 100
