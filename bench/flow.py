"""Flow control's cost: end-to-end no-op tasks/s of a function with `key_concurrency`, and of
one with `rate_limit`, against the same function without limits, in the same run; with one
gateway and with two replicas on one NATS.

The limits are set so that they never bind (64 keys at 8 each over concurrency 64; a rate far
above what the gateway reaches): what is measured is what admission costs per task (the
leader's memory, the hand-over to the other replica over core NATS, the grant reports), not
waiting. Rounds run the three back to back in a rotating order; the ratio is the median over
rounds of each round's ratio (neighbours in time), so a machine whose load drifts skews it
least. Beside the rates, two costs the machine's load hardly moves: the gateways' CPU time
per task (user + system, from /proc) and the NATS messages per task (both directions, from
the server's monitoring endpoint)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import time
import urllib.request
from typing import Any

import aiohttp

from tests.services import NatsServer, free_port

from .harness import BODY, Figure, Settings, Stack, function

SUBMITTERS = 64
ROUNDS = 8  # a round's ratio on a shared 2-core VM ranges 0.5-2: the median needs many
KEYS = 64
FUNCTIONS = {
    "plain": function("noop", concurrency=64),
    "keyed": function("noop", concurrency=64, key_concurrency=8),
    "rated": function("noop", concurrency=64, rate_limit="1000000/s"),
}
LABELS = {"keyed": "key_concurrency 8, 64 keys", "rated": "rate_limit (not binding)"}


def run(run_stack: Stack, settings: Settings) -> list[Figure]:
    monitor = free_port()
    nats = run_stack.add(NatsServer(run_stack.root / "nats-flow", extra=["-m", str(monitor)]))
    figures: list[Figure] = []
    n = max(1000, settings.tasks // 8)
    for replicas in (1, 2):
        gateways = [run_stack.gateway({"nats": {"url": nats.url}, "functions": FUNCTIONS}) for _ in range(replicas)]
        pids = [gw.proc.pid for gw in gateways if gw.proc is not None]
        setup = f"{replicas} gateway{'s' if replicas > 1 else ''}"
        figures += _measure([gw.url for gw in gateways], pids, monitor, n, setup)
        for service in run_stack.services[-replicas:]:
            service.stop()
        del run_stack.services[-replicas:]
    return figures


def _measure(urls: list[str], pids: list[int], monitor: int, n: int, setup: str) -> list[Figure]:
    for name in FUNCTIONS:
        asyncio.run(_round(urls, name, 200))  # warm-up: workers, leaders, connections
    ratios: dict[str, list[float]] = {name: [] for name in LABELS}
    seconds = dict.fromkeys(FUNCTIONS, 0.0)
    messages = dict.fromkeys(FUNCTIONS, 0.0)
    cpu = dict.fromkeys(FUNCTIONS, 0.0)
    names = list(FUNCTIONS)
    for i in range(ROUNDS):
        took: dict[str, float] = {}
        for name in names[i % 3 :] + names[: i % 3]:
            before, cpu_before = _nats_messages(monitor), _cpu_seconds(pids)
            took[name] = asyncio.run(_round(urls, name, n))
            messages[name] += (_nats_messages(monitor) - before) / n / ROUNDS
            cpu[name] += (_cpu_seconds(pids) - cpu_before) / n / ROUNDS
            seconds[name] += took[name]
        for name in ratios:
            ratios[name].append(took["plain"] / took[name])
    rates = {name: ROUNDS * n / seconds[name] for name in FUNCTIONS}
    extra: dict[str, Any] = {"tasks": n, "rounds": ROUNDS, "nats_messages_per_task": round(messages["plain"], 2)}
    figures = [
        Figure("flow", f"{setup}: no limits, submitted → Succeeded", rates["plain"], "tasks/s", extra=extra),
        Figure("flow", f"{setup}: no limits, gateway CPU per task", cpu["plain"] * 1e6, "µs"),
    ]
    for name, label in LABELS.items():
        ratio = statistics.median(ratios[name])
        extra = {
            "tasks": n,
            "rounds": ROUNDS,
            "ratio_per_round": [round(r, 3) for r in ratios[name]],
            "nats_messages_per_task": round(messages[name], 2),
        }
        figures.append(
            Figure(
                "flow",
                f"{setup}: {label}",
                rates[name],
                "tasks/s",
                ratio,
                "no limits",
                "cost < 10%",
                ratio >= 0.9,
                extra,
            )
        )
        cost = cpu[name] / cpu["plain"]
        label = f"{setup}: {label}, CPU per task"
        figures.append(Figure("flow", label, cpu[name] * 1e6, "µs", cost, "no limits", "≤ 1.1 x", cost <= 1.1))
    return figures


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the gateway processes used so far."""
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _nats_messages(monitor: int) -> int:
    """Messages in and out of every client connection of the server, so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/connz", timeout=5) as response:
        connz = json.load(response)
    return sum(c["in_msgs"] + c["out_msgs"] for c in connz["connections"])


async def _round(urls: list[str], name: str, n: int) -> float:
    """Seconds from the first submit until the function's completed count grew by n."""
    keys = itertools.cycle(f"tenant-{k}" for k in range(KEYS))
    connector = aiohttp.TCPConnector(limit=SUBMITTERS)
    async with aiohttp.ClientSession(connector=connector) as http:
        before = await _completed(http, urls[0], name)
        queue = iter(range(n))

        async def submitter(url: str) -> None:
            for _ in queue:
                headers = {"Content-Type": "application/json", "X-Invocation-Type": "async"}
                if name == "keyed":
                    headers["X-Concurrency-Key"] = next(keys)
                async with http.post(url, data=BODY, headers=headers) as response:
                    if response.status != 202:
                        raise RuntimeError(f"submit answered {response.status}: {await response.text()}")

        started = time.perf_counter()
        targets = [f"{urls[i % len(urls)]}/v1/functions/{name}/invocations" for i in range(SUBMITTERS)]
        await asyncio.gather(*(submitter(url) for url in targets))
        while await _completed(http, urls[0], name) < before + n:
            await asyncio.sleep(0.05)
        return time.perf_counter() - started


async def _completed(http: aiohttp.ClientSession, base: str, name: str) -> int:
    async with http.get(f"{base}/v1/functions/{name}") as response:
        body: dict[str, Any] = await response.json()
    return int(body["counts"]["totals"]["completed"])
