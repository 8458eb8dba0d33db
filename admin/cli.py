"""The `tokenward` command line.

Server-side commands (`serve`, `demo`, `config check`, `admin bootstrap`) read the config;
management commands (`team`, `sa`, `token`, `audit`, `leaks`, `whoami`) talk to the admin API at
`TOKENWARD_ADMIN_URL` with `TOKENWARD_TOKEN`. Tables for people, `--json` for scripts;
an error is one line on stderr and a non-zero exit.

Here the argument parser and `main`; the commands are in `cli_manage` (admin API) and
`cli_server` (config and store), the admin API client in `cli_client`, the output in `cli_output`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from tokenward import version
from tokenward.cli_accounts import add_sa_commands
from tokenward.cli_delegate import add_delegate_command
from tokenward.cli_import import add_import_options, add_metadata_options, token_import
from tokenward.cli_limits import add_limit_options
from tokenward.cli_manage import (
    TeamAction,
    _deleter,
    _positive,
    _token_state_change,
    cmd_audit,
    cmd_leaks,
    cmd_team,
    cmd_team_scoped,
    cmd_whoami,
    token_create,
    token_get,
    token_list,
    token_rotate,
    token_update,
)
from tokenward.cli_output import CliError, fail
from tokenward.cli_server import (
    CONFIG_HELP,
    cmd_bootstrap,
    cmd_config,
    cmd_demo,
    cmd_explain,
    cmd_schema,
    cmd_serve,
)
from tokenward.cli_usage import token_usage
from tokenward.completion import SHELLS, completion_script
from tokenward.gateway.redaction import redact_token_shaped
from tokenward.gateway.text import printable


# -- parser ------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (issue 14, item 11): `tokenward token create: error:
    the following arguments are required: --name (see tokenward token create --help)`, exit 2.
    Subcommand parsers are of the same class (argparse makes them with `type(parent)`)."""

    def error(self, message: str) -> NoReturn:
        line = " ".join(f"{self.prog}: error: {message} (see {self.prog} --help)".split())
        self.exit(2, printable(redact_token_shaped(line)) + "\n")  # a pasted token: not echoed


