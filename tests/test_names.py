"""CLI output is a terminal (issue 10, item 6).

Names and descriptions that people read are refused at the API when they hold anything that is
not printable (400 naming the field), and the CLI escapes anything non-printable it is given to
show, whatever the server or an old record holds; `--json` stays JSON with the same values.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import unicodedata
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.gateway import TEAMS, TOKENS, Gateway, org_admin_with_team
from tokenward.cli import main
from tokenward.gateway.records import ServiceAccountRecord, TeamRecord
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.text import all_shown, shown
from tokenward.service import issue_token

SAS = f"{TEAMS}/platform/service-accounts"

# One of each kind a terminal or a reader can be fooled by.
HOSTILE = {
    "esc-csi": "\x1b[2J\x1b[31m",
    "osc-title": "\x1b]0;pwned\x07",
    "bell": "\x07",
    "backspace": "ok\x08\x08",
    "cr": "safe\rEVIL",
    "newline": "a\nb",
    "tab": "a\tb",
    "nul": "a\x00b",
    "del": "a\x7fb",
    "c1-csi": "a\x9b2J",
    "c1-nel": "a\x85b",
    "c1-osc": "a\x9d0;x\x9c",
    "rlo": "evil\u202egnp.exe",
    "lro": "a\u202db",
    "rle": "a\u202bb",
    "pdf": "a\u202cb",
    "lri": "a\u2066b",
    "rli": "a\u2067b",
    "fsi": "a\u2068b",
    "pdi": "a\u2069b",
    "rlm": "a\u200fb",
    "lrm": "a\u200eb",
    "alm": "a\u061cb",
    "zwsp": "a\u200bb",
    "zwj": "a\u200db",
    "word-joiner": "a\u2060b",
    "bom": "\ufeffa",
    "line-sep": "a\u2028b",
    "para-sep": "a\u2029b",
    "nbsp": "a\u00a0b",
    "tag": "a\U000e0041b",
    "private-use": "a\ue000b",
    "hangul-filler": "a\u3164b",
    "halfwidth-hangul-filler": "\uffa0",
    "braille-blank": "a\u2800b",
    "grapheme-joiner": "a\u034fb",
    "variation-selector": "a\ufe00b",
    "mongolian-fvs": "a\u180bb",
}
FINE = ["ci-deploy", "déploiement nocturne", "部署 (prod)", "rocket 🚀", "a b", "C:\\builds", "Ωμέγα", "love ❤️", "한국어"]


def no_raw_unprintable(text: str) -> None:
    """Every character in `text` is printable, or a newline between lines."""
    for line in text.split("\n"):
        bad = [f"U+{ord(c):04X}" for c in line if not shown(c)]
        assert not bad, (bad, line)


async def call(gw: Gateway, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    async with gw.session.request(method, gw.admin_url + path, headers=gw.auth(token), json=body) as r:
        return r.status, await r.json() if r.content_type == "application/json" else None


@pytest.fixture
async def org_admin(gateway: Gateway) -> str:
    """Here the team `platform` may only read APIs."""
    return await org_admin_with_team(gateway, ["read:apis"])


# ------------------------------------------------------------------------------ the API refuses
@pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
async def test_api_refuses_unprintable_names_and_descriptions(
    gateway: Gateway, org_admin: str, text: str
) -> None:
    attempts: list[tuple[str, str, dict[str, Any], str]] = [
        ("POST", TOKENS, {"name": text, "scopes": ["read:apis"]}, "name"),
        ("POST", TOKENS, {"name": "ok", "description": text, "scopes": ["read:apis"]}, "description"),
        ("POST", SAS, {"name": "bot", "description": text}, "description"),
        ("POST", SAS, {"name": text}, "name"),
        ("POST", TEAMS, {"name": text, "permissions": []}, "name"),
    ]
    _, token = await call(gateway, "POST", TOKENS, org_admin, {"name": "t", "scopes": ["read:apis"]})
    attempts += [
        ("PATCH", f"{TOKENS}/{token['id']}", {"name": text}, "name"),
        ("PATCH", f"{TOKENS}/{token['id']}", {"description": text}, "description"),
    ]
    for method, path, body, field in attempts:
        status, data = await call(gateway, method, path, org_admin, body)
        assert status == 400, (method, path, body, data)
        assert data["error"] == "invalid_request" and data["field"] == field, data
        assert text not in data["message"]  # the message never echoes the raw characters
    _, listed = await call(gateway, "GET", TOKENS, org_admin)
    assert [(t["name"], t["description"]) for t in listed["tokens"]] == [("t", "")]


@pytest.mark.parametrize("text", FINE)
async def test_api_accepts_printable_names_in_any_script(gateway: Gateway, org_admin: str, text: str) -> None:
    status, data = await call(
        gateway, "POST", TOKENS, org_admin, {"name": text, "description": text, "scopes": ["read:apis"]}
    )
    assert status == 201 and data["name"] == text and data["description"] == text, data
    status, data = await call(
        gateway, "PATCH", f"{TOKENS}/{data['id']}", org_admin, {"description": text + "!"}
    )
    assert status == 200, data
    status, data = await call(gateway, "POST", SAS, org_admin, {"name": "bot", "description": text})
    assert status == 201, data


@given(st.text(max_size=30))
def test_schema_accepts_exactly_printable_text(text: str) -> None:
    from tokenward import schema

    name = schema.TOKEN_CREATE["properties"]["description"]
    try:
        schema.validate(name, text, "description")
    except schema.ValidationError as exc:
        assert exc.field == "description"
        assert not all_shown(text)
    else:
        assert all_shown(text)


# ------------------------------------------------------------------------------ the CLI escapes
def test_printable_escapes_every_unprintable_character() -> None:
    from tokenward.gateway.text import printable

    for text in [*HOSTILE.values(), *FINE]:
        shown = printable(text)
        no_raw_unprintable(shown)
        assert "\n" not in shown
        if all_shown(text):
            assert shown == text
    assert printable("evil\u202egnp.exe") == "evil\\u202egnp.exe"
    assert printable("\x1b[2J") == "\\x1b[2J"
    assert printable("a\x9bb") == "a\\x9bb"
    assert printable("a\U000e0041") == "a\\U000e0041"


@given(st.text())
def test_printable_is_total(text: str) -> None:
    from tokenward.gateway.text import printable

    no_raw_unprintable(printable(text))


async def run_cli(
    monkeypatch: pytest.MonkeyPatch, gw: Gateway, token: str, *args: str
) -> tuple[int, str, str]:
    """The CLI in a worker thread (it is synchronous), with the gateway serving on this loop."""
    monkeypatch.setenv("TOKENWARD_ADMIN_URL", gw.admin_url)
    monkeypatch.setenv("TOKENWARD_TOKEN", token)
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as exc:
                return int(exc.code or 0)
        return 0

    code = await asyncio.to_thread(run)
    return code, out.getvalue(), err.getvalue()


async def test_cli_output_never_carries_raw_control_characters(
    gateway: Gateway, org_admin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records written before names were checked (straight into the store here) are shown
    escaped in every table and line; --json keeps their exact values."""
    store = gateway.runtime.store
    evil = "".join(HOSTILE.values())
    await store.create_service_account(ServiceAccountRecord("acme", "platform", "bot", evil, 0.0, "test"))
    _, record = await issue_token(
        gateway.runtime,
        org="acme",
        team="platform",
        name=evil,
        description=evil,
        scopes=parse_scopes(["read:apis"]),
        created_by="test",
    )
    _, admin_record = await issue_token(
        gateway.runtime,
        org="acme",
        team=None,
        name=evil,
        scopes=parse_scopes(["admin:org"]),
        created_by="test",
    )
    await store.put_team(TeamRecord("acme", "platform", parse_scopes(["read:apis"]), 0.0, "test"))
    runs = [
        (("token", "list", "--team", "platform"), True),
        (("token", "get", record.id, "--team", "platform"), True),
        (("token", "revoke", record.id, "--team", "platform"), True),
        (("sa", "list", "--team", "platform"), True),
        (("audit", "--limit", "50"), False),  # the audit stream is written in batches
        (("leaks", "report", "tw_\x1b]0;x\x07\u202eabc"), False),  # shown by its length only, never echoed
        (("token", "get", "\x1b[2J\u202e", "--team", "platform"), False),  # not echoed at all (test_no_echo)
    ]
    for args, shows_escape in runs:
        code, out, err = await run_cli(monkeypatch, gateway, org_admin, *args)
        no_raw_unprintable(out)
        no_raw_unprintable(err)
        if shows_escape:
            assert "\\x1b" in out + err, (args, out, err)
    # whoami as the token with the hostile name
    evil_admin, _ = await issue_token(
        gateway.runtime, org="acme", team=None, name=evil, scopes=parse_scopes(["admin:org"]), created_by="t"
    )
    code, out, err = await run_cli(monkeypatch, gateway, evil_admin, "whoami")
    assert code == 0 and "\\u202e" in out
    no_raw_unprintable(out)
    # --json: valid JSON, same values, no raw unprintable character
    for args in (
        ("token", "list", "--team", "platform", "--json"),
        ("sa", "list", "--team", "platform", "--json"),
    ):
        code, out, err = await run_cli(monkeypatch, gateway, org_admin, *args)
        assert code == 0, err
        no_raw_unprintable(out)
        data = json.loads(out)
        rows = data.get("tokens") or data.get("service_accounts")
        assert rows[0]["description"] == evil
    assert admin_record.name == evil


