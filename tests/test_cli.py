"""The client commands of the CLI against a real gateway."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Api, GatewayFactory
from tests.services import ROOT, NatsServer


def fngate(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "FNGATE_URL": url},
    )


async def test_invoke_and_tasks_commands(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path, unique: str
) -> None:
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "functions": {
                "echo": {"handler": "python:examples.functions:echo"},
                "sleepy": {"handler": "python:examples.functions:sleepy", "timeout": "60s"},
            },
        }
    )
    result = await asyncio.to_thread(fngate, "invoke", "echo", "-d", '{"x": 1}', url=gw.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["echo"] == {"x": 1}

    payload = tmp_path / "payload.json"
    payload.write_text('{"from": "file"}')
    result = await asyncio.to_thread(
        fngate, "invoke", "echo", "--async", "--task-id", "cli-1", "-d", f"@{payload}", url=gw.url
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"task_id": "cli-1", "status": "Enqueued"}
    await Api(http, gw.url).wait_status("cli-1", "Succeeded")

    result = await asyncio.to_thread(fngate, "tasks", "get", "cli-1", url=gw.url)
    record = json.loads(result.stdout)
    assert record["status"] == "Succeeded" and record["result"]["echo"] == {"from": "file"}

    result = await asyncio.to_thread(fngate, "invoke", "echo", "--async", "--task-id", "cli-1", "-d", "{}", url=gw.url)
    assert result.returncode == 1 and "DuplicateTask" in result.stderr

    result = await asyncio.to_thread(fngate, "tasks", "rerun", "cli-1", url=gw.url)
    rerun_id = json.loads(result.stdout)["task_id"]
    await Api(http, gw.url).wait_status(rerun_id, "Succeeded")

    result = await asyncio.to_thread(
        fngate, "invoke", "sleepy", "--async", "--delay", "60", "-d", '{"seconds": 0}', url=gw.url
    )
    delayed = json.loads(result.stdout)["task_id"]
    result = await asyncio.to_thread(fngate, "tasks", "stop", delayed, url=gw.url)
    assert json.loads(result.stdout)["status"] == "Stopped"

    async def listed() -> list[str] | None:
        out = await asyncio.to_thread(fngate, "tasks", "list", "--function", "echo", "--limit", "10", url=gw.url)
        ids = [t["task_id"] for t in json.loads(out.stdout)["tasks"]]
        return ids if rerun_id in ids else None

    from tests.conftest import wait_until

    ids = await wait_until(listed)
    assert ids[0] == rerun_id and "cli-1" in ids
    result = await asyncio.to_thread(fngate, "tasks", "list", "--status", "Stopped", url=gw.url)
    assert delayed in result.stdout

    result = await asyncio.to_thread(fngate, "tasks", "get", "nope", url=gw.url)
    assert result.returncode == 1 and "TaskNotFound" in result.stderr


async def test_invoke_async_wait(nats_server: NatsServer, gateway_factory: GatewayFactory, unique: Any) -> None:
    fn, failing = unique("waitfn"), unique("waitfail")
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "functions": {
                fn: {"handler": "python:examples.functions:sleepy", "timeout": "60s"},
                failing: {"handler": "python:examples.functions:fail", "async": {"max_retries": 0}},
            },
        }
    )
    result = await asyncio.to_thread(fngate, "invoke", fn, "--async", "--wait", "-d", '{"seconds": 0.5}', url=gw.url)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["status"] == "Succeeded" and record["result"] == {"slept": 0.5}

    result = await asyncio.to_thread(fngate, "invoke", failing, "--async", "--wait", "-d", "{}", url=gw.url)
    assert result.returncode == 1 and json.loads(result.stdout)["status"] == "Failed"

    args = ("invoke", fn, "--async", "--wait", "--timeout", "0.5", "--delay", "3600", "-d", '{"seconds": 0}')
    result = await asyncio.to_thread(fngate, *args, url=gw.url)
    assert result.returncode == 3 and json.loads(result.stdout)["status"] == "Enqueued"
    assert "still Enqueued" in result.stderr
    await asyncio.to_thread(fngate, "tasks", "stop", json.loads(result.stdout)["task_id"], url=gw.url)

    result = await asyncio.to_thread(fngate, "invoke", fn, "--wait", "-d", "{}", url=gw.url)
    assert result.returncode == 2 and "--async" in result.stderr
