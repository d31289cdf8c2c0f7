"""The feed against real services: gateways sharing one index database (SQLite file or
PostgreSQL) fed from one nats-server, with replicas killed and consumers deleted under them."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.client import Client as NATS

from gateway.config.model import Config
from gateway.history import TaskHistory, open_backend
from gateway.history.backend import Backend
from gateway.history.headers import install
from gateway.tasks import constants as c
from tests.conftest import Api, GatewayFactory, wait_until
from tests.history.streams import fill
from tests.services import GatewayProcess, NatsServer

BULK = "bulk"  # a function no gateway here runs: its tasks keep the states the test wrote
BULK_CONFIG = {"handler": "python:examples.functions:echo"}  # a config for it: retention reads it


@pytest.fixture
def nats_alone(tmp_path: Path) -> Any:
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()


def config(nats_url: str, index_url: str, feeders: int = 1, **functions: Any) -> dict[str, Any]:
    return {
        "nats": {"url": nats_url},
        "index": {"url": index_url, "ack_wait": "2s", "feeders": feeders},
        "functions": functions or {"echo": {"handler": "python:examples.functions:echo"}},
    }


async def applied(http: aiohttp.ClientSession, gw: GatewayProcess) -> int:
    """Messages this replica applied to the index, from its /metrics."""
    async with http.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    return int(sum(float(v) for v in re.findall(r"^fngate_index_applied_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)))


async def opened(index_url: str, tmp_path: Path) -> Backend:
    backend = open_backend(index_url, tmp_path)
    await backend.open()
    return backend


async def settled(backend: Backend, function: str, want: dict[str, int], timeout: float = 60) -> dict[str, int]:
    async def check() -> dict[str, int] | None:
        totals = (await backend.counts([function], now=0))[function].summary()["totals"]
        return totals if all(totals[k] == v for k, v in want.items()) else None

    try:
        result: dict[str, int] = await wait_until(check, timeout=timeout, interval=0.25)
    except AssertionError:
        totals = (await backend.counts([function], now=0))[function].summary()["totals"]
        raise AssertionError(f"counts {totals}, wanted {want}") from None
    return result


async def test_sigkill_of_a_replica_mid_batch_loses_and_double_counts_nothing(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, nats_alone: NatsServer, index_url: str, tmp_path: Path
) -> None:
    total, done = 30_000, 10_000
    await fill(nats_alone.url, BULK, total, succeeded=done)
    gws = [gateway_factory(config(nats_alone.url, index_url)) for _ in range(2)]

    async def the_feeder() -> GatewayProcess | None:
        for gw in gws:
            if await applied(http, gw) > 0:
                return gw
        return None

    # One feeder slot: one replica feeds. Killed while it holds batches (taken from the
    # consumer, not all of them committed or acked), its slot goes to the other replica.
    feeding = await wait_until(the_feeder, timeout=30, interval=0.02)
    other = gws[1 - gws.index(feeding)]
    assert await applied(http, other) == 0 and not await feeds(http, other)
    feeding.stop(signal.SIGKILL)
    backend = await opened(index_url, tmp_path)
    try:
        await settled(backend, BULK, {"submitted": total, "completed": done, "queued": total - done})
        assert await applied(http, other) > 0 and await feeds(http, other)
        # And it stays so: redeliveries of what the killed replica had committed change nothing.
        await wait_until(lambda: lag_is_zero(http, other), timeout=30, interval=0.5)
        await settled(backend, BULK, {"submitted": total, "completed": done, "queued": total - done}, timeout=1)
        assert "task index: backfilling" in feeding.log() + other.log()
    finally:
        await backend.close()


async def feeds(http: aiohttp.ClientSession, gw: GatewayProcess) -> bool:
    """This replica's feeder holds a feeder slot (/readyz)."""
    async with http.get(f"{gw.url}/readyz") as resp:
        return bool((await resp.json())["checks"]["index"]["feeding"])


async def lag_is_zero(http: aiohttp.ClientSession, gw: GatewayProcess) -> bool:
    async with http.get(f"{gw.url}/readyz") as resp:
        index = (await resp.json())["checks"]["index"]
    return bool(index["known"] and index["lag_messages"] == 0)


