"""Outside review of the request path's memos (gateway/principal.py known_principal and
Principal.passed, exchange.py SettingsView.targets, routes.py Router._memo, headers.py
IdentityHeaders and HeaderPolicy.raw_kinds): black box through a real gateway on the
conftest's Valkey, every change made through the admin API (or the store, as an admin write
does) and the very next request checked, through the proxy and through forward-auth; plus
the first listener review's findings re-run in more forms. At a47c137 every one holds (no
xfail): these pin the behaviour for the memos' next changes.
"""

from __future__ import annotations

import asyncio
import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.helpers import rawhttp
from tests.helpers.gateway import APIS, TEAMS, TOKENS, Gateway, admin, issue, org_admin_with_team
from tests.helpers.rawhttp import Env
from tokenward.gateway.exchange import SettingsView, check_target
from tokenward.gateway.paths import PathError, parse_target
from tokenward.gateway.routes import AmbiguousPath
from tokenward.gateway.settings import settings_from_dict

VERIFY = "/_tokenward/verify"
SAS = "/v1/orgs/acme/teams/platform/service-accounts"
ACCOUNTS = "/v1/orgs/acme/service-accounts"
PERMISSIONS = ["read:apis", "write:specs", "read:secrets", "admin:team"]
WARM = 4  # requests that make the hot path remember (proof, principal, route, target, headers)


