"""The `tokenward` command line.

Server-side commands (`serve`, `demo`, `config check`, `admin bootstrap`) read the config;
management commands (`team`, `sa`, `token`, `whoami`) talk to the admin API at
`TOKENWARD_ADMIN_URL` with `TOKENWARD_TOKEN`. Tables for people, `--json` for scripts;
an error is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import orjson

from gateway.settings import ConfigError, LogSettings, Settings, load_settings

DEFAULT_ADMIN_URL = "http://127.0.0.1:8081"


class CliError(Exception):
    pass


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


# -- formatting ------------------------------------------------------------------------------
def humanize_ago(iso_time: str | None, now: float | None = None) -> str:
    if not iso_time:
        return "never"
    seconds = max(0.0, (now or time.time()) - datetime.fromisoformat(iso_time).timestamp())
    for size, unit in (
        (86400 * 365, "year"),
        (86400 * 30, "month"),
        (86400, "day"),
        (3600, "hour"),
        (60, "minute"),
    ):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"


def humanize_date(iso_time: str | None) -> str:
    if not iso_time:
        return "never"
    return iso_time.replace("T", " ").replace("Z", "")[:16]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
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
                t["status"],
            ]
            for t in tokens
        ],
    )


def emit(data: Any, as_json: bool, human: str) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(human)


# -- admin API client ----------------------------------------------------------------------
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

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = orjson.dumps(body) if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - the URL is the operator's admin API
            self.base_url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = orjson.loads(raw).get("message", exc.reason)
            except orjson.JSONDecodeError:
                message = exc.reason
            raise CliError(f"{exc.code} {message}") from None
        except urllib.error.URLError as exc:
            raise CliError(f"cannot reach the admin API at {self.base_url}: {exc.reason}") from None
        return orjson.loads(raw) if raw else None

    def whoami(self) -> dict[str, Any]:
        return dict(self.call("GET", "/v1/whoami"))


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
        data = client.call("GET", base)
        emit(
            data,
            args.json,
            table(
                ["NAME", "PERMISSIONS", "CREATED"],
                [
                    [t["name"], ", ".join(t["permissions"]), humanize_date(t["created_at"])]
                    for t in data["teams"]
                ],
            ),
        )
    elif args.action == "get":
        data = client.call("GET", f"{base}/{_q(args.name)}")
        emit(
            data,
            args.json,
            table(
                ["NAME", "PERMISSIONS", "CREATED"],
                [[data["name"], ", ".join(data["permissions"]), humanize_date(data["created_at"])]],
            ),
        )
    elif args.action == "set-permissions":
        data = client.call(
            "PUT", f"{base}/{_q(args.name)}/permissions", {"permissions": _split(args.permissions)}
        )
        emit(
            data, args.json, f"✓ Team {data['name']!r} now has: {', '.join(data['permissions']) or '(none)'}"
        )


# -- commands: tokens ------------------------------------------------------------------------
def cmd_token(args: argparse.Namespace) -> None:
    client = AdminClient.from_env()
    org, team = _org_team(client, args)
    base = f"/v1/orgs/{org}/teams/{team}/tokens"
    if args.action == "create":
        body: dict[str, Any] = {"name": args.name, "scopes": _split(args.scopes)}
        if args.description:
            body["description"] = args.description
        if args.expires_in:
            body["expires_in"] = args.expires_in
        if args.expires_at:
            body["expires_at"] = args.expires_at
        if args.service_account:
            body["service_account"] = args.service_account
        if args.constraint:
            body["constraints"] = dict(_pair(c) for c in args.constraint)
        if args.allow_cidr:
            body["allowed_cidrs"] = list(args.allow_cidr)
        data = client.call("POST", base, body)
        human = (
            f"✓ Token created successfully!\n\n"
            f"  ID:      {data['id']}\n  Name:    {data['name']}\n"
            f"  Scopes:  {', '.join(data['scopes'])}\n"
            f"  Expires: {humanize_date(data['expires_at'])}\n"
            f"  Token:   {data['token']}\n"
        )
        if data.get("ineffective_scopes"):
            human += f"\n  ⚠ The team does not hold: {', '.join(data['ineffective_scopes'])} (they grant nothing)\n"
        human += "\n  ⚠ Copy this token now — it will not be shown again."
        emit(data, args.json, human)
    elif args.action == "list":
        data = client.call("GET", base)
        emit(data, args.json, token_rows(data["tokens"]) if data["tokens"] else "no tokens")
    elif args.action == "get":
        data = client.call("GET", f"{base}/{_q(args.id)}")
        emit(data, args.json, token_rows([data]))
    elif args.action == "revoke":
        data = client.call("POST", f"{base}/{_q(args.id)}/revoke")
        emit(data, args.json, f"✓ Token {data['name']!r} ({data['id']}) has been revoked.")


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise CliError(f"--constraint {text!r}: expected NAME=VALUE")
    return key, value


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
    from gateway.audit import configure_logging
    from gateway.server import run

    settings = _settings(args.config)
    configure_logging(settings.log)
    run(settings)


def cmd_config(args: argparse.Namespace) -> None:
    settings = _settings(args.file)
    print(f"{args.file}: ok ({len(settings.routes)} routes, {len(settings.upstreams)} upstreams)")


def cmd_bootstrap(args: argparse.Namespace) -> None:
    from gateway.audit import configure_logging

    settings = _settings(args.config)
    configure_logging(LogSettings(level="warning", format=settings.log.format), sys.stderr)
    token, key_id = asyncio.run(_bootstrap(settings, args.org, args.name))
    if args.json:
        sys.stdout.write(orjson.dumps({"id": key_id, "token": token, "org": args.org}).decode() + "\n")
    else:
        print(
            f"✓ Org admin token for {args.org!r} created (id {key_id}).\n\n"
            f"  Token: {token}\n\n  ⚠ Copy this token now — it will not be shown again."
        )


async def _bootstrap(settings: Settings, org: str, name: str) -> tuple[str, str]:
    from admin.api import issue_token
    from gateway.app import Runtime
    from gateway.scopes import parse_scopes

    runtime = await Runtime.open(settings)
    try:
        token, record = await issue_token(
            runtime,
            org=org,
            team=None,
            name=name,
            scopes=parse_scopes(["admin:org"]),
            created_by="bootstrap",
        )
        runtime.audit.emit(
            "token.created",
            actor_id="bootstrap",
            org=org,
            team=None,
            token_id=record.id,
            token_name=record.name,
            scopes=["admin:org"],
        )
        return token, record.id
    finally:
        await runtime.close()


def cmd_demo(args: argparse.Namespace) -> None:
    from admin.demo import run_demo
    from gateway.audit import configure_logging

    configure_logging(LogSettings(level=args.log_level, format="auto"), sys.stderr)
    try:
        asyncio.run(
            run_demo(Path(args.data_dir), args.port, args.admin_port, args.upstream_port, once=args.once)
        )
    except KeyboardInterrupt:
        pass


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenward", description="Service-token authentication gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway and the admin API")
    serve.add_argument("--config", required=True)
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
    common(team.add_parser("list"), team=False)
    p = common(team.add_parser("get"), team=False)
    p.add_argument("name")
    p = common(team.add_parser("set-permissions"), team=False)
    p.add_argument("name")
    p.add_argument("--permissions", required=True, help="comma-separated scopes")
    for p in team.choices.values():
        p.set_defaults(func=cmd_team)

    tok = managed("token", "manage service tokens")
    p = common(tok.add_parser("create"))
    p.add_argument("--name", required=True)
    p.add_argument("--scopes", required=True, help="comma-separated, e.g. read:apis,write:specs")
    p.add_argument("--description")
    p.add_argument("--expires-in", help="e.g. 30d")
    p.add_argument("--expires-at", help="RFC 3339 time")
    p.add_argument("--service-account")
    p.add_argument("--constraint", action="append", help="NAME=VALUE, e.g. project=web")
    p.add_argument("--allow-cidr", action="append", help="client CIDR allowed to use the token")
    common(tok.add_parser("list"))
    for action in ("get", "revoke"):
        p = common(tok.add_parser(action))
        p.add_argument("id")
    for p in tok.choices.values():
        p.set_defaults(func=cmd_token)

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
