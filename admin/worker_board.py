"""`serve --workers N`: what the workers tell each other, in memory they share.

Every worker serves the admin port too (SO_REUSEPORT), and the kernel hands each connection
to any of them. So that `/readyz` and `/metrics` answer for the whole server, not for the
worker that happened to get the connection, each worker publishes a report (its readiness
and its metric families) every PUBLISH_INTERVAL into its own slot of a board the supervisor
allocates before spawning them: shared memory (`multiprocessing` RawArray, an unlinked file
in /dev/shm that the spawned workers inherit; nothing to clean up, nothing on disk). The
worker answering reads every slot and answers for all (`tokenward.health`).

A slot is written by one process at a time (its worker) and read by any: two buffers, the
writer filling the one not current and then flipping `current`; each buffer has a sequence
number, odd while it is written, so a reader never decodes a half-written report (it reads
again). A worker killed in the middle of a write leaves the current buffer intact, and its
successor (the supervisor restarts it on the same slot) finds its last report there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web

from tokenward.gateway.metrics import Family

log = structlog.get_logger("tokenward")

PUBLISH_INTERVAL = 1.0  # seconds between two reports of a worker
STALE_AFTER = 5.0  # a worker whose last report is older than this is not ready (hung)
BUFFER_BYTES = 2 * 1024 * 1024  # one compressed report at most (~100 000 series)
_CURRENT = struct.Struct("<Q")  # which buffer holds the last complete report
_HEAD = struct.Struct("<QQ")  # a buffer's sequence number (odd: being written) and length
SLOT_BYTES = _CURRENT.size + 2 * (_HEAD.size + BUFFER_BYTES)
READ_TRIES = 20


@dataclass(frozen=True)
class Report:
    """One worker's last report."""

    worker: int
    pid: int
    at: float  # time.monotonic() when published (one clock for every process of the host)
    readiness: dict[str, Any]
    metrics: list[Family]

    def age(self, now: float) -> float:
        return max(0.0, now - self.at)

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def live(self, now: float) -> bool:
        """Its process is there and reported lately."""
        return self.age(now) <= STALE_AFTER and self.alive()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: the pid exists
        return True
    return True


class Board:
    """The slots of every worker, seen from worker `index` (it writes its own)."""

    def __init__(self, slots: Sequence[Any], index: int) -> None:
        self.slots = list(slots)
        self.index = index
        self._too_large = False

    @staticmethod
    def allocate(context: Any, workers: int) -> list[Any]:
        """In the supervisor, before spawning: one zeroed slot per worker (pass the list to
        every worker's process as an argument: that is how spawned children inherit it)."""
        return [context.RawArray("c", SLOT_BYTES) for _ in range(workers)]

    @property
    def workers(self) -> int:
        return len(self.slots)

    def publish(self, readiness: dict[str, Any], metrics: list[Family]) -> None:
        """Write this worker's report into its slot."""
        report = {"worker": self.index, "pid": os.getpid(), "at": time.monotonic(), "readiness": readiness}
        payload = zlib.compress(orjson.dumps({**report, "metrics": metrics}), 1)
        if len(payload) > BUFFER_BYTES:
            if not self._too_large:
                log.error("worker report too large for its shared slot; its metrics are left out",
                          worker=self.index, bytes=len(payload))
                self._too_large = True
            payload = zlib.compress(orjson.dumps({**report, "metrics": []}), 1)
        _write(self.slots[self.index], payload)

    def read(self, index: int) -> Report | None:
        """Worker `index`'s last complete report (None: none yet)."""
        payload = _read(self.slots[index])
        if payload is None:
            return None
        try:
            data = orjson.loads(payload)
            return Report(int(data["worker"]), int(data["pid"]), float(data["at"]), data["readiness"], data["metrics"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):  # not what a worker writes
            return None

    def reports(self) -> list[Report | None]:
        return [self.read(i) for i in range(self.workers)]

    def predecessor(self) -> Report | None:
        """The last report in this worker's own slot by an earlier process (it crashed and
        this one replaces it): its counts are carried on."""
        found = self.read(self.index)
        return found if found is not None and found.pid != os.getpid() else None


BOARD = web.AppKey("worker_board", Board)


def _buffer_offset(which: int) -> int:
    return _CURRENT.size + which * (_HEAD.size + BUFFER_BYTES)


def _write(slot: Any, payload: bytes) -> None:
    (current,) = _CURRENT.unpack_from(slot, 0)
    which = 1 - current if current in (0, 1) else 0
    offset = _buffer_offset(which)
    sequence, _ = _HEAD.unpack_from(slot, offset)
    sequence += 1 + sequence % 2  # odd: being written
    _HEAD.pack_into(slot, offset, sequence, len(payload))
    ctypes.memmove(ctypes.addressof(slot) + offset + _HEAD.size, payload, len(payload))
    _HEAD.pack_into(slot, offset, sequence + 1, len(payload))  # even: complete
    _CURRENT.pack_into(slot, 0, which)


def _read(slot: Any) -> bytes | None:
    """The current buffer's report, decompressed (None: never written, or no complete
    report after READ_TRIES reads)."""
    for _ in range(READ_TRIES):
        (current,) = _CURRENT.unpack_from(slot, 0)
        offset = _buffer_offset(current if current in (0, 1) else 0)
        sequence, length = _HEAD.unpack_from(slot, offset)
        if sequence == 0:
            return None  # never written
        if sequence % 2 == 0 and 0 < length <= BUFFER_BYTES:
            payload = ctypes.string_at(ctypes.addressof(slot) + offset + _HEAD.size, length)
            if _HEAD.unpack_from(slot, offset) == (sequence, length):
                with contextlib.suppress(zlib.error):
                    return zlib.decompress(payload)
        time.sleep(0.001)  # the writer is at it: read again
    return None
