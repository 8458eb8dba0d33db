"""The `tokenward` command line.

Server-side commands (`serve`, `demo`, `config check`, `admin bootstrap`) read the config;
management commands (`team`, `sa`, `token`, `audit`, `leaks`, `whoami`) talk to the admin API at
`TOKENWARD_ADMIN_URL` with `TOKENWARD_TOKEN`. Tables for people, `--json` for scripts;
an error is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import orjson

from tokenward.gateway.settings import ConfigError, LogSettings, Settings, load_settings
from tokenward.gateway.text import printable, shown

DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"


class CliError(Exception):
    pass


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"error: {printable(message)}", file=sys.stderr)
    raise SystemExit(code)


# -- the terminal is an output device with a command language (issue 10, item 6) ----------------
def _json_text(data: Any) -> str:
    """`--json` output: still JSON with the same values, but with every non-printable character
    written as a `\\u` escape (orjson escapes C0 controls only and writes the rest raw)."""
    text = orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()
    if text.isascii() and "\x7f" not in text:
        return text
    out = []
    for char in text:
        code = ord(char)
        if code < 0x7F or shown(char):  # C0 controls never occur raw in orjson output
            out.append(char)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            high, low = divmod(code - 0x10000, 0x400)
            out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}")
    return "".join(out)


# -- formatting ------------------------------------------------------------------------------
def _span(seconds: float) -> str | None:
    """'2 hours', '1 day'… (the largest whole unit), or None under a minute."""
    for size, unit in (
        (86400 * 365, "year"),
        (86400 * 30, "month"),
        (86400, "day"),
        (3600, "hour"),
        (60, "minute"),
    ):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return None


def _timestamp(iso_time: str) -> float:
    return datetime.fromisoformat(iso_time).timestamp()


def humanize_ago(iso_time: str | None, now: float | None = None) -> str:
    if not iso_time:
        return "never"
    span = _span(max(0.0, (now or time.time()) - _timestamp(iso_time)))
    return f"{span} ago" if span else "just now"


def humanize_date(iso_time: str | None, seconds: bool = False) -> str:
    if not iso_time:
        return "never"
    return iso_time.replace("T", " ").replace("Z", "")[: 19 if seconds else 16]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def token_rows(tokens: Sequence[dict[str, Any]]) -> str:
    return table(
        ["ID", "NAME", "PREFIX", "SCOPES", "LAST USED", "EXPIRES", "STATUS"],
        [
            [
                t["id"],
                t["name"],
                t["display_prefix"],
                ", ".join(t["scopes"]),
                humanize_ago(t.get("last_used_at")),
                humanize_date(t.get("expires_at")),
                status_marker(t),
            ]
            for t in tokens
        ],
    )


def status_marker(t: dict[str, Any]) -> str:
    """`revoked (org: leaked)`: who revoked (org or team admin) and why, beside the status."""
    status = str(t["status"])
    if status != "revoked" or not (t.get("revoked_by_level") or t.get("revoke_reason")):
        return status
    why = ": ".join(str(p) for p in (t.get("revoked_by_level"), t.get("revoke_reason")) if p)
    return f"{status} ({why})"


def revocation_lines(t: dict[str, Any]) -> str:
    """`token get`: the revocation's author, level, time and reason under the table."""
    if not t.get("revoked_at"):
        return ""
    level = {"org": "an org admin", "team": "a team admin"}.get(t.get("revoked_by_level") or "", "")
    lines = [
        f"Revoked by:  {t.get('revoked_by') or '-'}" + (f" ({level})" if level else ""),
        f"Revoked at:  {humanize_date(t['revoked_at'], seconds=True)} UTC",
        f"Reason:      {t.get('revoke_reason') or '-'}",
    ]
    if t.get("replaced_by"):
        lines.append(f"Replaced by: {t['replaced_by']}")
    return "\n" + "\n".join(lines)


def emit(data: Any, as_json: bool, human: str) -> None:
    if as_json:
        sys.stdout.write(_json_text(data) + "\n")
    else:
        print("\n".join(printable(line) for line in human.split("\n")))


