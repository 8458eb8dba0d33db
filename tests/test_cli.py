"""The `tokenward` CLI as a user runs it: real subprocesses against the real admin API."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.gateway import APIS, Gateway
from tests.helpers.process import env_for_subprocess, run_cli
from tokenward.cli_output import humanize_ago, table


@pytest.fixture
async def cli_env(gateway: Gateway) -> dict[str, str]:
    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"] = gateway.admin_url
    env["TOKENWARD_TOKEN"] = await gateway.org_admin()
    return env


async def test_team_and_token_commands(gateway: Gateway, cli_env: dict[str, str]) -> None:
    code, out, err = await run_cli(
        "team", "create", "platform", "--permissions", "read:apis,write:specs,admin:team", env=cli_env
    )
    assert code == 0, err
    assert "platform" in out
    code, out, _ = await run_cli("team", "list", "--json", env=cli_env)
    assert code == 0 and [t["name"] for t in json.loads(out)["teams"]] == ["platform"]
    code, out, _ = await run_cli("team", "list", env=cli_env)
    assert out.splitlines()[0].split() == ["NAME", "PERMISSIONS", "CREATED"]

    code, out, err = await run_cli(
        "token",
        "create",
        "--team",
        "platform",
        "--name",
        "ci-deploy",
        "--scopes",
        "read:apis,write:specs",
        "--expires-in",
        "30d",
        "--json",
        env=cli_env,
    )
    assert code == 0, err
    created = json.loads(out)
    assert created["token"].startswith("tw_sat_")

    code, out, err = await run_cli(
        "token", "create", "--team", "platform", "--name", "bot", "--scopes", "read:apis", env=cli_env
    )
    assert code == 0, err
    assert "Copy this token now" in out and "tw_sat_" in out

    code, out, _ = await run_cli("token", "list", "--team", "platform", env=cli_env)
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "PREFIX", "SCOPES", "LAST", "USED", "EXPIRES", "STATUS"]
    assert any("ci-deploy" in line and "never" in line and "active" in line for line in lines)
    assert created["token"] not in out

    # use it, then LAST USED moves off "never" within a few seconds
    async with gateway.session.get(
        f"{gateway.url}/orgs/acme/teams/platform/apis", headers=gateway.auth(created["token"])
    ) as r:
        assert r.status == 200
    await asyncio.sleep(1.5)
    code, out, _ = await run_cli("token", "list", "--team", "platform", env=cli_env)
    row = next(line for line in out.splitlines() if "ci-deploy" in line)
    assert "just now" in row

    code, out, _ = await run_cli("token", "get", created["id"], "--team", "platform", "--json", env=cli_env)
    assert code == 0 and json.loads(out)["id"] == created["id"]
    code, out, _ = await run_cli("token", "revoke", created["id"], "--team", "platform", env=cli_env)
    assert code == 0 and "has been revoked" in out
    code, out, _ = await run_cli("token", "list", "--team", "platform", "--json", env=cli_env)
    statuses = {t["name"]: t["status"] for t in json.loads(out)["tokens"]}
    assert statuses == {"ci-deploy": "revoked", "bot": "active"}


async def test_team_token_defaults_to_its_own_team(gateway: Gateway, cli_env: dict[str, str]) -> None:
    await run_cli("team", "create", "platform", "--permissions", "read:apis,admin:team", env=cli_env)
    code, out, _ = await run_cli(
        "token",
        "create",
        "--team",
        "platform",
        "--name",
        "ta",
        "--scopes",
        "admin:team,read:apis",
        "--json",
        env=cli_env,
    )
    team_env = dict(cli_env, TOKENWARD_TOKEN=json.loads(out)["token"])
    code, out, err = await run_cli(
        "token", "create", "--name", "ci", "--scopes", "read:apis", "--json", env=team_env
    )
    assert code == 0, err
    code, out, _ = await run_cli("whoami", "--json", env=team_env)
    assert json.loads(out)["team"] == "platform"


@pytest.mark.parametrize(
    "args, message",
    [
        (("token", "create", "--team", "platform", "--name", "x", "--scopes", "writ:specs"), "scopes[0]"),
        (("token", "revoke", "AAAAAAAAAAAA", "--team", "platform"), "404"),
        (("team", "get", "nope"), "404"),
        (("sa", "create", "x"), "--teams is required"),
        (("sa", "create", "Bad Name", "--team", "platform"), "name"),
        (("token", "update", "AAAAAAAAAAAA", "--team", "platform"), "nothing to update"),
        (("audit", "--since", "yesterday"), "since"),
        (
            (
                "token",
                "create",
                "--team",
                "platform",
                "--name",
                "x",
                "--scopes",
                "read:apis",
                "--constraint",
                "bad",
            ),
            "NAME=VALUE",
        ),
    ],
)
async def test_errors_are_one_line_and_nonzero(
    gateway: Gateway, cli_env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    await run_cli("team", "create", "platform", "--permissions", "read:apis", env=cli_env)
    code, _out, err = await run_cli(*args, env=cli_env)
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err


async def test_missing_token_and_unreachable_admin(tmp_path: Path) -> None:
    env = env_for_subprocess()
    env.pop("TOKENWARD_TOKEN", None)
    code, _, err = await run_cli("token", "list", env=env)
    assert code == 1 and "TOKENWARD_TOKEN" in err
    env["TOKENWARD_TOKEN"] = "tw_sat_x"
    env["TOKENWARD_ADMIN_URL"] = "http://127.0.0.1:9"
    code, _, err = await run_cli("token", "list", "--org", "a", "--team", "b", env=env)
    assert code == 1 and "cannot reach the admin API" in err and len(err.strip().splitlines()) == 1


async def test_bootstrap_on_the_embedded_store(tmp_path: Path, upstream: int) -> None:
    from tests.helpers.gateway import base_config

    config = base_config(upstream)
    config["data_dir"] = str(tmp_path / "data")
    path = tmp_path / "tokenward.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = await run_cli("admin", "bootstrap", "--config", str(path), "--org", "acme", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert set(first) >= {"id", "token"} and first["token"].startswith("tw_sat_" + first["id"])
    code, out, err = await run_cli("admin", "bootstrap", "--config", str(path), "--org", "acme")
    assert code == 0 and "Copy this token now" in out
    # the embedded store persisted both: serve on the same data dir and use the first token
    from tokenward.gateway.runtime import Runtime
    from tokenward.gateway.settings import load_settings

    runtime = await Runtime.open(load_settings(path))
    try:
        principal = await runtime.authenticator.authenticate(first["token"], "127.0.0.1")
        assert principal.token.org == "acme" and principal.team_permissions is None
        assert len(await runtime.store.list_token_ids("acme", None)) == 2
    finally:
        await runtime.close()


async def test_config_check_reports_problems(tmp_path: Path) -> None:
    code, out, _ = await run_cli("config", "check", "config/example.yaml")
    assert code == 0 and "ok" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "upstreams: {a: {url: 'http://x'}}\nroutes:\n  - {path: /x, upstream: a, scopes: [writ:x]}\n  - {path: /y, upstream: b, public: true}\n"
    )
    code, _, err = await run_cli("config", "check", str(bad))
    assert code == 1
    assert "routes[0].scopes[0]: 'writ:x' is not a scope" in err
    assert "routes[1].upstream: 'b' is not a defined upstream" in err


async def test_demo_prints_tokens_and_curl_lines(tmp_path: Path) -> None:
    from tokenward.gateway.embedded import free_port

    ports = [str(free_port()) for _ in range(3)]
    code, out, err = await run_cli(
        "demo",
        "--once",
        "--data-dir",
        str(tmp_path / "demo"),
        "--port",
        ports[0],
        "--admin-port",
        ports[1],
        "--upstream-port",
        ports[2],
        timeout=90,
    )
    assert code == 0, err
    assert "export TOKENWARD_TOKEN=tw_sat_" in out and "export READ_TOKEN=tw_sat_" in out
    assert out.count("curl -s") >= 5


def test_humanize_and_table() -> None:
    now = time.time()

    def iso(ago: float) -> str:
        from datetime import UTC, datetime

        return datetime.fromtimestamp(now - ago, UTC).isoformat()

    assert humanize_ago(None) == "never"
    assert humanize_ago(iso(5), now) == "just now"
    assert humanize_ago(iso(2 * 3600 + 5), now) == "2 hours ago"
    assert humanize_ago(iso(3 * 86400 + 5), now) == "3 days ago"
    assert humanize_ago(iso(65), now) == "1 minute ago"
    rendered = table(["A", "BB"], [["x", "y"], ["longer", "z"]])
    assert rendered.splitlines() == ["A        BB", "x        y", "longer   z"]


# -- token lifecycle, service accounts, audit and leaks ----------------------------------------
async def ok(*args: str, env: dict[str, str], stdin: str | None = None) -> str:
    """Run the CLI, require success, return stdout."""
    code, out, err = await run_cli(*args, env=env, stdin=stdin)
    assert code == 0, f"tokenward {' '.join(args)}: exit {code}: {err}"
    return out


async def refused(*args: str, env: dict[str, str]) -> str:
    """Run the CLI, require a non-zero exit with exactly one `error:` line; return that line."""
    code, out, err = await run_cli(*args, env=env)
    assert code != 0, out
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    return err.strip()


@pytest.fixture
async def platform(cli_env: dict[str, str]) -> dict[str, str]:
    """An org admin's environment with team `platform` (read:apis, admin:team) created."""
    await ok("team", "create", "platform", "--permissions", "read:apis,admin:team", env=cli_env)
    return cli_env


