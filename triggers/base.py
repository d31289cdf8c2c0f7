"""The one small interface every trigger implements, and the registry of trigger types.

A trigger is built from its config entry and a TriggerContext, started once, stopped
once, and asked for its health. It hands events to `context.submit`, which returns only
after JetStream acknowledged the task (so a trigger may then ack/commit upstream), and
raises ServiceUnavailable while NATS is unreachable (so the trigger holds the event back).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, ClassVar, Protocol, TypeVar, cast

from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from gateway.config.model import TriggerConfig
from gateway.config.registry import Registry, UnknownType
from gateway.errors import ConfigError, DuplicateTask, FngateError
from gateway.flow.limits import KEY_PATTERN
from gateway.observe import metrics
from gateway.tasks.invocation import BatchItem, Lineage, Source, iso, new_task_id

from .pattern import EventPattern


class Submit(Protocol):
    async def __call__(
        self,
        function: str,
        payload: bytes,
        *,
        source: Source,
        content_type: str = "application/json",
        task_id: str | None = None,
        delay: float = 0.0,
        lineage: Lineage | None = None,
        priority: str = "normal",
        concurrency_key: str = "",
    ) -> str:
        """Durably enqueue an async invocation; returns the task id.

        Raises gateway.errors.DuplicateTask when task_id is already known (an event that
        was already turned into a task), ServiceUnavailable while NATS is unreachable.
        """
        ...


class SubmitMany(Protocol):
    async def __call__(
        self,
        function: str,
        items: Sequence[BatchItem],
        *,
        source: Source,
        priority: str = "normal",
        keys: Sequence[str] | None = None,
    ) -> list[Exception | None]:
        """Enqueue a batch of JSON events, each (payload, task id, lineage); one outcome per
        item, in order: None when enqueued, else the exception `Submit` would have raised.
        `keys`: each item's concurrency key, when the trigger sets one.
        Raises ServiceUnavailable, for the whole batch, while NATS is unreachable."""
        ...


class InvokeSync(Protocol):
    async def __call__(
        self,
        function: str,
        payload: bytes,
        *,
        source: Source,
        content_type: str = "application/json",
        task_id: str | None = None,
        lineage: Lineage | None = None,
    ) -> tuple[bytes, str]:
        """Run a function now under `task_id` (the event's id; else a new one), in the trace
        `lineage` carries; returns (body, content type). Raises FngateError subclasses."""
        ...


RouteAdder = Callable[[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], None]
# Reads a request's whole body within the given size limit and the API's body_read_timeout,
# as the invoke route does: 413 past the limit, 408 when it is slow, ClientGone when abandoned.
BodyReader = Callable[[web.Request, int], Awaitable[bytes]]


@dataclass
class TriggerStats:
    events_received: int = 0
    invocations: int = 0
    errors: int = 0
    last_error: str | None = None
    matched: int = 0  # events that passed the trigger's filter (every event without one)
    dropped: int = 0  # events the filter dropped (acknowledged upstream, no task)

    def as_dict(self) -> dict[str, Any]:
        return {
            "events_received": self.events_received,
            "invocations": self.invocations,
            "matched": self.matched,
            "dropped": self.dropped,
            "errors": self.errors,
            "last_error": self.last_error,
        }


@dataclass
class TriggerContext:
    submit: Submit
    submit_many: SubmitMany
    invoke_sync: InvokeSync
    add_route: RouteAdder
    read_body: BodyReader
    data_dir: str
    max_request_body: int
    max_chain_depth: int
    stats: TriggerStats = field(default_factory=TriggerStats)
    # The gateway's own NATS servers (known once it started): the default for nats triggers.
    nats_servers: Callable[[], list[str]] = field(default=lambda: [])
    # The largest task payload the gateway's NATS server takes (0 until it is connected):
    # what a batch task must stay under.
    max_task_payload: Callable[[], int] = field(default=lambda: 0)


class TriggerState(StrEnum):
    """A trigger's life (its health's `state`)."""

    CREATED = "created"
    CONNECTING = "connecting"  # to its broker or server, retried until it answers
    RUNNING = "running"
    HOLDING = "holding"  # running, with events held back while NATS does not take them
    FAILED = "failed"  # its source refused it for good (an MQTT subscription refused)
    STOPPED = "stopped"


class Trigger(Protocol):
    name: str
    type: str
    state: TriggerState

    async def start(self) -> None: ...

    def ready(self) -> bool: ...

    async def stop(self) -> None: ...

    def health(self) -> dict[str, Any]: ...


TriggerFactory = Callable[[TriggerConfig, TriggerContext], Trigger]


def readiness(triggers: Sequence[Trigger]) -> tuple[bool, dict[str, dict[str, Any]]]:
    """For /readyz: whether every trigger receives events, and each one's state."""
    states = {t.name: {"type": t.type, "state": t.state, "ready": bool(t.ready())} for t in triggers}
    return all(s["ready"] for s in states.values()), states


