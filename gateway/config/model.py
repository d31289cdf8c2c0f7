"""The gateway configuration: YAML with ${ENV} interpolation, validated in full at load.

Every problem is reported with its path (`functions.resize.async.max_retries: must be 0..8`)
so `fngate check` can print them all at once.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError
from gateway.observe.redact import redact_loose
from gateway.units import parse_duration, parse_size

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RETENTION_MARGIN = 60.0  # seconds of retention beyond a task's longest life
MAX_DELAY = 86400.0  # the longest X-Delay of all
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NatsConfig(_Model):
    url: str | list[str] = "embedded"
    data_dir: str = ".fngate"
    # How long a dequeued message may go without a heartbeat before JetStream hands it to
    # another worker: the time a crashed gateway's tasks take to run again.
    ack_wait: Duration = Field(default=10.0, ge=1.0, le=600.0)
    replicas: int = Field(default=1, ge=1, le=5)

    @property
    def embedded(self) -> bool:
        return self.url == "embedded"

    @property
    def servers(self) -> list[str]:
        return [self.url] if isinstance(self.url, str) else list(self.url)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | list[str]) -> str | list[str]:
        urls = [value] if isinstance(value, str) else value
        if not urls:
            raise ValueError("must name at least one server")
        for url in urls:
            if url != "embedded" and not re.match(r"^(nats|tls)://", url):
                raise ValueError(f"must be 'embedded' or nats://host:port (got {redact_loose(url)!r})")
        if isinstance(value, list) and "embedded" in value:
            raise ValueError("'embedded' cannot be part of a list")
        return value


Scope = Literal["invoke", "read", "admin"]


class TokenConfig(_Model):
    name: str
    token: str = Field(min_length=8, repr=False)
    scopes: list[Scope] = Field(min_length=1)


# Server-Sent Event streams (logs and status events) one client address may hold open on a
# replica; over it, 429. Behind a proxy every client has the proxy's address.
STREAMS_PER_CLIENT = 16


class ApiConfig(_Model):
    listen: str = "127.0.0.1:8080"
    tokens: list[TokenConfig] = []
    max_request_body: Size = Field(default=6 * 1024 * 1024, ge=1, le=64 * 1024 * 1024)
    body_read_timeout: Duration = Field(default=30.0, ge=0.1, le=3600.0)  # a slower upload gets 408
    streams_per_client: int = Field(default=STREAMS_PER_CLIENT, ge=1, le=100_000)
    allow_unauthenticated: bool = False

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"must be host:port (got {value!r})")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class DestinationConfig(BaseModel):
    """Shape shared by every destination; each sink validates its own options."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str


class AsyncConfig(_Model):
    max_retries: int = Field(default=3, ge=0, le=8)
    # First retry after a function error waits this long, each next one twice as long.
    retry_delay: Duration = Field(default=1.0, ge=0.0, le=3600.0)
    max_event_age: Duration = Field(default=6 * 3600.0, ge=1.0, le=30 * 86400.0)
    retention: Duration = Field(default=7 * 86400.0, ge=60.0, le=365 * 86400.0)
    on_success: DestinationConfig | None = None
    on_failure: DestinationConfig | None = None


