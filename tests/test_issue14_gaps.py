"""Issue 14: what the audit of the finished issue still found, each fixed and kept fixed.

- README's examples after `./dev demo` work copy-pasted, as a user pastes them into a shell
  with the demo's export lines: the org-wide `admin bootstrap` line makes a token of the
  demo's store (the demo exports TOKENWARD_CONFIG), and the `--key-file` and `--file` examples
  make their files first (item 11).
- Lists take `expiring_within` as a bare number of days too, like `--expires-in` (item 5).
- `audit --since` explains every form it takes, durations too (item 5).
- The usage summary counts in the singular when there is one (item 4).
- A leak report of a token revoked for another reason says what it did (item 11).

Against the real store: the demo as `tokenward demo`, the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.gateway import ROOT, Gateway, admin
from tests.helpers.process import CLI, env_for_subprocess, run_cli
from tokenward.cli_usage import usage_report, usage_summary
from tokenward.gateway.embedded import free_ports

TOKENS = "/v1/orgs/acme/teams/platform/tokens"


@pytest.fixture
async def env(gateway: Gateway) -> dict[str, str]:
    """An org admin's CLI environment with team `platform`."""
    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"] = gateway.admin_url
    env["TOKENWARD_TOKEN"] = await gateway.org_admin()
    code, _, err = await run_cli("team", "create", "platform", "--permissions", "read:apis,admin:team", env=env)
    assert code == 0, err
    return env


async def create(env: dict[str, str], *args: str) -> dict[str, Any]:
    code, out, err = await run_cli("token", "create", "--team", "platform", "--scopes", "read:apis", *args, "--json", env=env)
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
    assert usage_report(one).splitlines()[0] == "Token ci (m7QMhlwE08sR), the last 1 day (since 2026-11-28, UTC)"
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
async def test_a_revoked_token_reported_as_leaked_is_said_to_be_final(gateway: Gateway, env: dict[str, str]) -> None:
    token = await create(env, "--name", "lost")
    code, _, err = await run_cli("token", "revoke", token["id"], "--reason", "rotated by hand", env=env)
    assert code == 0, err
    code, out, err = await run_cli("leaks", "report", "-", env=env, stdin=f"log: {token['token']}\n")
    assert code == 0, err
    assert f"{token['display_prefix']}: already_revoked (it was already revoked; now as leaked, so it can never be restored)" in out
    code, out, err = await run_cli("token", "get", token["id"], "--json", env=env)
    assert json.loads(out)["revoke_reason"] == "leaked"
    code, _, err = await run_cli("token", "restore", token["id"], env=env)
    assert code == 1 and len(err.splitlines()) == 1, err


