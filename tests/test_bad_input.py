"""Bad input never gives a 500 and never makes a poison task (issue 11 items 10, 13, 17)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import nats
import pytest
from aiohttp import web

from tests.conftest import Api, module_gateway_process, wait_until
from tests.services import Endpoint, GatewayProcess, NatsServer, free_port

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture(scope="module")
def endpoint_port() -> int:
    return free_port()


# Routes whose signature header the test below garbles (one per scheme that reads it).
SIGNED_ROUTES: dict[str, dict[str, str]] = {
    "hmac": {"type": "hmac-sha256", "secret": "s3cret", "header": "X-Signature", "timestamp_header": "X-Timestamp"},
    "github": {"type": "github", "secret": "s3cret"},
    "standard": {"type": "standard-webhooks", "secret": "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQ="},
}
GARBLED = {
    "hmac": b"X-Signature: sha256=\xff\xfe\r\nX-Timestamp: TIME\r\n",
    "github": b"X-Hub-Signature-256: sha256=\xff\xfe\r\n",
    "standard": b"webhook-id: m\xff1\r\nwebhook-timestamp: TIME\r\nwebhook-signature: v1,\xff\xfe\r\n",
}


@pytest.fixture(scope="module")
def gateway(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory, endpoint_port: int
) -> Iterator[GatewayProcess]:
    config = {
        "nats": {"url": nats_server.url},
        "api": {"body_read_timeout": "1s"},
        "functions": {
            "echo": {"handler": "python:examples.functions:echo"},
            "remote": {"url": f"http://127.0.0.1:{endpoint_port}/fn", "async": {"max_retries": 0}},
            "reset": {"url": f"http://127.0.0.1:{endpoint_port}/reset", "async": {"max_retries": 0}},
        },
        "triggers": [
            {"name": "hook", "type": "http", "path": "/hooks/deep", "function": "echo"},
            *(
                {"name": f"signed-{kind}", "type": "http", "path": f"/hooks/{kind}", "function": "echo", "auth": auth}
                for kind, auth in SIGNED_ROUTES.items()
            ),
        ],
    }
    with module_gateway_process(tmp_path_factory.mktemp("bad-input-gw"), config) as gw:
        yield gw


@pytest.fixture
async def api(gateway: GatewayProcess, http: aiohttp.ClientSession) -> Api:
    return Api(http, gateway.url)


@pytest.fixture(scope="module")
async def endpoint(endpoint_port: int) -> AsyncIterator[Counter[str]]:
    """An HTTP function whose first call for each task dies mid-request, before any response
    (the endpoint killed and restarted): at /fn the connection is closed (FIN), at /reset it
    is reset (RST, as from a process killed with unread data or behind a proxy that gave
    up); later calls answer."""
    calls: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        task_id = request.headers["X-Task-Id"]
        calls[task_id] += 1
        await request.read()
        if calls[task_id] == 1 and request.transport is not None:
            if request.path == "/reset":
                # SO_LINGER on, 0 s: close() then discards the socket with a RST, not a FIN.
                sock = request.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.close()
        return web.json_response({"ok": True})

    double = Endpoint({"/fn": handle, "/reset": handle}, endpoint_port)
    await double.up()
    yield calls
    await double.down()


@pytest.mark.parametrize("function", ["remote", "reset"])
async def test_endpoint_closing_mid_request_is_transient(api: Api, endpoint: Counter[str], function: str) -> None:
    task_id = await api.submit(function, {"n": 1})
    record = await api.wait_status(task_id, "Succeeded", "Failed")
    assert record["status"] == "Succeeded", record
    assert record["attempts"] == 1  # the cut-off call was not charged to max_retries
    assert [e["type"] for e in record["errors"]] == ["TransientError"], record["errors"]
    said = {"remote": "closed the connection before answering", "reset": "reset the connection before answering"}
    assert said[function] in record["errors"][0]["message"], record["errors"]
    assert endpoint[task_id] == 2


@pytest.mark.parametrize("chain", ["a|b", "x" * 65, "spa ce"])
async def test_malformed_chain_id_is_400(api: Api, chain: str) -> None:
    status, body, _ = await api.invoke("echo", {}, headers={"Fngate-Chain-Id": chain})
    assert status == 400, body
    assert "Fngate-Chain-Id" in body["error"]["message"]


@pytest.mark.parametrize("depth", ["x", "-1", "1|2", "99999999"])
async def test_malformed_chain_depth_is_400(api: Api, depth: str) -> None:
    status, body, _ = await api.invoke("echo", {}, headers={"Fngate-Chain-Id": "c-1", "Fngate-Chain-Depth": depth})
    assert status == 400, body
    assert "Fngate-Chain-Depth" in body["error"]["message"]


async def test_a_good_chain_is_carried_on(api: Api) -> None:
    task_id = await api.submit("echo", {}, Fngate_Chain_Id="c-abc.1:x", Fngate_Chain_Depth="2")
    record = await api.wait_status(task_id, "Succeeded")
    assert record["chain"] == {"id": "c-abc.1:x", "depth": 3}


async def test_a_malformed_chain_id_on_an_http_trigger_starts_a_new_chain(
    api: Api, http: aiohttp.ClientSession
) -> None:
    """A trigger cannot refuse the message for it: the chain id is dropped, the depth kept."""
    headers = {"Fngate-Chain-Id": "a|b", "Fngate-Chain-Depth": "3"}
    async with http.post(f"{api.url}/hooks/deep", json={"n": 1}, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        task_id = (await resp.json())["task_id"]
    record = await api.wait_status(task_id, "Succeeded")
    assert record["chain"]["id"] != "a|b" and record["chain"]["depth"] == 4


async def test_a_poison_message_breaks_neither_get_nor_list(
    api: Api, nats_server: NatsServer, unique: Callable[[str], str]
) -> None:
    """A message on the task stream whose invocation header does not parse (as a chain id
    with `|` once made): its task ends Failed, and reads of it and of the list answer 200."""
    task_id = unique("poison")
    meta = f"1|{task_id}|echo|1.0|1.0|0.0|0|0|api||c-a|b|1"  # 13 fields
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().publish(f"fngate.tasks.echo.{task_id}", b"{}", headers={"Fngate-Invocation": meta})
    finally:
        await nc.close()
    record = await api.wait_status(task_id, "Failed")
    assert record["error"]["type"] == "InvalidInvocation"
    status, body = await api.get("/v1/tasks?limit=1000")
    assert status == 200, body


async def test_deep_json_on_sync_with_another_content_type(api: Api) -> None:
    status, body, _ = await api.invoke("echo", raw=DEEP, mode="sync", headers={"Content-Type": "text/plain"})
    assert status == 200, body


async def test_deep_json_on_an_http_trigger_route(api: Api, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{api.url}/hooks/deep", data=DEEP, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 202, await resp.text()


async def test_405_carries_allow(api: Api, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{api.url}/v1/functions/echo/invocations") as resp:
        assert resp.status == 405
        assert "POST" in resp.headers["Allow"]
        assert (await resp.json())["error"]["code"] == "MethodNotAllowed"


@pytest.mark.parametrize("delay", ["1_000", "١٢", "inf", "nan", "1e3", " ", "+5"])
async def test_x_delay_takes_plain_ascii_seconds_only(api: Api, delay: str) -> None:
    status, body, _ = await api.invoke("echo", {}, headers={"X-Delay": delay})
    assert status == 400, (delay, body)
    assert "X-Delay" in body["error"]["message"]


async def test_x_delay_with_decimals_is_accepted(api: Api) -> None:
    status, body, _ = await api.invoke("echo", {}, headers={"X-Delay": "0.5"})
    assert status == 202, body


async def _raw_request(gateway: GatewayProcess, head: bytes, body: bytes) -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(head + body)
    await writer.drain()
    return reader, writer


HEAD = (
    b"POST /v1/functions/echo/invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"X-Invocation-Type: async\r\nContent-Length: 1000\r\n\r\n"
)


# Every route that reads a body: the invoke route, an http trigger's webhook route, a bulk route.
BODY_ROUTES = ["/v1/functions/echo/invocations", "/hooks/deep", "/v1/tasks/rerun"]


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_slow_body_gets_408(gateway: GatewayProcess, path: str) -> None:
    """A body that has not arrived within api.body_read_timeout (1s here) is answered 408 and
    the connection closed, whichever route it was sent to."""
    head = HEAD.replace(b"/v1/functions/echo/invocations", path.encode())
    reader, writer = await _raw_request(gateway, head, b'{"a": ')
    try:
        head_answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head_answer.split()[1] == b"408", head_answer
        length = int(head_answer.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        error = json.loads(await reader.readexactly(length))["error"]
        assert error["code"] == "RequestTimeout" and "not received within 1s" in error["message"], error
    finally:
        writer.close()


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_abandoned_upload_logs_no_traceback(gateway: GatewayProcess, path: str) -> None:
    before = gateway.log().count("went away before its request body arrived")
    head = HEAD.replace(b"/v1/functions/echo/invocations", path.encode())
    _, writer = await _raw_request(gateway, head, b'{"a": ')
    writer.close()

    async def noted() -> bool:
        return gateway.log().count("went away before its request body arrived") > before

    await wait_until(noted)
    assert "Traceback" not in gateway.log()
    errors = [line for line in gateway.log().splitlines() if " ERROR " in line and "unreadable message" not in line]
    assert not errors


@pytest.mark.parametrize("kind", list(SIGNED_ROUTES))
async def test_a_signature_header_that_is_not_utf8_is_401_not_500(gateway: GatewayProcess, kind: str) -> None:
    headers = GARBLED[kind].replace(b"TIME", str(int(time.time())).encode())
    head = (
        f"POST /hooks/{kind} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
        + headers
        + b"Content-Length: 2\r\n\r\n"
    )
    assert await _raw_status(gateway, head, b"{}") == 401


async def test_a_bearer_token_that_is_not_utf8_is_401_not_500(tokened: GatewayProcess) -> None:
    head = b"GET /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"
    assert await _raw_status(tokened, head, b"") == 401


async def _raw_status(gateway: GatewayProcess, head: bytes, body: bytes) -> int:
    """The status code of a request sent as raw bytes (headers no HTTP client would send)."""
    reader, writer = await _raw_request(gateway, head, body)
    try:
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return int(answer.split()[1])
    finally:
        writer.close()


@pytest.fixture(scope="module")
def tokened(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "nats": {"url": nats_server.url},
        "api": {"tokens": [{"name": "ops", "token": "t0ken-t0ken-t0ken", "scopes": ["admin"]}]},
        "functions": {"echo": {"handler": "python:examples.functions:echo"}},
    }
    with module_gateway_process(tmp_path_factory.mktemp("bad-input-tokened"), config) as gw:
        yield gw


def test_deep_json_constant() -> None:
    with pytest.raises(RecursionError):
        json.loads(DEEP)
