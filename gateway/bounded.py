"""The bounded maps every in-process memo and cache uses: `BoundedMap` (at most `max_size`
entries, the least recently used one evicted first, optionally an age limit on reads) for
what can go stale, and `Memo` (a dict that forgets its oldest entry when full, read at a
plain dict's speed) for pure verdicts on the request path, which never go stale.

Nothing here is shared between objects: each owner (the verification cache, a trusted-proxy
set, a header policy, a forwarder) builds its own, so two servers in one process never see
each other's entries.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedMap(Generic[K, V]):
    """A least-recently-used map of at most `max_size` entries. `ttl` (seconds, optional) is
    the default age limit of `get`; an entry older than that is not returned but stays (a
    caller may still ask for it with a longer `max_age`, e.g. to serve stale on an outage)."""

    __slots__ = ("_clock", "_data", "max_size", "ttl")

    def __init__(
        self, max_size: int, ttl: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_size < 1:
            raise ValueError("a bounded map holds at least one entry")
        self.max_size = max_size
        self.ttl = ttl
        self._clock = clock
        self._data: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def get(self, key: K, max_age: float | None = None) -> V | None:
        """The value, if present and stored within `max_age` (default: `ttl`) seconds."""
        item = self._data.get(key)
        if item is None:
            return None
        if max_age is None:
            max_age = self.ttl
        if max_age is not None and self._clock() - item[1] > max_age:
            return None
        self._data.move_to_end(key)
        return item[0]

    def put(self, key: K, value: V) -> None:
        data = self._data
        data[key] = (value, self._clock())
        data.move_to_end(key)
        while len(data) > self.max_size:
            data.popitem(last=False)

    def pop(self, key: K) -> V | None:
        item = self._data.pop(key, None)
        return None if item is None else item[0]

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def keys(self) -> list[K]:
        """The keys, least recently used first."""
        return list(self._data)


class Memo(dict[K, V]):
    """A pure function's remembered answers: read with `get` (dict's own), written with
    `remember`, which forgets the oldest entry once `max_size` are held. For verdicts that
    depend only on their key (a header name's rule, a path's canonical form), where a
    forgotten entry only costs its recomputation."""

    __slots__ = ("max_size",)

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("a memo holds at least one entry")
        super().__init__()
        self.max_size = max_size

    def remember(self, key: K, value: V) -> V:
        if len(self) >= self.max_size:
            del self[next(iter(self))]
        self[key] = value
        return value
