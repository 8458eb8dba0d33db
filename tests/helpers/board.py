"""A process that writes one report onto a worker board (tokenward.worker_board) and exits,
as a worker that crashed leaves its last report behind."""

from __future__ import annotations

from typing import Any

from tokenward.gateway.metrics import Family
from tokenward.worker_board import Board


def publish_and_exit(slots: list[Any], index: int, readiness: dict[str, Any], metrics: list[Family]) -> None:
    Board(slots, index).publish(readiness, metrics)
