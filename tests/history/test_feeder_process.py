"""The feeder process never outlives its gateway: not when the gateway is killed, not when
it stops, and not when the NATS server went away first (its client then reconnects for
ever, and waiting for it to close would never end)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import GatewayFactory
from tests.services import GatewayProcess, NatsServer


def feeders_of(gw: GatewayProcess) -> list[int]:
    assert gw.proc is not None
    pid = gw.proc.pid
    children: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as listed:
            children += [int(child) for child in listed.read().split()]
    found = []
    for child in children:
        with open(f"/proc/{child}/cmdline", "rb") as cmdline:
            if b"gateway.history" in cmdline.read():
                found.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
async def test_the_feeder_ends_with_its_gateway_even_with_nats_and_the_database_gone(
    gateway_factory: GatewayFactory, tmp_path: Path, how: signal.Signals, index_url: str
) -> None:
    nats = NatsServer(tmp_path / "nats")
    nats.start()
    echo = {"handler": "python:examples.functions:echo"}
    gw = gateway_factory({"nats": {"url": nats.url}, "index": {"url": index_url}, "functions": {"echo": echo}})
    deadline = time.monotonic() + 20
    while not (feeders := feeders_of(gw)) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert len(feeders) == 1, "the gateway runs one feeder process"
    nats.kill()  # the feeder's NATS client now reconnects for ever
    if index_url.startswith("postgresql://"):  # and its database connections are cut
        import asyncpg

        admin = await asyncpg.connect(index_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
    await asyncio.sleep(1)
    gw.stop(how)
    assert await gone_within(feeders[0], 15), f"feeder {feeders[0]} outlived its gateway ({how.name})"
