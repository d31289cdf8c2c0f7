"""Background loops that never die silently: restarted with backoff, failures logged once each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


def cancel_requested() -> bool:
    """True once this task was asked to stop, even if a library swallowed the CancelledError."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def supervised(name: str, factory: Callable[[], Awaitable[None]], *, max_backoff: float = 10.0) -> None:
    backoff = 0.2
    while True:
        try:
            await factory()
            log.warning("%s ended; restarting", name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s failed (%s: %s); restarting in %.1fs", name, type(exc).__name__, exc, backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)