@pytest.fixture
def fa_config(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    config["trusted_proxies"] = ["127.0.0.1/32"]  # forward-auth answers only a trusted proxy
    return config


@pytest.fixture
async def gw(start_gateway: Any, fa_config: dict[str, Any]) -> Gateway:
    gateway: Gateway = await start_gateway(fa_config)
    return gateway


async def proxied(
    gw: Gateway, token: str, path: str = APIS, method: str = "GET"
) -> tuple[int, dict[str, str]]:
    """Status, and the identity headers the upstream got (empty when refused)."""
    async with gw.session.request(method, gw.url + path, headers=gw.auth(token)) as r:
        if r.status != 200:
            await r.read()
            return r.status, {}
        body = await r.json()
        return 200, {k: v for k, v in body["headers"] if k.startswith("X-Tokenward-")}


async def verified(
    gw: Gateway, token: str, path: str = APIS, method: str = "GET"
) -> tuple[int, dict[str, str]]:
    headers = {"X-Original-URI": path, "X-Original-Method": method, "Authorization": f"Bearer {token}"}
    async with gw.session.get(gw.url + VERIFY, headers=headers) as r:
        await r.read()
        return r.status, {k: v for k, v in r.headers.items() if k.startswith("X-Tokenward-")}


async def both(gw: Gateway, token: str, path: str = APIS, method: str = "GET") -> list[int]:
    return [(await proxied(gw, token, path, method))[0], (await verified(gw, token, path, method))[0]]


async def warm(gw: Gateway, token: str, path: str = APIS, method: str = "GET") -> None:
    for _ in range(WARM):
        assert await both(gw, token, path, method) == [200, 200]


async def warm_token(gw: Gateway) -> str:
    """A platform token for read:apis, its principal remembered on both paths."""
    await gw.team("platform", ["read:apis"])
    token, _ = await gw.token("platform", ["read:apis"])
    await warm(gw, token)
    return token


# -- token state ------------------------------------------------------------------------------
async def test_revoke_through_the_admin_api_refuses_the_next_request(gw: Gateway) -> None:
    boss = await org_admin_with_team(gw, PERMISSIONS)
    token = await issue(gw, boss)
    await warm(gw, token["token"])
    status, _, _ = await admin(gw, "POST", f"{TOKENS}/{token['id']}/revoke", boss, {"reason": "leaked"})
    assert status == 200
    assert await both(gw, token["token"]) == [401, 401]


async def test_revoke_while_requests_are_in_flight_no_request_started_after_passes(gw: Gateway) -> None:
    """Requests hammer the gateway while the token is revoked: none started after the admin
    API answered the revoke is allowed (zero over every request sent)."""
    boss = await org_admin_with_team(gw, PERMISSIONS)
    token = await issue(gw, boss)
    await warm(gw, token["token"])
    revoked_at: list[float] = []
    late_allowed = 0
    sent_after = 0
    stop = asyncio.Event()

    async def hammer() -> None:
        nonlocal late_allowed, sent_after
        while not stop.is_set():
            started = time.monotonic()
            status, _ = await proxied(gw, token["token"])
            if revoked_at and started > revoked_at[0]:
                sent_after += 1
                late_allowed += status == 200

    workers = [asyncio.ensure_future(hammer()) for _ in range(4)]
    await asyncio.sleep(0.2)
    status, _, _ = await admin(gw, "POST", f"{TOKENS}/{token['id']}/revoke", boss, {"reason": "leaked"})
    assert status == 200
    revoked_at.append(time.monotonic())
    while sent_after < 40:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.gather(*workers)
    assert late_allowed == 0


async def test_expiry_refuses_at_once(gw: Gateway) -> None:
    await gw.team("platform", ["read:apis"])
    token, kid = await gw.token(
        "platform", ["read:apis"], expires_at=time.time() + 4
    )  # room for the warm-up on a busy machine
    await warm(gw, token)
    record = await gw.runtime.store.get_token(kid)
    assert record is not None and record.expires_at is not None
    await asyncio.sleep(max(0.0, record.expires_at - time.time()) + 0.05)
    assert await both(gw, token) == [401, 401]


async def test_allowed_cidrs_narrowed_refuses_at_once(gw: Gateway) -> None:
    await gw.team("platform", ["read:apis"])
    token, kid = await gw.token("platform", ["read:apis"], allowed_cidrs=("127.0.0.0/8",))
    await warm(gw, token)
    record = await gw.runtime.store.get_token(kid)
    assert record is not None
    await gw.runtime.store.put_token(replace(record, allowed_cidrs=("10.0.0.0/8",)))
    assert await both(gw, token) == [401, 401]


async def test_rotation_old_token_within_grace_then_after(gw: Gateway) -> None:
    boss = await org_admin_with_team(gw, PERMISSIONS)
    token = await issue(gw, boss)
    await warm(gw, token["token"])
    status, data, _ = await admin(gw, "POST", f"{TOKENS}/{token['id']}/rotate", boss, {"grace_period": "0s"})
    assert status in (200, 201), data
    new = data["token"]
    assert (await proxied(gw, new))[0] == 200
    assert await both(gw, token["token"]) == [401, 401]


# -- team permissions -------------------------------------------------------------------------
async def test_team_narrowed_refuses_and_widened_allows_at_once(gw: Gateway) -> None:
    boss = await org_admin_with_team(gw, PERMISSIONS)
    token = await issue(gw, boss, scopes=["read:apis", "write:specs"])
    specs = "/orgs/acme/teams/platform/apis/web/specs"
    await warm(gw, token["token"])
    await warm(gw, token["token"], specs, "PUT")
    status, data, _ = await admin(
        gw, "PUT", f"{TEAMS}/platform/permissions", boss, {"permissions": ["read:apis"]}
    )
    assert status == 200, data
    assert await both(gw, token["token"], specs, "PUT") == [403, 403]
    assert await both(gw, token["token"]) == [200, 200]
    _, headers = await proxied(gw, token["token"])
    assert headers["X-Tokenward-Scopes"] == "read:apis"
    status, data, _ = await admin(
        gw, "PUT", f"{TEAMS}/platform/permissions", boss, {"permissions": PERMISSIONS}
    )
    assert status == 200, data
    assert await both(gw, token["token"], specs, "PUT") == [200, 200]
    status, data, _ = await admin(gw, "PUT", f"{TEAMS}/platform/permissions", boss, {"permissions": []})
    assert status == 200, data
    assert await both(gw, token["token"]) == [403, 403]


# -- service accounts -------------------------------------------------------------------------
async def test_account_rename_changes_the_identity_header_at_once(gw: Gateway) -> None:
    boss = await org_admin_with_team(gw, PERMISSIONS)
    status, data, _ = await admin(gw, "POST", SAS, boss, {"name": "deployer"})
    assert status == 201, data
    token = await issue(gw, boss, service_account="deployer")
    await warm(gw, token["token"])
    assert (await proxied(gw, token["token"]))[1]["X-Tokenward-Service-Account"] == "deployer"
    for name in ("shipper", "deployer", "third"):  # back to a former name too
        current = (await proxied(gw, token["token"]))[1]["X-Tokenward-Service-Account"]
        status, data, _ = await admin(gw, "PATCH", f"{ACCOUNTS}/{current}", boss, {"name": name})
        assert status == 200, data
        assert (await proxied(gw, token["token"]))[1]["X-Tokenward-Service-Account"] == name
        assert (await verified(gw, token["token"]))[1]["X-Tokenward-Service-Account"] == name


async def test_account_removed_from_team_or_deleted_refuses(gw: Gateway) -> None:
    boss = await org_admin_with_team(gw, PERMISSIONS)
    status, _, _ = await admin(gw, "POST", TEAMS, boss, {"name": "billing", "permissions": ["read:apis"]})
    assert status == 201
    status, data, _ = await admin(gw, "POST", SAS, boss, {"name": "deployer"})
    assert status == 201, data
    token = await issue(gw, boss, service_account="deployer")
    await warm(gw, token["token"])
    # the account's membership goes (with its token revoked first, as the API requires)
    status, _, _ = await admin(gw, "POST", f"{TOKENS}/{token['id']}/revoke", boss, {"reason": "x"})
    assert status == 200
    assert await both(gw, token["token"]) == [401, 401]
    # a restore while the account is gone from the team must not bring back a stale name
    status, data, _ = await admin(gw, "DELETE", f"{ACCOUNTS}/deployer", boss)
    assert status == 204, data
    status, data, _ = await admin(gw, "POST", f"{TOKENS}/{token['id']}/restore", boss, {})
    assert status != 200 or await both(gw, token["token"]) == [401, 401], data


# -- reload -----------------------------------------------------------------------------------
def reload_with(gw: Gateway, config: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "tokenward.yaml"
    path.write_text(yaml.safe_dump(config))
    assert gw.runtime.reload(str(path))


async def test_reload_that_raises_a_routes_scope_refuses_at_once(
    gw: Gateway, fa_config: dict[str, Any], tmp_path: Path
) -> None:
    await gw.team("platform", ["read:apis", "write:specs"])
    token, _ = await gw.token("platform", ["read:apis"])
    await warm(gw, token)
    changed = copy.deepcopy(fa_config)
    [route] = [
        r for r in changed["routes"] if r["path"] == "/orgs/{org}/teams/{team}/apis" and "GET" in r["methods"]
    ]
    route["scopes"] = ["write:specs"]
    reload_with(gw, changed, tmp_path)
    assert await both(gw, token) == [403, 403]
    reload_with(gw, fa_config, tmp_path)
    assert await both(gw, token) == [200, 200]


async def test_reload_that_adds_environments_refuses_at_once(
    gw: Gateway, fa_config: dict[str, Any], tmp_path: Path
) -> None:
    token = await warm_token(gw)
    environment = (await gw.runtime.authenticator.authenticate(token, "127.0.0.1")).token.environment
    changed = copy.deepcopy(fa_config)
    [route] = [
        r for r in changed["routes"] if r["path"] == "/orgs/{org}/teams/{team}/apis" and "GET" in r["methods"]
    ]
    route["environments"] = ["live" if environment != "live" else "test"]
    reload_with(gw, changed, tmp_path)
    assert await both(gw, token) == [403, 403]


async def test_reload_that_drops_the_prefix_refuses_at_once(
    gw: Gateway, fa_config: dict[str, Any], tmp_path: Path
) -> None:
    token = await warm_token(gw)
    changed = copy.deepcopy(fa_config)
    changed["tokens"]["prefix"] = "tw_new"
    reload_with(gw, changed, tmp_path)
    assert await both(gw, token) == [401, 401]


async def test_reload_that_untrusts_the_proxy_stops_forward_auth(
    gw: Gateway, fa_config: dict[str, Any], tmp_path: Path
) -> None:
    token = await warm_token(gw)
    changed = copy.deepcopy(fa_config)
    changed["trusted_proxies"] = ["10.99.0.0/16"]
    reload_with(gw, changed, tmp_path)
    assert (await verified(gw, token))[0] != 200


# -- store outage -----------------------------------------------------------------------------
async def test_untrusted_cache_moment_reads_the_store(gw: Gateway) -> None:
    await gw.team("platform", ["read:apis"])
    token, kid = await gw.token("platform", ["read:apis"])
    await warm(gw, token)
    cache = gw.runtime.cache
    cache.trusted = False  # what a lost change channel sets
    try:
        record = await gw.runtime.store.get_token(kid)
        assert record is not None
        # a change the channel would have missed: written to the store, cache left as it is
        cache.trusted = False
        await gw.runtime.store.put_token(record.revoked(time.time(), "test"))
        cache.trusted = False
        assert await both(gw, token) == [401, 401]
    finally:
        cache.trusted = True


# -- memos that must not merge targets --------------------------------------------------------
VARIANTS = [
    APIS,
    APIS + "/",
    "/orgs/acme/teams/platform%2Fapis",
    "/orgs/acme/teams/platform/apis%2F",
    "/orgs/acme/teams/platform/%61pis",
    "/orgs/acme/teams/platform/APIS",
    "/orgs/acme/teams/PLATFORM/apis",
    "/orgs/acme/teams/platform/./apis",
    "/orgs/acme/teams/platform/x/../apis",
    "/orgs/acme/teams/platform//apis",
    "/orgs/acme/teams/platform/apis%00",
    "/orgs/acme/teams/platform/apis;x",
    "/orgs/acme/teams/platform/apis%3Bx",
    "/orgs/acme/teams/platform/apis?x=1",
    "/orgs/acme/teams/platform/apis%3Fx=1",
    "/orgs/acme/teams/platform/apis#f",
    "/orgs/acme/teams/platform/apis%23f",
    "/orgs/acme/teams/platform/ap%69s",
    "/orgs/acme/teams/platform/apis%252F",
    "/orgs/acme/teams/platform/apis/web/specs",
    "/orgs/acme/teams/platform/apis/web%2Fspecs",
    "/orgs/acme/teams/billing/apis",
    "/orgs/acme/teams/billing%2F..%2Fplatform/apis",
    "/orgs/acme/teams/platform/apis/..",
    "/orgs/acme/teams/platform/apis/%2e%2e",
    "/orgs/acme/teams/platform/apis/%2E",
    "/orgs/acme/teams/platform/apis\\x",
    "/orgs/acme/teams/platform/apis%5Cx",
    "/orgs/acme/teams/platf%C3%B6rm/apis",
    "/orgs/acme/teams/platfo%CC%88rm/apis",
]


def _fresh(config: dict[str, Any]) -> SettingsView:
    return SettingsView(settings_from_dict(copy.deepcopy(config), "test"))


def _decide(view: SettingsView, raw: str, method: str = "GET") -> object:
    """What the target and route steps answer for `raw` (the memo-free functions)."""
    try:
        target = parse_target(check_target(raw, ["h"], view.prefixes))
    except PathError as exc:
        return ("path", str(exc))
    except Exception as exc:  # a Refusal
        return ("refused", type(exc).__name__, str(exc))
    try:
        match = view.settings.router.match(method, target.path)
    except AmbiguousPath as exc:
        return ("ambiguous", str(exc))
    return (target, None if match is None else (match.route.label, dict(match.params)))


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_memo_answers_equal_fresh_answers_in_any_order(fa_config: dict[str, Any], method: str) -> None:
    """Every variant decided after all the others (memos warm) equals the same variant decided
    by a fresh settings object (memos empty), forward and backward."""
    fresh = {raw: _decide(_fresh(fa_config), raw, method) for raw in VARIANTS}
    for order in (VARIANTS, VARIANTS[::-1]):
        view = _fresh(fa_config)
        for _ in range(2):
            for raw in order:
                assert _decide(view, raw, method) == fresh[raw], raw


async def test_proxy_status_of_variants_is_order_independent(gw: Gateway) -> None:
    """Through the proxy (raw bytes, no client normalization): each variant's status is the
    same whichever order the memos were filled in."""
    await gw.team("platform", ["read:apis"])
    token, _ = await gw.token("platform", ["read:apis"])
    port = int(gw.url.rsplit(":", 1)[1])

    async def status(raw: str) -> int:
        return (await rawhttp.raw(port, rawhttp.request(raw, "127.0.0.1", token)))[0]

    first = [await status(raw) for raw in VARIANTS]
    again = [await status(raw) for raw in VARIANTS[::-1]][::-1]
    assert first == again
    assert first[0] == 200


# -- listener findings, re-run in more forms against the current tree -------------------------
SMUG = b"GET /api?smuggled=1 HTTP/1.1\r\nHost: x\r\n\r\n"


def _head(
    env: Env, *extra: str, method: str = "POST", target: str = APIS, version: str = "HTTP/1.1"
) -> bytes:
    lines = [f"{method} {target} {version}", f"Host: {env.host}", f"Authorization: Bearer {env.token}"]
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode("latin-1")


def _no_smuggling(env: Env) -> None:
    assert [s["raw_path"] for s in env.rec.seen if "smuggled" in s["raw_path"]] == []


def _bodies_whole(env: Env, body: bytes) -> None:
    """Whatever reached the upstream for APIS carried the whole body (never a head without it)."""
    for seen in env.rec.seen:
        if seen["raw_path"].startswith(APIS):
            assert seen["body"] == body, seen


UPGRADE_FORMS = {
    "get-ws-cl": (("Upgrade: websocket", "Connection: Upgrade"), "GET", "HTTP/1.1"),
    "ka-upgrade": (("Upgrade: foo", "Connection: keep-alive, Upgrade"), "POST", "HTTP/1.1"),
    "upper": (("UPGRADE: foo", "CONNECTION: UPGRADE"), "POST", "HTTP/1.1"),
    "two-conn": (("Upgrade: foo", "Connection: keep-alive", "Connection: upgrade"), "PUT", "HTTP/1.1"),
    "http10": (("Upgrade: foo", "Connection: upgrade"), "POST", "HTTP/1.0"),
    "no-conn": (("Upgrade: foo",), "POST", "HTTP/1.1"),
    "empty-up": (("Upgrade:", "Connection: upgrade"), "POST", "HTTP/1.1"),
}


@pytest.mark.parametrize("form", list(UPGRADE_FORMS))
async def test_upgrade_offer_with_a_length_body_is_refused_or_forwarded_whole(env: Env, form: str) -> None:
    extra, method, version = UPGRADE_FORMS[form]
    body = SMUG
    data = _head(env, *extra, f"Content-Length: {len(body)}", method=method, version=version) + body
    out = await rawhttp.exchange(env.gw.server.proxy_port, data)
    assert rawhttp.statuses(out), out
    _no_smuggling(env)
    _bodies_whole(env, body)


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
async def test_upgrade_offer_with_chunked_body_then_smuggle(env: Env, version: str) -> None:
    data = _head(env, "Upgrade: foo", "Connection: upgrade", "Transfer-Encoding: chunked", version=version)
    out = await rawhttp.exchange(env.gw.server.proxy_port, data + b"5\r\nhello\r\n0\r\n\r\n" + SMUG)
    assert rawhttp.statuses(out)[:1] in ([400], [200])
    _no_smuggling(env)
    _bodies_whole(env, b"hello")


async def test_many_short_header_lines_are_refused(env: Env) -> None:
    data = b"GET /api HTTP/1.1\r\nHost: x\r\n" + b"X-a: b\r\n" * 200_000
    out = await rawhttp.exchange(env.gw.server.proxy_port, data)
    assert rawhttp.statuses(out) in ([431], [400])


async def test_endless_obs_fold_continuation_is_refused(env: Env) -> None:
    data = b"GET /api HTTP/1.1\r\nHost: x\r\nX-a: b\r\n" + b" c\r\n" * 200_000
    out = await rawhttp.exchange(env.gw.server.proxy_port, data)
    assert rawhttp.statuses(out) in ([431], [400])


async def test_many_short_trailer_lines_are_refused(env: Env) -> None:
    data = _head(env, "Transfer-Encoding: chunked") + b"2\r\n{}\r\n0\r\n" + b"X-T: a\r\n" * 200_000
    out = await rawhttp.exchange(env.gw.server.proxy_port, data)
    assert rawhttp.statuses(out) in ([400], [431])
    assert all(not s["raw_path"].startswith(APIS) for s in env.rec.seen)  # never forwarded


@pytest.mark.parametrize(
    "framing",
    [
        ("Transfer-Encoding: chunked",),
        ("Transfer-Encoding: gzip, chunked",),
        ("Transfer-Encoding: chunked", "Content-Length: 5"),
        ("Transfer-Encoding: Chunked",),
        ("Transfer-Encoding: chunked", "Connection: keep-alive"),
    ],
    ids=["te", "gzip-te", "te-cl", "case", "keepalive"],
)
async def test_http10_with_transfer_encoding_never_reads_a_smuggled_request(
    env: Env, framing: tuple[str, ...]
) -> None:
    data = _head(env, *framing, version="HTTP/1.0") + b"5\r\nhello\r\n0\r\n\r\n" + SMUG
    out = await rawhttp.exchange(env.gw.server.proxy_port, data)
    assert len(rawhttp.statuses(out)) == 1, out
    _no_smuggling(env)


@pytest.mark.parametrize(
    "extra",
    [
        ("Expect: 100-continue", "Transfer-Encoding: chunked"),
        ("expect: 100-Continue", "Content-Length: 2"),
        ("Expect: 100-continue", "Expect: 100-continue", "Content-Length: 2"),
    ],
    ids=["chunked", "case", "twice"],
)
async def test_no_100_continue_for_http10_in_any_form(env: Env, extra: tuple[str, ...]) -> None:
    out = await rawhttp.exchange(env.gw.server.proxy_port, _head(env, *extra, version="HTTP/1.0"), idle=1.0)
    assert b" 100 " not in out.split(b"\r\n", 1)[0]


# -- header memos -----------------------------------------------------------------------------
SPOOF_SPELLINGS = [
    "X-Tokenward-Org",
    "x-tokenward-org",
    "X-TOKENWARD-ORG",
    "X_Tokenward_Org",
    "X.Tokenward.Org",
    "X-Tokenward_Org",
    "X-Tokenward-Service-Account",
    "x_tokenward_service_account",
    "X-Tokenward-Scopes",
    "X-Tokenward-Token-Id",
    "X-Tokenward-Remaining",
]


@pytest.mark.parametrize("public", [False, True], ids=["routed", "public"])
async def test_spoofed_identity_headers_never_reach_the_upstream_in_any_spelling(
    gw: Gateway, public: bool
) -> None:
    """Each spelling sent twice (the second time its verdict comes from the memo)."""
    await gw.team("platform", ["read:apis"])
    token, _ = await gw.token("platform", ["read:apis"])
    port = int(gw.url.rsplit(":", 1)[1])
    target = "/health" if public else APIS
    for _ in range(2):
        extra = [f"{name}: evil" for name in SPOOF_SPELLINGS]
        status, _, body = await rawhttp.raw(port, rawhttp.request(target, "127.0.0.1", token, *extra))
        if public and status != 200:
            pytest.skip(f"no public echo route here ({status})")
        assert status == 200, body
        seen = orjson.loads(body)["headers"]
        assert [v for k, v in seen if "tokenward" in k.lower() and v == "evil"] == [], seen


async def test_reload_that_untrusts_the_proxy_stops_honouring_its_forwarded_for(
    gw: Gateway, fa_config: dict[str, Any], tmp_path: Path
) -> None:
    """allowed_cidrs met only through a trusted proxy's X-Forwarded-For: once the proxy is no
    longer trusted, the very next request is judged by the peer's own address."""
    await gw.team("platform", ["read:apis"])
    token, _ = await gw.token("platform", ["read:apis"], allowed_cidrs=("10.0.0.0/8",))
    xff = {"Authorization": f"Bearer {token}", "X-Forwarded-For": "10.1.2.3"}

    async def status() -> int:
        async with gw.session.get(gw.url + APIS, headers=xff) as r:
            await r.read()
            return r.status

    for _ in range(WARM):
        assert await status() == 200
    changed = copy.deepcopy(fa_config)
    changed["trusted_proxies"] = ["10.99.0.0/16"]
    reload_with(gw, changed, tmp_path)
    assert await status() == 401
    reload_with(gw, fa_config, tmp_path)
    assert await status() == 200


async def test_second_gateway_learns_of_revoke_restore_rename_and_never_flips_back(
    gw: Gateway, start_gateway: Any, fa_config: dict[str, Any]
) -> None:
    """Another gateway process on the same store, its memos warm: each change made through the
    first one's admin API reaches it (through the change channel), and once it answered with
    the change, no later answer of it goes back (zero flips over every request)."""
    other: Gateway = await start_gateway(fa_config)
    boss = await org_admin_with_team(gw, PERMISSIONS)
    status, data, _ = await admin(gw, "POST", SAS, boss, {"name": "deployer"})
    assert status == 201, data
    token = await issue(gw, boss, service_account="deployer")
    await warm(other, token["token"])

    async def settle(expect: tuple[int, str | None]) -> None:
        seen: list[tuple[int, str | None]] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            status, headers = await proxied(other, token["token"])
            seen.append((status, headers.get("X-Tokenward-Service-Account")))
            if seen[-1] == expect and len(seen) > 1 and seen[-2] == expect:
                break
            await asyncio.sleep(0.01)
        first = seen.index(expect)
        assert all(answer == expect for answer in seen[first:]), seen
        for _ in range(10):
            status, headers = await proxied(other, token["token"])
            assert (status, headers.get("X-Tokenward-Service-Account")) == expect

    for round_ in range(3):
        status, _, _ = await admin(gw, "POST", f"{TOKENS}/{token['id']}/revoke", boss, {"reason": "x"})
        assert status == 200
        await settle((401, None))
        status, data, _ = await admin(gw, "POST", f"{TOKENS}/{token['id']}/restore", boss, {})
        assert status == 200, data
        await settle((200, "deployer" if round_ % 2 == 0 else "shipper"))
        old, new = ("deployer", "shipper") if round_ % 2 == 0 else ("shipper", "deployer")
        status, data, _ = await admin(gw, "PATCH", f"{ACCOUNTS}/{old}", boss, {"name": new})
        assert status == 200, data
        await settle((200, new))


async def test_child_token_refused_at_once_when_its_parent_is_revoked(gw: Gateway) -> None:
    boss = await org_admin_with_team(gw, [*PERMISSIONS, "delegate"])
    parent = await issue(gw, boss, scopes=["read:apis", "delegate"])
    status, kid, _ = await admin(gw, "POST", "/v1/delegate", parent["token"], {"scopes": ["read:apis"]})
    assert status == 201, kid
    await warm(gw, kid["token"])
    status, _, _ = await admin(gw, "POST", f"{TOKENS}/{parent['id']}/revoke", boss, {"reason": "x"})
    assert status == 200
    assert await both(gw, kid["token"]) == [401, 401]


async def test_account_leaving_the_team_under_an_active_token_refuses_at_once(gw: Gateway) -> None:
    """The API refuses this change while the account has active tokens; written to the store
    anyway (an older store, a race), the hot path must not keep the remembered principal."""
    from tokenward.gateway.store_accounts import AccountWrite

    boss = await org_admin_with_team(gw, PERMISSIONS)
    status, data, _ = await admin(gw, "POST", SAS, boss, {"name": "deployer"})
    assert status == 201, data
    token = await issue(gw, boss, service_account="deployer")
    await warm(gw, token["token"])
    store = gw.runtime.store
    account_id = await store.account_id("acme", "deployer")
    assert account_id is not None
    raw = await store.get_account_raw("acme", account_id)
    before = await store.get_account("acme", account_id)
    assert before is not None
    await store.put_account(AccountWrite(before, raw, replace(before, teams=())))
    assert await both(gw, token["token"]) == [401, 401]
