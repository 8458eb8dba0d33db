"""Usage counts in the store: one hash per token and UTC day (`Keys.usage`), in the token's
own cluster slot, written by the gateway's flushes (gateway/usage.py) and read by the admin
API's usage report. Each hash expires USAGE_TTL after its last write.

A flush is one pipeline of ADD_USAGE script calls (one call per hash, a bounded number at a
time on a cluster, whose pipelines refuse scripts). Each call adds its counts atomically and
at most once per batch, so a batch whose outcome is unknown is sent again without counting
twice, and the counts of every worker of `serve --workers N` add up in the same hashes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

from tokenward.gateway import store_scripts
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.store_link import StoreLink
from tokenward.gateway.usage import USAGE_TTL, UsageBatch

USAGE_CONCURRENCY = 64  # cluster: script calls in flight at once


class UsageStore(StoreLink):
    """Adding a flush's usage counts, and reading a token's days."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        super().__init__(client)
        self._add_usage = client.register_script(store_scripts.ADD_USAGE)

    async def add_usage(self, batch: UsageBatch) -> None:
        """Write `batch`; raises StoreUnavailable when its outcome is not known (send it again)."""
        calls = [
            (Keys.usage(token_id, day), [batch.worker, batch.seq, USAGE_TTL, *_flat(fields)])
            for token_id, day, fields in batch.rows
        ]

        async def op() -> None:
            if self.cluster:
                for start in range(0, len(calls), USAGE_CONCURRENCY):
                    await asyncio.gather(
                        *(self._add_usage(keys=[key], args=args) for key, args in calls[start : start + USAGE_CONCURRENCY])
                    )
                return
            pipe = self.client.pipeline(transaction=False)
            for key, args in calls:
                await self._add_usage(keys=[key], args=args, client=pipe)
            await pipe.execute()

        await self._call(op)

    async def read_usage(self, key_id: str, days: Sequence[str]) -> list[dict[str, int]]:
        """The counts of `key_id` on each of `days` (one pipeline: the hashes share a slot)."""

        async def op() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for day in days:
                pipe.hgetall(Keys.usage(key_id, day))
            return list(await pipe.execute())

        rows = await self._call(op)
        return [
            {name.decode(): int(n) for name, n in row.items() if not name.startswith(b"w:")} for row in rows
        ]


def _flat(fields: Sequence[tuple[str, int]]) -> list[Any]:
    return [part for pair in fields for part in pair]
