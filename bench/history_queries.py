"""Listing and counts of a large task history, on SQLite and on PostgreSQL, through the API.

The history is written straight into the index database (`Backend.apply`, batches of
`LOAD_BATCH` tasks, exactly what the feed applies), not through the streams: at
`FNGATE_BENCH_QUERY_HISTORY` tasks (default 1,000,000) that takes a minute instead of the
half hour a backfill through nats-server would on this machine; `scale_out` measures the
backfill itself. The shape is meant to be unkind to an index: ten functions (one holds half
of the tasks), rare statuses, sources and conditions that live only in the oldest rows (so
a newest-first scan that filters would read the whole function before finding them), chains
of five tasks, time-prefixed ids.

Then one gateway (on a nats-server with empty streams) serves the database, and every
query of `queries()` is asked `ROUNDS` times through `GET /v1/tasks` (each page followed by
its next page through the cursor), and the counts through `GET /v1/functions/{fn}`, with
`GET /healthz` as the floor of the API on the machine at that moment. The same queries run
in-process against the database alone, and every plan is EXPLAINed: a plan that scans the
table, or sorts rows instead of reading an index in order, is reported.
"""

from __future__ import annotations

import asyncio
import os
import time
from urllib.parse import quote

import aiohttp

from gateway.history import Backend, TaskHistory, open_backend, query_from_params
from gateway.history.model import Fact
from gateway.tasks.invocation import Invocation, Lineage, Source
from gateway.tasks.records import encode, new_record, stamp
from gateway.tasks.status import TaskStatus

from .harness import Figure, Settings, Stack, function, percentile
from .scale_out import _database, _drop, _get

HISTORY = int(os.environ.get("FNGATE_BENCH_QUERY_HISTORY", 1_000_000))
LOAD_BATCH = 20_000
FUNCTIONS = [f"f{i}" for i in range(10)]
SPAN_MS = 5 * 86400 * 1000  # the history covers the last five days
ROUNDS = 40
COUNT_ROUNDS = 300
PLACEHOLDER = "t-PLACEHOLDER"