async def test_two_replicas_feed_at_once_while_serving_submits(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, nats_alone: NatsServer, index_url: str, tmp_path: Path
) -> None:
    total = 40_000
    # Two feeder slots: the first replica's feeder takes slot 0 and feeds all the time; the
    # second's takes slot 1 and joins in a backlog. Both then pull from the same consumers
    # and race on the database.
    first = gateway_factory(config(nats_alone.url, index_url, feeders=2))
    await wait_until(lambda: slots_of(http, first, [0]), timeout=20, interval=0.1)
    second = gateway_factory(config(nats_alone.url, index_url, feeders=2))
    await wait_until(lambda: slots_of(http, second, [1]), timeout=20, interval=0.1)
    assert not await feeds(http, second), "slot 1 waits for a backlog"
    gws = [first, second]
    release = await hold_write_lock(index_url)  # a backlog that slot 0 alone cannot clear yet
    try:
        ids = await fill(nats_alone.url, BULK, total)
        await wait_until(lambda: feeds(http, second), timeout=30, interval=0.1)
    finally:
        await release()
    # Submits are served during the backfill, through both replicas.
    live = [await Api(http, gw.url).submit("echo", {"n": n}) for n in range(10) for gw in gws]
    backend = await opened(index_url, tmp_path)
    try:
        await settled(backend, BULK, {"submitted": total, "queued": total})
        await settled(backend, "echo", {"submitted": len(live), "completed": len(live)})
        assert all([await applied(http, gw) > 0 for gw in gws]), "both replicas took batches"
        assert "feeder slot 1 helps apply it" in second.log()
        body = await wait_until(lambda: listed(http, gws[1], f"function={BULK}&limit=1000&order=asc"))
        assert [t["task_id"] for t in body["tasks"]] == ids[:1000]
        # Caught up, slot 1 stops pulling, and the live trickle is fed by slot 0 alone.
        await wait_until(lambda: not_feeding(http, second), timeout=30, interval=0.25)
        before = await applied(http, second)
        more = [await Api(http, first.url).submit("echo", {"n": n}) for n in range(5)]
        await settled(backend, "echo", {"submitted": len(live) + len(more), "completed": len(live) + len(more)})
        assert await applied(http, second) == before
    finally:
        await backend.close()


async def test_a_backlog_brings_in_a_helper_feeder_that_leaves_once_it_is_applied(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, nats_alone: NatsServer, index_url: str, tmp_path: Path
) -> None:
    from gateway.history.feeder_process import CALM

    total, done = 60_000, 20_000
    # One replica, two feeder slots: its feeder holds slot 0; a backlog starts a helper.
    gw = gateway_factory(config(nats_alone.url, index_url, feeders=2))
    await wait_until(lambda: slots_of(http, gw, [0]), timeout=20, interval=0.1)
    await wait_until(lambda: lag_is_zero(http, gw), timeout=20, interval=0.25)
    assert await index_check(http, gw) | {"lag_seconds": 0} == {
        "backend": "sqlite" if index_url.startswith("sqlite") else "postgresql",
        "lag_messages": 0, "lag_seconds": 0, "known": True, "feeding": True, "slots": [0],
    }  # fmt: skip
    release = await hold_write_lock(index_url)  # the backlog stays until both feed
    try:
        await fill(nats_alone.url, BULK, total, succeeded=done)
        await wait_until(lambda: feeding_processes(http, gw, 2), timeout=30, interval=0.25)
        assert (await index_check(http, gw))["slots"] == [0, 1]
    finally:
        await release()
    backend = await opened(index_url, tmp_path)
    try:
        await settled(backend, BULK, {"submitted": total, "completed": done, "queued": total - done})
        assert "feeder slot 1 helps apply it" in gw.log()
        # Caught up, the helper stops pulling at once, and its process ends after CALM.
        await wait_until(lambda: feeding_processes(http, gw, 1), timeout=30, interval=0.25)
        await wait_until(lambda: slots_of(http, gw, [0]), timeout=CALM + 20, interval=0.5)
        assert "stopping the helper feeders" in gw.log()
        await Api(http, gw.url).submit("echo", {})
        await settled(backend, "echo", {"submitted": 1, "completed": 1})
        await settled(backend, BULK, {"submitted": total, "completed": done, "queued": total - done}, timeout=1)
    finally:
        await backend.close()


async def index_check(http: aiohttp.ClientSession, gw: GatewayProcess) -> dict[str, Any]:
    async with http.get(f"{gw.url}/readyz") as resp:
        index: dict[str, Any] = (await resp.json())["checks"]["index"]
    return index


