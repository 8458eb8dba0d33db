"""The CLI's rate limit and budget options (`token create --rate-limit burst=5/1m --max-uses N
--refill 1d:100`) and how `token get` shows them."""

from __future__ import annotations

import argparse
from typing import Any

from tokenward.cli_client import AdminClient
from tokenward.cli_output import CliError, emit
from tokenward.gateway.limits import LimitError, parse_limit_option, parse_refill_option


def add_limit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rate-limit", action="append", metavar="NAME=LIMIT/PER",
        help="a rate limit, e.g. burst=5/1m or daily=5000/1d (repeatable)",
    )  # fmt: skip
    p.add_argument("--max-uses", type=int, metavar="N", help="a budget of N requests (then 429)")
    p.add_argument("--refill", metavar="EVERY:AMOUNT", help="with --max-uses: reset to AMOUNT every period, e.g. 1d:100")


def limit_body(args: argparse.Namespace) -> dict[str, Any]:
    """The create request's `rate_limits`, `max_uses` and `refill` (only those given)."""
    body: dict[str, Any] = {}
    try:
        if args.rate_limit:
            body["rate_limits"] = [parse_limit_option(text) for text in args.rate_limit]
        if args.refill:
            body["refill"] = parse_refill_option(args.refill)
    except LimitError as exc:
        raise CliError(str(exc)) from None
    if args.max_uses is not None:
        body["max_uses"] = args.max_uses
    return body


def rate_limits_text(t: dict[str, Any]) -> str | None:
    limits = t.get("rate_limits") or []
    return ", ".join(f"{x.get('name')} {x.get('limit')}/{x.get('per')}" for x in limits) or None


def budget_text(t: dict[str, Any]) -> str | None:
    if t.get("max_uses") is None:
        return None
    text = f"{t.get('remaining', '?')} of {t['max_uses']} uses left"
    refill = t.get("refill")
    if refill:
        text += f" (refilled to {refill.get('amount')} every {refill.get('every')})"
    return text


def set_holder_limits(client: AdminClient, path: str, what: str, args: argparse.Namespace) -> None:
    """`team set-rate-limits NAME` / `sa set-rate-limits NAME`: PUT `path` (…/rate-limits)
    with the --rate-limit options given (none: the limits are removed)."""
    try:
        limits = [parse_limit_option(text) for text in args.rate_limit or ()]
    except LimitError as exc:
        raise CliError(str(exc)) from None
    data = client.call("PUT", path, {"rate_limits": limits})
    emit(data, args.json, f"✓ {what} {data['name']!r} rate limits: {rate_limits_text(data) or '(none)'}")
