"""The command runtime on the event loop the gateway runs on (uvloop): a command that exits
or closes its stdin without reading the payload is judged by its exit status and output,
not by the broken pipe its payload met."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.pipeline.runtimes import CommandRuntime, Context
from gateway.tasks.invocation import Invocation
from gateway.tuning import new_event_loop

PAYLOAD = b"x" * (1 << 20)  # far more than a pipe holds: the write meets the closed end


def _run(argv: list[str], times: int = 1) -> bytes:
    async def run() -> bytes:
        context = Context("t-1", "cmd", 1, asyncio.get_running_loop().time() + 10, {}, logging.getLogger("t"))
        runtime = CommandRuntime(argv, {})
        # Concurrently: the loop is busy between a spawn and the write, as in a gateway.
        results = await asyncio.gather(*(runtime.run(Invocation("t-1", "cmd", PAYLOAD), context) for _ in range(times)))
        assert len(set(results)) == 1, results
        result: bytes = results[0]
        return result

    loop = new_event_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


def test_a_command_that_closes_stdin_unread_succeeds_with_its_output() -> None:
    assert _run(["sh", "-c", "exec 0<&-; echo done"]) == b"done\n"


def test_a_command_that_exits_before_its_payload_is_written_succeeds() -> None:
    # `true` is often gone before the payload is written (a race, hence the many): the
    # pipe is closed by then, which uvloop reports differently from asyncio's own loop.
    assert _run(["true"], times=100) == b""


def test_a_command_that_reads_part_of_stdin_and_fails_is_a_function_error() -> None:
    from gateway.errors import FunctionError

    with pytest.raises(FunctionError, match="exit status 3"):
        _run(["sh", "-c", "head -c 10 >/dev/null; echo oops >&2; exit 3"])


def test_the_payload_reaches_a_command_that_reads_it() -> None:
    assert _run(["wc", "-c"]).strip() == str(len(PAYLOAD)).encode()
