"""The feed's backfill alone, in-process: `python -m bench.history_backfill N sqlite|postgresql [DIR]`.

The first run fills a nats-server's streams under DIR (default /tmp/fngate-backfill) with N
tasks, half of them with a Succeeded record (as `scale_out` does); every run, on the same
streams, feeds an empty index database from the start and prints the rate (wall) and the
CPU this process spent per task (both threads: the event loop's and the database's). The
CPU figure is what a loaded machine does not distort much, and running it with another
checkout on PYTHONPATH, alternately, compares two versions of the feed on the same data.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nats

from gateway.config.model import Config
from gateway.history import TaskHistory
from gateway.history.headers import install
from tests.history.streams import fill
from tests.services import NatsServer


async def backfill(url: str, n: int, kind: str, root: Path, fresh: bool) -> str:
    from .scale_out import _database, _drop

    if fresh:
        started = time.perf_counter()
        await fill(url, "bulk", n, succeeded=n // 2, prefix="h")
        print(f"streams filled at {n / (time.perf_counter() - started):.0f} tasks/s", flush=True)
    if kind == "sqlite":
        index_url = f"sqlite://{root / 'index.db'}"
    else:
        index_url = await _database("postgresql", SimpleNamespace(root=root))  # type: ignore[arg-type]
    config = Config.model_validate(
        {
            "index": {"url": index_url},
            "functions": {"bulk": {"handler": "python:bench.functions:park", "timeout": "2h"}},
        }
    )
    history = TaskHistory(config)
    await history.open()
    nc = await nats.connect(url)
    install(nc)  # as the gateway does on the feed's own connection
    history.attach(nc, await history.backend.database_id())
    feeds = [asyncio.create_task(feed.run()) for feed in history.feeds]
    started, cpu = time.perf_counter(), time.process_time()
    try:
        while True:
            counted = (await history.counts(["bulk"]))["bulk"].summary()["totals"]["submitted"]
            if counted >= n and sum(f.applied for f in history.feeds) >= n + n // 2:
                break
            await asyncio.sleep(0.05)
        wall, used = time.perf_counter() - started, time.process_time() - cpu
        return f"{kind} backfill {n / wall:.0f} tasks/s wall, CPU {used / n * 1e6:.1f} µs/task"
    finally:
        for feed in feeds:
            feed.cancel()
        await nc.close()
        await history.close()
        if kind != "sqlite":
            await _drop(index_url)


def main() -> None:
    n, kind = int(sys.argv[1]), sys.argv[2]
    root = Path(sys.argv[3] if len(sys.argv) > 3 else "/tmp/fngate-backfill")
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("index.db*"):  # an empty index database every run
        old.unlink()
    marker = root / f"filled-{n}"
    server = NatsServer(root / "nats")
    server.port = 14222 + n % 1000  # the same port each run: the stored streams' server
    server.start()
    try:
        print(asyncio.run(backfill(server.url, n, kind, root, not marker.exists())))
        marker.touch()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
