"""The Redis store: the source of truth for orgs, teams, service accounts and tokens.

Every key name lives in `Keys`. Org data shares the hash tag `{org}` so that one org's
writes stay in one cluster slot; a token record lives under its own key id (`tw:tok:{id}`)
because the gateway knows only the key id when a request arrives. Index entries are
written before records and removed after them, so a crash leaves at most a dangling
index entry (skipped when listing), never an unlisted live token.

Every change is announced twice: on the pub/sub channel (fast push) and in a capped
change-log stream that processes poll as the fallback when the push link is down.

The store is one server (`redis.url`), the master that Redis Sentinel names, or a Redis
Cluster. No command, pipeline or script touches keys of two slots at once. An admin write
is sent on one connection to the master that holds its keys and waits there, on that same
connection (WAIT and WAITAOF only cover the asking connection's writes), until it is in the
master's append-only file and, when the master has replicas, received by one of them: a
failover to that replica keeps it. A token shown to its creator, or a revocation confirmed
to an admin, survives the master's crash and its replacement.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import redis.asyncio as redis
import redis.exceptions as redis_errors
import structlog
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff

from tokenward.gateway.records import ServiceAccountRecord, TeamRecord, TokenRecord
from tokenward.gateway.settings import RedisSettings

T = TypeVar("T")
log = structlog.get_logger("tokenward.store")

CHANGES_CHANNEL = "tw:changes"
CHANGELOG_MAXLEN = 10_000
DURABLE_TIMEOUT_MS = 2000  # an admin write waits this long for the disk and for a replica
STATE_SETTLE = 1.0  # seconds without a failure before the store counts as reachable again
TOUCH_CONCURRENCY = 64  # cluster: last-used updates in flight at once (one script call each)
SOCKET_TIMEOUT = 2.0  # seconds, for connecting and for each reply
MAX_CONNECTIONS = 32  # per process, to one server
HEALTH_CHECK_INTERVAL = 5.0  # seconds idle before a pooled connection is PINGed on reuse
RETRY_BACKOFF_BASE = 0.01  # seconds before the one retry on a fresh connection ...
RETRY_BACKOFF_CAP = 0.05  # ... at most

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


def connection_options() -> dict[str, Any]:
    """What every connection to the store is opened with, so that a dead pooled connection
    (the store restarted, a proxy cut it) costs no request once the store answers again:

    - RESP2 (`protocol=2`): under RESP3, redis-py 8 enables maintenance notifications on
      its own and then skips its check that a pooled connection was not closed by the
      server, so a request would be sent on a dead one;
    - one retry on a ConnectionError, on a fresh connection after a short pause: a request
      that met a connection the store had closed goes again instead of failing. Every
      command sent through the shared client is safe to send twice: reads, writes of whole
      values, change announcements (applying one twice is harmless) and audit appends (at
      least once already: a failed batch is sent again, and each event has its request id).
      A retry can only repeat a command the store ran if the link broke between the store
      running it and its reply. Admin writes go on their own pinned connection
      (`Store._write`) and are never retried. Timeouts are not retried: a store that does
      not answer keeps its SOCKET_TIMEOUT bound;
    - idle connections are checked (PING) before reuse after HEALTH_CHECK_INTERVAL.
    """
    return {
        "protocol": 2,
        "retry": Retry(
            ExponentialBackoff(cap=RETRY_BACKOFF_CAP, base=RETRY_BACKOFF_BASE), 1, (redis_errors.ConnectionError,)
        ),
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": SOCKET_TIMEOUT,
    }


def connect(settings: RedisSettings) -> Any:
    """A redis-py asyncio client for the configured store: one server (`url`), the current
    master of a Redis Sentinel set-up (`sentinel`), or a Redis Cluster (`cluster`)."""
    options = connection_options()
    if settings.sentinel is not None:
        conf = settings.sentinel
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": SOCKET_TIMEOUT,
        }
        if conf.sentinel_password is not None:
            sentinel_kwargs.update(username=conf.sentinel_username, password=conf.sentinel_password)
        make_sentinel: Any = Sentinel  # untyped in redis-py
        sentinels = make_sentinel(list(conf.nodes), sentinel_kwargs=sentinel_kwargs, **options)
        return sentinels.master_for(
            conf.master,
            username=conf.username,
            password=conf.password,
            db=conf.db,
        )
    if settings.cluster is not None:
        conf_c = settings.cluster
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in conf_c.nodes],
            username=conf_c.username,
            password=conf_c.password,
            # the cluster client retries on its own, relearning the slot map in between
            **{k: v for k, v in options.items() if k != "retry"},
        )
    if settings.url is None:
        raise ValueError("no store configured: the embedded store is started by the runtime")
    # Bounded: a burst of cache misses waits for one of MAX_CONNECTIONS connections
    # (each read is ~0.1 ms) instead of opening one connection per concurrent request.
    pool = redis.BlockingConnectionPool.from_url(
        settings.url,
        max_connections=MAX_CONNECTIONS,
        timeout=SOCKET_TIMEOUT,
        **options,
    )
    return redis.Redis.from_pool(pool)  # closing the client closes the pool


class StoreUnavailable(Exception):
    """The store could not be reached or answered with an error."""


class Conflict(Exception):
    """The record already exists."""


class QuotaExceeded(Exception):
    """A team (or the org level) already holds `limit` tokens."""

    def __init__(self, held: int, limit: int, org: str = "", team: str | None = None) -> None:
        super().__init__(f"holds {held} tokens, the limit is {limit}")
        self.held = held
        self.limit = limit
        self.org = org  # where: the token's org, and its team (None: the org level)
        self.team = team


@dataclass(frozen=True, slots=True)
class IndexPage:
    """Rows of an index after a cursor: (member, score) in index order; `more`: rows follow."""

    rows: list[tuple[str, float]]
    more: bool


class Keys:
    orgs = "tw:orgs"
    changelog = "tw:changes:log"
    audit = "tw:audit"

    @staticmethod
    def teams(org: str) -> str:
        return f"tw:{{{org}}}:teams"

    @staticmethod
    def team(org: str, team: str) -> str:
        return f"tw:{{{org}}}:team:{team}"

    @staticmethod
    def service_accounts(org: str, team: str) -> str:
        return f"tw:{{{org}}}:team:{team}:sas"

    @staticmethod
    def service_account(org: str, team: str, name: str) -> str:
        return f"tw:{{{org}}}:team:{team}:sa:{name}"

    @staticmethod
    def team_tokens(org: str, team: str | None) -> str:
        return f"tw:{{{org}}}:team:{team}:tokens" if team else f"tw:{{{org}}}:org-tokens"

    @staticmethod
    def org_tokens(org: str) -> str:
        return f"tw:{{{org}}}:tokens"

    @staticmethod
    def token(key_id: str) -> str:
        return f"tw:tok:{{{key_id}}}"

    # Indexes for bounded pages (same slot as the org's other keys):
    @staticmethod
    def teams_by_name(org: str) -> str:
        """Team names in a sorted set (all scores 0): pages in name order by ZRANGE BYLEX."""
        return f"tw:{{{org}}}:teams:by-name"

    @staticmethod
    def service_accounts_by_name(org: str, team: str) -> str:
        return f"tw:{{{org}}}:team:{team}:sas:by-name"

    @staticmethod
    def service_account_tokens(org: str, team: str, name: str) -> str:
        """A service account's token ids, scored by created_at like the team index."""
        return f"tw:{{{org}}}:team:{team}:sa:{name}:tokens"

    @staticmethod
    def service_account_tokens_built(org: str, team: str) -> str:
        """Set once the team's tokens from before the service-account indexes are in them."""
        return f"tw:{{{org}}}:team:{team}:sa-tokens-built"


