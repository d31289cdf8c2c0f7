"""The supervisor every background loop runs under (gateway/supervise.py)."""

from __future__ import annotations

import asyncio

from gateway.supervise import Background, supervised


async def test_a_failing_loop_is_restarted_and_a_final_return_ends_it() -> None:
    calls = 0

    async def connect() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("not yet")

    await asyncio.wait_for(supervised("connect", connect, final_return=True), 5)
    assert calls == 3


async def test_a_return_once_stopping_is_final_and_ends_the_backoff() -> None:
    stopping = asyncio.Event()
    calls = 0

    async def loop() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            stopping.set()
            return
        raise RuntimeError("a bug")

    await asyncio.wait_for(supervised("loop", loop, stopping=stopping, max_backoff=60), 5)
    assert calls == 2

    failed = asyncio.Event()
    calls = 0

    async def never() -> None:
        nonlocal calls
        calls += 1
        failed.set()
        raise RuntimeError("always")

    stopping = asyncio.Event()
    task = asyncio.create_task(supervised("never", never, stopping=stopping, max_backoff=60))
    await failed.wait()  # it failed once and waits out its backoff
    stopping.set()
    await asyncio.wait_for(task, 5)
    assert calls == 1  # a stop during the backoff is final: no further start


async def test_background_keeps_its_tasks_until_they_end_and_close_cancels_the_rest() -> None:
    background = Background()
    done = asyncio.Event()
    finished = background.start(done.wait())

    async def wait_forever() -> None:
        await asyncio.Event().wait()

    forever = background.loop("forever", wait_forever)
    assert len(background) == 2
    done.set()
    await finished
    assert len(background) == 1
    await background.close(timeout=1)
    assert forever.cancelled() and len(background) == 0
