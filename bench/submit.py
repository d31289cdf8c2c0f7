"""Async submit: wrk against fngate and, in the same run, the two reference servers; then
two gateway processes side by side (scale-out)."""

from __future__ import annotations

import threading
from typing import Any

from .harness import Figure, RefServer, Settings, Stack, WrkResult, function, wrk

FUNCTION = "orders"
# One slot held by a parked task: the submitted tasks queue up behind it, so the figure is
# the submit path with the workers, the task index and the metrics live, not task execution.
CONFIG: dict[str, Any] = {"functions": {FUNCTION: function("park", concurrency=1, timeout="2h")}}


def _submit_url(base: str) -> str:
    return f"{base}/v1/functions/{FUNCTION}/invocations"


def _gateway_config(nats_url: str) -> dict[str, Any]:
    return {"nats": {"url": nats_url}, **CONFIG}


ROUNDS = 3  # interleaved rounds; each figure is the median round


def run(run_stack: Stack, settings: Settings) -> list[Figure]:
    seconds = settings.seconds
    nats = run_stack.nats()
    bare = run_stack.add(RefServer(run_stack.root / "ref-bare", "bare"))
    publisher = run_stack.add(RefServer(run_stack.root / "ref-publish", "publish", nats.url))
    gateway = run_stack.gateway(_gateway_config(nats.url))
    wrk(_submit_url(gateway.url), seconds=1)  # warm-up: streams, consumers, first pages
    # A shared 2-core machine drifts by tens of percent over a minute: the three servers are
    # measured in turn, round after round, so drift hits them alike and the ratios hold.
    rounds: dict[str, list[WrkResult]] = {"a": [], "b": [], "fngate": []}
    for _ in range(ROUNDS):
        rounds["a"].append(wrk(bare.url, seconds=seconds))
        rounds["b"].append(wrk(publisher.url, seconds=seconds))
        rounds["fngate"].append(wrk(_submit_url(gateway.url), seconds=seconds))
    bare.stop()
    publisher.stop()
    ref_a, ref_b, one = (_median(rounds[k]) for k in ("a", "b", "fngate"))

    second = run_stack.gateway(_gateway_config(nats.url))
    both = _side_by_side([_submit_url(gateway.url), _submit_url(second.url)], seconds)
    two_rate = sum(r.requests_per_s for r in both)
    # The factor against one process measured right after, not against the median above.
    alone = wrk(_submit_url(gateway.url), seconds=seconds)

    figures = [
        _rate("reference (a): bare aiohttp 202", ref_a),
        _rate("reference (b): aiohttp + 1 JetStream publish", ref_b),
        Figure("submit", "fngate async submit", one.requests_per_s, "req/s", one.requests_per_s / ref_b.requests_per_s,
               "reference (b)", "≥ 0.8 x (b)", one.requests_per_s >= 0.8 * ref_b.requests_per_s,
               {"vs_a": round(one.requests_per_s / ref_a.requests_per_s, 3), "errors": one.errors}),
        Figure("submit", "fngate vs reference (a)", one.requests_per_s / ref_a.requests_per_s, "x", None, None,
               "≥ 0.4 x (a)", one.requests_per_s >= 0.4 * ref_a.requests_per_s),
        Figure("submit", "fngate submit p50", one.p50_ms, "ms", one.p50_ms / ref_b.p50_ms, "reference (b) p50"),
        Figure("submit", "fngate submit p99", one.p99_ms, "ms", one.p99_ms / ref_b.p99_ms, "reference (b) p99",
               "< 15 ms", one.p99_ms < 15),
        Figure("submit", "2 gateway processes, total", two_rate, "req/s", two_rate / alone.requests_per_s,
               "1 process", None, None, {"per_process": [round(r.requests_per_s) for r in both],
                                         "p99_ms": [r.p99_ms for r in both], "one_process": alone.requests_per_s}),
    ]  # fmt: skip
    return figures


def _median(results: list[WrkResult]) -> WrkResult:
    """The round with the median rate (its own latencies with it)."""
    return sorted(results, key=lambda r: r.requests_per_s)[len(results) // 2]


def _rate(name: str, result: WrkResult) -> Figure:
    extra = {"p50_ms": result.p50_ms, "p99_ms": result.p99_ms}
    return Figure("submit", name, result.requests_per_s, "req/s", extra=extra)


def _side_by_side(urls: list[str], seconds: float) -> list[WrkResult]:
    """One wrk per URL at once, the 64 connections split between them."""
    results: list[WrkResult | None] = [None] * len(urls)

    def load(i: int, url: str) -> None:
        results[i] = wrk(url, seconds=seconds, connections=64 // len(urls))

    threads = [threading.Thread(target=load, args=(i, url)) for i, url in enumerate(urls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in results if r is not None]
