"""Scale-out with the task history in a database, on SQLite and on PostgreSQL, in one run.

Per backend, against one nats-server whose streams hold `settings.history` tasks (half of
them with a Succeeded record), submitted once for both backends:
- backfill: a gateway on an empty index database, from its start until the index holds
  every task (tasks/s);
- a fresh replica sharing that database: from its process start to a complete listing
  (counts of every task, and a full page);
- list p99 over filter combinations, through the API (each listed record read from the
  stream) and in-process against the database alone; counts p99 through the API;
- deployment-wide CPU per task (every gateway + nats-server, /proc utime+stime) for the
  same burst of no-op tasks, submitted → Succeeded and indexed, with 1 replica, with 3, and
  with 1 offered a third of the load (the control), in three rounds (each figure the median
  round); the index's lag sampled from /readyz during the bursts. Each setup first runs a
  warm-up burst of a tenth of the size, not measured.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from statistics import median
from typing import Any

import aiohttp

from tests.history.streams import fill
from tests.services import GatewayProcess, NatsServer

from .harness import BODY, Figure, Settings, Stack, function, percentile

BULK = "bulk"  # the history's function: parked, so its tasks keep their states
NOOP = "noop"  # the burst's function
SUBMITTERS = 64
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
FILTERS = [
    f"function={BULK}",
    f"function={BULK}&status=Succeeded",
    f"function={BULK}&status=Enqueued,Succeeded",
    "status=Succeeded&order=asc",
    f"function={BULK}&source=kafka:orders",
    f"function={BULK}&condition=Succeeded",
    f"function={BULK}&chain=c3",
    "prefix=h00012",
    f"function={BULK}&since=SINCE&until=UNTIL",
    f"function={BULK}&status=Enqueued&source=kafka&chain=c5&order=asc",
]
# Of every filter, after one warm-up round. A p99 needs well over a hundred samples: of 60
# rounds it was their slowest one, and one stall of the machine decided it.
LIST_ROUNDS = 200
COUNT_ROUNDS = 1000


def run(run_stack: Stack, settings: Settings) -> list[Figure]:
    nats = run_stack.nats()
    started, fill_at = time.perf_counter(), time.time()
    # The succeeded half went through the function's work consumer, as in a deployment that ran
    # them: else the first gateway's worker is handed each of them first, and the backfill
    # figure would carry its check of 500k finished tasks.
    ids = asyncio.run(
        fill(nats.url, BULK, settings.history, succeeded=settings.history // 2, prefix="h", consumed=True)
    )
    fill_rate = settings.history / (time.perf_counter() - started)
    # fill() stamps task i at (about) its start + i * 0.1 ms: a window over the middle sixth.
    window = (fill_at + settings.history // 3 * 1e-4, fill_at + settings.history // 2 * 1e-4)
    figures = [Figure("scale_out", "history written to the streams", fill_rate, "tasks/s",
                      extra={"tasks": settings.history})]  # fmt: skip
    for backend in os.environ.get("FNGATE_BENCH_BACKENDS", "sqlite,postgresql").split(","):
        url = asyncio.run(_database(backend, run_stack))
        try:
            figures += _one_backend(run_stack, settings, nats, backend, url, ids, window)
        finally:
            asyncio.run(_drop(url))
    return figures


CPU_ROUNDS = 3  # of the 1-replica, 3-replica and control bursts, in turn


def _one_backend(
    run_stack: Stack,
    settings: Settings,
    nats: NatsServer,
    backend: str,
    url: str,
    ids: list[str],
    window: tuple[float, float],
) -> list[Figure]:
    name = f"[{backend}]"
    history = len(ids)
    config = {
        "nats": {"url": nats.url},
        "index": {"url": url},
        "functions": {BULK: function("park", concurrency=1, timeout="2h"), NOOP: function("noop", concurrency=64)},
    }
    started = time.perf_counter()
    first = run_stack.gateway(_copy(config))
    asyncio.run(_until_counted(first.url, BULK, history, timeout=1800))
    backfill = history / (time.perf_counter() - started)

    started = time.perf_counter()
    fresh = run_stack.gateway(_copy(config))
    asyncio.run(_complete_listing(fresh.url, history))
    fresh_seconds = time.perf_counter() - started

    queries = [q.replace("SINCE", f"{window[0]:.4f}").replace("UNTIL", f"{window[1]:.4f}") for q in FILTERS]
    api_times, db_times = asyncio.run(_list_times(fresh.url, queries, url, run_stack))
    count_times = asyncio.run(_count_times(fresh.url))
    healthz = asyncio.run(_count_times(fresh.url, "/healthz"))
    count_db = asyncio.run(_count_db_times(url, run_stack))
    list_p99 = max(percentile(t, 99) for t in api_times.values())
    db_p99 = max(percentile(t, 99) for t in db_times.values())
    count_p99 = percentile(count_times, 99)

    fresh.stop()
    burst = settings.tasks
    # Each setup warmed up by a burst of its own first: the figure is the steady state, not
    # the start-up work of just-started replicas (their feeder processes starting, first
    # pulls, caches) that would otherwise fall into the measured window.
    warm_up = max(1000, burst // 10)
    # Rounds of 1 replica, 3 replicas and the control in turn, each figure the median round:
    # one round's nats-server alone moved 115 -> 230 µs per task between the warm-up and the
    # measured burst of the same setup, and interleaving makes such drift hit all three alike.
    ones: list[float] = []
    threes: list[float] = []
    controls: list[float] = []
    one_lag: list[float] = []
    three_lag: list[float] = []
    for _ in range(CPU_ROUNDS):
        asyncio.run(_burst([first], nats, warm_up))
        cpu, lag = asyncio.run(_burst([first], nats, burst))
        ones.append(cpu)
        one_lag += lag
        more = [first, run_stack.gateway(_copy(config)), run_stack.gateway(_copy(config))]
        asyncio.run(_burst(more, nats, warm_up))
        cpu, lag = asyncio.run(_burst(more, nats, burst))
        threes.append(cpu)
        three_lag += lag
        for gw in more[1:]:
            gw.stop()
        # The control: one replica offered what each of the three got (a third of the
        # submitters). Against the 1-replica figure, the cost of spreading a burst over
        # processes whatever they share: fewer messages per socket write, flush and pull in each.
        asyncio.run(_burst([first], nats, warm_up, submitters=SUBMITTERS // 3))
        cpu, _ = asyncio.run(_burst([first], nats, burst, submitters=SUBMITTERS // 3))
        controls.append(cpu)
    first.stop()
    one_cpu, three_cpu, control_cpu = median(ones), median(threes), median(controls)
    ratio = median([three / one for three, one in zip(threes, ones, strict=True)])
    control_ratio = median([control / one for control, one in zip(controls, ones, strict=True)])
    lag_p99 = percentile(one_lag + three_lag, 99)
    return [
        Figure("scale_out", f"{name} backfill", backfill, "tasks/s", target="≥ 20k/s", met=backfill >= 20_000,
               extra={"tasks": history}),
        Figure("scale_out", f"{name} fresh replica: complete listing", fresh_seconds, "s",
               target="< 5 s", met=fresh_seconds < 5, extra={"tasks": history}),
        Figure("scale_out", f"{name} list p99 (API, worst filter)", list_p99, "ms", target="< 50 ms",
               met=list_p99 < 50, extra={q: [round(percentile(t, 50), 2), round(percentile(t, 99), 2)]
                                         for q, t in api_times.items()}),
        Figure("scale_out", f"{name} list p99 (database only, worst filter)", db_p99, "ms",
               extra={q: round(percentile(t, 99), 2) for q, t in db_times.items()}),
        Figure("scale_out", f"{name} counts p99 (API)", count_p99, "ms", target="< 5 ms", met=count_p99 < 5),
        Figure("scale_out", f"{name} counts p99 (database only)", percentile(count_db, 99), "ms"),
        Figure("scale_out", f"{name} GET /healthz p99 (the API's floor on this machine now)",
               percentile(healthz, 99), "ms", extra={"p50": round(percentile(healthz, 50), 2)}),
        Figure("scale_out", f"{name} CPU per task, 1 replica", one_cpu, "µs",
               extra={"tasks": burst, "rounds": [round(x) for x in ones]}),
        Figure("scale_out", f"{name} CPU per task, 3 replicas", three_cpu, "µs", ratio, "1 replica", "≤ 1.1 x",
               ratio <= 1.1, {"tasks": burst, "rounds": [round(x) for x in threes]}),
        Figure("scale_out", f"{name} CPU per task, 1 replica at a third of the load (control)", control_cpu, "µs",
               control_ratio, "1 replica",
               extra={"tasks": burst, "submitters": SUBMITTERS // 3, "rounds": [round(x) for x in controls]}),
        Figure("scale_out", f"{name} feed lag p99 during the bursts", lag_p99, "s", target="< 1 s", met=lag_p99 < 1,
               extra={"samples": len(one_lag) + len(three_lag), "1 replica p99": round(percentile(one_lag, 99), 3),
                      "3 replicas p99": round(percentile(three_lag, 99), 3), "max": max(one_lag + three_lag)}),
    ]  # fmt: skip


def _copy(config: dict[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(config)


async def _database(backend: str, run_stack: Stack) -> str:
    if backend == "sqlite":
        return f"sqlite://{run_stack.root / 'index.db'}"
    import asyncpg

    name = f"fngate_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


async def _drop(url: str) -> None:
    if not url.startswith("postgresql://"):
        return
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


async def _get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        body = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"GET {url} answered {resp.status}: {body}")
        return body


async def _until_counted(base: str, fn: str, n: int, timeout: float, field: str = "submitted") -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            body = await _get(http, f"{base}/v1/functions/{fn}")
            if body["counts"]["totals"][field] >= n:
                return
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{fn}: {field} did not reach {n} in {timeout}s")


async def _complete_listing(base: str, n: int) -> None:
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                counts = await _get(http, f"{base}/v1/functions/{BULK}")
                page = await _get(http, f"{base}/v1/tasks?function={BULK}&limit=1000")
                if counts["counts"]["totals"]["submitted"] == n and len(page["tasks"]) == 1000:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)


async def _list_times(
    base: str, queries: list[str], index_url: str, run_stack: Stack
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    from gateway.config.model import Config
    from gateway.history import TaskHistory, open_backend, query_from_params

    api: dict[str, list[float]] = {q: [] for q in queries}
    db: dict[str, list[float]] = {q: [] for q in queries}
    async with aiohttp.ClientSession() as http:
        for round_ in range(LIST_ROUNDS + 1):
            for q in queries:
                started = time.perf_counter()
                await _get(http, f"{base}/v1/tasks?{q}")
                if round_:
                    api[q].append((time.perf_counter() - started) * 1000)
    backend = open_backend(index_url, run_stack.root)
    await backend.open()
    history = TaskHistory(Config(), backend=backend)
    try:
        for round_ in range(LIST_ROUNDS + 1):
            for q in queries:
                params = dict(p.split("=", 1) for p in q.split("&"))
                started = time.perf_counter()
                await history.list(query_from_params(params))
                if round_:
                    db[q].append((time.perf_counter() - started) * 1000)
    finally:
        await backend.close()
    return api, db


async def _count_times(base: str, path: str = f"/v1/functions/{BULK}") -> list[float]:
    times = []
    async with aiohttp.ClientSession() as http:
        for _ in range(COUNT_ROUNDS):
            started = time.perf_counter()
            await _get(http, f"{base}{path}")
            times.append((time.perf_counter() - started) * 1000)
    return times


async def _count_db_times(index_url: str, run_stack: Stack) -> list[float]:
    from gateway.history import open_backend

    backend = open_backend(index_url, run_stack.root)
    await backend.open()
    times = []
    try:
        for _ in range(COUNT_ROUNDS):
            started = time.perf_counter()
            await backend.counts([BULK, NOOP], now=time.time())
            times.append((time.perf_counter() - started) * 1000)
    finally:
        await backend.close()
    return times


def _tree(pid: int) -> list[int]:
    """The process and its descendants (a gateway's helper processes count as its own CPU)."""
    found = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as children:
                for child in children.read().split():
                    found += _tree(int(child))
        except FileNotFoundError:
            continue
    return found


def _cpu_by_process(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each process, its descendants included: of every live one its own
    (utime + stime), and that of its children that ended and were waited for (cutime +
    cstime: a helper feeder that stops during a burst takes its CPU out of the tree)."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[int, float] = {}
    for pid in pids:
        total = 0
        for member in _tree(pid):
            try:
                with open(f"/proc/{member}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += sum(int(n) for n in fields[11:15])
        used[pid] = total / ticks
    return used


async def _burst(
    gateways: list[GatewayProcess], nats: NatsServer, n: int, submitters: int = SUBMITTERS
) -> tuple[float, list[float]]:
    """µs of CPU per task over every gateway and nats-server, for n no-op tasks submitted
    round-robin to the gateways until all are Succeeded and indexed; and /readyz lag samples."""
    pids = [gw.proc.pid for gw in gateways if gw.proc] + ([nats.proc.pid] if nats.proc else [])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=submitters)) as http:
        before = (await _get(http, f"{gateways[0].url}/v1/functions/{NOOP}"))["counts"]["totals"]["completed"]
        lags: list[float] = []
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                body = await _get(http, f"{gateways[0].url}/readyz")
                lags.append(float(body["checks"]["index"]["lag_seconds"]))
                await asyncio.sleep(0.25)

        sampler = asyncio.create_task(sample())
        cpu = _cpu_by_process(pids)
        queue = iter(range(n))
        headers = {"Content-Type": "application/json", "X-Invocation-Type": "async"}

        async def submitter(k: int) -> None:
            url = f"{gateways[k % len(gateways)].url}/v1/functions/{NOOP}/invocations"
            for _ in queue:
                async with http.post(url, data=BODY, headers=headers) as resp:
                    if resp.status != 202:
                        raise RuntimeError(f"submit answered {resp.status}")

        await asyncio.gather(*(submitter(k) for k in range(submitters)))
        await _until_counted(gateways[0].url, NOOP, before + n, timeout=600, field="completed")
        while True:  # indexed everywhere: nothing left for the feed
            body = await _get(http, f"{gateways[0].url}/readyz")
            if body["checks"]["index"]["known"] and body["checks"]["index"]["lag_messages"] == 0:
                break
            await asyncio.sleep(0.1)
        after = _cpu_by_process(pids)
        shares = {pid: round((after[pid] - cpu[pid]) / n * 1e6) for pid in pids}
        print(f"scale_out: CPU µs per task by process (gateways, nats-server): {list(shares.values())}", flush=True)
        used = sum(after.values()) - sum(cpu.values())
        done.set()
        await sampler
    return used / n * 1e6, lags
