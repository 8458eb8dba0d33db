"""How every process learns of a change to a token or team: `Change`, announced twice.

Each change is announced on the pub/sub channel (the fast push, `subscription`) and in a
capped change-log stream that processes poll as the fallback when the push link is down
(`changes_since`, with a gap flag once the log was trimmed past the reader). Changes this
process makes also reach its `local_listeners` before they are published.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tokenward.gateway.store_connect import SOCKET_TIMEOUT, connect_node
from tokenward.gateway.store_keys import Keys
from tokenward.gateway.store_link import StoreLink

CHANGES_CHANNEL = "tw:changes"
CHANGELOG_MAXLEN = 10_000


@dataclass(frozen=True, slots=True)
class Change:
    """What changed: ('token', key_id) | ('team', 'org/team') | ('all', ''), and when."""

    kind: str
    ident: str
    at: float = 0.0  # publish time, for the invalidation-lag metric

    def encode(self) -> bytes:
        return f"{self.kind}:{self.ident}|{self.at or time.time():.6f}".encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Change:
        text = data.decode() if isinstance(data, bytes) else data
        body, _, stamp = text.partition("|")
        kind, _, ident = body.partition(":")
        try:
            at = float(stamp) if stamp else 0.0
        except ValueError:
            at = 0.0
        return cls(kind, ident, at)


class ChangeFeed(StoreLink):
    """Publishing changes, and the two ways to receive them (subscription, change log)."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        super().__init__(client)
        self._subscriptions = os.getpid()  # cluster: which node the next subscription goes to
        # Told of every change this process makes, before it is published: the channel may
        # bring it back later than the next request (in a cluster it crosses the cluster bus).
        self.local_listeners: list[Callable[[Change], None]] = []

    async def publish(self, changes: Iterable[Change]) -> None:
        changes = list(changes)
        for change in changes:
            for listener in self.local_listeners:
                listener(change)
        payloads = [change.encode() for change in changes]

        async def op() -> None:
            pipe = self.client.pipeline(transaction=False)
            for payload in payloads:
                pipe.xadd(Keys.changelog, {"c": payload}, maxlen=CHANGELOG_MAXLEN, approximate=True)
            await pipe.execute()
            # not in the pipeline: a cluster pipeline refuses PUBLISH (a keyless broadcast)
            for payload in payloads:
                await self.client.publish(CHANGES_CHANNEL, payload)

        await self._call(op)

    async def changelog_tail(self) -> str:
        entries = await self._call(lambda: self.client.xrevrange(Keys.changelog, count=1))
        return entries[0][0].decode() if entries else "0-0"

    async def changes_since(self, last_id: str) -> tuple[str, list[Change], bool]:
        """Changes after `last_id`: (new last id, changes, gap) — gap: the log was trimmed past it."""
        result = await self._call(lambda: self.client.xread({Keys.changelog: last_id}, count=1000))
        if not result:
            return last_id, [], False
        entries = result[0][1]
        gap = False
        if last_id != "0-0":
            info = await self._call(lambda: self.client.xinfo_stream(Keys.changelog))
            deleted = info.get("max-deleted-entry-id")
            if isinstance(deleted, bytes):
                deleted = deleted.decode()
            gap = bool(deleted) and _stream_id_gt(str(deleted), last_id)
        changes = [Change.decode(fields[b"c"]) for _, fields in entries]
        return entries[-1][0].decode(), changes, gap

    @contextlib.asynccontextmanager
    async def subscription(self) -> AsyncIterator[Any]:
        """A pub/sub connection subscribed to the change channel, closed on exit.

        In a cluster a classic PUBLISH reaches every node (replicas too), so one node is
        enough; each new subscription moves on to the next known node, so a dead one is
        left behind at the next reconnect. It is a plain connection to that node (redis-py's
        asynchronous cluster client has pub/sub only from 8.0)."""
        node_client = None
        if self.cluster:
            await self._call(self.client.initialize)
            nodes = sorted(self.client.get_nodes(), key=lambda n: n.name)
            node = nodes[self._subscriptions % len(nodes)]
            self._subscriptions += 1
            node_client = connect_node(node)
            pubsub: Any = node_client.pubsub()
        else:
            pubsub = self.client.pubsub()
        saved_retry = None
        try:
            await pubsub.connect()
            # Never reconnect behind our back: redis-py would subscribe again silently and
            # the changes published in between would be lost without the listener knowing.
            saved_retry, pubsub.connection.retry = pubsub.connection.retry, Retry(NoBackoff(), 0)
            await pubsub.subscribe(CHANGES_CHANNEL)
            await _confirmed(pubsub)
            yield pubsub
        finally:
            if saved_retry is not None and pubsub.connection is not None:
                pubsub.connection.retry = saved_retry  # the connection goes back to the pool
            # redis-py's pubsub close can hang on a dead link; never wait on it for long
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pubsub.aclose(), 1.0)
            if node_client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(node_client.aclose(), 1.0)


async def _confirmed(pubsub: Any) -> None:
    """Wait for the store's reply to SUBSCRIBE: only from then on does a change reach us
    (a record read on another connection before it could miss a change made meanwhile)."""
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while time.monotonic() < deadline:
        message = await pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
        if message is not None and message.get("type") == "subscribe":
            return
    raise redis_errors.ConnectionError("the store did not confirm the subscription")


def _parse_id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _stream_id_gt(a: str, b: str) -> bool:
    return _parse_id(a) > _parse_id(b)
