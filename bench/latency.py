"""Overhead latency at half the peak rate: 202 → `Running` readable, and the function's
return → `Succeeded` readable.

"Readable" is when the record reaches a core NATS subscriber of the state subjects: the
moment JetStream stored it, so any replica's GET could return it. The bench, the gateway
and nats-server share one clock (one machine).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import nats

from gateway.tasks import constants as c
from gateway.tasks.records import decode

from .end_to_end import _submit_all
from .harness import BODY, Figure, Settings, Stack, function, percentile

FUNCTION = "noop"


def run(run_stack: Stack, settings: Settings) -> list[Figure]:
    nats_server = run_stack.nats()
    gateway = run_stack.gateway(
        {
            "nats": {"url": nats_server.url},
            "functions": {FUNCTION: function("stamp", concurrency=64)},
        }
    )
    n = max(1_000, settings.tasks // 4)
    peak = n / asyncio.run(_submit_all(gateway.url, n))
    rate = peak / 2
    samples = asyncio.run(_paced(gateway.url, nats_server.url, rate, n))
    to_running = [s[0] for s in samples]
    to_succeeded = [s[1] for s in samples]
    extra = {"rate_per_s": round(rate), "peak_per_s": round(peak), "tasks": len(samples)}
    return [
        Figure("latency", "202 → Running p50", percentile(to_running, 50), "ms", extra=extra),
        Figure("latency", "202 → Running p99", percentile(to_running, 99), "ms", None, None, "< 10 ms",
               percentile(to_running, 99) < 10, extra),
        Figure("latency", "return → Succeeded p50", percentile(to_succeeded, 50), "ms", extra=extra),
        Figure("latency", "return → Succeeded p99", percentile(to_succeeded, 99), "ms", None, None, "< 10 ms",
               percentile(to_succeeded, 99) < 10, extra),
    ]  # fmt: skip


async def _paced(base: str, nats_url: str, rate: float, n: int) -> list[tuple[float, float]]:
    """Submit n tasks at `rate`/s; (202 → Running, return → Succeeded) in ms for each."""
    running: dict[str, float] = {}
    succeeded: dict[str, tuple[float, float]] = {}

    async def on_record(msg: Any) -> None:
        seen = time.time()
        record = decode(msg.data)
        if record.get("function") != FUNCTION:
            return
        if record["status"] == "Running":
            running.setdefault(record["task_id"], seen)
        elif record["status"] == "Succeeded":
            succeeded[record["task_id"]] = (seen, float(record["result"]["returned_at"]))

    nc = await nats.connect(nats_url)
    await nc.subscribe(f"{c.STATE_SUBJECT}.>", cb=on_record)
    accepted: dict[str, float] = {}
    url = f"{base}/v1/functions/{FUNCTION}/invocations"
    headers = {"Content-Type": "application/json", "X-Invocation-Type": "async"}
    async with aiohttp.ClientSession() as http:

        async def submit() -> None:
            async with http.post(url, data=BODY, headers=headers) as response:
                body = await response.json()
                accepted[body["task_id"]] = time.time()

        started = time.perf_counter()
        pending = []
        for i in range(n):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(submit()))
        await asyncio.gather(*pending)
        deadline = time.monotonic() + 60
        while len([t for t in accepted if t in succeeded]) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    await nc.drain()
    samples = []
    for task_id, at in accepted.items():
        if task_id in running and task_id in succeeded:
            seen, returned = succeeded[task_id]
            # The 202 can reach the client after the worker already claimed the task.
            samples.append((max(0.0, running[task_id] - at) * 1000, (seen - returned) * 1000))
    if len(samples) < n:
        raise RuntimeError(f"only {len(samples)} of {n} tasks were seen Running and Succeeded")
    return samples
