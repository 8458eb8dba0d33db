"""Outside review of issue 10 (items 10-13, 17) and issue 11 (items 2, 3, 4, 7): variants the
first fixes were not tested with. Assertions are counts and fields, never timings."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests import test_hardening
from tests.conftest import Gateway, LogReader
from tests.scripted import Seen
from tests.test_hardening import APIS, Recorder, hardening_config, raw, request

recorder = test_hardening.recorder  # the recording upstream fixture


# -- issue 11 item 7: the audit event says what happened --------------------------------------
async def until(condition: Any) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


def open_proxy_connections(gw: Gateway) -> int:
    """Client connections of the proxy listener that the gateway has not seen close."""
    runner = gw.server._runners[0]
    return sum(1 for handler in runner.server.connections if handler.transport is not None)  # type: ignore[union-attr]


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
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: gone-{attempt}\r\n\r\n".encode())
        await writer.drain()
        await until(lambda: len(upstream.seen) == attempt + 1)
        writer.transport.abort()
        await until(lambda: open_proxy_connections(gw) == 0)
        go.set()
        await until(lambda: any(e.get("client_request_id") == f"gone-{attempt}" for e in logs.events()))
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