# Sets last_used_at only on a token that still exists (a late flush must not resurrect it).
_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local old = tonumber(redis.call('HGET', KEYS[1], 'last_used_at') or '0')
  if tonumber(ARGV[1]) > old then redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1]) end
  return 1
end
return 0
"""

# One command appends a whole batch of audit events (ARGV[2..]) to the capped stream.
_APPEND_AUDIT = """
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
end
redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[1])
return #ARGV - 1
"""
# Replaces a token's record only if it is byte for byte the one the caller read (a
# compare-and-set: a revoke or any other write in between wins, and this one is dropped).
_SET_IF_UNCHANGED = """
if redis.call('HGET', KEYS[1], 'data') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'data', ARGV[2])
  return 1
end
return 0
"""
AUDIT_BATCH = 25  # events per call: Valkey works in slices the requests can run between

# One page of a (created_at, id) index after a cursor: O(log n + count) whatever the index
# holds. The cursor is the last row already returned (score, member); if that row has been
# deleted since, the page starts after every row that sorts no later than it (rows with the
# same score are ordered by member, byte-wise: a binary search among them; Lua's own string
# comparison follows the server's locale, so bytes are compared one by one).
_INDEX_PAGE = """
local function le(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a <= #b
end
local start = 0
if ARGV[1] ~= '' then
  local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
  if rank then
    start = rank + 1
  else
    local lo = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ARGV[2])
    local hi = redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[2])
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      local m = redis.call('ZRANGE', KEYS[1], mid, mid)[1]
      if le(m, ARGV[1]) then lo = mid + 1 else hi = mid end
    end
    start = lo
  end
end
return redis.call('ZRANGE', KEYS[1], start, start + tonumber(ARGV[3]) - 1, 'WITHSCORES')
"""

# A token's index entries, only while its team (or the org level) holds fewer than the
# quota: the count and the writes in one script, so concurrent creations cannot pass it.
# KEYS: team index, org index, service-account index (or the team index again).
_INDEX_IN_QUOTA = """
local held = redis.call('ZCARD', KEYS[1])
local quota = tonumber(ARGV[3])
if quota >= 0 and redis.call('ZSCORE', KEYS[1], ARGV[2]) == false and held >= quota then
  return -held
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
if ARGV[4] == '1' then redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2]) end
return held + 1
"""

# The name index of a set (teams, service accounts), rebuilt from the set when the two
# disagree in size (keys written before the name index existed).
_SYNC_NAME_INDEX = """
if redis.call('ZCARD', KEYS[2]) == redis.call('SCARD', KEYS[1]) then return 0 end
redis.call('DEL', KEYS[2])
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('ZADD', KEYS[2], 0, name)
end
return 1
"""


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


class Store:
    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        # redis-py types replies as unions that depend on decode_responses; we always get
        # bytes, so the client is used untyped here and replies are decoded explicitly.
        self.client: Any = client
        self.cluster = isinstance(client, RedisCluster)
        self._touch = client.register_script(_TOUCH)
        self._append_audit = client.register_script(_APPEND_AUDIT)
        self._set_if_unchanged = client.register_script(_SET_IF_UNCHANGED)
        self._index_page = client.register_script(_INDEX_PAGE)
        self._sync_name_index = client.register_script(_SYNC_NAME_INDEX)
        self._sa_indexes_built: set[tuple[str, str]] = set()
        self.waitaof_supported: bool | None = None
        self.persistence = ""  # from check_durability()
        self.durability_warning: str | None = None  # confirmed writes a store crash can lose
        self.errors = 0  # store errors seen, for the metric
        # Reachability, as a state with one log line per change (not one per failed call).
        self.up = True
        self.outages = 0
        self._last_failure = 0.0
        self._down_since = 0.0
        self._subscriptions = os.getpid()  # cluster: which node the next subscription goes to
        # Told of every change this process makes, before it is published: the channel may
        # bring it back later than the next request (in a cluster it crosses the cluster bus).
        self.local_listeners: list[Callable[[Change], None]] = []

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
            kw = node.connection_kwargs
            node_client = redis.Redis(
                host=node.host,
                port=node.port,
                username=kw.get("username"),
                password=kw.get("password"),
                credential_provider=kw.get("credential_provider"),
                **connection_options(),
            )
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
            if self.cluster and isinstance(exc.__cause__, _OUTAGES):
                await self._relearn_slots()
            raise

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

    # -- changes -----------------------------------------------------------------------
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

    # -- orgs and teams -----------------------------------------------------------------
    async def list_orgs(self) -> list[str]:
        members = await self._call(lambda: self.client.smembers(Keys.orgs))
        return sorted(m.decode() for m in members)

    async def ensure_org(self, org: str) -> None:
        await self._call(lambda: self.client.sadd(Keys.orgs, org))

    async def create_team(self, team: TeamRecord, audit: AuditEntry | None = None) -> None:
        """Index first, then the record; durable before returning."""
        await self.ensure_org(team.org)
        key = Keys.team(team.org, team.name)
        _, _, created = await self._write_audited(
            key,
            [
                ("SADD", Keys.teams(team.org), team.name),
                ("ZADD", Keys.teams_by_name(team.org), 0, team.name),
                ("SET", key, orjson.dumps(team.to_json()), "NX"),
            ],
            audit,
        )
        if created is None:
            raise Conflict(f"team {team.name!r} already exists in org {team.org!r}")

    async def get_team(self, org: str, name: str) -> TeamRecord | None:
        raw = await self._call(lambda: self.client.get(Keys.team(org, name)))
        return TeamRecord.from_json(orjson.loads(raw)) if raw else None

    async def list_teams(self, org: str) -> list[TeamRecord]:
        names = sorted(m.decode() for m in await self._call(lambda: self.client.smembers(Keys.teams(org))))
        if not names:
            return []
        raws = await self._call(lambda: self.client.mget([Keys.team(org, n) for n in names]))
        return [TeamRecord.from_json(orjson.loads(r)) for r in raws if r]

    async def put_team(self, team: TeamRecord, audit: AuditEntry | None = None) -> None:
        key = Keys.team(team.org, team.name)
        await self._write_audited(key, [("SET", key, orjson.dumps(team.to_json()))], audit)
        await self.publish([Change("team", f"{team.org}/{team.name}")])

    # -- service accounts ---------------------------------------------------------------
    async def create_service_account(self, sa: ServiceAccountRecord, audit: AuditEntry | None = None) -> None:
        key = Keys.service_account(sa.org, sa.team, sa.name)
        _, _, created = await self._write_audited(
            key,
            [
                ("SADD", Keys.service_accounts(sa.org, sa.team), sa.name),
                ("ZADD", Keys.service_accounts_by_name(sa.org, sa.team), 0, sa.name),
                ("SET", key, orjson.dumps(sa.to_json()), "NX"),
            ],
            audit,
        )
        if created is None:
            raise Conflict(f"service account {sa.name!r} already exists in team {sa.team!r}")

    async def get_service_account(self, org: str, team: str, name: str) -> ServiceAccountRecord | None:
        raw = await self._call(lambda: self.client.get(Keys.service_account(org, team, name)))
        return ServiceAccountRecord.from_json(orjson.loads(raw)) if raw else None

    async def list_service_accounts(self, org: str, team: str) -> list[ServiceAccountRecord]:
        names = sorted(
            m.decode()
            for m in await self._call(lambda: self.client.smembers(Keys.service_accounts(org, team)))
        )
        if not names:
            return []
        raws = await self._call(lambda: self.client.mget([Keys.service_account(org, team, n) for n in names]))
        return [ServiceAccountRecord.from_json(orjson.loads(r)) for r in raws if r]

    async def delete_service_account(
        self, org: str, team: str, name: str, audit: AuditEntry | None = None
    ) -> None:
        key = Keys.service_account(org, team, name)
        await self._write_audited(
            key,
            [
                ("DEL", key),
                ("SREM", Keys.service_accounts(org, team), name),
                ("ZREM", Keys.service_accounts_by_name(org, team), name),
            ],
            audit,
        )

    # -- tokens ---------------------------------------------------------------------------
    async def create_token(self, token: TokenRecord, audit: AuditEntry | None = None) -> None:
        """Index first, then the record (two slots in a cluster); durable before returning."""
        await self.ensure_org(token.org)
        index = Keys.org_tokens(token.org)
        await self._write(
            index,
            ("ZADD", Keys.team_tokens(token.org, token.team), token.created_at, token.id),
            ("ZADD", index, token.created_at, token.id),
        )
        key = Keys.token(token.id)
        (created,) = await self._write_audited(
            key, [("HSETNX", key, "data", orjson.dumps(token.to_json()))], audit
        )
        if not created:
            raise Conflict("token id collision")

    async def get_token(self, key_id: str) -> TokenRecord | None:
        raw = await self._call(lambda: self.client.hget(Keys.token(key_id), "data"))
        return TokenRecord.from_json(orjson.loads(raw)) if raw else None

    async def get_tokens_with_usage(self, key_ids: Sequence[str]) -> list[tuple[TokenRecord, float | None]]:
        async def op() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for kid in key_ids:
                pipe.hmget(Keys.token(kid), ["data", "last_used_at"])
            return list(await pipe.execute())

        rows = await self._call(op)
        result = []
        for data, used in rows:
            if data:
                result.append((TokenRecord.from_json(orjson.loads(data)), float(used) if used else None))
        return result

    async def list_token_ids(self, org: str, team: str | None = None, *, all_org: bool = False) -> list[str]:
        key = Keys.org_tokens(org) if all_org else Keys.team_tokens(org, team)
        ids = await self._call(lambda: self.client.zrange(key, 0, -1))
        return [i.decode() for i in ids]

    async def put_token(self, token: TokenRecord) -> None:
        """Replace a token record blindly and announce it (tests and tools). The admin API's
        lifecycle transitions use `change_token`, which never writes back a stale record."""
        key = Keys.token(token.id)
        await self._write(key, ("HSET", key, "data", orjson.dumps(token.to_json())), ("HINCRBY", key, "v", 1))
        await self.publish([Change("token", token.id)])

    async def delete_token(self, token: TokenRecord) -> None:
        """The record first, then the index entries."""
        key = Keys.token(token.id)
        await self._write(key, ("DEL", key))
        index = Keys.org_tokens(token.org)
        await self._write(
            index, ("ZREM", Keys.team_tokens(token.org, token.team), token.id), ("ZREM", index, token.id)
        )
        await self.publish([Change("token", token.id)])

    async def key_secret_check(self, key_id: str, secret_hash: str, check_key: str, check: str) -> bool:
        """Give a legacy record (no check key) a keyed secret check, after its secret was
        proven. Only the two check fields change, by compare-and-set on the whole record:
        if anything else wrote it since it was read (a revoke, a rotation), nothing is
        written and the next verification tries again. Not waited for on disk: losing it
        only leaves the legacy check in place."""
        key = Keys.token(key_id)
        raw = await self._call(lambda: self.client.hget(key, "data"))
        if not raw:
            return False
        data = orjson.loads(raw)
        if data.get("check_key") or data.get("secret_hash") != secret_hash:
            return False
        data["check_key"], data["secret_check"] = check_key, check
        new = orjson.dumps(data)
        if not await self._call(lambda: self._set_if_unchanged(keys=[key], args=[raw, new])):
            return False
        await self.publish([Change("token", key_id)])
        return True

    async def touch_last_used(self, used: dict[str, float]) -> None:
        if not used:
            return

        async def op() -> None:
            if self.cluster:
                # a cluster pipeline refuses scripts: one call per token, a bounded number at once
                items = list(used.items())
                for start in range(0, len(items), TOUCH_CONCURRENCY):
                    await asyncio.gather(
                        *(
                            self._touch(keys=[Keys.token(kid)], args=[repr(at)])
                            for kid, at in items[start : start + TOUCH_CONCURRENCY]
                        )
                    )
                return
            pipe = self.client.pipeline(transaction=False)
            for kid, at in used.items():
                await self._touch(keys=[Keys.token(kid)], args=[repr(at)], client=pipe)
            await pipe.execute()

        await self._call(op)

    async def last_used(self, key_id: str) -> float | None:
        raw = await self._call(lambda: self.client.hget(Keys.token(key_id), "last_used_at"))
        return float(raw) if raw else None

    # -- bounded pages and the token quota ------------------------------------------------
    async def create_token_in_quota(
        self,
        token: TokenRecord,
        max_per_index: int,
        audit: AuditEntry | None = None,
        fence: ActorFence | None = None,
    ) -> None:
        """`create_token`, refused with QuotaExceeded once the token's team (or, for an
        org-level token, the org level) holds `max_per_index` tokens of any status. The
        count and the index entries are one script: concurrent creations cannot pass it.
        A token of a service account also enters that account's index. The record is
        written with `audit`'s event in one transaction (see `_write_audited`)."""
        await self.ensure_org(token.org)
        await self.index_token(token, max_per_index)
        key = Keys.token(token.id)
        data = orjson.dumps(token.to_json())
        try:
            for _ in range(TRANSITION_ATTEMPTS):
                actor_version = await self.fence_version(fence)
                if not actor_version:
                    (created,) = await self._write_audited(key, [("HSETNX", key, "data", data)], audit)
                    break
                keys = [key, Keys.token(fence.key_id)]  # type: ignore[union-attr]
                if audit is not None:
                    keys.append(Keys.audit)
                args = [actor_version, data, audit.maxlen if audit else 0, audit.payload if audit else b""]
                (created,) = await self._write(key, ("EVAL", _CREATE_FENCED, len(keys), *keys, *args))
                if int(created) != _ACTOR_CHANGED:
                    break
            else:
                raise StoreUnavailable(f"token {fence and fence.key_id} kept changing")
            if not int(created):
                raise Conflict("token id collision")
        except BaseException:
            with contextlib.suppress(Exception):
                if await self.get_token(token.id) is None:
                    await self.unindex_token(token)  # not created: give the quota slot back
            raise

    async def token_count(self, org: str, team: str | None) -> int:
        """Tokens (any status) a team, or the org level, holds: the quota's count."""
        return int(await self._call(lambda: self.client.zcard(Keys.team_tokens(org, team))))

    async def unindex_service_account_token(self, token: TokenRecord) -> None:
        """After `delete_token`: drop the token from its service account's index."""
        if token.team is None or not token.service_account:
            return
        key = Keys.service_account_tokens(token.org, token.team, token.service_account)
        await self._write(key, ("ZREM", key, token.id))

    async def ensure_service_account_indexes(self, org: str, team: str) -> None:
        """Once per team: put the tokens issued before the service-account indexes existed
        into them (a chunked walk of the team index; at most tokens.max_per_team)."""
        if (org, team) in self._sa_indexes_built:
            return
        marker = Keys.service_account_tokens_built(org, team)
        if not await self._call(lambda: self.client.exists(marker)):
            position: tuple[float, str] | None = None
            while True:
                page = await self.token_index_page(org, team, position, 200)
                records = await self.get_tokens_with_usage([m for m, _ in page.rows])
                adds = [
                    ("ZADD", Keys.service_account_tokens(org, team, r.service_account), r.created_at, r.id)
                    for r, _ in records
                    if r.service_account and r.team == team
                ]
                if adds:
                    await self._write(adds[0][1], *adds)
                if not page.more:
                    break
                position = (page.rows[-1][1], page.rows[-1][0])
            await self._write(marker, ("SET", marker, "1"))
        self._sa_indexes_built.add((org, team))

    async def token_index_page(
        self,
        org: str,
        team: str | None,
        after: tuple[float, str] | None,
        count: int,
        *,
        service_account: str | None = None,
    ) -> IndexPage:
        """Up to `count` (id, created_at) rows of a team's token index (or of one of its
        service accounts' indexes) after the cursor row `after`, oldest first."""
        key = (
            Keys.service_account_tokens(org, team, service_account)
            if team is not None and service_account is not None
            else Keys.team_tokens(org, team)
        )
        score, member = (repr(after[0]), after[1]) if after is not None else ("0", "")
        raw = await self._call(lambda: self._index_page(keys=[key], args=[member, score, count + 1]))
        rows = [(raw[i].decode(), float(raw[i + 1])) for i in range(0, len(raw), 2)]
        return IndexPage(rows[:count], len(rows) > count)

    async def _name_page(
        self, members: str, by_name: str, after: str | None, count: int
    ) -> tuple[list[str], bool]:
        await self._call(lambda: self._sync_name_index(keys=[members, by_name]))
        low = f"({after}" if after is not None else "-"
        raw = await self._call(
            lambda: self.client.zrange(by_name, low, "+", bylex=True, offset=0, num=count + 1)
        )
        names = [n.decode() for n in raw]
        return names[:count], len(names) > count

    async def team_page(
        self, org: str, after: str | None, count: int
    ) -> tuple[list[str], list[TeamRecord], bool]:
        """Up to `count` team names after `after` in name order, their records (a name whose
        record is gone is skipped), and whether more names follow."""
        names, more = await self._name_page(Keys.teams(org), Keys.teams_by_name(org), after, count)
        if not names:
            return names, [], more
        raws = await self._call(lambda: self.client.mget([Keys.team(org, n) for n in names]))
        return names, [TeamRecord.from_json(orjson.loads(r)) for r in raws if r], more

    async def service_account_page(
        self, org: str, team: str, after: str | None, count: int
    ) -> tuple[list[str], list[ServiceAccountRecord], bool]:
        names, more = await self._name_page(
            Keys.service_accounts(org, team), Keys.service_accounts_by_name(org, team), after, count
        )
        if not names:
            return names, [], more
        raws = await self._call(lambda: self.client.mget([Keys.service_account(org, team, n) for n in names]))
        return names, [ServiceAccountRecord.from_json(orjson.loads(r)) for r in raws if r], more

    # -- audit stream -----------------------------------------------------------------------
    async def append_audit(self, events: Sequence[bytes], maxlen: int) -> None:
        async def op() -> None:
            for start in range(0, len(events), AUDIT_BATCH):
                batch = events[start : start + AUDIT_BATCH]
                await self._append_audit(keys=[Keys.audit], args=[maxlen, *batch])

        await self._call(op)

    async def read_audit(
        self, start: str = "-", end: str = "+", count: int = 100, reverse: bool = True
    ) -> list[tuple[str, dict[str, Any]]]:
        if reverse:
            rows = await self._call(lambda: self.client.xrevrange(Keys.audit, end, start, count=count))
        else:
            rows = await self._call(lambda: self.client.xrange(Keys.audit, start, end, count=count))
        return [(i.decode(), orjson.loads(f[b"e"])) for i, f in rows]

    # -- atomic token transitions and audited admin writes ------------------------------------
    # Every lifecycle transition (revoke, restore, rotate, update, delete, leak report) is a
    # compare-and-set on the record's version (hash field `v`, bumped by every write of `data`):
    # the caller decides on the record it read, and the decision is written only if the record
    # is still that version, else it is decided again on the new one. A PATCH racing a revoke
    # is therefore applied to the revoked record and never writes an older, active copy back.
    # The admin change's audit event goes into the same script or MULTI (one server or
    # Sentinel), so a change confirmed to the caller (after WAITAOF/WAIT) has its event in
    # the audit stream. A cluster keeps the stream in its own slot: there the event is a
    # second durable write after the change and before the response (see SECURITY.md).

    async def change_token(
        self,
        key_id: str,
        decide: Callable[[TokenRecord], TokenEdit | None],
        fence: ActorFence | None = None,
    ) -> tuple[TokenRecord, TokenEdit | None] | None:
        """Apply `decide(current record)` atomically: (the record it was decided on, the edit
        that was written, None when `decide` chose to change nothing), or None when there
        is no such token. `decide` may raise to refuse; it may be called more than once.
        With `fence`, the edit is written only while the acting token's record is the one
        `fence.check` accepted (see ActorFence)."""
        key = Keys.token(key_id)
        for _ in range(TRANSITION_ATTEMPTS):
            raw, version = await self._call(lambda: self.client.hmget(key, ["data", "v"]))
            if not raw:
                return None
            record = TokenRecord.from_json(orjson.loads(raw))
            edit = decide(record)
            if edit is None:
                return record, None
            actor_version = await self.fence_version(fence)
            keys = [key]
            if actor_version:
                keys.append(Keys.token(fence.key_id))  # type: ignore[union-attr]
            successor = b""
            if edit.successor is not None:
                keys.append(Keys.token(edit.successor.id))
                successor = orjson.dumps(edit.successor.to_json())
            audit = edit.audit
            if audit is not None and not self.cluster:
                keys.append(Keys.audit)
            args = [
                (version or b"0"),
                b"" if edit.record is None else orjson.dumps(edit.record.to_json()),
                audit.maxlen if audit else 0,
                audit.payload if audit else b"",
                successor,
                actor_version,
            ]
            (outcome,) = await self._write(key, ("EVAL", _TRANSITION_SCRIPT, len(keys), *keys, *args))
            outcome = int(outcome)
            if outcome == _GONE:
                return None
            if outcome == _SUCCESSOR_EXISTS:
                raise Conflict("token id collision")
            if outcome in (_STALE, _ACTOR_CHANGED):
                continue
            if audit is not None and self.cluster:
                await self._append_audit_durably(audit)
            changed = [Change("token", key_id)]
            if edit.successor is not None:
                changed.append(Change("token", edit.successor.id))
            await self.publish(changed)
            return record, edit
        raise StoreUnavailable(f"token {key_id} kept changing under {TRANSITION_ATTEMPTS} attempts")

    async def fence_version(self, fence: ActorFence | None) -> bytes:
        """The acting token's record read fresh from the store (never a cache) and put to
        `fence.check`, which raises unless it may still act; its version, for a script to
        write only while the record is still that version (b"" without a fence, and in a
        cluster, where the actor's record is in another slot: there this read, one round trip
        before the write, is the check)."""
        if fence is None:
            return b""
        key = Keys.token(fence.key_id)
        raw, version = await self._call(lambda: self.client.hmget(key, ["data", "v"]))
        fence.check(TokenRecord.from_json(orjson.loads(raw)) if raw else None)
        return b"" if self.cluster else (version or b"0")

    async def index_token(self, token: TokenRecord, max_per_index: int | None = None) -> None:
        """The token's index entries (written before its record: see the module docstring):
        team (or org level), org, and its service account's. With `max_per_index`, refused
        with QuotaExceeded once the team index holds that many, in the same script."""
        team_index = Keys.team_tokens(token.org, token.team)
        sa_index = (
            Keys.service_account_tokens(token.org, token.team, token.service_account)
            if token.team is not None and token.service_account
            else team_index
        )
        (held,) = await self._write(
            team_index,
            (
                "EVAL",
                _INDEX_IN_QUOTA,
                3,
                team_index,
                Keys.org_tokens(token.org),
                sa_index,
                repr(token.created_at),
                token.id,
                max_per_index if max_per_index is not None else -1,
                "1" if sa_index != team_index else "0",
            ),
        )
        if int(held) < 0:
            raise QuotaExceeded(-int(held), max_per_index or 0, token.org, token.team)

    async def unindex_token(self, token: TokenRecord) -> None:
        index = Keys.org_tokens(token.org)
        await self._write(
            index, ("ZREM", Keys.team_tokens(token.org, token.team), token.id), ("ZREM", index, token.id)
        )
        await self.unindex_service_account_token(token)

    async def _write_audited(
        self, key: str, commands: Sequence[tuple[Any, ...]], audit: AuditEntry | None
    ) -> list[Any]:
        """`commands` (on `key`'s slot) in one MULTI with `audit`'s stream append (not in a
        cluster: there the append follows, durably, before returning). Their replies."""
        stream: list[tuple[Any, ...]] = []
        if audit is not None and not self.cluster:
            stream = [_xadd(audit)]
        replies = await self._write(key, ("MULTI",), *commands, *stream, ("EXEC",))
        executed = replies[-1]
        if not isinstance(executed, list):
            raise StoreUnavailable("store error: the transaction was aborted")
        for reply in executed:
            if isinstance(reply, Exception):
                raise StoreUnavailable(f"store error: {type(reply).__name__}")
        if audit is not None and self.cluster:
            await self._append_audit_durably(audit)
        return executed[: len(commands)]

    async def _append_audit_durably(self, audit: AuditEntry) -> None:
        await self._write(Keys.audit, _xadd(audit))