async def slots_of(http: aiohttp.ClientSession, gw: GatewayProcess, want: list[int]) -> bool:
    """This replica's feeders hold exactly these feeder slots (/readyz)."""
    return bool((await index_check(http, gw))["slots"] == want)


async def not_feeding(http: aiohttp.ClientSession, gw: GatewayProcess) -> bool:
    return not await feeds(http, gw)


async def feeding_processes(http: aiohttp.ClientSession, gw: GatewayProcess, want: int) -> bool:
    """This replica has `want` feeder processes applying the streams (its /metrics)."""
    async with http.get(f"{gw.url}/metrics") as resp:
        text = await resp.text()
    found = re.search(r"^fngate_index_feeding ([0-9.]+)$", text, re.M)
    return found is not None and float(found.group(1)) == want


async def listed(http: aiohttp.ClientSession, gw: GatewayProcess, query: str) -> dict[str, Any] | None:
    async with http.get(f"{gw.url}/v1/tasks?{query}") as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
    return body if body["tasks"] else None


async def test_the_feed_goes_on_when_its_consumers_vanish(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, nats_alone: NatsServer, index_url: str
) -> None:
    gw = gateway_factory(config(nats_alone.url, index_url))
    api = Api(http, gw.url)
    before = [await api.submit("echo", {"n": n}) for n in range(3)]

    async def succeeded(ids: list[str]) -> dict[str, Any] | None:
        status, body = await api.get("/v1/tasks?function=echo&status=Succeeded&limit=100")
        assert status == 200, body
        return body if set(ids) <= {t["task_id"] for t in body["tasks"]} else None

    await wait_until(lambda: succeeded(before), timeout=20)
    nc = await nats.connect(nats_alone.url)
    try:
        jsm = nc.jsm()
        deleted = 0
        for stream in (c.TASKS_STREAM, c.STATE_STREAM):
            for consumer in await jsm.consumers_info(stream):
                if consumer.name.startswith("fngate-index-"):
                    await jsm.delete_consumer(stream, consumer.name)
                    deleted += 1
        assert deleted == 2
    finally:
        await nc.close()
    after = [await api.submit("echo", {"n": n}) for n in range(3, 6)]
    body = await wait_until(lambda: succeeded(after), timeout=60, interval=0.5)
    assert {t["task_id"] for t in body["tasks"]} == set(before) | set(after)
    # Made again, the consumers replay both streams from the start: nothing counts twice.
    status, summary = await api.get("/v1/functions/echo")
    assert status == 200 and summary["counts"]["totals"]["completed"] == 6, summary
    assert summary["counts"]["totals"]["submitted"] == 6, summary
    assert "is gone; creating it again" in gw.log()


async def test_readyz_and_metrics_show_the_lag(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, nats_alone: NatsServer, index_url: str, tmp_path: Path
) -> None:
    gw = gateway_factory(config(nats_alone.url, index_url))
    await wait_until(lambda: lag_is_zero(http, gw), timeout=20, interval=0.25)
    release = await hold_write_lock(index_url)  # the database stops taking the feed's batches
    try:
        await fill(nats_alone.url, BULK, 500)

        async def lagging() -> dict[str, Any] | None:
            async with http.get(f"{gw.url}/readyz") as resp:
                body: dict[str, Any] = await resp.json()
            index = body["checks"]["index"]
            return body if index["lag_messages"] >= 500 and index["lag_seconds"] > 0 else None

        body = await wait_until(lagging, timeout=20, interval=0.25)
        assert body["ready"] is True  # a trailing index does not take the replica out of service
        async with http.get(f"{gw.url}/metrics") as resp:
            text = await resp.text()
        assert re.search(r'^fngate_index_lag_messages\{stream="FNGATE_TASKS"\} [1-9]', text, re.M), text[-2000:]
    finally:
        await release()
    await wait_until(lambda: lag_is_zero(http, gw), timeout=30, interval=0.25)


async def hold_write_lock(index_url: str) -> Any:
    """Take the writers' lock of the index database; returns the coroutine that lets it go."""
    if index_url.startswith("sqlite://"):
        import sqlite3

        conn = sqlite3.connect(index_url[len("sqlite://") :], isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")

        async def release_sqlite() -> None:
            conn.execute("ROLLBACK")
            conn.close()

        return release_sqlite
    import asyncpg

    from gateway.history.postgres import LOCK_KEY

    pg = await asyncpg.connect(index_url)
    await pg.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)

    async def release_pg() -> None:
        await pg.close()

    return release_pg


