"""Wiring: NATS (embedded or not), streams, workers, triggers and the API, started and
stopped in order. Every replica runs this same process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from gateway.config.model import Config
from gateway.jetstream.embedded import EmbeddedNats
from gateway.jetstream.replicas import ReplicaRegistry
from gateway.jetstream.store import TaskStore, connect
from gateway.observe import tracing
from gateway.pipeline.destinations import Dispatcher
from gateway.pipeline.runtimes import Runtime, build_runtime
from gateway.pipeline.tasklogs import TaskLogs
from gateway.pipeline.worker import DelayScheduler, FunctionWorker, InvalidWorker, TerminalHook
from gateway.supervise import supervised
from gateway.tasks import constants as c
from gateway.tasks.invocation import BatchItem, Invocation, Source
from gateway.tasks.records import Record
from gateway.web.api import add_routes, auth_middleware, errors_middleware
from gateway.web.console import add_console_routes
from gateway.web.keys import BULK, CONFIG, HISTORY, LIVE, SERVICE, STORE, TASK_LOGS, TRIGGER_PATHS, TRIGGERS
from gateway.web.live import LiveStatus
from gateway.web.requests import body_reader

from .bulk import BulkOperations
from .bulk.routes import add_bulk_routes
from .errors import ConfigError, ServiceUnavailable
from .history import TaskHistory
from .service import TaskService
from .tuning import tune_gc

if TYPE_CHECKING:  # triggers load with the config that uses them (build_triggers)
    from triggers.base import Trigger

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Gateway:
    """One gateway process: everything except the HTTP listener."""

    def __init__(self, config: Config, app: web.Application | None = None) -> None:
        self.config = config
        self.app = app
        self.embedded: EmbeddedNats | None = None
        self.nc: NATS | None = None
        self.store: TaskStore | None = None
        self.history: TaskHistory | None = None
        self.history_nc: NATS | None = None
        self.service: TaskService | None = None
        self.runtimes: dict[str, Runtime] = {n: build_runtime(f) for n, f in config.functions.items()}
        self.workers: dict[str, FunctionWorker] = {}
        self.triggers: list[Trigger] = []
        self._loops: list[asyncio.Task[None]] = []
        self.terminal_hooks: list[TerminalHook] = []
        self.dispatcher: Dispatcher | None = None
        self.task_logs: TaskLogs | None = None
        self.servers: list[str] = []
        self.live: LiveStatus | None = None
        self.registry: ReplicaRegistry | None = None
        self.bulk: BulkOperations | None = None

    async def start(self) -> None:
        tracing.configure(self.config.tracing)
        servers = self.config.nats.servers
        if self.config.nats.embedded:
            self.embedded = EmbeddedNats(self.config.nats.data_dir)
            servers = [await self.embedded.start()]
        self.servers = servers
        self.nc = await self._connect(servers)
        store = self.store = TaskStore(self.nc, retention=self.config.max_retention, replicas=self.config.nats.replicas)
        await store.ensure_streams()
        self.dispatcher = Dispatcher(self.config, store, self.submit, replicas=self.config.nats.replicas)
        await self.dispatcher.ensure_stream()
        self.terminal_hooks.append(self.dispatcher.on_terminal)
        self._spawn("destinations", self.dispatcher.run)
        self.task_logs = TaskLogs(store, self.config.max_retention, replicas=self.config.nats.replicas)
        await self.task_logs.ensure_stream()
        self._spawn("function logs", self.task_logs.run)
        await self._start_history(servers)
        assert self.history is not None
        self.service = TaskService(self.config, store, self.history, self.runtimes)
        self.live = LiveStatus(self.nc, self.service.get_task)
        # Announced before any worker starts: no replica may think these functions gone.
        self.registry = ReplicaRegistry(store.js, self.config.functions, replicas=self.config.nats.replicas)
        await self.registry.start()
        self._spawn("replica announcements", self.registry.run)
        for name, function in self.config.functions.items():
            worker = FunctionWorker(
                name,
                function,
                self.runtimes[name],
                store,
                ack_wait=self.config.nats.ack_wait,
                max_chain_depth=self.config.max_chain_depth,
                on_terminal=self._on_terminal,
            )
            worker.task_logs = self.task_logs
            self.workers[name] = worker
            self._spawn(f"worker {name}", worker.run)
        for name in await store.function_consumers():
            if name not in self.config.functions:
                log.info("function %r is not in this config; its tasks end Invalid once no live replica has it", name)
                self._spawn(f"invalidator {name}", InvalidWorker(name, store, self._on_terminal, self.registry).run)
        self._spawn("delay scheduler", DelayScheduler(store).run)
        self.bulk = BulkOperations(self.service, store.js, replicas=self.config.nats.replicas)
        await self.bulk.open()
        self._spawn("bulk operations", self.bulk.run)
        await self.nc.subscribe(f"{c.STOP_SUBJECT}.>", cb=self._on_stop)
        await self._start_triggers()

    async def _start_history(self, servers: list[str]) -> None:
        """The task index: its database, and its feed on a NATS connection of its own."""
        history = self.history = TaskHistory(self.config)
        await history.try_open(timeout=10)
        nc = self.history_nc = await connect(servers, name="fngate-index")
        self._spawn("task index", lambda: history.run(nc, servers))

    async def _connect(self, servers: list[str]) -> NATS:
        delay = 0.5
        while True:
            try:
                return await connect(servers, on_reconnect=self._on_reconnect)
            except Exception as exc:
                log.warning("cannot reach NATS at %s (%s); retrying in %.1fs", ", ".join(servers), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        task = asyncio.create_task(supervised(name, factory), name=name)
        self._loops.append(task)
        return task

    async def _on_reconnect(self) -> None:
        """Every consumer the gateway pulls from is durable: nothing to rebuild. Live status
        reads every watched task again, so changes made while away reach the waiting clients."""
        if self.live is not None:
            self.live.refresh_all()

    async def _on_stop(self, msg: Msg) -> None:
        task_id = msg.subject[len(c.STOP_SUBJECT) + 1 :]
        for worker in self.workers.values():
            if worker.stop_task(task_id):
                log.info("stopping task %s", task_id)

    async def _on_terminal(self, record: Record, inv: Invocation) -> None:
        for hook in self.terminal_hooks:
            await hook(record, inv)

    def build_triggers(self) -> None:
        """Construct triggers before the API router freezes, so http triggers can add routes."""
        if not self.config.triggers:
            return
        from triggers.base import TriggerContext, TriggerStats, trigger_class

        for index, trigger_config in enumerate(self.config.triggers):
            cls = trigger_class(trigger_config.type, f"triggers.{trigger_config.name or index}")
            context = TriggerContext(
                submit=self.submit,
                submit_many=self.submit_many,
                invoke_sync=self.invoke_sync,
                add_route=self._add_route,
                read_body=body_reader(self.config.api.body_read_timeout),
                data_dir=self.config.nats.data_dir,
                max_request_body=self.config.api.max_request_body,
                max_chain_depth=self.config.max_chain_depth,
                stats=TriggerStats(),
                nats_servers=lambda: list(self.servers),
                max_task_payload=lambda: self.store.max_task_payload() if self.store is not None else 0,
            )
            self.triggers.append(cls(trigger_config, context))

    async def submit(self, function: str, payload: bytes, **options: Any) -> str:
        if self.service is None:
            raise ServiceUnavailable("the gateway is starting")
        return await self.service.submit(function, payload, **options)

    async def submit_many(
        self,
        function: str,
        items: Sequence[BatchItem],
        *,
        source: Source,
        priority: str = "normal",
        keys: Sequence[str] | None = None,
    ) -> list[Exception | None]:
        if self.service is None:
            raise ServiceUnavailable("the gateway is starting")
        return await self.service.submit_many(function, items, source=source, priority=priority, keys=keys)

    async def invoke_sync(self, function: str, payload: bytes, **options: Any) -> tuple[bytes, str]:
        if self.service is None:
            raise ServiceUnavailable("the gateway is starting")
        return await self.service.invoke_sync(function, payload, **options)

    async def _start_triggers(self) -> None:
        for trigger in self.triggers:
            await trigger.start()

    def _add_route(self, method: str, path: str, handler: Handler) -> None:
        if self.app is None:
            raise ConfigError([f"http trigger at {path}: no API server in this process"])
        self.app.router.add_route(method, path, handler)
        self.app[TRIGGER_PATHS].add(path)

    async def close(self) -> None:
        for trigger in reversed(self.triggers):
            with contextlib.suppress(Exception):
                await trigger.stop()
        for loop in self._loops:
            loop.cancel()
        # Bounded: a stuck loop must not keep the process (and its nats-server child) alive.
        await asyncio.wait(self._loops, timeout=5)
        if self.registry is not None:
            await self.registry.close()  # gone at once, rather than after its TTL
        for runtime in self.runtimes.values():
            await runtime.close()
        if self.dispatcher is not None:
            await self.dispatcher.close()
        if self.task_logs is not None:
            with contextlib.suppress(Exception):
                await self.task_logs.flush_once()
            self.task_logs.close()
        for nc in (self.history_nc,):
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
        if self.history is not None:
            await self.history.close()
        if self.nc is not None:
            # Loops are stopped, so there is nothing to drain: flush what was published, close.
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.embedded is not None:
            await self.embedded.stop()
        await asyncio.to_thread(tracing.shutdown)  # sends the spans still buffered


def create_app(config: Config) -> web.Application:
    app = web.Application(
        client_max_size=config.api.max_request_body,
        # Without tokens there is nothing to check (and serve listens on loopback only).
        middlewares=[errors_middleware, auth_middleware(config)] if config.api.tokens else [errors_middleware],
    )
    app[CONFIG] = config
    app[TRIGGER_PATHS] = set()
    add_routes(app)
    add_bulk_routes(app)
    add_console_routes(app)
    gateway = Gateway(config, app)
    gateway.build_triggers()
    app[TRIGGERS] = gateway.triggers

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await gateway.start()
        assert gateway.service is not None and gateway.store is not None
        app[SERVICE] = gateway.service
        app[STORE] = gateway.store
        assert gateway.task_logs is not None
        app[TASK_LOGS] = gateway.task_logs
        assert gateway.live is not None
        app[LIVE] = gateway.live
        assert gateway.bulk is not None
        app[BULK] = gateway.bulk
        assert gateway.history is not None
        app[HISTORY] = gateway.history
        tune_gc()
        yield
        await gateway.close()

    app.cleanup_ctx.append(lifecycle)
    return app