# -- atomic token transitions (see Store.change_token) ----------------------------------------
TRANSITION_ATTEMPTS = 50  # decisions re-taken on a record that keeps changing, then 503
_GONE, _STALE, _SUCCESSOR_EXISTS, _ACTOR_CHANGED = -1, -2, -3, -4

# KEYS[1] the record; then, if ARGV[6] is not empty, the acting token's record (its fence);
# then, if ARGV[5] is not empty, the successor's key (a rotation: same slot); then, if given,
# the audit stream. ARGV: expected version, new data ('' deletes the record), audit maxlen,
# audit event ('' none), successor data ('' none), the actor's expected version ('' none).
_TRANSITION_SCRIPT = """
local record = KEYS[1]
if redis.call('EXISTS', record) == 0 then return -1 end
local k = 2
if ARGV[6] ~= '' then
  if redis.call('EXISTS', KEYS[2]) == 0 or (redis.call('HGET', KEYS[2], 'v') or '0') ~= ARGV[6] then
    return -4
  end
  k = 3
end
local version = redis.call('HGET', record, 'v') or '0'
if version ~= ARGV[1] then return -2 end
if ARGV[5] ~= '' then
  if redis.call('EXISTS', KEYS[k]) == 1 then return -3 end
  redis.call('HSET', KEYS[k], 'data', ARGV[5])
  k = k + 1
end
if ARGV[2] == '' then
  redis.call('DEL', record)
else
  redis.call('HSET', record, 'data', ARGV[2], 'v', tostring(tonumber(version) + 1))
end
if ARGV[4] ~= '' and KEYS[k] then
  redis.call('XADD', KEYS[k], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[4])
end
return 1
"""


