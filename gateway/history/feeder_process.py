"""The gateway's side of its feeders (feeder.py): start them, relay their reports into this
process's metrics and /readyz, and stop them with the gateway.

A gateway runs one feeder all the time, and while the feed has a backlog of more than
HELP_ABOVE messages (a backfill, a burst) and the database has more feeder slots
(`index.feeders`), helpers beside it, stopped once the backlog has stayed under that for
CALM seconds. A helper that finds every slot taken only waits; one that holds a slot past the
first feeds through the backlog (feeder.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gateway.observe import metrics

from .feed import HELP_ABOVE
from .feeder import FeederSettings

log = logging.getLogger(__name__)
STOP_GRACE = 8.0  # seconds a stopping feeder has to finish its batch before it is killed
CALM = 30.0  # seconds the backlog stays small before the helpers stop (not one start per burst)
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class FeederProcess:
    def __init__(self, settings: FeederSettings, on_change: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.on_change = on_change
        # Its latest report: applying the streams now, and which feeder slot it holds.
        self.feeding = False
        self.slot: int | None = None
        self.proc: asyncio.subprocess.Process | None = None

    async def run(self) -> None:
        """Start the feeder and follow its reports; returns (as a failure to the supervisor,
        which starts it again) only if the feeder exits."""
        env = dict(os.environ)
        # Importable wherever the gateway is: installed, or run from a checkout.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        self.proc = proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.history",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=1 << 20,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            # Settings on stdin (not argv, which every local user can read), and stdin kept
            # open: the feeder exits when it closes, however this process ends.
            proc.stdin.write(self.settings.to_json().encode() + b"\n")
            await proc.stdin.drain()
            async for line in proc.stdout:
                self._relay(line)
            code = await proc.wait()
            raise RuntimeError(f"the feeder process exited ({code})")
        finally:
            self._set(False, None)
            await self.stop()

    def _relay(self, line: bytes) -> None:
        try:
            report = json.loads(line)
            for stream, messages in report["applied"].items():
                metrics.INDEX_APPLIED.labels(stream).inc(messages)
            for stream, delays in report["delays"].items():
                for delay in delays:
                    metrics.INDEX_APPLY_DELAY.labels(stream).observe(delay)
            slot = report["slot"]
            self._set(bool(report["feeding"]), None if slot is None else int(slot))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("task index: the feeder wrote an unreadable report: %r", line[:200])

    def _set(self, feeding: bool, slot: int | None) -> None:
        if (feeding, slot) != (self.feeding, self.slot):
            self.feeding, self.slot = feeding, slot
            self.on_change()

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class FeederPool:
    """This gateway's feeders: the one that always runs, and the helpers of a backlog."""

    def __init__(self, settings: FeederSettings) -> None:
        self.settings = settings
        self.main = FeederProcess(settings, self._main_changed)
        self.helpers: dict[FeederProcess, asyncio.Task[None]] = {}
        self._backlog = 0  # the latest figure the lag watcher gave
        self._calm_since: float | None = None

    @property
    def processes(self) -> list[FeederProcess]:
        return [self.main, *self.helpers]

    @property
    def feeding(self) -> bool:
        return any(p.feeding for p in self.processes)

    @property
    def slots(self) -> list[int]:
        return sorted(p.slot for p in self.processes if p.slot is not None)

    def _changed(self) -> None:
        metrics.INDEX_FEEDING.set(sum(p.feeding for p in self.processes))

    def _main_changed(self) -> None:
        self._changed()
        # The main feeder took slot 0 in a backlog the lag watcher saw already (a gateway
        # started on a history to backfill): its helpers start now, not at the next look.
        self._consider()

    async def run(self) -> None:
        """The main feeder (a failure to the supervisor, which starts it again)."""
        await self.main.run()

    def backlog(self, messages: int) -> None:
        """Told the feed's backlog (the largest of its consumers') every few seconds."""
        self._backlog = messages
        self._consider()

    def _consider(self) -> None:
        messages, now = self._backlog, time.monotonic()
        if messages > HELP_ABOVE:
            self._calm_since = None
            # Only the replica whose feeder holds slot 0 starts helpers: the others' would
            # find the slots taken (or hold them already) and just wait.
            if not self.helpers and self.settings.slots > 1 and self.main.slot == 0:
                helpers = self.settings.slots - 1
                log.info("task index: a backlog of %d messages: starting %d helper feeders", messages, helpers)
                for n in range(helpers):
                    self._start_helper(n)
        elif self.helpers:
            if self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= CALM:
                self._calm_since = None
                log.info("task index: the backlog is gone: stopping the helper feeders")
                for task in self.helpers.values():
                    task.cancel()  # FeederProcess.run's finally clause stops the process

    def _start_helper(self, n: int) -> None:
        # The main feeder holds slot 0, so a helper gets a later one (or waits for one).
        helper = FeederProcess(self.settings, self._changed)
        self.helpers[helper] = asyncio.create_task(self._helper_run(helper), name=f"index helper feeder {n}")

    async def _helper_run(self, helper: FeederProcess) -> None:
        try:
            await helper.run()
        except Exception as exc:  # not restarted: the next backlog starts helpers again
            log.warning("task index: a helper feeder ended: %s", exc)
        finally:
            self.helpers.pop(helper, None)
            self._changed()

    async def stop(self) -> None:
        tasks = list(self.helpers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.main.stop()