async def test_submits_go_on_while_the_index_database_is_unreachable(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, nats_alone: NatsServer
) -> None:
    from tests.services import free_port

    gw = gateway_factory(config(nats_alone.url, f"postgresql://postgres@127.0.0.1:{free_port()}/fngate"))
    api = Api(http, gw.url)
    task_id = await api.submit("echo", {"n": 1})
    assert (await api.wait_status(task_id, "Succeeded"))["task_id"] == task_id  # read by id: the stream
    for path in ("/v1/tasks?function=echo", "/v1/functions/echo"):
        status, body = await api.get(path)
        assert status == 503 and body["error"]["code"] == "ServiceUnavailable", body
    assert "task index failed" in gw.log()


async def _planner_rows(backend: Backend) -> int:
    """The table's rows as the planner's statistics last counted them."""
    if backend.name == "sqlite":
        rows = await backend.reader.run(  # type: ignore[attr-defined]
            lambda conn: conn.execute("SELECT stat FROM sqlite_stat1 WHERE idx = 'tasks_by_time'").fetchone()
        )
        return int(rows[0].split()[0])
    return int(await backend.pool.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'tasks'"))  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def fed_here(nats_url: str, index_url: str, ack_wait: str = "2s") -> AsyncIterator[tuple[TaskHistory, NATS]]:
    """A history whose feeds the test runs in its own process, on a connection hooked as a feeder's."""
    settings = config(nats_url, index_url, 1, bulk=BULK_CONFIG)
    settings["index"]["ack_wait"] = ack_wait
    history = TaskHistory(Config.model_validate(settings))
    await history.open()
    nc = await nats.connect(nats_url)
    install(nc)
    try:
        history.attach(nc, await history.backend.database_id())
        yield history, nc
    finally:
        await nc.close()
        await history.close()


async def test_statistics_are_refreshed_once_a_backlog_is_applied(nats_alone: NatsServer, index_url: str) -> None:
    # A backfill's oldest tasks come first, all Succeeded; the newer half is only Enqueued.
    # The doubling schedule last counted 1,000 rows; the end of the backlog counts all.
    await fill(nats_alone.url, BULK, 1500, succeeded=1000, prefix="s")
    async with fed_here(nats_alone.url, index_url) as (history, _):
        for feed in history.feeds:
            feed.batch, feed.refresh_after = 100, 300
        feeds = [asyncio.create_task(feed.run()) for feed in history.feeds]
        try:
            await settled(history.backend, BULK, {"submitted": 1500, "completed": 1000})
            # In the same transaction as the last batch: counted complete, planned with all rows.
            assert await _planner_rows(history.backend) == 1500
        finally:
            for task in feeds:
                task.cancel()
            await asyncio.gather(*feeds, return_exceptions=True)


async def test_a_stopped_feed_strands_nothing_its_open_pull_request_would_have_brought(
    nats_alone: NatsServer, index_url: str
) -> None:
    # The feed stops with a pull request open on the server; messages stored after that
    # must stay pending for the next feeder, not be delivered to a dead inbox, where they
    # would wait ack_wait (30 s here): the server drops a request whose inbox lost interest.
    await fill(nats_alone.url, BULK, 10, prefix="a")
    async with fed_here(nats_alone.url, index_url, ack_wait="30s") as (history, nc):
        tasks_feed = history.feeds[0]
        running = asyncio.create_task(tasks_feed.run())
        await settled(history.backend, BULK, {"submitted": 10})

        async def fresh_request() -> bool:  # one with most of its life ahead on the server
            return tasks_feed._credit > 0 and tasks_feed._deadline - time.monotonic() > 1.5

        await wait_until(fresh_request, timeout=10, interval=0.01)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await fill(nats_alone.url, BULK, 20, prefix="b")

        async def pending() -> tuple[int, int] | None:
            info = await nc.jetstream().consumer_info(c.TASKS_STREAM, tasks_feed.consumer)
            return (0, 20) if (info.num_ack_pending, info.num_pending) == (0, 20) else None

        await wait_until(pending, timeout=3, interval=0.05)
        assert (await history.backend.counts([BULK], now=0))[BULK].summary()["totals"]["submitted"] == 10
