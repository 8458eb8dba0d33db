"""Request-path hardening: tables of attack requests sent as raw bytes over a socket (where
aiohttp's client would normalise them) through the real gateway, in front of an upstream that
records exactly what reached it. For every accepted request the upstream must have seen,
byte for byte, the path that was authorized.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from tests.helpers.gateway import APIS, LogReader
from tests.helpers.rawhttp import Env, raw, request

# -- 1. one canonical path --------------------------------------------------------------------
PATH_CASES = [
    # (target, expected status, path the upstream must see)
    (APIS, 200, APIS),
    ("/orgs/acme/teams/platform/%61pis", 200, APIS),
    ("/orgs/%61cme/teams/platform/apis", 200, APIS),
    (APIS + "?x=../../admin&y=%2F", 200, APIS),
    ("/files/a/b%20c.txt", 200, "/files/a/b%20c.txt"),
    ("/files/a/%7euser/%e2%82%ac", 200, "/files/a/~user/%E2%82%AC"),
    ("/api", 200, "/api"),
    ("/orgs/acme/teams/platform/apis/../../billing/apis", 400, None),
    ("/orgs/acme/teams/billing/../platform/apis", 400, None),
    ("/orgs/acme/teams/platform/%2e%2e/platform/apis", 400, None),
    ("/orgs/acme/teams/platform/%2E%2e/x", 400, None),
    ("/orgs/acme/teams/platform/.%2E/x", 400, None),
    ("/orgs/acme/teams/platform/./apis", 400, None),
    ("/orgs/acme/teams/platform/%2e/apis", 400, None),
    ("/orgs/acme/teams/platform%2fapis", 400, None),
    ("/orgs/acme/teams/platform%2Fapis", 400, None),
    ("/orgs/acme/teams/platform%5capis", 400, None),
    ("/orgs/acme/teams/platform\\apis", 400, None),
    ("/orgs/acme/teams/platform/apis%00", 400, None),
    ("/orgs/acme/teams/platform/apis%0a", 400, None),
    ("/orgs/acme/teams/platform/apis%", 400, None),
    ("/orgs/acme/teams/platform/apis%zz", 400, None),
    ("/orgs/acme/teams/platform/apis%2", 400, None),
    ("/orgs/acme/teams/platform/apis#frag", 400, None),
    ("/orgs/acme//teams/platform/apis", 400, None),
    ("//orgs/acme/teams/platform/apis", 400, None),
    ("/files/a%2F..%2Fsecret", 400, None),
    ("/files/..", 400, None),
    ("*", 400, None),
    ("/orgs/acme/teams/platform/apis/", 404, None),
    ("/ORGS/acme/teams/platform/apis", 404, None),
    ("/orgs/acme/teams/platform/APIS", 404, None),
    ("/orgs/acme/teams/platform/apis;x=1", 400, None),  # path parameters: see test_path_confusion
    ("/apiadmin", 404, None),
    ("/api/x", 404, None),
    ("/healthz", 404, None),  # health lives on the admin listener only
    ("/readyz", 404, None),
]


@pytest.mark.parametrize("target, status, upstream_path", PATH_CASES, ids=[c[0][:60] for c in PATH_CASES])
async def test_canonical_path(
    env: Env, logs: LogReader, target: str, status: int, upstream_path: str | None
) -> None:
    got, headers, body = await raw(env.gw.server.proxy_port, request(target, env.host, env.token))
    assert got == status, body
    if status == 200:
        (seen,) = env.rec.seen
        assert seen["raw_path"].partition("?")[0] == upstream_path
        if "?" in target:
            assert seen["raw_path"].partition("?")[2] == target.partition("?")[2]
        # the path that was authorized (audited) is the path that was forwarded
        (event,) = logs.events("request.allowed")
        assert event["path"] == upstream_path
    else:
        assert env.rec.seen == []
        assert headers["content-type"].startswith("application/json")
        assert orjson.loads(body)["request_id"]


async def test_absolute_form_must_match_host(env: Env) -> None:
    port = env.gw.server.proxy_port
    ok = request(f"http://{env.host}{APIS}", env.host, env.token)
    status, _, _ = await raw(port, ok)
    assert status == 200 and env.rec.seen[0]["raw_path"] == APIS
    for target in (
        f"http://evil.example{APIS}",
        f"http://user@{env.host}{APIS}",
        f"https://127.0.0.2:1{APIS}",
    ):
        status, _, body = await raw(port, request(target, env.host, env.token))
        assert status == 400, target
        assert orjson.loads(body)["step"] == "path"
    assert len(env.rec.seen) == 1


# -- 2. identity headers can't be forged ---------------------------------------------------------
FORGED = [
    "X-Tokenward-Org: evil",
    "x-tokenward-org: evil",
    "X_Tokenward_Org: evil",
    "X.Tokenward.Team: evil",
    "X-TOKENWARD-SCOPES: admin:*",
    "X-Tokenward-Token-Id: AAAAAAAAAAAA",
    "X-Tokenward-Service-Account: root",
    "X-Tokenward-Anything-New: x",
]


async def test_identity_headers_cannot_be_forged(env: Env) -> None:
    extra = [
        *FORGED,
        "Connection: X-Tokenward-Org, X-Forwarded-For, X-Request-Id, X-Tokenward-Team",
        "X-Forwarded-For: 6.6.6.6",
        "Forwarded: for=6.6.6.6",
        "X-Real-IP: 6.6.6.6",
        "X-Original-URL: /admin",
        "X-Original-Method: DELETE",
        "X-Forwarded-Host: evil",
        "X-Forwarded-Proto: https",
    ]
    status, _, _ = await raw(env.gw.server.proxy_port, request(APIS, env.host, env.token, *extra))
    assert status == 200
    headers = env.rec.seen[0]["headers"]
    identity = [
        (k, v) for k, v in headers if k.lower().replace("_", "-").replace(".", "-").startswith("x-tokenward-")
    ]
    names = sorted(k.lower() for k, _ in identity)
    assert names == sorted(
        [
            "x-tokenward-token-id",
            "x-tokenward-token-name",
            "x-tokenward-org",
            "x-tokenward-team",
            "x-tokenward-scopes",
        ]
    )  # the token has no service account: the forged one is dropped and none is set
    values = {k.lower(): v for k, v in identity}
    assert values["x-tokenward-org"] == "acme" and values["x-tokenward-team"] == "platform"
    assert values["x-tokenward-scopes"] == "write:apis"  # write:apis covers read:apis
    seen = {k.lower(): v for k, v in headers}
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-host"] == env.host and seen["x-forwarded-proto"] == "http"
    assert "x-request-id" in seen
    for gone in ("forwarded", "x-real-ip", "x-original-url", "x-original-method", "connection"):
        assert gone not in seen, gone


# -- 3. one credential, one meaning --------------------------------------------------------------
async def test_one_credential_one_meaning(env: Env) -> None:
    port, host, token = env.gw.server.proxy_port, env.host, env.token
    # (a second Authorization header and method-override headers: tests/test_header_rules_table.py)
    cases: list[tuple[bytes, int]] = [
        (request(f"{APIS}?access_token={token}", host, token), 400),
        (request(f"{APIS}?access_token={token}", host, None), 400),
        (request(f"{APIS}?q={token}", host, None), 400),
        (request(f"{APIS}?Access_Token=abc", host, token), 400),
        (request(APIS, host, token, f"Cookie: session={token}"), 400),
        (request(APIS, host, None, f"Cookie: a=b; tw={token}"), 400),
        (request(APIS, host, token, method="get"), 400),
    ]
    for data, expected in cases:
        status, _, body = await raw(port, data)
        assert status == expected, (data[:120], body)
    assert env.rec.seen == []
    # the route is decided on the real method
    status, _, body = await raw(port, request(APIS, host, token, method="DELETE"))
    assert status == 404 and env.rec.seen == []


# -- 4. framing -------------------------------------------------------------------------------------
def smuggle(env: Env, *lines: str, body: str = "") -> bytes:
    head = [f"POST {APIS} HTTP/1.1", f"Host: {env.host}", f"Authorization: Bearer {env.token}", *lines]
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode("latin-1")


SMUGGLED = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_framing_attacks_never_reach_upstream_as_two_requests(env: Env) -> None:
    port = env.gw.server.proxy_port
    attacks = {
        "cl-te": smuggle(
            env, "Content-Length: 40", "Transfer-Encoding: chunked", body="0\r\n\r\n" + SMUGGLED
        ),
        "te-cl": smuggle(env, "Transfer-Encoding: chunked", "Content-Length: 3", body="0\r\n\r\n" + SMUGGLED),
        "dup-cl": smuggle(env, "Content-Length: 3", "Content-Length: 40", body="abc" + SMUGGLED),
        "cl-list": smuggle(env, "Content-Length: 3, 40", body="abc" + SMUGGLED),
        "cl-negative": smuggle(env, "Content-Length: -1", body=SMUGGLED),
        "cl-plus": smuggle(env, "Content-Length: +3", body="abc" + SMUGGLED),
        "te-xchunked": smuggle(env, "Transfer-Encoding: xchunked", body="0\r\n\r\n" + SMUGGLED),
        "te-space": smuggle(env, "Transfer-Encoding : chunked", body="0\r\n\r\n" + SMUGGLED),
        "te-obs-fold": smuggle(env, "Transfer-Encoding:", " chunked", body="0\r\n\r\n" + SMUGGLED),
        "chunk-ext-crlf": smuggle(
            env, "Transfer-Encoding: chunked", body='3;a="x\r\n"\r\nabc\r\n0\r\n\r\n' + SMUGGLED
        ),
        "chunk-size-overflow": smuggle(
            env, "Transfer-Encoding: chunked", body="fffffffffffffffff1\r\nabc\r\n0\r\n\r\n" + SMUGGLED
        ),
        "bare-lf": f"POST {APIS} HTTP/1.1\nHost: {env.host}\nContent-Length: 0\n\n{SMUGGLED}".encode(),
        "dup-host": smuggle(env, "Host: other", "Content-Length: 0"),
        "space-before-colon": smuggle(env, "Content-Length : 0", body=SMUGGLED),
        "nul-in-header": smuggle(env, "X-A: a\x00b", "Content-Length: 0"),
    }
    for name, data in attacks.items():
        status, headers, body = await raw(port, data)
        assert status == 400, (name, status, body[:200])
        assert headers.get("content-type", "").startswith("application/json"), name
        assert orjson.loads(body)["error"] == "invalid_request", name
    assert [s["raw_path"] for s in env.rec.seen if s["raw_path"] != APIS] == []
    assert all(s["method"] == "POST" for s in env.rec.seen)


async def test_pipelined_requests_are_each_authorized(env: Env) -> None:
    """Two honest pipelined requests on one connection: each decided on its own."""
    first = request(APIS, env.host, env.token).replace(b"Connection: close\r\n", b"")
    second = request("/orgs/acme/teams/billing/apis", env.host, env.token)
    reader, writer = await asyncio.open_connection("127.0.0.1", env.gw.server.proxy_port)
    writer.write(first + second)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert data.count(b"HTTP/1.1 200") == 1 and data.count(b"HTTP/1.1 403") == 1
    assert [s["raw_path"] for s in env.rec.seen] == [APIS]


# -- 5. limits -----------------------------------------------------------------------------------
async def test_limits(env: Env) -> None:
    port, host, token = env.gw.server.proxy_port, env.host, env.token
    status, _, body = await raw(port, request(APIS + "?q=" + "a" * 2100, host, token))
    assert status == 414 and orjson.loads(body)["step"] == "limits"
    status, _, body = await raw(port, request(APIS + "?q=" + "a" * 20000, host, token))
    assert status == 414 and orjson.loads(body)["error"] == "uri_too_long"
    many = [f"X-H{i}: v" for i in range(45)]
    status, _, body = await raw(port, request(APIS, host, token, *many))
    assert status == 431
    status, _, _ = await raw(port, request(APIS, host, token, *[f"X-H{i}: v" for i in range(200)]))
    assert status == 431
    status, _, _ = await raw(port, request(APIS, host, token, "X-Big: " + "b" * 9000))
    assert status == 431
    status, _, _ = await raw(port, request(APIS, host, token, *[f"X-M{i}: " + "m" * 1000 for i in range(9)]))
    assert status == 431
    status, _, body = await raw(
        port, request(APIS, host, token, method="POST", body=b"x" * (1024 * 1024 + 1))
    )
    assert status == 413 and orjson.loads(body)["error"] == "payload_too_large"
    assert env.rec.seen == []


async def test_chunked_body_over_the_limit_is_413(env: Env) -> None:
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20)) + b"0\r\n\r\n"
    head = request(APIS, env.host, env.token, "Transfer-Encoding: chunked", method="POST")
    status, _, data = await raw(env.gw.server.proxy_port, head + body)
    assert status == 413, data


async def test_slow_clients_are_cut_off(env: Env) -> None:
    port = env.gw.server.proxy_port
    # headers never finished: the connection is closed after header_timeout
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {APIS} HTTP/1.1\r\nHost: {env.host}\r\nX-Slow: ".encode())
    await writer.drain()
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(-1), 5)
    assert time.monotonic() - started < 3 and b"HTTP/1.1 200" not in data
    writer.close()
    # a body that stalls: 408 after body_timeout
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        request(APIS, env.host, env.token, method="POST", body=b"ab")[:-2].replace(
            b"Content-Length: 2", b"Content-Length: 10"
        )
    )
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 408"), data[:100]


# -- 6. fail closed -----------------------------------------------------------------------------
async def test_any_exception_in_the_decision_path_is_500_and_audited(
    env: Env, logs: LogReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(env.gw.runtime.authenticator, "authenticate", broken)
    status, _, body = await raw(env.gw.server.proxy_port, request(APIS, env.host, env.token))
    assert status == 500 and orjson.loads(body)["error"] == "internal_error"
    assert env.rec.seen == []
    (event,) = logs.events("request.denied")
    assert event["status"] == 500 and event["step"] == "internal"


# -- 7. caches can't widen access ------------------------------------------------------------------
async def test_cached_token_is_decided_afresh(env: Env) -> None:
    gw, port = env.gw, env.gw.server.proxy_port
    token, kid = await gw.token("platform", ["read:apis"])
    assert (await raw(port, request(APIS, env.host, token)))[0] == 200
    # another route, another scope: decided afresh, not from the cached allow
    assert (await raw(port, request(APIS, env.host, token, method="POST")))[0] == 403
    assert (await raw(port, request("/orgs/acme/teams/billing/apis", env.host, token)))[0] == 403
    # expiry moved into the past in the store: the next request sees it
    record = await gw.runtime.store.get_token(kid)
    assert record is not None
    from dataclasses import replace

    await gw.runtime.store.put_token(replace(record, expires_at=time.time() - 1))
    status, _, body = await raw(port, request(APIS, env.host, token))
    assert (status, orjson.loads(body)["message"]) == (401, "token expired")
    # team loses the permission: the next request sees it
    token2, _ = await gw.token("platform", ["read:apis"])
    assert (await raw(port, request(APIS, env.host, token2)))[0] == 200
    team = await gw.runtime.store.get_team("acme", "platform")
    assert team is not None
    await gw.runtime.store.put_team(replace(team, permissions=()))
    status, _, body = await raw(port, request(APIS, env.host, token2))
    assert (status, orjson.loads(body)["step"]) == (403, "scope")


def test_refuses_to_start_without_the_c_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiohttp import http_parser

    from tokenward.server import require_c_parser

    require_c_parser(False)  # the C parser is what we run on here
    monkeypatch.setattr(http_parser, "HttpRequestParser", http_parser.HttpRequestParserPy)
    with pytest.raises(SystemExit, match="C HTTP parser"):
        require_c_parser(False)
    require_c_parser(True)  # allowed, loudly
