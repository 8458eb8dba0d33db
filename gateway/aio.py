"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None], timeout: float = 2.0) -> None:
    """Cancel background tasks and wait for them, but never for long: redis-py can swallow a
    cancellation that lands inside a command, so a loop must also watch its own stop flag."""
    pending = [task for task in tasks if task is not None and not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=timeout)
