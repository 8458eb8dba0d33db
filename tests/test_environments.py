"""Live and test tokens (issue 14, item 6), end to end on the real gateway and store.

A token's environment (`live`, the default, or `test`) is fixed at issuance, shown in its
prefix (`tokens.prefix` / `tokens.test_prefix`), returned in views, listed and filtered; a
route or an upstream with `environments: [live]` refuses test tokens with 403 at step
`environment` (audited, shown by `config explain`); a test token under the live prefix is an
unknown token.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.helpers.gateway import APIS, TEAMS, TOKENS, Gateway, LogReader, admin
from tests.helpers.process import run_cli
from tokenward.gateway.records import TokenRecord
from tokenward.gateway.settings import ConfigError, settings_from_dict
from tokenward.gateway.tokens import BODY_LEN, checksum

SPECS = "/orgs/acme/teams/platform/apis/pets/specs"  # GET: read:specs


def reprefix(token: str, prefix: str) -> str:
    head = f"{prefix}_{token[-BODY_LEN:-6]}"
    return head + checksum(head)


def live_only(config: dict[str, Any]) -> dict[str, Any]:
    """The tests' config with GET …/apis accepting live tokens only."""
    config = copy.deepcopy(config)
    config["routes"][0]["environments"] = ["live"]
    config["trusted_proxies"] = ["127.0.0.1/32"]  # forward-auth's X-Original-URI
    return config


@pytest.fixture
async def gw(start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]) -> Gateway:
    return await start_gateway(live_only(config))


@pytest.fixture
async def org(gw: Gateway) -> str:
    token = await gw.org_admin()
    body = {"name": "platform", "permissions": ["read:apis", "read:specs"]}
    status, data, _ = await admin(gw, "POST", TEAMS, token, body)
    assert status == 201, data
    return token


async def create(gw: Gateway, org: str, **body: Any) -> dict[str, Any]:
    status, data, _ = await admin(gw, "POST", TOKENS, org, {"name": "t", "scopes": ["read:apis", "read:specs"], **body})
    assert status == 201, data
    return dict(data)


async def call(gw: Gateway, path: str, token: str, base: str | None = None, **headers: str) -> tuple[int, dict[str, Any]]:
    async with gw.session.get((base or gw.url) + path, headers={**gw.auth(token), **headers}) as r:
        return r.status, await r.json() if r.content_type == "application/json" else {}


async def test_a_test_token_shows_its_environment_in_its_prefix_and_views(gw: Gateway, org: str) -> None:
    live = await create(gw, org, name="prod")
    test = await create(gw, org, name="dev", environment="test")
    assert live["environment"] == "live" and live["token"].startswith("tw_sat_")
    assert live["display_prefix"] == f"tw_sat_{live['id']}"
    assert test["environment"] == "test" and test["token"].startswith("tw_test_")
    assert test["display_prefix"] == f"tw_test_{test['id']}"
    stored = await gw.runtime.store.get_token(test["id"])
    assert stored is not None and stored.environment == "test" and stored.prefix == "tw_test"
    status, view, _ = await admin(gw, "GET", f"{TOKENS}/{test['id']}", org)
    assert status == 200 and view["environment"] == "test" and view["display_prefix"].startswith("tw_test_")
    status, whoami, _ = await admin(gw, "GET", "/v1/whoami", test["token"])
    assert status == 200 and whoami["environment"] == "test"
    # both work where every environment is accepted
    assert (await call(gw, SPECS, live["token"]))[0] == 200
    assert (await call(gw, SPECS, test["token"]))[0] == 200


async def test_lists_filter_on_the_environment(gw: Gateway, org: str) -> None:
    ids = {env: [(await create(gw, org, environment=env))["id"] for _ in range(2)] for env in ("live", "test")}
    for env in ("live", "test"):
        status, data, _ = await admin(gw, "GET", f"{TOKENS}?environment={env}", org)
        assert status == 200 and sorted(t["id"] for t in data["tokens"]) == sorted(ids[env]), data
        assert {t["environment"] for t in data["tokens"]} == {env}
    status, data, _ = await admin(gw, "GET", TOKENS, org)
    assert len(data["tokens"]) == 4
    status, data, _ = await admin(gw, "GET", f"{TOKENS}?environment=prod", org)
    assert status == 400 and data["field"] == "environment" and "expected live or test" in data["message"]


