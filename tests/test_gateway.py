"""End to end through the real gateway: decision order, errors, forwarding, revocation, outages.

Every test runs tokenward's real apps on real sockets in front of a real echo upstream,
with a real Valkey server as the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from tests.helpers.gateway import APIS, Gateway, LogReader, last_char_changed
from tokenward.gateway.embedded import EmbeddedServer, free_port
from tokenward.gateway.tokens import generate


async def call(
    gw: Gateway, method: str, path: str, token: str | None = None, **kw: Any
) -> tuple[int, Any, Any]:
    headers = dict(kw.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with gw.session.request(method, gw.url + path, headers=headers, **kw) as response:
        if response.content_type == "application/json":
            body = await response.json()
        else:
            body = await response.read()
        return response.status, body, response.headers


def upstream_headers(body: dict[str, Any]) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for name, value in body["headers"]:
        seen.setdefault(name.lower(), []).append(value)
    return seen


@pytest.fixture
async def platform(gateway: Gateway) -> Gateway:
    await gateway.team("platform", ["read:apis", "write:apis", "read:specs"])
    await gateway.team("billing", ["read:apis", "write:apis"])
    return gateway


# -- the decision steps, each in isolation ---------------------------------------------------
# (org, team, constraints and scope, as one table: tests/test_authorize_table.py)
async def test_no_route_is_404_with_json_body(platform: Gateway) -> None:
    status, body, headers = await call(platform, "GET", "/nothing/here")
    assert status == 404
    assert body["step"] == "route" and body["error"] == "not_found"
    assert body["request_id"] == headers["X-Request-Id"]


async def test_method_not_in_route_is_404(platform: Gateway) -> None:
    token, _ = await platform.token("platform", ["read:apis"])
    status, body, _ = await call(platform, "DELETE", APIS, token)
    assert (status, body["step"]) == (404, "route")


async def test_missing_token_is_401_without_error_code(platform: Gateway) -> None:
    status, body, headers = await call(platform, "GET", APIS)
    assert status == 401
    assert body["step"] == "credential"
    assert headers["WWW-Authenticate"] == 'Bearer realm="tokenward"'


@pytest.mark.parametrize(
    "authorization, message",
    [
        ("Basic dXNlcjpwYXNz", "Authorization must use the Bearer scheme"),
        ("Bearer", "token is malformed"),
        ("Bearer not-a-token", "token is malformed"),
        ("Bearer tw_sat_" + "A" * 50, "token checksum does not match"),
        ("Bearer gh_pat_" + "A" * 50, "token prefix is not accepted here"),
    ],
)
async def test_malformed_credentials_are_401(platform: Gateway, authorization: str, message: str) -> None:
    status, body, headers = await call(platform, "GET", APIS, headers={"Authorization": authorization})
    assert status == 401
    assert body["step"] == "credential"
    assert body["message"] == message
    assert headers["WWW-Authenticate"].startswith('Bearer realm="tokenward"')


async def test_bad_checksum_never_reaches_the_store(platform: Gateway, redis_url: str) -> None:
    token, _ = await platform.token("platform", ["read:apis"])
    broken = last_char_changed(token)
    client = redis.Redis.from_url(redis_url)
    client.config_resetstat()
    for _ in range(20):
        status, body, _ = await call(platform, "GET", APIS, broken)
        assert (status, body["step"]) == (401, "credential")
    stats = client.info("commandstats")
    client.close()
    assert "cmdstat_hget" not in stats and "cmdstat_hmget" not in stats
    assert platform.runtime.authenticator.argon2_verifications == 0


async def test_unknown_id_and_wrong_secret_look_the_same(platform: Gateway) -> None:
    token, _ = await platform.token("platform", ["read:apis"])
    unknown, _ = generate("tw_sat")  # well-formed, valid checksum, never stored
    # same key id, different secret, recomputed checksum
    from tokenward.gateway.tokens import checksum

    head = token[: -6 - 32] + "x" * 32
    wrong_secret = head + checksum(head)
    results = []
    for candidate in (unknown, wrong_secret):
        status, body, headers = await call(platform, "GET", APIS, candidate)
        body.pop("request_id")
        results.append((status, body, headers["WWW-Authenticate"]))
    assert results[0] == results[1]
    assert results[0][0] == 401 and results[0][1]["step"] == "token"
    assert results[0][1]["message"] == "invalid token"


async def test_revoked_and_expired_say_which(platform: Gateway) -> None:
    expired, _ = await platform.token("platform", ["read:apis"], expires_at=time.time() - 1)
    status, body, _ = await call(platform, "GET", APIS, expired)
    assert (status, body["step"], body["message"]) == (401, "status", "token expired")

    token, kid = await platform.token("platform", ["read:apis"])
    assert (await call(platform, "GET", APIS, token))[0] == 200
    record = await platform.runtime.store.get_token(kid)
    assert record is not None
    await platform.runtime.store.put_token(record.revoked(time.time(), "test"))
    status, body, headers = await call(platform, "GET", APIS, token)
    assert (status, body["step"], body["message"]) == (401, "status", "token revoked")
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]


async def test_allowed_cidrs(platform: Gateway) -> None:
    outside, _ = await platform.token("platform", ["read:apis"], allowed_cidrs=("10.0.0.0/8",))
    status, body, _ = await call(platform, "GET", APIS, outside)
    assert (status, body["step"]) == (401, "status")
    assert body["message"] == "client address not allowed for this token"
    inside, _ = await platform.token("platform", ["read:apis"], allowed_cidrs=("127.0.0.0/8",))
    assert (await call(platform, "GET", APIS, inside))[0] == 200


async def test_team_permission_change_applies_on_next_request(platform: Gateway) -> None:
    token, _ = await platform.token("platform", ["write:specs"])
    spec = f"{APIS}/petstore/specs"
    assert (await call(platform, "POST", spec, token))[0] == 403
    team = await platform.runtime.store.get_team("acme", "platform")
    assert team is not None
    from dataclasses import replace

    from tokenward.gateway.scopes import parse_scopes

    await platform.runtime.store.put_team(replace(team, permissions=parse_scopes(["write:specs"])))
    assert (await call(platform, "POST", spec, token))[0] == 200
    assert (await call(platform, "GET", APIS, token))[0] == 403  # read:apis no longer held


@pytest.mark.parametrize(
    "case, expected",
    [
        # each case fails several steps; only the earliest may be reported (the cases among
        # org, team, constraints and scope are in tests/test_authorize_table.py)
        ("no-route-and-no-token", (404, "route")),
        ("revoked-and-other-org", (401, "status")),
    ],
)
async def test_first_failing_step_is_reported(
    platform: Gateway, case: str, expected: tuple[int, str]
) -> None:
    token, kid = await platform.token("platform", ["read:apis"])
    if case == "no-route-and-no-token":
        status, body, _ = await call(platform, "GET", "/unknown")
    else:
        record = await platform.runtime.store.get_token(kid)
        assert record is not None
        await platform.runtime.store.put_token(record.revoked(time.time(), "test"))
        status, body, _ = await call(platform, "GET", "/orgs/other/teams/platform/apis", token)
    assert (status, body["step"]) == expected


# -- revocation through the admin API -----------------------------------------------------------
async def test_revoke_makes_the_very_next_request_fail(platform: Gateway) -> None:
    admin = await platform.org_admin()
    token, kid = await platform.token("platform", ["read:apis"])
    for _ in range(3):  # warm every cache
        assert (await call(platform, "GET", APIS, token))[0] == 200
    async with platform.session.post(
        f"{platform.admin_url}/v1/orgs/acme/teams/platform/tokens/{kid}/revoke",
        headers=platform.auth(admin),
    ) as response:
        assert response.status == 200
        assert (await response.json())["status"] == "revoked"
    status, body, _ = await call(platform, "GET", APIS, token)
    assert (status, body["message"]) == (401, "token revoked")


# -- forwarding ----------------------------------------------------------------------------------
async def test_forwarded_headers(platform: Gateway) -> None:
    """The target as sent and the token's identity; what happens to each inbound header is in
    tests/test_header_rules_table.py."""
    token, kid = await platform.token("platform", ["read:apis"], name="ci-reader")
    status, body, _ = await call(platform, "GET", APIS + "?page=2&q=a%20b", token)
    assert status == 200
    seen = upstream_headers(body)
    assert body["raw_path"] == APIS + "?page=2&q=a%20b"
    assert seen["x-tokenward-org"] == ["acme"]
    assert seen["x-tokenward-team"] == ["platform"]
    assert seen["x-tokenward-token-id"] == [kid]
    assert seen["x-tokenward-token-name"] == ["ci-reader"]
    assert seen["x-tokenward-scopes"] == ["read:apis"]
    assert "x-tokenward-service-account" not in seen  # no service account: no header


async def test_large_bodies_stream_both_ways(platform: Gateway) -> None:
    token, _ = await platform.token("platform", ["write:apis"])
    size = 12 * 1024 * 1024

    async def upload() -> Any:
        chunk = b"y" * (1024 * 1024)
        for _ in range(size // len(chunk)):
            yield chunk

    status, body, _ = await call(platform, "POST", APIS, token, data=upload())
    assert status == 200 and body["body_length"] == size
    status, data, headers = await call(platform, "GET", f"{APIS}?bytes={size}", token)
    assert status == 200
    assert len(data) == size and headers["Content-Length"] == str(size)


async def test_upstream_down_is_502_and_slow_is_504(
    start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]
) -> None:
    config["upstreams"]["dead"] = {"url": f"http://127.0.0.1:{free_port()}", "timeout": "1s"}
    config["upstreams"]["slow"] = {"url": config["upstreams"]["registry"]["url"], "timeout": "300ms"}
    config["routes"] += [
        {"methods": ["GET"], "path": "/dead", "upstream": "dead", "public": True},
        {"methods": ["GET"], "path": "/slow", "upstream": "slow", "public": True},
    ]
    gw = await start_gateway(config)
    status, body, _ = await call(gw, "GET", "/dead")
    assert (status, body["error"]) == (502, "bad_gateway")
    status, body, _ = await call(gw, "GET", "/slow?sleep=2")
    assert (status, body["error"]) == (504, "gateway_timeout")
    assert (await call(gw, "GET", "/slow?sleep=0"))[0] == 200


# -- the store --------------------------------------------------------------------------------
async def test_store_unreachable_is_503_never_401(
    start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any], tmp_path: Any
) -> None:
    server = EmbeddedServer(tmp_path / "store", port=free_port())
    server.start()
    try:
        gw = await start_gateway(config, url=server.url)
        await gw.team("platform", ["read:apis"])
        token, _ = await gw.token("platform", ["read:apis"])
    finally:
        server.stop()
    status, body, headers = await call(gw, "GET", APIS, token)
    assert status == 503
    assert body["error"] == "store_unavailable"
    assert headers["Retry-After"]


# -- audit --------------------------------------------------------------------------------------
async def test_each_decision_is_one_audit_event(platform: Gateway, logs: LogReader) -> None:
    token, kid = await platform.token("platform", ["read:apis"], name="auditor")
    status, _, headers = await call(platform, "GET", APIS, token)
    assert status == 200
    await call(platform, "POST", APIS, token)
    allowed = logs.events("request.allowed")
    denied = logs.events("request.denied")
    assert len(allowed) == 1 and len(denied) == 1
    event = allowed[0]
    assert event["event"] == "[Service Token] request.allowed"
    for field, value in {
        "token_id": kid,
        "token_name": "auditor",
        "org": "acme",
        "team": "platform",
        "method": "GET",
        "path": APIS,
        "route": "GET /orgs/{org}/teams/{team}/apis",
        "status": 200,
        "step": "forward",
        "client_ip": "127.0.0.1",
        "request_id": headers["X-Request-Id"],
    }.items():
        assert event[field] == value, field
    assert "service_account" in event and event["duration_ms"] >= 0
    assert denied[0]["step"] == "scope" and denied[0]["status"] == 403
    assert denied[0]["reason"] == "token lacks required permission: write:apis"
    assert token not in logs.raw().decode()


async def test_last_used_is_written_behind(platform: Gateway) -> None:
    token, kid = await platform.token("platform", ["read:apis"])
    assert await platform.runtime.store.last_used(kid) is None
    assert (await call(platform, "GET", APIS, token))[0] == 200
    for _ in range(50):
        if await platform.runtime.store.last_used(kid):
            break
        await asyncio.sleep(0.1)
    used = await platform.runtime.store.last_used(kid)
    assert used is not None and abs(used - time.time()) < 10
