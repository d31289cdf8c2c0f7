"""Reading many submissions at once (TaskStore.get_submissions, the bulk rerun's read)
against a real nats-server: in order, payloads and options as stored, None for a task
that has none, and a 503 when NATS is away rather than tasks counted as gone."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest
from nats.errors import NoRespondersError

from gateway.errors import ServiceUnavailable
from gateway.jetstream.publisher import AckPublisher, DuplicateMessage
from gateway.jetstream.store import TaskStore
from gateway.tasks.invocation import Invocation, Source
from tests.services import NatsServer


async def test_many_submissions_read_at_once(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        nc = await nats.connect(server.url)
        store = TaskStore(nc, retention=3600)
        await store.ensure_streams()
        invs = [
            Invocation(f"t{i}.x-{i}", f"fn{i % 3}", f'{{"n": {i}}}'.encode(), content_type="application/json",
                       source=Source("timer", f"nightly{i}"), priority="high" if i % 2 else "normal")
            for i in range(1200)
        ]  # fmt: skip
        assert await store.submit_many(invs) == [None] * len(invs)
        wanted = [(inv.function, inv.task_id) for inv in invs[::-1]]
        wanted.insert(7, ("fn0", "never-submitted"))
        wanted.insert(9, ("fn1", invs[0].task_id))  # a task id under another function: none there
        found = await store.get_submissions(wanted)
        assert len(found) == len(wanted)
        assert found[7] is None and found[9] is None
        got = [f for i, f in enumerate(found) if i not in (7, 9)]
        for inv, read in zip(invs[::-1], got, strict=True):
            assert read is not None
            assert (read.task_id, read.function, read.payload, read.content_type) == (
                inv.task_id, inv.function, inv.payload, inv.content_type
            )  # fmt: skip
            assert (read.source, read.priority) == (inv.source, inv.priority)
        assert await store.get_submissions([]) == []
        server.stop()  # NATS away: an outage, not tasks whose payload is gone
        with pytest.raises(ServiceUnavailable):
            await store.get_submissions(wanted[:10], timeout=2)
        await nc.close()
    finally:
        server.stop()


async def test_a_publish_arrives_with_its_headers_on_the_direct_path_and_the_librarys(tmp_path: Path) -> None:
    """The ack publisher writes HPUB itself; a value it cannot write plainly (a line break)
    goes through the library, which folds it. Either way the stream stores what was meant,
    and JetStream reads the message id it carries."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="HDRS", subjects=["hdrs.>"])
        publisher = AckPublisher(nc, timeout=5)
        await publisher.start()
        plain = {"Nats-Msg-Id": "m-1", "Fngate-Invocation": "1|t-1|fn|a b|%7C", "Content-Type": " text/plain "}
        first = await publisher.publish("hdrs.a", b"one", plain)
        with pytest.raises(DuplicateMessage):
            await publisher.publish("hdrs.a", b"again", plain)
        folded = await publisher.publish("hdrs.b", b"two", {"X-Note": "line\r\nbreak"})
        stored = await js.get_msg("HDRS", first)
        assert stored.data == b"one"
        assert stored.headers == {
            "Nats-Msg-Id": "m-1",
            "Fngate-Invocation": "1|t-1|fn|a b|%7C",
            "Content-Type": "text/plain",
        }
        other = await js.get_msg("HDRS", folded)
        assert other.data == b"two" and other.headers is not None and "\n" not in other.headers["X-Note"]
        with pytest.raises(NoRespondersError):  # no stream takes the subject: the server's 503
            await publisher.publish("nostream.a", b"three", plain)
        await publisher.close()
        await nc.close()
    finally:
        server.stop()
