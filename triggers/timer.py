"""The timer trigger: cron (6 fields with seconds, or 5), `every: 30s` or `at: <ISO time>`.

Every replica runs the schedule, and every tick's task id is derived from the trigger name
and the tick's scheduled time, so the first replica's submit creates the task and the
others get DuplicateTask: one task per tick across the deployment.

`misfire: run_once` catches up after downtime: the last tick fired is kept in a small file
under data_dir, and at start (and after an outage of NATS) the latest tick missed since
then is fired once, under its own deterministic id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.executors.base import BaseExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger as Schedule
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import Field, JsonValue, field_validator, model_validator

from gateway.config.model import Duration, TriggerConfig
from gateway.supervise import Background
from gateway.tasks.invocation import iso

from .base import BaseTrigger, TriggerContext, TriggerOptions, TriggerState, parse_options

log = logging.getLogger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Catch-up looks back through ever wider windows and stops at the first that holds a tick,
# so even a per-second schedule after a week of downtime costs a handful of steps.
LOOKBACK_WINDOWS = (1, 60, 3600, 86400, 31 * 86400, 366 * 86400, 10 * 366 * 86400)
ONE_MICROSECOND = timedelta(microseconds=1)


class TimerOptions(TriggerOptions):
    cron: str | None = None
    every: Duration | None = Field(default=None, ge=0.1)
    at: datetime | None = None
    timezone: str = "UTC"
    payload: JsonValue = Field(default_factory=dict)
    misfire: Literal["skip", "run_once"] = "skip"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Berlin)") from None
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None:
            cron_schedule(value, ZoneInfo("UTC"))
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> TimerOptions:
        given = [k for k in ("cron", "every", "at") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("exactly one of cron, every, at must be set")
        return self

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron}"
        if self.every is not None:
            return f"every {self.every:g}s"
        return f"at {self.at}"

    def schedule(self) -> Schedule:
        zone = ZoneInfo(self.timezone)
        if self.cron is not None:
            return cron_schedule(self.cron, zone)
        if self.every is not None:
            # Anchored at the epoch, not at start-up: every replica computes the same ticks.
            return IntervalTrigger(seconds=self.every, start_date=EPOCH, timezone=zone)
        assert self.at is not None
        at = self.at if self.at.tzinfo else self.at.replace(tzinfo=zone)
        return DateTrigger(run_date=at, timezone=zone)


def cron_schedule(expression: str, zone: ZoneInfo) -> CronTrigger:
    """6 fields (second minute hour day month weekday) or 5 (no seconds); `?` means any.

    Weekday numbers follow cron (0 and 7 are Sunday); they are turned into names because
    APScheduler 3 counts from Monday.
    """
    fields = expression.replace("?", "*").split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ValueError(f"cron needs 6 fields (with seconds) or 5, got {len(fields)}: {expression!r}")
    second, minute, hour, day, month, weekday = fields
    try:
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=weekday_names(weekday),
            timezone=zone,
        )
    except ValueError as exc:
        raise ValueError(f"invalid cron {expression!r}: {exc}") from None


def weekday_names(field: str) -> str:
    """`1-5` -> `mon,tue,wed,thu,fri`; `*/2` -> `sun,tue,thu,sat`; names and `*` pass through."""
    items: list[str] = []
    for item in field.lower().split(","):
        match = re.fullmatch(r"(\*|\d)(?:-(\d))?(?:/(\d+))?", item)
        if match is None or (match.group(1) == "*" and match.group(3) is None):
            items.append(item)
            continue
        start = 0 if match.group(1) == "*" else int(match.group(1))
        end = 6 if match.group(1) == "*" else int(match.group(2) or start)
        step = int(match.group(3) or 1)
        if match.group(3) and not match.group(2) and match.group(1) != "*":
            end = 6  # `1/2` means from Monday on, every second day
        if start > 7 or end > 7 or start > end or step < 1:
            raise ValueError(f"bad weekday {item!r} (0-7, Sunday is 0 or 7)")
        items.extend(WEEKDAYS[n] for n in range(start, end + 1, step))
    return ",".join(dict.fromkeys(items))


def latest_tick(schedule: Schedule, after: datetime, now: datetime) -> datetime | None:
    """The latest scheduled time in (after, now], or None."""
    for window in LOOKBACK_WINDOWS:
        start = max(after, now - timedelta(seconds=window))
        found: datetime | None = None
        tick = schedule.get_next_fire_time(None, start + ONE_MICROSECOND)
        while tick is not None and tick <= now:
            found = tick
            tick = schedule.get_next_fire_time(tick, tick + ONE_MICROSECOND)
        if found is not None or start == after:
            return found
    return None


def tick_task_id(trigger: str, scheduled: datetime) -> str:
    """`tick-NAME-20261201T020000-000Z`: the same on every replica (rounded to the millisecond,
    so float noise in interval arithmetic cannot split one tick into two ids). No dots: the
    id is a token of the task's subject."""
    millis = round(scheduled.timestamp() * 1000)
    moment = datetime.fromtimestamp(millis // 1000, UTC)
    return f"tick-{trigger}-{moment:%Y%m%dT%H%M%S}-{millis % 1000:03d}Z"


class TickExecutor(BaseExecutor):  # type: ignore[misc]
    """Runs a job as an asyncio task and hands it the tick's scheduled time, which APScheduler's
    own executors keep to themselves; the task id is made from it."""

    def __init__(self) -> None:
        super().__init__()
        self._running: set[asyncio.Task[None]] = set()

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        fire: Callable[[datetime], Coroutine[Any, Any, None]] = job.func
        task = asyncio.get_running_loop().create_task(fire(run_times[-1]))
        self._running.add(task)
        task.add_done_callback(lambda done: self._finished(job.id, done))

    def _finished(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is None:
            self._run_job_success(job_id, [])
        else:
            self._run_job_error(job_id, error, error.__traceback__)

    def shutdown(self, wait: bool = True) -> None:
        for task in self._running:
            task.cancel()


class TimerTrigger(BaseTrigger):
    """Fires `function` with `payload` on a schedule, once per tick across all replicas."""

    type = "timer"
    Options = TimerOptions

    def __init__(self, config: TriggerConfig, context: TriggerContext) -> None:
        super().__init__(config, context)
        self.options = parse_options(TimerOptions, config, self.path)
        self.payload = self.options.payload
        self.schedule = self.options.schedule()
        self.state_file = Path(context.data_dir) / "timers" / f"{self.name}.json"
        self.scheduler: AsyncIOScheduler | None = None
        self.last_tick: datetime | None = None
        self.since: datetime | None = None
        self._catching_up = asyncio.Lock()
        self._background = Background()

    async def start(self) -> None:
        await asyncio.to_thread(self._load_state)
        scheduler = self.scheduler = AsyncIOScheduler(executors={"default": TickExecutor()}, timezone=UTC)
        # coalesce: ticks that pile up while one is still held (NATS down) become one run;
        # max_instances=1: a held tick is never overtaken by the next one.
        if not self._passed():
            scheduler.add_job(
                self.on_tick, self.schedule, id=self.name, coalesce=True, max_instances=1, misfire_grace_time=None
            )
        scheduler.start()
        self.state = TriggerState.RUNNING
        if self.options.misfire == "run_once":
            self._background.start(self.catch_up(), name=f"timer {self.name} catch-up")

    def _passed(self) -> bool:
        """An `at` time already past: APScheduler would fire it at once, which is catch-up's call."""
        return isinstance(self.schedule, DateTrigger) and self.schedule.run_date <= datetime.now(UTC)

    async def stop(self) -> None:
        self._stopping.set()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.state = TriggerState.STOPPED

    def health(self) -> dict[str, Any]:
        health = super().health()
        job = self.scheduler.get_job(self.name) if self.scheduler is not None else None
        health["schedule"] = self.options.describe()
        health["next_tick"] = iso(job.next_run_time.timestamp()) if job and job.next_run_time else None
        health["last_tick"] = iso(self.last_tick.timestamp()) if self.last_tick else None
        return health

    async def on_tick(self, scheduled: datetime = EPOCH) -> None:
        """The job: TickExecutor passes the scheduled time (the default only satisfies
        APScheduler's check of the job's arguments)."""
        await self.fire(scheduled)

    async def fire(self, scheduled: datetime, *, missed: bool = False) -> None:
        """Submit the tick scheduled at `scheduled`; held and retried while NATS is down."""
        self.count_event()
        task_id = tick_task_id(self.name, scheduled)
        event = self.cloud_event(
            event_id=task_id,
            kind="tick",
            subject=iso(scheduled.timestamp()) or "",
            data=self.payload,
            at=scheduled.timestamp(),
            extra={
                "schedule": self.options.describe(),
                "timezone": self.options.timezone,
                "scheduled_at": iso(scheduled.timestamp()),
                "fired_at": iso(time.time()),
                "missed": missed,
            },
        )
        started = time.monotonic()
        if await self.submit_held(event, task_id=task_id) is None:
            return
        await self._remember(scheduled)
        held_long = time.monotonic() - started > 1.0
        if held_long and self.options.misfire == "run_once" and not missed:
            await self.catch_up()  # ticks skipped while this one was held

    async def catch_up(self) -> None:
        """Fire the latest tick missed since the last one fired (or since this trigger first ran)."""
        async with self._catching_up:
            after = max(filter(None, (self.last_tick, self.since)), default=None)
            if after is None:
                return
            now = datetime.now(UTC)
            missed = latest_tick(self.schedule, after, now)
            if missed is not None:
                log.info("timer %s: firing missed tick %s once", self.name, missed.isoformat())
                await self.fire(missed, missed=True)

    def _load_state(self) -> None:
        try:
            saved = json.loads(self.state_file.read_text())
            self.since = datetime.fromtimestamp(float(saved["since"]), UTC)
            if saved.get("last_tick") is not None:
                self.last_tick = datetime.fromtimestamp(float(saved["last_tick"]), UTC)
        except FileNotFoundError:
            # First start in this data_dir: nothing can have been missed before now.
            self.since = datetime.now(UTC)
            self._save_state()
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("timer %s: unreadable %s (%s); starting afresh", self.name, self.state_file, exc)
            self.since = datetime.now(UTC)
            self._save_state()

    async def _remember(self, scheduled: datetime) -> None:
        if self.last_tick is None or scheduled > self.last_tick:
            self.last_tick = scheduled
            await asyncio.to_thread(self._save_state)

    def _save_state(self) -> None:
        assert self.since is not None
        state = {
            "since": self.since.timestamp(),
            "last_tick": self.last_tick.timestamp() if self.last_tick else None,
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.state_file.with_suffix(f".{os.getpid()}.tmp")  # replicas may share data_dir
        partial.write_text(json.dumps(state))
        os.replace(partial, self.state_file)
