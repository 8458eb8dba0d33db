"""`tokenward token create --rate-limit/--max-uses/--refill` and `token get` showing them."""

from __future__ import annotations

import json

from tests.helpers.gateway import APIS, Gateway
from tests.helpers.process import env_for_subprocess, run_cli


async def test_token_create_with_limits_and_get_shows_them(gateway: Gateway) -> None:
    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"] = gateway.admin_url
    env["TOKENWARD_TOKEN"] = await gateway.org_admin()
    code, _, err = await run_cli("team", "create", "platform", "--permissions", "read:apis", env=env)
    assert code == 0, err
    code, out, err = await run_cli(
        "token", "create", "--team", "platform", "--name", "agent", "--scopes", "read:apis",
        "--rate-limit", "burst=2/1m", "--rate-limit", "daily=100/1d", "--max-uses", "5", "--refill", "1d:5",
        "--json", env=env,
    )  # fmt: skip
    assert code == 0, err
    created = json.loads(out)
    assert created["rate_limits"] == [
        {"name": "burst", "limit": 2, "per": "1m"},
        {"name": "daily", "limit": 100, "per": "1d"},
    ]
    assert created["max_uses"] == 5 and created["refill"] == {"every": "1d", "amount": 5} and created["remaining"] == 5
    async with gateway.session.get(gateway.url + APIS, headers=gateway.auth(created["token"])) as r:
        assert r.status == 200
    code, out, err = await run_cli("token", "get", created["id"], "--team", "platform", env=env)
    assert code == 0, err
    assert "burst 2/1m, daily 100/1d" in out
    assert "4 of 5 uses left (refilled to 5 every 1d)" in out

    code, out, err = await run_cli(
        "token", "create", "--team", "platform", "--name", "bad", "--scopes", "read:apis",
        "--rate-limit", "burst=lots", env=env,
    )  # fmt: skip
    assert code != 0 and err.startswith("error: ") and "NAME=LIMIT/PER" in err and len(err.strip().splitlines()) == 1


async def test_team_and_sa_set_rate_limits(gateway: Gateway) -> None:
    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"] = gateway.admin_url
    env["TOKENWARD_TOKEN"] = await gateway.org_admin()
    code, _, err = await run_cli("team", "create", "platform", "--permissions", "read:apis", env=env)
    assert code == 0, err
    code, out, err = await run_cli("team", "set-rate-limits", "platform", "--rate-limit", "team=100/1s", env=env)
    assert code == 0 and "team 100/1s" in out, err
    code, out, err = await run_cli("sa", "create", "bot", "--teams", "platform", "--json", env=env)
    assert code == 0, err
    code, out, err = await run_cli(
        "sa", "set-rate-limits", "bot", "--rate-limit", "bot=10/1s", "--rate-limit", "daily=500/1d", "--json", env=env
    )
    assert code == 0, err
    assert json.loads(out)["rate_limits"] == [
        {"name": "bot", "limit": 10, "per": "1s"},
        {"name": "daily", "limit": 500, "per": "1d"},
    ]
    code, out, err = await run_cli("team", "set-rate-limits", "platform", env=env)  # none: removed
    assert code == 0 and "(none)" in out, err
