"""The HTTP side of bulk operations: `POST /v1/tasks/rerun|stop`, `GET /v1/operations[/{id}]`."""

from __future__ import annotations

from aiohttp import web

from gateway.web import schemas
from gateway.web.keys import BULK, CONFIG
from gateway.web.requests import read_body
from gateway.web.schemas import shape

from ..errors import ServiceUnavailable
from .operations import BulkOperations
from .records import public
from .request import parse_request


def operations(request: web.Request) -> BulkOperations:
    bulk = request.app.get(BULK)
    if bulk is None:
        raise ServiceUnavailable("the gateway is starting")
    return bulk


async def bulk_action(request: web.Request, kind: str) -> web.Response:
    api = request.app[CONFIG].api
    bulk_request = parse_request(await read_body(request, api.max_request_body, api.body_read_timeout))
    bulk = operations(request)
    if bulk_request.dry_run:
        return web.json_response(shape(schemas.BulkCount, {"matched": await bulk.count(bulk_request)}))
    record = await bulk.create(kind, bulk_request)
    accepted = {"operation_id": record["operation_id"], "matched": record["matched"]}
    return web.json_response(shape(schemas.OperationAccepted, accepted), status=202)


async def bulk_rerun(request: web.Request) -> web.Response:
    return await bulk_action(request, "rerun")


async def bulk_stop(request: web.Request) -> web.Response:
    return await bulk_action(request, "stop")


async def get_operation(request: web.Request) -> web.Response:
    record = await operations(request).records.get(request.match_info["id"])
    return web.json_response(shape(schemas.Operation, public(record)))


async def list_operations(request: web.Request) -> web.Response:
    records = await operations(request).records.list()
    return web.json_response(shape(schemas.OperationList, {"operations": [public(r) for r in records]}))


def add_bulk_routes(app: web.Application) -> None:
    app.router.add_post("/v1/tasks/rerun", bulk_rerun)
    app.router.add_post("/v1/tasks/stop", bulk_stop)
    app.router.add_get("/v1/operations", list_operations)
    app.router.add_get("/v1/operations/{id}", get_operation)
