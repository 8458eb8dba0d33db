"""A parent token's children in the store (child tokens, gateway/lineage.py): the count that
`tokens.delegation.max_children` caps, one sorted set per parent in its org's slot
(`Keys.children`), scored by each child's expiry. An expired child frees its place; a revoked
one holds it until it expires or is deleted. Taken before the child's record is written (one
script: concurrent mints cannot pass the cap), given back if the record is not written."""

from __future__ import annotations

from tokenward.gateway.store import Store
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.store_records import Conflict

# KEYS[1] the set; ARGV: now, the child's expiry, its id, the cap. -held when full.
TAKE_CHILD_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[4]) then return -held end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(last[2])) + 60)
return held + 1
"""


class TooManyChildren(Conflict):
    def __init__(self, held: int, limit: int) -> None:
        super().__init__(f"the token has {held} unexpired child tokens; the limit is {limit}")
        self.held = held
        self.limit = limit


async def take_child_slot(
    store: Store, org: str, parent_id: str, child_id: str, expires_at: float, limit: int, now: float
) -> None:
    key = Keys.children(org, parent_id)
    (held,) = await store._write(
        key, ("EVAL", TAKE_CHILD_SLOT, 1, key, repr(now), repr(expires_at), child_id, limit)
    )
    if int(held) < 0:
        raise TooManyChildren(-int(held), limit)


async def release_child_slot(store: Store, org: str, parent_id: str, child_id: str) -> None:
    key = Keys.children(org, parent_id)
    await store._write(key, ("ZREM", key, child_id))


async def children(store: Store, org: str, parent_id: str, now: float) -> list[str]:
    """The ids of the parent's unexpired children (revoked ones included), by expiry."""
    key = Keys.children(org, parent_id)
    found = await store._call(lambda: store.client.zrangebyscore(key, repr(now), "+inf"))
    return [m.decode() if isinstance(m, bytes) else str(m) for m in found]


async def expired_children(store: Store, org: str, parent_id: str, now: float, batch: int = 100) -> list[str]:
    """Up to `batch` ids of the parent's children that have expired, oldest first."""
    key = Keys.children(org, parent_id)
    found = await store._call(lambda: store.client.zrangebyscore(key, "-inf", f"({now!r}", start=0, num=batch))
    return [m.decode() if isinstance(m, bytes) else str(m) for m in found]
