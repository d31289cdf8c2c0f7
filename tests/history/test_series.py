"""The overview's charts (`GET /v1/functions/{fn}/stats`) against tasks a real gateway ran,
on SQLite and PostgreSQL: per-minute counts exactly as the task records say, and latency
percentiles within the bucket of the exact ones."""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import aiohttp

from gateway.history.model import to_ms
from gateway.history.series import bounds, bucket, percentile
from gateway.tasks.invocation import iso, parse_iso
from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import NatsServer

QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


def ms(record: dict[str, Any], key: str) -> int:
    return to_ms(parse_iso(record[key]))


def minute(epoch_ms: int) -> str:
    second = epoch_ms // 1000
    return str(iso(second - second % 60))


def exact(values: list[int], q: float) -> int:
    """Nearest rank, as the histogram counts it."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def assert_within_bucket(got: dict[str, Any], values: list[int], what: str) -> None:
    assert got["count"] == len(values), (what, got)
    for name, q in QUANTILES.items():
        truth = exact(values, q)
        lo, hi = bounds(bucket(truth))
        assert got[name] is not None and lo <= got[name] <= hi, (what, name, got[name], truth, (lo, hi))


def test_percentiles_of_a_histogram_fall_in_the_exact_ones_bucket() -> None:
    rng = random.Random(7)
    for _ in range(200):
        values = [int(rng.lognormvariate(4, 1.5)) for _ in range(rng.randrange(1, 300))]
        histogram = Counter(bucket(v) for v in values)
        for q in QUANTILES.values():
            lo, hi = bounds(bucket(exact(values, q)))
            got = percentile(dict(histogram), q)
            assert got is not None and lo <= got <= hi
    assert percentile({}, 0.5) is None
    # Each bucket is a quarter of a doubling: [1024, 1217.7) ms holds 1024 and 1217, not 1023 or 1218.
    assert bucket(1023) != bucket(1024) == bucket(1217) != bucket(1218)


async def test_stats_count_and_time_the_tasks_a_gateway_ran(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, nats_server: NatsServer, index_url: str, unique: Any
) -> None:
    work, bad = unique("work"), unique("bad")
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "index": {"url": index_url},
            "functions": {
                work: {"handler": "python:examples.functions:sleepy", "concurrency": 8},
                bad: {"handler": "python:examples.functions:fail", "async": {"max_retries": 0}},
            },
        }
    )
    api = Api(http, gw.url)
    rng = random.Random(3)
    sleeps = [rng.choice([0.0, 0.01, 0.03, 0.08, 0.15, 0.3]) for _ in range(40)]
    ids = {
        work: [await api.submit(work, {"seconds": s}) for s in sleeps],
        bad: [await api.submit(bad) for _ in range(6)],
    }
    records = {
        fn: [await api.wait_status(t, "Succeeded", "Failed", timeout=60) for t in tasks] for fn, tasks in ids.items()
    }
    assert {r["status"] for r in records[work]} == {"Succeeded"} and {r["status"] for r in records[bad]} == {"Failed"}

    for fn, done in records.items():

        async def caught_up(fn: str = fn, n: int = len(done)) -> dict[str, Any] | None:
            status, body = await api.get(f"/v1/functions/{fn}/stats")
            assert status == 200, body
            ended = body["totals"]["succeeded"] + body["totals"]["failed"]
            return body if body["totals"]["submitted"] == n and ended == n else None

        stats = await wait_until(caught_up, timeout=30, interval=0.2)
        assert stats["function"] == fn and stats["step_seconds"] == 60 and len(stats["minutes"]) == 60
        points = {p["at"]: p for p in stats["minutes"]}
        assert stats["since"] == stats["minutes"][0]["at"]
        # Counts per minute, as the records stamp them.
        submitted = Counter(minute(ms(r, "submitted_at")) for r in done)
        ended = Counter(minute(ms(r, "finished_at")) for r in done)
        kind = "succeeded" if fn == work else "failed"
        other = "failed" if fn == work else "succeeded"
        for at, point in points.items():
            assert point["submitted"] == submitted.get(at, 0), (fn, at, point)
            assert point[kind] == ended.get(at, 0) and point[other] == 0, (fn, at, point)
        # Latencies, over the window and per minute.
        e2e = {r["task_id"]: ms(r, "finished_at") - ms(r, "submitted_at") for r in done}
        run = {r["task_id"]: ms(r, "finished_at") - ms(r, "started_at") for r in done}
        assert_within_bucket(stats["latency_ms"]["end_to_end"], list(e2e.values()), f"{fn} end to end")
        assert_within_bucket(stats["latency_ms"]["run"], list(run.values()), f"{fn} run")
        for at, point in points.items():
            in_minute = [r["task_id"] for r in done if minute(ms(r, "finished_at")) == at]
            if not in_minute:
                assert point["end_to_end_ms"] == {"count": 0, "p50": None, "p95": None, "p99": None}
                continue
            assert_within_bucket(point["end_to_end_ms"], [e2e[t] for t in in_minute], f"{fn} {at} end to end")
            assert_within_bucket(point["run_ms"], [run[t] for t in in_minute], f"{fn} {at} run")
    # The slow tasks are seen as slow: p99 of the run time is near the longest sleep (300 ms).
    status, body = await api.get(f"/v1/functions/{work}/stats?minutes=5")
    assert status == 200 and len(body["minutes"]) == 5, body
    assert body["latency_ms"]["run"]["p99"] >= 300 / 1.19, body["latency_ms"]
    # The overview's counts partition the tasks.
    status, summary = await api.get(f"/v1/functions/{work}")
    totals = summary["counts"]["totals"]
    parts = ("queued", "running", "completed", "failed", "stopped", "expired")
    assert sum(totals[k] for k in parts) == totals["submitted"] == len(sleeps), totals
    for path, code in (("/v1/functions/nope/stats", 404), (f"/v1/functions/{work}/stats?minutes=0", 400)):
        status, body = await api.get(path)
        assert status == code, (path, body)