async def test_a_live_only_route_refuses_test_tokens(gw: Gateway, org: str, logs: LogReader) -> None:
    live = await create(gw, org)
    test = await create(gw, org, environment="test")
    assert (await call(gw, APIS, live["token"]))[0] == 200
    status, body = await call(gw, APIS, test["token"])
    assert (status, body["error"], body["step"]) == (403, "forbidden", "environment"), body
    assert body["message"] == "this route accepts live tokens only; this is a test token"
    (denied,) = logs.events("request.denied")
    assert denied["step"] == "environment" and denied["token_id"] == test["id"] and denied["status"] == 403
    # forward-auth decides the same way
    status, body = await call(gw, "/_tokenward/verify", test["token"], **{"X-Original-URI": APIS})
    assert (status, body["step"]) == (403, "environment")


async def test_a_test_token_cannot_be_relabelled_live(gw: Gateway, org: str) -> None:
    test = await create(gw, org, environment="test")
    live = await create(gw, org)
    for token, other in ((test["token"], "tw_sat"), (live["token"], "tw_test")):
        for base in (gw.url, gw.admin_url):
            path = APIS if base == gw.url else "/v1/whoami"
            status, body = await call(gw, path, reprefix(token, other), base)
            assert (status, body["step"], body["message"]) == (401, "token", "invalid token"), (other, base)
    assert (await call(gw, SPECS, test["token"]))[0] == 200  # the real one is unaffected


async def test_an_upstream_can_accept_live_tokens_only(
    start_gateway: Callable[..., Awaitable[Gateway]], config: dict[str, Any]
) -> None:
    config = copy.deepcopy(config)
    config["upstreams"]["registry"]["environments"] = ["live"]
    gw = await start_gateway(config)
    await gw.team("platform", ["read:apis", "read:specs"])
    live, _ = await gw.token("platform", ["read:specs"])
    test, _ = await gw.token("platform", ["read:specs"], environment="test")
    assert test.startswith("tw_test_")
    assert (await call(gw, SPECS, live))[0] == 200
    status, body = await call(gw, SPECS, test)
    assert (status, body["step"]) == (403, "environment")
    assert all(r.environments == frozenset({"live"}) for r in gw.runtime.settings.routes if not r.public)


async def test_rotation_keeps_the_environment(gw: Gateway, org: str) -> None:
    test = await create(gw, org, environment="test")
    status, rotated, _ = await admin(gw, "POST", f"{TOKENS}/{test['id']}/rotate", org, {})
    assert status == 201, rotated
    assert rotated["environment"] == "test" and rotated["token"].startswith("tw_test_")
    assert (await call(gw, SPECS, rotated["token"]))[0] == 200


