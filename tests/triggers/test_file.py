"""file trigger: settled files only, patterns, moves and deletes, symlinks leading outside ignored."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Api, GatewayFactory
from tests.services import NatsServer
from tests.triggers.conftest import assert_cloud_event, event_of, tasks_of, trigger_config, trigger_health, wait_tasks


def file_events(tasks: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(event_of(t)["data"]["event"], event_of(t)["data"]["path"]) for t in tasks}


async def test_files_fire_once_settled_and_outsiders_are_ignored(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("inbox")
    root = tmp_path / "inbox"
    outside = tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    trigger = {
        "name": fn,
        "type": "file",
        "path": str(root),
        "events": ["created", "moved", "deleted"],
        "patterns": ["*.csv"],
        "ignore_patterns": ["skip-*"],
        "settle": "500ms",
    }
    gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, [trigger]))
    api = Api(http, gw.url)

    # A file written slowly, in pieces further apart than nothing but shorter than `settle`:
    # no event while it grows.
    chunk = b"id,value\n" + b"1,2\n" * 250
    writer = os.open(root / "big.csv", os.O_WRONLY | os.O_CREAT)
    try:
        for _ in range(8):
            os.write(writer, chunk)
            await asyncio.sleep(0.15)  # the writer's pace, not a wait for the gateway
            assert await tasks_of(api, fn) == []
    finally:
        os.close(writer)
    [task] = await wait_tasks(api, fn, 1)
    assert task["source"] == {"type": "file", "name": fn}
    event = event_of(task)
    assert_cloud_event(event, "file", fn, "created")
    assert event["subject"] == "big.csv"
    assert event["data"]["size"] == 8 * len(chunk) == (root / "big.csv").stat().st_size
    assert event["data"]["absolute_path"] == str(root / "big.csv") and event["data"]["mtime"].endswith("Z")

    # Not matching, ignored by pattern, and a symlink leading outside the root: no tasks.
    (root / "notes.txt").write_text("not a csv")
    (root / "skip-this.csv").write_text("1,2\n")
    (outside / "secret.csv").write_text("password,hunter2\n")
    os.symlink(outside / "secret.csv", root / "leak.csv")
    # Then a file in a subdirectory, renamed, and the first file deleted.
    (root / "sub" / "b.csv").write_text("3,4\n")
    await wait_tasks(api, fn, 2)
    (root / "sub" / "b.csv").rename(root / "sub" / "renamed.csv")
    (root / "big.csv").unlink()
    tasks = await wait_tasks(api, fn, 4)
    assert file_events(tasks) == {
        ("created", "big.csv"),
        ("created", "sub/b.csv"),
        ("moved", "sub/renamed.csv"),
        ("deleted", "big.csv"),
    }
    moved = next(event_of(t)["data"] for t in tasks if event_of(t)["data"]["event"] == "moved")
    assert moved["moved_from"] == "sub/b.csv" and moved["size"] == 4
    assert len(await tasks_of(api, fn)) == 4
    health = await trigger_health(api, fn)
    assert (health["events_received"], health["invocations"], health["errors"]) == (4, 4, 0)
