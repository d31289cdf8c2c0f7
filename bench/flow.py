"""Flow control's cost: end-to-end no-op tasks/s of a function with `key_concurrency`, and of
one with `rate_limit`, against the same function without limits, in the same run.

The limits are set so that they never bind (64 keys at 8 each over concurrency 64; a rate far
above what the gateway reaches): what is measured is what admission costs per task (the
leader's memory, the hand-over over core NATS, the grant reports), not waiting. Rounds
alternate between the three functions, so drift of the machine hits all of them alike."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import aiohttp

from .harness import BODY, Figure, Settings, Stack, function

SUBMITTERS = 64
ROUNDS = 3
KEYS = 64
FUNCTIONS = {
    "plain": function("noop", concurrency=64),
    "keyed": function("noop", concurrency=64, key_concurrency=8),
    "rated": function("noop", concurrency=64, rate_limit="1000000/s"),
}


def run(run_stack: Stack, settings: Settings) -> list[Figure]:
    nats = run_stack.nats()
    gateway = run_stack.gateway({"nats": {"url": nats.url}, "functions": FUNCTIONS})
    n = max(1000, settings.tasks // 4)
    for name in FUNCTIONS:
        asyncio.run(_round(gateway.url, name, 200))  # warm-up: workers, leaders, connections
    seconds = dict.fromkeys(FUNCTIONS, 0.0)
    for _ in range(ROUNDS):
        for name in FUNCTIONS:
            seconds[name] += asyncio.run(_round(gateway.url, name, n))
    rates = {name: ROUNDS * n / seconds[name] for name in FUNCTIONS}
    figures = [Figure("flow", "no limits, submitted → Succeeded", rates["plain"], "tasks/s", extra={"tasks": n})]
    for name, label in (("keyed", "key_concurrency 8, 64 keys"), ("rated", "rate_limit (not binding)")):
        ratio = rates[name] / rates["plain"]
        figures.append(
            Figure("flow", label, rates[name], "tasks/s", ratio, "no limits", "cost < 10%", ratio >= 0.9, {"tasks": n})
        )
    return figures


async def _round(base: str, name: str, n: int) -> float:
    """Seconds from the first submit until the function's completed count grew by n."""
    url = f"{base}/v1/functions/{name}/invocations"
    keys = itertools.cycle(f"tenant-{k}" for k in range(KEYS))
    connector = aiohttp.TCPConnector(limit=SUBMITTERS)
    async with aiohttp.ClientSession(connector=connector) as http:
        before = await _completed(http, base, name)
        queue = iter(range(n))

        async def submitter() -> None:
            for _ in queue:
                headers = {"Content-Type": "application/json", "X-Invocation-Type": "async"}
                if name == "keyed":
                    headers["X-Concurrency-Key"] = next(keys)
                async with http.post(url, data=BODY, headers=headers) as response:
                    if response.status != 202:
                        raise RuntimeError(f"submit answered {response.status}: {await response.text()}")

        started = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))
        while await _completed(http, base, name) < before + n:
            await asyncio.sleep(0.05)
        return time.perf_counter() - started


async def _completed(http: aiohttp.ClientSession, base: str, name: str) -> int:
    async with http.get(f"{base}/v1/functions/{name}") as response:
        body: dict[str, Any] = await response.json()
    return int(body["counts"]["totals"]["completed"])