# type name -> "module:Class"; imported only when a config uses it (a heavy library loads only then).
REGISTRY: Registry[TriggerFactory] = Registry(
    "trigger",
    {
        "http": "triggers.http:HttpTrigger",
        "timer": "triggers.timer:TimerTrigger",
        "file": "triggers.file:FileTrigger",
        "kafka": "triggers.kafka:KafkaTrigger",
        "mqtt": "triggers.mqtt:MqttTrigger",
        "nats": "triggers.nats:NatsTrigger",
    },
)


def trigger_class(type_name: str, path: str = "triggers") -> TriggerFactory:
    """The class of a trigger type; ConfigError (at `path`) when unknown or not loadable."""
    try:
        return REGISTRY.load(type_name)
    except UnknownType as exc:
        raise ConfigError([f"{path}.type: {exc.message}"]) from None
    except ImportError as exc:
        raise ConfigError(
            [
                f"{path}.type: trigger type {type_name!r} cannot load its library ({exc}); "
                "it is a core dependency of fngate: reinstall it"
            ]
        ) from None


# --- shared by the trigger modules ----------------------------------------------------
# Everything below is a helper for the concrete triggers: option models, counters,
# CloudEvents-shaped events, and submitting that holds an event back while NATS is down.

log = logging.getLogger(__name__)
OptionsT = TypeVar("OptionsT", bound="TriggerOptions")
SPECVERSION = "1.0"
RETRY_FIRST = 0.5  # seconds before the first retry of an event NATS did not take
RETRY_MAX = 5.0
# One encoder for every event: json.dumps with options builds a new one per call, which
# cost as much as encoding a small event.
COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def json_string(text: str) -> str:
    """`text` as a JSON string, as COMPACT_JSON writes it (ASCII, escaped): for the triggers
    that write their events from a template (kafka, mqtt)."""
    return str(encode_basestring_ascii(text))


HeaderValue = str | list[str]  # a name sent more than once has its values as a list, in order


def header_fields(pairs: Sequence[tuple[str, str]]) -> tuple[dict[str, str], dict[str, HeaderValue]]:
    """Kafka headers and MQTT 5 user properties may repeat a name: (each name's first value,
    which the lineage reads; the event's field, where a repeated name keeps every value, as a
    list in order). Without a repeat, which is the rule, both are the same dict."""
    first: dict[str, str] = {}
    for name, value in pairs:
        first.setdefault(name, value)
    if len(first) == len(pairs):
        return first, cast(dict[str, HeaderValue], first)
    fields: dict[str, HeaderValue] = {}
    for name, value in pairs:
        known = fields.get(name)
        if known is None:
            fields[name] = value
        elif isinstance(known, list):
            known.append(value)
        else:
            fields[name] = [known, value]
    return first, fields