# A new token's record, written only while the acting token's record is still the version
# its fence accepted. KEYS: the record, the actor's record, the audit stream (optional).
# ARGV: the actor's expected version, data, audit maxlen, audit event ('' none).
_CREATE_FENCED = """
if redis.call('EXISTS', KEYS[2]) == 0 or (redis.call('HGET', KEYS[2], 'v') or '0') ~= ARGV[1] then
  return -4
end
if redis.call('HSETNX', KEYS[1], 'data', ARGV[2]) == 0 then return 0 end
if ARGV[4] ~= '' and KEYS[3] then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[4])
end
return 1
"""


@dataclass(frozen=True, slots=True)
class ActorFence:
    """An admin change is written only while the token making it may still act: `check`
    (raising to refuse) is given the acting token's record as the store has it just before
    the write, and the write happens only if that record has not changed since (one script
    on one server or Sentinel). A revocation confirmed before the write commits therefore
    stops it, however long the change took to prepare (argon2, say)."""

    key_id: str
    check: Callable[[TokenRecord | None], None]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin change's audit event (the stream's JSON), written with the change itself."""

    payload: bytes
    maxlen: int


@dataclass(frozen=True, slots=True)
class TokenEdit:
    """What a transition writes in place of the record it was decided on."""

    record: TokenRecord | None  # None: delete the record
    audit: AuditEntry | None = None
    successor: TokenRecord | None = None  # rotation: created in the same step, in the same slot


def _xadd(audit: AuditEntry) -> tuple[Any, ...]:
    return ("XADD", Keys.audit, "MAXLEN", "~", audit.maxlen, "*", "e", audit.payload)


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


async def _confirmed(pubsub: Any) -> None:
    """Wait for the store's reply to SUBSCRIBE: only from then on does a change reach us
    (a record read on another connection before it could miss a change made meanwhile)."""
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while time.monotonic() < deadline:
        message = await pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
        if message is not None and message.get("type") == "subscribe":
            return
    raise redis_errors.ConnectionError("the store did not confirm the subscription")


def _raised_in_redis_py(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if module == "redis" or module.startswith("redis."):
            return True
        tb = tb.tb_next
    return False


def _parse_id(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _stream_id_gt(a: str, b: str) -> bool:
    return _parse_id(a) > _parse_id(b)


def now() -> float:
    return time.time()