def test_json_output_round_trips_every_character() -> None:
    from tokenward.cli_output import _json_text

    everything = (
        "".join(chr(c) for c in range(0x0, 0x3000) if not 0xD800 <= c < 0xE000) + "\U000e0041\U0001f680"
    )
    text = _json_text({"name": everything})
    no_raw_unprintable(text)
    assert json.loads(text) == {"name": everything}
    assert unicodedata.category("\u202e") == "Cf"


def test_bootstrap_refuses_unprintable_org_and_name(monkeypatch: pytest.MonkeyPatch) -> None:
    for argv in (
        ["admin", "bootstrap", "--config", "/nonexistent", "--org", "acme\x1b[2J"],
        ["admin", "bootstrap", "--config", "/nonexistent", "--org", "acme", "--name", "x\u202e"],
    ):
        err = io.StringIO()
        with redirect_stderr(err), pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 1
        no_raw_unprintable(err.getvalue())
        assert "--org" in err.getvalue() or "--name" in err.getvalue()
    assert sys.stdout is not None


def test_console_log_escapes_values() -> None:
    """The pretty console log (on a TTY) writes values through the same escaping: a hostile
    token name in an old record must not drive the operator's terminal either."""
    import subprocess

    from tests.helpers.gateway import ROOT
    from tests.helpers.process import env_for_subprocess

    code = (
        "import io\n"
        "from tokenward.gateway.audit import AuditLog\n"
        "from tokenward.gateway.logs import configure_logging\n"
        "from tokenward.gateway.settings import LogSettings\n"
        "s = io.StringIO()\n"
        "configure_logging(LogSettings(level='info', format='console'), s)\n"
        "AuditLog(None, 10).emit('token.created', token_name='a\\x1b]0;x\\x07\\u202eb')\n"
        "print(s.getvalue().encode('unicode_escape').decode())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env_for_subprocess(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # the renderer's own colours are ESC sequences; the name's characters arrive escaped
    assert "a\\\\x1b]0;x\\\\x07\\\\u202eb" in out, out
