"""The gateway's side of its feeder (feeder.py): start it, relay its reports into this
process's metrics and /readyz, and stop it with the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from gateway.observe import metrics

from .feeder import FeederSettings

log = logging.getLogger(__name__)
STOP_GRACE = 8.0  # seconds a stopping feeder has to finish its batch before it is killed
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class FeederProcess:
    def __init__(self, settings: FeederSettings) -> None:
        self.settings = settings
        self.feeding = False  # its latest report: it holds a feeder slot
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
            self._set_feeding(False)
            await self.stop()

    def _relay(self, line: bytes) -> None:
        try:
            report = json.loads(line)
            for stream, messages in report["applied"].items():
                metrics.INDEX_APPLIED.labels(stream).inc(messages)
            for stream, delays in report["delays"].items():
                for delay in delays:
                    metrics.INDEX_APPLY_DELAY.labels(stream).observe(delay)
            self._set_feeding(bool(report["feeding"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("task index: the feeder wrote an unreadable report: %r", line[:200])

    def _set_feeding(self, feeding: bool) -> None:
        self.feeding = feeding
        metrics.INDEX_FEEDING.set(1 if feeding else 0)

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
