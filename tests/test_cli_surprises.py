"""Issue 14, item 11: what surprised a new user of the CLI, each fixed and kept fixed.

The CLI runs as a user runs it (a subprocess) against the real admin API and store; the demo
runs as `tokenward demo`; README's command lines are parsed by the real parser."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.gateway import ROOT, Gateway, admin
from tests.helpers.process import CLI, env_for_subprocess, run_cli
from tokenward.cli import build_parser
from tokenward.cli_output import humanize_date
from tokenward.gateway.embedded import free_ports
from tokenward.gateway.token_scan import find_tokens, scan_tokens
from tokenward.gateway.tokens import checksum, generate


@pytest.fixture
async def env(gateway: Gateway) -> dict[str, str]:
    """An org admin's environment with team `platform` (read:apis, write:specs, admin:team)."""
    env = env_for_subprocess()
    env["TOKENWARD_ADMIN_URL"] = gateway.admin_url
    env["TOKENWARD_TOKEN"] = await gateway.org_admin()
    await ok("team", "create", "platform", "--permissions", "read:apis,write:specs,admin:team", env=env)
    return env


async def ok(*args: str, env: dict[str, str], stdin: str | None = None) -> str:
    code, out, err = await run_cli(*args, env=env, stdin=stdin)
    assert code == 0, f"tokenward {' '.join(args)}: exit {code}: {err}"
    return out


async def create(env: dict[str, str], *args: str) -> tuple[dict[str, Any], str]:
    """`token create --json` in team platform: (the response, stderr)."""
    code, out, err = await run_cli("token", "create", "--team", "platform", *args, "--json", env=env)
    assert code == 0, err
    return json.loads(out), err


def warning_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


# -- issuance warnings ---------------------------------------------------------------------------
async def test_a_constraint_no_route_names_is_warned_about(gateway: Gateway, env: dict[str, str]) -> None:
    token, err = await create(env, "--name", "pinned", "--scopes", "read:apis", "--constraint", "region=eu")
    [line] = warning_lines(err)
    assert line.startswith("warning: constraint region=eu: no route names a 'region' parameter")
    assert token["warnings"] == [line.removeprefix("warning: ")]
    # README's example, as written there: a constraint the demo's spec routes name; it works there
    token, err = await create(
        env, "--name", "deploy", "--scopes", "read:apis,write:specs", "--constraint", "api=pets",
        "--allow-cidr", "127.0.0.0/8", "--expires-in", "30d",
    )  # fmt: skip
    assert warning_lines(err) == [] and token["warnings"] == []
    for method, path, want in (
        ("GET", "/apis/pets/specs", 200),
        ("POST", "/apis/pets/specs", 200),
        ("GET", "/apis/cats/specs", 403),  # another api
        ("GET", "/apis", 403),  # a route that names no api
    ):
        url = f"{gateway.url}/orgs/acme/teams/platform{path}"
        async with gateway.session.request(method, url, headers=gateway.auth(token["token"])) as r:
            assert r.status == want, (method, path, await r.text())


async def test_scope_warnings_say_what_is_lost(gateway: Gateway, env: dict[str, str]) -> None:
    """Decided with the gateway's `covers`: a lower level held is kept, a wildcard covers."""
    token, err = await create(env, "--name", "a", "--scopes", "read:apis,admin:specs,read:billing")
    assert warning_lines(err) == [
        "warning: the team holds write:specs only: admin:specs acts as write:specs",
        "warning: the team does not hold read:billing: it grants nothing",
    ]
    assert len(token["warnings"]) == 2
    await ok("team", "create", "readers", "--permissions", "read:*", env=env)
    code, out, err = await run_cli(
        "token", "create", "--team", "readers", "--name", "r", "--scopes", "read:apis,write:apis", "--json", env=env
    )
    assert code == 0, err
    assert warning_lines(err) == ["warning: the team holds read:apis only: write:apis acts as read:apis"]
    code, out, err = await run_cli(
        "token", "create", "--team", "readers", "--name", "r2", "--scopes", "read:apis", env=env
    )
    assert code == 0 and warning_lines(err) == [] and "does not hold" not in out + err


