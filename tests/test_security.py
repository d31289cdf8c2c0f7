"""Tokens with scopes, input limits, and secrets kept out of logs and API answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import Api
from tests.services import GatewayProcess, NatsServer

TOKENS = {
    "admin": "admin-token-0123456789",
    "reader": "reader-token-0123456789",
    "invoker": "invoker-token-0123456789",
}
SECRET_IN_URL = "pa55w0rd-in-url"


@pytest.fixture(scope="module")
def gateway(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "nats": {"url": nats_server.url},
        "api": {
            "tokens": [
                {"name": "ops", "token": "${ADMIN_TOKEN}", "scopes": ["admin"]},
                {"name": "dash", "token": "${READER_TOKEN}", "scopes": ["read"]},
                {"name": "ci", "token": "${INVOKER_TOKEN}", "scopes": ["invoke"]},
            ]
        },
        "functions": {
            "echo": {"handler": "python:examples.functions:echo"},
            "remote": {"url": f"http://user:{SECRET_IN_URL}@127.0.0.1:9/fn?key={SECRET_IN_URL}"},
        },
    }
    env = {"ADMIN_TOKEN": TOKENS["admin"], "READER_TOKEN": TOKENS["reader"], "INVOKER_TOKEN": TOKENS["invoker"]}
    gw = GatewayProcess(tmp_path_factory.mktemp("secure-gw"), config, env=env)
    gw.start()
    yield gw
    gw.stop()


async def test_token_required_and_scopes_enforced(gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    anonymous = Api(http, gateway.url)
    status, body, _ = await anonymous.invoke("echo", {})
    assert status == 401 and body["error"]["code"] == "Unauthorized"
    assert (await anonymous.get("/v1/tasks"))[0] == 401
    assert (await anonymous.get("/healthz"))[0] == 200
    assert (await anonymous.get("/readyz"))[0] == 200
    wrong = Api(http, gateway.url, token="not-a-token-at-all")
    assert (await wrong.get("/v1/functions"))[0] == 401

    invoker = Api(http, gateway.url, token=TOKENS["invoker"])
    reader = Api(http, gateway.url, token=TOKENS["reader"])
    admin = Api(http, gateway.url, token=TOKENS["admin"])
    task_id = await invoker.submit("echo", {})
    status, body = await invoker.get(f"/v1/tasks/{task_id}")
    assert status == 403 and body["error"]["code"] == "Forbidden"
    await reader.wait_status(task_id, "Succeeded")
    status, _, _ = await reader.invoke("echo", {})
    assert status == 403
    assert (await reader.post(f"/v1/tasks/{task_id}/stop"))[0] == 403
    assert (await invoker.post(f"/v1/tasks/{task_id}/stop"))[0] == 403
    assert (await admin.post(f"/v1/tasks/{task_id}/stop"))[0] == 409  # allowed, but it already ended
    assert (await admin.post(f"/v1/tasks/{task_id}/rerun"))[0] == 202


async def test_input_limits(gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    admin = Api(http, gateway.url, token=TOKENS["admin"])
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    status, body, _ = await admin.invoke("echo", raw=deep)
    assert status == 400 and "deeper" in body["error"]["message"]
    nested: Any = 0
    for _ in range(65):
        nested = [nested]
    status, body, _ = await admin.invoke("echo", raw=json.dumps(nested).encode())
    assert status == 400
    status, _, _ = await admin.invoke("echo", raw=json.dumps(nested[0]).encode())
    assert status == 202
    for bad_id in ("a" * 129, "../etc", "id with space", ""):
        status, _, _ = await admin.invoke("echo", {}, headers={"X-Task-Id": bad_id})
        assert status == 400, bad_id
    status, _ = await admin.get("/v1/tasks/" + "x" * 200)
    assert status == 400
    async with http.post(
        f"{gateway.url}/v1/functions/echo/invocations",
        data=b"{}",
        headers={"Authorization": f"Bearer {TOKENS['admin']}", "X-Big": "v" * 20_000},
    ) as resp:
        assert resp.status in (400, 431)


async def test_secrets_stay_out_of_answers_and_logs(gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    admin = Api(http, gateway.url, token=TOKENS["admin"])
    task_id = await admin.submit("remote", {})
    record = await admin.wait_status(task_id, "Retrying")
    assert "unreachable" in record["error"]["message"] and SECRET_IN_URL not in json.dumps(record)
    status, body, _ = await admin.invoke("remote", {}, mode="sync")
    assert status == 502 and SECRET_IN_URL not in json.dumps(body)
    status, body = await admin.get("/v1/functions")
    assert status == 200
    text = json.dumps(body)
    assert SECRET_IN_URL not in text
    assert all(token not in text for token in TOKENS.values())
    log = gateway.log()
    assert SECRET_IN_URL not in log
    assert all(token not in log for token in TOKENS.values())
