"""Idle live-status clients: what N open SSE streams (`GET /v1/tasks/{id}/events`) on tasks
that do not change cost a replica, and how fast a change then reaches all of them.

`python -m bench.live_idle [--clients 2000] [--tasks 100] [--seconds 30]`: one nats-server,
one gateway; `tasks` delayed tasks (an hour out), `clients` streams spread over them; the
gateway's CPU (utime + stime from /proc) over `seconds` of idleness, its RSS before and
after, and the time from stopping every task until every stream has its terminal event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import aiohttp

from .harness import function, rss_mb, stack

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def scenario(url: str, pid: int, clients: int, tasks: int, seconds: float) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as http:
        ids = []
        for _ in range(tasks):
            async with http.post(
                f"{url}/v1/functions/park/invocations",
                data=b"{}",
                headers={"X-Invocation-Type": "async", "X-Delay": "3600", "Content-Type": "application/json"},
            ) as resp:
                ids.append((await resp.json())["task_id"])
        rss_before = rss_mb(pid)
        streams = []
        for i in range(clients):
            resp = await http.get(f"{url}/v1/tasks/{ids[i % tasks]}/events")
            await resp.content.readuntil(b"\n\n")  # the current record: the stream is open
            streams.append(resp)
        opened_rss = rss_mb(pid)
        await asyncio.sleep(2)  # let the opening settle before measuring idleness
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds)
        idle_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)

        async def terminal(resp: aiohttp.ClientResponse) -> None:
            while line := await resp.content.readline():
                if line.startswith(b"data: ") and b'"status":"Stopped"' in line:
                    return

        started = time.monotonic()
        waits = [asyncio.create_task(terminal(s)) for s in streams]
        for task_id in ids:
            async with http.post(f"{url}/v1/tasks/{task_id}/stop") as resp:
                assert resp.status == 202
        await asyncio.gather(*waits)
        fan_out = time.monotonic() - started
        for s in streams:
            s.close()
    return {
        "clients": clients,
        "tasks": tasks,
        "idle_seconds": seconds,
        "gateway_cpu_idle_percent": round(100 * idle_cpu, 2),
        "rss_mb_before": round(rss_before, 1),
        "rss_mb_with_streams": round(opened_rss, 1),
        "stop_all_to_every_stream_terminal_s": round(fan_out, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.live_idle", description=__doc__)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    with stack() as run:
        nats = run.nats()
        config = {
            "nats": {"url": nats.url},
            "api": {"streams_per_client": 3000},  # every stream of the bench comes from one address
            "functions": {"park": function("park", timeout="2h")},
        }
        gateway = run.gateway(config)
        assert gateway.proc is not None
        result = asyncio.run(scenario(gateway.url, gateway.proc.pid, args.clients, args.tasks, args.seconds))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
