"""The server-side commands (`serve`, `demo`, `config check|explain`, `admin bootstrap`):
they read the config and work on the store or the processes directly."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from tokenward.cli_output import fail, shown_once
from tokenward.gateway.settings import ConfigError, LogSettings, Settings, load_settings
from tokenward.gateway.text import printable

if TYPE_CHECKING:
    from tokenward.rules import Lifetime

CONFIG_ENV = "TOKENWARD_CONFIG"
DEFAULT_CONFIG = "tokenward.yaml"
CONFIG_HELP = f"the config file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG})"


def config_path(args: argparse.Namespace) -> str:
    """The config file a command reads: `--config` (or `config check FILE`) wins, then
    TOKENWARD_CONFIG, then ./tokenward.yaml."""
    given = getattr(args, "file", None) or args.config or os.environ.get(CONFIG_ENV)
    if given:
        return str(given)
    if not Path(DEFAULT_CONFIG).exists():
        fail(f"no config: give --config FILE or set {CONFIG_ENV} (./{DEFAULT_CONFIG} does not exist)")
    return DEFAULT_CONFIG


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

    path = config_path(args)
    settings = _settings(path)
    configure_logging(settings.log)
    if args.workers > 1:
        supervise(settings, path, args.workers, drain=args.drain_timeout)
    else:
        run(settings, config_path=path, drain=args.drain_timeout)


def cmd_config(args: argparse.Namespace) -> None:
    from tokenward.gateway.explain import config_warnings

    path = config_path(args)
    settings = _settings(path)
    for warning in config_warnings(settings):
        print(f"warning: {printable(warning)}", file=sys.stderr)
    print(f"{path}: ok ({len(settings.routes)} routes, {len(settings.upstreams)} upstreams)")


def cmd_schema(args: argparse.Namespace) -> None:
    from tokenward.gateway.config_schema import schema_json

    sys.stdout.write(schema_json())


def cmd_explain(args: argparse.Namespace) -> None:
    from tokenward.gateway.explain import explain_route, explain_token
    from tokenward.gateway.logs import configure_logging

    settings = _settings(config_path(args))
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
        fail(
            f"--org: {args.org!r} is not an org name: lower-case letters, digits and '-', starting with"
            " a letter or digit, at most 63 characters (e.g. acme, acme-eu)"
        )
    if not args.name or (problem := unprintable(args.name)) is not None:
        fail(f"--name: {problem or 'must not be empty'}")
    settings = _settings(config_path(args))
    configure_logging(LogSettings(level="warning", format=settings.log.format), sys.stderr)
    from tokenward.rules import Invalid, Lifetime

    lifetime = Lifetime(expires_in=args.expires_in) if args.expires_in is not None else None
    try:
        token, key_id, expires_at, others = asyncio.run(_org_admin_token(settings, args.org, args.name, lifetime))
    except Invalid as exc:
        fail(f"--{exc.message.replace('_', '-', 1)}" if exc.field == "expires_in" else exc.message)
    if args.json:
        data = {"id": key_id, "token": token, "org": args.org, "expires_at": expires_at}
        sys.stdout.write(orjson.dumps(data).decode() + "\n")
    else:
        # a token that never expires says how it ends: by id, as every org token (issue 14, item 1)
        never = f"never (revoke it when done: tokenward token revoke {key_id}; or --expires-in 30d)"
        fields = [("ID", key_id), ("Expires", expires_at.replace("T", " ") if expires_at else never), ("Token", token)]
        print(shown_once(f"✓ Org admin token for {args.org!r} created.", fields))
    if others:  # every bootstrap adds one: say how many are live already, and how to end them
        noun = "token" if others == 1 else "tokens"
        print(
            f"note: org {args.org!r} has {others} other active org admin {noun}: `tokenward token list`"
            " shows them (TEAM (org)); `tokenward token revoke ID` ends one",
            file=sys.stderr,
        )


async def _bootstrap(
    settings: Settings, org: str, name: str, lifetime: Lifetime | None = None
) -> tuple[str, str]:
    """(plaintext, id) of a new org-admin token (see `_org_admin_token`)."""
    token, key_id, _, _ = await _org_admin_token(settings, org, name, lifetime)
    return token, key_id


async def _org_admin_token(
    settings: Settings, org: str, name: str, lifetime: Lifetime | None
) -> tuple[str, str, str | None, int]:
    """The first org-admin token, issued through the token service by the operator at the
    server: its `token.created` event is written with the token itself (an org-admin token
    never exists without its event), like every token the admin API issues. `lifetime`
    None: it never expires. (plaintext, id, expires_at, how many other org-level tokens of
    the org are active: at most the first 1000 are looked at)."""
    from tokenward.actor import Actor
    from tokenward.gateway.records import ACTIVE
    from tokenward.gateway.runtime import Runtime
    from tokenward.rules import iso
    from tokenward.service import TokenService

    runtime = await Runtime.open(settings)
    try:
        token, record = await TokenService(runtime).issue(
            Actor("bootstrap"), org=org, team=None, name=name, scopes=["admin:org"], lifetime=lifetime
        )
        others = 0
        for other in (await runtime.store.list_token_ids(org, None))[:1000]:
            found = await runtime.store.get_token(other) if other != record.id else None
            others += found is not None and found.status() == ACTIVE
        return token, record.id, iso(record.expires_at), others
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
