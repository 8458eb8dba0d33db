"""`tokenward sa …`: org-level service accounts (issue 14, item 9).

`sa create NAME --teams a,b --description … --owner …`, `sa list` (org-wide for an org admin;
`--team T` or a team admin's token: that team's accounts, with their active tokens there),
`sa get`, `sa update`, `sa rename`, `sa add-team`, `sa remove-team`, `sa delete`. With `--team`
(or a team admin's token), `create` and `delete` act through the team's endpoints as before:
delete takes the team out of an account it shares with other teams.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from tokenward.cli_client import AdminClient, _q, _split
from tokenward.cli_limits import set_holder_limits
from tokenward.cli_output import CliError, _or_dash, emit, humanize_date, table

Common = Callable[..., argparse.ArgumentParser]


def add_sa_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: Common) -> None:
    """The `sa` command and its actions (`common` adds --org, --team and --json)."""
    sa = sub.add_parser("sa", help="manage service accounts (org level, members of teams)")
    actions = sa.add_subparsers(dest="action", required=True)

    def action(name: str, help_text: str, *positional: str) -> argparse.ArgumentParser:
        p = common(actions.add_parser(name, help=help_text))
        for arg in positional:
            p.add_argument(arg)
        p.set_defaults(func=cmd_sa)
        return p

    p = action("create", "create a service account in one or more teams", "name")
    p.add_argument("--teams", help="comma-separated teams it is a member of (default: --team, or yours)")
    p.add_argument("--description")
    p.add_argument("--owner", help="who answers for it: a person or team contact")
    p = action("list", "list service accounts and their active tokens (org-wide for an org admin)")
    p.add_argument("--limit", type=int, help="at most this many service accounts (default: all)")
    action("get", "show one service account (by name or id)", "name")
    p = action("update", "change name, description, owner or teams", "name")
    p.add_argument("--name", dest="new_name", help="a new name (its id, tokens and history stay)")
    p.add_argument("--description")
    p.add_argument("--owner")
    p.add_argument("--add-teams", help="comma-separated teams to add")
    p.add_argument("--remove-teams", help="comma-separated teams to remove (none with active tokens)")
    action("rename", "rename it (its id, tokens and history stay)", "name", "new_name")
    action("add-team", "make it a member of more teams", "name", "teams")
    action("remove-team", "take teams out of it (refused while it has active tokens there)", "name", "teams")
    action("delete", "delete one without active tokens (with --team: leave that team)", "name")
    p = action("set-rate-limits", "limits all its tokens share (org admins; none given: remove)", "name")
    p.add_argument("--rate-limit", action="append", metavar="NAME=LIMIT/PER", help="e.g. bot=10/1s (repeatable)")


def cmd_sa(args: argparse.Namespace) -> None:
    client = AdminClient.from_env()
    org, team = args.org, args.team
    if org is None or team is None:
        me = client.whoami()
        org = org or me["org"]
        team = team or me.get("team")  # a team admin's own team; an org admin: the whole org
    base = f"/v1/orgs/{_q(org)}/service-accounts"
    team_base = f"/v1/orgs/{_q(org)}/teams/{_q(team)}/service-accounts" if team else None
    ACTIONS[args.action](client, base, Where(team, team_base), args)


class Where:
    """The team the command is about (--team, or the caller's own), and its endpoint."""

    def __init__(self, team: str | None, base: str | None) -> None:
        self.team = team
        self.base = base


Action = Callable[[AdminClient, str, Where, argparse.Namespace], None]


def sa_create(client: AdminClient, base: str, where: Where, args: argparse.Namespace) -> None:
    teams = _split(args.teams) or ([where.team] if where.team else [])
    if not teams:
        raise CliError("--teams is required for an org-level token (e.g. --teams platform,billing)")
    body = {"name": args.name, "teams": teams}
    body.update({k: v for k, v in (("description", args.description), ("owner", args.owner)) if v})
    data = client.call("POST", base, body)
    members = ", ".join(data["teams"])
    emit(data, args.json, f"✓ Service account {data['name']!r} ({data['id']}) created in team(s): {members}.")


def sa_list(client: AdminClient, base: str, where: Where, args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit: expected a positive integer")
    if where.base is not None:  # one team: its accounts and their active tokens in it
        data = client.pages(where.base, "service_accounts", limit=args.limit)
        headers, columns = ["NAME", "DESCRIPTION", "ACTIVE TOKENS", "CREATED"], _team_row
    else:
        data = client.pages(base, "service_accounts", limit=args.limit)
        headers, columns = ["NAME", "TEAMS", "OWNER", "DESCRIPTION", "ACTIVE TOKENS", "CREATED"], _org_row
    rows = [columns(sa) for sa in data["service_accounts"]]
    emit(data, args.json, table(headers, rows) if rows else "no service accounts")


def _active(sa: dict[str, Any]) -> str:
    return f"{sa.get('active_tokens', 0)}{'' if sa.get('active_tokens_exact', True) else '+'}"


def _team_row(sa: dict[str, Any]) -> list[str]:
    return [sa["name"], _or_dash(sa.get("description")), _active(sa), humanize_date(sa["created_at"])]


def _org_row(sa: dict[str, Any]) -> list[str]:
    return [
        sa["name"],
        ",".join(sa["teams"]) or "-",
        _or_dash(sa.get("owner")),
        _or_dash(sa.get("description")),
        _active(sa),
        humanize_date(sa["created_at"]),
    ]


def account_lines(sa: dict[str, Any]) -> str:
    fields = [
        ("Name", sa["name"]),
        ("ID", sa["id"]),
        ("Teams", ", ".join(sa["teams"]) or "(none)"),
        ("Owner", _or_dash(sa.get("owner"))),
        ("Description", _or_dash(sa.get("description"))),
        ("Active tokens", _active(sa)),
        ("Former names", ", ".join(sa.get("former_names") or ()) or "-"),
        ("Created", f"{humanize_date(sa['created_at'])} by {sa.get('created_by') or '-'}"),
    ]
    if sa.get("updated_at"):
        fields.append(("Updated", f"{humanize_date(sa['updated_at'])} by {sa.get('updated_by') or '-'}"))
    return "\n".join(f"{k + ':':<15}{v}" for k, v in fields)


def sa_get(client: AdminClient, base: str, where: Where, args: argparse.Namespace) -> None:
    data = client.call("GET", f"{base}/{_q(args.name)}")
    emit(data, args.json, account_lines(data))


def _patch(client: AdminClient, base: str, args: argparse.Namespace, body: dict[str, Any]) -> None:
    body = {k: v for k, v in body.items() if v not in (None, [])}
    if not body:
        raise CliError("nothing to update: give --name, --description, --owner, --add-teams or --remove-teams")
    before = client.call("GET", f"{base}/{_q(args.name)}")
    data = client.call("PATCH", f"{base}/{_q(args.name)}", body)
    changes = [
        f"{label} {before.get(key) or '-'!s} → {data.get(key) or '-'!s}"
        for key, label in (("name", "name"), ("description", "description"), ("owner", "owner"))
        if before.get(key) != data.get(key)
    ]
    if before["teams"] != data["teams"]:
        changes.append(f"teams {', '.join(before['teams']) or '-'} → {', '.join(data['teams']) or '-'}")
    said = "; ".join(changes) or "no change"
    emit(data, args.json, f"✓ Service account {data['name']!r} updated: {said}.")


def sa_update(client: AdminClient, base: str, where: Where, args: argparse.Namespace) -> None:
    body = {
        "name": args.new_name,
        "description": args.description,
        "owner": args.owner,
        "add_teams": _split(args.add_teams),
        "remove_teams": _split(args.remove_teams),
    }
    _patch(client, base, args, body)


def sa_rename(client: AdminClient, base: str, where: Where, args: argparse.Namespace) -> None:
    _patch(client, base, args, {"name": args.new_name})


def sa_add_team(client: AdminClient, base: str, where: Where, args: argparse.Namespace) -> None:
    _patch(client, base, args, {"add_teams": _split(args.teams)})


def sa_remove_team(client: AdminClient, base: str, where: Where, args: argparse.Namespace) -> None:
    _patch(client, base, args, {"remove_teams": _split(args.teams)})


def sa_delete(client: AdminClient, base: str, where: Where, args: argparse.Namespace) -> None:
    client.call("DELETE", f"{where.base or base}/{_q(args.name)}")
    emit({"name": args.name, "deleted": True}, args.json, f"✓ Service account {args.name} deleted.")


ACTIONS: dict[str, Action] = {
    "create": sa_create,
    "list": sa_list,
    "get": sa_get,
    "update": sa_update,
    "rename": sa_rename,
    "add-team": sa_add_team,
    "remove-team": sa_remove_team,
    "delete": sa_delete,
    "set-rate-limits": lambda client, base, where, args: set_holder_limits(
        client, f"{base}/{_q(args.name)}/rate-limits", "Service account", args
    ),
}
