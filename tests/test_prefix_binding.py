"""A token is accepted only with the prefix it was issued with (issue 10, item 14).

Every accepted prefix (the configured one and `legacy_prefixes`) passes the format check, so
re-prefixing a real token and recomputing its public CRC32 checksum gives another well-formed
token with the same key id and secret. The gateway, forward-auth and the admin API must
refuse it exactly as they refuse an unknown key id: 401, step `token`, the same body, and no
argon2 work, whether or not the real token is cached.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.helpers.gateway import APIS, Gateway
from tokenward.gateway.tokens import BODY_LEN, KEY_ID_LEN, checksum, generate

PREFIXES = ("tw_sat", "tw_old", "tw_test", "tw_sat_live")


def reprefix(token: str, prefix: str) -> str:
    """The same key id and secret under another prefix, with a valid checksum."""
    head = f"{prefix}_{token[-BODY_LEN:-6]}"
    return head + checksum(head)


def unknown_id(prefix: str) -> str:
    token, _ = generate(prefix)
    return token


@pytest.fixture
async def gw(start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]) -> Gateway:
    config["tokens"]["legacy_prefixes"] = list(PREFIXES[1:])
    config["trusted_proxies"] = ["127.0.0.1/32"]  # forward-auth's X-Original-URI
    gateway = await start_gateway(config)
    await gateway.team("platform", ["read:apis"])
    return gateway


async def call(gw: Gateway, url: str, token: str, **headers: str) -> tuple[int, dict[str, Any]]:
    async with gw.session.get(url, headers={**gw.auth(token), **headers}) as r:
        body = await r.json() if r.content_type == "application/json" else {}
        body.pop("request_id", None)
        return r.status, body


async def issue_with_prefix(gw: Gateway, prefix: str, **kw: Any) -> tuple[str, str]:
    """A token issued while `prefix` was the configured one (now a legacy prefix)."""
    runtime = gw.runtime
    configured = runtime.settings
    runtime.settings = dataclasses.replace(configured, tokens=dataclasses.replace(configured.tokens, prefix=prefix))
    try:
        return await gw.token("platform", ["read:apis"], **kw)
    finally:
        runtime.settings = configured


@pytest.mark.parametrize("issued", PREFIXES)
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "cached"])
async def test_a_token_under_another_accepted_prefix_is_an_unknown_token(gw: Gateway, issued: str, warm: bool) -> None:
    token, _ = await issue_with_prefix(gw, issued)
    url = gw.url + APIS
    if warm:
        assert (await call(gw, url, token))[0] == 200
    refusal = await call(gw, url, unknown_id(issued))
    assert refusal == (401, {"error": "invalid_token", "message": "invalid token", "step": "token"})
    auth = gw.runtime.authenticator
    before = auth.argon2_verifications
    for other in PREFIXES:
        if other != issued:
            assert await call(gw, url, reprefix(token, other)) == refusal, other
            assert await call(gw, url, reprefix(token, other)) == refusal, other  # negative cache too
    assert auth.argon2_verifications == before  # refused at the check, like a wrong secret
    assert (await call(gw, url, token))[0] == 200  # the real token is unaffected


async def test_forward_auth_binds_the_prefix_too(gw: Gateway) -> None:
    token, _ = await gw.token("platform", ["read:apis"])
    url = gw.url + "/_tokenward/verify"
    assert (await call(gw, url, token, **{"X-Original-URI": APIS}))[0] == 200
    status, body = await call(gw, url, reprefix(token, "tw_old"), **{"X-Original-URI": APIS})
    assert (status, body["step"], body["message"]) == (401, "token", "invalid token")


async def test_admin_api_binds_the_prefix_for_org_and_team_tokens(gw: Gateway) -> None:
    admin = await gw.org_admin()  # an org-level (bootstrap-style) token
    team_admin, _ = await gw.token("platform", ["read:apis"])
    for token in (admin, team_admin):
        for warm in (False, True):
            fake = reprefix(token, "tw_test")
            status, body = await call(gw, gw.admin_url + "/v1/whoami", fake)
            assert (status, body["step"], body["message"]) == (401, "token", "invalid token")
            if not warm:
                assert (await call(gw, gw.admin_url + "/v1/whoami", token))[0] == 200


async def test_the_prefix_check_is_part_of_the_one_verification(gw: Gateway) -> None:
    """`Authenticator.prove` binds the prefix unless told not to (a leak report holds the
    secret whatever prefix it came with, and may kill the token)."""
    from tokenward.gateway.tokens import parse

    token, kid = await gw.token("platform", ["read:apis"])
    auth = gw.runtime.authenticator
    accepted = gw.runtime.settings.tokens.accepted_prefixes
    moved = parse(reprefix(token, "tw_old"), accepted)
    assert moved.key_id == kid and len(moved.key_id) == KEY_ID_LEN
    assert await auth.prove(moved) is None
    proven = await auth.prove(moved, bind_prefix=False)
    assert proven is not None and proven.id == kid and proven.prefix == "tw_sat"