def build_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = Parser(prog="tokenward", description="Service-token authentication gateway")
    parser.add_argument("--version", action="version", version=f"tokenward {version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway and the admin API")
    serve.add_argument("--config", help=CONFIG_HELP)
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
    check.add_argument("file", nargs="?", help="the config file (else --config)")
    check.add_argument("--config", help=CONFIG_HELP)
    check.set_defaults(func=cmd_config)
    schema = config_sub.add_parser("schema", help="print the config file's JSON Schema")
    schema.set_defaults(func=cmd_schema)
    explain = config_sub.add_parser(
        "explain", help="which route, scopes and upstream; with --token, which step fails"
    )
    explain.add_argument("method")
    explain.add_argument("path")
    explain.add_argument("--config", help=CONFIG_HELP)
    explain.add_argument("--token", default=None, help="a token to run the decision for (reads the store)")
    explain.set_defaults(func=cmd_explain)

    admin = sub.add_parser("admin", help="store-side administration")
    admin_sub = admin.add_subparsers(dest="action", required=True)
    boot = admin_sub.add_parser("bootstrap", help="print a first org-admin token, once")
    boot.add_argument("--config", help=CONFIG_HELP)
    boot.add_argument("--org", required=True)
    boot.add_argument("--name", default="org-admin")
    boot.add_argument(
        "--expires-in",
        metavar="DURATION",
        help="the token's lifetime, as for token create (e.g. 30d); default: it never expires",
    )
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
    p = common(team.add_parser("set-rate-limits", help="limits all the team's tokens share (none: remove)"), team=False)
    p.add_argument("name")
    p.add_argument("--rate-limit", action="append", metavar="NAME=LIMIT/PER", help="e.g. team=100/1s (repeatable)")
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
        p.add_argument("--expires-in", help="e.g. 30d, 12h, or 90 (days)")
        p.add_argument("--expires-at", help="a date, 2027-01-01 (00:00 UTC), or an RFC 3339 time")

    tok = managed("token", "manage service tokens")
    p = scoped(tok, "tokens", "create", token_create, "issue a token (the plaintext is shown once)")
    p.add_argument("--name", required=True)
    p.add_argument("--scopes", required=True, help="comma-separated, e.g. read:apis,write:specs")
    p.add_argument("--description")
    expiry(p)
    p.add_argument("--service-account")
    p.add_argument("--constraint", action="append", help="NAME=VALUE, e.g. project=web")
    p.add_argument("--allow-cidr", action="append", help="client CIDR allowed to use the token")
    p.add_argument("--environment", choices=["live", "test"], help="live (default) or test: shown in the prefix")
    add_metadata_options(p)
    add_limit_options(p)
    p = scoped(tok, "tokens", "import", token_import, "import a key from an old system (read from stdin)")
    p.add_argument("--name", required=True)
    p.add_argument("--scopes", required=True, help="comma-separated, e.g. read:apis,write:specs (no admin:team)")
    p.add_argument("--description")
    expiry(p)
    add_import_options(p)
    p = scoped(
        tok, "tokens", "list", token_list, "list a team's tokens (an org admin without --team: the whole org's)"
    )
    p.add_argument("--environment", choices=["live", "test"], help="only live or only test tokens")
    p.add_argument("--status", choices=["active", "grace", "revoked", "expired"])
    p.add_argument("--expiring-within", metavar="DURATION", help="active tokens expiring within, e.g. 7d (a bare number is days: 14 = 14d)")
    p.add_argument("--service-account", metavar="NAME", help="only this service account's tokens")
    p.add_argument("--limit", type=_positive, help="at most this many tokens (default: all, page by page)")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="only tokens with this metadata")
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
    p = scoped(tok, "tokens", "usage", token_usage, "requests by day and route, refusals, unused scopes")
    p.add_argument("id")
    p.add_argument("--days", type=_positive, help="the window: the last N days, 1..90 (default 30)")
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
    update.add_argument("--scopes", help=argparse.SUPPRESS)  # refused: rotate instead
    add_metadata_options(update)  # replaces the token's whole metadata
    add_delegate_command(tok)  # child tokens: the calling token is the parent

    add_sa_commands(sub, common)

    audit = sub.add_parser("audit", help="recent audit events of the caller's org, newest first")
    audit.add_argument("--token-id")
    audit.add_argument("--team")
    audit.add_argument("--service-account", help="a service account's events (name, former name or id)")
    audit.add_argument("--action", dest="event_action", help="e.g. token.created, request.denied")
    audit.add_argument("--since", help="a duration ago (1h) or an RFC 3339 time")
    audit.add_argument("--until", help="a duration ago (10m) or an RFC 3339 time")
    audit.add_argument("--limit", type=int, help="at most this many events (1..1000, default 100)")
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    audit.set_defaults(func=cmd_audit)

    leaks = sub.add_parser("leaks", help="report leaked tokens")
    leaks_sub = leaks.add_subparsers(dest="action", required=True)
    report = leaks_sub.add_parser(
        "report", help="revoke each valid token given or found in any text, from any team"
    )
    report.add_argument(
        "tokens",
        nargs="*",
        metavar="TOKEN",
        help="plaintext tokens, or - to scan stdin for them (a log, a diff, JSON: any text)",
    )
    report.add_argument("--file", action="append", help="scan this file for tokens (repeatable)")
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.set_defaults(func=cmd_leaks)

    who = sub.add_parser("whoami", help="show the calling token")
    who.add_argument("--json", action="store_true")
    who.set_defaults(func=cmd_whoami)

    completion = sub.add_parser("completion", help="print a shell completion script (bash, zsh or fish)")
    completion.add_argument("shell", choices=SHELLS)
    completion.set_defaults(func=cmd_completion)
    return parser


def cmd_completion(args: argparse.Namespace) -> None:
    """The completion script for `args.shell`, generated from this very parser."""
    sys.stdout.write(completion_script(build_parser(), args.shell))


def main(argv: Sequence[str] | None = None) -> None:
    try:
        args = build_parser().parse_args(_options_after_command(sys.argv[1:] if argv is None else list(argv)))
        args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except CliError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:
        quiet_broken_pipe()


def _options_after_command(argv: list[str]) -> list[str]:
    """`tokenward --json token list` as `tokenward token list --json`: `--json` is an option of
    each command, and users put it first too."""
    if "--json" not in argv:
        return argv
    first = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), len(argv))
    if "--json" not in argv[:first]:
        return argv
    return [arg for arg in argv[:first] if arg != "--json"] + argv[first:] + ["--json"]


def quiet_broken_pipe() -> NoReturn:
    """The reader went away (`tokenward token list | head -1`): stop quietly, as coreutils do
    (exit 141, 128 + SIGPIPE), with no traceback and no "Exception ignored" at exit (stdout is
    pointed at /dev/null, so the interpreter's last flush has nowhere to fail)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    raise SystemExit(141)


if __name__ == "__main__":  # `python -m tokenward.cli`, as `python -m tokenward`
    main()
