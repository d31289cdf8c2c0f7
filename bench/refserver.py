"""The reference servers fngate's submit is measured against, in the same run.

    python -m bench.refserver bare PORT          (a) aiohttp that answers 202 and nothing else
    python -m bench.refserver publish PORT URL   (b) aiohttp doing exactly one JetStream publish
                                                     with ack (file store) before its 202

They read the body as fngate does and answer a small JSON document, so the only
difference left is what fngate does on top: validation, the task id, the metrics.
"""

from __future__ import annotations

import asyncio
import itertools
import sys

import nats
from aiohttp import web
from nats.js.api import StorageType, StreamConfig

from gateway.tuning import new_event_loop, tune_gc


async def main(mode: str, port: int, nats_url: str) -> None:
    counter = itertools.count()
    app = web.Application()
    if mode == "bare":

        async def bare(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({"task_id": f"ref-{next(counter)}"}, status=202)

        app.router.add_post("/{tail:.*}", bare)
    elif mode == "publish":
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="BENCH_REF", subjects=["bench.ref.>"], storage=StorageType.FILE))

        async def publish(request: web.Request) -> web.Response:
            body = await request.read()
            task_id = f"ref-{next(counter)}"
            await js.publish(f"bench.ref.{task_id}", body)
            return web.json_response({"task_id": task_id}, status=202)

        app.router.add_post("/{tail:.*}", publish)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    tune_gc()  # as fngate does once started
    await asyncio.Event().wait()


if __name__ == "__main__":
    # The loop (and collector settings) fngate runs with, so the ratios compare the work done.
    new_event_loop().run_until_complete(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else ""))