class TriggerOptions(BaseModel):
    """Options of one trigger type; the shared keys (name, type, function) are not repeated."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def option_errors(exc: ValidationError, path: str) -> list[str]:
    """pydantic errors as `triggers.NAME.key: message` lines."""
    lines = []
    for error in exc.errors():
        keys = [str(part) for part in error["loc"] if not str(part).startswith("function-") and "[" not in str(part)]
        where = ".".join([path, *keys])
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return lines


def parse_options(model: type[OptionsT], config: TriggerConfig, path: str) -> OptionsT:
    """The trigger's own options from the config's extra keys; ConfigError naming every problem."""
    try:
        return model.model_validate(config.model_extra or {})
    except ValidationError as exc:
        raise ConfigError(option_errors(exc, path)) from None


def json_text(raw: bytes) -> str | None:
    """The payload as text when it is one JSON document in UTF-8, so it can go into an event
    as it is; None otherwise (then event_data decides)."""
    parsed = parse_json(raw)
    return parsed[0] if parsed is not None else None


def parse_json(raw: bytes) -> tuple[str, Any] | None:
    """(text, document) when the payload is one JSON document in UTF-8; None otherwise."""
    try:
        text = raw.decode()
        return text, json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError included; nested too deep to read
        return None


def event_data(raw: bytes) -> dict[str, Any]:
    """`data` for JSON payloads, `data_base64` for anything else (CloudEvents JSON format)."""
    if not raw:
        return {"datacontenttype": "application/json", "data": None}
    try:
        return {"datacontenttype": "application/json", "data": json.loads(raw)}
    except (ValueError, RecursionError):
        return {"datacontenttype": "application/octet-stream", "data_base64": base64.b64encode(raw).decode()}


def text_or_base64(raw: bytes | None) -> dict[str, str | None]:
    """A key or header value: UTF-8 text when it is, base64 otherwise."""
    if raw is None:
        return {"text": None}
    try:
        return {"text": raw.decode()}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode()}


def stable_id(prefix: str, *parts: object) -> str:
    """A task id derived from what identifies an event: the same event always gets the same id."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:32]
    return f"{prefix}-{digest}"


def event_path(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def concurrency_key_at(payload: bytes, path: Sequence[str]) -> str:
    """The concurrency key a trigger's `concurrency_key:` path names in the event it submits
    ("" when the event has nothing there: the task then shares the function's concurrency
    only). The path descends objects by name and arrays by index; a batch task (a JSON array
    of events) takes its first event's key. A string is the key as it is when it can be one;
    any other value, or a string of other characters or over 128, becomes a digest of it, so
    equal values still share a key."""
    try:
        value: Any = json.loads(payload)
    except (ValueError, RecursionError):
        return ""
    if isinstance(value, list) and value:
        value = value[0]
    for part in path:
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list):
            try:
                value = value[int(part)]
            except (ValueError, IndexError):
                return ""
        else:
            return ""
    if value is None or value == "":
        return ""
    text = value if isinstance(value, str) else COMPACT_JSON.encode(value)
    if KEY_PATTERN.match(text):
        return text
    return "h:" + hashlib.blake2s(text.encode(), digest_size=12).hexdigest()


def _encode(event: dict[str, Any], parsed: tuple[str, Any] | None) -> bytes:
    # A JSON payload (the common case: Kafka, MQTT, webhooks) was checked, and is spliced in
    # as its own text as the last member: encoding it again was most of an event's cost.
    encoded = COMPACT_JSON.encode(event)
    if parsed is not None:
        encoded = f'{encoded[:-1]},"data":{parsed[0].strip()}}}'
    return encoded.encode()


