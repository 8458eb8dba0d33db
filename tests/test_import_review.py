"""Imported keys after the issue 14 review (tests/test_import.py has the feature itself): a key
too easy to guess is refused; an imported key never administers (no admin-plane scope, and the
admin API never looks one up); lookups that find nothing are budgeted, so garbage cannot make
a store read per request; the environment is settable (and a test key's label says test); a
leaked imported key can be reported and is revoked for good, and no leak result echoes a
character of a credential that is not ours; a duplicate import says the same whatever the org;
constraints and client networks can be given at import."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from tests.helpers.gateway import (
    APIS,
    TOKENS,
    Gateway,
    admin,
    base_config,
    org_admin_with_team,
    scrape,
    value,
)
from tests.helpers.process import env_for_subprocess, run_cli
from tokenward.gateway.legacy_keys import MIN_BITS, NOT_FOR_ADMIN, conventional_environment, strength_bits
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.throttle import IMPORT_BUDGET, LookupBudget

LOOKUP_KEY = "k" * 16 + "0123456789abcdef0123456789abcdef"
KEY = "sk_live_51HxYzAbCdEfGhIjKlMnOpQrStUv"
TEST_KEY = "sk_test_4eC39HqLyjWDarjtT1zdp7dc"
IMPORT = TOKENS + "/import"


@pytest.fixture
def config(upstream: int) -> dict[str, Any]:
    cfg = base_config(upstream)
    cfg["tokens"]["legacy_lookup_key"] = LOOKUP_KEY
    return cfg


async def _get(gw: Gateway, token: str, path: str = APIS) -> tuple[int, Any]:
    async with gw.session.get(gw.url + path, headers=gw.auth(token)) as r:
        return r.status, await r.json() if r.content_type == "application/json" else await r.read()


async def _import(
    gw: Gateway, admin_token: str, key: str = KEY, path: str = IMPORT, **body: Any
) -> tuple[int, Any]:
    payload = {"name": "old-ci", "key": key, "scopes": ["read:apis"], **body}
    status, data, _ = await admin(gw, "POST", path, admin_token, payload)
    return status, data


async def _gets(gw: Gateway) -> int:
    stats = await gw.runtime.store.client.info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


# -- 1a: keys too easy to guess --------------------------------------------------------------------
@pytest.mark.parametrize(
    "key",
    [
        "aaaaaaaaaaaaaaaa",
        "password12345678",
        "abcdefghijklmnopqrstuvwxyz",
        "sk_live_abababababababababababab",
        "sk_live_0123456789abcdef",
        "Kong-key-7f3a9c2e4b1d8f6a",  # 16 hex digits: 64 bits at the very best
    ],
)
async def test_keys_too_easy_to_guess_are_refused_with_the_estimate(gateway: Gateway, key: str) -> None:
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    status, data = await _import(gateway, org_admin, key=key)
    assert status == 400 and data["field"] == "key", data
    assert "too easy to guess" in data["message"] and f"at least {MIN_BITS}" in data["message"]
    assert key not in data["message"] and key[-8:] not in data["message"]
    assert (await _get(gateway, key))[0] == 401


def test_the_estimate_is_conservative() -> None:
    assert strength_bits("aaaaaaaaaaaaaaaa") == 0
    assert strength_bits("password12345678") < 40
    assert strength_bits("sk_live_") == 0  # a label alone is no secret
    # a run or a repeated sequence adds nothing, wherever it is
    assert strength_bits("x7Qm" + "abcdefghijkl") == 6 * 4.0  # 16 distinct: 4 bits, 6 counted
    assert strength_bits("9fK2" * 6) < 40
    # what real keys look like passes: Stripe's, a 32-hex Kong key, 24 hex digits
    for key in (KEY, TEST_KEY, "Kong-key-6f1c2a9e4b7d3f8a0c5e1b9d2a7f4c8e", "3f9a1c7e5b2d8f4a6c0e9b1d"):
        assert strength_bits(key) >= MIN_BITS, key
    assert conventional_environment(TEST_KEY) == "test" and conventional_environment(KEY) == "live"
    assert conventional_environment("rk-test-9fK2x7Qm4pL8vN3cR6tY1wB5") == "test"
    assert conventional_environment("latest_9fK2x7Qm4pL8vN3cR6tY1wB5") == "live"


# -- 1b: imported keys never administer ------------------------------------------------------------
@pytest.mark.parametrize("scope", ["admin:team", "read:team", "admin:org", "write:org"])
async def test_an_import_never_grants_an_admin_plane_power(gateway: Gateway, scope: str) -> None:
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    status, data = await _import(gateway, org_admin, scopes=["read:apis", scope])
    assert status == 400 and data["field"] == "scopes", data
    assert "imported keys are for the gateway's routes" in data["message"]
    assert "tokenward token create" in data["message"]
    status, listed, _ = await admin(gateway, "GET", TOKENS, org_admin)
    assert listed["tokens"] == []


async def test_a_team_admin_cannot_import_a_weak_key_as_an_admin_credential(gateway: Gateway) -> None:
    """The review's attack: a team admin imports `aaaaaaaaaaaaaaaa` with admin:team, then uses
    it on the admin API. Both halves are refused now."""
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    status, team_admin, _ = await admin(
        gateway, "POST", TOKENS, org_admin, {"name": "ta", "scopes": ["read:apis", "admin:team"]}
    )
    assert status == 201
    for key in ("aaaaaaaaaaaaaaaa", "password12345678"):
        status, data = await _import(gateway, team_admin["token"], key=key, scopes=["admin:team"])
        assert status == 400 and data["field"] in ("key", "scopes"), data
        assert key not in data["message"]
    status, data = await _import(gateway, team_admin["token"], key=KEY, scopes=["admin:team"])
    assert status == 400 and "admin-plane power" in data["message"]


async def test_the_admin_api_never_takes_an_imported_key(gateway: Gateway) -> None:
    """Even a working imported key is refused by the admin API (401, with what to do), before
    any lookup: the admin API costs no store read for a credential that is not ours."""
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    status, imported = await _import(gateway, org_admin)
    assert status == 201
    assert (await _get(gateway, KEY))[0] == 200  # a good credential at the gateway
    # a record that says admin:team (one imported before this rule) proves nothing either
    store = gateway.runtime.store
    record = await store.get_token(imported["id"])
    assert record is not None
    widened = record.to_json()
    widened["scopes"] = ["read:apis", "admin:team"]
    await store.client.hset(Keys.token(record.id), "data", orjson.dumps(widened))
    gets = await _gets(gateway)
    for path in ("/v1/whoami", TOKENS):
        status, data, _ = await admin(gateway, "GET", path, KEY)
        assert status == 401 and data["step"] == "credential", data
        assert NOT_FOR_ADMIN in data["message"] and KEY not in data["message"]
    garbage = [
        await admin(gateway, "GET", "/v1/whoami", f"sk_live_guess_{i:04d}_9fK2x7Qm4pL8vN3") for i in range(20)
    ]
    assert {status for status, _, _ in garbage} == {401}
    assert await _gets(gateway) == gets  # no lookup at all


# -- 1c: lookups that find nothing are budgeted ----------------------------------------------------
async def test_a_flood_of_garbage_is_refused_without_store_reads(gateway: Gateway) -> None:
    """Each garbage credential used to cost a store read; now a client's misses drain its
    bucket (here 5, not refilled: deterministic) and are then refused unread, counted in
    tokenward_legacy_lookups_throttled_total. A key proven before the flood keeps working (the
    verification cache answers it); one not yet seen waits for the bucket like the garbage."""
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    assert (await _import(gateway, org_admin))[0] == 201
    assert (await _import(gateway, org_admin, key=TEST_KEY, name="second"))[0] == 201
    assert (await _get(gateway, KEY))[0] == 200  # proven: cached
    auth = gateway.runtime.authenticator
    auth.lookups = LookupBudget(per_client=(5, 0.0), overall=(1000, 0.0))
    before_metric = value(await scrape(gateway), "tokenward_legacy_lookups_throttled_total")
    gets = await _gets(gateway)
    for i in range(40):
        status, body = await _get(gateway, f"sk_live_guess_{i:04d}_9fK2x7Qm4pL8vN3")
        assert status == 401 and body["step"] == "token" and body["message"] == "invalid token"
    assert await _gets(gateway) - gets == 5  # the bucket, then nothing
    assert auth.lookups.refused == 35
    assert value(await scrape(gateway), "tokenward_legacy_lookups_throttled_total") - before_metric == 35
    assert (await _get(gateway, KEY))[0] == 200  # proven before: no lookup needed
    assert (await _get(gateway, TEST_KEY))[0] == 401  # never seen: waits for the budget
    auth.lookups = LookupBudget()  # (a refill) it was never cached as a failure
    assert (await _get(gateway, TEST_KEY))[0] == 200


async def test_the_overall_budget_bounds_a_flood_from_many_clients(gateway: Gateway) -> None:
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    assert (await _import(gateway, org_admin))[0] == 201
    auth = gateway.runtime.authenticator
    auth.lookups = LookupBudget(per_client=(1000, 0.0), overall=(3, 0.0))
    gets = await _gets(gateway)
    for i in range(10):
        assert (await _get(gateway, f"sk_live_many_{i:04d}_9fK2x7Qm4pL8vN3"))[0] == 401
    assert await _gets(gateway) - gets == 3


def test_the_lookup_budget_charges_misses_per_client_and_overall() -> None:
    budget = LookupBudget(per_client=(2, 0.0), overall=(5, 0.0))
    assert budget.take("10.0.0.1") and budget.take("10.0.0.1")
    assert not budget.take("10.0.0.1")  # its own bucket is empty
    budget.found("10.0.0.1")  # a hit gives its unit back
    assert budget.take("10.0.0.1")
    # an IPv6 client is one client per /64
    assert budget.take("2001:db8::1") and budget.take("2001:db8::2")
    assert not budget.take("2001:db8::3")
    assert budget.take("10.0.0.2")  # 5 taken in all (one was given back)
    assert not budget.take("10.0.0.3")  # everyone's bucket is empty
    assert budget.refused == 3


# -- 2: the environment ----------------------------------------------------------------------------
async def test_the_environment_of_an_imported_key(start_gateway: Any, config: dict[str, Any]) -> None:
    config["routes"][0]["environments"] = ["live"]  # the apis route: live tokens only
    gateway = await start_gateway(config)
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    status, labelled = await _import(gateway, org_admin, key=TEST_KEY)
    assert status == 201 and labelled["environment"] == "test", labelled
    status, body = await _get(gateway, TEST_KEY)
    assert status == 403 and body["step"] == "environment", body

    status, live = await _import(gateway, org_admin, key=KEY, name="live")
    assert status == 201 and live["environment"] == "live"
    assert (await _get(gateway, KEY))[0] == 200

    plain = "Kong-key-6f1c2a9e4b7d3f8a0c5e1b9d2a7f4c8e"
    status, asked = await _import(gateway, org_admin, key=plain, name="asked", environment="test")
    assert status == 201 and asked["environment"] == "test"
    assert (await _get(gateway, plain))[0] == 403
    status, data = await _import(
        gateway, org_admin, key="rk_test_9fK2x7Qm4pL8vN3cR6tY1wB5", environment="prod"
    )
    assert status == 400 and data["field"] == "environment"
    status, data = await _import(
        gateway, org_admin, key="rk_test_9fK2x7Qm4pL8vN3cR6tY1wB5", environment="live"
    )
    assert status == 201 and data["environment"] == "live"  # asked for: the label does not decide
    status, listed, _ = await admin(gateway, "GET", TOKENS + "?environment=test", org_admin)
    assert sorted(t["name"] for t in listed["tokens"]) == ["asked", "old-ci"]


# -- 3: leak reports -------------------------------------------------------------------------------
async def test_a_leaked_imported_key_is_reported_and_revoked_for_good(gateway: Gateway) -> None:
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    status, imported = await _import(gateway, org_admin)
    assert status == 201
    other = "some-other-systems-secret-9fK2x7Qm4pL8"
    status, body, _ = await admin(gateway, "POST", "/v1/leaks", org_admin, {"tokens": [KEY, other, "hello"]})
    assert status == 200, body
    assert body["results"] == [
        {"token": f"legacy_{imported['id']}", "result": "revoked"},
        {"token": f"(not a token: {len(other)} characters)", "result": "not_a_token"},
        {"token": "(not a token: 5 characters)", "result": "not_a_token"},
    ]
    text = str(body)
    assert all(piece not in text for piece in (KEY[:4], KEY[8:14], other[:4], "hel"))
    status, refused = await _get(gateway, KEY)
    assert status == 401 and refused["message"] == "token revoked"
    status, got, _ = await admin(gateway, "GET", f"{TOKENS}/{imported['id']}", org_admin)
    assert got["revoke_reason"] == "leaked"
    status, data, _ = await admin(gateway, "POST", f"{TOKENS}/{imported['id']}/restore", org_admin)
    assert status == 409 and "leaked" in data["message"]
    status, body, _ = await admin(gateway, "POST", "/v1/leaks", org_admin, {"tokens": [KEY]})
    assert body["results"] == [{"token": f"legacy_{imported['id']}", "result": "already_revoked"}]


async def test_leak_reports_of_imported_keys_are_budgeted(gateway: Gateway) -> None:
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    assert (await _import(gateway, org_admin))[0] == 201
    gateway.runtime.authenticator.lookups = LookupBudget(per_client=(2, 0.0), overall=(1000, 0.0))
    guesses = [f"sk_live_guess_{i:04d}_9fK2x7Qm4pL8vN3" for i in range(2)]
    status, body, headers = await admin(gateway, "POST", "/v1/leaks", org_admin, {"tokens": [*guesses, KEY]})
    assert status == 200
    assert [r["result"] for r in body["results"]] == ["not_a_token", "not_a_token", "throttled"]
    assert headers["Retry-After"] == "1"
    gateway.runtime.authenticator.lookups = LookupBudget()
    assert (await _get(gateway, KEY))[0] == 200  # not revoked: report it again later


# -- 4: duplicates, constraints ----------------------------------------------------------------------
async def test_a_duplicate_import_says_the_same_in_every_org(gateway: Gateway) -> None:
    acme = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    status, imported = await _import(gateway, acme)
    assert status == 201
    await gateway.team("platform", ["read:apis", "admin:team"], org="globex")
    globex = await gateway.org_admin("globex")
    same_org = await _import(gateway, acme, name="again")
    other_org = await _import(gateway, globex, path="/v1/orgs/globex/teams/platform/tokens/import")
    assert same_org[0] == other_org[0] == 409
    assert same_org[1]["message"] == other_org[1]["message"]
    assert imported["id"] not in other_org[1]["message"] and KEY not in other_org[1]["message"]


async def test_constraints_and_client_networks_at_import(gateway: Gateway) -> None:
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    status, pinned_admin, _ = await admin(
        gateway, "POST", TOKENS, org_admin,
        {"name": "pets-admin", "scopes": ["read:apis", "admin:team"], "constraints": {"api": "pets"}},
    )  # fmt: skip
    assert status == 201
    status, data = await _import(gateway, pinned_admin["token"])
    assert status == 403 and "add api=pets" in data["message"]
    status, data = await _import(gateway, pinned_admin["token"], constraints={"api": "pets"})
    assert status == 201 and data["constraints"] == {"api": "pets"}, data

    status, fenced = await _import(
        gateway, org_admin, key=TEST_KEY, name="fenced", allowed_cidrs=["10.0.0.0/8"]
    )
    assert status == 201 and fenced["allowed_cidrs"] == ["10.0.0.0/8"]
    status, body = await _get(gateway, TEST_KEY)
    assert status == 401 and body["message"] == "client address not allowed for this token"


async def test_the_cli_imports_with_an_environment_and_constraints(gateway: Gateway) -> None:
    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"] = gateway.admin_url
    env["TOKENWARD_TOKEN"] = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    code, out, err = await run_cli(
        "token", "import", "--team", "platform", "--name", "labelled", "--scopes", "read:apis", "--json",
        env=env, stdin=TEST_KEY + "\n",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["environment"] == "test" and TEST_KEY not in out + err
    code, out, err = await run_cli(
        "token", "import", "--team", "platform", "--name", "pinned", "--scopes", "read:apis",
        "--environment", "test", "--constraint", "api=pets", "--allow-cidr", "127.0.0.0/8",
        env=env, stdin=KEY + "\n",
    )  # fmt: skip
    assert code == 0, err
    assert "Environment: test" in " ".join(out.split()) and KEY not in out + err
    code, out, err = await run_cli(
        "token", "import", "--team", "platform", "--name", "weak", "--scopes", "read:apis",
        env=env, stdin="password12345678\n",
    )  # fmt: skip
    assert code == 1 and "too easy to guess" in err and "password12345678" not in err
    code, out, err = await run_cli(
        "token", "import", "--team", "platform", "--name", "boss", "--scopes", "admin:team",
        env=env, stdin="Kong-key-6f1c2a9e4b7d3f8a0c5e1b9d2a7f4c8e\n",
    )  # fmt: skip
    assert code == 1 and "tokenward token create" in err
    code, out, err = await run_cli("leaks", "report", KEY, env=env)
    assert code == 0, err
    assert "legacy_" in out and "revoked" in out and KEY not in out + err


# -- the second review: imports are budgeted; a cross-org leak report names no id ----------------
async def test_imports_are_budgeted_per_calling_token(gateway: Gateway) -> None:
    """A 409 says a key is held, in any org: imports are charged to the calling token, so they
    cannot be a guessing oracle (IMPORT_BUDGET: a burst of 10, then one every 5 s)."""
    (burst, _), (everyone, _) = IMPORT_BUDGET
    assert burst <= 10 and everyone <= 100
    gateway.runtime.authenticator.imports = LookupBudget(per_client=(burst, 0.0), overall=(everyone, 0.0))
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    assert (await _import(gateway, org_admin))[0] == 201
    statuses = [(await _import(gateway, org_admin, name=f"guess{i}"))[0] for i in range(int(burst) + 2)]
    assert statuses == [409] * (int(burst) - 1) + [429] * 3, statuses
    status, body = await _import(gateway, org_admin, name="again")
    assert status == 429 and body["error"] == "rate_limited" and KEY not in str(body)
    other = await gateway.org_admin("acme")  # another calling token has its own bucket
    assert (await _import(gateway, other, name="other"))[0] == 409


async def test_a_cross_org_leak_report_of_an_imported_key_names_no_id(gateway: Gateway) -> None:
    acme = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    status, imported = await _import(gateway, acme)
    assert status == 201
    globex = await gateway.org_admin("globex")
    status, body, _ = await admin(gateway, "POST", "/v1/leaks", globex, {"tokens": [KEY]})
    assert status == 200 and body["results"] == [{"token": "(an imported key of another org)", "result": "revoked"}]
    assert imported["id"] not in str(body)
    assert (await _get(gateway, KEY))[0] == 401
