"""Issue 14: what the audit of the finished issue still found, each fixed and kept fixed.

- README's examples after `./dev demo` work copy-pasted, as a user pastes them into a shell
  with the demo's export lines: the org-wide `admin bootstrap` line makes a token of the
  demo's store (the demo exports TOKENWARD_CONFIG), and the `--key-file` and `--file` examples
  make their files first (item 11).
- Lists take `expiring_within` as a bare number of days too, like `--expires-in` (item 5).
- `audit --since` explains every form it takes, durations too (item 5).
- The usage summary counts in the singular when there is one (item 4).
- A leak report of a token revoked for another reason says what it did (item 11).
- An imported test key shows its environment in `token list`'s PREFIX column, where a token
  of ours shows it in its prefix (items 6 and 7).

Against the real store: the demo as `tokenward demo`, the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.demo import running_demo
from tests.helpers.gateway import ROOT, Gateway, admin, base_config
from tests.helpers.process import env_for_subprocess, run_cli
from tokenward.cli_usage import usage_report, usage_summary

TOKENS = "/v1/orgs/acme/teams/platform/tokens"


@pytest.fixture
def config(upstream: int) -> dict[str, Any]:
    """The gateway's config: the test config, able to import keys."""
    cfg = base_config(upstream)
    cfg["tokens"]["legacy_lookup_key"] = "k" * 16 + "0123456789abcdef0123456789abcdef"
    return cfg


@pytest.fixture
async def env(gateway: Gateway) -> dict[str, str]:
    """An org admin's CLI environment with team `platform`."""
    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"] = gateway.admin_url
    env["TOKENWARD_TOKEN"] = await gateway.org_admin()
    code, _, err = await run_cli(
        "team", "create", "platform", "--permissions", "read:apis,admin:team", env=env
    )
    assert code == 0, err
    return env


async def create(env: dict[str, str], *args: str) -> dict[str, Any]:
    code, out, err = await run_cli(
        "token", "create", "--team", "platform", "--scopes", "read:apis", *args, "--json", env=env
    )
    assert code == 0, err
    return dict(json.loads(out))


# -- item 5: a bare number of days wherever a lifetime-sized duration is asked for ----------------
async def test_expiring_within_takes_a_bare_number_of_days(gateway: Gateway, env: dict[str, str]) -> None:
    soon = await create(env, "--name", "soon", "--expires-in", "5")
    await create(env, "--name", "later", "--expires-in", "60")
    by = env["TOKENWARD_TOKEN"]
    for query in ("expiring_within=10", "expiring_within=10d"):
        status, listed, _ = await admin(gateway, "GET", f"{TOKENS}?{query}", by)
        assert status == 200 and [t["id"] for t in listed["tokens"]] == [soon["id"]], (query, listed)
        status, listed, _ = await admin(gateway, "GET", f"/v1/orgs/acme/tokens?{query}", by)
        assert status == 200 and [t["id"] for t in listed["tokens"]] == [soon["id"]], (query, listed)
    code, out, err = await run_cli("token", "list", "--team", "platform", "--expiring-within", "10", env=env)
    assert code == 0 and "soon" in out and "later" not in out, err
    code, out, err = await run_cli("token", "list", "--expiring-within", "90", "--json", env=env)  # org-wide
    assert code == 0 and {t["name"] for t in json.loads(out)["tokens"]} >= {"soon", "later"}, err
    status, body, _ = await admin(gateway, "GET", f"{TOKENS}?expiring_within=soon", by)
    assert status == 400 and body["field"] == "expiring_within" and "number of days" in body["message"]


async def test_audit_since_names_the_durations_it_takes(gateway: Gateway, env: dict[str, str]) -> None:
    by = env["TOKENWARD_TOKEN"]
    status, body, _ = await admin(gateway, "GET", "/v1/audit?since=yesterday", by)
    assert status == 400 and body["field"] == "since", body
    assert "2027-01-01" in body["message"] and "'1h'" in body["message"], body
    status, body, _ = await admin(gateway, "GET", "/v1/audit?until=1", by)
    assert status == 400 and body["field"] == "until" and "how long ago" in body["message"], body
    code, _, err = await run_cli("audit", "--since", "soon", env=env)
    assert code == 1 and len(err.splitlines()) == 1 and "how long ago, e.g. '1h'" in err, err
    for since in ("1h", "2026-01-01", "2026-01-01T00:00:00Z"):
        assert (await admin(gateway, "GET", f"/v1/audit?since={since}", by))[0] == 200, since


