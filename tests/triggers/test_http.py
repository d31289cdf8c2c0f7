"""http trigger: signed webhooks, bearer routes, sync results, body limits, NATS outages."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.conftest import Api, GatewayFactory, wait_until
from tests.services import NatsServer
from tests.triggers.conftest import assert_cloud_event, event_of, tasks_of, trigger_config, trigger_health, wait_tasks

SECRET = "webhook-secret"


def signature(body: bytes, timestamp: str | None = None, secret: str = SECRET) -> str:
    signed = body if timestamp is None else timestamp.encode() + b"." + body
    return "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], method: str = "POST"
) -> tuple[int, bytes]:
    async with http.request(method, url, data=body, headers={"Content-Type": "application/json", **headers}) as resp:
        return resp.status, await resp.read()


async def test_signed_webhook_becomes_a_task_and_bad_signatures_are_refused(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("hook")
    triggers = [
        {"name": f"{fn}-gh", "type": "http", "path": f"/hooks/{fn}", "auth": {"type": "hmac-sha256", "secret": SECRET}},
        {
            "name": f"{fn}-ts",
            "type": "http",
            "path": f"/hooks/{fn}/stamped",
            "auth": {
                "type": "hmac-sha256",
                "secret": SECRET,
                "header": "X-Signature",
                "timestamp_header": "X-Timestamp",
                "tolerance": "60s",
            },
        },
    ]
    gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, triggers, max_chain_depth=4))
    api = Api(http, gw.url)
    url = f"{gw.url}/hooks/{fn}"
    body = json.dumps({"ref": "refs/heads/main", "commits": 2}).encode()

    status, answer = await post(http, f"{url}?delivery=7", body, {"X-Hub-Signature-256": signature(body)})
    assert status == 202, answer
    accepted = json.loads(answer)
    assert accepted["status"] == "Enqueued"
    task = await api.wait_status(accepted["task_id"], "Succeeded")
    assert task["source"] == {"type": "http", "name": f"{fn}-gh"}
    event = event_of(task)
    assert_cloud_event(event, "http", f"{fn}-gh", "request")
    assert event["subject"] == f"/hooks/{fn}" and event["id"] == accepted["task_id"]
    assert event["data"] == {"ref": "refs/heads/main", "commits": 2}
    assert event["http"]["method"] == "POST" and event["http"]["query"] == {"delivery": "7"}

    refused = [
        {"X-Hub-Signature-256": signature(body, secret="another-secret")},
        {"X-Hub-Signature-256": signature(body + b" ")},
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
        {},
    ]
    for headers in refused:
        status, answer = await post(http, url, body, headers)
        assert status == 401, (headers, answer)
        assert json.loads(answer)["error"]["code"] == "Unauthorized"

    stamped = f"{url}/stamped"
    fresh = str(int(time.time()))
    stale = str(int(time.time()) - 3600)
    status, answer = await post(http, stamped, body, {"X-Timestamp": fresh, "X-Signature": signature(body, fresh)})
    assert status == 202, answer
    # A captured request replayed an hour later, and one whose timestamp was altered.
    status, _ = await post(http, stamped, body, {"X-Timestamp": stale, "X-Signature": signature(body, stale)})
    assert status == 401
    status, _ = await post(
        http, stamped, body, {"X-Timestamp": str(int(fresh) + 1), "X-Signature": signature(body, fresh)}
    )
    assert status == 401

    # Lineage from the caller's headers: one hop past max_chain_depth is not run.
    # (Another body: the same one, signed the same, would be a replay of the first request.)
    body = json.dumps({"ref": "refs/heads/loop"}).encode()
    looped = {"X-Hub-Signature-256": signature(body), "Fngate-Chain-Id": "loop-1", "Fngate-Chain-Depth": "4"}
    status, answer = await post(http, url, body, looped)
    assert status == 202
    record = await api.wait_status(json.loads(answer)["task_id"], "Failed")
    assert record["chain"] == {"id": "loop-1", "depth": 5} and record["condition"] == "RecursiveLoopDetected"

    await wait_tasks(api, fn, 2)
    assert len(await tasks_of(api, fn)) == 3  # the refused requests made none
    health = await trigger_health(api, f"{fn}-gh")
    assert health["state"] == "running" and health["type"] == "http"
    assert (health["events_received"], health["invocations"], health["errors"]) == (6, 2, 4)


async def test_sync_bearer_route_returns_the_result_and_limits_the_body(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("sync")
    token = "trigger-token-1234"
    trigger = {
        "name": fn,
        "type": "http",
        "path": f"/in/{fn}",
        "methods": ["PUT", "POST"],
        "invocation": "sync",
        "max_body": "1KiB",
        "auth": {"type": "bearer", "token": token},
    }
    # The API has its own tokens; the trigger's route is guarded by its own token instead.
    api_tokens = {"tokens": [{"name": "ops", "token": "api-token-5678", "scopes": ["read", "invoke", "admin"]}]}
    gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, [trigger], api=api_tokens))
    url = f"{gw.url}/in/{fn}"

    status, answer = await post(http, url, b'{"n": 1}', {"Authorization": f"Bearer {token}"}, method="PUT")
    assert status == 200, answer
    result = json.loads(answer)
    event = result["echo"]
    assert_cloud_event(event, "http", fn, "request")
    assert event["data"] == {"n": 1} and event["http"]["method"] == "PUT"
    assert "Authorization" not in event["http"]["headers"]

    status, answer = await post(http, url, b"{}", {"Authorization": "Bearer api-token-5678"})
    assert status == 401 and json.loads(answer)["error"]["code"] == "Unauthorized"

    big = json.dumps({"blob": "x" * 2000}).encode()
    status, answer = await post(http, url, big, {"Authorization": f"Bearer {token}"})
    assert status == 413
    error = json.loads(answer)["error"]
    assert error["code"] == "PayloadTooLarge" and "1KiB" in error["message"]

    status, answer = await post(http, url, b"not json at all", {"Authorization": f"Bearer {token}"})
    assert status == 200
    assert json.loads(answer)["echo"]["data_base64"] == "bm90IGpzb24gYXQgYWxs"

    api = Api(http, gw.url, token="api-token-5678")
    health = await trigger_health(api, fn)
    assert (health["events_received"], health["invocations"], health["errors"]) == (4, 2, 2)


async def test_nats_down_answers_503_and_the_route_resumes_by_itself(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, unique: Callable[[str], str], tmp_path: Path
) -> None:
    nats = NatsServer(tmp_path / "own-nats")
    nats.start()
    try:
        fn = unique("outage")
        trigger = {"name": fn, "type": "http", "path": f"/in/{fn}"}
        gw = gateway_factory(trigger_config(nats.url, tmp_path / "data", fn, [trigger]))
        api = Api(http, gw.url)
        url = f"{gw.url}/in/{fn}"
        nats.stop()
        status, answer = await post(http, url, b'{"during": "outage"}', {})
        assert status == 503, answer
        assert json.loads(answer)["error"]["code"] == "ServiceUnavailable"
        nats.start()

        async def accepted() -> str | None:
            status, answer = await post(http, url, b'{"after": "outage"}', {})
            return str(json.loads(answer)["task_id"]) if status == 202 else None

        task_id = await wait_until(accepted, timeout=30, interval=0.2)
        assert event_of(await api.wait_status(task_id, "Succeeded"))["data"] == {"after": "outage"}
        # (Not listed through /v1/tasks here: the task index takes a while to follow a
        # restarted nats-server.) The refused request counted as an error, not an invocation.
        health = await trigger_health(api, fn)
        assert health["invocations"] == 1 and health["errors"] == health["events_received"] - 1 >= 1
    finally:
        nats.stop()