def shown_once(title: str, fields: Sequence[tuple[str, str]], warnings: Sequence[str] = ()) -> str:
    """The output of anything that returns a plaintext token: it is never shown again."""
    width = max(len(label) for label, _ in fields) + 1
    lines = [title, ""]
    lines += [f"  {(label + ':').ljust(width)} {printable(value)}" for label, value in fields]
    for warning in [*warnings, "Copy this token now — it will not be shown again."]:
        lines += ["", f"  ⚠ {warning}"]
    return "\n".join(lines)


def _or_dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


# -- admin API client ----------------------------------------------------------------------
PAGE_SIZE = 500  # rows per list call (the API's largest page)
AUDIT_PAGE_SIZE = 1000
class AdminClient:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    @classmethod
    def from_env(cls) -> AdminClient:
        token = os.environ.get("TOKENWARD_TOKEN")
        if not token:
            raise CliError("TOKENWARD_TOKEN is not set (an admin:org or admin:team token)")
        return cls(os.environ.get("TOKENWARD_ADMIN_URL", DEFAULT_ADMIN_URL), token)

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        query: Mapping[str, str | int | None] | None = None,
    ) -> Any:
        """One admin API call: the decoded JSON body, or None for 204; CliError on any failure."""
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        url = self.base_url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = orjson.dumps(body) if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - the URL is the operator's admin API
            url,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            raise CliError(f"{exc.code} {_error_message(exc.read(), exc.reason)}") from None
        except urllib.error.URLError as exc:
            raise CliError(f"cannot reach the admin API at {self.base_url}: {exc.reason}") from None
        if status == 204 or not raw:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise CliError(
                f"the admin API at {self.base_url} answered {status} with a non-JSON body"
            ) from None

    def whoami(self) -> dict[str, Any]:
        return dict(self.call("GET", "/v1/whoami"))

    def pages(
        self,
        path: str,
        key: str,
        query: Mapping[str, str | int | None] | None = None,
        limit: int | None = None,
        page_size: int = PAGE_SIZE,
    ) -> dict[str, Any]:
        """A paginated list: follows `next` until the last page, or until `limit` rows.
        `next` in the result continues where it stopped (null when it read everything)."""
        rows: list[Any] = []
        cursor: str | None = None
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - len(rows)))
            data = self.call("GET", path, query={**(query or {}), "limit": size, "cursor": cursor})
            rows += data[key]
            cursor = data.get("next")
            if not cursor or (limit is not None and len(rows) >= limit):
                break
        if limit is not None and len(rows) > limit:
            rows = rows[:limit]
        return {key: rows, "next": cursor}


def _error_message(raw: bytes, reason: str) -> str:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return reason
    message = data.get("message") if isinstance(data, dict) else None
    return " ".join(str(message).split()) if message else reason


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _org_team(client: AdminClient, args: argparse.Namespace, need_team: bool = True) -> tuple[str, str]:
    org, team = getattr(args, "org", None), getattr(args, "team", None)
    if org is None or (need_team and team is None):
        me = client.whoami()
        org = org or me["org"]
        team = team or me.get("team")
    if need_team and not team:
        raise CliError("--team is required for an org-level token")
    return _q(org), _q(team or "")


def _split(values: str | None) -> list[str]:
    return [v.strip() for v in (values or "").split(",") if v.strip()]


# -- commands: teams -------------------------------------------------------------------------
def team_rows(teams: Sequence[dict[str, Any]]) -> str:
    return table(
        ["NAME", "PERMISSIONS", "CREATED"],
        [[t["name"], ", ".join(t["permissions"]), humanize_date(t["created_at"])] for t in teams],
    )


def cmd_team(args: argparse.Namespace) -> None:
    client = AdminClient.from_env()
    org, _ = _org_team(client, args, need_team=False)
    base = f"/v1/orgs/{org}/teams"
    if args.action == "create":
        data = client.call("POST", base, {"name": args.name, "permissions": _split(args.permissions)})
        emit(
            data,
            args.json,
            f"✓ Team {data['name']!r} created with permissions: {', '.join(data['permissions']) or '(none)'}",
        )
    elif args.action == "list":
        data = client.pages(base, "teams", limit=args.limit)
        emit(data, args.json, team_rows(data["teams"]))
    elif args.action == "get":
        data = client.call("GET", f"{base}/{_q(args.name)}")
        emit(data, args.json, team_rows([data]))
    elif args.action == "set-permissions":
        data = client.call(
            "PUT", f"{base}/{_q(args.name)}/permissions", {"permissions": _split(args.permissions)}
        )
        emit(
            data, args.json, f"✓ Team {data['name']!r} now has: {', '.join(data['permissions']) or '(none)'}"
        )