# -- item 4: the usage summary reads as English ---------------------------------------------------
def test_usage_counts_in_the_singular() -> None:
    one = {"token_id": "m7QMhlwE08sR", "name": "ci", "days": 1, "since": "2026-11-28", "requests": 1,
           "allowed": 1, "refused": {}, "by_day": {"2026-11-28": 1}, "by_route": {}, "unused_scopes": []}  # fmt: skip
    assert usage_summary(one)[0] == "Usage (1 day): 1 request, 0 refused"
    assert (
        usage_report(one).splitlines()[0] == "Token ci (m7QMhlwE08sR), the last 1 day (since 2026-11-28, UTC)"
    )
    many = {**one, "days": 30, "requests": 2, "allowed": 1, "refused": {"status": 1}}
    assert usage_summary(many)[0] == "Usage (30 days): 2 requests, 1 refused (status: 1)"


async def test_token_get_shows_one_request_in_the_singular(gateway: Gateway, env: dict[str, str]) -> None:
    token = await create(env, "--name", "once")
    async with gateway.session.get(
        f"{gateway.url}/orgs/acme/teams/platform/apis", headers={"Authorization": f"Bearer {token['token']}"}
    ) as response:
        assert response.status == 200
    await gateway.runtime.audit.flush()  # what this process counted is in the store now
    code, out, err = await run_cli("token", "get", token["id"], env=env)
    assert code == 0 and "Usage (30 days): 1 request, 0 refused" in out, (out, err)


# -- item 11: a leak report says what it did -----------------------------------------------------
async def test_a_revoked_token_reported_as_leaked_is_said_to_be_final(
    gateway: Gateway, env: dict[str, str]
) -> None:
    token = await create(env, "--name", "lost")
    code, _, err = await run_cli("token", "revoke", token["id"], "--reason", "rotated by hand", env=env)
    assert code == 0, err
    code, out, err = await run_cli("leaks", "report", "-", env=env, stdin=f"log: {token['token']}\n")
    assert code == 0, err
    assert (
        f"{token['display_prefix']}: already_revoked (it was already revoked; now as leaked, so it can never be restored)"
        in out
    )
    code, out, err = await run_cli("token", "get", token["id"], "--json", env=env)
    assert json.loads(out)["revoke_reason"] == "leaked"
    code, _, err = await run_cli("token", "restore", token["id"], env=env)
    assert code == 1 and len(err.splitlines()) == 1, err


# -- items 6 and 7: an imported key's environment in lists --------------------------------------
async def test_an_imported_test_key_shows_its_environment_in_lists(env: dict[str, str]) -> None:
    args = ("token", "import", "--team", "platform", "--scopes", "read:apis", "--json")
    code, out, err = await run_cli(
        *args, "--name", "old-test", env=env, stdin="sk_test_9fK2x7Qm4pL8vN3cR6tY1wB5\n"
    )
    assert code == 0, err
    test_key = json.loads(out)
    code, out, err = await run_cli(
        *args, "--name", "old-live", env=env, stdin="sk_live_4eC39HqLyjWDarjtT1zdp7dc\n"
    )
    assert code == 0, err
    live_key = json.loads(out)
    assert (test_key["environment"], live_key["environment"]) == ("test", "live")
    code, out, err = await run_cli("token", "list", "--team", "platform", env=env)
    assert code == 0, err
    rows = {line.split()[1]: line for line in out.splitlines()[1:]}
    assert f"legacy_{test_key['id']} (test)" in rows["old-test"] and "active LEGACY" in rows["old-test"]
    assert f"legacy_{live_key['id']} " in rows["old-live"] and "(test)" not in rows["old-live"]
    code, out, err = await run_cli("token", "list", "--environment", "test", env=env)  # org-wide, filtered
    assert (
        code == 0 and "old-test" in out and "old-live" not in out and f"legacy_{test_key['id']} (test)" in out
    )


# -- item 11: README's examples on the demo, pasted into a shell ----------------------------------
@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """`tokenward demo` running: the environment its printed export lines make."""
    async with running_demo(tmp_path / "demo") as printed:
        env = env_for_subprocess()
        exports = re.findall(r"^  export (\w+)=(\S+)$", printed, re.M)
        for name, value in exports:
            env[name] = value.replace("$PATH", env.get("PATH", ""))
        assert {"PATH", "TOKENWARD_ADMIN_URL", "TOKENWARD_TOKEN", "TOKENWARD_CONFIG"} <= dict(exports).keys()
        yield env


def readme_lines(starts: str, count: int = 1) -> str:
    """`count` lines of README's sh blocks from the one starting with `starts`, continuations
    joined, as a shell script (comments kept: the shell drops them)."""
    text = (ROOT / "README.md").read_text()
    lines = [
        line
        for block in re.findall(r"```sh\n(.*?)```", text, re.S)
        for line in block.replace("\\\n", " ").splitlines()
    ]
    at = next(i for i, line in enumerate(lines) if line.startswith(starts))
    return "\n".join(lines[at : at + count]) + "\n"


