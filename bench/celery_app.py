"""The Celery reference for the end-to-end figure: Redis broker and result backend (db 15)."""

from __future__ import annotations

import os

from celery import Celery

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
app = Celery("fngate_bench", broker=REDIS, backend=REDIS)
app.conf.update(task_default_queue="fngate-bench", worker_hijack_root_logger=False, result_expires=600)


@app.task(name="bench.noop")
def noop(payload: dict[str, object]) -> None:
    """The same no-op as bench.functions.noop."""
