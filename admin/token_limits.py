"""Rate limits and usage budgets in the admin API: a create request's `rate_limits`,
`max_uses` and `refill` checked (400 naming the field), and a token's view with them and its
`remaining` uses (read from the store: gateway/store_limits.py)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from tokenward.gateway.limits import Credits, LimitError, TokenLimits, remaining_now
from tokenward.gateway.records import TokenRecord
from tokenward.gateway.store import Store
from tokenward.rules import Invalid


def limits_field(body: Mapping[str, Any]) -> TokenLimits:
    try:
        return TokenLimits.from_body(body)
    except LimitError as exc:
        message = str(exc)
        field = next((f for f in ("rate_limits", "max_uses", "refill") if message.startswith(f)), "rate_limits")
        raise Invalid(message, field) from None


def limit_fields(token: TokenRecord) -> dict[str, Any]:
    """The view's `rate_limits`, `max_uses` and `refill` (without `remaining`: see below)."""
    return {
        "rate_limits": [limit.to_json() for limit in token.rate_limits],
        "max_uses": token.max_uses,
        "refill": token.refill.to_json() if token.refill is not None else None,
    }


async def remaining(store: Store, token: TokenRecord) -> int | None:
    """The uses left of a token with `max_uses` (None: no budget). In local mode, uses a
    gateway process has taken ahead (`rate_limits.credit_lease`) count as used."""
    if token.max_uses is None:
        return None
    credits = Credits(token.max_uses, token.refill, token.created_at)
    return remaining_now(await store.stored_credits(token.org, token.id), credits, time.time())
