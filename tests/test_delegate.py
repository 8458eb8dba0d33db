"""Child tokens (issue 16, item 3): `delegate` is a capability covered only by itself; a token
holding it mints children through `POST /v1/delegate` that can never be wider than it (scopes,
constraints, networks, lifetime, depth, count); a child ends the moment any ancestor is
revoked, expires or is deleted, on every gateway; its run id reaches the audit and the
upstream. Against the real store and real gateways."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers.gateway import APIS, TEAMS, TOKENS, Gateway, LogReader, admin, apis_status
from tests.helpers.process import env_for_subprocess, run_cli
from tokenward.gateway.embedded import free_port
from tokenward.gateway.scopes import ADMIN_ORG, ADMIN_TEAM, capability, covers, effective_covers, parse_scope
from tokenward.gateway.store import TokenEdit

DELEGATE = "/v1/delegate"
PERMISSIONS = ["read:apis", "write:specs", "read:secrets", "admin:team", "delegate"]


# -- 1. the capability -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "held", ["admin:*", "admin", "write", "read", "read:*", "write:*", "admin:team", "admin:org", "mcp"]
)
def test_delegate_is_covered_by_itself_only(held: str) -> None:
    wanted = parse_scope("delegate")
    assert wanted == capability("delegate")
    assert not covers([parse_scope(held)], wanted)
    assert covers([parse_scope("delegate")], wanted)


def test_a_team_token_exercises_delegate_only_while_its_team_holds_it() -> None:
    wanted = parse_scope("delegate")
    token = [wanted, parse_scope("read:apis")]
    assert effective_covers(token, [wanted], wanted)
    assert not effective_covers(token, [parse_scope("admin:*"), parse_scope("read:apis")], wanted)
    assert not effective_covers(token, [], wanted)
    assert effective_covers(token, None, wanted)  # an org-level token: its own scopes


# -- helpers ------------------------------------------------------------------------------------
async def delegate(gw: Gateway, parent: str, **body: Any) -> tuple[int, Any]:
    body.setdefault("scopes", ["read:apis"])
    status, data, headers = await admin(gw, "POST", DELEGATE, parent, body)
    if status == 201:
        assert headers["Cache-Control"] == "no-store"
    return status, data


async def child(gw: Gateway, parent: str, **body: Any) -> dict[str, Any]:
    status, data = await delegate(gw, parent, **body)
    assert status == 201, data
    return dict(data)


async def team_with_delegate(gw: Gateway, permissions: list[str] = PERMISSIONS) -> str:
    """An org admin's token, after it created team `platform` with `permissions`."""
    org_admin = await gw.org_admin()
    status, _, _ = await admin(gw, "POST", TEAMS, org_admin, {"name": "platform", "permissions": permissions})
    assert status == 201
    return org_admin


def with_delegation(config: dict[str, Any], **policy: Any) -> dict[str, Any]:
    config = copy.deepcopy(config)
    config["tokens"]["delegation"] = policy
    return config


async def revoke(gw: Gateway, by: str, key_id: str, team: str = "platform") -> None:
    status, data, _ = await admin(gw, "POST", f"/v1/orgs/acme/teams/{team}/tokens/{key_id}/revoke", by)
    assert status == 200, data


async def refusal(gw: Gateway, token: str) -> tuple[int, str]:
    async with gw.session.get(gw.url + APIS, headers=gw.auth(token)) as r:
        body = await r.json()
        return r.status, body.get("message", "")


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    while not await check():
        await asyncio.sleep(0.01)


