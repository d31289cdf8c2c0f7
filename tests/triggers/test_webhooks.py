"""http trigger against real senders' schemes: redeliveries run once, replays are refused,
the CloudEvents handshake is answered, and `filter:` drops what does not match."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from standardwebhooks.webhooks import Webhook

from tests.conftest import Api, GatewayFactory
from tests.services import NatsServer
from tests.triggers.conftest import event_of, tasks_of, trigger_config, trigger_health, wait_tasks
from tests.triggers.test_http import post
from tests.triggers.test_webhook_auth import WHSEC, hexmac, slack_headers, stripe_header


def route(name: str, path: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "http", "path": path, **extra}


async def test_sender_redeliveries_are_one_task_and_replays_are_refused(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("senders")
    triggers = [
        route(f"{fn}-gh", f"/hooks/{fn}/gh", auth={"type": "github", "secret": "gh"}),
        route(f"{fn}-sw", f"/hooks/{fn}/sw", auth={"type": "standard-webhooks", "secret": WHSEC}),
        route(f"{fn}-st", f"/hooks/{fn}/st", auth={"type": "stripe", "secret": "whsec_st", "tolerance": "2m"}),
        route(f"{fn}-sl", f"/hooks/{fn}/sl", auth={"type": "slack", "secret": "sl"}),
        route(
            f"{fn}-ts",
            f"/hooks/{fn}/ts",
            auth={"type": "hmac-sha256", "secret": "g", "header": "X-Sig", "timestamp_header": "X-Ts"},
        ),
    ]
    gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, triggers))
    api = Api(http, gw.url)
    hooks = f"{gw.url}/hooks/{fn}"

    async def accepted(path: str, body: bytes, headers: dict[str, str]) -> str:
        status, answer = await post(http, f"{hooks}/{path}", body, headers)
        assert status == 202, (path, answer)
        task_id: str = json.loads(answer)["task_id"]
        return task_id

    body = b'{"action": "opened"}'
    gh = {"X-Hub-Signature-256": "sha256=" + hexmac("gh", body), "X-GitHub-Delivery": "d-1"}
    first = await accepted("gh", body, gh)
    assert await accepted("gh", body, gh) == first  # GitHub's "Redeliver" button
    assert await accepted("gh", body, {**gh, "X-GitHub-Delivery": "d-2"}) != first

    sender = Webhook(WHSEC)
    sent = [datetime.fromtimestamp(time.time() - ago, UTC) for ago in (20, 0)]
    sw_ids = set()
    for at in sent:  # the sender's retry: the same webhook-id, signed again with a new timestamp
        signature = sender.sign("msg_1", at, body.decode())
        headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}
        sw_ids.add(await accepted("sw", body, headers))
    assert len(sw_ids) == 1

    event = b'{"id": "evt_9", "type": "charge.succeeded"}'
    st_ids = {
        await accepted("st", event, {"Stripe-Signature": stripe_header("whsec_st", int(time.time()) - ago, event)})
        for ago in (60, 0)
    }
    assert len(st_ids) == 1

    slack = b'{"type": "event_callback", "event_id": "Ev1"}'
    retry = {**slack_headers("sl", str(int(time.time())), slack), "X-Slack-Retry-Num": "1"}
    assert await accepted("sl", slack, slack_headers("sl", str(int(time.time()) - 5), slack)) == await accepted(
        "sl", slack, retry
    )

    stamp = f"{time.time():.3f}"
    generic = {"X-Ts": stamp, "X-Sig": "sha256=" + hexmac("g", stamp.encode() + b"." + body)}
    await accepted("ts", body, generic)
    status, answer = await post(http, f"{hooks}/ts", body, generic)  # a captured request, replayed
    assert status == 401 and "replayed" in json.loads(answer)["error"]["message"]
    for stamp in ("nan", "inf", "-inf", "1e10"):  # each would slip past a float() window check
        unbounded = {"X-Ts": stamp, "X-Sig": "sha256=" + hexmac("g", stamp.encode() + b"." + body)}
        status, answer = await post(http, f"{hooks}/ts", body, unbounded)
        assert status == 401 and "X-Ts" in json.loads(answer)["error"]["message"], (stamp, answer)

    tasks = await wait_tasks(api, fn, 6)
    assert len(await tasks_of(api, fn)) == 6  # gh twice, sw, st, sl, ts: every repeat ran once
    assert {t["task_id"] for t in tasks} >= {first, *sw_ids, *st_ids}
    assert all(event_of(t)["id"] == t["task_id"] for t in tasks)


async def test_a_replayed_signature_is_refused_on_every_replica(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """The generic scheme names a request by its signature: a request replayed to the replica
    that took it or to another one is refused (the task id derived from the signature is
    held), with a timestamp and without one; the first request's task runs once."""
    fn = unique("replayed")
    plain = {"type": "hmac-sha256", "secret": "g", "header": "X-Sig"}
    triggers = [
        route(f"{fn}-plain", f"/hooks/{fn}/plain", auth=plain),
        route(f"{fn}-ts", f"/hooks/{fn}/ts", auth={**plain, "timestamp_header": "X-Ts"}),
    ]
    first, second = (gateway_factory(trigger_config(nats_server.url, tmp_path / f"d{n}", fn, triggers)) for n in (1, 2))
    body = b'{"action": "opened"}'
    stamp = f"{time.time():.3f}"
    signed = {
        "plain": {"X-Sig": "sha256=" + hexmac("g", body)},
        "ts": {"X-Ts": stamp, "X-Sig": "sha256=" + hexmac("g", stamp.encode() + b"." + body)},
    }
    for path, headers in signed.items():
        status, answer = await post(http, f"{first.url}/hooks/{fn}/{path}", body, headers)
        assert status == 202, (path, answer)
        task_id = json.loads(answer)["task_id"]
        # The other replica first: its own memory has never seen the signature.
        for replica in (second, first):
            status, answer = await post(http, f"{replica.url}/hooks/{fn}/{path}", body, headers)
            assert status == 401, (path, replica.url, answer)
            assert "replayed" in json.loads(answer)["error"]["message"]
        record = await Api(http, second.url).wait_status(task_id, "Succeeded")
        assert record["attempts"] == 1 and event_of(record)["data"] == {"action": "opened"}
    other = b'{"action": "closed"}'  # another body: another request
    status, answer = await post(
        http, f"{second.url}/hooks/{fn}/plain", other, {"X-Sig": "sha256=" + hexmac("g", other)}
    )
    assert status == 202, answer
    health = await trigger_health(Api(http, second.url), f"{fn}-plain")
    assert (health["invocations"], health["errors"]) == (1, 1)
    assert "replayed" in health["last_error"]