# -- commands scoped to one team: tokens and service accounts ----------------------------------
TeamAction = Callable[[AdminClient, str, argparse.Namespace], None]


def cmd_team_scoped(args: argparse.Namespace) -> None:
    """`token …` and `sa …`: resolve --org/--team (default: the caller's), then run the action
    on `/v1/orgs/{org}/teams/{team}/{collection}`."""
    client = AdminClient.from_env()
    org, team = _org_team(client, args)
    run: TeamAction = args.run
    run(client, f"/v1/orgs/{org}/teams/{team}/{args.collection}", args)


def _body(**fields: Any) -> dict[str, Any]:
    """A request body without the options that were not given."""
    return {k: v for k, v in fields.items() if v not in (None, "", [], {})}


def _created_fields(data: dict[str, Any]) -> list[tuple[str, str]]:
    fields = [("ID", data["id"]), ("Name", data["name"]), ("Scopes", ", ".join(data["scopes"]))]
    if data.get("service_account"):
        fields.append(("Service account", data["service_account"]))
    fields.append(("Expires", humanize_date(data.get("expires_at"))))
    return fields


def _scope_warnings(data: dict[str, Any]) -> list[str]:
    missing = data.get("ineffective_scopes")
    return [f"The team does not hold: {', '.join(missing)} (they grant nothing)"] if missing else []


def token_create(client: AdminClient, base: str, args: argparse.Namespace) -> None:
    body = {"name": args.name, "scopes": _split(args.scopes)} | _body(
        description=args.description,
        expires_in=args.expires_in,
        expires_at=args.expires_at,
        service_account=args.service_account,
        constraints=dict(_pair(c) for c in args.constraint or ()),
        allowed_cidrs=list(args.allow_cidr or ()),
    )
    data = client.call("POST", base, body)
    human = shown_once(
        "✓ Token created successfully!",
        [*_created_fields(data), ("Token", data["token"])],
        _scope_warnings(data),
    )
    emit(data, args.json, human)


def _retirement(old_id: str, revoked_at: str | None) -> str:
    """When the replaced token stops working: now, or at the end of the grace period."""
    if revoked_at is None or _timestamp(revoked_at) <= time.time() + 1:
        return f"{old_id} is revoked: it stopped working now"
    left = _span(_timestamp(revoked_at) - time.time() + 30) or "less than a minute"
    return f"{old_id} keeps working until {humanize_date(revoked_at, seconds=True)} UTC (about {left})"


def token_rotate(client: AdminClient, base: str, args: argparse.Namespace) -> None:
    body = _body(grace_period=args.grace_period, expires_in=args.expires_in, expires_at=args.expires_at)
    data = client.call("POST", f"{base}/{_q(args.id)}/rotate", body)
    human = shown_once(
        f"✓ Token rotated: {data['id']} replaces {data['replaces']}.",
        [
            *_created_fields(data),
            ("Old token", _retirement(data["replaces"], data.get("replaced_revoked_at"))),
            ("Token", data["token"]),
        ],
        _scope_warnings(data),
    )
    emit(data, args.json, human)


def token_list(client: AdminClient, base: str, args: argparse.Namespace) -> None:
    query = {
        "status": args.status,
        "expiring_within": args.expiring_within,
        "service_account": args.service_account,
    }
    data = client.pages(base, "tokens", query, args.limit)
    emit(data, args.json, token_rows(data["tokens"]) if data["tokens"] else "no tokens")


def token_get(client: AdminClient, base: str, args: argparse.Namespace) -> None:
    data = client.call("GET", f"{base}/{_q(args.id)}")
    emit(data, args.json, token_rows([data]) + revocation_lines(data))


def _token_state_change(verb: str) -> TeamAction:
    """`token revoke` and `token restore`: POST …/tokens/{id}/{verb}, print the new state."""

    def run(client: AdminClient, base: str, args: argparse.Namespace) -> None:
        reason = getattr(args, "reason", None)
        body = {"reason": reason} if reason is not None else None
        data = client.call("POST", f"{base}/{_q(args.id)}/{verb}", body)
        emit(data, args.json, f"✓ Token {data['name']!r} ({data['id']}) has been {verb}d.")

    return run


