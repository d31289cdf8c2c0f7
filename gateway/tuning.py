"""How the gateway process runs: its event loop and its garbage collector.

- uvloop, where it is installed (a dependency on Linux and macOS), runs the loop's
  scheduling and socket I/O in C: on the submit path it answered 10-17% more requests with
  a lower p99 (docs/benchmarks.md). FNGATE_EVENT_LOOP=asyncio chooses asyncio's own loop.
- Every task allocates thousands of short-lived objects (futures, messages, dicts), so the
  collector's default first threshold (700 allocations) runs it thousands of times a
  second, and each pass also walks the young survivors. A higher threshold, and the objects
  of start-up frozen out of every pass, cut the gateway's CPU per Kafka event by ~7%
  (docs/benchmarks.md). Reference cycles are rare in the gateway's own data, so the
  memory they hold meanwhile stays small.
"""

from __future__ import annotations

import asyncio
import gc
import os

GC_THRESHOLDS = (100_000, 50, 100)


def new_event_loop() -> asyncio.AbstractEventLoop:
    if os.environ.get("FNGATE_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def tune_gc() -> None:
    """Once the gateway has started: collect, freeze what start-up built, raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
