"""Tokens with scopes, input limits, and secrets kept out of logs and API answers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import Api, module_gateway
from tests.services import InProcessGateway, NatsServer

SCOPES = {"admin": "admin", "reader": "read", "invoker": "invoke"}
TOKENS = {
    "admin": "admin-token-0123456789",
    "reader": "reader-token-0123456789",
    "invoker": "invoker-token-0123456789",
}
SECRET_IN_URL = "pa55w0rd-in-url"
# The part of a password after an @ in it: a redaction that stops at the first @ shows it.
SECRET_AFTER_AT = "after-the-at-sign"
# A password a function's own error message quotes (tests.functions:leaky).
SECRET_IN_ERROR = "db-pa55-in-an-error"
LEAKED_URL = f"postgresql://app:{SECRET_IN_ERROR}@db:5432/app"


@pytest.fixture(scope="module")
async def gateway(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcessGateway]:
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
            "at_sign": {"url": f"http://user:pa@{SECRET_AFTER_AT}@127.0.0.1:9/fn"},
            "leaky": {"handler": "python:tests.functions:leaky", "async": {"max_retries": 0}},
        },
        "triggers": [
            {"name": "leak", "type": "http", "path": "/hooks/leak", "function": "leaky", "invocation": "sync"}
        ],
    }
    env = {"ADMIN_TOKEN": TOKENS["admin"], "READER_TOKEN": TOKENS["reader"], "INVOKER_TOKEN": TOKENS["invoker"]}
    async with module_gateway(tmp_path_factory.mktemp("secure-gw"), config, env) as gw:
        yield gw


async def test_token_required_and_scopes_enforced(gateway: InProcessGateway, http: aiohttp.ClientSession) -> None:
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


async def test_input_limits(gateway: InProcessGateway, http: aiohttp.ClientSession) -> None:
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


async def test_secrets_stay_out_of_answers_and_logs(gateway: InProcessGateway, http: aiohttp.ClientSession) -> None:
    admin = Api(http, gateway.url, token=TOKENS["admin"])
    task_id = await admin.submit("remote", {})
    record = await admin.wait_status(task_id, "Retrying")
    assert "unreachable" in record["error"]["message"] and SECRET_IN_URL not in json.dumps(record)
    status, body, _ = await admin.invoke("remote", {}, mode="sync")
    assert status == 502 and SECRET_IN_URL not in json.dumps(body)
    status, body = await admin.get("/v1/functions")
    assert status == 200
    text = json.dumps(body)
    assert SECRET_IN_URL not in text and SECRET_AFTER_AT not in text
    assert {f["name"]: f.get("url") for f in body["functions"]}["at_sign"] == "http://127.0.0.1:9/fn"
    assert all(token not in text for token in TOKENS.values())
    log = gateway.log()
    assert SECRET_IN_URL not in log
    assert all(token not in log for token in TOKENS.values())


async def test_credentials_a_function_quotes_are_redacted_in_answers_and_trigger_health(
    gateway: InProcessGateway, http: aiohttp.ClientSession
) -> None:
    """Not the gateway's own URLs (redacted where they are shown) but free text: a function's
    error quoting one, in the error answer, the task record, the trigger's last_error shown by
    GET /v1/triggers, and the log."""
    reader = Api(http, gateway.url, token=TOKENS["reader"])
    async with http.post(f"{gateway.url}/hooks/leak", json={"url": LEAKED_URL}) as resp:
        assert resp.status == 502
        answer = await resp.text()
    assert "postgresql://***@db:5432/app" in answer and SECRET_IN_ERROR not in answer, answer
    status, body = await reader.get("/v1/triggers")
    assert status == 200
    (leak,) = [t for t in body["triggers"] if t["name"] == "leak"]
    assert "postgresql://***@db:5432/app" in leak["last_error"], leak
    assert SECRET_IN_ERROR not in json.dumps(body)
    task_id = await Api(http, gateway.url, token=TOKENS["invoker"]).submit("leaky", {"url": LEAKED_URL})
    record = await reader.wait_status(task_id, "Failed")
    assert "postgresql://***@db:5432/app" in record["error"]["message"], record["error"]
    assert SECRET_IN_ERROR not in json.dumps(record)
    assert SECRET_IN_ERROR not in gateway.log()


async def test_query_string_tokens_only_on_the_streaming_routes(
    gateway: InProcessGateway, http: aiohttp.ClientSession
) -> None:
    admin = Api(http, gateway.url, token=TOKENS["admin"])
    task_id = await admin.submit("echo", {})
    await admin.wait_status(task_id, "Succeeded")
    anonymous = Api(http, gateway.url)
    for path in ("/v1/tasks", f"/v1/tasks/{task_id}", "/v1/functions", "/metrics"):
        status, body = await anonymous.get(f"{path}?token={TOKENS['admin']}")
        assert status == 401 and "query string" in body["error"]["message"], (path, body)
    assert (await anonymous.post(f"/v1/tasks/{task_id}/rerun?token={TOKENS['admin']}"))[0] == 401
    assert (await anonymous.post(f"/v1/tasks/{task_id}/stop?token={TOKENS['admin']}"))[0] == 401
    async with http.post(f"{gateway.url}/v1/functions/echo/invocations?token={TOKENS['invoker']}", data=b"{}") as resp:
        assert resp.status == 401
    # The log stream, which a browser's EventSource opens without headers, takes it.
    status, body = await anonymous.get(f"/v1/tasks/{task_id}/logs?token={TOKENS['reader']}")
    assert status == 200 and body["task_id"] == task_id
    assert (await anonymous.get(f"/v1/tasks/{task_id}/logs?token=wrong-token-000000"))[0] == 401
    assert (await anonymous.get(f"/v1/tasks/{task_id}/logs?token={TOKENS['invoker']}"))[0] == 403
    # So does the status stream: the task has ended, so it sends the last record and ends.
    async with http.get(f"{gateway.url}/v1/tasks/{task_id}/events?token={TOKENS['reader']}") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        assert b'"status":"Succeeded"' in await resp.read()
    assert (await anonymous.get(f"/v1/tasks/{task_id}/events?token=wrong-token-000000"))[0] == 401
    assert (await anonymous.get(f"/v1/tasks/{task_id}/events?token={TOKENS['invoker']}"))[0] == 403


def test_every_route_declares_its_scope() -> None:
    from gateway.app import create_app
    from gateway.config.model import parse_config
    from gateway.web.scopes import access_for

    app = create_app(parse_config({"nats": {"url": "nats://127.0.0.1:1"}, "functions": {}}))
    undeclared = [
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and access_for(route.method, route.resource.canonical) is None
    ]
    assert undeclared == [], "declare these routes' scopes in gateway/scopes.py"


async def test_an_undeclared_route_needs_admin() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from gateway.config.model import parse_config
    from gateway.web.api import auth_middleware, errors_middleware

    config = parse_config(
        {"api": {"tokens": [{"name": n, "token": TOKENS[n], "scopes": [s]} for n, s in SCOPES.items()]}}
    )

    async def secret(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[errors_middleware, auth_middleware(config)])
    app.router.add_get("/v1/something-new", secret)
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        for name, expected in (("reader", 403), ("invoker", 403), ("admin", 200)):
            headers = {"Authorization": f"Bearer {TOKENS[name]}"}
            async with http.get(server.make_url("/v1/something-new"), headers=headers) as resp:
                assert resp.status == expected, name


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_log_line_shows_a_urls_credentials(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from gateway.observe.logs import setup_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging("info", fmt)
        log = logging.getLogger("tests.security")
        log.warning("cannot reach NATS at %s", "nats://fngate:pw@with-at-sign@127.0.0.1:4222")
        try:
            raise ConnectionError("mqtt://device:broker-secret@broker:1883 refused")
        except ConnectionError:
            log.exception("trigger failed")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    err = capsys.readouterr().err
    assert "nats://***@127.0.0.1:4222" in err and "mqtt://***@broker:1883" in err, err
    assert "with-at-sign" not in err and "broker-secret" not in err and "fngate:pw" not in err