# -- output that stops, one-line errors, the admin URL -------------------------------------------
def _run_into_closed_pipe(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """The CLI with a stdout whose reader is already gone (`| head` that has exited): any
    write fails with EPIPE, so the test does not depend on timing."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [*CLI, *args], cwd=ROOT, env=env, stdout=write_end, stderr=subprocess.PIPE, timeout=60, check=False
        )
    finally:
        os.close(write_end)


async def test_a_closed_pipe_ends_quietly(gateway: Gateway, env: dict[str, str]) -> None:
    await create(env, "--name", "t", "--scopes", "read:apis")
    for args in (
        ["token", "list", "--team", "platform"],
        ["token", "list", "--team", "platform", "--json"],
        ["team", "list"],
        ["audit"],
        ["completion", "bash"],
    ):
        done = await asyncio.to_thread(_run_into_closed_pipe, args, env)
        assert (done.returncode, done.stderr.decode()) == (141, ""), args
    done = await asyncio.to_thread(_run_into_closed_pipe, ["token", "--help"], env)
    assert done.stderr.decode() == ""  # argparse itself ignores the failed write (exit 0)


async def test_argparse_errors_are_one_line() -> None:
    code, out, err = await run_cli("token", "create", "--team", "platform")
    assert code == 2 and out == ""
    assert err == (
        "tokenward token create: error: the following arguments are required: --name, --scopes"
        " (see tokenward token create --help)\n"
    )
    code, _, err = await run_cli("token", "frobnicate")
    assert code == 2 and len(err.splitlines()) == 1 and "invalid choice" in err


async def test_the_admin_url_pointing_at_the_gateway_gets_a_hint(gateway: Gateway, env: dict[str, str]) -> None:
    wrong = dict(env, TOKENWARD_ADMIN_URL=gateway.url)
    code, _, err = await run_cli("token", "list", "--team", "platform", env=wrong)
    assert code == 1 and len(err.splitlines()) == 1, err
    assert "looks like the gateway listener" in err and "admin_listen" in err and "127.0.0.1:8081" in err
    # an admin API refusal is no gateway: no hint
    code, _, err = await run_cli("token", "get", "AAAAAAAAAAAA", "--team", "platform", env=env)
    assert code == 1 and "404" in err and "gateway" not in err


async def test_an_unset_admin_url_is_said_once() -> None:
    env = env_for_subprocess()
    env.pop("TOKENWARD_ADMIN_URL", None)
    env["TOKENWARD_TOKEN"] = "tw_sat_" + "x" * 50  # whatever answers (or not) at the default
    # `token list` without --team asks whoami first: two calls, one note
    _, _, err = await run_cli("token", "list", env=env)
    assert err.count("TOKENWARD_ADMIN_URL is not set") == 1 and "Traceback" not in err
    assert len(err.splitlines()) == 2, err  # the note, and the command's one error line


# -- times, token get, token update ----------------------------------------------------------------
def test_times_are_utc_with_z() -> None:
    assert humanize_date("2027-02-21T22:05:09Z") == "2027-02-21 22:05Z"
    assert humanize_date("2027-02-21T22:05:09Z", seconds=True) == "2027-02-21 22:05:09Z"
    assert humanize_date("2027-02-22T00:05:09+02:00", seconds=True) == "2027-02-21 22:05:09Z"
    assert humanize_date(None) == "never"


async def test_token_get_shows_every_field(gateway: Gateway, env: dict[str, str]) -> None:
    await ok("sa", "create", "github-actions", "--team", "platform", env=env)
    token, _ = await create(
        env, "--name", "deploy", "--scopes", "read:apis,write:specs", "--description", "the deploy job",
        "--service-account", "github-actions", "--constraint", "api=pets", "--allow-cidr", "127.0.0.0/8",
    )  # fmt: skip
    # the team loses write:specs (keeps read:specs): the token's write:specs is lost to it
    await ok("team", "set-permissions", "platform", "--permissions", "read:apis,read:specs,admin:team", env=env)
    await ok("token", "revoke", token["id"], "--team", "platform", "--reason", "rotated by hand", env=env)
    out = await ok("token", "get", token["id"], "--team", "platform", env=env)
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in out.splitlines() if line.strip())
    assert fields["ID"] == token["id"] and fields["Name"] == "deploy"
    assert fields["Description"] == "the deploy job" and fields["Service account"] == "github-actions"
    assert fields["Constraints"] == "api=pets" and fields["Allowed CIDRs"] == "127.0.0.0/8"
    assert fields["Scopes"] == "read:apis, write:specs"
    assert fields["Effective scopes"] == "read:apis, read:specs"
    assert fields["Not in effect"] == "the team holds read:specs only: write:specs acts as read:specs"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ by token:.+", fields["Created"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", fields["Expires"])
    assert fields["Status"] == "revoked (org: rotated by hand)"
    assert fields["Revoked by"].startswith("token:") and fields["Reason"] == "rotated by hand"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", fields["Revoked at"])
    # times in the list and the audit table are UTC with Z too
    out = await ok("token", "list", "--team", "platform", env=env)
    assert re.search(r"\d\d:\d\dZ", out.splitlines()[1])
    out = await ok("audit", "--action", "token.created", env=env)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ ", out.splitlines()[1])


def test_token_get_shows_fields_it_does_not_know_yet() -> None:
    from tokenward.cli_token_view import token_detail

    view = {"id": "x", "name": "n", "display_prefix": "tw_sat_x", "scopes": [], "effective_scopes": []}
    view |= {"status": "active", "renewal": {"every": "1d"}, "environment": "test", "grace_until": None}
    out = token_detail(view)
    assert re.search(r"^Renewal:\s+\{\"every\":\"1d\"\}$", out, re.M)
    assert re.search(r"^Environment:\s+test$", out, re.M) and "Grace" not in out


async def test_token_update_says_what_changed(gateway: Gateway, env: dict[str, str]) -> None:
    token, _ = await create(env, "--name", "a", "--scopes", "read:apis")
    out = await ok("token", "update", token["id"], "--team", "platform", "--name", "b", env=env)
    assert out.strip() == f"✓ Token {token['id']}: renamed 'a' → 'b'."
    out = await ok("token", "update", token["id"], "--team", "platform", "--description", "ci", env=env)
    assert out.strip() == f"✓ Token {token['id']}: description set to 'ci'."
    out = await ok("token", "update", token["id"], "--team", "platform", "--name", "c", "--description", "cd", env=env)
    assert out.strip() == f"✓ Token {token['id']}: renamed 'b' → 'c'; description changed from 'ci' to 'cd'."
    code, _, err = await run_cli("token", "update", token["id"], "--team", "platform", "--scopes", "write:specs", env=env)
    assert code == 1 and len(err.splitlines()) == 1
    assert f"scopes are fixed at issuance: rotate instead (`tokenward token rotate {token['id']} ...`" in err


# -- leaks in any text ------------------------------------------------------------------------------
def test_find_tokens_in_any_text() -> None:
    a, _ = generate("tw_sat")
    b, _ = generate("acme_live")  # any prefix: the checksum tells which one
    bad = a[:-1] + ("0" if a[-1] != "0" else "1")  # a typo: token-shaped, checksum wrong
    text = "\n".join(
        [
            f'2026-11-28T10:00:00Z INFO calling api token={a} status=200',
            f"+export TOKENWARD_TOKEN={b}",
            json.dumps({"headers": {"Authorization": f"Bearer {a}"}, "typo": bad}),
            f"MY_{b}",  # an upper-case word before: still the token
            f"x{a}y",  # inside a longer word: not a token
            "tw_sat_" + "A" * 49,  # too short
        ]
    )
    scan = scan_tokens(text)
    assert scan.tokens == (a, b) and find_tokens(text) == [a, b]
    assert scan.shaped == 5  # a, b, a again, the typo, b again
    assert a not in repr(scan)
    assert find_tokens("") == [] and scan_tokens("_" * 10000 + "a_" * 10000).shaped == 0


def test_find_tokens_checks_the_checksum_under_the_prefix() -> None:
    head = "tw_sat_" + "A" * 44
    token = head + checksum(head)
    assert find_tokens(token) == [token]
    assert find_tokens("xx_" + token) == [token]  # a prefix-shaped word before: the checksum decides
    assert find_tokens(token.replace("tw_sat_", "tw_sab_")) == []


async def test_leaks_report_finds_tokens_in_text(gateway: Gateway, env: dict[str, str], tmp_path: Path) -> None:
    one, _ = await create(env, "--name", "one", "--scopes", "read:apis")
    two, _ = await create(env, "--name", "two", "--scopes", "read:apis")
    stranger, _ = generate("tw_sat")
    log = tmp_path / "build.log"
    log.write_text(
        f"step 1 ok\nexport TOKEN={one['token']}\ncurl -H 'Authorization: Bearer {stranger}'\n"
        f"retry with {one['token']} and tw_sat_{'Z' * 50}\n"
    )
    out = await ok("leaks", "report", "--file", str(log), env=env)
    lines = out.splitlines()
    assert lines[0] == "found 4 token-shaped strings, 2 valid: 1 revoked, 1 unknown"
    assert lines[1].startswith(f"{one['display_prefix']}: revoked") and len(lines) == 3
    assert one["token"] not in out and stranger not in out
    diff = f"--- a/.env\n+++ b/.env\n@@ -1 +1 @@\n-TOKEN=\n+TOKEN={two['token']}\n"
    out = await ok("leaks", "report", "-", "--json", env=env, stdin=diff)
    data = json.loads(out)
    assert data["found"] == 1 and [r["result"] for r in data["results"]] == ["revoked"]
    out = await ok("leaks", "report", "-", env=env, stdin="nothing here\n")
    assert out.strip() == "found 0 token-shaped strings, 0 valid: nothing reported"
    # the admin API scans text itself too
    third, _ = await create(env, "--name", "three", "--scopes", "read:apis")
    status, body, _ = await admin(
        gateway, "POST", "/v1/leaks", env["TOKENWARD_TOKEN"], {"text": f"k={third['token']};"}
    )
    assert status == 200 and body["found"] == 1 and body["results"][0]["result"] == "revoked"
    status, body, _ = await admin(gateway, "POST", "/v1/leaks", env["TOKENWARD_TOKEN"], {})
    assert status == 400 and "text" in body["message"]


# -- the demo and README ----------------------------------------------------------------------------
@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[tuple[dict[str, str], str, int]]:
    """`tokenward demo` running, its admin port taken by another socket: (the environment its
    printed export lines make, what it printed, the admin port that was asked for)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    asked = taken.getsockname()[1]
    port, upstream_port = free_ports(2)
    ports = [str(port), str(asked), str(upstream_port)]
    process = await asyncio.create_subprocess_exec(
        *CLI, "demo", "--data-dir", str(tmp_path / "demo"), "--port", ports[0], "--admin-port", ports[1],
        "--upstream-port", ports[2], cwd=ROOT, env=env_for_subprocess(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdout is not None
    printed = ""
    try:
        while "Ctrl-C to stop" not in printed:
            line = await asyncio.wait_for(process.stdout.readline(), 120)
            assert line, printed
            printed += line.decode()
        env = env_for_subprocess()
        for name, value in re.findall(r"^  export (\w+)=(\S+)$", printed, re.M):
            env[name] = value.replace("$PATH", env.get("PATH", ""))
        yield env, printed, asked
    finally:
        taken.close()
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)


async def test_the_demo_says_when_a_port_moved(demo: tuple[dict[str, str], str, int]) -> None:
    env, printed, asked = demo
    assert f"!! port {asked} is taken: the admin API listens on 127.0.0.1:" in printed
    assert env["TOKENWARD_ADMIN_URL"] != f"http://127.0.0.1:{asked}"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    # the demo's team was created now, not in 1970
    team = json.loads(await ok("team", "get", "platform", "--json", env=env))
    assert abs(datetime.fromisoformat(team["created_at"]).timestamp() - datetime.now(UTC).timestamp()) < 3600
    # README's examples on the demo, as a user pastes them after the export lines: each one
    # that changes no other example's token (<ID>: the last token created) works, warning-free
    skipped = {"config", "admin", "serve", "leaks", "rotate", "revoke", "restore", "delete"}
    token_id, ran, refusals = "", 0, set(readme_commands(refused=True))
    for line in readme_commands():
        argv = shlex.split(line)
        if skipped & set(argv[1:3]) or argv[1:4] == ["team", "create", "platform"]:  # the demo has it
            continue
        argv = [token_id if re.fullmatch(r"<[A-Z-]*ID>", arg) else arg for arg in argv]
        done = await asyncio.to_thread(
            subprocess.run, argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
        )
        assert "Traceback" not in done.stderr and "warning:" not in done.stderr, (line, done.stderr)
        if line in refusals:  # an example of an error: one line, non-zero exit
            assert done.returncode != 0 and len(done.stderr.splitlines()) == 1, (line, done.stderr)
            continue
        if tuple(argv[1:3]) in MUST_WORK or argv[1] in MUST_WORK:  # others: new lines may 409 here
            assert done.returncode == 0 and done.stderr == "", (line, done.stderr)
        if argv[1:3] == ["token", "create"]:
            token_id = next(w.split()[-1] for w in done.stdout.splitlines() if w.strip().startswith("ID:"))
        ran += 1
    assert ran >= 8


MUST_WORK = {("token", "create"), ("token", "get"), ("token", "list"), ("token", "update"), "whoami", "audit"}


def readme_commands(refused: bool = False) -> list[str]:
    """Every `tokenward ...` command line of README's sh blocks (continuations joined, comments
    and pipes before it dropped); with `refused`, only those whose comment says `# refused`
    (examples of an error message)."""
    text = (ROOT / "README.md").read_text()
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line, _, comment = line.partition(" #")
            line = line.strip()
            if refused and not comment.strip().startswith("refused"):
                continue
            line = line.rsplit("| ", 1)[-1].strip()
            if line.startswith(".venv/bin/tokenward "):
                line = line.removeprefix(".venv/bin/")
            if line.startswith("tokenward "):
                lines.append(line)
    return lines


def test_every_readme_command_parses() -> None:
    """Each README `tokenward` line is a command the real parser accepts (placeholders as values)."""
    commands = readme_commands()
    assert len(commands) >= 20
    for line in commands:
        argv = shlex.split(re.sub(r"<[A-Z-]*ID>", "AAAAAAAAAAAA", line))[1:]
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"README: `{line}` does not parse ({exc})")