class FunctionConfig(_Model):
    handler: str | None = None
    url: str | None = None
    command: list[str] | None = None
    timeout: Duration = Field(default=30.0, ge=0.001, le=86400.0)
    concurrency: int = Field(default=8, ge=1, le=10000)
    env: dict[str, str] = {}
    # Flow control (gateway/flow): at most this many at once per X-Concurrency-Key, starts
    # per period across the deployment, and X-Priority ordering of waiting tasks.
    key_concurrency: int | None = Field(default=None, ge=1, le=10000)
    rate_limit: str | None = None
    priorities: bool = False
    async_: AsyncConfig = Field(default_factory=AsyncConfig, alias="async")

    @model_validator(mode="after")
    def _one_runtime(self) -> FunctionConfig:
        given = [k for k in ("handler", "url", "command") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("exactly one of handler, url, command must be set")
        if self.handler and not re.match(r"^python:[\w.]+:[\w.]+$", self.handler):
            raise ValueError(f"handler must look like python:module:attr (got {self.handler!r})")
        if self.url and not re.match(r"^https?://", self.url):
            raise ValueError(f"url must start with http:// or https:// (got {redact_loose(self.url)!r})")
        return self

    @model_validator(mode="after")
    def _retention_outlives_tasks(self) -> FunctionConfig:
        # The streams drop what is older than retention: an unfinished task must never be.
        # Its life before a terminal status is bounded by max_event_age (from its scheduled
        # time to its last dequeue) plus one run (timeout); X-Delay is capped to what is left.
        life = self.async_.max_event_age + self.timeout + RETENTION_MARGIN
        if self.async_.retention < life:
            raise ValueError(
                f"async.retention ({self.async_.retention:g}s) must be at least async.max_event_age + timeout "
                f"+ {RETENTION_MARGIN:g}s ({life:g}s), or tasks still queued or running would vanish"
            )
        return self

    @property
    def max_delay(self) -> float:
        """The longest X-Delay a task of this function may have within its retention."""
        room = self.async_.retention - self.async_.max_event_age - self.timeout - RETENTION_MARGIN
        return max(0.0, min(MAX_DELAY, room))

    @field_validator("rate_limit")
    @classmethod
    def _check_rate(cls, value: str | None) -> str | None:
        if value is not None:
            from gateway.flow.limits import parse_rate

            parse_rate(value)
        return value

    @property
    def flow_controlled(self) -> bool:
        """Its tasks go through the flow leader (gateway/flow) rather than straight to workers."""
        return self.key_concurrency is not None or self.rate_limit is not None or self.priorities

    @property
    def runtime(self) -> str:
        return "python" if self.handler else "url" if self.url else "command"


class TriggerConfig(BaseModel):
    """Shape shared by every trigger; each trigger type validates its own options."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    type: str
    function: str
    # Flow control (gateway/flow), for every trigger type: the tasks' priority, and where in
    # the event their concurrency key is (a dotted path such as data.customer or kafka.key).
    priority: str = "normal"
    concurrency_key: str | None = None

    @field_validator("priority")
    @classmethod
    def _check_priority(cls, value: str) -> str:
        from gateway.flow.limits import check_priority

        return check_priority(value)

    @field_validator("concurrency_key")
    @classmethod
    def _check_key_path(cls, value: str | None) -> str | None:
        if (value is not None and not re.fullmatch(r"[^.\s]+(\.[^.\s]+)*", value)) or len(value or "") > 256:
            raise ValueError(f"must be a dotted path into the event, like data.customer or kafka.key (got {value!r})")
        return value


class IndexConfig(_Model):
    """Where the task history lives (gateway/history): `sqlite` (a file under nats.data_dir),
    `sqlite:///path/to/file.db`, or `postgresql://user@host:5432/db` shared across hosts."""

    url: str = "sqlite"
    # A batch that a replica took but did not commit (it died) goes to another one after this.
    ack_wait: Duration = Field(default=30.0, ge=1.0, le=600.0)
    # How many feeder processes may apply the streams to this database at once. The first
    # feeds all the time, with large batches; the others only through a backlog (a backfill,
    # a burst one process cannot keep up with), where they parse in parallel (history/feeder.py).
    feeders: int = Field(default=2, ge=1, le=16)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value == "sqlite" or value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            if value.startswith("sqlite:///") and len(value) == len("sqlite:///"):
                raise ValueError("sqlite:/// needs a file path")
            if value.startswith("postgres") and importlib.util.find_spec("asyncpg") is None:
                raise ValueError("a postgresql:// index needs the asyncpg driver: pip install asyncpg")
            return value
        raise ValueError(f"must be sqlite, sqlite:///path or postgresql://user@host/db (got {value!r})")


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class TracingConfig(_Model):
    """Span export (docs/tracing.md); trace context is carried whether or not it is set."""

    otlp_endpoint: str | None = None  # an OTLP/HTTP collector: http://host:4318
    service_name: str = Field(default="fngate", min_length=1)
    headers: dict[str, str] = Field(default={}, repr=False)  # e.g. a collector's auth header

    @field_validator("otlp_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError(f"must be http(s)://host:port (got {value!r})")
        try:
            found = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
        except ImportError:
            found = False
        if not found:
            raise ValueError("needs the otel extra: pip install 'fngate[otel]'")
        return value


class Config(_Model):
    nats: NatsConfig = NatsConfig()
    api: ApiConfig = ApiConfig()
    index: IndexConfig = IndexConfig()
    logging: LoggingConfig = LoggingConfig()
    tracing: TracingConfig = TracingConfig()
    max_chain_depth: int = Field(default=16, ge=1, le=1000)
    functions: dict[str, FunctionConfig] = {}
    triggers: list[TriggerConfig] = []

    @field_validator("functions")
    @classmethod
    def _check_names(cls, value: dict[str, FunctionConfig]) -> dict[str, FunctionConfig]:
        for name in value:
            if not FUNCTION_NAME.match(name):
                raise ValueError(f"function name {name!r} must match [A-Za-z0-9_-]{{1,64}}")
        return value

    @property
    def max_retention(self) -> float:
        return max((f.async_.retention for f in self.functions.values()), default=7 * 86400.0)


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Replace ${NAME} and ${NAME:-default}; an unset variable without default is an error."""
    result, missing, _used = substitute(text, env)
    if missing:
        raise ConfigError([f"environment variable {name} is not set" for name in missing])
    return result


def substitute(text: str, env: dict[str, str] | None = None) -> tuple[str, list[str], dict[str, str]]:
    """The text with ${NAME} and ${NAME:-default} replaced (an unset one by ""), the names
    that were unset without a default, and the values taken from the environment."""
    env = dict(os.environ) if env is None else env
    missing: list[str] = []
    used: dict[str, str] = {}

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            used[name] = env[name]
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    return _ENV.sub(replace, text), missing, used


def _format_path(loc: tuple[Any, ...], data: Any) -> str:
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and item < len(node):
            element = node[item]
            label = element.get("name") if isinstance(element, dict) else None
            parts.append(f"{item}" if label is None else f"{label}")
            node = element
            continue
        if item in ("function-after[_one_runtime()]",):
            continue
        key = "async" if item == "async_" else str(item)
        if key.startswith(("function-", "str", "list[", "Literal[")):
            continue
        parts.append(key)
        node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts)


