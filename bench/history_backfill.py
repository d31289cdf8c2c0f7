"""The feed's backfill alone, in-process: `python -m bench.history_backfill N sqlite|postgresql [DIR] [FEEDERS]`.

The first run fills a nats-server's streams under DIR (default /tmp/fngate-backfill) with N
tasks, half of them with a Succeeded record (as `scale_out` does); every run, on the same
streams, feeds an empty index database from the start and prints the rate (wall) and the
CPU this process spent per task (both threads: the event loop's and the database's). The
CPU figure is what a loaded machine does not distort much, and running it with another
checkout on PYTHONPATH, alternately, compares two versions of the feed on the same data.

FEEDERS (default 1) above one also starts FEEDERS - 1 feeding processes of their own on the
same database and consumers, as replicas holding several of `index.feeders`' slots would:
JetStream shares the consumers' messages between them, and the rate is the deployment's.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nats
from nats.aio.client import Client as NATS

from gateway.config.model import Config
from gateway.history import TaskHistory
from gateway.history.headers import install
from tests.history.streams import fill
from tests.services import NatsServer


async def backfill(url: str, n: int, kind: str, root: Path, fresh: bool, helpers: int = 0) -> str:
    from .scale_out import _cpu_by_process, _database, _drop

    if fresh:
        started = time.perf_counter()
        await fill(url, "bulk", n, succeeded=n // 2, prefix="h")
        print(f"streams filled at {n / (time.perf_counter() - started):.0f} tasks/s", flush=True)
    if kind == "sqlite":
        index_url = f"sqlite://{root / 'index.db'}"
    else:
        index_url = await _database("postgresql", SimpleNamespace(root=root))  # type: ignore[arg-type]
    history = _history(index_url)
    await history.open()
    # Started once the database exists, so all of them open one database id and its consumers.
    helper = [sys.executable, "-m", "bench.history_backfill", "--feed", url, index_url]
    others = [await asyncio.create_subprocess_exec(*helper) for _ in range(helpers)]
    nc = await _attach(history, url)
    feeds = [asyncio.create_task(feed.run()) for feed in history.feeds]
    started, cpu = time.perf_counter(), time.process_time()
    try:
        while True:
            totals = (await history.counts(["bulk"]))["bulk"].summary()["totals"]
            if totals["submitted"] >= n and totals["completed"] >= n // 2:
                break
            await asyncio.sleep(0.05)
        wall, used = time.perf_counter() - started, time.process_time() - cpu
        used += sum(_cpu_by_process([other.pid for other in others]).values())  # theirs with their start-up
        over = f" over {helpers + 1} feeders" if helpers else ""
        return f"{kind} backfill {n / wall:.0f} tasks/s wall, CPU {used / n * 1e6:.1f} µs/task{over}"
    finally:
        for feed in feeds:
            feed.cancel()
        for other in others:
            other.terminate()
            await other.wait()
        await nc.close()
        await history.close()
        if kind != "sqlite":
            await _drop(index_url)


def _history(index_url: str) -> TaskHistory:
    config = {
        "index": {"url": index_url},
        "functions": {"bulk": {"handler": "python:bench.functions:park", "timeout": "2h"}},
    }
    return TaskHistory(Config.model_validate(config))


async def _attach(history: TaskHistory, url: str) -> NATS:
    """The history's feeds on a NATS connection of their own, hooked as the feeder's is."""
    nc = await nats.connect(url)
    install(nc)
    history.attach(nc, await history.backend.database_id())
    return nc


async def feed_only(url: str, index_url: str) -> None:
    """A helper feeder (FEEDERS above one): the feeds of the database at index_url, until stopped."""
    history = _history(index_url)
    await history.open()
    await _attach(history, url)
    await asyncio.gather(*(feed.run() for feed in history.feeds))


def main() -> None:
    if sys.argv[1] == "--feed":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(feed_only(sys.argv[2], sys.argv[3]))
        return
    n, kind = int(sys.argv[1]), sys.argv[2]
    root = Path(sys.argv[3] if len(sys.argv) > 3 else "/tmp/fngate-backfill")
    feeders = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("index.db*"):  # an empty index database every run
        old.unlink()
    marker = root / f"filled-{n}"
    server = NatsServer(root / "nats")
    server.port = 14222 + n % 1000  # the same port each run: the stored streams' server
    server.start()
    try:
        print(asyncio.run(backfill(server.url, n, kind, root, not marker.exists(), feeders - 1)))
        marker.touch()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