def shape_of(i: int, n: int) -> tuple[str, TaskStatus, str, str, str | None]:
    """(function, status, source, condition) of task i of n: deterministic, so the queries
    know what they hit. The first 1% of the history (the oldest) holds the rare values."""
    function = FUNCTIONS[0] if i % 2 == 0 else FUNCTIONS[1 + (i // 2) % 9]
    old = i < n // 100
    condition: str | None
    if old and i % 10 == 0:
        status, condition = TaskStatus.STOPPED, "Stopped"
    elif old and i % 10 == 2:
        status, condition = TaskStatus.FAILED, "Timeout"
    elif i % 20 == 3:
        status, condition = TaskStatus.FAILED, "HandlerError"
    elif i >= n - n // 20:  # the newest 5% are still queued or running
        status, condition = (TaskStatus.ENQUEUED, None) if i % 3 else (TaskStatus.RUNNING, None)
    else:
        status, condition = TaskStatus.SUCCEEDED, "Succeeded"
    if old and i % 10 == 4:
        source = "timer:nightly"
    else:
        source = ("kafka:orders", "http:api", "kafka:orders", "mqtt:sensors")[i % 4]
    return function, status, source, condition or "", condition


def _templates() -> dict[tuple[str, TaskStatus, str], str]:
    """One real task record per (function, status, source), its task id a placeholder."""
    out: dict[tuple[str, TaskStatus, str], str] = {}
    path = {
        TaskStatus.ENQUEUED: [],
        TaskStatus.RUNNING: [TaskStatus.DEQUEUED, TaskStatus.RUNNING],
        TaskStatus.SUCCEEDED: [TaskStatus.DEQUEUED, TaskStatus.RUNNING, TaskStatus.SUCCEEDED],
        TaskStatus.FAILED: [TaskStatus.DEQUEUED, TaskStatus.RUNNING, TaskStatus.FAILED],
        TaskStatus.STOPPED: [TaskStatus.STOPPED],
    }
    for fn in FUNCTIONS:
        for source in ("kafka:orders", "http:api", "mqtt:sensors", "timer:nightly"):
            st, sn = source.split(":")
            inv = Invocation(PLACEHOLDER, fn, b"{}", source=Source(st, sn), lineage=Lineage("c-PLACEHOLDER"))
            for status, steps in path.items():
                record = new_record(inv)
                for step in steps:
                    record = stamp(record, step)
                out[(fn, status, source)] = encode(record).decode()
    return out


def task_id(ms: int, i: int) -> str:
    return f"t-{ms:x}-q{i:x}"


async def populate(backend: Backend, n: int, start_ms: int) -> float:
    """Write n tasks in batches through `apply`; returns tasks/s."""
    templates = _templates()
    step = SPAN_MS / n
    started = time.perf_counter()
    for lo in range(0, n, LOAD_BATCH):
        facts: dict[str, Fact] = {}
        for i in range(lo, min(lo + LOAD_BATCH, n)):
            ms = start_ms + int(i * step)
            tid = task_id(ms, i)
            fn, status, source, _, condition = shape_of(i, n)
            st, sn = source.split(":")
            chain = f"c{i // 5}"
            record = templates[(fn, status, source)].replace(PLACEHOLDER, tid).replace("c-PLACEHOLDER", chain)
            facts[tid] = Fact(tid, fn, ms, st, sn, chain, status, i + 1, condition,
                              ms + 500 if status.terminal else None, record)  # fmt: skip
        await backend.apply(facts, now=time.time(), oldest_ms=lambda _f: 0)
    return n / (time.perf_counter() - started)


def queries(n: int, start_ms: int) -> list[str]:
    step = SPAN_MS / n
    middle = start_ms + SPAN_MS // 2
    since, until = (middle - 3_600_000) / 1000, middle / 1000
    # A prefix of the ids of about a thousand tasks somewhere in the middle.
    prefix = f"t-{int(start_ms + (n // 3) * step):x}"[:-5]
    return [
        "",
        "function=f0",
        "function=f0&order=asc",
        "function=f0&limit=1000",
        "function=f0&status=Succeeded",
        "function=f0&status=Stopped",
        "function=f0&status=Enqueued,Failed",
        "function=f0&status=Stopped&order=asc",
        "status=Failed",
        "status=Stopped",
        "status=Running,Stopped&order=asc",
        "function=f0&source=timer:nightly",
        "function=f0&source=kafka",
        "source=timer:nightly",
        "function=f0&condition=Timeout",
        "condition=Timeout",
        "condition=Timeout&order=asc",
        f"chain=c{n // 10}",
        f"function=f0&chain=c{n // 10}",
        f"prefix={prefix}",
        f"function=f0&prefix={prefix}",
        "prefix=t-",
        "function=f0&status=Failed&prefix=t-",
        f"function=f0&since={since}&until={until}",
        f"since={since}&until={until}&order=asc",
        f"function=f3&status=Failed&source=mqtt:sensors&since={since}",
        "function=f0&status=Succeeded&source=http:api&order=asc",
        "function=f0&source=http:api&condition=Succeeded",
        "status=Failed&source=http:api",
        "function=f0&status=Stopped&source=timer:nightly&condition=Stopped",
        f"function=f9&status=Succeeded&until={until}",
    ]


def _params(q: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in q.split("&")) if q else {}


def _url(base: str, q: str, cursor: str | None = None) -> str:
    parts = [f"{k}={quote(v)}" for k, v in _params(q).items()]
    if cursor:
        parts.append(f"cursor={quote(cursor)}")
    return f"{base}/v1/tasks?" + "&".join(parts)


async def explain(backend: Backend, q: str) -> str:
    """The plan of the statement a listing runs, on one line."""
    return await backend.explain(query_from_params(_params(q)))


WALKS = {"prefix=t-"}  # a prefix most ids share: read in order, filtered, by design (sql.py)


def bad_plan(backend: str, q: str, plan: str) -> bool:
    """A plan that walks the table, or a whole index, for a filtered query (instead of an
    index range). Sorting what a range returned (a prefix, the merge of ranges) is fine."""
    filtered = bool(q) and q not in WALKS
    if backend == "sqlite":
        steps = [s.strip() for s in plan.split(";")]
        return any(s == "SCAN tasks" or (filtered and s.startswith("SCAN tasks USING")) for s in steps)
    return "Seq Scan on tasks" in plan or (filtered and "Index Cond" not in plan)


async def _api_times(base: str, qs: list[str]) -> tuple[dict[str, list[float]], list[float], list[float]]:
    api: dict[str, list[float]] = {q: [] for q in qs}
    counts: list[float] = []
    floor: list[float] = []
    async with aiohttp.ClientSession() as http:
        for round_ in range(ROUNDS + 1):
            for q in qs:
                started = time.perf_counter()
                page = await _get(http, _url(base, q))
                first = (time.perf_counter() - started) * 1000
                if round_ and page["next_cursor"]:
                    started = time.perf_counter()
                    await _get(http, _url(base, q, page["next_cursor"]))
                    api[q].append((time.perf_counter() - started) * 1000)
                if round_:
                    api[q].append(first)
        for k in range(COUNT_ROUNDS):
            started = time.perf_counter()
            await _get(http, f"{base}/v1/functions/{FUNCTIONS[k % len(FUNCTIONS)]}")
            counts.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await _get(http, f"{base}/healthz")
            floor.append((time.perf_counter() - started) * 1000)
    return api, counts, floor


async def _db_times(backend: Backend, qs: list[str]) -> tuple[dict[str, list[float]], list[float]]:
    from gateway.config.model import Config

    config = Config.model_validate({"functions": {fn: function("park") for fn in FUNCTIONS}})
    history = TaskHistory(config, backend=backend)
    db: dict[str, list[float]] = {q: [] for q in qs}
    for round_ in range(ROUNDS + 1):
        for q in qs:
            started = time.perf_counter()
            await history.list(query_from_params(_params(q)))
            if round_:
                db[q].append((time.perf_counter() - started) * 1000)
    counts = []
    for k in range(COUNT_ROUNDS):
        started = time.perf_counter()
        await history.counts([FUNCTIONS[k % len(FUNCTIONS)]])
        counts.append((time.perf_counter() - started) * 1000)
    return db, counts


def run(run_stack: Stack, settings: Settings) -> list[Figure]:
    n = HISTORY if not settings.seconds < 10 else min(HISTORY, 50_000)
    start_ms = int(time.time() * 1000) - SPAN_MS - 60_000
    qs = queries(n, start_ms)
    nats = run_stack.nats()
    figures: list[Figure] = []
    kinds = os.environ.get("FNGATE_BENCH_BACKENDS", "sqlite,postgresql").split(",")
    for kind in kinds:
        url = asyncio.run(_database(kind, run_stack))
        try:
            figures += _one(run_stack, nats.url, kind, url, n, start_ms, qs)
        finally:
            asyncio.run(_drop(url))
    return figures


def _one(run_stack: Stack, nats_url: str, kind: str, url: str, n: int, start_ms: int, qs: list[str]) -> list[Figure]:
    name = f"[{kind}]"

    async def load_and_measure() -> tuple[float, dict[str, str], dict[str, list[float]], list[float]]:
        backend = open_backend(url, run_stack.root)
        await backend.open()
        try:
            rate = await populate(backend, n, start_ms)
            await backend.analyze()
            plans = {q: await explain(backend, q) for q in qs}
            db, counts = await _db_times(backend, qs)
            return rate, plans, db, counts
        finally:
            await backend.close()

    load_rate, plans, db_times, db_counts = asyncio.run(load_and_measure())
    gateway = run_stack.gateway(
        {
            "nats": {"url": nats_url},
            "index": {"url": url},
            "functions": {fn: function("park", concurrency=1) for fn in FUNCTIONS},
        }
    )
    try:
        api_times, api_counts, floor = asyncio.run(_api_times(gateway.url, qs))
    finally:
        gateway.stop()
    bad = {q: p for q, p in plans.items() if bad_plan(kind, q, p)}
    list_p99 = {q or "(none)": round(percentile(t, 99), 2) for q, t in api_times.items()}
    worst = max(list_p99.values())
    default_limit = max(v for q, v in list_p99.items() if "limit=1000" not in q)
    count_p99 = percentile(api_counts, 99)
    return [
        Figure("history_queries", f"{name} written straight to the database", load_rate, "tasks/s",
               extra={"tasks": n}),
        Figure("history_queries", f"{name} list p99 (API, worst query, limit 50)", default_limit, "ms",
               target="< 50 ms", met=default_limit < 50, extra={"tasks": n, "p99 by query": list_p99}),
        Figure("history_queries", f"{name} list p99 (API, limit 1000)", worst, "ms"),
        Figure("history_queries", f"{name} list p99 (database only, worst query)",
               max(percentile(t, 99) for t in db_times.values()), "ms",
               extra={q or "(none)": round(percentile(t, 99), 2) for q, t in db_times.items()}),
        Figure("history_queries", f"{name} counts p99 (API)", count_p99, "ms", target="< 5 ms", met=count_p99 < 5,
               extra={"p50": round(percentile(api_counts, 50), 2)}),
        Figure("history_queries", f"{name} counts p99 (database only)", percentile(db_counts, 99), "ms"),
        Figure("history_queries", f"{name} GET /healthz p99 (the API's floor now)", percentile(floor, 99), "ms",
               extra={"p50": round(percentile(floor, 50), 2)}),
        Figure("history_queries", f"{name} plans not an index range in order", len(bad), "queries",
               target="0", met=not bad, extra={"plans": plans}),
    ]  # fmt: skip


def main() -> None:
    """`python -m bench.history_queries`: this scenario alone, printing its table."""
    from .__main__ import table
    from .harness import stack

    with stack() as run_stack:
        print(table(run(run_stack, Settings())))


if __name__ == "__main__":
    main()


__all__ = ["populate", "queries", "run"]
