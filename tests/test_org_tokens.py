"""Org-level administration (issue 14, items 1 and 2): every token of an org, org-level ones
(the bootstrap org admin) too, listed, shown, revoked, restored, rotated and deleted by id
through `/v1/orgs/{org}/tokens`, by org admins only; the CLI without `--team`; bootstrap's
`--expires-in`; the demo's org admin token. Against the real store and real processes."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.gateway import Gateway, admin, base_config
from tests.helpers.process import env_for_subprocess, run_cli
from tokenward.gateway.embedded import free_port

ORG_TOKENS = "/v1/orgs/acme/tokens"
TEAMS = "/v1/orgs/acme/teams"


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def mint(gw: Gateway, by: str, team: str = "platform", **body: Any) -> dict[str, Any]:
    body.setdefault("name", "ci")
    body.setdefault("scopes", ["read:apis"])
    status, data, _ = await admin(gw, "POST", f"{TEAMS}/{team}/tokens", by, body)
    assert status == 201, data
    return dict(data)


@pytest.fixture
async def acme(gateway: Gateway) -> str:
    """An org admin of acme, with teams platform and other."""
    token = await gateway.org_admin()
    for team in ("platform", "other"):
        body = {"name": team, "permissions": ["read:apis", "write:specs", "admin:team"]}
        assert (await admin(gateway, "POST", TEAMS, token, body))[0] == 201
    return token


async def whoami(gw: Gateway, token: str) -> int:
    return (await admin(gw, "GET", "/v1/whoami", token))[0]


async def org_list(gw: Gateway, by: str, query: str = "") -> list[dict[str, Any]]:
    """Every row of the org-wide list, following `next` with small pages."""
    rows: list[dict[str, Any]] = []
    cursor = ""
    while True:
        sep = "&" if query else ""
        status, page, _ = await admin(gw, "GET", f"{ORG_TOKENS}?limit=2{sep}{query}{cursor}", by)
        assert status == 200, page
        rows += page["tokens"]
        if page["next"] is None:
            return rows
        cursor = f"&cursor={page['next']}"


@pytest.mark.also_on_cluster
async def test_org_level_tokens_by_id(gateway: Gateway, acme: str) -> None:
    """A second org admin (org level, team null) is shown, revoked, restored, rotated and
    deleted by id like a team token; it was unreachable by id before (404 on every path)."""
    gw = gateway
    second = await gw.org_admin()
    status, me, _ = await admin(gw, "GET", "/v1/whoami", second)
    kid = me["id"]
    status, view, _ = await admin(gw, "GET", f"{ORG_TOKENS}/{kid}", acme)
    assert status == 200 and view["team"] is None and view["status"] == "active" and view["scopes"] == ["admin:org"]
    assert "secret_hash" not in view and "token" not in view
    status, view, _ = await admin(gw, "POST", f"{ORG_TOKENS}/{kid}/revoke", acme, {"reason": "break-glass done"})
    assert status == 200 and view["status"] == "revoked"
    assert view["revoke_reason"] == "break-glass done" and view["revoked_by"].startswith("token:")
    assert view["revoked_by_level"] == "org"
    assert await whoami(gw, second) == 401
    status, view, _ = await admin(gw, "POST", f"{ORG_TOKENS}/{kid}/restore", acme)
    assert status == 200 and view["status"] == "active" and await whoami(gw, second) == 200
    status, new, headers = await admin(gw, "POST", f"{ORG_TOKENS}/{kid}/rotate", acme, {"grace_period": "1h"})
    assert status == 201 and new["replaces"] == kid and new["team"] is None and new["scopes"] == ["admin:org"]
    assert headers["Location"] == f"{ORG_TOKENS}/{new['id']}" and headers["Cache-Control"] == "no-store"
    assert await whoami(gw, new["token"]) == 200 and await whoami(gw, second) == 200  # in grace
    status, old, _ = await admin(gw, "GET", f"{ORG_TOKENS}/{kid}", acme)
    assert old["status"] == "grace" and old["replaced_by"] == new["id"] and old["grace_until"]
    status, renamed, _ = await admin(gw, "PATCH", f"{ORG_TOKENS}/{new['id']}", acme, {"name": "break-glass"})
    assert status == 200 and renamed["name"] == "break-glass"
    assert (await admin(gw, "DELETE", f"{ORG_TOKENS}/{kid}", acme))[0] == 409  # still works (grace)
    assert (await admin(gw, "POST", f"{ORG_TOKENS}/{kid}/revoke", acme))[0] == 200
    assert await whoami(gw, second) == 401
    assert (await admin(gw, "DELETE", f"{ORG_TOKENS}/{kid}", acme))[0] == 204
    assert (await admin(gw, "GET", f"{ORG_TOKENS}/{kid}", acme))[0] == 404


async def test_team_tokens_by_id_without_their_team(gateway: Gateway, acme: str) -> None:
    gw = gateway
    token = await mint(gw, acme, "other", name="deploy")
    status, view, _ = await admin(gw, "GET", f"{ORG_TOKENS}/{token['id']}", acme)
    assert status == 200 and view["team"] == "other" and view["effective_scopes"] == ["read:apis"]
    status, view, _ = await admin(gw, "POST", f"{ORG_TOKENS}/{token['id']}/revoke", acme)
    assert status == 200 and view["status"] == "revoked"
    status, view, _ = await admin(gw, "POST", f"{ORG_TOKENS}/{token['id']}/restore", acme)
    assert status == 200 and view["status"] == "active"
    status, new, headers = await admin(gw, "POST", f"{ORG_TOKENS}/{token['id']}/rotate", acme)
    assert status == 201 and new["team"] == "other" and new["name"] == "deploy"
    assert headers["Location"] == f"{TEAMS}/other/tokens/{new['id']}"


async def test_org_wide_list_and_its_filters(gateway: Gateway, acme: str) -> None:
    gw = gateway
    second = await gw.org_admin()
    a = await mint(gw, acme, "platform", name="a", expires_in="2d")
    await mint(gw, acme, "other", name="b", expires_in="30d")
    c = await mint(gw, acme, "other", name="c", expires_in="3d")
    await admin(gw, "POST", f"{TEAMS}/other/tokens/{c['id']}/revoke", acme)
    globex = await gw.org_admin("globex")
    assert globex  # another org's tokens never show
    rows = await org_list(gw, acme)
    names = [(r["name"], r["team"]) for r in rows]
    assert names == [("org-admin", None), ("org-admin", None), ("a", "platform"), ("b", "other"), ("c", "other")]
    assert len({r["id"] for r in rows}) == 5  # every row once, across pages of 2
    assert [r["name"] for r in await org_list(gw, acme, "team=other")] == ["b", "c"]
    assert [r["name"] for r in await org_list(gw, acme, "status=revoked")] == ["c"]
    # org-wide expiring_within: active tokens of every team expiring within 7 days
    assert [r["id"] for r in await org_list(gw, acme, "expiring_within=7d")] == [a["id"]]
    status, me, _ = await admin(gw, "GET", "/v1/whoami", second)
    assert me["id"] in {r["id"] for r in rows}
    # a service account's tokens across the org, or in one team
    assert (await admin(gw, "POST", f"{TEAMS}/other/service-accounts", acme, {"name": "ci"}))[0] == 201
    d = await mint(gw, acme, "other", name="d", service_account="ci")
    assert [r["id"] for r in await org_list(gw, acme, "service_account=ci")] == [d["id"]]
    assert [r["id"] for r in await org_list(gw, acme, "service_account=ci&team=other")] == [d["id"]]
    # bad filters: a team that does not exist, a name that is not one
    assert (await admin(gw, "GET", f"{ORG_TOKENS}?team=nope", acme))[0] == 404
    status, body, _ = await admin(gw, "GET", f"{ORG_TOKENS}?team=Not%20A%20Team", acme)
    assert status == 400 and body["field"] == "team"
    assert (await admin(gw, "GET", f"{ORG_TOKENS}?status=grace", acme))[1]["tokens"] == []


async def test_only_org_admins_use_the_org_wide_paths(gateway: Gateway, acme: str) -> None:
    """A team admin gets 403 on every org-wide path, even for its own team's tokens (it keeps
    its team paths); another org's admin gets 403; another org's token is 404."""
    gw = gateway
    team_admin = (await mint(gw, acme, "platform", name="ta", scopes=["admin:team", "read:apis"]))["token"]
    own = await mint(gw, acme, "platform", name="own")
    globex = await gw.org_admin("globex")
    for method, path in [
        ("GET", ORG_TOKENS),
        ("GET", f"{ORG_TOKENS}/{own['id']}"),
        ("PATCH", f"{ORG_TOKENS}/{own['id']}"),
        ("POST", f"{ORG_TOKENS}/{own['id']}/revoke"),
        ("POST", f"{ORG_TOKENS}/{own['id']}/restore"),
        ("POST", f"{ORG_TOKENS}/{own['id']}/rotate"),
        ("DELETE", f"{ORG_TOKENS}/{own['id']}"),
    ]:
        body = {"name": "x"} if method == "PATCH" else None
        status, data, _ = await admin(gw, method, path, team_admin, body)
        assert status == 403 and data["step"] == "scope", (method, path, data)
        status, data, _ = await admin(gw, method, path, globex, body)
        assert status == 403 and data["step"] == "org", (method, path, data)
    # the team admin's own team paths work as before
    assert (await admin(gw, "GET", f"{TEAMS}/platform/tokens/{own['id']}", team_admin))[0] == 200
    # an acme token is not found through globex's org-wide path, and the reverse
    assert (await admin(gw, "GET", f"/v1/orgs/globex/tokens/{own['id']}", globex))[0] == 404
    acme_admin_id = (await admin(gw, "GET", "/v1/whoami", acme))[1]["id"]
    assert (await admin(gw, "POST", f"/v1/orgs/globex/tokens/{acme_admin_id}/revoke", globex))[0] == 404
    assert await whoami(gw, acme) == 200


# -- the CLI -------------------------------------------------------------------------------------
async def cli(env: dict[str, str], *args: str) -> str:
    code, out, err = await run_cli(*args, env=env)
    assert code == 0, (args, err)
    return out


def env_with(gw: Gateway, token: str) -> dict[str, str]:
    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"], env["TOKENWARD_TOKEN"] = gw.admin_url, token
    return env


async def test_cli_without_team_for_an_org_admin(gateway: Gateway, acme: str) -> None:
    gw = gateway
    env = env_with(gw, acme)
    second = await gw.org_admin()
    second_id = (await admin(gw, "GET", "/v1/whoami", second))[1]["id"]
    other = await mint(gw, acme, "other", name="deploy")
    out = await cli(env, "token", "list")
    header, *lines = out.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "TEAM"]
    rows = {line.split()[0]: line.split() for line in lines}
    assert rows[second_id][2] == "(org)" and rows[other["id"]][2] == "other"
    assert len(rows) == 3
    listed = json.loads(await cli(env, "token", "list", "--json"))["tokens"]
    assert {t["id"] for t in listed} == set(rows) and {t["team"] for t in listed} == {None, "other"}
    out = await cli(env, "token", "get", second_id)
    assert "(org-level token)" in out and second_id in out
    out = await cli(env, "token", "revoke", second_id, "--reason", "leaving")
    assert "has been revoked" in out and "leaving" in out and "Revoked by:" in out
    assert await whoami(gw, second) == 401
    out = await cli(env, "token", "restore", second_id)
    assert "has been restored" in out and await whoami(gw, second) == 200
    out = await cli(env, "token", "rotate", other["id"], "--grace-period", "1h")
    new_id = next(line.split()[-1] for line in out.splitlines() if line.strip().startswith("ID:"))
    out = await cli(env, "token", "get", other["id"])
    assert "grace (until" in out and f"Replaced by: {new_id}" in out and "Grace until:" in out
    out = await cli(env, "token", "list", "--expiring-within", "400d", "--json")
    assert {t["id"] for t in json.loads(out)["tokens"]} >= {new_id}
    # with --team: the team path, as before (no TEAM column)
    out = await cli(env, "token", "list", "--team", "other")
    assert out.splitlines()[0].split()[:3] == ["ID", "NAME", "PREFIX"]
    # create still needs a team for an org-level caller
    code, _, err = await run_cli("token", "create", "--name", "x", "--scopes", "read:apis", env=env)
    assert code != 0 and "--team is required" in err


async def test_cli_team_admin_keeps_its_own_team(gateway: Gateway, acme: str) -> None:
    gw = gateway
    team_admin = await mint(gw, acme, "platform", name="ta", scopes=["admin:team", "read:apis"])
    mine = await mint(gw, acme, "platform", name="mine")
    theirs = await mint(gw, acme, "other", name="theirs")
    env = env_with(gw, team_admin["token"])
    out = await cli(env, "token", "list")
    assert out.splitlines()[0].split()[:3] == ["ID", "NAME", "PREFIX"]
    assert mine["id"] in out and theirs["id"] not in out
    assert mine["id"] in await cli(env, "token", "get", mine["id"])
    code, _, err = await run_cli("token", "get", theirs["id"], env=env)
    assert code != 0 and "404" in err


# -- bootstrap and the demo ----------------------------------------------------------------------
async def test_bootstrap_expires_in(tmp_path: Path, upstream: int) -> None:
    config = base_config(upstream)
    config["data_dir"] = str(tmp_path / "data")
    path = tmp_path / "tokenward.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ("admin", "bootstrap", "--config", str(path), "--org", "acme")
    code, out, err = await run_cli(*args, "--expires-in", "30d", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert abs(ts(data["expires_at"]) - (time.time() + 30 * 86400)) < 120
    code, out, err = await run_cli(*args, "--expires-in", "2d")
    assert code == 0 and "Expires:" in out and "never" not in out
    code, out, err = await run_cli(*args, "--json")
    assert code == 0 and json.loads(out)["expires_at"] is None  # still the break-glass default
    code, out, err = await run_cli(*args, "--expires-in", "400d")  # over tokens.max_ttl (365d)
    assert code == 1 and err.startswith("error: --expires-in: exceeds the maximum") and len(err.splitlines()) == 1
    code, out, err = await run_cli(*args, "--expires-in", "soon")
    assert code == 1 and "--expires-in" in err and len(err.splitlines()) == 1


async def test_demo_does_not_pile_up_org_admin_tokens(tmp_path: Path) -> None:
    """Each `demo` run revokes and deletes the previous run's org admin token and issues one
    that expires (7 days); its walkthrough shows the org-wide list."""
    from tokenward.gateway.runtime import Runtime
    from tokenward.gateway.settings import load_settings

    data = tmp_path / "demo"

    async def demo() -> str:
        ports = [str(free_port()) for _ in range(3)]
        code, out, err = await run_cli(
            "demo", "--once", "--data-dir", str(data), "--port", ports[0], "--admin-port", ports[1],
            "--upstream-port", ports[2], timeout=120,
        )  # fmt: skip
        assert code == 0, err
        return out

    first = await demo()
    assert "expires 20" in first and "revoked and deleted" not in first
    assert "tokenward token list   " in first and "every token of org acme" in first
    second = await demo()
    assert "the previous run's one is revoked and deleted" in second
    runtime = await Runtime.open(load_settings(data / "demo.yaml"))
    try:
        ids = await runtime.store.list_token_ids("acme", None)
        assert len(ids) == 1
        record = await runtime.store.get_token(ids[0])
        assert record is not None and record.expires_at is not None
        assert 364 * 86400 < record.expires_at - time.time() <= 365 * 86400
        first_token = next(line.split("=", 1)[1] for line in first.splitlines() if "TOKENWARD_TOKEN=" in line)
        with pytest.raises(Exception, match="invalid token"):
            await runtime.authenticator.authenticate(first_token.strip(), "127.0.0.1")
    finally:
        await runtime.close()