async def create(env: dict[str, str], name: str, *extra: str) -> dict[str, Any]:
    out = await ok(
        "token",
        "create",
        "--team",
        "platform",
        "--name",
        name,
        "--scopes",
        "read:apis",
        *extra,
        "--json",
        env=env,
    )
    created: dict[str, Any] = json.loads(out)
    return created


async def through(gateway: Gateway, token: str, method: str = "GET") -> int:
    async with gateway.session.request(method, gateway.url + APIS, headers=gateway.auth(token)) as r:
        return r.status


def shown_token(out: str) -> str:
    """The plaintext from human `create`/`rotate` output (its `Token:` line)."""
    return next(line.split()[-1] for line in out.splitlines() if line.strip().startswith("Token:"))


async def listed(env: dict[str, str], *filters: str) -> dict[str, dict[str, Any]]:
    out = await ok("token", "list", "--team", "platform", *filters, "--json", env=env)
    return {t["id"]: t for t in json.loads(out)["tokens"]}


async def test_service_account_commands(gateway: Gateway, platform: dict[str, str]) -> None:
    env = platform
    out = await ok(
        "sa", "create", "github-actions", "--team", "platform", "--description", "CI deploys", env=env
    )
    assert "github-actions" in out and "created" in out
    await ok("sa", "create", "cron", "--team", "platform", env=env)
    out = await ok("sa", "list", "--team", "platform", env=env)
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "DESCRIPTION", "ACTIVE", "TOKENS", "CREATED"]
    gh_row = next(line for line in lines if line.startswith("github-actions"))
    assert gh_row.split()[1:4] == ["CI", "deploys", "0"]
    cron_row = next(line for line in lines if line.startswith("cron"))
    assert cron_row.split()[1:3] == ["-", "0"]

    prod = await create(env, "prod", "--service-account", "github-actions")
    assert prod["service_account"] == "github-actions"
    out = await ok(
        "token",
        "create",
        "--team",
        "platform",
        "--name",
        "staging",
        "--scopes",
        "read:apis",
        "--service-account",
        "github-actions",
        env=env,
    )
    assert "Service account: github-actions" in out and "Copy this token now" in out
    await create(env, "unrelated")
    sas = {
        sa["name"]: sa
        for sa in json.loads(await ok("sa", "list", "--team", "platform", "--json", env=env))[
            "service_accounts"
        ]
    }
    assert sas["github-actions"]["active_tokens"] == 2 and sas["cron"]["active_tokens"] == 0
    mine = await listed(env, "--service-account", "github-actions")
    assert {t["name"] for t in mine.values()} == {"prod", "staging"}

    error = await refused("sa", "delete", "github-actions", "--team", "platform", env=env)
    assert "409" in error and "revoke them first" in error
    for token_id in mine:
        await ok("token", "revoke", token_id, "--team", "platform", env=env)
    out = await ok("sa", "delete", "github-actions", "--team", "platform", env=env)
    assert out.strip() == "✓ Service account github-actions deleted."
    assert "404" in await refused("sa", "delete", "github-actions", "--team", "platform", env=env)
    out = await ok("sa", "list", "--team", "platform", "--json", env=env)
    assert [sa["name"] for sa in json.loads(out)["service_accounts"]] == ["cron"]
    await ok("sa", "delete", "cron", "--team", "platform", env=env)
    assert (await ok("sa", "list", "--team", "platform", env=env)).strip() == "no service accounts"