async def shell(script: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """`script` pasted into bash (`set -e`: the first failing line ends it)."""
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-ec", script],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


async def test_readme_org_wide_bootstrap_works_on_the_demo(demo: dict[str, str], tmp_path: Path) -> None:
    """README's org-wide block begins with `admin bootstrap --org acme --expires-in 30d`: after
    the demo's export lines it makes a token of the demo's org, which the demo's admin API knows
    (with `--config config/example.yaml` it went into another store, config/.tokenward)."""
    script = readme_lines("tokenward admin bootstrap --org acme --expires-in 30d")
    assert "--config" not in script.split("#")[0]
    code, out, err = await shell(script, demo, tmp_path)
    # the demo's own org admin is active: bootstrap says so, and how to end the ones not needed
    assert code == 0 and err.splitlines() == [
        "note: org 'acme' has 1 other active org admin token: `tokenward token list` shows them"
        " (TEAM (org)); `tokenward token revoke ID` ends one"
    ], (out, err)
    key_id = re.search(r"ID:\s+(\w{12})", out)
    assert key_id is not None, out
    code, out, err = await run_cli("token", "get", key_id[1], "--json", env=demo)  # by the demo's org admin
    assert code == 0, err
    view = json.loads(out)
    assert view["team"] is None and view["scopes"] == ["admin:org"] and view["status"] == "active"
    assert abs(datetime.fromisoformat(view["expires_at"]).timestamp() - (time.time() + 30 * 86400)) < 600


async def test_readme_file_examples_work_pasted(demo: dict[str, str], tmp_path: Path) -> None:
    """The `--key-file old-key.txt` and `--file build.log` examples make their files first."""
    code, out, err = await shell(readme_lines("printf '%s\\n'", 2), demo, tmp_path)
    assert code == 0 and "Key imported" in out, (out, err)
    assert (tmp_path / "old-key.txt").read_text().strip() not in out + err  # never printed back
    code, out, err = await shell(readme_lines('echo "deploy: TOKEN=', 2), demo, tmp_path)
    assert code == 0, (out, err)
    assert out.strip() == "found 1 token-shaped string, 0 valid: nothing reported"


# -- Done means (c): the demo's walkthrough, run as printed --------------------------------------
@pytest.fixture
async def printed(tmp_path: Path) -> AsyncIterator[str]:
    """What a running `tokenward demo` printed."""
    async with running_demo(tmp_path / "demo") as text:
        yield text


def walkthrough(printed: str) -> list[str]:
    """The export lines, then every command line from `try:` up to the agent recipe, in the
    order printed, without their comments (what a user pastes, one after the other)."""
    exports = re.findall(r"^  (export \w+=\S+)$", printed[: printed.index("try:")], re.M)
    block = printed[printed.index("try:") : printed.index("agent recipe:")]
    lines = [
        line.strip()
        for line in block.splitlines()
        if line.startswith("  ") and not line.strip().startswith("(")
    ]
    return exports + [re.sub(r"\s+#[^'\"]*$", "", line) for line in lines]


async def test_the_demo_walkthrough_works_as_printed(printed: str) -> None:
    """A live and a test token at the gateway, the org-wide list, the attributed refusal and the
    usage report, metadata and an imported key: each printed line run in a shell, in order."""
    commands = walkthrough(printed)
    assert any(c.startswith("tokenward token list") and "--team" not in c for c in commands)  # org-wide
    assert any(c.startswith("tokenward token usage") for c in commands)
    script = "\n".join(f'{command}\necho "--- $? {index}"' for index, command in enumerate(commands))
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=env_for_subprocess(),
    )
    assert done.returncode == 0 and done.stderr == "", (done.stdout, done.stderr)
    outputs = dict.fromkeys(commands, "")
    rest = done.stdout
    for index, command in enumerate(commands):
        out, marker, rest = rest.partition(f"--- 0 {index}\n")
        assert marker, (command, out, rest)  # every line exited 0
        outputs[command] = out

    def out(start: str) -> str:
        return next(o for c, o in outputs.items() if c.startswith(start))

    read_id = re.search(r"/tokens/(\w{12})/revoke", printed)
    assert read_id is not None
    live = [o for c, o in outputs.items() if c.startswith("curl") and "$READ_TOKEN" in c]
    assert '"X-Tokenward-Token-Id", "' + read_id[1] in live[0]  # 200, forwarded
    assert '"step":"scope"' in live[1] and '"step":"org"' in live[2]
    test = [o for c, o in outputs.items() if c.startswith("curl") and "$TEST_TOKEN" in c]
    assert '"X-Tokenward-Token-Name", "dev-sandbox"' in test[0] and '"step":"environment"' in test[1]
    assert "dev-sandbox" in out("tokenward token list --team platform --environment test")
    org_wide = outputs["tokenward token list"]
    assert org_wide.split()[:3] == ["ID", "NAME", "TEAM"] and "(org)" in org_wide and "platform" in org_wide
    assert re.search(r"Status:\s+revoked", out("tokenward token get " + read_id[1]))
    usage = out("tokenward token usage")
    assert (
        usage.startswith(f"Token ci-readonly ({read_id[1]}), the last 30 days") and "Unused scopes:" in usage
    )
    assert "notes" in out("tokenward token list --team platform --metadata")
    imported = [o for c, o in outputs.items() if "sk_live_demo_" in c]
    assert "Key imported" in imported[0] and '"X-Tokenward-Token-Name", "old-ci"' in imported[1]
    assert "sk_live_demo_" not in imported[0] + imported[2] and "revoked" in imported[2]
    # the refused requests above are audited with the token's id (written within a flush)
    env = env_for_subprocess()
    for name, value in re.findall(r"^  export (\w+)=(\S+)$", printed, re.M):
        env[name] = value.replace("$PATH", env.get("PATH", ""))
    for _ in range(60):
        code, audited, err = await run_cli(
            "audit", "--token-id", read_id[1], "--action", "request.denied", env=env
        )
        assert code == 0, err
        if read_id[1] in audited:
            break
        await asyncio.sleep(0.5)
    assert re.search(rf"request\.denied\s+{read_id[1]}\s+platform\s+403", audited), audited


