"""deploy/nginx/nginx.conf for real: nginx (`auth_request`) in front of an echo upstream, with
the real `tokenward serve` process answering /_tokenward/verify.

nginx is installed with apt-get when missing (CI runs as root on Debian); if that fails the
test fails: it is never skipped.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict
from yarl import URL

from tests.helpers.gateway import APIS, IDENTITY, last_char_changed
from tests.helpers.nginx import NginxStack
from tests.helpers.process import stop


async def test_nginx_auth_request_in_front_of_tokenward(nginx_stack: NginxStack, workdir: Path) -> None:
    stack, seen = nginx_stack, nginx_stack.seen
    admin, admin_port, nginx_port, serve = stack.admin, stack.admin_port, stack.nginx_port, stack.serve
    decisions: list[int] = []  # the status of every request nginx asked tokenward about
    base = f"http://127.0.0.1:{nginx_port}"
    try:
        async with aiohttp.ClientSession() as session:
            await stack.wait_ready(session)
            decisions.append(200)  # the public /health above went through tokenward too
            seen.clear()

            adm = f"http://127.0.0.1:{admin_port}/v1/orgs/acme/teams"
            async with session.post(
                adm, headers=admin, json={"name": "platform", "permissions": ["read:apis"]}
            ) as r:
                assert r.status == 201, await r.text()
            async with session.post(
                f"{adm}/platform/tokens",
                headers=admin,
                json={"name": "ci", "scopes": ["read:apis", "write:apis"]},
            ) as r:
                assert r.status == 201, await r.text()
                created = await r.json()
            bearer = f"Bearer {created['token']}"

            async def call(
                method: str, target: str, headers: Any = None, expected: int = 200, data: bytes | None = None
            ) -> tuple[aiohttp.ClientResponse, Any]:
                url = URL(base + target, encoded=True)
                async with session.request(method, url, headers=headers, data=data) as r:
                    body = await r.json() if r.content_type == "application/json" else await r.read()
                decisions.append(r.status)
                assert r.status == expected, (method, target, r.status, body)
                return r, body

            # Allowed: the upstream gets tokenward's identity, never the client's forged copies.
            forged = CIMultiDict(
                [
                    ("Authorization", bearer),
                    ("X-Tokenward-Org", "evil"),
                    ("x-tokenward-team", "evil"),
                    ("X-TOKENWARD-SCOPES", "admin:*"),
                    ("X_Tokenward_Org", "evil"),
                ]
            )
            r, body = await call("GET", APIS + "?page=2", forged)
            (got,) = seen
            headers = got["headers"]
            assert got["raw_path"] == APIS + "?page=2"  # exactly the target tokenward authorized
            assert headers.getall("X-Tokenward-Org") == ["acme"]
            assert headers.getall("X-Tokenward-Team") == ["platform"]
            assert headers.getall("X-Tokenward-Scopes") == ["read:apis"]  # effective: team ∩ token
            assert headers["X-Tokenward-Token-Id"] == created["id"]
            assert headers["X-Tokenward-Token-Name"] == "ci"
            assert "X-Tokenward-Service-Account" not in headers  # none: nginx sends no empty header
            assert not [k for k in headers if "tokenward" in k.lower() and k not in IDENTITY]
            assert "evil" not in repr(list(headers.items())) and "admin:*" not in repr(list(headers.items()))
            assert "Authorization" not in headers  # like forward_authorization: false
            assert headers["X-Request-Id"]  # tokenward's request id, for correlation
            assert body["raw_path"] == APIS + "?page=2"

            # A public route: no identity at all, and the forged one is still dropped.
            seen.clear()
            await call("GET", "/health", {"X-Tokenward-Org": "evil", "X-Tokenward-Token-Id": "x"})
            assert not [k for k in seen[0]["headers"] if "tokenward" in k.lower()]

            # Denials: tokenward's status, JSON body and WWW-Authenticate, nothing forwarded.
            seen.clear()
            r, body = await call("GET", APIS, expected=401)
            assert body["step"] == "credential" and body["message"] == "missing bearer token"
            assert r.headers.getall("WWW-Authenticate") == ['Bearer realm="tokenward"']
            assert r.headers["X-Request-Id"] == body["request_id"]

            r, body = await call("GET", APIS, {"Authorization": last_char_changed(bearer)}, expected=401)
            assert body["step"] == "credential"
            assert r.headers.getall("WWW-Authenticate")[0].startswith(
                'Bearer realm="tokenward", error="invalid_token"'
            )

            r, body = await call(
                "GET", "/orgs/other/teams/platform/apis", {"Authorization": bearer}, expected=403
            )
            assert (body["step"], body["message"]) == ("org", "token org does not match resource org")

            # team lacks write:apis; the denied request's body is dropped, never buffered for it
            r, body = await call("POST", APIS, {"Authorization": bearer}, expected=403, data=b"x" * 300_000)
            assert (body["step"], body["message"]) == ("scope", "token lacks required permission: write:apis")
            assert r.headers["WWW-Authenticate"] == (
                'Bearer realm="tokenward", error="insufficient_scope", scope="write:apis"'
            )
            assert r.content_type == "application/json"

            # auth_request alone would turn these into 500: the client gets tokenward's answer.
            r, body = await call("GET", "/nothing", {"Authorization": bearer}, expected=404)
            assert body["step"] == "route"
            # the original method reaches tokenward (asked as GET, this would be allowed)
            r, body = await call("PUT", APIS, {"Authorization": bearer}, expected=404)
            assert body["step"] == "route"
            r, body = await call(
                "GET", "/orgs/acme/teams/platform%2fapis", {"Authorization": bearer}, expected=400
            )
            assert body["step"] == "path"
            assert seen == []

            # Revoked: 401 on the next request.
            async with session.post(f"{adm}/platform/tokens/{created['id']}/revoke", headers=admin) as r:
                assert r.status == 200
            for _ in range(20):  # one process: immediate; the contract allows up to 50 ms
                async with session.get(base + APIS, headers={"Authorization": bearer}) as r:
                    body = await r.json() if r.content_type == "application/json" else None
                decisions.append(r.status)
                if r.status == 401:
                    break
                await asyncio.sleep(0.05)
            assert r.status == 401 and body is not None and body["message"] == "token revoked", body
            assert r.headers["WWW-Authenticate"].startswith('Bearer realm="tokenward", error="invalid_token"')

            # tokenward down: nginx fails closed (its own 502) and forwards nothing.
            assert await stop(serve) == 0
            seen.clear()
            async with session.get(base + "/health") as r:
                assert r.status == 502
            assert seen == []
    finally:
        nginx_code, serve_code = await stack.stop()
    error_log = (workdir / "error.log").read_text()
    assert nginx_code == 0, error_log
    assert serve_code == 0, stack.serve_out.read_text()[-3000:]
    assert "[emerg]" not in error_log and "[alert]" not in error_log, error_log

    # One audit event per request: the denial page is served from nginx's cache of
    # tokenward's answer, never by asking tokenward a second time.
    events = [
        orjson.loads(line)
        for line in stack.serve_out.read_bytes().splitlines()
        if line.startswith(b"{")
    ]
    verified = [e for e in events if e.get("mode") == "forward_auth"]
    assert sorted(e["status"] for e in verified) == sorted(decisions), verified
    assert all(e["client_ip"] == "127.0.0.1" for e in verified)