# -- 2. minting ---------------------------------------------------------------------------------
@pytest.mark.also_on_cluster
async def test_a_child_is_minted_and_works(gateway: Gateway) -> None:
    gw = gateway
    org_admin = await team_with_delegate(gw)
    parent, parent_id = await gw.token("platform", ["read:apis", "write:specs", "delegate"], name="agent")
    reader = LogReader()
    data = await child(gw, parent, ttl="15m", run_id="run-42", max_uses=10)
    assert data["parent_id"] == parent_id and data["ancestors"] == [parent_id]
    assert data["scopes"] == ["read:apis"] and data["run_id"] == "run-42" and data["max_uses"] == 10
    assert data["team"] == "platform" and data["token"].startswith("tw_sat_")
    remaining = time.time() + 15 * 60 - _ts(data["expires_at"])
    assert -5 < remaining < 5
    assert await apis_status(gw, data["token"]) == 200
    [event] = reader.events("token.delegated")
    assert event["parent_id"] == parent_id and event["run_id"] == "run-42" and event["token_id"] == data["id"]
    assert event["actor_id"] == parent_id and event["depth"] == 1 and event["max_uses"] == 10
    # the team's admin sees it, with its parent, in the list and by id
    status, view, _ = await admin(gw, "GET", f"{TOKENS}/{data['id']}", org_admin)
    assert status == 200 and view["parent_id"] == parent_id and view["run_id"] == "run-42"
    status, page, _ = await admin(gw, "GET", TOKENS, org_admin)
    rows = {row["id"]: row for row in page["tokens"]}
    assert rows[data["id"]]["parent_id"] == parent_id and rows[parent_id]["parent_id"] is None
    # the record holds what the credits code reads
    record = await gw.runtime.store.get_token(data["id"])
    assert record is not None and record.max_uses == 10 and record.ancestors == (parent_id,)


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


async def test_run_id_and_parent_reach_the_audit_and_the_upstream(gateway: Gateway) -> None:
    gw = gateway
    await team_with_delegate(gw)
    parent, parent_id = await gw.token("platform", ["read:apis", "delegate"])
    data = await child(gw, parent, run_id="nightly-7")
    reader = LogReader()
    spoofed = {"X-Tokenward-Run-Id": "forged", "X-Tokenward-Parent-Id": "forged", **gw.auth(data["token"])}
    async with gw.session.get(gw.url + APIS, headers=spoofed) as r:
        assert r.status == 200
        echoed = await r.json()
    headers = [(k.lower(), v) for k, v in echoed["headers"]]
    assert ("x-tokenward-run-id", "nightly-7") in headers and ("x-tokenward-parent-id", parent_id) in headers
    assert ("x-tokenward-run-id", "forged") not in headers and ("x-tokenward-parent-id", "forged") not in headers
    [event] = [e for e in reader.events() if e.get("token_id") == data["id"] and e.get("status") == 200]
    assert event["parent_id"] == parent_id and event["run_id"] == "nightly-7"
    # a root token's requests say nothing of either
    async with gw.session.get(gw.url + APIS, headers=gw.auth(parent)) as r:
        echoed = await r.json()
    assert not any(k.lower() in ("x-tokenward-run-id", "x-tokenward-parent-id") for k, _ in echoed["headers"])


async def test_delegate_needs_the_capability_held_and_in_effect(gateway: Gateway) -> None:
    gw = gateway
    await team_with_delegate(gw, ["read:apis", "admin:team", "admin:apis"])
    held_not_effective, _ = await gw.token("platform", ["read:apis", "delegate"])
    status, data = await delegate(gw, held_not_effective)
    assert status == 403 and data["error"] == "insufficient_scope" and "delegate" in data["message"]
    team_admin, _ = await gw.token("platform", ["admin:team", "admin:apis", "read:apis"])
    status, data = await delegate(gw, team_admin)
    assert status == 403 and "delegate" in data["message"]
    assert (await delegate(gw, "tw_sat_nonsense"))[0] == 401


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"scopes": ["write:apis"]}, 403, "write:apis"),  # a higher level
        ({"scopes": ["read:specs"]}, 403, "read:specs"),  # another resource
        ({"scopes": ["read:*"]}, 403, "read:*"),  # a wildcard
        ({"scopes": ["read"]}, 403, "read:*"),  # a bare level is a wildcard
        ({"scopes": [ADMIN_TEAM]}, 403, "admin-plane"),
        ({"scopes": [ADMIN_ORG]}, 403, ADMIN_ORG),
        ({"scopes": ["read:team"]}, 403, "admin-plane"),
        ({"scopes": ["mcp"]}, 403, "mcp"),  # a capability the parent lacks
        ({"scopes": ["read:apis"], "ttl": "2h"}, 403, "expiry"),  # past the parent's own end
        ({"scopes": ["read:apis"], "ttl": "13h"}, 400, "max_ttl"),  # past the policy
        ({"scopes": ["read:apis"], "ttl": "0s"}, 400, "ttl"),
        ({"scopes": ["read:apis"], "constraints": {"project": "other"}}, 400, "constraints"),
        ({"scopes": ["read:apis"], "allowed_cidrs": ["0.0.0.0/0"]}, 403, "allowed_cidrs"),
        ({"scopes": ["read:apis"], "max_uses": 0}, 400, "max_uses"),
        ({"scopes": ["read:apis"], "run_id": "has space"}, 400, "run_id"),
        ({"scopes": ["read:apis"], "nonsense": 1}, 400, "nonsense"),
    ],
)
async def test_every_way_to_widen_the_parent_is_refused(
    gateway: Gateway, body: dict[str, Any], status: int, names: str
) -> None:
    gw = gateway
    await team_with_delegate(gw, [*PERMISSIONS, "mcp", "admin:apis", "read:*"])
    parent, _ = await gw.token(
        "platform",
        ["read:apis", "admin:team", "delegate"],
        constraints={"project": "web"},
        allowed_cidrs=("127.0.0.0/8",),
        expires_at=time.time() + 3600,
    )
    got, data = await delegate(gw, parent, **body)
    assert got == status, data
    assert names in data["message"] + data.get("field", "")
    assert await gw.runtime.store.token_count("acme", "platform") == 1  # nothing minted


