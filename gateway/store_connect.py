"""Opening a client to the store, whatever its topology: one server (`redis.url`), the master
that Redis Sentinel names (`redis.sentinel`), or a Redis Cluster (`redis.cluster`).

Every connection is opened with the same options (`connection_options`), so a dead pooled
connection costs no request once the store answers again. `connect_node` opens a plain
connection to one cluster node (for the change subscription, see store_changes).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

from tokenward.gateway.settings import RedisSettings

SOCKET_TIMEOUT = 2.0  # seconds, for connecting and for each reply
MAX_CONNECTIONS = 32  # per process, to one server
HEALTH_CHECK_INTERVAL = 5.0  # seconds idle before a pooled connection is PINGed on reuse
RETRY_BACKOFF_BASE = 0.01  # seconds before the one retry on a fresh connection ...
RETRY_BACKOFF_CAP = 0.05  # ... at most


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
    # credentials given beside the URL (redis.username, redis.password[_file]); the settings
    # refuse a password in both places
    credentials = {"username": settings.username, "password": settings.password}
    pool = redis.BlockingConnectionPool.from_url(
        settings.url,
        max_connections=MAX_CONNECTIONS,
        timeout=SOCKET_TIMEOUT,
        **{k: v for k, v in credentials.items() if v is not None},
        **options,
    )
    return redis.Redis.from_pool(pool)  # closing the client closes the pool


def connect_node(node: ClusterNode) -> redis.Redis:
    """A plain client to one cluster node, with the cluster's credentials."""
    kw = node.connection_kwargs
    return redis.Redis(
        host=node.host,
        port=int(node.port),  # redis-py makes it an int in any case
        username=kw.get("username"),
        password=kw.get("password"),
        credential_provider=kw.get("credential_provider"),
        **connection_options(),
    )
