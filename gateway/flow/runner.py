"""The worker side of flow control, in every replica: runs what the leader admitted.

Tasks arrive over core NATS on this replica's own subject, many to a message (handover.py),
each with the reply subject of the leader's JetStream delivery; the worker handles it as if
it had pulled it, so acks, heartbeats and retries work as for any task. When the handling
ends the grant is reported done (the ends close together in one message); every ack_wait/3
the grants still running are reported, which keeps them alive at the leader (and tells a
new leader what runs and which replicas there are).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from . import handover, stats
from . import names as n

if TYPE_CHECKING:
    from gateway.pipeline.worker import FunctionWorker

    from .leader import FlowLeader

log = logging.getLogger(__name__)
# Ends of grants are gathered this long while the runner holds many (a slot freed a moment
# later among many costs little; one done message per task cost the leader a parse each).
# Holding few, every end is reported in the loop turn it happened: a slot of a function
# with little concurrency is worth more than a message.
DONE_GATHER = 0.003
GATHER_FROM = 8


class FlowRunner:
    def __init__(self, worker: FunctionWorker, replica: str) -> None:
        self.replica = replica
        self.leader: FlowLeader | None = None  # this replica's, for grants handed over in-process
        self.worker = worker
        self.fn = worker.name
        self.nc = worker.store.nc
        self.interval = max(0.5, worker.ack_wait / 3)
        self.held: dict[str, tuple[str, str]] = {}  # grant id -> (task id, key hash)
        self._reports: set[asyncio.Task[Any]] = set()
        self._ended: list[str] = []  # grants ended since the last done report
        self._reported_at = 0.0  # loop time of the last done report

    async def run(self) -> None:
        subs = [
            await self.nc.subscribe(n.run_subject(self.fn, self.replica), cb=self._on_run),
            await self.nc.subscribe(f"{n.STATS_SUBJECT}.{self.fn}", cb=self._on_stats),
        ]
        try:
            while True:
                await asyncio.sleep(self.interval)
                # Also when holding nothing: the leader counts the live replicas by it.
                grants = [[grant, task_id, khash] for grant, (task_id, khash) in self.held.items()]
                report = {"replica": self.replica, "grants": grants}
                with contextlib.suppress(Exception):
                    await self.nc.publish(f"{n.HOLD_SUBJECT}.{self.fn}", json.dumps(report).encode())
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _on_run(self, msg: Msg) -> None:
        try:
            for task in handover.decode(msg.data):
                delivery = Msg(self.nc, subject=task.subject, reply=task.reply, data=task.data, headers=task.headers)
                self.start(delivery, task.grant, task.khash)
        except (ValueError, UnicodeDecodeError) as exc:
            # Not ours or damaged: what was not started is redelivered by JetStream after
            # ack_wait, and its grant expires at the leader.
            log.error("unreadable flow hand-over on %s: %s", msg.subject, exc)

    def start(self, delivery: Msg, grant: str, khash: str) -> None:
        """Handle a delivery the leader admitted (handed over by NATS, or in-process)."""
        if grant:
            task_id = (delivery.headers or {}).get("Fngate-Invocation", "").split("|", 2)[1:2]
            self.held[grant] = (task_id[0] if task_id else "", khash)
        task = self.worker.tasks.start(self.worker._handle(delivery, holds_slot=False))
        if grant:
            task.add_done_callback(lambda _: self._done(grant))

    def _done(self, grant: str) -> None:
        """Report the grant's end, with the others that end close to it (see DONE_GATHER)."""
        self.held.pop(grant, None)
        if self.leader is not None and self.leader.release_local(grant):
            return
        self._ended.append(grant)
        if len(self._ended) == 1:
            loop = asyncio.get_running_loop()
            wait = self._reported_at + DONE_GATHER - loop.time()
            if wait > 0 and len(self.held) >= GATHER_FROM:
                loop.call_later(wait, self._report_done)
            else:
                loop.call_soon(self._report_done)

    def _report_done(self) -> None:
        ended, self._ended = self._ended, []
        self._reported_at = asyncio.get_running_loop().time()
        report = asyncio.create_task(self.nc.publish(f"{n.DONE_SUBJECT}.{self.fn}", " ".join(ended).encode()))
        self._reports.add(report)
        report.add_done_callback(self._reports.discard)

    async def _on_stats(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError):
            stats.record(self.fn, json.loads(msg.data))