async def test_a_child_inherits_constraints_and_networks_and_may_narrow_the_networks(gateway: Gateway) -> None:
    gw = gateway
    await team_with_delegate(gw)
    parent, _ = await gw.token(
        "platform", ["read:apis", "delegate"], constraints={"project": "web"}, allowed_cidrs=("127.0.0.0/8",)
    )
    data = await child(gw, parent)
    assert data["constraints"] == {"project": "web"} and data["allowed_cidrs"] == ["127.0.0.0/8"]
    data = await child(gw, parent, allowed_cidrs=["127.0.0.1/32"])
    assert data["constraints"] == {"project": "web"}
    assert data["allowed_cidrs"] == ["127.0.0.1/32"]


async def test_a_child_is_not_rotated(gateway: Gateway) -> None:
    gw = gateway
    org_admin = await team_with_delegate(gw)
    parent, _ = await gw.token("platform", ["read:apis", "delegate"])
    data = await child(gw, parent)
    status, body, _ = await admin(gw, "POST", f"{TOKENS}/{data['id']}/rotate", org_admin, {})
    assert status == 409 and "child token" in body["message"]


# -- 3. the parent ends its descendants ---------------------------------------------------------
@pytest.mark.also_on_cluster
async def test_revoking_the_parent_ends_every_descendant_at_once(gateway: Gateway) -> None:
    gw = gateway
    org_admin = await team_with_delegate(gw)
    parent, parent_id = await gw.token("platform", ["read:apis", "delegate"])
    kid = await child(gw, parent, scopes=["read:apis", "delegate"])
    grandchild = await child(gw, kid["token"])
    assert grandchild["ancestors"] == [parent_id, kid["id"]]
    for token in (parent, kid["token"], grandchild["token"]):
        assert await apis_status(gw, token) == 200  # cached
    await revoke(gw, org_admin, parent_id)
    assert await refusal(gw, kid["token"]) == (401, "token revoked: its parent token is revoked")
    status, view, _ = await admin(gw, "GET", f"{TOKENS}/{kid['id']}", org_admin)
    assert status == 200 and view["status"] == "revoked" and view["ended_by"] == "its parent token is revoked"
    status, page, _ = await admin(gw, "GET", f"{TOKENS}?status=revoked", org_admin)
    rows = {row["id"]: row for row in page["tokens"]}
    assert set(rows) == {parent_id, kid["id"], grandchild["id"]}
    assert rows[grandchild["id"]]["revoke_reason"] == f"its ancestor token {parent_id} is revoked"
    status, page, _ = await admin(gw, "GET", f"{TOKENS}?status=active", org_admin)
    assert kid["id"] not in {row["id"] for row in page["tokens"]}
    assert await refusal(gw, grandchild["token"]) == (401, f"token revoked: its ancestor token {parent_id} is revoked")
    assert (await delegate(gw, kid["token"]))[0] == 401  # nor does it mint anything


async def test_restoring_the_parent_never_resurrects_a_child_revoked_on_its_own(gateway: Gateway) -> None:
    gw = gateway
    org_admin = await team_with_delegate(gw)
    parent, parent_id = await gw.token("platform", ["read:apis", "delegate"])
    alive, revoked = await child(gw, parent), await child(gw, parent)
    await revoke(gw, org_admin, revoked["id"])
    await revoke(gw, org_admin, parent_id)
    assert await apis_status(gw, alive["token"]) == 401
    status, _, _ = await admin(gw, "POST", f"{TOKENS}/{parent_id}/restore", org_admin)
    assert status == 200
    assert await apis_status(gw, alive["token"]) == 200  # ended only through its parent
    assert await refusal(gw, revoked["token"]) == (401, "token revoked")


