"""Function runtimes: a Python callable, an HTTP endpoint, a command.

Each runtime runs one invocation and returns the result or raises FunctionError (counted
against max_retries), FunctionTimeout, or TransientError (retried until max_event_age).
Cancellation (a stop request) propagates: the handler task is cancelled, the HTTP request
aborted, the command killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import inspect
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from gateway.config.model import FunctionConfig
from gateway.errors import FunctionError, FunctionTimeout, TransientError
from gateway.observe.redact import redact_url as redact_url  # service.py imports it from here
from gateway.observe.tracing import TraceContext
from gateway.tasks.invocation import Invocation

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What a Python handler gets besides its event."""

    task_id: str
    function: str
    attempt: int
    deadline: float  # loop time (time.monotonic) by which the function must return
    source: dict[str, str]
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = field(repr=False)
    chain: dict[str, Any] = field(default_factory=dict)
    # This execution's span in the caller's trace (tracing.py): the parent of whatever the
    # function does; None when the task came without a trace and none is exported.
    trace: TraceContext | None = None

    def remaining(self) -> float:
        return max(0.0, self.deadline - asyncio.get_running_loop().time())


def task_logger(function: str, task_id: str, attempt: int | None = None) -> logging.LoggerAdapter[logging.Logger]:
    """A logger for one task's function code; task id, function and attempt ride along on
    every record (structured logs, and the task's own log).

    An adapter rather than a child logger: loggers are never freed, one per task would leak.
    """
    extra = {"task_id": task_id, "function": function, "attempt": attempt}
    return logging.LoggerAdapter(logging.getLogger(f"fngate.function.{function}"), extra)


def decode_event(payload: bytes, content_type: str) -> Any:
    """The parsed JSON payload, or the bytes when it is not JSON (or nests too deep to parse)."""
    if not payload:
        return None
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return payload


class Runtime(Protocol):
    async def run(self, inv: Invocation, context: Context) -> Any: ...

    async def close(self) -> None: ...


class PythonRuntime:
    def __init__(self, spec: str) -> None:
        _, module_name, attr = spec.split(":", 2)
        self.spec = spec
        self._module_name = module_name
        self._attr = attr
        self._func: Callable[..., Any] | None = None

    def load(self) -> Callable[..., Any]:
        if self._func is None:
            module = importlib.import_module(self._module_name)
            target: Any = module
            for part in self._attr.split("."):
                target = getattr(target, part)
            if not callable(target):
                raise TypeError(f"{self.spec} is not callable")
            self._func = target
        return self._func

    async def run(self, inv: Invocation, context: Context) -> Any:
        try:
            func = self.load()
        except Exception as exc:
            raise FunctionError(f"cannot load {self.spec}: {type(exc).__name__}: {exc}") from exc
        event = decode_event(inv.payload, inv.content_type)
        try:
            if inspect.iscoroutinefunction(func):
                return await func(event, context)
            return await asyncio.to_thread(func, event, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise FunctionError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        return None


def connection_failure(exc: BaseException) -> str:
    """What happened to the connection, for the task's error: the endpoint unreachable
    (refused, no route), or reset (RST) before it answered, as a killed process or a proxy
    that gave up does. Transient either way: the function gave no answer."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"unreachable: {exc.os_error.strerror}"
    if isinstance(exc, ConnectionResetError) or getattr(exc, "errno", None) == errno.ECONNRESET:
        return "reset the connection before answering"
    return f"unreachable: {type(exc).__name__}"


class HttpRuntime:
    TRANSIENT_STATUS = frozenset({429, 503})

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown_url = redact_url(url)  # for messages: task records and logs never carry secrets
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def run(self, inv: Invocation, context: Context) -> Any:
        headers = {
            "X-Task-Id": inv.task_id,
            "X-Attempt": str(context.attempt),
            "Content-Type": inv.content_type or "application/octet-stream",
        }
        if context.trace is not None:
            headers.update(context.trace.headers())
        try:
            async with self.session().post(self.url, data=inv.payload, headers=headers) as resp:
                body = await resp.read()
                if 200 <= resp.status < 300:
                    return body
                detail = body[:500].decode(errors="replace")
                if resp.status in self.TRANSIENT_STATUS:
                    raise TransientError(f"{self.shown_url} answered {resp.status}: {detail}")
                raise FunctionError(f"{self.shown_url} answered {resp.status}: {detail}")
        except aiohttp.ServerDisconnectedError:
            # Closed before any response (the endpoint died or restarted mid-request): whether
            # the function ran is unknown, and it is the endpoint's failure, not the
            # function's answer. Transient, like connection refused.
            raise TransientError(f"{self.shown_url} closed the connection before answering") from None
        except (aiohttp.ClientConnectionError, ConnectionError) as exc:
            raise TransientError(f"{self.shown_url} {connection_failure(exc)}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _communicate(proc: asyncio.subprocess.Process, payload: bytes) -> tuple[bytes, bytes]:
    """`proc.communicate`, but a command that exits without reading its stdin is not an
    error of ours: asyncio's loop reports that as a broken pipe (which communicate ignores),
    uvloop as a RuntimeError on the closed transport (which it does not)."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin = proc.stdin

    async def feed() -> None:
        try:
            stdin.write(payload)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass
        finally:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
                stdin.close()

    _, stdout, stderr = await asyncio.gather(feed(), proc.stdout.read(), proc.stderr.read())
    await proc.wait()
    return stdout, stderr


class CommandRuntime:
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = env

    async def run(self, inv: Invocation, context: Context) -> Any:
        env = {
            **os.environ,
            **self.env,
            "FNGATE_TASK_ID": inv.task_id,
            "FNGATE_FUNCTION": inv.function,
            "FNGATE_ATTEMPT": str(context.attempt),
            # The environment-variable carriers OpenTelemetry SDKs read.
            **{name.upper(): value for name, value in (context.trace.headers() if context.trace else {}).items()},
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise FunctionError(f"cannot start {self.argv[0]!r}: {exc.strerror}") from None
        try:
            stdout, stderr = await _communicate(proc, inv.payload)
        except BaseException:
            # Timeout or stop: kill the whole process group, not just the direct child.
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass
            await proc.wait()
            raise
        for line in stderr.decode(errors="replace").splitlines():
            context.logger.info(line)
        if proc.returncode != 0:
            tail = stderr.decode(errors="replace").strip()[-500:]
            raise FunctionError(f"exit status {proc.returncode}: {tail}")
        return stdout

    async def close(self) -> None:
        return None


def build_runtime(config: FunctionConfig) -> Runtime:
    if config.handler:
        return PythonRuntime(config.handler)
    if config.url:
        return HttpRuntime(config.url)
    assert config.command is not None
    return CommandRuntime(config.command, config.env)


async def run_with_timeout(runtime: Runtime, inv: Invocation, context: Context, timeout: float) -> Any:
    try:
        return await asyncio.wait_for(runtime.run(inv, context), timeout)
    except TimeoutError:
        raise FunctionTimeout(f"function did not return within {timeout:g}s") from None
