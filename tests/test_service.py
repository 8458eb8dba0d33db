"""The token service without HTTP (issue 12, item 2): a real store, plain values in, domain
errors and `Refusal`s out, every change written with its audit event."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.helpers.gateway import base_config
from tokenward.actor import Actor
from tokenward.directory import Directory
from tokenward.endpoints import domain_refusal
from tokenward.gateway.decision import Principal
from tokenward.gateway.embedded import free_port
from tokenward.gateway.refusal import Refusal, Step
from tokenward.gateway.runtime import Runtime
from tokenward.gateway.settings import settings_from_dict
from tokenward.gateway.store import QuotaExceeded
from tokenward.gateway.store_records import Conflict
from tokenward.rules import Invalid, Lifetime, NotFound
from tokenward.service import TokenService


@pytest.fixture
async def runtime(redis_url: str) -> AsyncIterator[Runtime]:
    raw = base_config(free_port())
    raw["tokens"]["max_per_team"] = 5
    opened = await Runtime.open(settings_from_dict(raw, "test"), redis_url=redis_url)
    try:
        yield opened
    finally:
        await opened.close()


async def events(runtime: Runtime, action: str) -> list[dict[str, Any]]:
    """The audit stream's events of `action`, oldest first."""
    rows = await runtime.store.read_audit(count=1000)
    return [event for _, event in reversed(rows) if event.get("action") == action]


async def principal(runtime: Runtime, plaintext: str) -> Principal:
    return await runtime.authenticator.authenticate(plaintext, "127.0.0.1")


async def actor(runtime: Runtime, plaintext: str) -> Actor:
    return Actor.of(await principal(runtime, plaintext), "192.0.2.1", "req-1")


@pytest.fixture
async def acme(runtime: Runtime) -> dict[str, Actor]:
    """An org admin of acme (issued as `admin bootstrap` does), team platform, its team admin."""
    tokens = TokenService(runtime)
    org_plain, _ = await tokens.issue(
        Actor("bootstrap"), org="acme", team=None, name="first", scopes=["admin:org"], lifetime=None
    )
    org_admin = await actor(runtime, org_plain)
    await Directory(runtime).create_team(
        org_admin, "acme", "platform", ["read:apis", "write:apis", "admin:team"]
    )
    team_plain, _ = await tokens.issue(
        org_admin, org="acme", team="platform", name="ta", scopes=["admin:team", "read:apis"]
    )
    return {"org": org_admin, "team": await actor(runtime, team_plain)}


async def test_bootstrap_issue_is_audited_in_the_stream(runtime: Runtime) -> None:
    plaintext, record = await TokenService(runtime).issue(
        Actor("bootstrap"), org="acme", team=None, name="first", scopes=["admin:org"], lifetime=None
    )
    assert record.expires_at is None and record.created_by == "bootstrap"
    (event,) = await events(runtime, "token.created")
    assert event["actor_id"] == "bootstrap" and event["token_id"] == record.id
    assert event["scopes"] == ["admin:org"] and event["org"] == "acme" and event["team"] is None
    assert (await principal(runtime, plaintext)).token.id == record.id


async def test_issue_by_an_admin_names_its_actor(runtime: Runtime, acme: dict[str, Actor]) -> None:
    plaintext, record = await TokenService(runtime).issue(
        acme["team"], org="acme", team="platform", name="ci", scopes=["read:apis"], lifetime=Lifetime("1d")
    )
    assert record.expires_at is not None and abs(record.expires_at - time.time() - 86400) < 60
    event = (await events(runtime, "token.created"))[-1]
    assert event["token_id"] == record.id and event["actor_id"] == acme["team"].principal.token.id  # type: ignore[union-attr]
    assert event["client_ip"] == "192.0.2.1" and event["request_id"] == "req-1"
    assert (await principal(runtime, plaintext)).token.team == "platform"