def token_update(client: AdminClient, base: str, args: argparse.Namespace) -> None:
    body = {k: v for k, v in (("name", args.name), ("description", args.description)) if v is not None}
    if not body:
        raise CliError("nothing to update: give --name and/or --description")
    data = client.call("PATCH", f"{base}/{_q(args.id)}", body)
    emit(data, args.json, f"✓ Token {data['id']} updated: name {data['name']!r}.")


def _deleter(noun: str, key: str) -> TeamAction:
    """`token delete ID` and `sa delete NAME`: DELETE …/{key}, 204 on success."""

    def run(client: AdminClient, base: str, args: argparse.Namespace) -> None:
        value = getattr(args, key)
        client.call("DELETE", f"{base}/{_q(value)}")
        emit({key: value, "deleted": True}, args.json, f"✓ {noun} {value} deleted.")

    return run


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise CliError(f"--constraint {text!r}: expected NAME=VALUE")
    return key, value


def sa_create(client: AdminClient, base: str, args: argparse.Namespace) -> None:
    data = client.call("POST", base, _body(name=args.name, description=args.description))
    emit(data, args.json, f"✓ Service account {data['name']!r} created in team {data['team']!r}.")


def sa_list(client: AdminClient, base: str, args: argparse.Namespace) -> None:
    data = client.pages(base, "service_accounts", limit=args.limit)
    rows = [
        [
            sa["name"],
            _or_dash(sa.get("description")),
            f"{sa['active_tokens']}{'' if sa.get('active_tokens_exact', True) else '+'}",
            humanize_date(sa["created_at"]),
        ]
        for sa in data["service_accounts"]
    ]
    emit(
        data,
        args.json,
        table(["NAME", "DESCRIPTION", "ACTIVE TOKENS", "CREATED"], rows) if rows else "no service accounts",
    )


# -- commands: audit and leaks -----------------------------------------------------------------
def _step_reason(event: dict[str, Any]) -> str:
    step, reason = event.get("step"), event.get("reason")
    if step and reason:
        return f"{step}: {reason}"
    return _or_dash(step or reason)


def cmd_audit(args: argparse.Namespace) -> None:
    query = {
        "token_id": args.token_id,
        "team": args.team,
        "action": args.event_action,
        "since": args.since,
        "until": args.until,
    }
    if args.limit is not None and not 1 <= args.limit <= AUDIT_PAGE_SIZE:
        raise CliError(f"--limit: expected 1..{AUDIT_PAGE_SIZE}")
    # a filtered page may hold fewer events than asked for: follow `next` up to the limit
    data = AdminClient.from_env().pages(
        "/v1/audit", "events", query, args.limit or 100, page_size=AUDIT_PAGE_SIZE
    )
    rows = [
        [
            humanize_date(e.get("time"), seconds=True) if e.get("time") else "-",
            _or_dash(e.get("action")),
            _or_dash(e.get("token_id")),
            _or_dash(e.get("team")),
            _or_dash(e.get("status")),
            _step_reason(e),
        ]
        for e in data["events"]
    ]
    emit(
        data,
        args.json,
        table(["TIME", "ACTION", "TOKEN", "TEAM", "STATUS", "STEP/REASON"], rows) if rows else "no events",
    )


LEAK_RESULTS = {
    "revoked": "it stops working now",
    "already_revoked": "it was already revoked as leaked",
    "unknown": "no such token here, or the secret does not match",
    "not_a_token": "bad format or checksum",
    "throttled": "not checked: too many failed verifications right now; report it again",
}
LEAKS_PER_CALL = 100
LEAK_RETRIES = 5


