"""End to end: N no-op tasks submitted over HTTP until every one is recorded `Succeeded`;
the same N through Celery with Redis, results collected, in the same run."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import aiohttp

from tests.services import ROOT

from .harness import BODY, Figure, Settings, Stack, function

FUNCTION = "noop"
SUBMITTERS = 64  # concurrent HTTP submissions, like wrk -c64


def run(run_stack: Stack, settings: Settings) -> list[Figure]:
    n = settings.tasks
    nats = run_stack.nats()
    gateway = run_stack.gateway({"nats": {"url": nats.url}, "functions": {FUNCTION: function("noop", concurrency=64)}})
    asyncio.run(_submit_all(gateway.url, 200))  # warm-up
    fngate_seconds = asyncio.run(_submit_all(gateway.url, n, warm=200))
    fngate_rate = n / fngate_seconds
    celery_rate = n / _celery(n)
    return [
        Figure("end_to_end", "Celery 5 + Redis, 2 workers", celery_rate, "tasks/s", extra={"tasks": n}),
        Figure("end_to_end", "fngate, submitted → Succeeded", fngate_rate, "tasks/s", fngate_rate / celery_rate,
               "Celery", "≥ 3 x Celery", fngate_rate >= 3 * celery_rate, {"tasks": n}),
    ]  # fmt: skip


async def _submit_all(base: str, n: int, warm: int = 0) -> float:
    """Seconds from the first submit until the function's `completed` count reached n."""
    url = f"{base}/v1/functions/{FUNCTION}/invocations"
    headers = {"Content-Type": "application/json", "X-Invocation-Type": "async"}
    connector = aiohttp.TCPConnector(limit=SUBMITTERS)
    async with aiohttp.ClientSession(connector=connector) as http:
        queue = iter(range(n))

        async def submitter() -> None:
            for _ in queue:
                async with http.post(url, data=BODY, headers=headers) as response:
                    if response.status != 202:
                        raise RuntimeError(f"submit answered {response.status}: {await response.text()}")

        started = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))
        target = warm + n
        while await _completed(http, base) < target:
            await asyncio.sleep(0.05)
        return time.perf_counter() - started


async def _completed(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(f"{base}/v1/functions/{FUNCTION}") as response:
        body: dict[str, Any] = await response.json()
    return int(body["counts"]["totals"]["completed"])


def _celery(n: int) -> float:
    """Seconds for n Celery no-op tasks, sent and their results collected."""
    import redis

    from .celery_app import REDIS, app, noop

    redis.Redis.from_url(REDIS).flushdb()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "--concurrency", "2",
         "--pool", "prefork", "--loglevel", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        payload = json.loads(BODY)
        assert app.control is not None
        noop.delay(payload).get(timeout=60)  # the worker is up and warm
        started = time.perf_counter()
        results = [noop.delay(payload) for _ in range(n)]
        for result in results:
            result.get(timeout=300)
        return time.perf_counter() - started
    finally:
        worker.terminate()
        worker.wait(30)
