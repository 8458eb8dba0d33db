"""Free-form metadata on tokens (issue 14 item 8): set at create and by PATCH, bounded with
explanations, shown in views, searched in lists with the other filters and pagination, kept
by rotation, never sent upstream; and the CLI's --metadata and --metadata-json."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers.gateway import APIS, TOKENS, Gateway, admin, issue
from tests.helpers.process import env_for_subprocess, run_cli


async def test_metadata_is_stored_shown_replaced_and_kept(gateway: Gateway, org_admin: str) -> None:
    notes = {"owner": "alice", "ticket": "OPS-12", "tier": 2, "paid": True, "tags": ["ci", "eu"], "x": None}
    created = await issue(gateway, org_admin, metadata=notes)
    assert created["metadata"] == notes
    status, got, _ = await admin(gateway, "GET", f"{TOKENS}/{created['id']}", org_admin)
    assert status == 200 and got["metadata"] == notes

    # a name change keeps it; a metadata change replaces the whole object; {} clears it
    status, renamed, _ = await admin(gateway, "PATCH", f"{TOKENS}/{created['id']}", org_admin, {"name": "ci2"})
    assert status == 200 and renamed["metadata"] == notes
    status, changed, _ = await admin(
        gateway, "PATCH", f"{TOKENS}/{created['id']}", org_admin, {"metadata": {"owner": "bob"}}
    )
    assert status == 200 and changed["metadata"] == {"owner": "bob"} and changed["name"] == "ci2"

    # rotation keeps it
    status, rotated, _ = await admin(gateway, "POST", f"{TOKENS}/{created['id']}/rotate", org_admin, {})
    assert status == 201 and rotated["metadata"] == {"owner": "bob"}
    status, cleared, _ = await admin(gateway, "PATCH", f"{TOKENS}/{rotated['id']}", org_admin, {"metadata": {}})
    assert status == 200 and cleared["metadata"] == {}

    # a token without metadata shows an empty object
    plain = await issue(gateway, org_admin, name="plain")
    assert plain["metadata"] == {}


async def test_metadata_never_reaches_the_upstream(gateway: Gateway, org_admin: str) -> None:
    created = await issue(gateway, org_admin, metadata={"owner": "alice-secret-owner"})
    async with gateway.session.get(gateway.url + APIS, headers=gateway.auth(created["token"])) as r:
        assert r.status == 200
        seen = json.dumps(await r.json())
    assert "alice-secret-owner" not in seen and "owner" not in seen.lower().replace("x-tokenward", "")


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        ({f"k{i}": i for i in range(33)}, "at most 32 entries"),
        ({"blob": "x" * 5000}, "bytes of JSON; at most 32 keys and 4096 bytes"),
        ({"has space": 1}, "'has space' is not a metadata key"),
        ({"": 1}, "is not a metadata key"),
        ({"k" * 65: 1}, "is not a metadata key"),
        ({"deep": {"a": {"b": {"c": {"d": 1}}}}}, "nested too deep"),
        ({"bidi": "abc\u202edef"}, "control or invisible character"),
        ({"nl": "line\nbreak"}, "control or invisible character"),
        ([1, 2], "expected an object"),
    ],
)
async def test_bad_metadata_is_explained(gateway: Gateway, org_admin: str, metadata: Any, says: str) -> None:
    status, data, _ = await admin(
        gateway, "POST", TOKENS, org_admin, {"name": "ci", "scopes": ["read:apis"], "metadata": metadata}
    )
    assert status == 400, data
    assert says in data["message"] and data["field"].startswith("metadata"), data
    created = await issue(gateway, org_admin, name="ok")
    status, data, _ = await admin(gateway, "PATCH", f"{TOKENS}/{created['id']}", org_admin, {"metadata": metadata})
    assert status == 400 and says in data["message"], data


async def test_lists_are_searched_by_metadata(gateway: Gateway, org_admin: str) -> None:
    ids: dict[str, str] = {}
    for i in range(12):
        owner = "alice" if i % 3 == 0 else "bob"
        body = await issue(gateway, org_admin, name=f"t{i}", metadata={"owner": owner, "tier": i % 2, "n": str(i)})
        ids[f"t{i}"] = body["id"]

    async def names(query: str, limit: int = 100) -> list[str]:
        out, cursor = [], None
        while True:
            path = f"{TOKENS}?{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            status, page, _ = await admin(gateway, "GET", path, org_admin)
            assert status == 200, page
            out += [t["name"] for t in page["tokens"]]
            cursor = page["next"]
            if not cursor:
                return out

    assert await names("metadata=owner=alice") == ["t0", "t3", "t6", "t9"]
    assert await names("metadata=owner=alice", limit=1) == ["t0", "t3", "t6", "t9"]  # page by page
    assert await names("metadata=owner=bob&metadata=tier=0") == ["t2", "t4", "t8", "t10"]
    assert await names("metadata=tier=1&metadata=owner=alice") == ["t3", "t9"]
    assert await names("metadata=n=11") == ["t11"]
    assert await names("metadata=owner=carol") == []
    assert await names("metadata=nothere=x") == []

    # with the status filter
    status, _, _ = await admin(gateway, "POST", f"{TOKENS}/{ids['t3']}/revoke", org_admin)
    assert status == 200
    assert await names("metadata=owner=alice&status=active") == ["t0", "t6", "t9"]
    assert await names("status=revoked&metadata=owner=alice") == ["t3"]

    for bad in ("metadata=owner", "metadata==x", "metadata=has%20space=x"):
        status, data, _ = await admin(gateway, "GET", f"{TOKENS}?{bad}", org_admin)
        assert status == 400 and data["field"] == "metadata" and "KEY=VALUE" in data["message"], (bad, data)


async def test_cli_metadata_options(gateway: Gateway, org_admin: str) -> None:
    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"] = gateway.admin_url
    env["TOKENWARD_TOKEN"] = org_admin
    base = ("--team", "platform")
    code, out, err = await run_cli(
        "token", "create", *base, "--name", "ci", "--scopes", "read:apis", "--metadata", "owner=alice",
        "--metadata", "ticket=OPS-1", "--metadata-json", '{"tier": 2, "owner": "overridden"}', "--json", env=env,
    )  # fmt: skip
    assert code == 0, err
    created = json.loads(out)
    assert created["metadata"] == {"tier": 2, "owner": "alice", "ticket": "OPS-1"}

    code, out, err = await run_cli("token", "get", created["id"], *base, env=env)
    assert code == 0, err
    assert "Metadata:" in out and "owner: alice" in out and "tier: 2" in out

    code, out, err = await run_cli("token", "update", created["id"], *base, "--metadata", "owner=bob", env=env)
    assert code == 0, err and "owner: bob" in out
    code, out, _ = await run_cli("token", "get", created["id"], *base, "--json", env=env)
    assert json.loads(out)["metadata"] == {"owner": "bob"}

    code, out, err = await run_cli("token", "create", *base, "--name", "other", "--scopes", "read:apis", env=env)
    assert code == 0, err
    code, out, err = await run_cli("token", "list", *base, "--metadata", "owner=bob", "--json", env=env)
    assert code == 0, err
    assert [t["id"] for t in json.loads(out)["tokens"]] == [created["id"]]

    code, _, err = await run_cli("token", "update", created["id"], *base, "--metadata", "novalue", env=env)
    assert code == 1 and "expected KEY=VALUE" in err
    code, _, err = await run_cli("token", "update", created["id"], *base, "--metadata-json", "[1]", env=env)
    assert code == 1 and "expected a JSON object" in err
    code, _, err = await run_cli("token", "update", created["id"], *base, "--metadata", "a b=1", env=env)
    assert code == 1 and "is not a metadata key" in err


async def test_gateway_processes_do_not_keep_metadata_in_memory(gateway: Gateway, org_admin: str) -> None:
    """Metadata (up to 4 KiB a token) is never read on the request path: the verification
    cache, held by every gateway process for up to 100 000 tokens, keeps records without it."""
    created = await issue(gateway, org_admin, metadata={"blob": "x" * 3000})
    async with gateway.session.get(gateway.url + APIS, headers=gateway.auth(created["token"])) as r:
        assert r.status == 200
    cached = gateway.runtime.cache.records.get(created["id"])
    assert cached is not None and cached.metadata == {}
    status, got, _ = await admin(gateway, "GET", f"{TOKENS}/{created['id']}", org_admin)
    assert status == 200 and got["metadata"] == {"blob": "x" * 3000}  # the admin API reads the store


@pytest.mark.parametrize(
    ("number", "ok"),
    [
        (123456789012345678901234567890, False),  # read as a float by our JSON parser: refused
        (18446744073709551615, False),  # 2**64 - 1: an int, beyond what JSON readers hold
        (2**53, False),
        (-(2**53), False),
        (1.5e300, False),
        (2**53 - 1, True),
        (-(2**53 - 1), True),
        (0.25, True),
    ],
)
async def test_metadata_numbers_are_held_exactly_or_refused(
    gateway: Gateway, org_admin: str, number: float, ok: bool
) -> None:
    """Never silently rounded: a number every JSON reader holds exactly is kept as it is,
    anything beyond ±(2**53 - 1) is refused with what to do (at create and by PATCH)."""
    body = {"name": "ci", "scopes": ["read:apis"], "metadata": {"account": number}}
    status, data, _ = await admin(gateway, "POST", TOKENS, org_admin, body)
    if ok:
        assert status == 201 and data["metadata"] == {"account": number}, data
        return
    assert status == 400 and data["field"] == "metadata.account", data
    assert "9007199254740991" in data["message"] and "write it as a string" in data["message"]
    created = await issue(gateway, org_admin, name="patched")
    status, data, _ = await admin(
        gateway, "PATCH", f"{TOKENS}/{created['id']}", org_admin, {"metadata": {"n": [1, number]}}
    )
    assert status == 400 and data["field"] == "metadata.n[1]", data
