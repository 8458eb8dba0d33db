"""Child tokens and the team's token quota (the review of issue 16): an agent platform minting
a child per run must never fill `tokens.max_per_team`, nor pile up expired records."""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from typing import Any

from tests.helpers.gateway import TEAMS, TOKENS, Gateway, admin, apis_status
from tokenward.gateway.limits import RateLimit
from tokenward.gateway.store_keys import Keys

DELEGATE = "/v1/delegate"
IMPORT = "/v1/orgs/acme/teams/platform/tokens/import"


async def setup(gw: Gateway) -> tuple[str, str, str]:
    """(org admin, parent token, parent id): team platform holding delegate."""
    org_admin = await gw.org_admin()
    body = {"name": "platform", "permissions": ["read:apis", "admin:team", "delegate"]}
    status, _, _ = await admin(gw, "POST", TEAMS, org_admin, body)
    assert status == 201
    parent, parent_id = await gw.token("platform", ["read:apis", "delegate"], name="agent")
    return org_admin, parent, parent_id


async def mint(gw: Gateway, parent: str, **body: Any) -> tuple[int, Any]:
    status, data, _ = await admin(gw, "POST", DELEGATE, parent, {"scopes": ["read:apis"], **body})
    return status, data


async def expire(gw: Gateway, parent_id: str, child_id: str) -> None:
    """As if the child's lifetime had passed: its record and its place among its parent's children."""
    store = gw.runtime.store
    record = await store.get_token(child_id)
    assert record is not None
    past = time.time() - 1
    await store.put_token(replace(record, expires_at=past))
    await store.client.zadd(Keys.children(record.org, parent_id), {child_id: past})


async def test_expired_children_give_the_teams_quota_back(start_gateway: Any, config: dict[str, Any]) -> None:
    """A child per agent run never locks the team: once expired, children leave the quota at the
    parent's next mint (the review's 28 one-millisecond children locked issuance for good)."""
    raw = copy.deepcopy(config)
    raw["tokens"]["max_per_team"] = 4
    gw = await start_gateway(raw)
    org_admin, parent, parent_id = await setup(gw)  # the team holds 1 token (the parent)
    children = []
    for _ in range(3):
        status, data = await mint(gw, parent, ttl="5m")
        assert status == 201, data
        children.append(data["id"])
    status, data = await mint(gw, parent, ttl="5m")
    assert status == 409 and data["error"] == "quota_exceeded", data  # 4 of 4, all live
    for child_id in children:
        await expire(gw, parent_id, child_id)
    for _ in range(3):  # the runs go on: each mint purges what expired
        status, data = await mint(gw, parent, ttl="5m")
        assert status == 201, data
        await expire(gw, parent_id, data["id"])
    status, created, _ = await admin(gw, "POST", TOKENS, org_admin, {"name": "ci", "scopes": ["read:apis"]})
    assert status == 201, created


async def test_a_ttl_under_a_second_is_refused(gateway: Gateway) -> None:
    _, parent, _ = await setup(gateway)
    for ttl in ("1ms", "999ms", "0s"):
        status, data = await mint(gateway, parent, ttl=ttl)
        assert status == 400 and data["field"] == "ttl", data
    status, data = await mint(gateway, parent, ttl="1s")
    assert status == 201, data


async def test_expired_children_are_purged_at_the_parents_next_mint(gateway: Gateway) -> None:
    gw = gateway
    _, parent, parent_id = await setup(gw)
    status, first = await mint(gw, parent, ttl="5m")
    assert status == 201
    store = gw.runtime.store
    await expire(gw, parent_id, first["id"])
    assert await apis_status(gw, first["token"]) == 401
    status, second = await mint(gw, parent, ttl="5m")
    assert status == 201
    assert await store.get_token(first["id"]) is None  # the expired child's record is gone
    status, page, _ = await admin(gw, "GET", TOKENS, (await gw.org_admin()), None)
    assert status == 200
    listed = {token["id"] for token in page["tokens"]}
    assert first["id"] not in listed and second["id"] in listed and parent_id in listed
    assert await apis_status(gw, second["token"]) == 200


async def test_an_imported_key_cannot_hold_delegate(start_gateway: Any, config: dict[str, Any]) -> None:
    raw = copy.deepcopy(config)
    raw["tokens"]["legacy_lookup_key"] = "k" * 16 + "0123456789abcdef0123456789abcdef"
    gateway = await start_gateway(raw)
    org_admin, _, _ = await setup(gateway)
    body = {"name": "old", "key": "sk_live_7Hq2xK9mWp4Rt8Vz3Lc6Nb5J", "scopes": ["read:apis", "delegate"]}
    status, data, _ = await admin(gateway, "POST", IMPORT, org_admin, body)
    assert status == 400 and data["field"] == "scopes", data
    assert "delegate" in data["message"]


async def test_a_childs_max_uses_is_enforced(gateway: Gateway) -> None:
    """The review found a child's budget stored and never spent: now the credits code counts it."""
    _, parent, _ = await setup(gateway)
    status, data = await mint(gateway, parent, ttl="5m", max_uses=2)
    assert status == 201, data
    statuses = [await apis_status(gateway, data["token"]) for _ in range(4)]
    assert statuses == [200, 200, 429, 429]


async def test_a_child_spends_its_parents_rate_limits(gateway: Gateway) -> None:
    """Review of issue 16: children came back without their parent's limits, each one a fresh
    allowance. Now they carry them, counted in the parent's own buckets."""
    gw = gateway
    await setup(gw)
    parent, parent_id = await gw.token("platform", ["read:apis", "delegate"], name="limited")
    record = await gw.runtime.store.get_token(parent_id)
    assert record is not None
    await gw.runtime.store.put_token(replace(record, rate_limits=(RateLimit("burst", 3, "1h"),)))
    children = []
    for _ in range(2):
        status, data = await mint(gw, parent, ttl="5m")
        assert status == 201, data
        children.append(data["token"])
    statuses = [await apis_status(gw, token) for token in (*children, *children, parent)]
    assert statuses.count(200) == 3 and statuses.count(429) == 2, statuses


async def test_a_childs_uses_come_out_of_its_parents_budget(gateway: Gateway) -> None:
    gw = gateway
    await setup(gw)
    parent, parent_id = await gw.token("platform", ["read:apis", "delegate"], name="budgeted")
    record = await gw.runtime.store.get_token(parent_id)
    assert record is not None
    await gw.runtime.store.put_token(replace(record, max_uses=5))
    status, data = await mint(gw, parent, ttl="5m")
    assert status == 400 and data["field"] == "max_uses", data  # a budgeted parent: say how many
    status, data = await mint(gw, parent, ttl="5m", max_uses=1000)
    assert status == 409 and data["field"] == "max_uses", data  # more than the parent has
    status, child = await mint(gw, parent, ttl="5m", max_uses=3)
    assert status == 201, child
    spent = [await apis_status(gw, token) for token in [child["token"]] * 4 + [parent] * 3]
    assert spent == [200, 200, 200, 429, 200, 200, 429], spent  # 3 for the child, 2 left to the parent
