"""The `tokenward` CLI as a user runs it: real subprocesses against the real admin API."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from admin.cli import humanize_ago, table
from tests.conftest import ROOT, Gateway, env_for_subprocess

CLI = [sys.executable, "-c", "from admin.cli import main; main()"]


async def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        cwd=ROOT,
        env=env or env_for_subprocess(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


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
        "admin:team",
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
    from tests.conftest import base_config

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
    from gateway.app import Runtime
    from gateway.settings import load_settings

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
    from gateway.embedded import free_port

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
