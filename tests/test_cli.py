"""The client commands of the CLI against a real gateway."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import ROOT, NatsServer


def fngate(*args: str, url: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **({"FNGATE_URL": url} if url else {})},
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
        out = await asyncio.to_thread(
            fngate, "tasks", "list", "--json", "--function", "echo", "--limit", "10", url=gw.url
        )
        ids = [t["task_id"] for t in json.loads(out.stdout)["tasks"]]
        return ids if rerun_id in ids else None

    from tests.conftest import wait_until

    ids = await wait_until(listed)
    assert ids[0] == rerun_id and "cli-1" in ids
    result = await asyncio.to_thread(fngate, "tasks", "list", "--status", "Stopped", url=gw.url)
    assert delayed in result.stdout

    result = await asyncio.to_thread(fngate, "tasks", "get", "nope", url=gw.url)
    assert result.returncode == 1 and "TaskNotFound" in result.stderr


async def test_global_options_table_paging_and_clear_errors(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, tmp_path: Path, unique: Any
) -> None:
    token = "cli-token-0123456789"
    fn = unique("table")
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "api": {"tokens": [{"name": "ops", "token": token, "scopes": ["admin"]}]},
            "functions": {fn: {"handler": "python:examples.functions:echo"}},
        }
    )
    api = Api(http, gw.url, token=token)
    ids = [await api.submit(fn, {"n": n}, X_Task_Id=unique("cli")) for n in range(3)]
    for task_id in ids:
        await api.wait_status(task_id, "Succeeded")

    async def listed() -> bool:  # a list reads the task index, which may trail by its lag
        status, body = await api.get(f"/v1/tasks?function={fn}&status=Succeeded")
        return status == 200 and len(body["tasks"]) == len(ids)

    await wait_until(listed)

    # --url and --token before the subcommand, as well as after it.
    before = await asyncio.to_thread(fngate, "--url", gw.url, "--token", token, "tasks", "get", ids[0], url=None)
    assert before.returncode == 0, before.stderr
    after = await asyncio.to_thread(fngate, "tasks", "get", ids[0], "--url", gw.url, "--token", token, url=None)
    assert json.loads(before.stdout) == json.loads(after.stdout)

    # A table by default, one line per task, newest first; paged with --cursor.
    listing = await asyncio.to_thread(
        fngate, "--token", token, "tasks", "list", "--function", fn, "--limit", "2", url=gw.url
    )
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["TASK", "ID", "FUNCTION", "STATUS", "ATTEMPTS", "SUBMITTED", "FINISHED"]
    assert [line.split()[0] for line in lines[1:3]] == [ids[2], ids[1]]
    assert all(line.split()[1:4] == [fn, "Succeeded", "1"] for line in lines[1:3])
    assert lines[3].startswith("more: --cursor ")
    cursor = lines[3].split()[-1]
    page2 = await asyncio.to_thread(
        fngate, "--token", token, "tasks", "list", "--function", fn, "--limit", "2", "--cursor", cursor, url=gw.url
    )
    assert [line.split()[0] for line in page2.stdout.splitlines()[1:]] == [ids[0]]

    # --until before the first task: nothing; --json gives the API's answer.
    empty = await asyncio.to_thread(
        fngate,
        "--token",
        token,
        "tasks",
        "list",
        "--json",
        "--function",
        fn,
        "--until",
        "2000-01-01T00:00:00Z",
        url=gw.url,
    )
    assert json.loads(empty.stdout)["tasks"] == []

    missing = tmp_path / "no-such-payload.json"
    result = await asyncio.to_thread(fngate, "--token", token, "invoke", fn, "-d", f"@{missing}", url=gw.url)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"fngate: -d @{missing}: cannot read {missing} (No such file or directory)"


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


async def test_bulk_rerun_and_stop_commands_follow_the_operation(
    nats_server: NatsServer, gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Any
) -> None:
    fail, echo = unique("clifail"), unique("cliecho")
    gw = gateway_factory(
        {
            "nats": {"url": nats_server.url},
            "functions": {
                fail: {"handler": "python:examples.functions:fail", "async": {"max_retries": 0}},
                echo: {"handler": "python:examples.functions:echo"},
            },
        }
    )
    api = Api(http, gw.url)
    failed = await asyncio.gather(*(api.submit(fail, {"n": n}) for n in range(6)))
    for task_id in failed:
        await api.wait_status(task_id, "Failed")
    from tests.conftest import wait_until

    async def counted() -> Any:
        out = await asyncio.to_thread(
            fngate, "tasks", "rerun", "--function", fail, "--status", "Failed", "--dry-run", url=gw.url
        )
        return out if out.returncode == 0 and json.loads(out.stdout) == {"matched": 6} else None

    await wait_until(counted)
    result = await asyncio.to_thread(
        fngate, "tasks", "rerun", "--function", fail, "--status", "Failed", "--since", "0", url=gw.url
    )
    assert result.returncode == 0, result.stderr
    op = json.loads(result.stdout)
    assert (op["kind"], op["status"], op["matched"], op["done"]) == ("rerun", "Succeeded", 6, 6)
    assert f"rerun {op['operation_id']}: 6/6 done, 0 failed" in result.stderr

    delayed = await asyncio.gather(*(api.submit(echo, {}, X_Delay="600") for _ in range(3)))

    async def enqueued() -> bool:
        out = await asyncio.to_thread(
            fngate, "tasks", "stop", "--function", echo, "--status", "Enqueued", "--dry-run", url=gw.url
        )
        return bool(json.loads(out.stdout) == {"matched": 3})

    await wait_until(enqueued)
    result = await asyncio.to_thread(fngate, "tasks", "stop", "--function", echo, "--status", "Enqueued", url=gw.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["done"] == 3
    assert {(await api.task(t))["status"] for t in delayed} == {"Stopped"}

    result = await asyncio.to_thread(fngate, "tasks", "stop", url=gw.url)
    assert result.returncode == 2 and "--function" in result.stderr
    result = await asyncio.to_thread(fngate, "tasks", "rerun", "x", "--function", fail, url=gw.url)
    assert result.returncode == 1 and "not both" in result.stderr