async def test_deleting_the_parent_ends_its_children(gateway: Gateway) -> None:
    gw = gateway
    org_admin = await team_with_delegate(gw)
    parent, parent_id = await gw.token("platform", ["read:apis", "delegate"])
    kid = await child(gw, parent)
    await revoke(gw, org_admin, parent_id)
    status, _, _ = await admin(gw, "DELETE", f"{TOKENS}/{parent_id}", org_admin)
    assert status == 204
    assert await refusal(gw, kid["token"]) == (401, "token revoked: its parent token was deleted")


async def test_an_expired_parent_ends_its_children(gateway: Gateway) -> None:
    """A child never outlives its parent's expiry (its TTL is capped); even a parent whose
    expiry is moved earlier in the store ends the child at its next request."""
    gw = gateway
    await team_with_delegate(gw)
    parent, parent_id = await gw.token("platform", ["read:apis", "delegate"], expires_at=time.time() + 3600)
    kid = await child(gw, parent)
    assert await apis_status(gw, kid["token"]) == 200
    await gw.runtime.store.change_token(parent_id, lambda r: TokenEdit(replace(r, expires_at=time.time() - 1)))
    assert await refusal(gw, kid["token"]) == (401, "token expired: its parent token is expired")


async def test_a_revocation_on_another_gateway_ends_the_child(
    start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any], redis_url: str
) -> None:
    """Two gateways on one store, the child's records warm in B's cache (a long cache_ttl):
    the parent revoked through A ends the child on B through the change channel; with B's
    channel cut just before, B's very next request is refused (counted: none allowed)."""
    config["tokens"]["cache_ttl"] = "5m"
    a, b = await start_gateway(config), await start_gateway(config)
    org_admin = await team_with_delegate(a)
    allowed = 0
    for trial in range(10):
        parent, parent_id = await a.token("platform", ["read:apis", "delegate"])
        kid = await child(a, parent)
        assert await apis_status(b, kid["token"]) == 200  # warm in B
        await until(lambda: _connected(b))
        if trial % 2:
            with redis.Redis.from_url(redis_url) as conn:
                assert int(conn.execute_command("CLIENT", "KILL", "TYPE", "pubsub")) >= 1
            await revoke(a, org_admin, parent_id)
            allowed += await apis_status(b, kid["token"]) != 401
        else:
            await revoke(a, org_admin, parent_id)

            async def refused(token: str = kid["token"]) -> bool:
                return await apis_status(b, token) == 401

            await until(refused)
    assert allowed == 0


async def _connected(gw: Gateway) -> bool:
    return bool(gw.runtime.listener.push_connected)


# -- caps -----------------------------------------------------------------------------------------
async def test_children_per_parent_are_capped(
    start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]
) -> None:
    gw = await start_gateway(with_delegation(config, max_children=3))
    await team_with_delegate(gw)
    parent, _ = await gw.token("platform", ["read:apis", "delegate"])
    minted = await asyncio.gather(*(delegate(gw, parent) for _ in range(6)))
    statuses = sorted(status for status, _ in minted)
    assert statuses == [201, 201, 201, 409, 409, 409]
    refused = next(data for status, data in minted if status == 409)
    assert refused["error"] == "quota_exceeded" and "3" in refused["message"]
    other, _ = await gw.token("platform", ["read:apis", "delegate"])
    assert (await delegate(gw, other))[0] == 201  # per parent


async def test_depth_is_capped(start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]) -> None:
    gw = await start_gateway(with_delegation(config, max_depth=2))
    await team_with_delegate(gw)
    parent, _ = await gw.token("platform", ["read:apis", "delegate"])
    kid = await child(gw, parent, scopes=["read:apis", "delegate"])
    status, data = await delegate(gw, kid["token"], scopes=["read:apis", "delegate"])
    assert status == 403 and "max_depth" in data["message"]
    grandchild = await child(gw, kid["token"])
    assert await apis_status(gw, grandchild["token"]) == 200
    gw1 = await start_gateway(with_delegation(config, max_depth=1))
    status, data = await delegate(gw1, parent, scopes=["read:apis", "delegate"])
    assert status == 403 and "max_depth" in data["message"]
    # a policy lowered after a child got `delegate` still stops it
    status, data = await delegate(gw1, kid["token"])
    assert status == 403 and "max_depth" in data["message"]


