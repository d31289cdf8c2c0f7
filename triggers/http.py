"""The http trigger: a webhook route on the API server that turns each request into an invocation.

Callers authenticate with one of the schemes of triggers.webhook_auth (a bearer token, a
generic HMAC-SHA256 signature, or the schemes of GitHub, Stripe, Slack and Standard
Webhooks); the API's own tokens do not apply to trigger routes. Async routes answer 202
after the durable enqueue, sync routes the function's result. A delivery the sender names
(its delivery id) gets a task id derived from that name: sent again, it is answered 202
with the first task's id and runs once. A request the sender does not name (the generic
HMAC scheme) gets a task id derived from its signature: sent again, to any replica, it is a
replay, refused with 401 while the first task is kept.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import Field, ValidationError, field_validator

from gateway.config.model import Size, TriggerConfig
from gateway.errors import BadRequest, DuplicateTask, FngateError, Forbidden, Unauthorized
from gateway.tasks.invocation import Lineage, lineage_from_headers, new_task_id

from .base import BaseTrigger, TriggerContext, TriggerState, parse_options, stable_id
from .shaping import FilterOptions
from .webhook_auth import Auth, HmacAuth, NoAuth, ReplayMemory, Verdict, verify

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
RESERVED_PREFIXES = ("/v1/", "/metrics", "/healthz", "/readyz", "/openapi.json")
# Headers that carry credentials stay out of the event the function sees.
HIDDEN_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
REPLAYED = "replayed request: this signature was already accepted"
# The 202 of a request the filter dropped: schemas.Dropped in the OpenAPI document (triggers do
# not import the web room; tests/test_openapi.py checks the real answers against the document).
DROPPED = {"task_id": None, "status": "Dropped", "reason": "filter"}


class HttpOptions(FilterOptions):
    path: str = Field(pattern=r"^/[A-Za-z0-9._~/-]*$")
    methods: list[Method] = Field(default=["POST"], min_length=1)
    invocation: Literal["sync", "async"] = "async"
    auth: Auth = NoAuth()
    max_body: Size | None = Field(default=None, ge=1, le=64 * 1024 * 1024)
    # Answer the CloudEvents webhook validation handshake (OPTIONS with WebHook-Request-Origin),
    # for the origins listed (any, when none is).
    cloudevents: bool = False
    allowed_origins: list[str] = []

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
        self.pattern = self.options.event_pattern()
        self.max_body = self.options.max_body or context.max_request_body
        self.replays = ReplayMemory()
        for method in dict.fromkeys(self.options.methods):
            context.add_route(method, self.options.path, self.handle)
        if self.options.cloudevents:
            context.add_route("OPTIONS", self.options.path, self.handshake)

    @classmethod
    def config_warnings(cls, config: TriggerConfig, path: str) -> list[str]:
        try:
            options = HttpOptions.model_validate(config.model_extra or {})
        except ValidationError:
            return []  # check_config reports it
        if isinstance(options.auth, HmacAuth) and options.auth.timestamp_header is None:
            return [
                f"{path}.auth: hmac-sha256 without timestamp_header signs only the body, so a replay "
                "is told apart from a new request only while the first task is kept (async.retention; "
                "never on a sync route), and two events with the same body are one; set timestamp_header"
            ]
        return []

    async def start(self) -> None:
        self.state = TriggerState.RUNNING

    async def stop(self) -> None:
        self.state = TriggerState.STOPPED
        self._stopping.set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.count_event()
        try:
            # 413 past max_body, 408 when slower than api.body_read_timeout: as on the invoke route.
            body = await self.context.read_body(request, self.max_body)
            verdict = verify(self.options.auth, request.headers, body)
            if verdict.replay_key is not None and self.replays.seen(verdict.replay_key):
                raise Unauthorized(REPLAYED)
        except FngateError as exc:
            self.count_error(f"{exc.code}: {exc.message}")
            raise
        task_id = self.task_id(verdict)
        event = self.filtered_event(
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
        if event is None:
            return web.json_response(DROPPED, status=202)
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
            self.remember(verdict)
            return web.Response(body=result, content_type=content_type.split(";")[0])
        # ServiceUnavailable (NATS down) propagates: the caller gets 503 and nothing is lost;
        # the signature is remembered only once accepted, so the sender's retry gets in.
        lineage = lineage_from_headers(request.headers)
        if verdict.delivery_id is None and verdict.replay_key is not None:
            task_id = await self.submit_signed(event, task_id, lineage)
        else:
            task_id = await self.submit(event, task_id=task_id, lineage=lineage)
        self.remember(verdict)
        accepted = {"task_id": task_id, "status": "Enqueued"}
        return web.json_response(accepted, status=202, headers={"X-Task-Id": task_id})

    async def submit_signed(self, event: bytes, task_id: str, lineage: Lineage | None) -> str:
        """Enqueue a request named by its signature alone: its id held already (by the task
        of the first request with this signature, on any replica, while the task stream keeps
        it) means a replay, refused."""
        try:
            return await self.submit_new(event, task_id=task_id, lineage=lineage)
        except DuplicateTask:
            self.count_error(f"{Unauthorized.code}: {REPLAYED}")
            raise Unauthorized(REPLAYED) from None

    def task_id(self, verdict: Verdict) -> str:
        """Derived from what names the delivery, so a repeat is a duplicate (JetStream refuses a
        second task with the id, on any replica, for the retention); new otherwise."""
        if verdict.delivery_id is not None:
            return stable_id(f"http-{self.name}", "delivery", verdict.delivery_id)
        if verdict.replay_key is not None:
            return stable_id(f"http-{self.name}", "signature", verdict.replay_key)
        return new_task_id()

    def remember(self, verdict: Verdict) -> None:
        # Only what a timestamp bounds: without one the memory would have to keep every
        # signature for ever (an async route's task id still refuses the replay).
        if verdict.replay_key is not None and verdict.expires is not None:
            self.replays.remember(verdict.replay_key, verdict.expires)

    async def handshake(self, request: web.Request) -> web.StreamResponse:
        """The CloudEvents webhook validation handshake (CloudEvents Webhook spec, section 4)."""
        origin = request.headers.get("WebHook-Request-Origin")
        allow = ", ".join([*dict.fromkeys(self.options.methods), "OPTIONS"])
        if not origin:
            raise BadRequest("OPTIONS here is the CloudEvents webhook handshake: WebHook-Request-Origin is required")
        if self.options.allowed_origins and origin not in self.options.allowed_origins:
            raise Forbidden(f"origin {origin!r} may not deliver to this webhook")
        headers = {"Allow": allow, "WebHook-Allowed-Origin": origin}
        if "WebHook-Request-Rate" in request.headers:
            headers["WebHook-Allowed-Rate"] = "*"
        return web.Response(status=200, headers=headers)


def visible_headers(request: web.Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        if key.lower() in HIDDEN_HEADERS:
            continue
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers
