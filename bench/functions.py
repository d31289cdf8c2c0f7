"""Handlers the benchmarks run inside the gateway."""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def noop(event: Any, context: Any) -> None:
    """Does nothing: what is left is the gateway's own cost per task."""


async def stamp(event: Any, context: Any) -> dict[str, float]:
    """Returns the moment it returns, so the bench can time return → Succeeded readable."""
    return {"returned_at": time.time()}


async def park(event: Any, context: Any) -> None:
    """Holds its (single) slot for an hour so the tasks behind it stay queued."""
    await asyncio.sleep(3600)


async def started(event: Any, context: Any) -> dict[str, Any]:
    """For timer ticks: when the function started, beside when the tick was scheduled."""
    return {"started_at": time.time(), "scheduled_at": event["timer"]["scheduled_at"]}
