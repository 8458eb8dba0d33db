"""The management commands (`team`, `token`, `sa`, `audit`, `leaks`, `whoami`): each one
calls the admin API at `TOKENWARD_ADMIN_URL` with `TOKENWARD_TOKEN` and prints the answer."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tokenward.cli_client import AUDIT_PAGE_SIZE, AdminClient, _org_team, _q, _split
from tokenward.cli_import import metadata_lines, metadata_option
from tokenward.cli_limits import limit_body, set_holder_limits
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
from tokenward.cli_token_view import token_detail
from tokenward.cli_usage import usage_lines
from tokenward.gateway.text import printable
from tokenward.gateway.token_scan import scan_tokens
from tokenward.issuance import scope_losses


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
    elif args.action == "set-rate-limits":
        set_holder_limits(client, f"{base}/{_q(args.name)}/rate-limits", "Team", args)
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
    run: TeamAction = args.run
    if args.collection == "tokens" and args.team is None and args.action != "create":
        # without --team: an org-level caller (an org admin) acts on every token of its org by
        # id (`/v1/orgs/{org}/tokens`); a team token keeps its own team, as before
        me = client.whoami()
        if me.get("team") is None:
            run(client, f"/v1/orgs/{_q(args.org or me['org'])}/tokens", args)
            return
        args.team, args.org = me["team"], args.org or me["org"]
    org, team = _org_team(client, args)
    run(client, f"/v1/orgs/{org}/teams/{team}/{args.collection}", args)


def org_wide(base: str) -> bool:
    """`base` is the org-wide token collection (rows of several teams: a TEAM column)."""
    return "/teams/" not in base


def _body(**fields: Any) -> dict[str, Any]:
    """A request body without the options that were not given."""
    return {k: v for k, v in fields.items() if v not in (None, "", [], {})}


def _created_fields(data: dict[str, Any]) -> list[tuple[str, str]]:
    fields = [("ID", data["id"]), ("Name", data["name"]), ("Scopes", ", ".join(data["scopes"]))]
    if data.get("service_account"):
        fields.append(("Service account", data["service_account"]))
    fields.append(("Expires", humanize_date(data.get("expires_at"))))
    if data.get("environment"):
        fields.append(("Environment", data["environment"]))
    return fields


def _issuance_warnings(data: dict[str, Any]) -> None:
    """The API's `warnings` for a token just issued (scopes its team does not fully hold,
    constraints no route names), one `warning:` line each on stderr."""
    warnings = data.get("warnings")
    if warnings is None:  # an admin API from before `warnings`
        warnings = scope_losses(data.get("ineffective_scopes") or [], data.get("effective_scopes") or [])
    for warning in warnings:
        print(f"warning: {printable(str(warning))}", file=sys.stderr)


def token_create(client: AdminClient, base: str, args: argparse.Namespace) -> None:
    body = {"name": args.name, "scopes": _split(args.scopes)} | _body(
        description=args.description,
        expires_in=args.expires_in,
        expires_at=args.expires_at,
        service_account=args.service_account,
        constraints=dict(_pair(c) for c in args.constraint or ()),
        allowed_cidrs=list(args.allow_cidr or ()),
        environment=args.environment,
        metadata=metadata_option(args),
    ) | limit_body(args)
    data = client.call("POST", base, body)
    _issuance_warnings(data)
    human = shown_once("✓ Token created successfully!", [*_created_fields(data), ("Token", data["token"])])
    emit(data, args.json, human)


def _retirement(old_id: str, revoked_at: str | None) -> str:
    """When the replaced token stops working: now, or at the end of the grace period."""
    if revoked_at is None or _timestamp(revoked_at) <= time.time() + 1:
        return f"{old_id} is revoked: it stopped working now"
    left = _span(_timestamp(revoked_at) - time.time() + 30) or "less than a minute"
    return f"{old_id} keeps working until {humanize_date(revoked_at, seconds=True)} (about {left})"


def token_rotate(client: AdminClient, base: str, args: argparse.Namespace) -> None:
    body = _body(grace_period=args.grace_period, expires_in=args.expires_in, expires_at=args.expires_at)
    data = client.call("POST", f"{base}/{_q(args.id)}/rotate", body)
    _issuance_warnings(data)
    human = shown_once(
        f"✓ Token rotated: {data['id']} replaces {data['replaces']}.",
        [
            *_created_fields(data),
            ("Old token", _retirement(data["replaces"], data.get("replaced_revoked_at"))),
            ("Token", data["token"]),
        ],
    )
    emit(data, args.json, human)


def token_list(client: AdminClient, base: str, args: argparse.Namespace) -> None:
    query = {
        "status": args.status,
        "expiring_within": args.expiring_within,
        "service_account": args.service_account,
        "environment": args.environment,
        "metadata": list(args.metadata or ()) or None,
    }
    data = client.pages(base, "tokens", query, args.limit)
    rows = token_rows(data["tokens"], team=org_wide(base)) if data["tokens"] else "no tokens"
    emit(data, args.json, rows)


def token_get(client: AdminClient, base: str, args: argparse.Namespace) -> None:
    data = client.call("GET", f"{base}/{_q(args.id)}")
    usage = "" if args.json else usage_lines(client, base, args.id)
    emit(data, args.json, token_detail(data) + metadata_lines(data) + usage)


def _token_state_change(verb: str) -> TeamAction:
    """`token revoke` and `token restore`: POST …/tokens/{id}/{verb}, print the new state."""

    def run(client: AdminClient, base: str, args: argparse.Namespace) -> None:
        reason = getattr(args, "reason", None)
        body = {"reason": reason} if reason is not None else None
        data = client.call("POST", f"{base}/{_q(args.id)}/{verb}", body)
        emit(data, args.json, f"✓ Token {data['name']!r} ({data['id']}) has been {verb}d." + revocation_lines(data))

    return run


UPDATABLE = (("name", "renamed"), ("description", "description"), ("metadata", "metadata"))  # (field, what the message calls it)


def token_update(client: AdminClient, base: str, args: argparse.Namespace) -> None:
    if args.scopes is not None:
        raise CliError(
            f"scopes are fixed at issuance: rotate instead (`tokenward token rotate {args.id} ...`"
            " issues a replacement with the same scopes; issue a new token for other scopes)"
        )
    notes = metadata_option(args)
    body = {
        k: v
        for k, v in (("name", args.name), ("description", args.description), ("metadata", notes))
        if v is not None
    }
    if not body:
        raise CliError("nothing to update: give --name, --description and/or --metadata")
    before = client.call("GET", f"{base}/{_q(args.id)}")
    data = client.call("PATCH", f"{base}/{_q(args.id)}", body)
    emit(data, args.json, f"✓ Token {data['id']}: {update_summary(before, data)}." + metadata_lines(data))


def update_summary(before: dict[str, Any], after: dict[str, Any]) -> str:
    """What an update changed: `renamed 'a' → 'b'; description set to 'x'`, or `no change`."""
    changes = []
    for key, what in UPDATABLE:
        old, new = before.get(key) or "", after.get(key) or ""
        if old == new:
            continue
        if key == "metadata":
            changes.append("metadata replaced" if new else "metadata cleared")
        elif key == "name":
            changes.append(f"renamed {old!r} → {new!r}")
        elif not new:
            changes.append(f"{what} cleared (was {old!r})")
        else:
            changes.append(f"{what} {'changed from ' + repr(old) + ' to' if old else 'set to'} {new!r}")
    return "; ".join(changes) or "no change (already as given)"


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
    "already_revoked": "it was already revoked; now as leaked, so it can never be restored",
    "unknown": "no such token here, or the secret does not match",
    "not_a_token": "not a token here: bad format or checksum, or no imported key matches",
    "throttled": "not checked: too many failed verifications right now; report it again",
}
LEAKS_PER_CALL = 100
LEAK_RETRIES = 5


def _leak_sources(args: argparse.Namespace) -> tuple[list[str], int | None]:
    """The tokens to report: each TOKEN argument as given, and the token-shaped strings with a
    valid checksum found in stdin (`-`) and in each --file; how many token-shaped strings the
    scanned text held (None: nothing was scanned)."""
    given = [arg for arg in args.tokens if arg != "-"]
    texts = [sys.stdin.read()] if "-" in args.tokens else []
    for name in args.file or ():
        try:
            texts.append(Path(name).read_text(encoding="utf-8", errors="replace"))
        except OSError as exc:
            raise CliError(f"--file {name}: {exc.strerror or exc}") from None
    if not given and not texts:
        raise CliError("no tokens given (pass them as arguments, '-' to scan stdin, or --file FILE)")
    shaped: int | None = None
    tokens = list(given)
    for text in texts:
        scan = scan_tokens(text)
        shaped = (shaped or 0) + scan.shaped
        tokens += [t for t in scan.tokens if t not in tokens]
    return tokens, shaped


def leak_summary(results: Sequence[dict[str, Any]], shaped: int) -> str:
    """`found 3 token-shaped strings, 2 valid: 1 revoked, 1 unknown`."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r["result"]] = counts.get(r["result"], 0) + 1
    outcome = ", ".join(f"{n} {result.replace('_', ' ')}" for result, n in counts.items()) or "nothing reported"
    noun = "string" if shaped == 1 else "strings"
    return f"found {shaped} token-shaped {noun}, {len(results)} valid: {outcome}"


def cmd_leaks(args: argparse.Namespace) -> None:
    tokens, shaped = _leak_sources(args)
    client = AdminClient.from_env()
    results: list[dict[str, Any]] = []
    for start in range(0, len(tokens), LEAKS_PER_CALL):  # nothing found: no call
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
    lines = [f"{r['token']}: {r['result']} ({LEAK_RESULTS.get(r['result'], '-')})" for r in results]
    data: dict[str, Any] = {"results": results} | ({} if shaped is None else {"found": shaped})
    summary = [] if shaped is None else [leak_summary(results, shaped)]  # only when text was scanned
    emit(data, args.json, "\n".join([*summary, *lines]))


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
