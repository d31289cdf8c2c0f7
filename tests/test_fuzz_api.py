"""Fuzz the HTTP API with schemathesis against the gateway's own /openapi.json.

Every operation the document describes gets generated requests, valid ones and (where the
document constrains headers or query parameters) invalid ones. Every response must be no
5xx (except the documented 502 of a function that fails on purpose), and must carry a
documented status code and content type and match the documented schema.

Each operation is its own pytest item running a bounded, derandomized Hypothesis test over
`APIOperation.as_strategy()`. (schemathesis's `from_fixture` runner reads the `_nodeid`
attribute that pytest 9.2 removed, and it skips the schema's own URL, /openapi.json.)
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.web.openapi import base_paths
from tests.conftest import module_gateway_process
from tests.services import GatewayProcess, NatsServer

TOKEN = "fuzz-admin-token-0123456789"
FUNCTIONS = ["echo", "fail"]
INVOKE = "/v1/functions/{fn}/invocations"
ASYNC_TRIGGER = "/hooks/fuzz-async"
SYNC_TRIGGER = "/hooks/fuzz-sync"
TRIGGERS: list[dict[str, Any]] = [
    {"name": "fuzz-async", "type": "http", "function": "echo", "path": ASYNC_TRIGGER},
    # Generated bodies go both ways through the filter (a positive number is kept, the rest
    # dropped), and OPTIONS is the CloudEvents handshake.
    {
        "name": "fuzz-filtered",
        "type": "http",
        "function": "echo",
        "path": "/hooks/fuzz-filtered",
        "filter": {"data": [{"numeric": [">", 0]}]},
        "cloudevents": True,
    },
    {
        "name": "fuzz-sync",
        "type": "http",
        "function": "fail",
        "path": SYNC_TRIGGER,
        "invocation": "sync",
        "methods": ["POST", "PUT"],
    },
]
# Task ids the pattern [A-Za-z0-9._-] lets through but NATS subjects do not take (empty
# dot-separated parts, a trailing newline): mixed into the generated ones, always.
TRICKY_TASK_IDS = ["a..b", ".a", "a.", ".", "abc\n"]
REQUEST_TIMEOUT = 10.0
MAX_EXAMPLES = 50
# The operations with the most inputs get more examples.
MORE_EXAMPLES = {("POST", "/v1/functions/{fn}/invocations"): 300, ("GET", "/v1/tasks"): 150}

# Every operation the gateway documents for this config: the fixed routes and the triggers'.
OPERATIONS = sorted(
    [(method.upper(), path) for path, item in base_paths().items() for method in item]
    + [
        (method, trigger["path"])
        for trigger in TRIGGERS
        for method in [*trigger.get("methods", ["POST"]), *(["OPTIONS"] if trigger.get("cloudevents") else [])]
    ]
)


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None) -> Any:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT) as resp:
        return json.load(resp)


@pytest.fixture(scope="module")
def fuzz_gateway(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "nats": {"url": nats_server.url},
        "api": {"tokens": [{"name": "fuzz", "token": "${FUZZ_TOKEN}", "scopes": ["admin"]}]},
        "functions": {
            "echo": {"handler": "python:examples.functions:echo"},
            "fail": {"handler": "python:examples.functions:fail", "async": {"max_retries": 0}},
        },
        "triggers": TRIGGERS,
    }
    # A process: schemathesis calls it synchronously, which would block an in-process one.
    with module_gateway_process(tmp_path_factory.mktemp("fuzz-gw"), config, {"FUZZ_TOKEN": TOKEN}) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def task_ids(fuzz_gateway: GatewayProcess) -> list[str]:
    """Real tasks for the {id} routes: one that succeeds, one that fails, one delayed (stoppable)."""
    ids = []
    for fn, delay in (("echo", "0"), ("fail", "0"), ("echo", "3600")):
        headers = {
            "Authorization": f"Bearer {TOKEN}",
            "X-Invocation-Type": "async",
            "X-Delay": delay,
            "Content-Type": "application/json",
        }
        accepted = request(f"{fuzz_gateway.url}{INVOKE.format(fn=fn)}", "POST", headers, b"{}")
        ids.append(accepted["task_id"])
    return ids


@pytest.fixture(scope="module")
def api_schema(fuzz_gateway: GatewayProcess) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            "seed": 20240601,
            "base-url": fuzz_gateway.url,
            "headers": {"Authorization": f"Bearer {TOKEN}"},
            "request-timeout": REQUEST_TIMEOUT,
        }
    )
    return schemathesis.openapi.from_url(f"{fuzz_gateway.url}/openapi.json", config=config, timeout=REQUEST_TIMEOUT)


def is_failing_on_purpose(response: Response, case: Case[Any]) -> bool:
    """The documented 502 FunctionError of the `fail` function (sync invocation or sync trigger)."""
    path = case.operation.path
    if response.status_code != 502:
        return False
    if not ((path == INVOKE and case.path_parameters.get("fn") == "fail") or path == SYNC_TRIGGER):
        return False
    try:
        return bool(response.json()["error"]["code"] == "FunctionError")
    except (ValueError, KeyError, TypeError):
        return False


def no_server_error(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """not_a_server_error, but for the 502 the `fail` function answers by design."""
    if is_failing_on_purpose(response, case):
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [no_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def has_negatable_inputs(operation: APIOperation[Any, Any, Any, Any]) -> bool:
    """Whether the document constrains a parameter (else no negative data exists for it)."""
    parameters = operation.definition.raw.get("parameters", [])
    return any(p["in"] in ("header", "query") or "pattern" in p.get("schema", {}) for p in parameters)


def case_strategy(operation: APIOperation[Any, Any, Any, Any], task_ids: list[str]) -> st.SearchStrategy[Case[Any]]:
    """Generated cases, some with real function names and task ids (so the happy paths run too)
    and some with tricky task ids."""
    variants: list[dict[str, Any]] = []
    if "{fn}" in operation.path:
        # weighted: most cases reach a function
        variants += [{"path_parameters": {"fn": fn}} for fn in FUNCTIONS for _ in range(2)]
    if "{id}" in operation.path:
        variants += [{"path_parameters": {"id": task_id}} for task_id in [*task_ids, *TRICKY_TASK_IDS]]
    if operation.path == INVOKE:
        variants += [
            {"path_parameters": {"fn": "echo"}, "headers": {"X-Invocation-Type": "async", "X-Task-Id": task_id}}
            for task_id in TRICKY_TASK_IDS
            if "\n" not in task_id  # not a valid header value: no client sends it
        ]
    strategies = [operation.as_strategy(GenerationMode.POSITIVE, **variant) for variant in [{}, *variants]]
    if has_negatable_inputs(operation):
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    return st.one_of(strategies)


def bound_live_waits(case: Case[Any], task_ids: list[str]) -> None:
    """Live status waits by design: a long-poll is kept under a second, and the event stream
    (which ends only after a terminal status) is read for tasks that have ended."""
    wait = (case.query or {}).get("wait")
    if isinstance(wait, (int, float, str)):
        with contextlib.suppress(ValueError):
            if float(wait) > 1:
                case.query["wait"] = "1"
    if case.operation.path.endswith("/events") and case.path_parameters.get("id") == task_ids[2]:
        case.path_parameters["id"] = task_ids[0]


def test_every_documented_operation_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    documented = sorted(
        (method.upper(), path) for path, item in api_schema.raw_schema["paths"].items() for method in item
    )
    assert documented == OPERATIONS


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_conforms_to_the_document(
    api_schema: schemathesis.BaseSchema, task_ids: list[str], method: str, path: str
) -> None:
    operation = api_schema[path][method]

    @given(case=case_strategy(operation, task_ids))
    @settings(
        max_examples=MORE_EXAMPLES.get((method, path), MAX_EXAMPLES),
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def fuzz(case: Case[Any]) -> None:
        bound_live_waits(case, task_ids)
        case.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT)

    fuzz()
