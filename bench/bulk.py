"""Bulk rerun: the rate of `POST /v1/tasks/rerun` over `settings.backlog // 2` Failed tasks
(100,000 by default; FNGATE_BENCH_BULK overrides), from the request to the operation's end;
FNGATE_BENCH_BULK_REPLICAS (default 1) gateways pull the operation's chunks.

Phase 1: a gateway whose function fails at once (max_retries 0) is filled with wrk until its
index counts the wanted number Failed. Phase 2: a second gateway on the same index runs the
function parked on one slot, so the reruns stay queued and the figure is the operation's own
work (read every payload, enqueue every new task) rather than the reruns' executions.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .harness import Figure, Settings, Stack, function, wait_for, wrk

FUNCTION = "resize"
CONNECTIONS = 64
FAILING = {"handler": "python:examples.functions:fail", "concurrency": 64, "async": {"max_retries": 0}}


def call(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    split = urlsplit(base)
    conn = http.client.HTTPConnection(split.hostname or "127.0.0.1", split.port, timeout=600)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def rerun_failed(
    url: str, flt: dict[str, Any], poll: float = 0.1
) -> tuple[dict[str, Any], dict[str, Any], float, float]:
    """POST a bulk rerun of `flt` and wait for the operation to end: the 202's body, the
    operation's record, and seconds from the request to the 202 and to the end. Raises
    unless the operation Succeeded, every matched task done."""
    started = time.monotonic()
    status, accepted = call(url, "POST", "/v1/tasks/rerun", {"filter": flt, "limit": 1_000_000})
    created = time.monotonic() - started
    if status != 202:
        raise RuntimeError(f"POST /v1/tasks/rerun answered {status}: {accepted}")

    def ended() -> dict[str, Any] | None:
        code, op = call(url, "GET", f"/v1/operations/{accepted['operation_id']}")
        return op if code == 200 and op["status"] != "Running" else None

    op = wait_for(ended, 900, poll, "the operation to end")
    seconds = time.monotonic() - started
    if (op["status"], op["done"]) != ("Succeeded", accepted["matched"]):
        raise RuntimeError(f"operation ended {op}")
    return accepted, op, created, seconds


def failed_count(base: str) -> int:
    status, body = call(base, "GET", f"/v1/functions/{FUNCTION}")
    if status != 200:
        raise RuntimeError(f"GET /v1/functions/{FUNCTION} answered {status}: {body}")
    return int(body["counts"]["totals"]["failed"])


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (Linux /proc): per task, a figure that other
    work on the machine disturbs far less than the rate."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(run_stack: Stack, settings: Settings) -> list[Figure]:
    wanted = int(os.environ.get("FNGATE_BENCH_BULK", settings.backlog // 2))
    replicas = int(os.environ.get("FNGATE_BENCH_BULK_REPLICAS", 1))
    nats_server = run_stack.nats()
    index = f"sqlite://{run_stack.root / 'index.db'}"
    base = {"nats": {"url": nats_server.url}, "index": {"url": index}}
    filler = run_stack.gateway({**base, "functions": {FUNCTION: FAILING}})
    url = f"{filler.url}/v1/functions/{FUNCTION}/invocations"
    fill_started = time.monotonic()
    while (failed := failed_count(filler.url)) < wanted:
        wrk(url, seconds=max(1, min(30, (wanted - failed) // 3000)), connections=CONNECTIONS)
        wait_for(lambda: failed_count(filler.url) > failed, 120, 0.5, "tasks to fail")
    fill_seconds = time.monotonic() - fill_started
    filler.stop()

    parked = {**function("park", concurrency=1, timeout="2h"), "async": {"max_retries": 0}}
    gateway = run_stack.gateway({**base, "functions": {FUNCTION: parked}, "logging": {"level": "info"}})
    for _ in range(replicas - 1):  # more pullers of the operation's chunks, sharing the index
        run_stack.gateway({**base, "functions": {FUNCTION: parked}})

    def settled() -> bool:  # the index has caught up with the streams: nothing competes with the run
        _, ready = call(gateway.url, "GET", "/readyz")
        index = ready["checks"]["index"]
        return bool(index["known"] and index["lag_messages"] == 0)

    wait_for(settled, 300, 0.5, "the index to catch up")
    matched = failed_count(gateway.url)
    flt = {"function": FUNCTION, "status": "Failed"}
    assert gateway.proc is not None and nats_server.proc is not None
    pids = {"gateway": gateway.proc.pid, "nats-server": nats_server.proc.pid}
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    accepted, op, created, seconds = rerun_failed(gateway.url, flt)
    done = max(op["done"], 1)
    cpu_us = {name: round((cpu_seconds(pid) - cpu_before[name]) / done * 1e6) for name, pid in pids.items()}
    rate = op["done"] / seconds
    extra = {
        "matched": accepted["matched"],
        "failed_in_index": matched,
        "seconds": round(seconds, 2),
        "create_seconds": round(created, 2),
        "cpu_us_per_task": cpu_us,  # while the operation ran: the first replica, the index feed in it included
        "load_average": round(os.getloadavg()[0], 1),
        "fill_seconds": round(fill_seconds, 1),
        "gateway_log": [line for line in gateway.log().splitlines() if "operation op-" in line][-3:],
    }
    name = f"rerun of {accepted['matched']:,} Failed tasks, {replicas} replica(s)"
    return [Figure("bulk", name, rate, "tasks/s", None, None, ">= 5,000 tasks/s", rate >= 5000, extra)]