async def test_cloudevents_handshake_and_filter(
    nats_server: NatsServer,
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> None:
    fn = unique("ce")
    triggers = [
        route(
            fn,
            f"/hooks/{fn}",
            cloudevents=True,
            allowed_origins=["eventemitter.example.com"],
            filter={"data": {"type": [{"prefix": "com.example."}]}},
        ),
        route(f"{fn}-plain", f"/hooks/{fn}/plain"),
    ]
    gw = gateway_factory(trigger_config(nats_server.url, tmp_path / "data", fn, triggers))
    api = Api(http, gw.url)
    url = f"{gw.url}/hooks/{fn}"

    handshake = {"WebHook-Request-Origin": "eventemitter.example.com", "WebHook-Request-Rate": "120"}
    async with http.options(url, headers=handshake) as response:
        assert response.status == 200
        assert response.headers["WebHook-Allowed-Origin"] == "eventemitter.example.com"
        assert response.headers["WebHook-Allowed-Rate"] == "*"
        assert "POST" in response.headers["Allow"]
    async with http.options(url, headers={"WebHook-Request-Origin": "evil.example.org"}) as response:
        assert response.status == 403
    async with http.options(url) as response:
        assert response.status == 400
    async with http.options(f"{url}/plain", headers=handshake) as response:
        assert response.status == 405  # not asked for: no handshake

    status, answer = await post(http, url, b'{"type": "org.other.thing"}', {})
    assert status == 202 and json.loads(answer) == {"task_id": None, "status": "Dropped", "reason": "filter"}
    status, answer = await post(http, url, b"[" * 100_000 + b"]" * 100_000, {})  # too deep to read: no 500
    assert status == 202 and json.loads(answer)["status"] == "Dropped"
    status, answer = await post(http, url, b'{"type": "com.example.created"}', {})
    assert status == 202 and json.loads(answer)["status"] == "Enqueued"
    await wait_tasks(api, fn, 1)
    health = await trigger_health(api, fn)
    assert (health["events_received"], health["matched"], health["dropped"], health["invocations"]) == (3, 1, 2, 1)
