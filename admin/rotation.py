"""What a rotation decides besides the change itself: whether a token can be rotated, the
successor's expiry (the rotation policy), and, in a Redis Cluster, a successor key id in the
old token's slot. Pure functions, no store; `TokenService.rotate` uses them.

The rotation policy: without `expires_in`/`expires_at`, the successor gets the old token's
own lifetime length again (expires_at - created_at), counted from the rotation, never
`tokens.default_ttl`: a 30-day token rotated on day 29 gets 30 days, a 1-year token a year.
That length is cut to `tokens.max_ttl` (a policy lowered since the old token was issued
applies) and to the rotating admin's own end (as every grant is). A token that never expires
gets a successor that never expires only where `tokens.max_ttl` allows it (else max_ttl).
An explicit `expires_in`/`expires_at` replaces the length, within the same bounds.
"""

from __future__ import annotations

import binascii
import os
from dataclasses import dataclass

from tokenward.gateway.decision import Principal
from tokenward.gateway.records import ACTIVE, TokenRecord
from tokenward.gateway.settings import TokenSettings
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.store_records import Conflict
from tokenward.gateway.tokens import BASE62, KEY_ID_LEN
from tokenward.rules import MAX_EXPIRES_AT, Lifetime, grant_expiry, lifetime_end


@dataclass(frozen=True, slots=True)
class Rotated:
    plaintext: str
    record: TokenRecord  # the successor
    retired: TokenRecord  # the old token, revoked now or at the end of the grace period
    warnings: tuple[str, ...] = ()  # what the rotation gave less than asked (`rotation_warnings`)


def check_rotatable(old: TokenRecord) -> None:
    if old.parent_id is not None:  # its successor would outlive the run it was minted for
        raise Conflict("a child token cannot be rotated; delegate a new one from its parent")
    if old.replaced_by is not None:
        raise Conflict(
            f"token was already rotated (replaced by {old.replaced_by}); rotate the replacement instead"
        )
    if old.status() != ACTIVE:
        raise Conflict(f"token is {old.status()}; only an active token can be rotated")


def successor_expiry(
    principal: Principal, policy: TokenSettings, old: TokenRecord, lifetime: Lifetime, issued: float
) -> float | None:
    """The successor's expiry under the rotation policy (module docstring)."""
    if lifetime.explicit:
        return grant_expiry(principal, policy, lifetime, issued)
    length = None if old.expires_at is None else max(old.expires_at - old.created_at, 1.0)
    if policy.max_ttl is not None and (length is None or length > policy.max_ttl):
        length = policy.max_ttl
    expires_at = None if length is None else min(issued + length, MAX_EXPIRES_AT)
    limit = lifetime_end(principal.token)
    if limit is not None and (expires_at is None or expires_at > limit):
        return limit
    return expires_at


def grace_end(old: TokenRecord, issued: float, grace: float) -> float:
    """When the old token stops working: the end of the grace period, but never after its
    own expiry (a grace period cannot lengthen a token's life)."""
    end = issued + grace
    return end if old.expires_at is None else min(end, old.expires_at)


def rotation_warnings(
    principal: Principal,
    policy: TokenSettings,
    old: TokenRecord,
    lifetime: Lifetime,
    issued: float,
    expires_at: float | None,
    grace: float,
) -> tuple[str, ...]:
    """Never silently (issue 14, item 10): a successor that lives shorter than the old token's
    original length, by the policy (not an explicit expires_in/expires_at), and why; a grace
    period cut at the old token's expiry."""
    warnings = []
    length = None if old.expires_at is None else old.expires_at - old.created_at
    given = None if expires_at is None else expires_at - issued
    if not lifetime.explicit and given is not None and (length is None or given < length - 60):
        limit = lifetime_end(principal.token)
        if limit is not None and expires_at is not None and abs(expires_at - limit) < 1:
            why = "the rotating admin token's own expiry (a grant never outlives its granter)"
        else:
            why = "tokens.max_ttl"
        was = "never expired" if length is None else f"lived {_span(length)}"
        warnings.append(f"expires_at: the replacement lives {_span(given)}; the old token {was}: cut by {why}")
    if grace > 0 and old.expires_at is not None and issued + grace > old.expires_at:
        warnings.append(
            "grace_period: longer than the old token has left; it stops working at its own expiry, "
            "not later (grace_until is its expires_at)"
        )
    return tuple(warnings)


def _span(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.4g} days"
    return f"{seconds / 3600:.3g} hours"


def key_id_in_slot_of(key_id: str) -> str:
    """A fresh random key id whose record is in the same cluster slot as `key_id`'s, so that a
    rotation creates the successor and retires the old token in one script (~16k draws of a
    public id; only in a cluster)."""

    def slot(kid: str) -> int:
        return binascii.crc_hqx(kid.encode(), 0) % 16384  # the record key's hash tag is the id

    assert Keys.token(key_id).endswith("{" + key_id + "}")
    target = slot(key_id)
    space = len(BASE62) ** KEY_ID_LEN
    while True:
        pool = os.urandom(10 * 1024)
        for start in range(0, len(pool), 10):
            number = int.from_bytes(pool[start : start + 10], "big") % space
            digits = []
            for _ in range(KEY_ID_LEN):
                number, rem = divmod(number, 62)
                digits.append(BASE62[rem])
            kid = "".join(digits)
            if slot(kid) == target:
                return kid