async def test_service_accounts_default_to_the_callers_team(
    gateway: Gateway, platform: dict[str, str]
) -> None:
    reader = await create(platform, "reader")  # read:apis only: not an admin
    out = await ok(
        "token",
        "create",
        "--team",
        "platform",
        "--name",
        "ta",
        "--scopes",
        "admin:team",
        "--json",
        env=platform,
    )
    team_env = dict(platform, TOKENWARD_TOKEN=json.loads(out)["token"])
    await ok("sa", "create", "bot", env=team_env)
    out = await ok("sa", "list", "--json", env=team_env)
    assert [(sa["team"], sa["name"]) for sa in json.loads(out)["service_accounts"]] == [("platform", "bot")]
    # a non-admin token is refused in one line
    error = await refused("sa", "list", env=dict(platform, TOKENWARD_TOKEN=reader["token"]))
    assert "403" in error


async def test_rotate_revokes_now_or_after_a_grace_period(gateway: Gateway, platform: dict[str, str]) -> None:
    env = platform
    first = await create(env, "ci", "--description", "deploys")
    assert await through(gateway, first["token"]) == 200  # now cached by the gateway

    out = await ok("token", "rotate", first["id"], "--team", "platform", env=env)
    second = shown_token(out)
    assert out.count(second) == 1 and "Copy this token now" in out
    second_id = second.removeprefix("tw_sat_")[:12]
    assert f"✓ Token rotated: {second_id} replaces {first['id']}." in out
    assert "stopped working now" in out
    assert await through(gateway, first["token"]) == 401
    assert await through(gateway, second) == 200
    tokens = await listed(env)
    assert tokens[first["id"]]["status"] == "revoked"
    assert tokens[second_id]["name"] == "ci" and tokens[second_id]["description"] == "deploys"

    out = await ok(
        "token",
        "rotate",
        second_id,
        "--team",
        "platform",
        "--grace-period",
        "1h",
        "--expires-in",
        "7d",
        env=env,
    )
    third = shown_token(out)
    assert "keeps working until" in out and "about 1 hour" in out
    assert await through(gateway, second) == 200
    assert await through(gateway, third) == 200
    third_id = third.removeprefix("tw_sat_")[:12]
    tokens = await listed(env)
    assert tokens[third_id]["expires_at"] < tokens[second_id]["expires_at"]  # --expires-in 7d vs 90d
    # revoking the old token ends its grace period at once
    await ok("token", "revoke", second_id, "--team", "platform", env=env)
    assert await through(gateway, second) == 401
    assert await through(gateway, third) == 200

    error = await refused("token", "rotate", first["id"], "--team", "platform", env=env)
    assert "409" in error and "already rotated" in error
    assert "grace_period" in await refused(
        "token",
        "rotate",
        third_id,
        "--team",
        "platform",
        "--grace-period",
        "soon",
        env=env,
    )