@pytest.mark.parametrize(
    ("fields", "error", "field"),
    [
        ({"scopes": ["not a scope"]}, Invalid, "scopes"),
        ({"scopes": ["admin:org"]}, Invalid, "scopes"),  # an org power for a team
        ({"team": "nope"}, NotFound, None),
        ({"lifetime": Lifetime("1d", "2030-01-01T00:00:00Z")}, Invalid, "expires_in"),
        ({"lifetime": Lifetime("400d")}, Invalid, "expires_in"),  # over tokens.max_ttl
        ({"allowed_cidrs": ["10.0.0.0/33"]}, Invalid, "allowed_cidrs[0]"),
        ({"constraints": {"org": "x"}}, Invalid, "constraints.org"),
        ({"service_account": "ghost"}, Invalid, "service_account"),
    ],
)
async def test_issue_refuses_bad_fields_with_domain_errors(
    runtime: Runtime,
    acme: dict[str, Actor],
    fields: dict[str, Any],
    error: type[Exception],
    field: str | None,
) -> None:
    asked: dict[str, Any] = {"team": "platform", "name": "t", "scopes": ["read:apis"], **fields}
    before = await runtime.store.token_count("acme", "platform")
    with pytest.raises(error) as raised:
        await TokenService(runtime).issue(acme["org"], org="acme", **asked)
    if field is not None:
        assert isinstance(raised.value, Invalid) and raised.value.field == field
    assert await runtime.store.token_count("acme", "platform") == before
    assert domain_refusal(raised.value).status == (400 if error is Invalid else 404)


async def test_a_token_grants_no_more_than_it_holds(runtime: Runtime, acme: dict[str, Actor]) -> None:
    created = len(await events(runtime, "token.created"))
    with pytest.raises(Refusal) as refused:
        await TokenService(runtime).issue(
            acme["team"], org="acme", team="platform", name="w", scopes=["write:apis"]
        )
    assert (refused.value.status, refused.value.step, refused.value.scope) == (403, Step.GRANT, "write:apis")
    assert len(await events(runtime, "token.created")) == created  # nothing written


async def test_quota_is_a_domain_error(runtime: Runtime, acme: dict[str, Actor]) -> None:
    tokens = TokenService(runtime)
    for i in range(4):  # the team admin is the first of 5
        await tokens.issue(acme["org"], org="acme", team="platform", name=f"t{i}", scopes=["read:apis"])
    with pytest.raises(QuotaExceeded):
        await tokens.issue(acme["org"], org="acme", team="platform", name="over", scopes=["read:apis"])


async def test_revoke_restore_update_delete(runtime: Runtime, acme: dict[str, Actor]) -> None:
    tokens = TokenService(runtime)
    _, record = await tokens.issue(acme["team"], org="acme", team="platform", name="a", scopes=["read:apis"])
    with pytest.raises(Conflict, match="not revoked"):
        await tokens.restore(acme["team"], "acme", "platform", record.id)
    with pytest.raises(Conflict, match="active"):
        await tokens.delete(acme["team"], "acme", "platform", record.id)
    revoked = await tokens.revoke(acme["org"], "acme", "platform", record.id, "offboarding")
    assert revoked.status() == "revoked" and revoked.revoked_level == "org"
    with pytest.raises(Refusal) as refused:  # a team admin cannot undo an org admin's revocation
        await tokens.restore(acme["team"], "acme", "platform", record.id)
    assert (refused.value.status, refused.value.step) == (403, Step.SCOPE)
    restored = await tokens.restore(acme["org"], "acme", "platform", record.id)
    assert restored.status() == "active"
    renamed = await tokens.update(acme["team"], "acme", "platform", record.id, name="b", description=None)
    assert renamed.name == "b" and renamed.description == record.description
    with pytest.raises(NotFound):
        await tokens.update(acme["team"], "acme", "other", record.id, name="c", description=None)
    await tokens.revoke(acme["team"], "acme", "platform", record.id, None)
    await tokens.delete(acme["team"], "acme", "platform", record.id)
    assert await runtime.store.get_token(record.id) is None
    for action in ("token.revoked", "token.restored", "token.updated", "token.deleted"):
        assert any(e["token_id"] == record.id for e in await events(runtime, action)), action
    (revocation, _) = [e for e in await events(runtime, "token.revoked") if e["token_id"] == record.id]
    assert revocation["reason"] == "offboarding"


async def test_rotate(runtime: Runtime, acme: dict[str, Actor]) -> None:
    tokens = TokenService(runtime)
    _, old = await tokens.issue(acme["team"], org="acme", team="platform", name="r", scopes=["read:apis"])
    rotated = await tokens.rotate(acme["team"], "acme", "platform", old.id, Lifetime(), "1h")
    assert rotated.retired.replaced_by == rotated.record.id and rotated.record.replaces == old.id
    assert rotated.retired.revoke_reason == "rotated" and rotated.retired.status() == "active"  # grace
    assert (await principal(runtime, rotated.plaintext)).token.id == rotated.record.id
    with pytest.raises(Conflict, match="already rotated"):
        await tokens.rotate(acme["team"], "acme", "platform", old.id, Lifetime(), None)
    with pytest.raises(Invalid) as bad:
        await tokens.rotate(acme["team"], "acme", "platform", rotated.record.id, Lifetime(), "31d")
    assert bad.value.field == "grace_period"
    (event,) = await events(runtime, "token.rotated")
    assert event["token_id"] == rotated.record.id and event["replaces"] == old.id


