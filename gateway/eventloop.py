"""The event loop fngate runs on: uvloop where it is installed, asyncio's own otherwise.

uvloop (a dependency on Linux and macOS) runs the loop's scheduling and socket I/O in C:
measured on the submit path it answers 10-17% more requests with a lower p99
(docs/benchmarks.md). FNGATE_EVENT_LOOP=asyncio chooses asyncio's loop, e.g. to rule
uvloop out when chasing a problem.
"""

from __future__ import annotations

import asyncio
import os


def new_event_loop() -> asyncio.AbstractEventLoop:
    if os.environ.get("FNGATE_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
