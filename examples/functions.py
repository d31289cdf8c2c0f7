"""Example functions for examples/fngate.yaml and the tests."""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def echo(event: Any, context: Any) -> Any:
    """Returns its event: the simplest async handler."""
    return {"echo": event, "attempt": context.attempt}


def shout(event: Any, context: Any) -> str:
    """A plain function: runs in the thread pool."""
    context.logger.info("shouting %r", event)
    return str(event.get("text", "") if isinstance(event, dict) else event).upper()


async def sleepy(event: Any, context: Any) -> Any:
    """Sleeps for event['seconds']: for timeouts, stops and concurrency."""
    seconds = float(event.get("seconds", 1)) if isinstance(event, dict) else 1.0
    await asyncio.sleep(seconds)
    return {"slept": seconds}


def blocking_sleep(event: Any, context: Any) -> Any:
    time.sleep(float(event.get("seconds", 1)))
    return {"slept": event.get("seconds", 1)}


async def fail(event: Any, context: Any) -> Any:
    raise RuntimeError(f"failing on purpose (attempt {context.attempt})")


async def flaky(event: Any, context: Any) -> Any:
    """Fails until attempt event['succeed_on']."""
    if context.attempt < int(event.get("succeed_on", 2)):
        raise RuntimeError(f"attempt {context.attempt} fails")
    return {"attempt": context.attempt}


async def noop(event: Any, context: Any) -> None:
    return None


def thumbnail(event: Any, context: Any) -> dict[str, Any]:
    """Pretends to make a thumbnail of the file an event names."""
    name = event.get("data", {}).get("path") if isinstance(event, dict) else None
    return {"thumbnail": f"{name}.thumb" if name else None}


async def chatty(event: Any, context: Any) -> Any:
    """Logs event['lines'] lines, event['interval'] seconds apart: for function logs."""
    lines = int(event.get("lines", 3)) if isinstance(event, dict) else 3
    interval = float(event.get("interval", 0)) if isinstance(event, dict) else 0.0
    for i in range(lines):
        context.logger.info("line %d of %d", i + 1, lines)
        if interval:
            await asyncio.sleep(interval)
    return {"lines": lines}
