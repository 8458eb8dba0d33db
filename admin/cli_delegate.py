"""`tokenward token delegate`: mint a child token of the calling token (TOKENWARD_TOKEN, which
must hold the capability `delegate`) for one agent run, through `POST /v1/delegate`."""

from __future__ import annotations

import argparse
from typing import Any

from tokenward.cli_client import AdminClient
from tokenward.cli_output import CliError, emit, humanize_date, shown_once


def add_delegate_command(tokens: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = tokens.add_parser(
        "delegate", help="mint a short-lived child of the calling token (TOKENWARD_TOKEN) for one agent run"
    )
    p.add_argument("--scopes", required=True, help="comma-separated, within the calling token's, e.g. read:apis")
    p.add_argument("--ttl", help="how long it lives, e.g. 15m (the default), 2h; never past the parent")
    p.add_argument("--max-uses", type=int, metavar="N", help="a budget of requests")
    p.add_argument("--run-id", help="the agent run: in audit events and X-Tokenward-Run-Id")
    p.add_argument("--name", help="default: the parent's name and the run id")
    p.add_argument("--allow-cidr", action="append", help="client CIDR, inside the parent's (default: the parent's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_delegate)


def delegate_body(args: argparse.Namespace) -> dict[str, Any]:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    if not scopes:
        raise CliError("--scopes: give at least one scope, e.g. --scopes read:apis")
    body: dict[str, Any] = {"scopes": scopes}
    for key, value in (
        ("ttl", args.ttl),
        ("max_uses", args.max_uses),
        ("run_id", args.run_id),
        ("name", args.name),
        ("allowed_cidrs", list(args.allow_cidr) if args.allow_cidr else None),
    ):
        if value is not None:
            body[key] = value
    return body


def cmd_delegate(args: argparse.Namespace) -> None:
    data = AdminClient.from_env().call("POST", "/v1/delegate", delegate_body(args))
    fields = [
        ("ID", data["id"]),
        ("Parent", data["parent_id"]),
        ("Scopes", ", ".join(data["scopes"])),
        ("Expires", humanize_date(data.get("expires_at"), seconds=True)),
    ]
    if data.get("run_id"):
        fields.append(("Run", data["run_id"]))
    if data.get("max_uses") is not None:
        fields.append(("Max uses", str(data["max_uses"])))
    fields.append(("Token", data["token"]))
    note = "It stops working when its parent (or any ancestor) is revoked, expires or is deleted."
    emit(data, args.json, shown_once("✓ Child token minted.", fields, [note]))
