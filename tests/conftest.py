"""Shared fixtures: real brokers and gateways, each test's names unique."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.services import GatewayProcess, InProcessGateway, Mosquitto, NatsServer, Tansu

# The feeder processes of the gateways under test keep the gateway's own CPU priority: at its
# default nice 5, on a machine running two test workers and their gateways, the index would
# trail by seconds, and every test that lists after a task ended would wait that long.
os.environ.setdefault("FNGATE_FEEDER_NICE", "0")

_counter = itertools.count()
# Every status a task ends in: a timeline that reaches one of them has ended.
TERMINAL = frozenset({"Succeeded", "Failed", "Stopped", "Expired", "Invalid"})
# Tests whose assertions measure time (a retry's delay, a rate, heartbeats within ack_wait)
# or that ride out a broker outage under load, and flaked when other tests ran beside them:
# `make test` runs them on their own after the rest has run in parallel (marker `serial`).
SERIAL = (
    "tests/triggers/test_broker_restart.py",
    "tests/triggers/test_mqtt_broker_restart.py",
    "tests/triggers/test_readiness.py",
    "tests/triggers/test_timer.py",
    "tests/test_retry_timing.py",
    "tests/test_heartbeat.py",
    "tests/test_cluster.py",
    "tests/flow/test_flow.py::test_rate_limit_held_over_20s_and_nothing_dropped",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own: for tests that stop it, or whose gateways' stream
    configs (a shorter replica TTL) must not meet the session server's."""
    server = NatsServer(tmp_path / "own-nats")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    broker = Tansu(tmp_path_factory.mktemp("tansu"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """A name no other test uses: for functions, task ids, subjects and topics."""

    def make(prefix: str = "x") -> str:
        return f"{prefix}{next(_counter)}{int(time.time() * 1000) % 100000}"

    return make


GatewayFactory = Callable[..., GatewayProcess]


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[GatewayFactory]:
    """Starts `fngate serve` processes; all are stopped at the end of the test."""
    started: list[GatewayProcess] = []

    def make(config: dict[str, Any], *, start: bool = True, env: dict[str, str] | None = None) -> GatewayProcess:
        gateway = GatewayProcess(tmp_path / f"gw{len(started)}", config, env=env)
        started.append(gateway)
        if start:
            gateway.start()
        return gateway

    yield make
    for gateway in started:
        gateway.kill()


@asynccontextmanager
async def module_gateway(
    workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None
) -> AsyncIterator[InProcessGateway]:
    """A gateway in-process on aiohttp's test server, mostly one per module (the API,
    security and observability tests: nothing there kills or freezes the gateway)."""
    gateway = InProcessGateway(workdir, config, env)
    try:
        await gateway.start()
        yield gateway
    finally:
        await gateway.stop()


@contextmanager
def module_gateway_process(
    workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None
) -> Iterator[GatewayProcess]:
    """One `fngate serve` process for a module's tests, where the tests need a process: they
    call it synchronously (schemathesis) or watch what only a process shows."""
    gateway = GatewayProcess(workdir, config, env=env)
    try:
        gateway.start()
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def wait_until(predicate: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll an async predicate until it returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


async def wait_all(api: Api, task_ids: list[str], status: str, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """Wait until every task reached `status`; their records, by task id."""
    records: dict[str, dict[str, Any]] = {}

    async def done() -> bool:
        pending = [t for t in task_ids if t not in records]
        results = await asyncio.gather(*(api.get(f"/v1/tasks/{t}") for t in pending[:200]))
        for task_id, (code, body) in zip(pending, results, strict=False):
            if code == 200 and body["status"] == status:
                records[task_id] = body
        return len(records) == len(task_ids)

    await wait_until(done, timeout=timeout, interval=0.2)
    return records


class Api:
    """A small client for the gateway's HTTP API, used by the tests."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str | None = None) -> None:
        self.session = session
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def invoke(
        self,
        fn: str,
        payload: Any = None,
        *,
        mode: str = "async",
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        body = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
        hdrs = {**self.headers, "X-Invocation-Type": mode, "Content-Type": "application/json", **(headers or {})}
        async with self.session.post(f"{self.url}/v1/functions/{fn}/invocations", data=body, headers=hdrs) as resp:
            data = await resp.read()
            try:
                parsed: Any = json.loads(data)
            except ValueError:
                parsed = data
            return resp.status, parsed, dict(resp.headers)

    async def submit(self, fn: str, payload: Any = None, **headers: str) -> str:
        hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
        status, body, _ = await self.invoke(fn, payload, headers=hdrs)
        assert status == 202, body
        task_id: str = body["task_id"]
        return task_id

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(f"{self.url}{path}", headers=self.headers) as resp:
            return resp.status, await resp.json(content_type=None)

    async def post(self, path: str) -> tuple[int, Any]:
        async with self.session.post(f"{self.url}{path}", headers=self.headers) as resp:
            return resp.status, await resp.json(content_type=None)

    async def task(self, task_id: str) -> dict[str, Any]:
        status, body = await self.get(f"/v1/tasks/{task_id}")
        assert status == 200, body
        result: dict[str, Any] = body
        return result

    async def wait_status(self, task_id: str, *statuses: str, timeout: float = 20.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            status, body = await self.get(f"/v1/tasks/{task_id}")
            return body if status == 200 and body["status"] in statuses else None

        result: dict[str, Any] = await wait_until(check, timeout)
        return result