def cmd_leaks(args: argparse.Namespace) -> None:
    tokens: list[str] = []
    for arg in args.tokens:
        tokens += sys.stdin.read().split() if arg == "-" else [arg]
    if not tokens:
        raise CliError("no tokens given (pass them as arguments, or '-' to read them from stdin)")
    client = AdminClient.from_env()
    results: list[dict[str, Any]] = []
    for start in range(0, len(tokens), LEAKS_PER_CALL):
        chunk = tokens[start : start + LEAKS_PER_CALL]
        answers = client.call("POST", "/v1/leaks", {"tokens": chunk})["results"]
        for _ in range(LEAK_RETRIES):  # the server's failure throttle deferred some: again
            again = [i for i, r in enumerate(answers) if r["result"] == "throttled"]
            if not again:
                break
            time.sleep(1)
            retried = client.call("POST", "/v1/leaks", {"tokens": [chunk[i] for i in again]})["results"]
            for i, r in zip(again, retried, strict=True):
                answers[i] = r
        results += answers
    emit(
        {"results": results},
        args.json,
        "\n".join(f"{r['token']}: {r['result']} ({LEAK_RESULTS.get(r['result'], '-')})" for r in results),
    )


def cmd_whoami(args: argparse.Namespace) -> None:
    data = AdminClient.from_env().whoami()
    emit(
        data,
        args.json,
        table(
            ["ID", "NAME", "ORG", "TEAM", "EFFECTIVE SCOPES", "EXPIRES"],
            [
                [
                    data["id"],
                    data["name"],
                    data["org"],
                    data["team"] or "(org)",
                    ", ".join(data["effective_scopes"]),
                    humanize_date(data["expires_at"]),
                ]
            ],
        ),
    )


# -- server-side commands ----------------------------------------------------------------------
def _settings(path: str) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(1) from None


def cmd_serve(args: argparse.Namespace) -> None:
    from tokenward.gateway.logs import configure_logging
    from tokenward.server import run
    from tokenward.supervisor import supervise

    settings = _settings(args.config)
    configure_logging(settings.log)
    if args.workers > 1:
        supervise(settings, args.config, args.workers, drain=args.drain_timeout)
    else:
        run(settings, config_path=args.config, drain=args.drain_timeout)


def cmd_config(args: argparse.Namespace) -> None:
    from tokenward.gateway.explain import config_warnings

    settings = _settings(args.file)
    for warning in config_warnings(settings):
        print(f"warning: {printable(warning)}", file=sys.stderr)
    print(f"{args.file}: ok ({len(settings.routes)} routes, {len(settings.upstreams)} upstreams)")


def cmd_explain(args: argparse.Namespace) -> None:
    from tokenward.gateway.explain import explain_route, explain_token
    from tokenward.gateway.logs import configure_logging

    settings = _settings(args.config)
    configure_logging(LogSettings(level="warning", format=settings.log.format), sys.stderr)
    lines, match = explain_route(settings, args.method, args.path)
    if match is not None and args.token:
        lines += asyncio.run(explain_token(settings, match, args.token))
    print(printable(f"{args.method.upper()} {args.path}"))
    for line in lines:
        print(f"  {printable(line)}")
    denied = match is None or any(
        line.startswith("decision: 4") or line.startswith("decision: 5") for line in lines
    )
    raise SystemExit(1 if denied else 0)


def cmd_bootstrap(args: argparse.Namespace) -> None:
    import re

    from tokenward.gateway.logs import configure_logging
    from tokenward.gateway.text import unprintable
    from tokenward.schema import SLUG

    if not re.fullmatch(SLUG, args.org):
        fail(f"--org: {args.org!r} is not an org slug ({SLUG})")
    if not args.name or (problem := unprintable(args.name)) is not None:
        fail(f"--name: {problem or 'must not be empty'}")
    settings = _settings(args.config)
    configure_logging(LogSettings(level="warning", format=settings.log.format), sys.stderr)
    token, key_id = asyncio.run(_bootstrap(settings, args.org, args.name))
    if args.json:
        sys.stdout.write(orjson.dumps({"id": key_id, "token": token, "org": args.org}).decode() + "\n")
    else:
        print(shown_once(f"✓ Org admin token for {args.org!r} created.", [("ID", key_id), ("Token", token)]))


