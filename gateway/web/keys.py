"""What the application object carries, as typed keys declared once, here at the bottom of
web/: app.py sets them, the route modules read them, and no route module has to import
another (or app.py) to find a key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.bulk.operations import BulkOperations
    from gateway.config.model import Config
    from gateway.history import TaskHistory
    from gateway.jetstream.store import TaskStore
    from gateway.pipeline.tasklogs import TaskLogs
    from gateway.service import TaskService
    from gateway.web.live import LiveStatus
    from gateway.web.sse import StreamLimiter
    from triggers.base import Trigger

CONFIG: web.AppKey[Config] = web.AppKey("config")
# Set when the gateway has started (the app's cleanup context): the routes run only after.
SERVICE: web.AppKey[TaskService] = web.AppKey("service")
STORE: web.AppKey[TaskStore] = web.AppKey("store")
HISTORY: web.AppKey[TaskHistory] = web.AppKey("history")
TASK_LOGS: web.AppKey[TaskLogs] = web.AppKey("task_logs")
LIVE: web.AppKey[LiveStatus] = web.AppKey("live")
BULK: web.AppKey[BulkOperations] = web.AppKey("bulk")
# Built with the app, before it starts: /readyz and /v1/triggers list them from the start.
TRIGGERS: web.AppKey[Sequence[Trigger]] = web.AppKey("triggers")
# The webhook paths of http triggers, for the OpenAPI document.
TRIGGER_PATHS: web.AppKey[set[str]] = web.AppKey("trigger_paths")
LIMITER: web.AppKey[StreamLimiter] = web.AppKey("stream_limiter")
