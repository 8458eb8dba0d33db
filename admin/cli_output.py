"""What the `tokenward` command line prints: tables and dates for people, `--json` for
scripts (non-printable characters escaped), errors as one line on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import orjson

from tokenward.gateway.redaction import redact_token_shaped
from tokenward.gateway.text import printable, shown


class CliError(Exception):
    pass


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"error: {printable(redact_token_shaped(message))}", file=sys.stderr)  # never a pasted token back
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
    """Every time the CLI shows is UTC, marked `Z`: `2027-02-21 22:05Z` (`seconds`: `22:05:09Z`),
    whatever offset the API wrote (it writes UTC)."""
    if not iso_time:
        return "never"
    try:
        when = datetime.fromisoformat(iso_time)
    except ValueError:
        return iso_time
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ" if seconds else "%Y-%m-%d %H:%MZ")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["   ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def token_rows(tokens: Sequence[dict[str, Any]], team: bool = False) -> str:
    """The token table; `team`: with a TEAM column (an org-wide list; `(org)`: org level)."""
    return table(
        ["ID", "NAME", *(["TEAM"] if team else []), "PREFIX", "SCOPES", "LAST USED", "EXPIRES", "STATUS"],
        [
            [
                t["id"],
                t["name"],
                *([t.get("team") or "(org)"] if team else []),
                shown_prefix(t),
                ", ".join(t["scopes"]),
                humanize_ago(t.get("last_used_at")),
                humanize_date(t.get("expires_at")),
                status_marker(t),
            ]
            for t in tokens
        ],
    )


def shown_prefix(t: dict[str, Any]) -> str:
    """The PREFIX column: the display prefix, which names a token's environment (`tw_test_...`);
    an imported key's (`legacy_<id>`) cannot, so a test one says `(test)` beside it."""
    test = t.get("legacy") and t.get("environment") == "test"
    return f"{t['display_prefix']} (test)" if test else str(t["display_prefix"])


def status_marker(t: dict[str, Any]) -> str:
    """`revoked (org: leaked)`: who revoked (org or team admin) and why, beside the status;
    `LEGACY` marks a key imported from an old system."""
    status = str(t["status"])
    legacy = " LEGACY" if t.get("legacy") else ""  # an imported key
    legacy += f" (child of {t['parent_id']})" if t.get("parent_id") else ""  # a child token
    if status == "grace" and t.get("grace_until"):
        return f"grace (until {humanize_date(t['grace_until'])}){legacy}"
    status += legacy
    if not status.startswith("revoked") or not (t.get("revoked_by_level") or t.get("revoke_reason")):
        return status
    why = ": ".join(str(p) for p in (t.get("revoked_by_level"), t.get("revoke_reason")) if p)
    return f"{status} ({why})"


def revocation_lines(t: dict[str, Any]) -> str:
    """`token get`: the revocation's author, level, time and reason under the table."""
    if not t.get("revoked_at"):
        return ""
    if t.get("status") == "grace":
        return "\n" + "\n".join(
            [
                f"Grace until: {humanize_date(t.get('grace_until'), seconds=True)} (it works until then)",
                f"Replaced by: {t.get('replaced_by') or '-'}",
                f"Rotated by:  {t.get('revoked_by') or '-'}",
            ]
        )
    level = {"org": "an org admin", "team": "a team admin"}.get(t.get("revoked_by_level") or "", "")
    lines = [
        f"Revoked by:  {t.get('revoked_by') or '-'}" + (f" ({level})" if level else ""),
        f"Revoked at:  {humanize_date(t['revoked_at'], seconds=True)}",
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