async def test_the_policy_ttl_is_configurable(
    start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]
) -> None:
    gw = await start_gateway(with_delegation(config, max_ttl="30m"))
    await team_with_delegate(gw)
    parent, _ = await gw.token("platform", ["read:apis", "delegate"])
    status, data = await delegate(gw, parent, ttl="31m")
    assert status == 400 and "tokens.delegation.max_ttl" in data["message"]
    assert (await delegate(gw, parent, ttl="30m"))[0] == 201


# -- 5. the CLI ------------------------------------------------------------------------------------
async def test_the_cli_delegates_with_the_calling_token(gateway: Gateway) -> None:
    gw = gateway
    org_admin = await team_with_delegate(gw)
    parent, parent_id = await gw.token("platform", ["read:apis", "delegate"], name="agent")
    env = {**env_for_subprocess(), "TOKENWARD_ADMIN_URL": gw.admin_url, "TOKENWARD_TOKEN": parent}
    code, out, err = await run_cli(
        "token", "delegate", "--scopes", "read:apis", "--ttl", "10m", "--max-uses", "5", "--run-id", "r-1", "--json",
        env=env,
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["parent_id"] == parent_id and data["run_id"] == "r-1" and data["max_uses"] == 5
    assert await apis_status(gw, data["token"]) == 200
    code, out, err = await run_cli("token", "delegate", "--scopes", "read:apis", env=env)
    assert code == 0, err
    assert "Child token minted" in out and f"Parent:  {parent_id}" in out and "tw_sat_" in out
    code, out, err = await run_cli("token", "delegate", "--scopes", "write:apis", env=env)
    assert code != 0 and "parent lacks write:apis" in err and out == ""
    admin_env = {**env, "TOKENWARD_TOKEN": org_admin}
    code, out, err = await run_cli("token", "get", data["id"], "--team", "platform", env=admin_env)
    assert code == 0, err
    assert "Parent:" in out and parent_id in out and "r-1" in out
    code, out, err = await run_cli("token", "list", "--team", "platform", env=admin_env)
    assert code == 0, err
    assert f"(child of {parent_id})" in out


# -- 6. the demo's agent recipe ------------------------------------------------------------------
async def test_the_demo_prints_an_agent_recipe(tmp_path: Path) -> None:
    ports = [str(free_port()) for _ in range(3)]
    code, out, err = await run_cli(
        "demo", "--once", "--data-dir", str(tmp_path / "demo"),
        "--port", ports[0], "--admin-port", ports[1], "--upstream-port", ports[2],
        timeout=90,
    )  # fmt: skip
    assert code == 0, err
    assert "export AGENT_TOKEN=tw_sat_" in out and "tokenward token delegate --scopes read:apis" in out


async def test_a_child_minted_while_its_parent_is_revoked_never_works(gateway: Gateway) -> None:
    """Minting and revoking the parent at the same time, in either order: once the revoke has
    returned, a child that was minted is refused. Counted over trials: none allowed."""
    gw = gateway
    org_admin = await team_with_delegate(gw)
    allowed = minted = 0
    for _ in range(12):
        parent, parent_id = await gw.token("platform", ["read:apis", "delegate"])
        assert await apis_status(gw, parent) == 200  # cached, as an agent platform's parent is
        (status, data), _ = await asyncio.gather(delegate(gw, parent), revoke(gw, org_admin, parent_id))
        if status == 201:
            minted += 1
            allowed += await apis_status(gw, data["token"]) != 401
        else:
            assert status == 401, data
    assert allowed == 0, f"{allowed} of {minted} children minted during the revoke worked after it"


def test_config_errors_name_the_delegation_keys(config: dict[str, Any]) -> None:
    from tokenward.gateway.settings import ConfigError, settings_from_dict

    bad = with_delegation(config, max_depth=0, max_children="many", max_ttl="soon", depth=3)
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(bad, "test")
    text = str(caught.value)
    for key in ("max_depth", "max_children", "max_ttl", "depth"):
        assert f"tokens.delegation.{key}" in text, text
    good = settings_from_dict(with_delegation(config, max_ttl="2h", max_depth=3, max_children=5), "test")
    assert (good.tokens.delegation.max_ttl, good.tokens.delegation.max_depth) == (7200.0, 3)
    assert good.tokens.delegation.max_children == 5
