"""Small asyncio helpers shared by the submitter and the poller."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def unless_stopped(work: Awaitable[object], stop: asyncio.Event) -> None:
    """Await `work` unless `stop` is set first; then `work` is cancelled and awaited."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.done() and not task.cancelled():
        task.result()


async def wait_any(
    *events: asyncio.Event,
    timeout: float | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> None:
    """Return when any event is set, or after `timeout` seconds."""
    waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(e.wait()) for e in events]
    if timeout is not None:
        waiters.append(asyncio.ensure_future((sleep or asyncio.sleep)(timeout)))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