def test_records_from_before_environments_are_live() -> None:
    record = TokenRecord(
        id="A" * 12, prefix="tw_sat", org="acme", team="platform", name="old", description="",
        scopes=(), secret_hash="x", created_at=0.0, created_by="test",
    )  # fmt: skip
    data = record.to_json()
    del data["environment"]
    assert TokenRecord.from_json(orjson.loads(orjson.dumps(data))).environment == "live"


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        (lambda c: c["routes"][0].update(environments=["prod"]), "routes[0].environments[0]", "'prod' is not an environment: expected live or test"),
        (lambda c: c["routes"][0].update(environments=[]), "routes[0].environments", "e.g. [live]"),
        (lambda c: c["routes"][0].update(environments="live"), "routes[0].environments", "e.g. [live]"),
        (lambda c: c["upstreams"]["registry"].update(environments=["staging"]), "upstreams.registry.environments[0]", "expected live or test"),
        (lambda c: c["routes"][-1].update(environments=["live"]), "routes[5].environments", "a public route takes no token"),
        (
            lambda c: (c["routes"][0].update(environments=["test"]), c["upstreams"]["registry"].update(environments=["live"])),
            "routes[0].environments",
            "no environment is accepted by both the route and upstream registry",
        ),
        (lambda c: c["tokens"].update(test_prefix="tw_sat"), "tokens.test_prefix", "must differ from tokens.prefix"),
        (lambda c: c["tokens"].update(test_prefix="TW-test"), "tokens.test_prefix", "is not a token prefix"),
    ],
)  # fmt: skip
def test_bad_environment_config_is_located(
    config: dict[str, Any], change: Callable[[dict[str, Any]], Any], where: str, message: str
) -> None:
    raw = copy.deepcopy(config)
    assert raw["routes"][5].get("public"), raw["routes"][5]
    change(raw)
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw)
    assert any(p.startswith(f"{where}: ") and message in p for p in info.value.problems), info.value.problems


async def test_config_explain_and_the_cli(
    gw: Gateway, org: str, config: dict[str, Any], tmp_path: Path, redis_url: str
) -> None:
    path = tmp_path / "tokenward.yaml"
    path.write_text(yaml.safe_dump({**live_only(config), "redis": {"url": redis_url}}))
    env = {"TOKENWARD_ADMIN_URL": gw.admin_url, "TOKENWARD_TOKEN": org}
    team = ("--org", "acme", "--team", "platform")
    code, out, err = await run_cli(
        "token", "create", *team, "--name", "dev", "--scopes", "read:apis", "--environment", "test", "--json", env=env
    )
    assert code == 0, err
    test = json.loads(out)
    assert test["environment"] == "test" and test["token"].startswith("tw_test_")
    code, out, err = await run_cli("token", "create", *team, "--name", "dev2", "--scopes", "read:apis", env=env)
    assert code == 0 and "Environment" in out and "live" in out, out
    code, out, err = await run_cli("token", "list", *team, "--environment", "test", "--json", env=env)
    assert code == 0, err
    assert [t["id"] for t in json.loads(out)["tokens"]] == [test["id"]]
    code, out, err = await run_cli("config", "explain", "GET", APIS, "--config", str(path), env=env)
    assert code == 0 and "environments: live tokens only (step environment)" in out, out + err
    code, out, err = await run_cli("config", "explain", "GET", APIS, "--config", str(path), "--token", test["token"])
    assert code == 1 and "decision: 403 at step environment: this route accepts live tokens only" in out, out + err
    assert "environment=test" not in out  # refused before the token line


async def test_the_demo_prints_a_live_and_a_test_token(tmp_path: Path) -> None:
    from tokenward.gateway.embedded import free_port

    ports = [str(free_port()) for _ in range(3)]
    args = ("--port", ports[0], "--admin-port", ports[1], "--upstream-port", ports[2])
    code, out, err = await run_cli("demo", "--once", "--data-dir", str(tmp_path / "demo"), *args, timeout=120)
    assert code == 0, err
    assert "export READ_TOKEN=tw_sat_" in out and "export TEST_TOKEN=tw_test_" in out, out
    assert "403 environment" in out and "--environment test" in out


async def test_the_demo_routes_publish_with_live_tokens_only(gw: Gateway, org: str) -> None:
    """The tests' routes are the demo's: POST …/specs (write:specs) takes live tokens only."""
    status, data, _ = await admin(gw, "PUT", f"{TEAMS}/platform/permissions", org, {"permissions": ["write:specs"]})
    assert status == 200, data
    live = await create(gw, org, scopes=["write:specs"])
    test = await create(gw, org, scopes=["write:specs"], environment="test")
    async with gw.session.post(gw.url + SPECS, headers=gw.auth(live["token"])) as r:
        assert r.status == 200
    async with gw.session.post(gw.url + SPECS, headers=gw.auth(test["token"])) as r:
        assert (r.status, (await r.json())["step"]) == (403, "environment")
