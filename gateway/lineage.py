"""Child tokens (issue 16, item 3): a child is in force only while every ancestor is.

A child token's record names its parent (`parent_id`) and every ancestor, root first
(`ancestors`). The decision (`Authenticator.authenticate`, step 4) asks `status` for a child
instead of the record's own status: the child's own state first, then each ancestor's, read
through the same cached lookups as any token (`Authenticator._record`). A revocation, a
rotation's end of grace, an expiry or a deletion of any ancestor therefore ends the child as
it ends the ancestor itself: the ancestor's change event drops the ancestor's cached record on
every gateway, and the child's next request reads it again (the same bounds as any
revocation: the push channel, else the 1 s poll; while the channel is down no cached record
is trusted). A child revoked on its own stays revoked whatever happens to its ancestors: its
own record says so. A deleted ancestor (its record is gone) counts as revoked.

Root tokens (no parent) never reach this module: the hot path pays one attribute test.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from tokenward.gateway.records import ACTIVE, REVOKED, TokenRecord

Lookup = Callable[[str], Awaitable[TokenRecord | None]]


async def status(record: TokenRecord, lookup: Lookup, now: float | None = None) -> str:
    """`record`'s status, or, while it is active, the first ancestor's that is not: "revoked" or
    "expired" followed by which ancestor (its parent is named as such), for the 401's message."""
    at = time.time() if now is None else now
    own = record.status(at)
    if own != ACTIVE:
        return own
    for key_id in reversed(record.ancestors):  # the parent first: the likeliest to end
        ancestor = await lookup(key_id)
        which = "its parent token" if key_id == record.parent_id else f"its ancestor token {key_id}"
        if ancestor is None:
            return f"{REVOKED}: {which} was deleted"
        state = ancestor.status(at)
        if state != ACTIVE:
            return f"{state}: {which} is {state}"
    return ACTIVE


def depth(record: TokenRecord) -> int:
    """0 for a root token, 1 for its child, 2 for a grandchild ..."""
    return len(record.ancestors)