async def _bootstrap(settings: Settings, org: str, name: str) -> tuple[str, str]:
    from tokenward.api import issue_token
    from tokenward.gateway.records import TokenRecord
    from tokenward.gateway.runtime import Runtime
    from tokenward.gateway.scopes import parse_scopes
    from tokenward.gateway.store import AuditEntry

    runtime = await Runtime.open(settings)
    fields: dict[str, Any] = {}

    def created_event(record: TokenRecord) -> AuditEntry:
        # written with the token itself: an org-admin token never exists without its event
        fields.update(
            actor_id="bootstrap",
            org=org,
            team=None,
            token_id=record.id,
            token_name=record.name,
            scopes=["admin:org"],
        )
        event = {**fields, "action": "token.created", "ts": time.time()}
        return AuditEntry(orjson.dumps(event), runtime.audit.stream_maxlen)

    try:
        token, record = await issue_token(
            runtime,
            org=org,
            team=None,
            name=name,
            scopes=parse_scopes(["admin:org"]),
            created_by="bootstrap",
            audit=created_event,
        )
        runtime.audit.emit("token.created", in_stream=True, **fields)
        return token, record.id
    finally:
        await runtime.close()


def cmd_demo(args: argparse.Namespace) -> None:
    from tokenward.demo import run_demo
    from tokenward.gateway.logs import configure_logging

    configure_logging(LogSettings(level=args.log_level, format="auto"), sys.stderr)
    try:
        asyncio.run(
            run_demo(Path(args.data_dir), args.port, args.admin_port, args.upstream_port, once=args.once)
        )
    except KeyboardInterrupt:
        pass


