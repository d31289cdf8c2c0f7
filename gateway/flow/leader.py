"""The flow leader of one function: the one replica that pulls its queue and admits tasks.

Elected through FNGATE_FLOW_LEADERS: a single message on `fngate.flow.leader.{fn}`, written
with a compare-and-set on the subject's last sequence (0 = nobody leads) and renewed every
ack_wait/3; the stream's max_age (= ack_wait) ages out a crashed leader's claim.

While leading, it pulls the function's consumer (max_ack_pending = concurrency + window)
and keeps what waits in memory (heartbeating each message with in_progress() so JetStream
does not hand it out again); beyond the caps it parks tasks on FNGATE_FLOW and acks them.
It admits with Admission (key limits, priority, round robin, rate) and hands each admitted
message to the replica running the fewest grants (in-process when that is this one; else
over core NATS, one message per replica and admission turn), with a grant id. The runner acks the
JetStream message itself and reports the grant's end (done) and, every ack_wait/3, the
grants it still runs (hold): a grant nobody reports for ack_wait is freed, so a crashed
replica leaks no key slot for longer than that. A new leader first listens for one report
round to learn what runs already.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError

from gateway.errors import FngateError
from gateway.jetstream.errors import wrong_last_sequence
from gateway.jetstream.puller import Puller
from gateway.supervise import Background, cancel_requested
from gateway.tasks import constants as c
from gateway.tasks.invocation import Invocation

from . import handover
from . import names as n
from .admission import Admission, Group, Waiter
from .limits import PRIORITIES, parse_rate

if TYPE_CHECKING:
    from gateway.pipeline.worker import FunctionWorker

    from .runner import FlowRunner

WINDOW = 2000  # waiting tasks a leader keeps in memory; the rest is parked
GROUP_CAP = 64  # of which one (priority, key) group holds at most this many
PARK_FETCH_EXPIRES = 1.0
RANKS = {priority: rank for rank, priority in enumerate(PRIORITIES)}


class LeadershipLost(FngateError):
    code = "LeadershipLost"


@dataclass(slots=True)
class Grant:
    khash: str
    task_id: str
    expires: float  # monotonic
    replica: str  # the one running it


class FlowLeader:
    def __init__(self, worker: FunctionWorker, replica: str, runner: FlowRunner | None = None) -> None:
        self.worker = worker
        self.fn = worker.name
        self.config = worker.config
        self.store = worker.store
        self.nc = worker.store.nc
        self.js = worker.store.js
        self.ack_wait = worker.ack_wait
        self.interval = max(0.5, self.ack_wait / 3)
        self.replica = replica
        self.log = logging.getLogger(f"fngate.flow.{self.fn}")
        self._token = secrets.token_hex(4)
        self._ids = itertools.count()
        self._tasks = Background()
        self.adm = self._new_admission()
        self.grants: dict[str, Grant] = {}
        self.by_task: dict[str, str] = {}
        self.released: dict[str, float] = {}
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._park_pullers: dict[Group, Puller] = {}
        self._park_consumers: set[Group] = set()
        self._leading = False
        self.runner = runner  # this replica's runner: a share of the tasks is handed over in-process
        # Catching up: reading the whole queue (parking beyond memory) until nothing is left
        # unread, because a high or low task was enqueued (or leadership just began, and one
        # may have been while nobody listened). See _deep().
        self._catch_up = False
        self._hints = 0
        self._more = asyncio.Event()
        self.replicas: dict[str, float] = {}  # replica -> when it last reported (monotonic)
        self.load: dict[str, int] = {}  # replica -> open grants it runs

    def _new_admission(self) -> Admission:
        rate = parse_rate(self.config.rate_limit) if self.config.rate_limit else None
        return Admission(
            concurrency=self.config.concurrency,
            key_limit=self.config.key_concurrency,
            rate=rate,
            now=time.time(),
            group_cap=GROUP_CAP,
            window=WINDOW,
        )

    # --- election ----------------------------------------------------------------------
    @property
    def leader_subject(self) -> str:
        return f"{n.LEADER_SUBJECT}.{self.fn}"

    async def _claim(self, expected: int) -> int | None:
        """Write our claim if the subject is still at `expected`; None when someone else holds it."""
        try:
            return await self.store.publisher.publish(
                self.leader_subject, self.replica.encode(), {c.H_EXPECTED_LAST_SUBJECT_SEQ: str(expected)}
            )
        except APIError as exc:
            if wrong_last_sequence(exc):
                return None
            raise

    async def run(self) -> None:
        while not cancel_requested():
            try:
                seq = await self._claim(0)
            except Exception as exc:
                self.log.debug("flow leader election: %s", exc)
                seq = None
            if seq is None:
                await asyncio.sleep(self.interval)
                continue
            self.log.info("this replica leads the flow of function %s", self.fn)
            try:
                await self._lead(seq)
            except LeadershipLost:
                self.log.warning("flow leadership of %s lost; another replica takes over", self.fn)
            except Exception as exc:
                # JetStream away for a moment (a node restart): the claim was given up, try again.
                self.log.warning("flow leader of %s stepped down: %s", self.fn, exc)
                await asyncio.sleep(self.interval)

    # --- leading -----------------------------------------------------------------------
    async def _lead(self, seq: int) -> None:
        self.adm = self._new_admission()
        self.grants.clear()
        self.by_task.clear()
        self.load.clear()
        self._catch_up = True
        self._park_consumers.clear()  # an earlier leader may have removed some since
        self._leading = True
        subs: list[Subscription] = [
            await self.nc.subscribe(f"{n.DONE_SUBJECT}.{self.fn}", cb=self._on_done),
            await self.nc.subscribe(f"{n.HOLD_SUBJECT}.{self.fn}", cb=self._on_hold),
            await self.nc.subscribe(f"{c.PRIORITY_SUBJECT}.{self.fn}", cb=self._on_priority),
        ]
        intake = Puller(self.nc, c.TASKS_STREAM, f"{c.FUNCTION_CONSUMER_PREFIX}{self.fn}", self._on_intake)
        loops: list[asyncio.Task[None]] = []
        graceful = True
        try:
            # What runs already (a leader before us granted it): one report round.
            await asyncio.sleep(self.interval * 1.2)
            await self._load_parked()
            await intake.start()
            loops = [
                asyncio.create_task(self._keep(seq)),
                asyncio.create_task(self._pull(intake)),
                asyncio.create_task(self._heartbeats()),
                asyncio.create_task(self._broadcast()),
            ]
            self._schedule()
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if isinstance(task.exception(), LeadershipLost):
                    graceful = False
                task.result()
        finally:
            self._leading = False
            for task in loops:
                task.cancel()
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            await intake.close()
            for puller in self._park_pullers.values():
                await puller.close()
            self._park_pullers.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            await asyncio.shield(self._hand_back(graceful))

    async def _hand_back(self, graceful: bool) -> None:
        """Give the waiting tasks back (nak: the next leader gets them at once), and the
        leadership too when stepping down on purpose (shutdown)."""
        with contextlib.suppress(Exception):
            await asyncio.gather(*(w.msg.nak() for w in self.adm.waiters()), return_exceptions=True)
        if graceful:
            with contextlib.suppress(Exception):
                await self.js.purge_stream(n.LEADERS_STREAM, subject=self.leader_subject)

    async def _keep(self, seq: int) -> None:
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.interval)
            try:
                renewed = await self._claim(seq)
            except Exception as exc:
                if time.monotonic() - last_ok > self.ack_wait * 0.8:
                    raise LeadershipLost() from exc
                continue
            if renewed is None:
                raise LeadershipLost()
            seq, last_ok = renewed, time.monotonic()

    async def _pull(self, intake: Puller) -> None:
        while True:
            want = 256 if self._deep() else self._wanted()
            if want <= 0:
                self._more.clear()
                await self._more.wait()
                continue
            hints = self._hints
            unused = await intake.pull(min(256, want))
            if unused and self._hints == hints:
                # The request ended short: the consumer had nothing more to deliver, so
                # every task enqueued before it was read.
                self._catch_up = False

    def _deep(self) -> bool:
        """Whether to read the whole queue, not only what can start soon: priority must order
        all of it. A high task still unread in the stream must start before the normal ones
        held here (the submit's hint says one is there); a low task held here must not start
        before an unread normal one. Without either, stream order is priority order."""
        return self._catch_up or self.adm.holds_rank(len(PRIORITIES) - 1)

    async def _on_priority(self, msg: Msg) -> None:
        self._hints += 1
        if not self._catch_up:
            self._catch_up = True
            self._more.set()

    def _wanted(self) -> int:
        """Enough to fill the free slots and as many again ready to start; tasks whose key is
        full do not count, so the leader reads past them (fairness). The rest of a backlog
        stays in the stream, where waiting costs nothing."""
        concurrency = self.config.concurrency
        free = concurrency - self.adm.total_running
        return free + concurrency - self.adm.runnable()

    # --- what arrives ------------------------------------------------------------------
    def _on_intake(self, msg: Msg, counted: bool) -> None:
        if self._catch_up:
            with contextlib.suppress(Exception):
                if msg.metadata.num_pending == 0:  # the last one there was (hints come after their task)
                    self._catch_up = False
        self._arrived(msg, parked=False)

    def _on_parked(self, msg: Msg, counted: bool) -> None:
        self._arrived(msg, parked=True)

    def _arrived(self, msg: Msg, *, parked: bool) -> None:
        if not self._leading:
            self._spawn(msg.nak())
            return
        headers = msg.headers or {}
        try:
            task_id, scheduled_at, not_before, priority, key = Invocation.flow(headers)
        except (KeyError, ValueError, IndexError) as exc:
            self.log.error("dropping an unreadable message on %s: %s", msg.subject, exc)
            self._spawn(msg.term())
            return
        earlier = self.by_task.get(task_id)
        if earlier is not None:
            # The task is back while a grant for it is open: its holder finished or lost it.
            self._release(earlier)
        key = key if self.config.key_concurrency else ""
        rank = RANKS.get(priority, 1)
        waiter = Waiter(msg, task_id, n.key_hash(key) if key else "", rank, scheduled_at, time.monotonic())
        now = time.time()
        if parked:
            self.adm.take_parked((rank, waiter.key))
        if not_before > now + 0.01 or self._expired(waiter, now):
            # Not due yet (the worker parks it on the delay stream) or past max_event_age
            # (the worker ends it Expired): neither takes a slot, a key or a token.
            self._send([waiter], granted=False)
            return
        if not parked and self.adm.should_park((rank, waiter.key)):
            self.adm.add_parked((rank, waiter.key))
            self._spawn(self._park(waiter))
            return
        self.adm.add(waiter)
        self._schedule()

    def _expired(self, waiter: Waiter, now: float) -> bool:
        return now - waiter.scheduled_at > self.config.async_.max_event_age

    # --- admission ---------------------------------------------------------------------
    def _schedule(self) -> None:
        if not self._scheduled and self._leading:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._admit)

    def _wake(self) -> None:
        self._timer = None
        self._schedule()

    def _admit(self) -> None:
        self._scheduled = False
        if not self._leading:
            return
        result = self.adm.admit(time.time())
        self._more.set()
        if result.starts:
            self._send(result.starts, granted=True)
        for group in result.fetch:
            self._spawn(self._fetch(group))
        if result.rate_wait is not None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(max(0.001, result.rate_wait), self._wake)

    def _send(self, waiters: list[Waiter], *, granted: bool) -> None:
        """Hand tasks to runners: each granted one to the live replica running the fewest
        (this one on a tie: in-process, no hop), the others' in one message per replica."""
        batches: dict[str, list[handover.Handed]] = {}
        deadline = time.monotonic() + self.ack_wait
        live = self._live_replicas() if granted else []
        for waiter in waiters:
            grant, target = "", self.replica
            if granted:
                grant = f"{self._token}-{next(self._ids):x}"
                target = min(live, key=lambda r: self.load.get(r, 0))
                self.grants[grant] = Grant(waiter.key, waiter.task_id, deadline, target)
                self.by_task[waiter.task_id] = grant
                self.load[target] = self.load.get(target, 0) + 1
            if target == self.replica and self.runner is not None:
                self.runner.start(waiter.msg, grant, waiter.key)
                continue
            headers = {k: v for k, v in (waiter.msg.headers or {}).items() if not k.startswith("Nats-")}
            task = handover.Handed(waiter.msg.reply, waiter.msg.subject, grant, waiter.key, headers, waiter.msg.data)
            batches.setdefault(target, []).append(task)
        if batches:
            self._spawn(self._publish(batches))

    def _live_replicas(self) -> list[str]:
        """This replica first, then those whose last hold report is recent (one is sent every
        interval, so two missed means gone: a replica's tasks are not sent into the void for long)."""
        since = time.monotonic() - 2.2 * self.interval
        return [self.replica, *(r for r, at in self.replicas.items() if r != self.replica and at > since)]

    def release_local(self, grant_id: str) -> bool:
        """A grant handed over in-process ended; False when it is not ours (leadership moved)."""
        if not self._leading or not grant_id.startswith(self._token):
            return False
        self._release(grant_id)
        return True

    async def _publish(self, batches: dict[str, list[handover.Handed]]) -> None:
        for replica, tasks in batches.items():
            await self.nc.publish(n.run_subject(self.fn, replica), handover.encode(tasks))

    def _release(self, grant_id: str) -> None:
        grant = self.grants.pop(grant_id, None)
        if grant is None:
            return
        if self.by_task.get(grant.task_id) == grant_id:
            del self.by_task[grant.task_id]
        self.released[grant_id] = time.monotonic()
        self.load[grant.replica] = self.load.get(grant.replica, 1) - 1
        self.adm.finished(grant.khash)
        self._more.set()
        self._schedule()

    async def _on_done(self, msg: Msg) -> None:
        for grant_id in msg.data.decode().split():
            self._release(grant_id)

    async def _on_hold(self, msg: Msg) -> None:
        try:
            report = json.loads(msg.data)
            held = report["grants"]
            replica = str(report["replica"])
        except (ValueError, KeyError, TypeError):
            return
        self.replicas[replica] = time.monotonic()
        deadline = time.monotonic() + self.ack_wait
        for grant_id, task_id, khash in held:
            grant = self.grants.get(grant_id)
            if grant is not None:
                grant.expires = deadline
            elif grant_id not in self.released:
                # Granted by an earlier leader and still running: it counts here too.
                self.grants[grant_id] = Grant(khash, task_id, deadline, replica)
                self.by_task[task_id] = grant_id
                self.load[replica] = self.load.get(replica, 0) + 1
                self.adm.started(khash)

    async def _heartbeats(self) -> None:
        """Keep the waiting messages claimed, free grants nobody reports, end the too old."""
        while True:
            await asyncio.sleep(self.interval / 2)
            mono, now = time.monotonic(), time.time()
            due = mono - self.interval  # renewed at most every interval, never later than 1.5 x
            beats: list[Coroutine[Any, Any, None]] = []
            expired: list[Waiter] = []
            for waiter in self.adm.waiters():
                if self._expired(waiter, now):
                    expired.append(waiter)
                elif waiter.renewed <= due:
                    waiter.renewed = mono
                    beats.append(waiter.msg.in_progress())
            for waiter in expired:
                if self.adm.remove(waiter):
                    self._send([waiter], granted=False)
            for grant_id, grant in list(self.grants.items()):
                if grant.expires < mono:
                    self.log.warning(
                        "grant for task %s not reported for %.0fs: its slot is freed", grant.task_id, self.ack_wait
                    )
                    self._release(grant_id)
            for grant_id, at in list(self.released.items()):
                if at < mono - 2 * self.ack_wait:
                    del self.released[grant_id]
            if beats:
                await asyncio.gather(*beats, return_exceptions=True)

    async def _broadcast(self) -> None:
        subject = f"{n.STATS_SUBJECT}.{self.fn}"
        while True:
            stats = {
                "leader": self.replica,
                "running": self.adm.total_running,
                "waiting": self.adm.waiting_by_reason(time.time()),
                "parked": sum(self.adm.parked.values()),
            }
            with contextlib.suppress(Exception):
                await self.nc.publish(subject, json.dumps(stats).encode())
            await asyncio.sleep(1.0)

    # --- parking -----------------------------------------------------------------------
    async def _park(self, waiter: Waiter) -> None:
        group = (waiter.rank, waiter.key)
        headers = {k: v for k, v in (waiter.msg.headers or {}).items() if not k.startswith("Nats-")}
        try:
            await self._ensure_park_consumer(group)
            await self.store.publisher.publish(n.park_subject(self.fn, *group), waiter.msg.data, headers)
        except Exception as exc:
            # Not parked: it waits in memory instead, over the cap, rather than be lost.
            self.log.warning("could not park task %s (%s); it waits in memory", waiter.task_id, exc)
            self.adm.take_parked(group)
            self.adm.add(waiter)
            self._schedule()
            return
        await waiter.msg.ack()

    async def _ensure_park_consumer(self, group: Group) -> None:
        if group in self._park_consumers:
            return
        rank, khash = group
        await self.js.add_consumer(
            n.FLOW_STREAM,
            ConsumerConfig(
                durable_name=n.park_consumer(self.fn, rank, khash),
                filter_subject=n.park_subject(self.fn, rank, khash),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.ack_wait,
                max_ack_pending=-1,
                max_deliver=-1,
            ),
        )
        self._park_consumers.add(group)

    async def _fetch(self, group: Group) -> None:
        try:
            count = min(GROUP_CAP, self.adm.parked.get(group, 0))
            if not count:
                return
            puller = self._park_pullers.get(group)
            if puller is None:
                await self._ensure_park_consumer(group)
                puller = Puller(
                    self.nc, n.FLOW_STREAM, n.park_consumer(self.fn, *group), self._on_parked, PARK_FETCH_EXPIRES
                )
                await puller.start()
                self._park_pullers[group] = puller
            await puller.pull(count)
        except Exception as exc:
            self.log.warning("could not fetch parked tasks of %s: %s", group, exc)
            await asyncio.sleep(self.interval)
        finally:
            self.adm.fetched(group)
            self._schedule()

    async def _load_parked(self) -> None:
        """Tasks parked by an earlier leader: counted by subject, their consumers reused;
        consumers of groups with nothing parked are removed."""
        prefix = f"{n.PARK_SUBJECT}.{self.fn}."
        info = await self.js.stream_info(n.FLOW_STREAM, subjects_filter=f"{prefix}>")
        counts = info.state.subjects or {}
        for subject, count in counts.items():
            rank_text, _, khash = subject[len(prefix) :].partition(".")
            group = (int(rank_text), "" if khash == "_" else khash)
            self.adm.add_parked(group, count)
        with contextlib.suppress(Exception):
            for consumer in await self.js.consumers_info(n.FLOW_STREAM):
                name = consumer.name or ""
                subject = consumer.config.filter_subject or ""
                if name.startswith(f"park-{self.fn}-") and subject not in counts:
                    await self.js.delete_consumer(n.FLOW_STREAM, name)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.start(coro)