def _format_message(error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in ("greater_than_equal", "less_than_equal") and error.get("input") is not None:
        return f"{error['msg'].lower()} (got {error['input']!r})"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"]).lower()


def _range_messages(data: Any, errors: list[Any]) -> list[str]:
    """Merge ge/le errors with the field's other bound so the message names the allowed range."""
    lines = []
    for error in errors:
        path = _format_path(error["loc"], data)
        message = _format_message(error)
        bounds = _bounds_for(error["loc"])
        if bounds and error["type"] in ("greater_than_equal", "less_than_equal", "int_parsing"):
            message = f"must be {bounds[0]}..{bounds[1]} (got {error.get('input')!r})"
        lines.append(f"{path}: {message}")
    return lines


def _bounds_for(loc: tuple[Any, ...]) -> tuple[Any, Any] | None:
    model: Any = Config
    for item in loc:
        fields = getattr(model, "model_fields", None)
        if fields is None:
            continue
        name = "async_" if item == "async" else item
        info = fields.get(name) if isinstance(name, str) else None
        if info is None:
            continue
        low = high = None
        for meta in info.metadata:
            low = getattr(meta, "ge", low)
            high = getattr(meta, "le", high)
        if low is not None and high is not None:
            return _fmt_bound(low, name), _fmt_bound(high, name)
        annotation = info.annotation
        inner = getattr(annotation, "__args__", (annotation,))
        model = next((a for a in inner if hasattr(a, "model_fields")), None)
        if model is None and isinstance(info.annotation, type) is False:
            args = getattr(annotation, "__args__", ())
            model = next((a for a in args if hasattr(a, "model_fields")), None)
    return None


def _fmt_bound(value: Any, name: str) -> str:
    if isinstance(value, float) and name in ("timeout", "max_event_age", "retention", "ack_wait"):
        for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if value >= factor and value % factor == 0:
                return f"{int(value // factor)}{unit}"
        return f"{value}s"
    return str(value)


def parse_config(data: Any) -> Config:
    """Validate a parsed document; raises ConfigError listing every problem with its path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["(root): must be a mapping"])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_range_messages(data, exc.errors())) from None
    problems = _cross_checks(config)
    if problems:
        raise ConfigError(problems)
    return config


def _cross_checks(config: Config, known: set[str] | None = None) -> list[str]:
    """References between sections; `known` names every function the document declares
    (also those that did not validate, whose own errors are reported already)."""
    known = set(config.functions) if known is None else known
    problems = []
    for index, trigger in enumerate(config.triggers):
        if trigger.function not in known:
            problems.append(f"triggers.{trigger.name or index}.function: unknown function {trigger.function!r}")
    names = [t.name for t in config.triggers]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"triggers.{name}.name: duplicate trigger name")
    for fname, function in config.functions.items():
        for key in ("on_success", "on_failure"):
            dest = getattr(function.async_, key)
            if dest is not None and dest.type == "function":
                target = (dest.model_extra or {}).get("function")
                if target not in known:
                    problems.append(f"functions.{fname}.async.{key}.function: unknown function {target!r}")
    return problems


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    """Read, interpolate and validate a YAML config file (the model only: `fngate check`
    also asks triggers, destinations and handlers; see configcheck)."""
    from gateway.config.check import check_file

    result = check_file(path, env, load_code=False)
    if result.config is None:
        raise ConfigError(result.errors)
    return result.config
