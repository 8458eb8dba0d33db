"""The management commands (`team`, `token`, `sa`, `audit`, `leaks`, `whoami`): each one
calls the admin API at `TOKENWARD_ADMIN_URL` with `TOKENWARD_TOKEN` and prints the answer."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from tokenward.cli_client import AUDIT_PAGE_SIZE, AdminClient, _org_team, _q, _split
from tokenward.cli_output import (
    CliError,
    _or_dash,
    _span,
    _timestamp,
    emit,
    humanize_date,
    revocation_lines,
    shown_once,
    table,
    token_rows,
)


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
        "service_account": args.service_account,
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
