"""`tokenward token get`: every field of a token, one per line (issue 14, item 11).

The fields and their labels are listed once, in TOKEN_FIELDS; a field the admin API returns
that the list does not name yet (added by a later feature) is still shown, after the known
ones, with a label made from its name, so nothing the API says about a token is left out.
Times are UTC, marked `Z` (`cli_output.humanize_date`), like everywhere in the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from tokenward.cli_limits import budget_text, rate_limits_text
from tokenward.cli_output import humanize_ago, humanize_date, revocation_lines, status_marker
from tokenward.issuance import scope_losses

View = dict[str, Any]
Render = Callable[[View], str | None]  # None or "": the line is left out


def _list(key: str) -> Render:
    return lambda t: ", ".join(str(v) for v in t.get(key) or []) or None


def _scopes(t: View) -> str | None:
    return ", ".join(t.get("scopes") or []) or "(none)"


def _not_in_effect(t: View) -> str | None:
    """Scopes the token holds that its team no longer (or never) granted in full."""
    losses = scope_losses(t.get("ineffective_scopes") or [], t.get("effective_scopes") or [])
    return "; ".join(losses) or None


def _constraints(t: View) -> str | None:
    pairs = t.get("constraints") or {}
    return ", ".join(f"{k}={v}" for k, v in sorted(pairs.items())) or None


def _by(at: str, by: str) -> Render:
    def render(t: View) -> str | None:
        if not t.get(at):
            return None
        who = t.get(by)
        return humanize_date(t[at], seconds=True) + (f" by {who}" if who else "")

    return render


def _last_used(t: View) -> str:
    used = t.get("last_used_at")
    return f"{humanize_ago(used)} ({humanize_date(used, seconds=True)})" if used else "never"


#: (label, the view keys it shows, how). Keys named here are not shown again as extras.
TOKEN_FIELDS: list[tuple[str, tuple[str, ...], Render]] = [
    ("ID", ("id",), lambda t: t.get("id")),
    ("Name", ("name",), lambda t: t.get("name")),
    ("Description", ("description",), lambda t: t.get("description") or None),
    ("Prefix", ("display_prefix",), lambda t: t.get("display_prefix")),
    ("Org", ("org",), lambda t: t.get("org")),
    ("Team", ("team",), lambda t: t.get("team") or "(org-level token)"),
    ("Service account", ("service_account",), lambda t: t.get("service_account")),
    ("Status", ("status",), status_marker),
    ("Scopes", ("scopes",), _scopes),
    ("Effective scopes", ("effective_scopes",), lambda t: ", ".join(t.get("effective_scopes") or []) or "(none)"),
    ("Not in effect", ("ineffective_scopes",), _not_in_effect),
    ("Constraints", ("constraints",), _constraints),
    ("Allowed CIDRs", ("allowed_cidrs",), _list("allowed_cidrs")),
    ("Created", ("created_at", "created_by"), _by("created_at", "created_by")),
    ("Last used", ("last_used_at",), _last_used),
    ("Expires", ("expires_at",), lambda t: humanize_date(t.get("expires_at"), seconds=True)),
    ("Environment", ("environment",), lambda t: t.get("environment")),
    ("Imported", ("legacy",), lambda t: "yes: a key from an old system (rotate it to retire it)" if t.get("legacy") else None),
    ("Parent", ("parent_id",), lambda t: t.get("parent_id") and f"{t['parent_id']} (a child token: it ends with its parent)"),
    ("Run", ("run_id",), lambda t: t.get("run_id")),
    ("Rate limits", ("rate_limits",), rate_limits_text),
    ("Usage budget", ("max_uses", "refill", "remaining"), budget_text),
]
#: Shown by `cli_output.revocation_lines`, under the fields.
REVOCATION_KEYS = ("revoked_at", "revoked_by", "revoked_by_level", "revoke_reason", "replaced_by", "grace_until")
#: Never shown as a field (the plaintext is printed by the commands that return it).
HIDDEN_KEYS = ("token", "warnings", "metadata")  # metadata: its own block (cli_import.metadata_lines)


def _extra(key: str, value: Any) -> str:
    if key.endswith("_at") and isinstance(value, str):
        return humanize_date(value, seconds=True)
    if isinstance(value, dict | list):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return str(value)


def token_detail(t: View) -> str:
    """The token as lines of `Label:  value`, then its revocation (if any)."""
    rows = [(label, render(t)) for label, _, render in TOKEN_FIELDS]
    known = {key for _, keys, _ in TOKEN_FIELDS for key in keys} | set(REVOCATION_KEYS) | set(HIDDEN_KEYS)
    for key, value in t.items():
        if key not in known and value not in (None, "", [], {}):
            rows.append((key.replace("_", " ").capitalize(), _extra(key, value)))
    shown = [(label, value) for label, value in rows if value]
    width = max(len(label) for label, _ in shown) + 2
    lines = [f"{(label + ':').ljust(width)} {value}" for label, value in shown]
    return "\n".join(lines) + revocation_lines(t)
