"""Lifecycle transitions under concurrency, and who may undo a revocation (SECURITY.md
"lifecycle races and who may restore"), through the real admin HTTP API on the real store.

Races are counted, never timed: many trials of concurrent calls with asyncio.gather, and the
count of resurrected tokens (revoked, confirmed, then active again without an explicit,
permitted restore) must be zero.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.helpers.gateway import TEAMS, TOKENS, Gateway, admin, apis_status, issue

TRIALS = 50


async def team_admin(gw: Gateway, org_admin: str) -> str:
    return str((await issue(gw, org_admin, name="team-admin", scopes=["admin:team", "read:apis"]))["token"])


async def successors(gw: Gateway, admin_token: str, old_id: str) -> list[dict[str, Any]]:
    _, listed, _ = await admin(gw, "GET", TOKENS, admin_token)
    rows = []
    for row in listed["tokens"]:
        _, full, _ = await admin(gw, "GET", f"{TOKENS}/{row['id']}", admin_token)
        if full.get("name") == "victim" and row["id"] != old_id and row["status"] == "active":
            rows.append(full)
    return rows


@pytest.mark.also_on_cluster
async def test_patches_racing_a_revoke_never_resurrect_the_token(gateway: Gateway, org_admin: str) -> None:
    """The review's case: PATCH reads the record, revoke writes, PATCH writes its older copy
    back. Zero resurrections over TRIALS trials."""
    gw = gateway
    resurrected = 0
    for trial in range(TRIALS):
        victim = await issue(gw, org_admin, name="victim")
        path = f"{TOKENS}/{victim['id']}"
        patches = [admin(gw, "PATCH", path, org_admin, {"description": f"edit {i}"}) for i in range(6)]
        revoke = admin(gw, "POST", f"{path}/revoke", org_admin)
        calls = [*patches[: trial % 7], revoke, *patches[trial % 7 :]]
        results = await asyncio.gather(*calls)
        assert all(status == 200 for status, _, _ in results)
        _, after, _ = await admin(gw, "GET", path, org_admin)
        resurrected += (
            after["status"] != "revoked" or await apis_status(gw, victim["token"]) != 401
        )
    assert resurrected == 0


@pytest.mark.also_on_cluster
async def test_concurrent_writes_never_undo_a_revocation(gateway: Gateway, org_admin: str) -> None:
    """Each trial: an org admin revokes a token while PATCHes, rotates and (team admin)
    restores run at the same time. The revocation, once confirmed, holds: the token is
    revoked afterwards and refused at the gateway; a replacement exists only if a rotate won
    before the revoke, and never two."""
    gw = gateway
    team = await team_admin(gw, org_admin)
    resurrected, double_successors, successor_after_lost_rotate = 0, 0, 0
    for trial in range(TRIALS):
        victim = await issue(gw, org_admin, name="victim")
        kid = victim["id"]
        path = f"{TOKENS}/{kid}"
        calls = [admin(gw, "POST", f"{path}/revoke", org_admin, {"reason": f"trial {trial}"})]
        calls += [admin(gw, "PATCH", path, team, {"description": f"edit {i}"}) for i in range(4)]
        calls += [admin(gw, "PATCH", path, org_admin, {"name": "victim"}) for _ in range(2)]
        calls += [admin(gw, "POST", f"{path}/rotate", team) for _ in range(2)]
        calls += [admin(gw, "POST", f"{path}/restore", team) for _ in range(2)]
        # interleave: the revoke is not always first to reach the store
        order = list(range(len(calls)))
        shift = trial % len(calls)
        order = order[shift:] + order[:shift]
        results = await asyncio.gather(*(calls[i] for i in order))
        by_call = {i: results[n] for n, i in enumerate(order)}
        revoke_status, revoked, _ = by_call[0]
        assert revoke_status == 200 and revoked["status"] == "revoked", revoked
        restores = [by_call[i] for i in range(len(calls) - 2, len(calls))]
        assert all(s in (403, 409) for s, _, _ in restores), restores
        rotates = [by_call[i] for i in range(len(calls) - 4, len(calls) - 2)]
        won = [body for s, body, _ in rotates if s == 201]
        assert all(s in (201, 409) for s, _, _ in rotates), rotates

        _, after, _ = await admin(gw, "GET", path, org_admin)
        resurrected += (
            after["status"] != "revoked" or await apis_status(gw, victim["token"]) != 401
        )
        active_successors = await successors(gw, org_admin, kid)
        double_successors += len(won) > 1 or len(active_successors) > 1
        if revoked["replaced_by"] is None:  # the revoke came first: every rotate lost
            successor_after_lost_rotate += bool(won) or bool(active_successors)
        else:  # a rotate came first: its replacement is the one active successor
            assert [s["id"] for s in active_successors] == [revoked["replaced_by"]]
            assert revoked["revoke_reason"] == "rotated"
        # clean up so that the next trial's list stays short
        for successor in active_successors:
            await admin(gw, "POST", f"{TOKENS}/{successor['id']}/revoke", org_admin)
            await admin(gw, "DELETE", f"{TOKENS}/{successor['id']}", org_admin)
        assert (await admin(gw, "DELETE", path, org_admin))[0] == 204
    assert (resurrected, double_successors, successor_after_lost_rotate) == (0, 0, 0)


@pytest.mark.also_on_cluster
async def test_concurrent_rotates_make_exactly_one_successor(gateway: Gateway, org_admin: str) -> None:
    gw = gateway
    for _ in range(20):
        old = await issue(gw, org_admin, name="victim")
        results = await asyncio.gather(
            *(
                admin(gw, "POST", f"{TOKENS}/{old['id']}/rotate", org_admin, {"grace_period": "1h"})
                for _ in range(6)
            )
        )
        won = [body for status, body, _ in results if status == 201]
        assert len(won) == 1 and all(s in (201, 409) for s, _, _ in results), results
        _, after, _ = await admin(gw, "GET", f"{TOKENS}/{old['id']}", org_admin)
        assert after["replaced_by"] == won[0]["id"]
        active = await successors(gw, org_admin, old["id"])
        assert [s["id"] for s in active] == [won[0]["id"]]
        assert await apis_status(gw, won[0]["token"]) == 200
        for token_id in (won[0]["id"], old["id"]):
            await admin(gw, "POST", f"{TOKENS}/{token_id}/revoke", org_admin)
            await admin(gw, "DELETE", f"{TOKENS}/{token_id}", org_admin)


async def test_concurrent_restores_and_revokes_end_in_a_state_someone_confirmed(
    gateway: Gateway, org_admin: str
) -> None:
    """Org admins revoking and restoring at once: each restore undoes exactly one revocation
    (the committed transitions, in the audit stream, alternate), and the final state is the
    one the last committed transition confirmed."""
    gw = gateway
    for _ in range(20):
        victim = await issue(gw, org_admin, name="victim")
        path = f"{TOKENS}/{victim['id']}"
        await admin(gw, "POST", f"{path}/revoke", org_admin)
        calls = [admin(gw, "POST", f"{path}/restore", org_admin) for _ in range(3)]
        calls += [admin(gw, "POST", f"{path}/revoke", org_admin) for _ in range(3)]
        calls += [admin(gw, "PATCH", path, org_admin, {"description": "x"}) for _ in range(3)]
        results = await asyncio.gather(*calls)
        assert all(status in (200, 409) for status, _, _ in results)
        events = await gw.runtime.store.read_audit(count=500)
        committed = [
            e["action"]
            for _, e in reversed(events)
            if e.get("token_id") == victim["id"] and e["action"] in ("token.revoked", "token.restored")
        ]
        assert committed == ["token.revoked", "token.restored"] * (len(committed) // 2) + (
            ["token.revoked"] if len(committed) % 2 else []
        ), committed
        assert sum(status == 200 for status, _, _ in results[:3]) == committed.count("token.restored")
        _, after, _ = await admin(gw, "GET", path, org_admin)
        assert after["status"] == ("revoked" if committed[-1] == "token.revoked" else "active")
        expected = 200 if after["status"] == "active" else 401
        assert await apis_status(gw, victim["token"]) == expected


# -- who may undo a revocation ------------------------------------------------------------
@pytest.mark.also_on_cluster
async def test_a_team_admin_cannot_undo_an_org_admins_revocation(gateway: Gateway, org_admin: str) -> None:
    gw = gateway
    team = await team_admin(gw, org_admin)
    victim = await issue(gw, org_admin)
    path = f"{TOKENS}/{victim['id']}"
    status, revoked, _ = await admin(gw, "POST", f"{path}/revoke", org_admin, {"reason": "suspicious use"})
    assert status == 200
    assert revoked["revoked_by"].startswith("token:") and revoked["revoked_by_level"] == "org"
    assert revoked["revoke_reason"] == "suspicious use"
    status, body, headers = await admin(gw, "POST", f"{path}/restore", team)
    assert status == 403 and "only an org admin" in body["message"]
    assert 'scope="admin:org"' in headers["WWW-Authenticate"]
    # a team admin revoking again does not lower the revocation's level
    assert (await admin(gw, "POST", f"{path}/revoke", team))[1]["revoked_by_level"] == "org"
    assert (await admin(gw, "POST", f"{path}/restore", team))[0] == 403
    assert await apis_status(gw, victim["token"]) == 401
    status, restored, _ = await admin(gw, "POST", f"{path}/restore", org_admin)
    assert status == 200 and restored["status"] == "active" and restored["revoked_by"] is None
    assert await apis_status(gw, victim["token"]) == 200


async def test_a_team_admin_may_undo_its_own_level_unless_an_org_admin_took_it_over(
    gateway: Gateway, org_admin: str
) -> None:
    gw = gateway
    team = await team_admin(gw, org_admin)
    victim = await issue(gw, org_admin)
    path = f"{TOKENS}/{victim['id']}"
    status, revoked, _ = await admin(gw, "POST", f"{path}/revoke", team)
    assert status == 200 and revoked["revoked_by_level"] == "team" and revoked["revoke_reason"] is None
    assert (await admin(gw, "POST", f"{path}/restore", team))[0] == 200
    await admin(gw, "POST", f"{path}/revoke", team)
    status, taken, _ = await admin(gw, "POST", f"{path}/revoke", org_admin, {"reason": "incident 42"})
    assert status == 200 and taken["revoked_by_level"] == "org" and taken["revoke_reason"] == "incident 42"
    assert (await admin(gw, "POST", f"{path}/restore", team))[0] == 403


@pytest.mark.parametrize("who", ["org", "team"])
async def test_leaked_and_rotated_tokens_never_come_back(gateway: Gateway, org_admin: str, who: str) -> None:
    gw = gateway
    team = await team_admin(gw, org_admin)
    restorer = org_admin if who == "org" else team
    leaked = await issue(gw, org_admin)
    status, body, _ = await admin(gw, "POST", "/v1/leaks", team, {"tokens": [leaked["token"]]})
    assert status == 200 and body["results"][0]["result"] == "revoked"
    _, view, _ = await admin(gw, "GET", f"{TOKENS}/{leaked['id']}", org_admin)
    assert view["revoke_reason"] == "leaked" and view["revoked_by"]
    status, body, _ = await admin(gw, "POST", f"{TOKENS}/{leaked['id']}/restore", restorer)
    assert status == 409 and "leaked" in body["message"] and "never" in body["message"]

    rotated = await issue(gw, org_admin)
    assert (await admin(gw, "POST", f"{TOKENS}/{rotated['id']}/rotate", team))[0] == 201
    _, view, _ = await admin(gw, "GET", f"{TOKENS}/{rotated['id']}", org_admin)
    assert view["revoke_reason"] == "rotated" and view["replaced_by"]
    status, body, _ = await admin(gw, "POST", f"{TOKENS}/{rotated['id']}/restore", restorer)
    assert status == 409 and "rotated" in body["message"]
    # an explicit revocation "leaked" is final too (reported without the plaintext)
    other = await issue(gw, org_admin)
    await admin(gw, "POST", f"{TOKENS}/{other['id']}/revoke", team, {"reason": "leaked"})
    assert (await admin(gw, "POST", f"{TOKENS}/{other['id']}/restore", restorer))[0] == 409


@pytest.mark.parametrize(
    "reason", ["rotated", "", "a" * 201, "evil\u202etxt", "line\nbreak", "\x1b[31mred", 7, None]
)
async def test_revoke_reason_is_checked(gateway: Gateway, org_admin: str, reason: Any) -> None:
    victim = await issue(gateway, org_admin)
    path = f"{TOKENS}/{victim['id']}/revoke"
    status, body, _ = await admin(gateway, "POST", path, org_admin, {"reason": reason})
    assert status == 400 and body["field"] in ("reason", "reason"), body
    _, view, _ = await admin(gateway, "GET", f"{TOKENS}/{victim['id']}", org_admin)
    assert view["status"] == "active"


@pytest.mark.also_on_cluster
async def test_admin_changes_are_in_the_audit_stream_when_confirmed(gateway: Gateway, org_admin: str) -> None:
    """No write-behind for admin changes: the event is in the stream when the response arrives
    (written in the change's own script or MULTI; in a cluster, durably right after it)."""
    gw = gateway
    victim = await issue(gw, org_admin)
    path = f"{TOKENS}/{victim['id']}"
    steps = [
        ("PATCH", path, {"description": "d"}, "token.updated"),
        ("POST", f"{path}/revoke", {"reason": "audit"}, "token.revoked"),
        ("POST", f"{path}/restore", None, "token.restored"),
        ("POST", f"{path}/rotate", None, "token.rotated"),
        (
            "PUT",
            f"{TEAMS}/platform/permissions",
            {"permissions": ["read:apis", "admin:team"]},
            "team.permissions_changed",
        ),
    ]
    for method, target, body, action in steps:
        status, _, headers = await admin(gw, method, target, org_admin, body)
        assert status in (200, 201), (target, status)
        events = await gw.runtime.store.read_audit(count=50)
        mine = [e for _, e in events if e.get("request_id") == headers["X-Request-Id"]]
        assert [e["action"] for e in mine] == [action]
        assert mine[0]["actor_id"] and mine[0]["org"] == "acme"


async def test_cli_shows_who_revoked_and_why(gateway: Gateway, org_admin: str) -> None:
    from tests.helpers.process import env_for_subprocess, run_cli

    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"] = gateway.admin_url
    env["TOKENWARD_TOKEN"] = org_admin
    victim = await issue(gateway, org_admin, name="victim")
    code, out, err = await run_cli(
        "token", "revoke", victim["id"], "--team", "platform", "--reason", "key in a public gist", env=env
    )
    assert code == 0, err
    code, out, err = await run_cli("token", "get", victim["id"], "--team", "platform", env=env)
    assert code == 0, err
    assert "revoked (org: key in a public gist)" in out
    assert "Revoked by:  token:" in out and "(an org admin)" in out
    assert "Reason:      key in a public gist" in out
    code, out, _ = await run_cli("token", "list", "--team", "platform", env=env)
    row = next(line for line in out.splitlines() if victim["id"] in line)
    assert row.endswith("revoked (org: key in a public gist)")
    code, out, _ = await run_cli("token", "get", victim["id"], "--team", "platform", "--json", env=env)
    shown = json.loads(out)
    assert (shown["revoked_by_level"], shown["revoke_reason"]) == ("org", "key in a public gist")


async def test_writes_through_another_process_never_undo_a_revocation(
    gateway: Gateway, org_admin: str, start_gateway: Any, config: dict[str, Any]
) -> None:
    """The same race across two tokenward processes on one store (as with `--workers N` or
    several replicas): the compare-and-set is in the store, not in a process."""
    other = await start_gateway(config)
    resurrected = 0
    for trial in range(30):
        victim = await issue(gateway, org_admin, name="victim")
        path = f"{TOKENS}/{victim['id']}"
        patches = [admin(other, "PATCH", path, org_admin, {"description": f"{i}"}) for i in range(4)]
        rotates = [admin(other, "POST", f"{path}/rotate", org_admin) for _ in range(2)]
        revoke = admin(gateway, "POST", f"{path}/revoke", org_admin)
        calls = [*patches[: trial % 5], revoke, *patches[trial % 5 :], *rotates]
        results = await asyncio.gather(*calls)
        revoked = results[trial % 5][1]
        assert revoked["status"] == "revoked"
        _, after, _ = await admin(other, "GET", path, org_admin)
        resurrected += after["status"] != "revoked"
        for gw in (gateway, other):
            resurrected += await apis_status(gw, victim["token"]) != 401
        won = [body for status, body, _ in results[-2:] if status == 201]
        assert len(won) <= 1 and (revoked["replaced_by"] is None) == (not won)
    assert resurrected == 0
