"""Two gateway replicas on one nats-server, running a journaled function under flow control."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GatewayFactory
from tests.functions import read_journal
from tests.services import GatewayProcess, NatsServer

Replicas = Callable[..., list[GatewayProcess]]


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "journal"


@pytest.fixture
def replicas(nats_server: NatsServer, gateway_factory: GatewayFactory, journal: Path) -> Replicas:
    def start(
        name: str, count: int = 2, ack_wait: str = "2s", triggers: list[dict[str, Any]] | None = None, **function: Any
    ) -> list[GatewayProcess]:
        spec = {"handler": "python:tests.functions:journaled", "timeout": "60s", **function}
        config: dict[str, Any] = {"nats": {"url": nats_server.url, "ack_wait": ack_wait}, "functions": {name: spec}}
        if triggers:
            config["triggers"] = [{"function": name, **trigger} for trigger in triggers]
        return [gateway_factory(config, env={"FNGATE_TEST_JOURNAL": str(journal)}) for _ in range(count)]

    return start


def runs(journal: Path) -> list[tuple[str, float, float | None, int]]:
    """Executions from the function's own stamps: (task id, start, end or None, pid)."""
    rows = read_journal(str(journal))
    ends = {(r[1], r[2], r[4]): r[3] for r in rows if r[0] == "end"}
    return [(r[1], r[3], ends.get((r[1], r[2], r[4])), r[4]) for r in rows if r[0] == "start"]


def spans_by_key(
    journal: Path, key_of: dict[str, str]
) -> tuple[dict[str, list[tuple[float, float]]], list[tuple[float, float]]]:
    """Every finished execution's (start, end), by its task's concurrency key and all together."""
    per_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    everything = []
    for task_id, start, end, _ in runs(journal):
        assert end is not None
        per_key[key_of[task_id]].append((start, end))
        everything.append((start, end))
    return per_key, everything


def peak(executions: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in executions] + [(end, -1) for _, end in executions])
    running = most = 0
    for _, delta in events:
        running += delta
        most = max(most, running)
    return most
