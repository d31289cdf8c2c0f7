"""The http trigger: a webhook route on the API server that turns each request into an invocation.

Callers authenticate with an HMAC-SHA256 signature of the body (GitHub style, optionally
over "timestamp.body" against replays) or a bearer token; the API's own tokens do not apply
to trigger routes. Async routes answer 202 after the durable enqueue, sync routes the
function's result.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Annotated, Literal

from aiohttp import web
from pydantic import Field, field_validator

from gateway.config import Duration, Size, TriggerConfig
from gateway.errors import FngateError, PayloadTooLarge, Unauthorized
from gateway.invocation import lineage_from_headers, new_task_id
from gateway.units import format_size

from .base import BaseTrigger, TriggerContext, TriggerOptions, parse_options

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
RESERVED_PREFIXES = ("/v1/", "/metrics", "/healthz", "/readyz", "/openapi.json")
# Headers that carry credentials stay out of the event the function sees.
HIDDEN_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


class NoAuth(TriggerOptions):
    type: Literal["none"] = "none"


class HmacAuth(TriggerOptions):
    type: Literal["hmac-sha256"]
    secret: str = Field(min_length=1, repr=False)
    header: str = "X-Hub-Signature-256"
    prefix: str = "sha256="
    # With a timestamp header the signature covers "timestamp.body", and requests whose
    # timestamp is further than `tolerance` from now are refused: a captured request
    # cannot be replayed later.
    timestamp_header: str | None = None
    tolerance: Duration = Field(default=300.0, gt=0)


class BearerAuth(TriggerOptions):
    type: Literal["bearer"]
    token: str = Field(min_length=8, repr=False)


Auth = Annotated[NoAuth | HmacAuth | BearerAuth, Field(discriminator="type")]


class HttpOptions(TriggerOptions):
    path: str = Field(pattern=r"^/[A-Za-z0-9._~/-]*$")
    methods: list[Method] = Field(default=["POST"], min_length=1)
    invocation: Literal["sync", "async"] = "async"
    auth: Auth = NoAuth()
    max_body: Size | None = Field(default=None, ge=1, le=64 * 1024 * 1024)

    @field_validator("path")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == "/" or value.startswith(RESERVED_PREFIXES):
            raise ValueError(f"{value!r} belongs to the API; pick another path")
        return value


class HttpTrigger(BaseTrigger):
    """A route at `path`; each accepted request becomes one invocation."""

    type = "http"
    Options = HttpOptions

    def __init__(self, config: TriggerConfig, context: TriggerContext) -> None:
        super().__init__(config, context)
        self.options = parse_options(HttpOptions, config, self.path)
        self.max_body = self.options.max_body or context.max_request_body
        for method in dict.fromkeys(self.options.methods):
            context.add_route(method, self.options.path, self.handle)

    async def start(self) -> None:
        self.state = "running"

    async def stop(self) -> None:
        self.state = "stopped"
        self._stopping.set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.count_event()
        try:
            body = await self.read_body(request)
            self.authenticate(request, body)
        except FngateError as exc:
            self.count_error(f"{exc.code}: {exc.message}")
            raise
        task_id = new_task_id()
        event = self.cloud_event(
            event_id=task_id,
            kind="request",
            subject=request.path,
            raw=body,
            extra={
                "method": request.method,
                "path": request.path,
                "query": {k: request.query.getone(k) for k in request.query},
                "headers": visible_headers(request),
                "remote": request.remote,
            },
        )
        if self.options.invocation == "sync":
            try:
                # The run goes by the event's id, as an async task would (context.task_id == id).
                result, content_type = await self.context.invoke_sync(
                    self.function,
                    event,
                    source=self.source,
                    task_id=task_id,
                    lineage=lineage_from_headers(request.headers),
                )
            except FngateError as exc:
                self.count_error(f"{exc.code}: {exc.message}")
                raise
            self.count_invocation()
            return web.Response(body=result, content_type=content_type.split(";")[0])
        # ServiceUnavailable (NATS down) propagates: the caller gets 503 and nothing is lost.
        task_id = await self.submit(event, task_id=task_id, lineage=lineage_from_headers(request.headers))
        return web.json_response({"task_id": task_id, "status": "Enqueued"}, status=202, headers={"X-Task-Id": task_id})

    async def read_body(self, request: web.Request) -> bytes:
        """The body, refused with 413 as soon as it passes max_body (read in chunks, never whole)."""
        limit = self.max_body
        too_large = f"request body over the limit of {format_size(limit)}"
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(too_large)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(too_large)
            chunks.append(chunk)
        return b"".join(chunks)

    def authenticate(self, request: web.Request, body: bytes) -> None:
        auth = self.options.auth
        if isinstance(auth, HmacAuth):
            check_signature(auth, request, body)
        elif isinstance(auth, BearerAuth):
            header = request.headers.get("Authorization", "")
            presented = header[7:] if header.startswith("Bearer ") else ""
            if not hmac.compare_digest(presented.encode(), auth.token.encode()):
                raise Unauthorized("missing or invalid bearer token")


def check_signature(auth: HmacAuth, request: web.Request, body: bytes, now: float | None = None) -> None:
    """Raise Unauthorized unless the request carries a valid, fresh signature of its body."""
    signature = request.headers.get(auth.header, "")
    if not signature.startswith(auth.prefix):
        raise Unauthorized(f"missing or malformed {auth.header} header")
    signed = body
    if auth.timestamp_header:
        stamp = request.headers.get(auth.timestamp_header, "")
        try:
            sent_at = float(stamp)
        except ValueError:
            raise Unauthorized(f"missing or malformed {auth.timestamp_header} header") from None
        if abs((now if now is not None else time.time()) - sent_at) > auth.tolerance:
            raise Unauthorized(f"{auth.timestamp_header} is outside the allowed {auth.tolerance:g}s window")
        signed = stamp.encode() + b"." + body
    expected = auth.prefix + hmac.new(auth.secret.encode(), signed, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature.strip().lower().encode(), expected.lower().encode()):
        raise Unauthorized(f"invalid signature in {auth.header}")


def visible_headers(request: web.Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        if key.lower() in HIDDEN_HEADERS:
            continue
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers
