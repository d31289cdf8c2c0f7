"""What every replica knows of a flow-controlled function: the leader's last broadcast."""

from __future__ import annotations

import time
from typing import Any

from gateway.config.model import FunctionConfig
from gateway.observe import metrics

REASONS = ("concurrency", "key", "rate")
_latest: dict[str, tuple[float, dict[str, Any]]] = {}


def record(function: str, stats: dict[str, Any]) -> None:
    _latest[function] = (time.monotonic(), stats)
    waiting = stats.get("waiting", {})
    for reason in REASONS:
        metrics.TASKS_WAITING.labels(function, reason).set(waiting.get(reason, 0))


def summary(function: str, config: FunctionConfig) -> dict[str, Any] | None:
    """The `flow` part of GET /v1/functions/{fn}; None for a function without flow control."""
    if not config.flow_controlled:
        return None
    at, stats = _latest.get(function, (0.0, {}))
    age = time.monotonic() - at if at else None
    return {
        "key_concurrency": config.key_concurrency,
        "rate_limit": config.rate_limit,
        "priorities": True,
        "leader": stats.get("leader"),
        "running": stats.get("running", 0),
        "waiting": {reason: stats.get("waiting", {}).get(reason, 0) for reason in REASONS},
        "parked": stats.get("parked", 0),
        # The figures come from the leader once a second; older than a few seconds: no leader.
        "as_of_seconds_ago": None if age is None else round(age, 1),
    }
