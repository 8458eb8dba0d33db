"""Forwarding, identity and request-id headers from clients (issue 10, items 10 and 12): raw
bytes through the real gateway to an upstream that records exactly what reached it.

- Other proxies' identity headers and restatements of the path or method never reach the
  upstream, from anyone, in any spelling (case, `_`, `.`).
- Their client-address headers (the whole `X-Forwarded-*` family, `Forwarded`, `X-Real-IP`,
  `CF-*`, `True-Client-IP`, ...) are kept only from `trusted_proxies`, and then only in their
  canonical spelling.
- `strip_headers` adds names and prefixes of its own.
- `X-Request-Id` is the request's id only from a trusted proxy and only when well-formed;
  otherwise tokenward makes one and audits the client's value as `client_request_id`.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from tests.helpers.gateway import APIS, Gateway, LogReader
from tests.helpers.rawhttp import Recorder, hardening_config, raw, request
from tokenward.gateway.settings import ConfigError, settings_from_dict

# Never forwarded, from anyone (identity of other authenticating proxies; path/method restatements).
NEVER = [
    "X-Forwarded-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Forwarded-Preferred-Username",
    "X-Forwarded-Access-Token",
    "X-Forwarded-Id-Token",
    "X-Forwarded-Client-Cert",
    "X-Forwarded-Tls-Client-Cert",
    "X-Forwarded-Path",
    "X-Forwarded-Uri",
    "X-Forwarded-Method",
    "X-Forwarded-Anything-New",
    "CF-Access-Authenticated-User-Email",
    "Cf-Access-Jwt-Assertion",
    "Remote-User",
    "Remote-Groups",
    "Remote-Email",
    "X-Remote-User",
    "X-Remote-Group",
    "X-Auth-Request-User",
    "X-Auth-Request-Email",
    "X-Auth-Request-Groups",
    "X-Auth-Request-Access-Token",
    "X-Auth-Request-Preferred-Username",
    "X-Pomerium-Jwt-Assertion",
    "X-Pomerium-Claim-Email",
    "X-Original-URL",
    "X-Original-URI",
    "X-Original-Method",
    "X-Original-Forwarded-For",
    "X-Rewrite-URL",
    "X-Amzn-Oidc-Identity",
    "X-Amzn-Oidc-Accesstoken",
    "X-Goog-Authenticated-User-Email",
    "X-Goog-Iap-Jwt-Assertion",
    "X-MS-CLIENT-PRINCIPAL",
    "X-MS-CLIENT-PRINCIPAL-NAME",
    "X-MS-TOKEN-AAD-ACCESS-TOKEN",
    "X-authentik-username",
    "X-Vouch-User",
    "X-WEBAUTH-USER",
    "X-SSL-Client-Cert",
    "X-Client-Cert",
    "X-Client-Verify",
    "X-Consumer-Username",
    "X-Authenticated-Userid",
    "X-Userinfo",
    "X-Apigateway-Context",
    "X-Internal-User",  # strip_headers: exact
    "X-Legacy-Role",  # strip_headers: prefix X-Legacy-*
    "x-legacy-anything",
]
# Kept only from trusted proxies, in their canonical spelling.
PROXY = [
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Ssl",
    "X-Forwarded-Scheme",
    "X-Forwarded-Server",
    "Forwarded",
    "X-Forwarded",
    "X-Real-IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "CF-Connecting-IPv6",
    "CF-IPCountry",
    "Akamai-Origin-Hop",
    "X-Akamai-Edgescape",
    "Fastly-Client-IP",
    "Fastly-SSL",
    "X-Client-IP",
    "X-Cluster-Client-IP",
    "Client-IP",
    "X-Originating-IP",
    "X-Envoy-External-Address",
    "X-Envoy-Original-Path",
    "X-Envoy-Internal",
]
# Always replaced by tokenward's own value (from trusted proxies: appended to / taken from).
REPLACED = ["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"]



def spellings(name: str) -> list[str]:
    """The name as sent, lower, upper, with `_`, with `.`, and with one `_` among `-`."""
    return [
        name,
        name.lower(),
        name.upper(),
        name.replace("-", "_"),
        name.replace("-", "."),
        name.replace("-", "_", 1),
        name.lower().replace("-", "_"),
    ]


def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def trust_config(port: int, trusted: bool) -> dict[str, Any]:
    config = hardening_config(port)
    config["limits"].update({"max_header_count": 400, "max_header_bytes": "64k"})
    config["strip_headers"] = ["X-Internal-User", "X-Legacy-*"]
    if trusted:
        config["trusted_proxies"] = ["127.0.0.1/32"]
    return config


async def gateway_for(
    start_gateway: Callable[..., Awaitable[Gateway]], rec: Recorder, trusted: bool
) -> tuple[Gateway, str, str]:
    gw = await start_gateway(trust_config(rec.port, trusted))
    await gw.team("platform", ["read:apis"])
    token, _ = await gw.token("platform", ["read:apis"])
    return gw, token, f"127.0.0.1:{gw.server.proxy_port}"


def seen_by_norm(rec: Recorder) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for name, value in rec.seen[-1]["headers"]:
        out.setdefault(norm(name), []).append((name, value))
    return out


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted-client", "trusted-proxy"])
@pytest.mark.parametrize("spelling", range(7))
async def test_identity_and_path_headers_of_other_proxies_never_reach_the_upstream(
    start_gateway: Callable[..., Awaitable[Gateway]], recorder: Recorder, trusted: bool, spelling: int
) -> None:
    gw, token, host = await gateway_for(start_gateway, recorder, trusted)
    names = [spellings(name)[spelling] for name in NEVER]
    extra = [f"{name}: forged-{i}" for i, name in enumerate(names)]
    status, _, body = await raw(gw.server.proxy_port, request(APIS, host, token, *extra))
    assert status == 200, body
    seen = seen_by_norm(recorder)
    leaked = [pair for pairs in seen.values() for pair in pairs if "forged" in pair[1]]
    assert leaked == []
    assert not {norm(n) for n in names} & set(seen)
    assert seen["x-tokenward-org"] == [("X-Tokenward-Org", "acme")]


@pytest.mark.parametrize("spelling", range(7))
async def test_client_address_headers_from_an_untrusted_client_are_removed(
    start_gateway: Callable[..., Awaitable[Gateway]], recorder: Recorder, spelling: int
) -> None:
    gw, token, host = await gateway_for(start_gateway, recorder, trusted=False)
    names = [spellings(name)[spelling] for name in PROXY + REPLACED]
    extra = [f"{name}: 6.6.6.{i}" for i, name in enumerate(names)]
    status, _, _ = await raw(gw.server.proxy_port, request(APIS, host, token, *extra))
    assert status == 200
    seen = seen_by_norm(recorder)
    assert not [pair for pairs in seen.values() for pair in pairs if "6.6.6." in pair[1]]
    assert not {norm(n) for n in PROXY} & set(seen)
    assert seen["x-forwarded-for"] == [("X-Forwarded-For", "127.0.0.1")]
    assert seen["x-forwarded-proto"] == [("X-Forwarded-Proto", "http")]
    assert seen["x-forwarded-host"] == [("X-Forwarded-Host", host)]


async def test_client_address_headers_from_a_trusted_proxy_are_kept_in_canonical_spelling_only(
    start_gateway: Callable[..., Awaitable[Gateway]], recorder: Recorder
) -> None:
    gw, token, host = await gateway_for(start_gateway, recorder, trusted=True)
    extra = [f"{name}: 203.0.113.{i}" for i, name in enumerate(PROXY)]
    odd = [spellings(name)[k] for name in PROXY + REPLACED for k in (3, 4, 5) if "-" in name]
    extra += [f"{name}: 6.6.6.6" for name in odd]
    extra += ["X-Forwarded-For: 198.51.100.7", "X-Forwarded-Proto: https", "X-Forwarded-Host: api.example"]
    status, _, _ = await raw(gw.server.proxy_port, request(APIS, host, token, *extra))
    assert status == 200
    seen = seen_by_norm(recorder)
    for i, name in enumerate(PROXY):
        assert seen[norm(name)] == [(name, f"203.0.113.{i}")], name
    assert not [pair for pairs in seen.values() for pair in pairs if "6.6.6.6" in pair[1]]
    assert seen["x-forwarded-for"] == [("X-Forwarded-For", "198.51.100.7, 127.0.0.1")]
    assert seen["x-forwarded-proto"] == [("X-Forwarded-Proto", "https")]
    assert seen["x-forwarded-host"] == [("X-Forwarded-Host", "api.example")]


async def test_ordinary_headers_still_pass(start_gateway: Callable[..., Awaitable[Gateway]], recorder: Recorder) -> None:
    gw, token, host = await gateway_for(start_gateway, recorder, trusted=False)
    kept = ["X-Custom: 1", "Accept: application/json", "X-Client-Version: 2.1", "X-User-Agent-Hint: a", "Cf: x"]
    status, _, _ = await raw(gw.server.proxy_port, request(APIS, host, token, *kept))
    assert status == 200
    seen = {name.lower(): value for name, value in recorder.seen[-1]["headers"]}
    for line in kept:
        name, _, value = line.partition(": ")
        assert seen[name.lower()] == value


async def test_strip_headers_follows_a_reload(
    start_gateway: Callable[..., Awaitable[Gateway]], recorder: Recorder
) -> None:
    """A reload swaps the list (the policy is per settings object)."""
    gw, token, host = await gateway_for(start_gateway, recorder, trusted=False)
    data = request(APIS, host, token, "X-Team-Secret: s", "X-Internal-User: u")
    assert (await raw(gw.server.proxy_port, data))[0] == 200
    seen = {name.lower() for name, _ in recorder.seen[-1]["headers"]}
    assert "x-team-secret" in seen and "x-internal-user" not in seen
    raw_config = trust_config(recorder.port, trusted=False)
    raw_config["strip_headers"] = ["x_team_secret"]
    new = settings_from_dict(copy.deepcopy(raw_config), "test")
    gw.runtime.settings = new
    assert (await raw(gw.server.proxy_port, data))[0] == 200
    seen = {name.lower() for name, _ in recorder.seen[-1]["headers"]}
    assert "x-team-secret" not in seen and "x-internal-user" in seen


@pytest.mark.parametrize(
    "value, problem",
    [
        ("X Bad", "is not a header name"),
        ("", "is not a header name"),
        ("*", "is not a header name"),
        ("X-A*B", "is not a header name"),
        (7, "is not a header name"),
        ("X-Tokenward-Org", "is set by tokenward itself"),
        ("x_request_id", "is set by tokenward itself"),
        ("Host", "is set by tokenward itself"),
    ],
)
def test_strip_headers_is_validated_with_its_location(value: object, problem: str) -> None:
    config = trust_config(9, trusted=False)
    config["strip_headers"] = ["X-Fine", value]
    with pytest.raises(ConfigError) as info:
        settings_from_dict(config, "test")
    assert any(p.startswith("strip_headers[1]: ") and problem in p for p in info.value.problems), info.value.problems


def test_strip_headers_must_be_a_list() -> None:
    config = trust_config(9, trusted=False)
    config["strip_headers"] = "X-One"
    with pytest.raises(ConfigError, match="strip_headers: expected a list"):
        settings_from_dict(config, "test")


def test_strip_headers_are_stored_normalized() -> None:
    config = trust_config(9, trusted=False)
    config["strip_headers"] = ["X_Internal.User", "X-Legacy-*"]
    assert settings_from_dict(config, "test").strip_headers == ("x-internal-user", "x-legacy-*")


# -- request ids --------------------------------------------------------------------------------
def response_id(headers: dict[str, str], body: bytes) -> str:
    rid = headers["x-request-id"]
    if headers.get("content-type", "").startswith("application/json") and b"request_id" in body:
        assert orjson.loads(body)["request_id"] == rid
    return rid


CLIENT_IDS = [
    "client-chosen-1",
    "0123456789abcdef0123456789abcdef",
    "550e8400-e29b-41d4-a716-446655440000",
    ("trace-" + "-abc123" * 18)[:128],
]


@pytest.mark.parametrize("client_id", CLIENT_IDS)
@pytest.mark.parametrize("token_kind", ["valid", "none", "public"])
async def test_an_untrusted_client_never_chooses_the_request_id(
    start_gateway: Callable[..., Awaitable[Gateway]],
    recorder: Recorder,
    logs: LogReader,
    client_id: str,
    token_kind: str,
) -> None:
    gw, token, host = await gateway_for(start_gateway, recorder, trusted=False)
    target = "/api" if token_kind == "public" else APIS
    data = request(target, host, token if token_kind == "valid" else None, f"X-Request-Id: {client_id}")
    status, headers, body = await raw(gw.server.proxy_port, data)
    assert status == (401 if token_kind == "none" else 200)
    rid = response_id(headers, body)
    assert rid != client_id
    if status == 200:
        upstream_ids = [v for k, v in recorder.seen[-1]["headers"] if norm(k) == "x-request-id"]
        assert upstream_ids == [rid]
    (event,) = [e for e in logs.events() if e.get("action", "").startswith("request.")]
    assert event["request_id"] == rid and event["client_request_id"] == client_id


@pytest.mark.parametrize(
    "lines, audited",
    [
        (["X-Request-Id: a b<c>\xe9"], "a?b?c??"),  # unsafe characters are replaced
        (["X-Request-Id: " + "x-" * 150], ("x-" * 64)),  # bounded
        (["X-Request-Id: one", "X-Request-Id: two"], "one,two"),
        (["X_Request_Id: underscored"], None),  # not the header: dropped, never the id
    ],
)
async def test_malformed_client_request_ids_are_sanitized_in_audit(
    start_gateway: Callable[..., Awaitable[Gateway]],
    recorder: Recorder,
    logs: LogReader,
    lines: list[str],
    audited: str | None,
) -> None:
    gw, token, host = await gateway_for(start_gateway, recorder, trusted=True)
    status, headers, _ = await raw(gw.server.proxy_port, request(APIS, host, token, *lines))
    assert status in (200, 400)
    rid = headers["x-request-id"]
    assert len(rid) == 32 and all(c in "0123456789abcdef" for c in rid)
    (event,) = [e for e in logs.events() if e.get("action", "").startswith("request.")]
    assert event["request_id"] == rid
    assert event.get("client_request_id") == audited
    if status == 200:
        assert [v for k, v in recorder.seen[-1]["headers"] if norm(k) == "x-request-id"] == [rid]


@pytest.mark.parametrize(
    "client_id, kept",
    [
        ("abc-123", True),
        ("0123456789abcdef0123456789abcdef", True),  # nginx's $request_id
        ("550e8400-e29b-41d4-a716-446655440000", True),  # Envoy's
        ("svc:trace.42_x", True),
        (("trace-" + "-abc123" * 18)[:128], True),
        (("trace-" + "-abc123" * 18)[:129], False),
        ("has space", False),
        ("quote\"d", False),
        ("tw_sat_AbCdEfGhIjKl0123456789abcdefghijABCDEFGHIJ123456", False),  # token-shaped
    ],
)
async def test_a_trusted_proxy_sets_the_request_id_when_well_formed(
    start_gateway: Callable[..., Awaitable[Gateway]],
    recorder: Recorder,
    logs: LogReader,
    client_id: str,
    kept: bool,
) -> None:
    gw, token, host = await gateway_for(start_gateway, recorder, trusted=True)
    status, headers, _ = await raw(gw.server.proxy_port, request(APIS, host, token, f"X-Request-Id: {client_id}"))
    assert status == 200
    rid = headers["x-request-id"]
    assert (rid == client_id) is kept
    assert [v for k, v in recorder.seen[-1]["headers"] if norm(k) == "x-request-id"] == [rid]
    (event,) = logs.events("request.allowed")
    assert event["request_id"] == rid
    if kept:
        assert "client_request_id" not in event
    else:
        assert "tw_sat_" not in event["client_request_id"]


async def test_forward_auth_and_admin_ids_follow_the_same_rule(
    start_gateway: Callable[..., Awaitable[Gateway]], recorder: Recorder
) -> None:
    gw, token, host = await gateway_for(start_gateway, recorder, trusted=False)
    # forward-auth from an untrusted caller: refused, with tokenward's own id
    data = request("/_tokenward/verify", host, token, f"X-Original-URI: {APIS}", "X-Request-Id: mine")
    status, headers, body = await raw(gw.server.proxy_port, data)
    assert status == 403 and response_id(headers, body) != "mine"
    # the admin listener: the id is never the untrusted client's
    async with gw.session.get(f"{gw.admin_url}/v1/whoami", headers={"X-Request-Id": "mine"}) as r:
        assert r.status == 401
        assert r.headers["X-Request-Id"] != "mine"
        assert (await r.json())["request_id"] == r.headers["X-Request-Id"]


async def test_a_forward_auth_check_from_a_trusted_proxy_carries_its_id(
    start_gateway: Callable[..., Awaitable[Gateway]], recorder: Recorder
) -> None:
    trusted_gw, token, host = await gateway_for(start_gateway, recorder, trusted=True)
    data = request("/_tokenward/verify", host, token, f"X-Original-URI: {APIS}", "X-Request-Id: proxy-1")
    status, headers, _ = await raw(trusted_gw.server.proxy_port, data)
    assert status == 200 and headers["x-request-id"] == "proxy-1"
