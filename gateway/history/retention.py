"""Retention: rows past their function's `async.retention` are deleted in bounded batches.

Every replica runs the sweep (on a jittered interval, so they rarely coincide); each batch is
one short transaction under the writers' lock, so the feed is never held for long, and a
second replica sweeping finds nothing left to delete. Counters drop with the rows.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from .backend import Backend
from .model import SERIES, WINDOW

log = logging.getLogger(__name__)
INTERVAL = 60.0  # seconds between sweeps
BATCH = 5000  # rows per delete transaction
MAX_PER_SWEEP = 200_000  # the rest waits for the next sweep, so a sweep never runs on for long


class Retention:
    def __init__(self, backend: Backend, retention_of: Callable[[str], float]) -> None:
        self.backend = backend
        self.retention_of = retention_of

    async def run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL * random.uniform(0.75, 1.25))
            await self.sweep()

    async def sweep(self, now: float | None = None) -> int:
        """One pass over every function that has rows; returns how many rows went."""
        now = time.time() if now is None else now
        deleted = 0
        for function in await self.backend.functions():
            before_ms = int((now - self.retention_of(function)) * 1000)
            while deleted < MAX_PER_SWEEP:
                n = await self.backend.purge(function, before_ms, BATCH)
                deleted += n
                if n < BATCH:
                    break
                await asyncio.sleep(0)  # let queries and the feed in between batches
        await self.backend.purge_recent(int(now) - SERIES - 2 * WINDOW)  # the charts' hour, and a margin
        if deleted:
            log.info("task index: %d tasks past retention deleted", deleted)
        return deleted
