"""The overview's charts: per function and minute over the last hour, tasks submitted,
succeeded and failed, and latency percentiles, all from counters the index keeps.

The per-second counters of the last-minute counts (table `recent`, kinds `submitted`,
`completed`, `failed`) are kept for an hour (model.SERIES), and beside them, in the same
table, one histogram of latencies per minute: kind `end_to_end:B` (finished - submitted)
and `run:B` (finished - first started), B a logarithmic bucket, counted when a task ends
Succeeded or Failed. So a chart reads at most a few thousand small rows, whatever the
number of tasks, and the feed adds a counter or two per finished task to a write it makes
anyway. Percentiles come from the buckets: each is the true one to within a bucket's width
(2^(1/4), 19 %).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from gateway.tasks.invocation import iso
from gateway.tasks.status import TaskStatus

from .model import SERIES

STEP = 60  # seconds per point
MAX_MINUTES = SERIES // STEP
PER_DOUBLING = 4  # buckets per doubling of the latency
LATENCIES = ("end_to_end", "run")
QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
MEASURED = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED})  # tasks that ran; expiries would skew it
# One row per kind and minute: the counters summed by minute in the database.
MINUTES_SQL = (
    "SELECT kind, second - second % 60 AS minute, SUM(n) FROM recent WHERE function = ? AND second >= ? "
    "GROUP BY kind, minute"
)
# The last minute's counts name their kinds: a range of the primary key (function, kind,
# second) each, not a scan of the hour's counters and histograms.
LAST_MINUTE_KINDS = "('submitted', 'completed', 'failed')"
MinuteRow = tuple[str, int, int]  # (kind, minute start in epoch seconds, count)


def bucket(ms: int) -> int:
    """0 for [0, 1) ms; B ≥ 1 for [2^((B-1)/4), 2^(B/4)) ms."""
    if ms < 1:
        return 0
    return 1 + math.floor(PER_DOUBLING * math.log2(ms))


def bounds(b: int) -> tuple[float, float]:
    if b <= 0:
        return 0.0, 1.0
    return 2 ** ((b - 1) / PER_DOUBLING), 2 ** (b / PER_DOUBLING)


def latency_kinds(status: TaskStatus, submitted_ms: int, started_ms: int | None, finished_ms: int | None) -> list[str]:
    """The histogram counters a task ending in `status` adds to."""
    if status not in MEASURED or finished_ms is None:
        return []
    kinds = [f"end_to_end:{bucket(max(0, finished_ms - submitted_ms))}"]
    if started_ms is not None:
        kinds.append(f"run:{bucket(max(0, finished_ms - started_ms))}")
    return kinds


def percentile(histogram: dict[int, int], q: float) -> float | None:
    """The q-quantile (nearest rank) of the histogram, placed within its bucket."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for b in sorted(histogram):
        n = histogram[b]
        if seen + n >= rank:
            lo, hi = bounds(b)
            return round(lo + (hi - lo) * (rank - seen - 0.5) / n, 2)
        seen += n
    raise AssertionError("unreachable: the ranks end within the histogram")


def latency(histogram: dict[int, int]) -> dict[str, Any]:
    return {"count": sum(histogram.values()), **{name: percentile(histogram, q) for name, q in QUANTILES}}


def window_start(now: float, minutes: int) -> int:
    """The first second of the oldest of `minutes` points, the last one the minute now running."""
    return (int(now) // STEP - minutes + 1) * STEP


def function_stats(function: str, rows: Iterable[MinuteRow], *, now: float, minutes: int) -> dict[str, Any]:
    """The response of `GET /v1/functions/{fn}/stats`: `minutes` points, oldest first, the
    last one the minute now running."""
    first = window_start(now, minutes)
    starts = [first + i * STEP for i in range(minutes)]
    counts: dict[int, dict[str, int]] = {s: {"submitted": 0, "succeeded": 0, "failed": 0} for s in starts}
    per_minute: dict[int, dict[str, dict[int, int]]] = {s: {k: {} for k in LATENCIES} for s in starts}
    whole: dict[str, dict[int, int]] = {k: {} for k in LATENCIES}
    for kind, minute, n in rows:
        if minute not in counts:
            continue
        name, _, b = kind.partition(":")
        if b:
            if name in whole:
                per_minute[minute][name][int(b)] = per_minute[minute][name].get(int(b), 0) + int(n)
                whole[name][int(b)] = whole[name].get(int(b), 0) + int(n)
            continue
        key = {"submitted": "submitted", "completed": "succeeded", "failed": "failed"}.get(name)
        if key:
            counts[minute][key] += int(n)
    points = [{"at": iso(s), **counts[s], **{f"{k}_ms": latency(per_minute[s][k]) for k in LATENCIES}} for s in starts]
    return {
        "function": function,
        "step_seconds": STEP,
        "since": iso(first),
        "minutes": points,
        "totals": {k: sum(p[k] for p in points) for k in ("submitted", "succeeded", "failed")},
        "latency_ms": {k: latency(whole[k]) for k in LATENCIES},
    }
