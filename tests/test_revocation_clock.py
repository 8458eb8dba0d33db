"""A revocation takes effect at once on every gateway, whatever its clock says: `revoked_at`
is written with the revoking process's clock, and a gateway whose clock runs behind must not
serve the token until it catches up. Only a scheduled revocation (a rotation's grace period)
waits for its time."""

from __future__ import annotations

import time
from dataclasses import replace

from tests.helpers.gateway import TOKENS, Gateway, admin, apis_status, issue, org_admin_with_team
from tokenward.gateway.records import ACTIVE, REVOKED, TokenRecord
from tokenward.gateway.scopes import parse_scopes

SKEW = 300.0  # seconds the revoking host's clock runs ahead of the gateway's


def record() -> TokenRecord:
    return TokenRecord(
        id="AAAAAAAAAAAA",
        prefix="tw_sat",
        org="acme",
        team="platform",
        name="ci",
        description="",
        scopes=parse_scopes(["read:apis"]),
        secret_hash="x",
        created_at=time.time(),
        created_by="test",
    )


def test_a_revocation_stamped_ahead_of_this_clock_is_final_at_once() -> None:
    now = time.time()
    assert record().revoked(now + SKEW, "admin").status(now) == REVOKED
    grace = record().revoked(now + SKEW, "admin", "rotated", scheduled=True)
    assert grace.status(now) == ACTIVE and grace.status(now + SKEW) == REVOKED
    assert grace.restored().status(now) == ACTIVE and not grace.restored().revoke_scheduled
    # a revocation during the grace period ends it at once
    assert grace.revoked(now + SKEW, "admin", "rotated").status(now) == REVOKED


def test_records_from_before_the_flag_keep_their_meaning() -> None:
    now = time.time()
    grace = record().revoked(now + SKEW, "admin", "rotated", scheduled=True)
    data = grace.to_json()
    del data["revoke_scheduled"]
    data["replaced_by"] = "BBBBBBBBBBBB"
    assert TokenRecord.from_json(data).status(now) == ACTIVE  # a rotation's grace, still running
    revoked = record().revoked(now + SKEW, "admin", "stolen laptop").to_json()
    del revoked["revoke_scheduled"]
    assert TokenRecord.from_json(revoked).status(now) == REVOKED


async def test_the_gateway_refuses_a_token_revoked_by_a_host_whose_clock_is_ahead(gateway: Gateway) -> None:
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    token = await issue(gateway, org_admin)
    assert await apis_status(gateway, token["token"]) == 200  # verified and cached
    stored = await gateway.runtime.store.get_token(token["id"])
    assert stored is not None
    await gateway.runtime.store.put_token(stored.revoked(time.time() + SKEW, "token:elsewhere"))
    assert await apis_status(gateway, token["token"]) == 401


async def test_a_rotation_grace_is_kept_and_a_revoke_ends_it(gateway: Gateway) -> None:
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    token = await issue(gateway, org_admin)
    status, rotated, _ = await admin(
        gateway, "POST", f"{TOKENS}/{token['id']}/rotate", org_admin, {"grace_period": "1h"}
    )
    assert status == 201, rotated
    assert await apis_status(gateway, token["token"]) == 200  # in its grace period
    assert await apis_status(gateway, rotated["token"]) == 200
    status, view, _ = await admin(gateway, "GET", f"{TOKENS}/{token['id']}", org_admin)
    assert view["status"] == "grace" and view["replaced_by"] == rotated["id"]
    status, _, _ = await admin(
        gateway, "POST", f"{TOKENS}/{token['id']}/revoke", org_admin, {"reason": "stolen laptop"}
    )
    assert status == 200
    assert await apis_status(gateway, token["token"]) == 401
    status, view, _ = await admin(gateway, "GET", f"{TOKENS}/{token['id']}", org_admin)
    assert view["status"] == "revoked" and view["revoke_reason"] == "stolen laptop"  # not "rotated"
    status, body, _ = await admin(gateway, "POST", f"{TOKENS}/{token['id']}/restore", org_admin)
    assert status == 409 and "rotated" in body["message"]  # replaced: it never comes back


async def test_a_revoke_ends_a_grace_that_this_hosts_clock_says_is_over(gateway: Gateway) -> None:
    """The revoking host's clock runs ahead: the grace period is over by its clock, not yet by
    the gateways'. The revocation is written as final (not left scheduled), with its reason."""
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    token = await issue(gateway, org_admin)
    store = gateway.runtime.store
    stored = await store.get_token(token["id"])
    assert stored is not None
    graced = stored.revoked(time.time() - 1, "token:x", "rotated", scheduled=True)
    await store.put_token(replace(graced, replaced_by="BBBBBBBBBBBB"))
    status, view, _ = await admin(
        gateway, "POST", f"{TOKENS}/{token['id']}/revoke", org_admin, {"reason": "compromised"}
    )
    assert status == 200 and view["revoke_reason"] == "compromised", view
    after = await store.get_token(token["id"])
    assert after is not None and not after.revoke_scheduled
    assert after.status(time.time() - SKEW) == REVOKED  # refused on a gateway whose clock is behind