async def test_restore_and_delete(gateway: Gateway, platform: dict[str, str]) -> None:
    env = platform
    token = await create(env, "ci")
    error = await refused("token", "delete", token["id"], "--team", "platform", env=env)
    assert "409" in error and "revoke it first" in error
    assert "409" in await refused("token", "restore", token["id"], "--team", "platform", env=env)

    await ok("token", "revoke", token["id"], "--team", "platform", env=env)
    assert await through(gateway, token["token"]) == 401
    out = await ok("token", "restore", token["id"], "--team", "platform", env=env)
    assert out.strip() == f"✓ Token 'ci' ({token['id']}) has been restored."
    assert await through(gateway, token["token"]) == 200
    assert (await listed(env))[token["id"]]["status"] == "active"

    await ok("token", "revoke", token["id"], "--team", "platform", env=env)
    out = await ok("token", "delete", token["id"], "--team", "platform", env=env)
    assert out.strip() == f"✓ Token {token['id']} deleted."
    assert token["id"] not in await listed(env)
    assert (await ok("token", "list", "--team", "platform", env=env)).strip() == "no tokens"
    assert "404" in await refused("token", "delete", token["id"], "--team", "platform", env=env)
    assert await through(gateway, token["token"]) == 401


async def test_list_filters(gateway: Gateway, platform: dict[str, str]) -> None:
    env = platform
    soon = await create(env, "soon", "--expires-in", "5d")
    later = await create(env, "later", "--expires-in", "30d")
    assert set(await listed(env, "--expiring-within", "10d")) == {soon["id"]}
    out = await ok("token", "list", "--team", "platform", "--expiring-within", "10d", env=env)
    assert "soon" in out and "later" not in out
    assert set(await listed(env, "--expiring-within", "31d")) == {soon["id"], later["id"]}

    await ok("token", "revoke", later["id"], "--team", "platform", env=env)
    assert set(await listed(env, "--status", "revoked")) == {later["id"]}
    assert set(await listed(env, "--status", "active")) == {soon["id"]}
    assert await listed(env, "--status", "expired") == {}
    assert "expiring_within" in await refused(
        "token", "list", "--team", "platform", "--expiring-within", "soon", env=env
    )
    code, _, err = await run_cli("token", "list", "--team", "platform", "--status", "bogus", env=env)
    assert code == 2 and "invalid choice" in err