async def test_leak_report_is_final(runtime: Runtime, acme: dict[str, Actor]) -> None:
    tokens = TokenService(runtime)
    plaintext, record = await tokens.issue(
        acme["org"], org="acme", team="platform", name="l", scopes=["read:apis"]
    )
    shown, result = await tokens.report_leak(acme["team"], plaintext)
    assert result == "revoked" and plaintext not in shown and shown.startswith("tw_sat_")
    assert (await tokens.report_leak(acme["team"], plaintext))[1] == "already_revoked"
    assert (await tokens.report_leak(acme["team"], "hello"))[1] == "not_a_token"
    with pytest.raises(Conflict, match="leaked"):
        await tokens.restore(acme["org"], "acme", "platform", record.id)
    (event,) = await events(runtime, "token.leaked")
    assert event["token_id"] == record.id and event["was_revoked"] is False


async def test_a_revoked_actor_changes_nothing(runtime: Runtime, acme: dict[str, Actor]) -> None:
    """The actor's record is checked in the same atomic write as its change (ActorFence)."""
    tokens = TokenService(runtime)
    team_admin = acme["team"]
    assert team_admin.principal is not None
    await tokens.revoke(acme["org"], "acme", "platform", team_admin.principal.token.id, None)
    held = await runtime.store.token_count("acme", "platform")
    with pytest.raises(Refusal) as refused:
        await tokens.issue(team_admin, org="acme", team="platform", name="late", scopes=["read:apis"])
    assert (refused.value.status, refused.value.step) == (401, Step.STATUS)
    assert await runtime.store.token_count("acme", "platform") == held


async def test_teams_and_service_accounts(runtime: Runtime, acme: dict[str, Actor]) -> None:
    directory = Directory(runtime)
    with pytest.raises(Invalid):
        await directory.set_permissions(acme["org"], "acme", "platform", ["admin:org"])
    team = await directory.set_permissions(acme["org"], "acme", "platform", ["read:apis", "admin:team"])
    assert [str(s) for s in team.permissions] == ["read:apis", "admin:team"]
    await directory.create_service_account(acme["team"], "acme", "platform", "ci", "")
    with pytest.raises(Conflict):
        await directory.create_service_account(acme["team"], "acme", "platform", "ci", "")
    await TokenService(runtime).issue(
        acme["team"], org="acme", team="platform", name="s", scopes=["read:apis"], service_account="ci"
    )
    with pytest.raises(Conflict, match="active tokens"):
        await directory.delete_service_account(acme["team"], "acme", "platform", "ci")
    created = await events(runtime, "service_account.created")
    assert created and created[0]["service_account"] == "ci" and created[0]["actor_team"] == "platform"


@pytest.mark.parametrize(
    ("exc", "status", "error", "field"),
    [
        (Invalid("scopes: bad", "scopes"), 400, "invalid_request", "scopes"),
        (NotFound("team 'x' does not exist in org 'acme'"), 404, "not_found", None),
    ],
)
def test_domain_errors_table_rows(exc: Exception, status: int, error: str, field: str | None) -> None:
    refusal = domain_refusal(exc)
    assert (refusal.status, refusal.error, refusal.field, refusal.step) == (status, error, field, None)
    assert refusal.message == str(exc)


def test_the_service_imports_no_http() -> None:
    code = (
        "import sys, tokenward.service, tokenward.directory, tokenward.rules, tokenward.actor\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'aiohttp'], 'aiohttp imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_revoke_reason_and_empty_update_are_invalid(runtime: Runtime, acme: dict[str, Actor]) -> None:
    tokens = TokenService(runtime)
    _, record = await tokens.issue(acme["team"], org="acme", team="platform", name="v", scopes=["read:apis"])
    for reason in ("rotated", "", "x" * 201, "\x1b[2J", 7):
        with pytest.raises(Invalid) as bad:
            await tokens.revoke(acme["team"], "acme", "platform", record.id, reason)
        assert bad.value.field == "reason"
    with pytest.raises(Invalid) as empty:
        await tokens.update(acme["team"], "acme", "platform", record.id, name=None, description=None)
    assert empty.value.field == "body"
    assert (await runtime.store.get_token(record.id)).status() == "active"  # type: ignore[union-attr]
    assert await events(runtime, "token.revoked") == [] and await events(runtime, "token.updated") == []
