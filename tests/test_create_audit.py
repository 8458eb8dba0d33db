"""A create that loses to an existing record writes no audit event.

Teams, service accounts and tokens are created only if absent, and the event is written in the
same script as the record (`CREATE_AUDITED`): a second create of the same name answers 409 and
leaves the stream as it was, so the audit trail never claims a creation that did not happen.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.helpers.gateway import TEAMS, Gateway, admin

SAS = f"{TEAMS}/platform/service-accounts"


async def events(gateway: Gateway, action: str) -> list[dict[str, Any]]:
    rows = await gateway.runtime.store.read_audit(count=1000)
    return [event for _, event in rows if event.get("action") == action]


@pytest.mark.also_on_cluster
@pytest.mark.parametrize(
    ("path", "body", "action"),
    [
        (TEAMS, {"name": "payments", "permissions": ["read:apis"]}, "team.created"),
        (SAS, {"name": "deployer"}, "service_account.created"),
    ],
    ids=["team", "service account"],
)
async def test_a_lost_create_writes_no_event(
    gateway: Gateway, org_admin: str, path: str, body: dict[str, Any], action: str
) -> None:
    before = len(await events(gateway, action))
    status, _, _ = await admin(gateway, "POST", path, org_admin, body)
    assert status == 201
    assert len(await events(gateway, action)) == before + 1
    for _ in range(3):
        status, refused, _ = await admin(gateway, "POST", path, org_admin, body)
        assert status == 409, refused
    assert len(await events(gateway, action)) == before + 1


@pytest.mark.also_on_cluster
async def test_a_token_id_collision_writes_no_event(gateway: Gateway, org_admin: str) -> None:
    """The store's create refuses an id already taken and writes no `token.created`."""
    from tokenward.gateway.store_audit import AuditEntry
    from tokenward.gateway.store_records import Conflict

    store = gateway.runtime.store
    token = await store.get_token((await gateway.runtime.authenticator.authenticate(org_admin, None)).token.id)
    assert token is not None
    before = len(await events(gateway, "token.created"))
    entry = AuditEntry(orjson.dumps({"action": "token.created", "token_id": token.id}), 1000)
    with pytest.raises(Conflict):
        await store.create_token(token, entry)
    assert len(await events(gateway, "token.created")) == before