# -- item 1: a bootstrap token that never expires says how it ends -------------------------------
async def test_a_bootstrap_token_that_never_expires_says_how_to_end_it(
    gateway: Gateway, env: dict[str, str], config: dict[str, Any], redis_url: str, tmp_path: Path
) -> None:
    """Bootstrapped on the gateway's own store, its line names the revoke that ends it, and that
    revoke, run as printed by an org admin, works (the token is then refused)."""
    path = tmp_path / "tokenward.yaml"
    path.write_text(yaml.safe_dump({**config, "redis": {"url": redis_url}}))
    code, out, err = await run_cli("admin", "bootstrap", "--config", str(path), "--org", "acme", env=env)
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.strip().startswith("Expires:"))
    key_id = re.search(r"ID:\s+(\w{12})", out)
    token = re.search(r"Token:\s+(\S+)", out)
    assert key_id is not None and token is not None
    assert (
        line.split(":", 1)[1].strip()
        == f"never (revoke it when done: tokenward token revoke {key_id[1]}; or --expires-in 30d)"
    )
    assert (await admin(gateway, "GET", "/v1/whoami", token[1]))[0] == 200
    code, _, err = await run_cli(
        *shlex.split(line.split("revoke it when done: ")[1].split(";")[0])[1:], env=env
    )
    assert code == 0, err
    assert (await admin(gateway, "GET", "/v1/whoami", token[1]))[0] == 401
    code, out, err = await run_cli(
        "admin", "bootstrap", "--config", str(path), "--org", "acme", "--expires-in", "2d", env=env
    )
    assert code == 0 and "revoke it when done" not in out, err
    assert "has 1 other active org admin token:" in err  # env's org admin; the revoked one is not counted
    code, out, err = await run_cli("admin", "bootstrap", "--config", str(path), "--org", "fresh", env=env)
    assert code == 0 and err == "", err  # the first of its org: nothing to say


# -- item 6: README's live-only example is a config tokenward takes, and explains ----------------
def test_readme_live_only_config_is_valid(upstream: int) -> None:
    from tokenward.gateway.settings import settings_from_dict

    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "environments: [live]" in b)
    snippet = yaml.safe_load(block)
    config = base_config(upstream)
    config["routes"] = snippet["routes"] + [
        r for r in config["routes"] if r["path"] != snippet["routes"][0]["path"]
    ]
    config["upstreams"].update(snippet["upstreams"])
    settings = settings_from_dict(config, "README")
    assert settings.upstreams["payments"].environments == {"live"}
    assert any(r.environments == {"live"} for r in settings.routes)


async def test_readme_explains_the_live_only_refusal_on_the_demo(
    demo: dict[str, str], tmp_path: Path
) -> None:
    code, out, err = await shell(
        readme_lines("tokenward config explain POST /orgs/acme/teams/platform/apis/pets"), demo, tmp_path
    )
    assert code == 1 and "decision: 403 at step environment: this route accepts live tokens only" in out, (
        out,
        err,
    )
