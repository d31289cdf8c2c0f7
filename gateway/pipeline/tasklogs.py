"""Function logs, kept per task in JetStream and readable from any replica.

What a handler writes through `context.logger` (and a command's stderr) is captured by a
logging handler, buffered per task, and published in batches to `fngate.logs.{task_id}`
(stream FNGATE_LOGS, retention as the tasks'): every 0.5 s while the task runs, and once
more when the attempt ends. A task keeps at most MAX_LINES lines and MAX_BYTES bytes; what
comes after is dropped and the log marked truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.js.errors import APIError

from gateway.jetstream import streams
from gateway.jetstream.errors import not_found
from gateway.jetstream.store import TaskStore
from gateway.supervise import Background, cancel_requested
from gateway.tasks import constants as c
from gateway.tasks.invocation import iso

log = logging.getLogger(__name__)
MAX_LINES = 1000
MAX_BYTES = 64 * 1024
MAX_LINE = 4096
FLUSH_INTERVAL = 0.5
KEEPALIVE_EVERY = 30  # quiet follow turns (of FLUSH_INTERVAL) between keep-alive writes
FUNCTION_LOGGER = "fngate.function"


@dataclass
class Buffer:
    attempt: int = 0
    lines: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0
    size: int = 0
    truncated: bool = False


class TaskLogs(logging.Handler):
    def __init__(self, store: TaskStore, retention: float, replicas: int = 1) -> None:
        super().__init__(logging.DEBUG)
        self.store = store
        self.retention = retention
        self.replicas = replicas
        self._buffers: dict[str, Buffer] = {}
        self._lock = threading.Lock()  # plain handlers log from the thread pool
        self._finished: list[str] = []
        self._flushes = Background()

    async def ensure_stream(self) -> None:
        await streams.ensure_stream(self.store.js, streams.logs_stream(self.retention, self.replicas))
        logging.getLogger(FUNCTION_LOGGER).addHandler(self)

    def close(self) -> None:
        logging.getLogger(FUNCTION_LOGGER).removeHandler(self)
        super().close()

    # logging.Handler: called from the event loop or a worker thread
    def emit(self, record: logging.LogRecord) -> None:
        task_id = getattr(record, "task_id", None)
        if not task_id:
            return
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        message = message[:MAX_LINE]
        line = {
            "at": iso(record.created),
            "level": record.levelname.lower(),
            "message": message,
            "attempt": getattr(record, "attempt", None),
        }
        cost = len(message) + 64
        with self._lock:
            buffer = self._buffers.setdefault(task_id, Buffer())
            if buffer.truncated:
                return
            if buffer.count >= MAX_LINES or buffer.size + cost > MAX_BYTES:
                buffer.truncated = True
                buffer.lines.append({"at": line["at"], "level": "warning", "message": "[log truncated]"})
                return
            buffer.count += 1
            buffer.size += cost
            buffer.lines.append(line)

    def finish(self, task_id: str) -> None:
        """The attempt ended: flush its lines now (from the loop) and forget the buffer after."""
        with self._lock:
            self._finished.append(task_id)
        with contextlib.suppress(RuntimeError):
            self._flushes.start(self.flush_once())

    async def run(self) -> None:
        while not cancel_requested():
            await asyncio.sleep(FLUSH_INTERVAL)
            await self.flush_once()

    async def flush_once(self) -> None:
        with self._lock:
            batches = {task_id: buf.lines for task_id, buf in self._buffers.items() if buf.lines}
            for task_id in batches:
                self._buffers[task_id].lines = []
            finished, self._finished = self._finished, []
            for task_id in finished:
                buffer = self._buffers.get(task_id)
                if buffer is not None and not buffer.lines:
                    del self._buffers[task_id]
        for task_id, lines in batches.items():
            body = json.dumps({"lines": lines}, separators=(",", ":")).encode()
            try:
                await self.store.nc.publish(f"{c.LOGS_SUBJECT}.{task_id}", body)
            except Exception as exc:
                log.warning("could not keep function logs of %s: %s", task_id, exc)

    async def read(self, task_id: str, after_seq: int = 0) -> tuple[list[dict[str, Any]], int, bool]:
        """Lines stored for a task after stream sequence `after_seq`: (lines, last seq, truncated)."""
        lines: list[dict[str, Any]] = []
        seq = after_seq
        truncated = False
        subject = f"{c.LOGS_SUBJECT}.{task_id}"
        while True:
            try:
                msg = await self.store.js.get_msg(c.LOGS_STREAM, seq=seq + 1, subject=subject, next=True, direct=True)
            except APIError as exc:
                if not_found(exc):
                    break
                raise
            if not msg.seq or msg.seq <= seq:
                break
            seq = msg.seq
            batch = json.loads(msg.data or b"{}").get("lines", [])
            truncated = truncated or any(line.get("message") == "[log truncated]" for line in batch)
            lines.extend(batch)
        return lines, seq, truncated

    async def follow(
        self, task_id: str, finished: Any, gone: Callable[[], bool] = lambda: False
    ) -> AsyncIterator[dict[str, Any] | None]:
        """Existing lines, then new ones as they arrive, until `finished()` says the task ended
        or `gone()` says nobody listens any more. Yields None after KEEPALIVE_EVERY quiet
        turns: the caller writes something, which fails on a closed connection."""
        seq = 0
        quiet = 0
        while not gone():
            lines, seq, _ = await self.read(task_id, seq)
            for line in lines:
                yield line
            quiet = 0 if lines else quiet + 1
            if quiet >= KEEPALIVE_EVERY:
                quiet = 0
                yield None
            if await finished():
                lines, seq, _ = await self.read(task_id, seq)
                for line in lines:
                    yield line
                return
            await asyncio.sleep(FLUSH_INTERVAL)