class BaseTrigger:
    """What every trigger type shares: options, counters, health, events, and submitting."""

    type: ClassVar[str]
    Options: ClassVar[builtins.type[TriggerOptions]]  # `type` here is the trigger type's name

    def __init__(self, config: TriggerConfig, context: TriggerContext) -> None:
        self.name = config.name
        self.function = config.function
        self.context = context
        self.path = f"triggers.{config.name}"
        self.source = Source(self.type, self.name)
        # What every event of this trigger carries, and the same encoded once for the
        # triggers that write their events from a template.
        self.event_source = f"/fngate/triggers/{self.type}/{self.name}"
        self.trigger_ref = {"type": self.type, "name": self.name}
        self.event_source_json = json_string(self.event_source)
        self.trigger_ref_json = COMPACT_JSON.encode(self.trigger_ref)
        # Flow control of the tasks it makes (their priority; where their key is in the event).
        self.priority = config.priority
        self.key_path = event_path(config.concurrency_key) if config.concurrency_key else None
        self.state = TriggerState.CREATED
        self._held = 0  # events waiting for NATS to take them
        self._stopping = asyncio.Event()
        self.pattern: EventPattern | None = None  # the trigger's `filter:`, set by the types that take one
        # The labelled counters, looked up once: labels() per event was a real part of its cost.
        self._events = metrics.TRIGGER_EVENTS.labels(self.name, self.type)
        self._invocations = metrics.TRIGGER_INVOCATIONS.labels(self.name, self.type)
        self._matched = metrics.TRIGGER_MATCHED.labels(self.name, self.type)
        self._dropped = metrics.TRIGGER_DROPPED.labels(self.name, self.type)

    @classmethod
    def check_config(cls, config: TriggerConfig, path: str) -> list[str]:
        try:
            cls.Options.model_validate(config.model_extra or {})
        except ValidationError as exc:
            return option_errors(exc, path)
        return []

    @classmethod
    def config_warnings(cls, config: TriggerConfig, path: str) -> list[str]:
        """What is valid in the trigger's options but weaker than it looks (`fngate check`
        prints it as a warning); nothing, unless a type says otherwise."""
        return []

    def ready(self) -> bool:
        """Whether the trigger receives events now (subscribed, assigned, watching, routed);
        a type with more to wait for than its start says so by overriding this."""
        return self.state is TriggerState.RUNNING

    def health(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "function": self.function,
            "state": TriggerState.HOLDING if self._held and self.state is TriggerState.RUNNING else self.state,
            "ready": self.ready(),
            **self.context.stats.as_dict(),
        }

    # counters: TriggerStats for health(), Prometheus for /metrics
    def count_event(self, n: int = 1) -> None:
        self.context.stats.events_received += n
        self._events.inc(n)

    def count_invocation(self) -> None:
        self.context.stats.invocations += 1
        self._invocations.inc()

    def count_error(self, message: str) -> None:
        self.context.stats.errors += 1
        self.context.stats.last_error = message[:500]
        metrics.TRIGGER_ERRORS.labels(self.name, self.type).inc()

    def cloud_event(
        self,
        *,
        event_id: str,
        kind: str,
        subject: str,
        raw: bytes | None = None,
        data: Any = None,
        at: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> bytes:
        """The event a function receives, CloudEvents-shaped; `extra` goes under the trigger type's key."""
        event, parsed = self._envelope(event_id, kind, subject, raw, data, at, extra)
        return _encode(event, parsed)

    def filtered_event(
        self,
        *,
        event_id: str,
        kind: str,
        subject: str,
        raw: bytes | None = None,
        data: Any = None,
        at: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> bytes | None:
        """cloud_event(), matched against the trigger's filter first and counted either way:
        None when the filter drops it (then it is not even encoded). The filter sees the
        event with its payload parsed; a payload that cannot be read is matched as it is
        passed on (`data_base64`), so no message can stall what it came from."""
        event, parsed = self._envelope(event_id, kind, subject, raw, data, at, extra)
        if not self.passes(event, parsed):
            self.count_filtered(0, 1)
            return None
        self.count_filtered(1, 0)
        return _encode(event, parsed)

    def passes(self, event: dict[str, Any], parsed: tuple[str, Any] | None) -> bool:
        """Whether the event (as _envelope made it) passes the trigger's filter; not counted."""
        if self.pattern is None:
            return True
        return self.pattern.matches({**event, "data": parsed[1]} if parsed is not None else event)

    def count_filtered(self, matched: int, dropped: int) -> None:
        """Count events the filter let through and dropped (a trigger that reads events in
        bulk counts them in bulk: a Prometheus increment per event was a real part of its cost)."""
        if matched:
            self.context.stats.matched += matched
            self._matched.inc(matched)
        if dropped:
            self.context.stats.dropped += dropped
            self._dropped.inc(dropped)

    def _envelope(
        self,
        event_id: str,
        kind: str,
        subject: str,
        raw: bytes | None,
        data: Any,
        at: float | None,
        extra: dict[str, Any] | None,
    ) -> tuple[dict[str, Any], tuple[str, Any] | None]:
        """The event without a JSON payload, and that payload as (text, document) when it is one."""
        event: dict[str, Any] = {
            "specversion": SPECVERSION,
            "id": event_id,
            "source": self.event_source,
            "type": f"fngate.{self.type}.{kind}",
            "time": iso(at if at is not None else time.time()),
            "subject": subject,
        }
        parsed = parse_json(raw) if raw else None
        if parsed is not None:
            event["datacontenttype"] = "application/json"
        elif raw is not None:
            event.update(event_data(raw))
        else:
            event.update({"datacontenttype": "application/json", "data": data})
        event["trigger"] = self.trigger_ref
        if extra is not None:
            event[self.type] = extra
        return event, parsed

    async def submit(self, payload: bytes, *, task_id: str | None = None, lineage: Lineage | None = None) -> str:
        """Enqueue once; DuplicateTask counts as done (an event already turned into a task).

        Raises FngateError when it was not enqueued (ServiceUnavailable while NATS is down).
        """
        task_id = task_id or new_task_id()
        try:
            return await self.submit_new(payload, task_id=task_id, lineage=lineage)
        except DuplicateTask:
            log.debug("trigger %s: task %s already exists", self.name, task_id)
            return task_id

    async def submit_new(self, payload: bytes, *, task_id: str, lineage: Lineage | None = None) -> str:
        """Enqueue a task whose id no task may hold yet: DuplicateTask propagates, for a trigger
        to which a known id means something else than "done" (an http trigger's replay)."""
        try:
            await self.context.submit(
                self.function,
                payload,
                source=self.source,
                task_id=task_id,
                lineage=lineage,
                priority=self.priority,
                concurrency_key=self.key_of(payload),
            )
        except DuplicateTask:
            raise
        except FngateError as exc:
            self.count_error(f"{exc.code}: {exc.message}")
            raise
        self.count_invocation()
        return task_id

    def key_of(self, payload: bytes) -> str:
        """The concurrency key of the task of this event ("" without `concurrency_key:`)."""
        return concurrency_key_at(payload, self.key_path) if self.key_path is not None else ""

    async def submit_held(
        self, payload: bytes, *, task_id: str | None = None, lineage: Lineage | None = None
    ) -> str | None:
        """Submit, holding the event while NATS is unavailable and retrying with backoff.

        The task id is chosen once, so a retry after a lost acknowledgement is recognised as
        a duplicate. Returns None when the event can never be enqueued (a 4xx error such as
        an unknown function) or the trigger is stopping; the caller then lets the event go.
        """
        task_id = task_id or new_task_id()
        delay = RETRY_FIRST
        while True:
            try:
                return await self.submit(payload, task_id=task_id, lineage=lineage)
            except FngateError as exc:
                if exc.status < 500:
                    log.warning("trigger %s: event dropped: %s", self.name, exc.message)
                    return None
                self._held += 1
                log.warning("trigger %s: %s; holding the event, retry in %.1fs", self.name, exc.message, delay)
            except Exception as exc:  # e.g. a payload over the NATS max_payload: no retry can help
                self.count_error(f"{type(exc).__name__}: {exc}")
                log.warning("trigger %s: event dropped: %s: %s", self.name, type(exc).__name__, exc)
                return None
            stopping = await self.wait_stopping(delay)
            self._held -= 1
            if stopping:
                return None
            delay = min(delay * 2, RETRY_MAX)

    async def submit_batch(self, items: Sequence[BatchItem]) -> None:
        """Submit a batch of JSON events with stable task ids; returns once every one is
        enqueued (or known already, or can never be). Sent as one batch first; whatever
        that did not enqueue goes through `submit_held`, one by one, with its retries."""
        keys = [self.key_of(payload) for payload, _, _ in items] if self.key_path is not None else None
        try:
            outcomes: list[Exception | None] = await self.context.submit_many(
                self.function, items, source=self.source, priority=self.priority, keys=keys
            )
        except FngateError as exc:  # the whole batch (NATS unreachable): each item as it failed
            outcomes = [exc] * len(items)
        retry = []
        for item, outcome in zip(items, outcomes, strict=True):
            if outcome is None:
                self.count_invocation()
            elif isinstance(outcome, DuplicateTask):
                log.debug("trigger %s: task %s already exists", self.name, item[1])
            else:
                retry.append(item)
        if retry:
            await asyncio.gather(
                *(self.submit_held(payload, task_id=task_id, lineage=lineage) for payload, task_id, lineage in retry)
            )

    async def wait_stopping(self, timeout: float) -> bool:
        """Sleep up to `timeout`; True when the trigger is being stopped."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout)
        except TimeoutError:
            return False
        return True
