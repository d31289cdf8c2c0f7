"""Handlers used only by the tests. They journal what they do to $FNGATE_TEST_JOURNAL so a
test can count executions across gateway processes (appends of one short line are atomic)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any


def _journal(kind: str, context: Any) -> None:
    path = os.environ.get("FNGATE_TEST_JOURNAL")
    if path:
        line = f"{kind} {context.task_id} {context.attempt} {time.time():.6f} {os.getpid()}\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


async def journaled(event: Any, context: Any) -> Any:
    """Journals start and end; sleeps event['seconds'] (default 0) in between."""
    _journal("start", context)
    if isinstance(event, dict) and isinstance(event.get("data"), dict) and "trigger" in event:
        event = event["data"]  # a trigger's event: what it carries
    seconds = float(event.get("seconds", 0)) if isinstance(event, dict) else 0.0
    if seconds:
        await asyncio.sleep(seconds)
    _journal("end", context)
    return {"ok": True}


async def leaky(event: Any, context: Any) -> Any:
    """Fails quoting a URL with its credentials, as a driver's message might: the event's
    `url` (or, from a trigger, its data's)."""
    if isinstance(event, dict) and isinstance(event.get("data"), dict) and "trigger" in event:
        event = event["data"]
    raise ConnectionError(f"cannot reach {event['url']}: connection refused")


def read_journal(path: str) -> list[tuple[str, str, int, float, int]]:
    rows: list[tuple[str, str, int, float, int]] = []
    if not os.path.exists(path):
        return rows
    with open(path) as handle:
        for line in handle:
            kind, task_id, attempt, at, pid = line.split()
            rows.append((kind, task_id, int(attempt), float(at), int(pid)))
    return rows


def max_overlap(rows: list[tuple[str, str, int, float, int]], killed: dict[int, float] | None = None) -> int:
    """Most executions running at once, from start/end journal lines.

    `killed` maps the pid of a process the test killed to when it was killed: an execution
    that started there and never journalled its end ran until that moment. Any other start
    without an end counts as running to the end of the journal."""
    killed = killed or {}
    ended = {(task_id, attempt, pid) for kind, task_id, attempt, _, pid in rows if kind == "end"}
    events: list[tuple[float, int]] = []
    for kind, task_id, attempt, at, pid in rows:
        if kind == "end":
            events.append((at, -1))
            continue
        events.append((at, 1))
        if (task_id, attempt, pid) not in ended and pid in killed:
            events.append((killed[pid], -1))
    running = peak = 0
    for _, delta in sorted(events):
        running += delta
        peak = max(peak, running)
    return peak


async def traced(event: Any, context: Any) -> Any:
    """Returns the trace context it ran in (context.trace)."""
    trace = context.trace
    return {
        "task_id": context.task_id,
        "traceparent": trace.traceparent if trace else None,
        "tracestate": trace.tracestate if trace else None,
    }


async def identified(event: Any, context: Any) -> Any:
    """Returns its event and the task id it ran under."""
    return {"echo": event, "task_id": context.task_id}
