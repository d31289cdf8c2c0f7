"""The file trigger: files created, modified, deleted or moved under a directory.

watchdog reports changes from its own thread; they are handed to the event loop, and a
written file fires only once its size and mtime have stayed the same for `settle`, so a
function never sees a half-copied file. Paths that resolve outside the watched root
(symlinks pointing elsewhere) are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import Field
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from gateway.config.model import Duration, TriggerConfig
from gateway.supervise import Background
from gateway.tasks.invocation import iso, new_task_id

from .base import BaseTrigger, TriggerContext, TriggerState, parse_options, stable_id
from .shaping import FilterOptions

log = logging.getLogger(__name__)
EventKind = Literal["created", "modified", "deleted", "moved"]


class FileOptions(FilterOptions):
    path: str = Field(min_length=1)
    recursive: bool = True
    events: list[EventKind] = Field(default=["created"], min_length=1)
    patterns: list[str] = ["*"]
    ignore_patterns: list[str] = []
    settle: Duration = Field(default=0.5, ge=0.01, le=3600.0)


@dataclass
class Settling:
    """A written file waiting for its size and mtime to stop changing."""

    kind: EventKind
    size: int
    mtime_ns: int
    stable_since: float


class _Forwarder(FileSystemEventHandler):
    """Runs in watchdog's thread: only hands events over to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, trigger: FileTrigger) -> None:
        self.loop = loop
        self.trigger = trigger

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.loop.call_soon_threadsafe(self.trigger.on_change, event)


class FileTrigger(BaseTrigger):
    """Watches `path`; each settled change of a matching file becomes one invocation."""

    type = "file"
    Options = FileOptions

    def __init__(self, config: TriggerConfig, context: TriggerContext) -> None:
        super().__init__(config, context)
        self.options = parse_options(FileOptions, config, self.path)
        self.pattern = self.options.event_pattern()
        self.root = Path(self.options.path).expanduser().resolve()
        self.events = frozenset(self.options.events)
        self.settling: dict[Path, Settling] = {}
        self.due: asyncio.Queue[tuple[EventKind, Path, Path | None]] = asyncio.Queue()
        self.observer: Any = None
        self._loops = Background()

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        observer = self.observer = Observer()
        observer.schedule(
            _Forwarder(asyncio.get_running_loop(), self), str(self.root), recursive=self.options.recursive
        )
        observer.daemon = True
        observer.start()
        self._loops.loop(f"file trigger {self.name}: settle", self._settle_loop, stopping=self._stopping)
        self._loops.loop(f"file trigger {self.name}: submit", self._submit_loop, stopping=self._stopping)
        self.state = TriggerState.RUNNING

    async def stop(self) -> None:
        self._stopping.set()
        if self.observer is not None:
            self.observer.stop()
            await asyncio.to_thread(self.observer.join, 5)
        await self._loops.close()
        self.state = TriggerState.STOPPED

    def health(self) -> dict[str, Any]:
        return {**super().health(), "path": str(self.root), "settling": len(self.settling)}

    # --- in the event loop, from watchdog's thread ------------------------------------

    def on_change(self, event: FileSystemEvent) -> None:
        path = self.inside(event.src_path)
        kind = event.event_type
        if kind == "moved":
            dest = self.inside(event.dest_path)
            if path is not None:
                self.settling.pop(path, None)
            if dest is None:  # moved out of the root (or to a place we do not watch): it is gone
                if path is not None:
                    self._deliver("deleted", path)
            elif "moved" in self.events and self.matches(dest):
                self.due.put_nowait(("moved", dest, path))
            else:  # renamed into place after being written elsewhere: a new file here
                self._settle("created", dest)
        elif path is None:
            return
        elif kind == "deleted":
            self.settling.pop(path, None)
            self._deliver("deleted", path)
        elif kind == "created":
            self._settle("created", path)
        elif kind == "modified":
            self._settle("modified", path)
        elif kind == "closed" and path in self.settling:
            self.settling[path].stable_since = time.monotonic()

    def _settle(self, kind: Literal["created", "modified"], path: Path) -> None:
        pending = self.settling.get(path)
        if pending is not None:
            pending.stable_since = time.monotonic()  # still being written; `created` stays `created`
            return
        if kind not in self.events or not self.matches(path):
            return
        self.settling[path] = Settling(kind, -1, -1, time.monotonic())

    def _deliver(self, kind: EventKind, path: Path) -> None:
        if kind in self.events and self.matches(path):
            self.due.put_nowait((kind, path, None))

    def inside(self, raw: str | bytes) -> Path | None:
        """The path if it (and whatever a symlink on the way leads to) is inside the root."""
        path = Path(os.fsdecode(raw))
        if not path.is_relative_to(self.root):
            return None
        return path if path.resolve().is_relative_to(self.root) else None

    def matches(self, path: Path) -> bool:
        relative = PurePosixPath(path.relative_to(self.root).as_posix())
        if any(relative.match(p) for p in self.options.ignore_patterns):
            return False
        return any(relative.match(p) for p in self.options.patterns)

    # --- settling and submitting ------------------------------------------------------

    async def _settle_loop(self) -> None:
        interval = min(self.options.settle / 4, 0.1)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for path, pending in list(self.settling.items()):
                try:
                    stat = path.stat()
                except OSError:
                    self.settling.pop(path, None)  # gone before it settled
                    continue
                if (stat.st_size, stat.st_mtime_ns) != (pending.size, pending.mtime_ns):
                    pending.size, pending.mtime_ns, pending.stable_since = stat.st_size, stat.st_mtime_ns, now
                elif now - pending.stable_since >= self.options.settle:
                    del self.settling[path]
                    self.due.put_nowait((pending.kind, path, None))

    async def _submit_loop(self) -> None:
        while True:
            kind, path, moved_from = await self.due.get()
            if kind != "deleted" and self.inside(str(path)) is None:
                continue  # became a symlink to somewhere else while it settled
            self.count_event()
            event, task_id = self.build_event(kind, path, moved_from)
            if event is not None:  # None: the filter dropped it
                await self.submit_held(event, task_id=task_id)

    def build_event(self, kind: EventKind, path: Path, moved_from: Path | None) -> tuple[bytes | None, str]:
        relative = path.relative_to(self.root).as_posix()
        size: int | None = None
        mtime: float | None = None
        task_id = new_task_id()
        if kind != "deleted":
            with contextlib.suppress(OSError):
                stat = path.stat()
                size, mtime = stat.st_size, stat.st_mtime
                # The same change of the same file always gets the same id: retries and a
                # second replica watching a shared directory make one task, not two.
                task_id = stable_id(f"file-{self.name}", kind, relative, stat.st_mtime_ns, size)
        data: dict[str, Any] = {
            "event": kind,
            "path": relative,
            "absolute_path": str(path),
            "root": str(self.root),
            "size": size,
            "mtime": iso(mtime),
        }
        if moved_from is not None:
            data["moved_from"] = moved_from.relative_to(self.root).as_posix()
        event = self.filtered_event(
            event_id=task_id, kind=kind, subject=relative, data=data, at=mtime if mtime is not None else None
        )
        return event, task_id
