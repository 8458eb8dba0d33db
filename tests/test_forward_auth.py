"""`/_tokenward/verify`: the same decision without forwarding, for nginx auth_request, Traefik
ForwardAuth and Envoy ext_authz (HTTP)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.helpers.gateway import APIS, Gateway, LogReader
from tokenward.gateway.embedded import free_port

VERIFY = "/_tokenward/verify"


@pytest.fixture
async def fa(start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]) -> Gateway:
    config["trusted_proxies"] = ["127.0.0.1/32"]
    # nothing may be forwarded: the upstream is a closed port
    config["upstreams"]["registry"]["url"] = f"http://127.0.0.1:{free_port()}"
    gw = await start_gateway(config)
    await gw.team("platform", ["read:apis"])
    return gw


async def verify(
    gw: Gateway, path: str = VERIFY, method: str = "GET", **headers: str
) -> tuple[int, Any, Any]:
    async with gw.session.request(method, gw.url + path, headers=headers) as r:
        body = await r.json() if r.content_type == "application/json" else await r.read()
        return r.status, body, r.headers


@pytest.mark.parametrize(
    "style",
    [
        {"X-Original-URI": APIS, "X-Original-Method": "GET"},  # nginx auth_request
        {"X-Forwarded-Uri": APIS, "X-Forwarded-Method": "GET"},  # Traefik ForwardAuth
        {"X-Original-URI": APIS + "?page=2"},  # method defaults to the verify request's own
    ],
    ids=["nginx", "traefik", "query"],
)
async def test_allowed_answers_200_with_identity(fa: Gateway, style: dict[str, str], logs: LogReader) -> None:
    token, kid = await fa.token("platform", ["read:apis"], name="ci")
    status, _body, headers = await verify(fa, **style, Authorization=f"Bearer {token}")
    assert status == 200
    assert headers["X-Tokenward-Token-Id"] == kid and headers["X-Tokenward-Org"] == "acme"
    assert headers["X-Tokenward-Team"] == "platform" and headers["X-Tokenward-Scopes"] == "read:apis"
    (event,) = logs.events("request.allowed")
    assert event["mode"] == "forward_auth" and event["path"] == APIS and event["status"] == 200


async def test_envoy_style_path_suffix(fa: Gateway) -> None:
    token, _ = await fa.token("platform", ["read:apis"])
    status, _, headers = await verify(fa, VERIFY + APIS, Authorization=f"Bearer {token}")
    assert status == 200 and headers["X-Tokenward-Org"] == "acme"
    status, body, _ = await verify(fa, VERIFY + APIS, method="POST", Authorization=f"Bearer {token}")
    assert (status, body["step"]) == (403, "scope")


@pytest.mark.parametrize(
    "uri, method, expected, step",
    [
        (APIS, "POST", 403, "scope"),
        (APIS, "DELETE", 404, "route"),
        ("/orgs/acme/teams/platform/apis/x/specs", "PUT", 403, "scope"),
        ("/orgs/other/teams/platform/apis", "GET", 403, "org"),
        ("/orgs/acme/teams/billing/apis", "GET", 403, "team"),
        ("/orgs/acme/teams/platform/../billing/apis", "GET", 400, "path"),
        ("/orgs/acme/teams/platform%2fapis", "GET", 400, "path"),
        ("/nothing", "GET", 404, "route"),
        (APIS + "?access_token=x", "GET", 400, "credential"),
    ],
)
async def test_denials_have_the_gateway_bodies(
    fa: Gateway, uri: str, method: str, expected: int, step: str
) -> None:
    token, _ = await fa.token("platform", ["read:apis"])
    status, body, _ = await verify(
        fa, **{"X-Original-URI": uri, "X-Original-Method": method}, Authorization=f"Bearer {token}"
    )
    assert (status, body["step"]) == (expected, step), body
    assert body["request_id"]


async def test_missing_and_revoked_tokens_are_401(fa: Gateway) -> None:
    status, body, headers = await verify(fa, **{"X-Original-URI": APIS})
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="tokenward"'
    token, kid = await fa.token("platform", ["read:apis"])
    record = await fa.runtime.store.get_token(kid)
    assert record is not None
    await fa.runtime.store.put_token(record.revoked(0.0, "test"))
    status, body, _ = await verify(fa, **{"X-Original-URI": APIS}, Authorization=f"Bearer {token}")
    assert (status, body["message"]) == (401, "token revoked")


async def test_public_route_is_200_without_identity(fa: Gateway) -> None:
    status, _, headers = await verify(fa, **{"X-Original-URI": "/health"}, **{"X-Tokenward-Org": "evil"})
    assert status == 200 and "X-Tokenward-Org" not in headers


async def test_ambiguous_or_missing_original_request(fa: Gateway) -> None:
    status, body, _ = await verify(fa, **{"X-Original-URI": APIS, "X-Forwarded-Uri": "/health"})
    assert status == 400
    status, body, _ = await verify(fa)
    assert status == 400 and "X-Original-URI" in body["message"]
    status, body, _ = await verify(fa, **{"X-Original-URI": APIS, "X-Original-Method": "BREW"})
    assert status == 400


async def test_only_trusted_proxies_may_ask(gateway: Gateway) -> None:
    await gateway.team("platform", ["read:apis"])
    token, _ = await gateway.token("platform", ["read:apis"])  # the default test config trusts 10.99/16 only
    status, body, _ = await verify(gateway, **{"X-Original-URI": APIS}, Authorization=f"Bearer {token}")
    assert status == 403 and "trusted_proxies" in body["message"]


async def test_allowed_cidrs_see_the_client_behind_the_proxy(fa: Gateway, logs: LogReader) -> None:
    token, _ = await fa.token("platform", ["read:apis"], allowed_cidrs=("203.0.113.0/24",))
    ask = {"X-Original-URI": APIS, "Authorization": f"Bearer {token}"}
    status, _, _ = await verify(fa, **ask, **{"X-Forwarded-For": "203.0.113.9"})
    assert status == 200
    status, body, _ = await verify(fa, **ask, **{"X-Forwarded-For": "198.51.100.1"})
    assert (status, body["step"]) == (401, "status")
    status, body, _ = await verify(fa, **ask)  # no forwarded client: the proxy itself is the client
    assert (status, body["step"]) == (401, "status")
    assert [e["client_ip"] for e in logs.events()][:2] == ["203.0.113.9", "198.51.100.1"]


def test_client_address() -> None:
    import ipaddress

    from tokenward.gateway.edge import TrustedProxies

    client_address = TrustedProxies((ipaddress.ip_network("10.0.0.0/8"),)).client_address

    def req(peer: str, xff: str | None) -> tuple[str, list[str]]:
        return peer, [xff] if xff else []

    assert client_address(*req("198.51.100.7", "1.2.3.4")) == "198.51.100.7"  # untrusted peer
    assert client_address(*req("10.0.0.1", "1.2.3.4")) == "1.2.3.4"
    assert client_address(*req("10.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.2")) == "1.2.3.4"
    assert client_address(*req("10.0.0.1", "not-an-ip")) == "10.0.0.1"
    assert client_address(*req("10.0.0.1", None)) == "10.0.0.1"
