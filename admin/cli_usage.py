"""`tokenward token usage ID [--days N]` and the usage summary under `token get`: what a token
was used for (GET …/tokens/{id}/usage) and which of its scopes nothing needed."""

from __future__ import annotations

import argparse
from typing import Any

from tokenward.cli_client import AdminClient, _q
from tokenward.cli_output import CliError, emit, table


def usage_path(base: str, key_id: str, days: int | None = None) -> str:
    return f"{base}/{_q(key_id)}/usage" + (f"?days={days}" if days is not None else "")


def token_usage(client: AdminClient, base: str, args: argparse.Namespace) -> None:
    data = client.call("GET", usage_path(base, args.id, args.days))
    emit(data, args.json, usage_report(data))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in counts.items()) or "none"


def _plural(n: int, noun: str) -> str:
    return noun if n == 1 else noun + "s"


def usage_summary(data: dict[str, Any]) -> list[str]:
    """The few lines `token get` shows: totals, refusals, unused scopes."""
    refused = data["requests"] - data.get("allowed", 0)
    unused = ", ".join(data["unused_scopes"]) or "none (every granted scope was needed)"
    return [
        f"Usage ({data['days']} {_plural(data['days'], 'day')}): "
        f"{data['requests']} {_plural(data['requests'], 'request')}, {refused} refused"
        + (f" ({_counts(data['refused'])})" if data["refused"] else ""),
        f"Unused scopes: {unused}",
    ]


def usage_report(data: dict[str, Any]) -> str:
    """`token usage`: the summary, then requests by route and by day (the days with any)."""
    lines = [f"Token {data.get('name', '')} ({data['token_id']}), the last {data['days']} {_plural(data['days'], 'day')} (since {data['since']}, UTC)"]
    lines += usage_summary(data)
    if data["by_route"]:
        lines += ["", table(["ROUTE", "REQUESTS"], [[route, str(n)] for route, n in data["by_route"].items()])]
    if data.get("by_tool"):
        lines += ["", table(["MCP TOOL", "CALLS"], [[tool, str(n)] for tool, n in data["by_tool"].items()])]
    days = [[day, str(n)] for day, n in data["by_day"].items() if n]
    if days:
        lines += ["", table(["DAY", "REQUESTS"], days)]
    return "\n".join(lines)


def usage_lines(client: AdminClient, base: str, key_id: str) -> str:
    """Under `token get`: the last 30 days' summary ("" if the server has no usage report)."""
    try:
        data = client.call("GET", usage_path(base, key_id))
    except CliError:
        return ""
    return "\n" + "\n".join(usage_summary(data))
