"""Background loops that never die silently: restarted with backoff, failures logged once each;
and a holder that keeps every background task referenced until it ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def cancel_requested() -> bool:
    """True once this task was asked to stop, even if a library swallowed the CancelledError."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def supervised(
    name: str,
    factory: Callable[[], Awaitable[None]],
    *,
    max_backoff: float = 10.0,
    stopping: asyncio.Event | None = None,
    final_return: bool = False,
) -> None:
    """Run `factory()` for as long as it is wanted: a failure is logged and it starts again
    after a backoff (doubling up to `max_backoff`); so does a return, unless `final_return`
    (work that ends when it is done, such as connecting once). Once `stopping` is set, a
    return or a failure is final, and a backoff under way ends at once."""
    backoff = 0.2
    while True:
        try:
            await factory()
            if final_return or (stopping is not None and stopping.is_set()):
                return
            log.warning("%s ended; restarting", name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if stopping is not None and stopping.is_set():
                log.warning("%s failed while stopping (%s: %s)", name, type(exc).__name__, exc)
                return
            log.warning("%s failed (%s: %s); restarting in %.1fs", name, type(exc).__name__, exc, backoff)
        if stopping is None:
            await asyncio.sleep(backoff)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), backoff)
            if stopping.is_set():
                return
        backoff = min(backoff * 2, max_backoff)


class Background:
    """The tasks a component starts, kept until they end: the event loop keeps only a weak
    reference to a task, so one that nobody holds can vanish mid-run. `loop` starts a
    supervised loop, `start` a one-off task; `close` cancels what is left and waits for it."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def loop(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        *,
        stopping: asyncio.Event | None = None,
        final_return: bool = False,
        max_backoff: float = 10.0,
    ) -> asyncio.Task[None]:
        coro = supervised(name, factory, stopping=stopping, final_return=final_return, max_backoff=max_backoff)
        return self.start(coro, name=name)

    def cancel(self) -> list[asyncio.Task[Any]]:
        """Cancel what is left, without waiting for it; the tasks cancelled."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        return tasks

    async def close(self, timeout: float | None = None) -> None:
        tasks = self.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
