"""Keys imported from an old system (issue 14 item 7): imported through the admin API and the
CLI, verified by the real gateway as tokens of ours are, refused like unknown tokens when
wrong, revoked, rotated into a token of ours, never imported twice, and never shown back:
not in a response, a log line, an audit event, an error message or the store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.gateway import APIS, TOKENS, Gateway, LogReader, admin, base_config, org_admin_with_team
from tests.helpers.process import env_for_subprocess, run_cli
from tokenward.gateway.throttle import LookupBudget
from tokenward.gateway.tokens import generate

LOOKUP_KEY = "k" * 16 + "0123456789abcdef0123456789abcdef"
OLD_KEY = "sk_live_51HxYzAbCdEfGhIjKlMnOpQrStUv"  # what the old system handed out
IMPORT = TOKENS + "/import"


@pytest.fixture
def config(upstream: int) -> dict[str, Any]:
    cfg = base_config(upstream)
    cfg["tokens"]["legacy_lookup_key"] = LOOKUP_KEY
    return cfg


async def _get(gw: Gateway, token: str) -> tuple[int, dict[str, Any], Any]:
    async with gw.session.get(gw.url + APIS, headers=gw.auth(token)) as r:
        body = await r.json() if r.content_type == "application/json" else await r.read()
        return r.status, dict(r.headers), body


async def _import(gw: Gateway, admin_token: str, key: str = OLD_KEY, **body: Any) -> tuple[int, Any, Any]:
    return await admin(gw, "POST", IMPORT, admin_token, {"name": "old-ci", "key": key, "scopes": ["read:apis"], **body})


async def _store_text(gw: Gateway) -> bytes:
    """Every key name and value in the store, as one blob."""
    client = gw.runtime.store.client
    out = []
    async for key in client.scan_iter(count=1000):
        kind = (await client.type(key)).decode()
        out.append(key)
        if kind == "string":
            out.append(await client.get(key) or b"")
        elif kind == "hash":
            for field, value in (await client.hgetall(key)).items():
                out += [field, value]
        elif kind == "set":
            out += list(await client.smembers(key))
        elif kind == "zset":
            out += list(await client.zrange(key, 0, -1))
        elif kind == "stream":
            for _, fields in await client.xrange(key):
                out += [v for pair in fields.items() for v in pair]
    return b"\n".join(out)


async def test_an_imported_key_works_at_the_gateway_and_is_never_shown(gateway: Gateway) -> None:
    logs = LogReader()
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    status, _, unknown_before = await _get(gateway, OLD_KEY)
    assert status == 401  # a client still sending it before the import

    status, data, headers = await _import(gateway, org_admin, expires_in="30d", metadata={"from": "old-gw"})
    assert status == 201, data
    assert headers["Cache-Control"] == "no-store"
    assert headers["Location"] == f"{TOKENS}/{data['id']}"
    assert data["legacy"] is True and data["display_prefix"] == f"legacy_{data['id']}"
    assert data["name"] == "old-ci" and data["scopes"] == ["read:apis"] and data["status"] == "active"
    assert data["metadata"] == {"from": "old-gw"} and "token" not in data

    # the gateway accepts it at once (its earlier refusal is forgotten), as that token
    status, headers, body = await _get(gateway, OLD_KEY)
    assert status == 200, body
    assert headers.get("X-Tokenward-Token-Id") is None  # (identity goes upstream, not back)
    upstream_saw = dict(body["headers"])
    assert upstream_saw["X-Tokenward-Token-Id"] == data["id"]
    assert upstream_saw["X-Tokenward-Team"] == "platform"

    # a wrong key is refused exactly as an unknown token of ours is
    wrong_status, _, wrong = await _get(gateway, OLD_KEY[:-1] + "X")
    unknown_status, _, unknown = await _get(gateway, "tw_sat_" + "A" * 50)  # (bad checksum: format step)
    assert wrong_status == 401
    native = await _native_unknown(gateway)
    assert {k: v for k, v in wrong.items() if k != "request_id"} == native
    assert unknown_status == 401 and unknown["step"] == "credential"

    # listed with the marker; the key appears nowhere
    status, listed, _ = await admin(gateway, "GET", TOKENS, org_admin)
    assert [t["legacy"] for t in listed["tokens"]] == [True]
    assert OLD_KEY.encode() not in await _store_text(gateway)
    assert OLD_KEY.encode() not in logs.raw()
    status, audit, _ = await admin(gateway, "GET", "/v1/audit", org_admin)
    assert OLD_KEY not in json.dumps(audit)
    assert any(e["action"] == "token.imported" and e.get("token_id") == data["id"] for e in audit["events"])
    assert unknown_before["error"] == "invalid_token"


async def _native_unknown(gateway: Gateway) -> dict[str, Any]:
    """The refusal of a well-formed token of ours whose key id is unknown."""
    plaintext, _ = generate("tw_sat")
    status, _, body = await _get(gateway, plaintext)
    assert status == 401
    return {k: v for k, v in body.items() if k != "request_id"}


@pytest.mark.also_on_cluster
async def test_revoke_duplicate_rotate_and_delete(gateway: Gateway) -> None:
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    status, data, _ = await _import(gateway, org_admin)
    assert status == 201
    key_id = data["id"]

    status, again, _ = await _import(gateway, org_admin, name="twice")
    assert status == 409 and "imported already" in again["message"] and OLD_KEY not in again["message"]

    # revoked: refused as any revoked token is
    status, _, _ = await admin(gateway, "POST", f"{TOKENS}/{key_id}/revoke", org_admin, {"reason": "migrating"})
    assert status == 200
    status, _, body = await _get(gateway, OLD_KEY)
    assert status == 401 and body["message"] == "token revoked"
    status, _, _ = await admin(gateway, "POST", f"{TOKENS}/{key_id}/restore", org_admin)
    assert status == 200
    assert (await _get(gateway, OLD_KEY))[0] == 200

    # rotation retires it: the replacement is a token of ours, the old key stops
    status, rotated, _ = await admin(gateway, "POST", f"{TOKENS}/{key_id}/rotate", org_admin, {})
    assert status == 201, rotated
    assert rotated["legacy"] is False and rotated["token"].startswith("tw_sat_")
    assert rotated["display_prefix"].startswith("tw_sat_")
    assert (await _get(gateway, rotated["token"]))[0] == 200
    status, _, body = await _get(gateway, OLD_KEY)
    assert status == 401 and body["message"] == "token revoked"

    # deleted: the key can be imported again (its lookup entry went with it)
    status, _, _ = await admin(gateway, "DELETE", f"{TOKENS}/{key_id}", org_admin)
    assert status == 204
    assert (await _get(gateway, OLD_KEY))[0] == 401
    status, fresh, _ = await _import(gateway, org_admin, name="back")
    assert status == 201 and fresh["id"] != key_id
    assert (await _get(gateway, OLD_KEY))[0] == 200


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("short-key", "9 characters; an imported key has 16 to 256"),
        ("x" * 300, "300 characters"),
        ("sk_live_with a space inside", "only visible ASCII"),
        ("sk_live_ünïcödé_characters", "only visible ASCII"),
        ("sk_live_0123456789abcdef\n", "trailing newline"),
        ("tw_sat_0123456789abcdefghijklmnop", "starts with tw_sat_"),
    ],
)
async def test_keys_that_cannot_be_imported_are_explained(gateway: Gateway, key: str, says: str) -> None:
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    status, data, _ = await _import(gateway, org_admin, key=key)
    assert status == 400 and data["field"] == "key", data
    assert says in data["message"]
    assert key.strip() not in data["message"]


async def test_import_needs_the_servers_lookup_key(start_gateway: Any, upstream: int) -> None:
    gw = await start_gateway(base_config(upstream))
    org_admin = await org_admin_with_team(gw, ["read:apis", "admin:team"])
    status, data, _ = await _import(gw, org_admin)
    assert status == 400 and "tokens.legacy_lookup_key" in data["message"]


async def test_garbage_costs_no_store_lookup_and_unknown_keys_no_argon2(gateway: Gateway) -> None:
    """Before any import, a credential that is not ours is refused without a store read per
    request; after one, an unknown key costs one lookup and never an argon2 verification."""
    client = gateway.runtime.store.client

    async def calls(command: str) -> int:
        stats = await client.info("commandstats")
        return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))

    async def garbage(tag: str, count: int) -> None:
        for i in range(count):
            status, _, body = await _get(gateway, f"sk_live_{tag}_{i:04d}_garbage_key_text")
            assert status == 401 and body["step"] == "token"

    await garbage("warm", 1)  # reads the "any imported keys?" flag once
    exists, gets = await calls("exists"), await calls("get")
    await garbage("a", 30)
    assert await calls("exists") == exists and await calls("get") == gets

    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    assert (await _import(gateway, org_admin))[0] == 201
    verifications = gateway.runtime.authenticator.argon2_verifications
    await garbage("b", 30)
    assert gateway.runtime.authenticator.argon2_verifications == verifications
    await garbage("b", 30)  # the same again: refused from the negative cache


async def test_cli_import_reads_the_key_from_stdin_or_a_file(gateway: Gateway, tmp_path: Path) -> None:
    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"] = gateway.admin_url
    env["TOKENWARD_TOKEN"] = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    code, out, err = await run_cli(
        "token", "import", "--team", "platform", "--name", "from-stdin", "--scopes", "read:apis",
        env=env, stdin=OLD_KEY + "\n",
    )  # fmt: skip
    assert code == 0, err
    assert OLD_KEY not in out + err and "legacy_" in out
    assert (await _get(gateway, OLD_KEY))[0] == 200

    second = "Kong-key-6f1c2a9e4b7d3f8a0c5e1b9d2a7f4c8e"
    path = tmp_path / "key.txt"
    path.write_text(second + "\n")
    code, out, err = await run_cli(
        "token", "import", "--team", "platform", "--name", "from-file", "--scopes", "read:apis",
        "--key-file", str(path), "--json", env=env,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["legacy"] is True and second not in out
    assert (await _get(gateway, second))[0] == 200

    code, out, err = await run_cli(
        "token", "import", "--team", "platform", "--name", "dup", "--scopes", "read:apis", "--key-file", str(path),
        env=env,
    )  # fmt: skip
    assert code == 1 and "imported already" in err and second not in err

    code, out, _ = await run_cli("token", "list", "--team", "platform", env=env)
    rows = [line for line in out.splitlines() if "from-" in line]
    assert len(rows) == 2 and all("LEGACY" in row for row in rows)
    assert OLD_KEY not in out and second not in out


async def test_concurrent_imports_of_one_key_create_one_token(gateway: Gateway) -> None:
    """Each key is imported once however the requests race: over 10 trials of 3 concurrent
    imports, exactly one 201 and two 409s each time, and one record per key."""
    org_admin = await org_admin_with_team(gateway, ["read:apis", "admin:team"])
    gateway.runtime.authenticator.imports = LookupBudget(per_client=(30, 0.0), overall=(30, 0.0))  # 30 imports
    for trial in range(10):
        key = f"sk_race_{trial:02d}_9fK2x7Qm4pL8vN3cR6tY"
        results = await asyncio.gather(*(_import(gateway, org_admin, key=key, name=f"r{i}") for i in range(3)))
        assert sorted(status for status, _, _ in results) == [201, 409, 409], [r[1] for r in results]
        assert (await _get(gateway, key))[0] == 200
    status, listed, _ = await admin(gateway, "GET", TOKENS, org_admin)
    assert status == 200 and len(listed["tokens"]) == 10


async def test_the_demo_can_import_keys(tmp_path: Path) -> None:
    """The demo makes its own lookup key (0600, kept across runs) and shows the import."""
    from tokenward.gateway.embedded import free_port
    from tokenward.gateway.settings import load_settings

    data_dir = tmp_path / "demo"
    ports = [str(free_port()) for _ in range(3)]
    code, out, err = await run_cli(
        "demo", "--once", "--data-dir", str(data_dir), "--port", ports[0], "--admin-port", ports[1],
        "--upstream-port", ports[2], timeout=90,
    )  # fmt: skip
    assert code == 0, err
    assert "tokenward token import --team platform" in out and "--metadata owner=alice" in out
    key_file = data_dir / "legacy-lookup.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    settings = load_settings(data_dir / "demo.yaml")
    assert settings.tokens.legacy_lookup_key == key_file.read_text().strip()
    assert settings.tokens.legacy_lookup_key not in out + err


async def test_a_reload_that_changes_the_lookup_key_is_warned_about(
    gateway: Gateway, config: dict[str, Any], tmp_path: Path
) -> None:
    logs = LogReader()
    path = tmp_path / "tokenward.yaml"
    changed = {**config, "tokens": {**config["tokens"], "legacy_lookup_key": "z" * 40}}
    path.write_text(yaml.safe_dump(changed))
    assert gateway.runtime.reload(str(path))
    warnings = [e for e in logs.events() if "legacy_lookup_key changed" in e.get("event", "")]
    assert len(warnings) == 1 and "z" * 40 not in logs.raw().decode()
    assert gateway.runtime.authenticator.legacy_lookup_key == "z" * 40


async def test_an_import_reaches_every_gateway_process(start_gateway: Any, config: dict[str, Any]) -> None:
    """A second gateway on the same store that had cached "no key imported" (and refused the
    key) learns of the import from the change channel, as of any change."""
    first, second = await start_gateway(config), await start_gateway(config)
    assert (await _get(second, OLD_KEY))[0] == 401  # caches the flag and the refusal
    org_admin = await org_admin_with_team(first, ["read:apis", "admin:team"])
    assert (await _import(first, org_admin))[0] == 201
    for _ in range(200):  # the change is pushed: normally at once; give a loaded machine 10 s
        if (await _get(second, OLD_KEY))[0] == 200:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the second gateway never accepted the imported key")
