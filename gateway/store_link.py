"""The link to the store that every store operation goes through (`StoreLink`, the base of
`Store`): one gate for every command, and the durable write path.

- `_call` runs a command and turns every failure into `StoreUnavailable`, keeping the store's
  reachability as a state (`up`, `outages`) with one log line per change, not one per call.
- `_write` runs an admin write on one connection to the master that holds its keys and waits
  there, on that same connection (WAIT and WAITAOF only cover the asking connection's writes),
  until it is in the master's append-only file and, when the master has replicas, received by
  one of them: a failover to that replica keeps it. A token shown to its creator, or a
  revocation confirmed to an admin, survives the master's crash and its replacement.
- `check_durability` probes once, at start, how `_write` can wait (WAITAOF or not);
  `masters` and `location` describe the topology.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as redis
import redis.exceptions as redis_errors
import structlog
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from tokenward.gateway.store_connect import RETRY_BACKOFF_BASE

T = TypeVar("T")
log = structlog.get_logger("tokenward.store")

DURABLE_TIMEOUT_MS = 2000  # an admin write waits this long for the disk and for a replica
STATE_SETTLE = 1.0  # seconds without a failure before the store counts as reachable again

# Failures that mean "the store (or part of it) cannot serve now", as opposed to a command
# that the store refused. A cluster without a reachable node raises RedisClusterException,
# which is not a RedisError.
_OUTAGES: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # also: no master known to the sentinels, still loading
    redis_errors.TimeoutError,
    OSError,
    redis_errors.ClusterError,  # CLUSTERDOWN, MASTERDOWN, redirections exhausted
    redis_errors.TryAgainError,
    redis_errors.ReadOnlyError,  # a write reached a master that was just demoted
    redis_errors.AskError,  # MOVED/ASK on a pinned connection: the slot moved (failover)
    redis_errors.RedisClusterException,
)
# ... and failures that are not about the store's reachability: our own bugs, and every
# connection of this process busy (a cluster node's pool refuses beyond its limit).
_NOT_OUTAGES = (
    redis_errors.CrossSlotTransactionError,
    redis_errors.InvalidPipelineStack,
    redis_errors.MaxConnectionsError,
)


class StoreUnavailable(Exception):
    """The store could not be reached or answered with an error."""


def pool_exhausted(exc: StoreUnavailable) -> bool:
    """Whether `exc` came from this process running out of pooled connections (its own load:
    `No connection available` after the pool's wait), not from the store being unreachable.
    A caller that fails open on an outage must not on this: a client could cause it at will."""
    cause = exc.__cause__
    if isinstance(cause, redis_errors.MaxConnectionsError):  # a cluster node's pool (redis-py's async cluster)
        return True
    return isinstance(cause, redis_errors.ConnectionError) and "No connection available" in str(cause)


class StoreLink:
    """A client to the store with its error gate, reachability state and durable writes."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        # redis-py types replies as unions that depend on decode_responses; we always get
        # bytes, so the client is used untyped here and replies are decoded explicitly.
        self.client: Any = client
        self.cluster = isinstance(client, RedisCluster)
        self.waitaof_supported: bool | None = None
        self.persistence = ""  # from check_durability()
        self.durability_warning: str | None = None  # confirmed writes a store crash can lose
        self.errors = 0  # store errors seen, for the metric
        self.answered = 0  # calls that succeeded (the readiness probe pings only an idle link)
        # Reachability, as a state with one log line per change (not one per failed call).
        self.up = True
        self.outages = 0
        self._last_failure = 0.0
        self._down_since = 0.0

    async def _call(self, op: Callable[[], Awaitable[T]], *, retry: bool = True) -> T:
        """Run `op` against the store, turning its failures into StoreUnavailable. With
        `retry` (not for admin writes: see `_write`), a command that met a connection torn
        down under it goes once more (connection errors are retried inside redis-py, see
        connection_options(); this is for what redis-py leaks instead, redis/redis-py#4287)."""
        try:
            try:
                result = await op()
            except (AttributeError, TypeError) as exc:
                if not (retry and _raised_in_redis_py(exc)):
                    raise
                await asyncio.sleep(RETRY_BACKOFF_BASE)
                result = await op()
        except StoreUnavailable:
            self.errors += 1
            raise
        except (redis_errors.RedisError, redis_errors.RedisClusterException, OSError) as exc:
            self.errors += 1
            if isinstance(exc, _OUTAGES) and not isinstance(exc, _NOT_OUTAGES):
                self._failed(exc)
                raise StoreUnavailable(f"store unreachable: {type(exc).__name__}") from exc
            raise StoreUnavailable(f"store error: {type(exc).__name__}") from exc
        except (AttributeError, TypeError) as exc:
            # redis-py can leak these instead of ConnectionError when a connection is torn
            # down under a command (redis/redis-py#4287; seen here in a cluster failover)
            if not _raised_in_redis_py(exc):
                raise
            self.errors += 1
            self._failed(exc)
            raise StoreUnavailable(f"store unreachable: {type(exc).__name__}") from exc
        self.answered += 1
        if not self.up:
            self._succeeded()
        return result

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._last_failure = now
        if self.up:
            self.up = False
            self.outages += 1
            self._down_since = now
            log.warning("store unreachable", error=type(exc).__name__, detail=str(exc)[:200])

    def _succeeded(self) -> None:
        # Back only once calls have succeeded for STATE_SETTLE without a failure: while a
        # cluster fails over, calls to the other masters succeed between the failures, and
        # that is still one outage, not one per request.
        now = time.monotonic()
        if now - self._last_failure >= STATE_SETTLE:
            self.up = True
            log.info("store reachable again", down_for_s=round(now - self._down_since, 2))

    def down_for(self) -> float:
        """Seconds since the current outage began (0 while the store counts as reachable)."""
        return 0.0 if self.up else time.monotonic() - self._down_since

    async def ping(self) -> bool:
        return bool(await self._call(self.client.ping))

    async def close(self) -> None:
        await self.client.aclose()
        pool: Any = getattr(self.client, "connection_pool", None)
        if isinstance(pool, SentinelConnectionPool):  # the sentinels' own connections
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()

    # -- topology -------------------------------------------------------------------------
    async def masters(self) -> list[ClusterNode] | None:
        """The cluster's masters (None: not a cluster; the client reaches the one master)."""
        if not self.cluster:
            return None
        await self.client.initialize()
        return list(self.client.get_primaries())

    async def _on_masters(self, *command: Any) -> list[Any]:
        """`command`'s reply from every master."""
        masters = await self.masters()
        if masters is None:
            return [await self.client.execute_command(*command)]
        return [await self.client.execute_command(*command, target_nodes=node) for node in masters]

    async def location(self) -> str:
        """Where the store is, for the start-up line (never a password)."""
        async def op() -> str:
            masters = await self.masters()
            if masters is not None:
                replicas = len(self.client.get_replicas())
                return f"cluster of {len(masters)} masters, {replicas} replicas"
            pool = self.client.connection_pool
            if isinstance(pool, SentinelConnectionPool):
                sentinel_pool: Any = pool  # redis-py leaves these methods untyped
                host, port = await sentinel_pool.get_master_address()
                return f"sentinel master {pool.service_name!r} at {host}:{port}"
            kw = pool.connection_kwargs
            if "path" in kw:
                return f"unix://{kw['path']}"
            return f"redis://{kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}"

        return await self._call(op)

    # -- durability ------------------------------------------------------------------
    async def check_durability(self) -> str:
        """Probe persistence once (on every master); a short description for the start-up line.

        Sets `durability_warning` when a write confirmed to an admin can still be lost in a
        crash of the store although it has an append-only file: without WAITAOF (Redis
        before 7.2) nothing waits for the disk, and unless the file is fsynced on every write
        (`appendfsync always`) the last second or so of confirmed writes is lost with it."""
        infos: list[dict[str, Any]] = await self._call(lambda: self._on_masters("INFO", "persistence"))
        with_aof = [bool(info.get("aof_enabled")) for info in infos]
        self.waitaof_supported = False
        self.durability_warning = None
        self.persistence = await self._persistence(infos, with_aof)
        return self.persistence

    async def _persistence(self, infos: list[dict[str, Any]], with_aof: list[bool]) -> str:
        if all(with_aof):
            try:
                await self._call(lambda: self._on_masters("WAITAOF", 1, 0, 100))
                self.waitaof_supported = True
            except StoreUnavailable:
                pass
            if self.waitaof_supported:
                return "aof+waitaof"
            fsync = await self._appendfsync()
            if fsync == {"always"}:
                return "aof, appendfsync always"
            policy = "/".join(sorted(fsync)) if fsync else "unknown (CONFIG GET refused)"
            self.durability_warning = (
                f"the store has no WAITAOF (Redis before 7.2) and appendfsync is {policy}: a write "
                "confirmed to an admin (an issued token, a revocation) is in the store's memory "
                "but can be up to ~1 s from its disk, so a crash of the store can lose it (a lost "
                "revocation brings a token back); use Redis 7.2+ or Valkey, or appendfsync always"
            )
            return f"aof without waitaof, appendfsync {policy}"
        if any(with_aof):
            return "aof on some masters only"
        if all(
            info.get("rdb_changes_since_last_save") is not None
            and info.get("rdb_bgsave_in_progress") is not None
            for info in infos
        ):
            return "rdb-only"
        return "off"

    async def _appendfsync(self) -> set[str] | None:
        """Every master's `appendfsync` policy (None: CONFIG is refused, as managed services do)."""
        try:
            replies = await self._call(lambda: self._on_masters("CONFIG", "GET", "appendfsync"))
        except StoreUnavailable:
            return None
        policies = set()
        for reply in replies:
            if isinstance(reply, list):  # a flat name, value list
                reply = dict(zip(reply[::2], reply[1::2], strict=True))
            value = reply.get(b"appendfsync", reply.get("appendfsync")) if isinstance(reply, dict) else None
            if value is None:
                return None
            policies.add(value.decode() if isinstance(value, bytes) else str(value))
        return policies

    # -- durable writes ----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _pinned(self, key: str) -> AsyncIterator[Any]:
        """One connection to the master that holds `key`, for as long as the block runs."""
        if self.cluster:
            await self.client.initialize()
            node = self.client.get_node_from_key(key)
            conn = node.acquire_connection()

            async def release() -> None:
                node.release(conn)
        else:
            pool = self.client.connection_pool
            conn = await pool.get_connection()

            async def release() -> None:
                await pool.release(conn)

        try:
            await conn.connect()
            if self.cluster:
                await _fresh(conn)  # the pool of a single server or Sentinel did this already
            yield conn
        except BaseException:
            await conn.disconnect()  # replies may be left unread: never reuse it
            raise
        finally:
            await release()

    async def _write(self, key: str, *commands: tuple[Any, ...]) -> list[Any]:
        """Run `commands` (all on `key`'s slot) on one connection to the master holding `key`,
        then wait on that connection until they are durable: in the master's append-only file
        (WAITAOF, when the master has one) and, when the master has replicas, received by one
        of them (WAIT), so that a failover keeps them. Raw replies, one per command."""

        async def op() -> list[Any]:
            async with self._pinned(key) as conn:
                await conn.send_packed_command(conn.pack_commands([*commands, ("ROLE",)]))
                replies = [await conn.read_response() for _ in range(len(commands) + 1)]
                role = replies.pop()
                replicas = len(role[2]) if role and role[0] == b"master" else 0
                if replicas:
                    await conn.send_command("WAIT", 1, DURABLE_TIMEOUT_MS)
                    if int(await conn.read_response()) < 1:
                        raise StoreUnavailable(
                            f"no replica acknowledged the write within {DURABLE_TIMEOUT_MS} ms"
                        )
                if self.waitaof_supported:
                    await self._wait_aof(conn)
                return replies

        try:
            return await self._call(op, retry=False)  # never twice: it may have been applied
        except StoreUnavailable as exc:
            await self._relearn_after(exc)
            raise

    async def _relearn_after(self, exc: StoreUnavailable) -> None:
        """After a command on a pinned connection failed: in a cluster, a failover may have
        moved its slot (the cluster client would follow MOVED; a pinned connection can't)."""
        if self.cluster and isinstance(exc.__cause__, _OUTAGES):
            await self._relearn_slots()

    async def _wait_aof(self, conn: Any) -> None:
        await conn.send_command("WAITAOF", 1, 0, DURABLE_TIMEOUT_MS)
        try:
            local, _ = await conn.read_response()
        except redis_errors.ResponseError as exc:
            if "appendonly" not in str(exc):
                raise
            # A master without an append-only file (e.g. a replica promoted by a failover
            # that runs without one): the replica acknowledgement is all there is.
            self.waitaof_supported = False
            log.warning("store master has no append-only file: admin writes no longer wait for the disk")
            return
        if int(local) < 1:
            raise StoreUnavailable(f"the write was not on disk within {DURABLE_TIMEOUT_MS} ms")

    async def _relearn_slots(self) -> None:
        """After a pinned write failed in a cluster: learn the slot map again (a replica may
        have taken over the slot), as the cluster client does after its own failures."""
        with contextlib.suppress(Exception):
            await self.client.nodes_manager.initialize()


async def _fresh(conn: Any) -> None:
    """A pooled connection the server closed (it restarted) is opened again before use, as
    redis-py's own pools do on checkout: nothing has been sent on it yet, so nothing is lost."""
    try:
        stale = await conn.can_read()  # a reply nobody read, or EOF (raises)
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
        stale = True
    if stale:
        await conn.disconnect()
        await conn.connect()


def _raised_in_redis_py(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module == "redis" or module.startswith("redis."):
            return True
        tb = tb.tb_next
    return False