async def test_update_renames(gateway: Gateway, platform: dict[str, str]) -> None:
    env = platform
    token = await create(env, "ci", "--description", "old")
    out = await ok("token", "update", token["id"], "--team", "platform", "--name", "ci-deploy", env=env)
    assert out.strip() == f"✓ Token {token['id']}: renamed 'ci' → 'ci-deploy'."
    out = await ok("token", "get", token["id"], "--team", "platform", "--json", env=env)
    assert json.loads(out)["name"] == "ci-deploy" and json.loads(out)["description"] == "old"
    out = await ok(
        "token", "update", token["id"], "--team", "platform", "--description", "new", "--json", env=env
    )
    assert json.loads(out)["description"] == "new" and json.loads(out)["name"] == "ci-deploy"
    assert await through(gateway, token["token"]) == 200  # renaming does not touch the secret
    assert "nothing to update" in await refused("token", "update", token["id"], "--team", "platform", env=env)
    assert "404" in await refused(
        "token", "update", "AAAAAAAAAAAA", "--team", "platform", "--name", "x", env=env
    )


async def _audit_until(env: dict[str, str], wanted: set[str], *args: str) -> list[dict[str, Any]]:
    """`audit --json` until the wanted actions have been flushed to the stream (~0.25 s)."""
    deadline = time.monotonic() + 10
    while True:
        events: list[dict[str, Any]] = json.loads(await ok("audit", "--json", *args, env=env))["events"]
        if wanted <= {e["action"] for e in events} or time.monotonic() > deadline:
            return events
        await asyncio.sleep(0.3)


async def test_audit(gateway: Gateway, platform: dict[str, str]) -> None:
    env = platform
    token = await create(env, "ci")
    assert await through(gateway, token["token"]) == 200
    assert await through(gateway, token["token"], "POST") == 403  # lacks write:apis
    # another org's activity never shows up
    await gateway.team("platform", ["read:apis"], org="globex")
    other, _ = await gateway.token("platform", ["read:apis"], org="globex")
    async with gateway.session.get(
        gateway.url + "/orgs/globex/teams/platform/apis", headers=gateway.auth(other)
    ):
        pass

    events = await _audit_until(env, {"token.created", "request.allowed", "request.denied"})
    actions = {e["action"] for e in events}
    assert {"team.created", "token.created", "request.allowed", "request.denied"} <= actions
    assert all("acme" in (e.get("org"), e.get("actor_org")) for e in events)
    created = next(e for e in events if e["action"] == "token.created")
    assert created["token_id"] == token["id"] and created["team"] == "platform"
    times = [e["time"] for e in events]
    assert times == sorted(times, reverse=True)  # newest first

    out = await ok("audit", "--action", "request.denied", env=env)
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "ACTION", "TOKEN", "TEAM", "STATUS", "STEP/REASON"]
    assert len(lines) == 2
    row = lines[1]
    assert "request.denied" in row and token["id"] in row and "403" in row
    assert "scope: token lacks required permission: write:apis" in row

    by_token = await _audit_until(env, set(), "--token-id", token["id"], "--since", "1h", "--limit", "2")
    assert len(by_token) == 2 and all(e["token_id"] == token["id"] for e in by_token)
    assert (
        await ok("audit", "--since", "2000-01-01T00:00:00Z", "--until", "2000-01-02T00:00:00Z", env=env)
    ).strip() == ("no events")
    assert "since" in await refused("audit", "--since", "yesterday", env=env)
    assert "limit" in await refused("audit", "--limit", "0", env=env)


async def test_leaks_report(gateway: Gateway, platform: dict[str, str]) -> None:
    from tokenward.gateway.tokens import generate

    env = platform
    leaked = await create(env, "leaky")
    assert await through(gateway, leaked["token"]) == 200
    stranger, parsed = generate("tw_sat")
    out = await ok("leaks", "report", leaked["token"], stranger, env=env)
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{leaked['display_prefix']}: revoked")
    assert lines[1].startswith(f"{parsed.prefix}_{parsed.key_id}: unknown")
    assert leaked["token"] not in out and stranger not in out
    assert await through(gateway, leaked["token"]) == 401
    assert (await listed(env))[leaked["id"]]["status"] == "revoked"
    # a leaked token cannot be restored
    assert "leaked" in await refused("token", "restore", leaked["id"], "--team", "platform", env=env)

    # from stdin, found in any text (e.g. a secret scanner's output), with --json
    out = await ok("leaks", "report", "-", "--json", env=env, stdin=f"{leaked['token']}\nnot-a-token\n\n")
    results = json.loads(out)["results"]
    assert [r["result"] for r in results] == ["already_revoked"] and json.loads(out)["found"] == 1
    assert "no tokens given" in await refused("leaks", "report", env=env)
