"""nats trigger: subject messages become tasks; headers carry lineage, so loops are caught."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import nats

from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import NatsServer
from tests.triggers.conftest import assert_cloud_event, event_of, trigger_config, trigger_health, wait_tasks

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_subject_messages_become_tasks_and_deep_chains_are_refused(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("bus")
    subject = f"events.{unique('orders')}"
    trigger = {"name": fn, "type": "nats", "url": nats_server.url, "subject": f"{subject}.*", "queue": "fngate"}
    gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, [trigger], max_chain_depth=3))
    api = Api(http, gw.url)

    async def subscribed() -> bool:
        return bool((await trigger_health(api, fn))["state"] == "running")

    await wait_until(subscribed, timeout=15)
    nc = await nats.connect(nats_server.url)
    try:
        # A request is answered once the task is durably enqueued.
        reply = await nc.request(f"{subject}.created", b'{"id": 7}', timeout=10, headers={"trace": "t-1"})
        answer = json.loads(reply.data)
        assert answer["status"] == "Enqueued"
        task = await api.wait_status(answer["task_id"], "Succeeded")
        assert task["source"] == {"type": "nats", "name": fn}
        event = event_of(task)
        assert_cloud_event(event, "nats", fn, "message")
        assert event["subject"] == f"{subject}.created" and event["data"] == {"id": 7}
        assert event["nats"]["headers"] == {"trace": "t-1"} and event["nats"]["queue"] == "fngate"

        # Trace header names in any case (a NATS header dict is case-sensitive).
        traced = {"TraceParent": TRACEPARENT, "TRACESTATE": "vendor=abc"}
        reply = await nc.request(f"{subject}.traced", b"{}", timeout=10, headers=traced)
        record = await api.wait_status(json.loads(reply.data)["task_id"], "Succeeded")
        assert record["trace"]["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]
        assert record["trace"]["tracestate"] == "vendor=abc"

        await nc.publish(f"{subject}.raw", b"\x01\x02 not json")
        # A message that went round a loop: depth 3 arriving makes depth 4, over max_chain_depth.
        looped = {"Fngate-Chain-Id": "loop-n", "Fngate-Chain-Depth": "3"}
        reply = await nc.request(f"{subject}.looped", b"{}", timeout=10, headers=looped)
        record = await api.wait_status(json.loads(reply.data)["task_id"], "Failed")
        assert record["condition"] == "RecursiveLoopDetected" and record["chain"] == {"id": "loop-n", "depth": 4}
    finally:
        await nc.close()

    raw = next(t for t in await wait_tasks(api, fn, 3) if event_of(t)["subject"] == f"{subject}.raw")
    assert base64.b64decode(event_of(raw)["data_base64"]) == b"\x01\x02 not json"
    health = await trigger_health(api, fn)
    assert (health["events_received"], health["invocations"], health["errors"]) == (4, 4, 0)
    assert health["connected"] is True