# -- parser ------------------------------------------------------------------------------------
def _version() -> str:
    """The installed distribution's version (pyproject.toml's, through the package metadata)."""
    try:
        return importlib.metadata.version("tokenward")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenward", description="Service-token authentication gateway")
    parser.add_argument("--version", action="version", version=f"tokenward {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway and the admin API")
    serve.add_argument("--config", required=True)
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the ports (SO_REUSEPORT)")
    serve.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long requests in flight may finish (default 30)",
    )
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="embedded store + sample upstream + printed tokens")
    demo.add_argument("--data-dir", default=".tokenward/demo")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--admin-port", type=int, default=8081)
    demo.add_argument("--upstream-port", type=int, default=9000)
    demo.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    demo.add_argument("--once", action="store_true", help="print and exit (for tests)")
    demo.set_defaults(func=cmd_demo)

    config = sub.add_parser("config", help="check a config file")
    config_sub = config.add_subparsers(dest="action", required=True)
    check = config_sub.add_parser("check", help="list every problem with its location")
    check.add_argument("file")
    check.set_defaults(func=cmd_config)
    explain = config_sub.add_parser(
        "explain", help="which route, scopes and upstream; with --token, which step fails"
    )
    explain.add_argument("method")
    explain.add_argument("path")
    explain.add_argument("--config", default=os.environ.get("TOKENWARD_CONFIG", "tokenward.yaml"))
    explain.add_argument("--token", default=None, help="a token to run the decision for (reads the store)")
    explain.set_defaults(func=cmd_explain)

    admin = sub.add_parser("admin", help="store-side administration")
    admin_sub = admin.add_subparsers(dest="action", required=True)
    boot = admin_sub.add_parser("bootstrap", help="print a first org-admin token, once")
    boot.add_argument("--config", required=True)
    boot.add_argument("--org", required=True)
    boot.add_argument("--name", default="org-admin")
    boot.add_argument("--json", action="store_true")
    boot.set_defaults(func=cmd_bootstrap)

    def managed(name: str, help_text: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        p = sub.add_parser(name, help=help_text)
        return p.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser, team: bool = True) -> argparse.ArgumentParser:
        p.add_argument("--org", help="org slug (default: the calling token's org)")
        if team:
            p.add_argument("--team", help="team slug (default: the calling token's team)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    team = managed("team", "manage teams")
    p = common(team.add_parser("create"), team=False)
    p.add_argument("name")
    p.add_argument("--permissions", default="", help="comma-separated scopes")
    p = common(team.add_parser("list"), team=False)
    p.add_argument("--limit", type=_positive, help="at most this many teams (default: all)")
    p = common(team.add_parser("get"), team=False)
    p.add_argument("name")
    p = common(team.add_parser("set-permissions"), team=False)
    p.add_argument("name")
    p.add_argument("--permissions", required=True, help="comma-separated scopes")
    for p in team.choices.values():
        p.set_defaults(func=cmd_team)

    def scoped(
        sub_parsers: argparse._SubParsersAction[argparse.ArgumentParser],
        collection: str,
        name: str,
        run: TeamAction,
        help_text: str,
    ) -> argparse.ArgumentParser:
        p = common(sub_parsers.add_parser(name, help=help_text))
        p.set_defaults(func=cmd_team_scoped, collection=collection, run=run)
        return p

    def expiry(p: argparse.ArgumentParser) -> None:
        p.add_argument("--expires-in", help="e.g. 30d")
        p.add_argument("--expires-at", help="RFC 3339 time")

    tok = managed("token", "manage service tokens")
    p = scoped(tok, "tokens", "create", token_create, "issue a token (the plaintext is shown once)")
    p.add_argument("--name", required=True)
    p.add_argument("--scopes", required=True, help="comma-separated, e.g. read:apis,write:specs")
    p.add_argument("--description")
    expiry(p)
    p.add_argument("--service-account")
    p.add_argument("--constraint", action="append", help="NAME=VALUE, e.g. project=web")
    p.add_argument("--allow-cidr", action="append", help="client CIDR allowed to use the token")
    p = scoped(tok, "tokens", "list", token_list, "list a team's tokens")
    p.add_argument("--status", choices=["active", "revoked", "expired"])
    p.add_argument("--expiring-within", metavar="DURATION", help="active tokens expiring within, e.g. 7d")
    p.add_argument("--service-account", metavar="NAME", help="only this service account's tokens")
    p.add_argument("--limit", type=_positive, help="at most this many tokens (default: all, page by page)")
    for name, run, help_text in (
        ("get", token_get, "show one token"),
        ("revoke", _token_state_change("revoke"), "revoke a token (its next request gets 401)"),
        ("restore", _token_state_change("restore"), "restore a revoked, unexpired token"),
        ("delete", _deleter("Token", "id"), "delete a revoked or expired token"),
        (
            "rotate",
            token_rotate,
            "issue a replacement and revoke the old token (now or after a grace period)",
        ),
        ("update", token_update, "rename or re-describe a token"),
    ):
        p = scoped(tok, "tokens", name, run, help_text)
        p.add_argument("id")
    rotate, update = tok.choices["rotate"], tok.choices["update"]
    tok.choices["revoke"].add_argument(
        "--reason", help="why (shown in views and audit; 'leaked' makes it final: no restore)"
    )
    rotate.add_argument(
        "--grace-period", metavar="DURATION", help="keep the old token working this long, e.g. 1h"
    )
    expiry(rotate)
    update.add_argument("--name")
    update.add_argument("--description")

    sa = managed("sa", "manage service accounts")
    p = scoped(sa, "service-accounts", "create", sa_create, "create a service account")
    p.add_argument("name")
    p.add_argument("--description")
    p = scoped(sa, "service-accounts", "list", sa_list, "list service accounts and their active tokens")
    p.add_argument("--limit", type=_positive, help="at most this many service accounts (default: all)")
    p = scoped(
        sa,
        "service-accounts",
        "delete",
        _deleter("Service account", "name"),
        "delete one without active tokens",
    )
    p.add_argument("name")

    audit = sub.add_parser("audit", help="recent audit events of the caller's org, newest first")
    audit.add_argument("--token-id")
    audit.add_argument("--team")
    audit.add_argument("--action", dest="event_action", help="e.g. token.created, request.denied")
    audit.add_argument("--since", help="a duration ago (1h) or an RFC 3339 time")
    audit.add_argument("--until", help="a duration ago (10m) or an RFC 3339 time")
    audit.add_argument("--limit", type=int, help="at most this many events (1..1000, default 100)")
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    audit.set_defaults(func=cmd_audit)

    leaks = sub.add_parser("leaks", help="report leaked tokens")
    leaks_sub = leaks.add_subparsers(dest="action", required=True)
    report = leaks_sub.add_parser("report", help="revoke each valid token given, from any team")
    report.add_argument(
        "tokens", nargs="+", metavar="TOKEN", help="plaintext tokens, or - to read them from stdin"
    )
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.set_defaults(func=cmd_leaks)

    who = sub.add_parser("whoami", help="show the calling token")
    who.add_argument("--json", action="store_true")
    who.set_defaults(func=cmd_whoami)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CliError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":  # `python -m tokenward.cli`, as `python -m tokenward`
    main()
