"""Backlog: the async submit rate with `settings.backlog` tasks queued vs on an empty queue, the
gateway's RSS, and the time of `GET /v1/tasks?status=Enqueued&limit=50` at that backlog.

One gateway, one function parked on its single slot (concurrency 1, handler `park`), so every
task submitted stays queued. Every wrk run counts toward the backlog; how many tasks are queued
is read from the gateway (`GET /v1/functions/{fn}`) and cross-checked against the JetStream
consumer, never assumed from the number of requests sent.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import time
from typing import Any
from urllib.parse import urlsplit

import nats

from gateway.pipeline.worker import consumer_name
from gateway.tasks import constants as c

from .harness import Figure, Settings, Stack, WrkResult, function, percentile, rss_mb, wait_for, wrk

FUNCTION = "orders"
CONNECTIONS = 64  # as the submit scenario
LIST_PATH = "/v1/tasks?status=Enqueued&limit=50"
LIST_LIMIT = 50
LIST_QUERIES = 20  # sequential, one connection
FILL_CHUNK_S = 30  # longest single wrk run while filling: the queued count is re-read between runs
CONFIG: dict[str, Any] = {"functions": {FUNCTION: function("park", concurrency=1, timeout="2h")}}


def run(run_stack: Stack, settings: Settings) -> list[Figure]:
    nats_server = run_stack.nats()
    gateway = run_stack.gateway({"nats": {"url": nats_server.url}, **CONFIG})
    assert gateway.proc is not None
    pid = gateway.proc.pid
    url = f"{gateway.url}/v1/functions/{FUNCTION}/invocations"
    sent = 0  # 202s answered to wrk: the gateway's index must have seen at least these

    sent += wrk(url, seconds=1, connections=CONNECTIONS).requests  # warm-up: streams, consumer, first pages
    rss_empty = rss_mb(pid)
    start = wrk(url, seconds=settings.seconds, connections=CONNECTIONS)
    sent += start.requests
    queued_after_start = _queued(gateway.url, sent)
    list_small = _list_times(gateway.url)  # the same query on a small backlog, for comparison

    fill_started = time.monotonic()
    queued, fill_requests, rate = queued_after_start, 0, start.requests_per_s
    while queued < settings.backlog:
        seconds = min(FILL_CHUNK_S, max(1, math.ceil((settings.backlog - queued) / max(rate, 1.0))))
        chunk = wrk(url, seconds=seconds, connections=CONNECTIONS)
        sent += chunk.requests
        fill_requests += chunk.requests
        rate = chunk.requests_per_s
        before, queued = queued, _queued(gateway.url, sent)
        if queued <= before:
            raise RuntimeError(f"backlog stuck at {queued} queued after {chunk.requests} more submits")
    fill_seconds = time.monotonic() - fill_started
    queued_before_end = queued

    end = wrk(url, seconds=settings.seconds, connections=CONNECTIONS)
    sent += end.requests
    queued_final, js_pending = _settled(gateway.url, nats_server.url, sent)
    rss = rss_mb(pid)
    list_big = _list_times(gateway.url)

    ratio = end.requests_per_s / start.requests_per_s
    at = f"{queued_before_end:,} queued"
    end_extra = {
        "queued_when_run_started": queued_before_end,
        "queued_final": queued_final,
        "jetstream_pending": js_pending,
        "fill_requests": fill_requests,
        "fill_seconds": round(fill_seconds, 1),
        "fill_rate_per_s": round(fill_requests / fill_seconds) if fill_seconds else None,
    }
    rss_extra = {
        "rss_empty_mb": round(rss_empty, 1),
        "kb_per_queued_task": round((rss - rss_empty) * 1024 / max(queued_final, 1), 2),
    }
    list_p50, list_max = percentile(list_big, 50), max(list_big)
    small = f"{queued_after_start:,} queued"
    list_extra = {
        "query": LIST_PATH,
        "queued": queued_final,
        "ms": [round(t, 2) for t in list_big],
        "small_backlog_queued": queued_after_start,
        "small_backlog_ms": [round(t, 2) for t in list_small],
    }
    return [
        _rate("submit rate, empty queue", start, {"queued_after": queued_after_start}),
        _rate(f"submit rate at {at}", end, end_extra, ratio, "empty queue", ">= 0.8 x empty queue", ratio >= 0.8),
        Figure("backlog", f"gateway RSS at {queued_final:,} queued", rss, "MB", rss / rss_empty, "empty queue RSS",
               "< 300 MB", rss < 300, rss_extra),
        Figure("backlog", "list Enqueued, limit 50: p50", list_p50, "ms", list_p50 / percentile(list_small, 50),
               f"p50 at {small}", None, None, list_extra),
        Figure("backlog", f"list Enqueued, limit 50: max of {LIST_QUERIES}", list_max, "ms",
               list_max / max(list_small), f"max at {small}", "< 200 ms", list_max < 200, list_extra),
    ]  # fmt: skip


def _rate(
    name: str,
    result: WrkResult,
    extra: dict[str, Any],
    ratio: float | None = None,
    reference: str | None = None,
    target: str | None = None,
    met: bool | None = None,
) -> Figure:
    extra = {"p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "requests": result.requests, **extra}
    return Figure("backlog", name, result.requests_per_s, "req/s", ratio, reference, target, met, extra)


def _get_json(base: str, path: str) -> dict[str, Any]:
    split = urlsplit(base)
    conn = http.client.HTTPConnection(split.hostname or "127.0.0.1", split.port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}: {body[:500]!r}")
        return json.loads(body)  # type: ignore[no-any-return]
    finally:
        conn.close()


def _queued(base: str, sent: int, timeout: float = 180.0) -> int:
    """The function's queued count, once the gateway's index has seen at least `sent` submits."""

    def caught_up() -> dict[str, int] | None:
        totals: dict[str, int] = _get_json(base, f"/v1/functions/{FUNCTION}")["counts"]["totals"]
        return totals if totals["submitted"] >= sent else None

    totals = wait_for(caught_up, timeout, interval=0.2, what=f"the gateway's index to see {sent} submits")
    return int(totals["queued"])


def _settled(base: str, nats_url: str, sent: int, timeout: float = 30.0) -> tuple[int, int]:
    """(gateway's queued count, JetStream consumer's pending count) once they agree: the
    gateway's view is derived from the streams, JetStream's is the authority."""
    deadline = time.monotonic() + timeout
    while True:
        queued = _queued(base, sent)
        pending = asyncio.run(_consumer_pending(nats_url))
        if queued == pending:
            return queued, pending
        if time.monotonic() > deadline:
            raise RuntimeError(f"gateway counts {queued} queued, the JetStream consumer {pending} pending")
        time.sleep(0.2)


def _list_times(base: str) -> list[float]:
    """ms for each of LIST_QUERIES sequential list queries on one keep-alive connection; each
    answer must be 200 with exactly LIST_LIMIT tasks, all Enqueued, of the parked function."""
    split = urlsplit(base)
    conn = http.client.HTTPConnection(split.hostname or "127.0.0.1", split.port, timeout=30)
    times: list[float] = []
    try:
        for _ in range(LIST_QUERIES):
            started = time.perf_counter()
            conn.request("GET", LIST_PATH)
            response = conn.getresponse()
            body = response.read()
            times.append((time.perf_counter() - started) * 1000)
            if response.status != 200:
                raise RuntimeError(f"GET {LIST_PATH} answered {response.status}: {body[:500]!r}")
            tasks = json.loads(body)["tasks"]
            if len(tasks) != LIST_LIMIT:
                raise RuntimeError(f"GET {LIST_PATH} returned {len(tasks)} tasks, not {LIST_LIMIT}")
            wrong = [t for t in tasks if t.get("status") != "Enqueued" or t.get("function") != FUNCTION]
            if wrong:
                raise RuntimeError(f"GET {LIST_PATH} returned tasks that are not Enqueued {FUNCTION}: {wrong[:3]}")
    finally:
        conn.close()
    return times


async def _consumer_pending(nats_url: str) -> int:
    """Tasks JetStream has not yet handed to the function's worker."""
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().consumer_info(c.TASKS_STREAM, consumer_name(FUNCTION))
        return int(info.num_pending or 0)
    finally:
        await nc.close()
