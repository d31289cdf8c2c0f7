"""The feed's lean path from a delivery to a row: raw header blocks, the submission's first
record written straight from its invocation header, and status deliveries told apart."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from gateway.history.feed import REFRESH_EVERY, stream_feeds, task_fact
from gateway.history.headers import header
from gateway.history.plan import HEADERS_MARK, first_record, listed_record, record_of
from gateway.jetstream.raw import is_status
from gateway.tasks import constants as c
from gateway.tasks.invocation import Invocation, Lineage, Source
from gateway.tasks.records import encode, new_record, stamp
from gateway.tasks.status import TaskStatus

INVOCATIONS = [
    Invocation("t-1", "fn", b"{}", submitted_at=1795962930.1234567),
    Invocation("t-2", "fn.v2", b"", submitted_at=1795962930.9996, scheduled_at=1795963000.5, attempt=2,
               source=Source("kafka", "orders/eu é \"x\" |%"), lineage=Lineage("c-9", 3)),
    Invocation("t-3", "fn", b"", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01", tracestate="k=v,x=y"),
    Invocation("t-4", "fn", b"", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01"),
    Invocation("t-5", "fn", b"", source=Source("rerun", "t-1"), priority="high", concurrency_key="acct-7"),
]  # fmt: skip


def raw_block(headers: dict[str, str]) -> bytes:
    """A header block as nats-server delivers it, with the headers a headers-only delivery adds."""
    lines = ["NATS/1.0", *(f"{k}: {v}" for k, v in headers.items()), "Nats-Stream: FNGATE_TASKS", "Nats-Msg-Size: 2"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("inv", INVOCATIONS, ids=lambda inv: inv.task_id)
def test_a_first_record_is_the_one_new_record_makes(inv: Invocation) -> None:
    headers = inv.headers()
    made = first_record(headers[c.H_INVOCATION], headers.get(c.H_TRACEPARENT), headers.get(c.H_TRACESTATE))
    assert json.loads(made) == json.loads(encode(new_record(Invocation.from_message(headers, b""))))


@pytest.mark.parametrize("inv", INVOCATIONS, ids=lambda inv: inv.task_id)
def test_a_raw_block_makes_the_fact_the_parsed_headers_make(inv: Invocation) -> None:
    headers = inv.headers()
    from_raw, from_dict = task_fact(b"", raw_block(headers), 0), task_fact(b"", headers, 0)
    assert from_raw is not None and from_dict is not None
    assert record_of(from_raw) == record_of(from_dict)
    # Its row holds the headers, and a listing shows the record new_record makes of them.
    assert record_of(from_raw).startswith(HEADERS_MARK)
    listed = json.loads(listed_record(record_of(from_raw)))
    assert listed == json.loads(encode(new_record(Invocation.from_message(headers, b""))))
    assert (from_raw.task_id, from_raw.function, from_raw.source_type, from_raw.source_name, from_raw.chain_id) == (
        inv.task_id, inv.function, inv.source.type, inv.source.name, inv.lineage.chain_id,
    )  # fmt: skip
    # A submission with flow control's two extra fields is indexed like any other.
    assert from_raw.submitted_ms == from_dict.submitted_ms


def test_headers_and_status_lines() -> None:
    block = b"NATS/1.0\r\nA: 1\r\nFngate-Invocation:  x|y \r\nB:2\r\n\r\n"
    assert header(block, "Fngate-Invocation") == "x|y"
    assert header(block, "B") == "2"
    assert header(block, "Missing") is None and header(None, "A") is None
    assert task_fact(b"", b"NATS/1.0\r\nFngate-Invocation: 2|t|f\r\n\r\n", 0) is None  # an unknown version
    assert is_status(b"NATS/1.0 404 No Messages\r\n\r\n") and is_status(b"NATS/1.0 408 Request Timeout\r\n\r\n")
    assert not is_status(block) and not is_status(None)


def test_statistics_are_refreshed_as_the_table_doubles() -> None:
    from gateway.history.sql import AnalyzeSchedule

    schedule, refreshed_at, rows = AnalyzeSchedule(), [], 0
    for _ in range(200):  # batches of 500 inserts, 100k rows
        rows += 500
        if schedule.note(500):
            refreshed_at.append(rows)
            schedule.refreshed(rows)
    assert refreshed_at == [1000, 2000, 4000, 8000, 16000, 32000, 64000]


def delivery(subject: str, seq: int, data: bytes, hdr: bytes | None = None) -> tuple[str, str, bytes, bytes | None]:
    """A pull delivery as the feed buffers it: its subject and its ack subject (stream sequence `seq`)."""
    return subject, f"$JS.ACK.S.C.1.{seq}.{seq}.{seq * 1000}.0", data, hdr


def test_a_batch_makes_each_task_of_its_newest_readable_record_and_acks_every_message() -> None:
    feeds: Any = stream_feeds(None, None, "db", lambda _function: 0)  # type: ignore[arg-type]
    tasks_feed, states_feed = feeds
    inv = Invocation("t-7", "fn", b"{}", submitted_at=1795962930.5)
    running = stamp(stamp(new_record(inv), TaskStatus.DEQUEUED), TaskStatus.RUNNING)
    done = stamp(running, TaskStatus.SUCCEEDED, condition="Succeeded")
    other = new_record(Invocation("t-8", "fn", b"{}", submitted_at=1795962931.0))
    batch = [
        delivery("fngate.state.t-7", 12, encode(done)),  # out of order, as a redelivery may be
        delivery("fngate.state.t-7", 10, encode(running)),
        delivery("fngate.state.t-8", 11, encode(other)),
        delivery("fngate.state.t-7", 13, b"{not a record"),  # the newest, unreadable: the next one in line
    ]
    parsed = states_feed._parse(batch)
    assert parsed.facts["t-7"].status is TaskStatus.SUCCEEDED and parsed.facts["t-7"].state_seq == 12
    assert parsed.facts["t-8"].status is TaskStatus.ENQUEUED
    assert len(parsed.replies) == 4  # every message of the batch is acknowledged, superseded or not

    first, requeue = inv.headers(), Invocation("t-7", "fn", b"{}", submitted_at=1795962930.5, attempt=3).headers()
    parsed = tasks_feed._parse(
        [
            delivery("fngate.tasks.fn.t-7", 20, b"", raw_block(first)),
            delivery("fngate.tasks.fn.t-7", 21, b"", raw_block(requeue)),
        ]
    )
    listed = json.loads(listed_record(record_of(parsed.facts["t-7"])))
    assert listed["attempts"] == 0  # the first submission's, not the requeue's


def test_statistics_are_refreshed_after_a_backlog_at_most_once_per_interval() -> None:
    feeds: Any = stream_feeds(None, None, "db", lambda _function: 0)  # type: ignore[arg-type]
    states_feed = feeds[1]
    assert not states_feed._refresh_due()  # no backlog seen
    states_feed._parse([delivery("fngate.state.t-1", 1, b"{}")])  # pending 0: no backlog behind it
    assert not states_feed._refresh_due()
    behind = ("fngate.state.t-2", f"$JS.ACK.S.C.1.2.2.2000.{states_feed.refresh_after + 1}", b"{}", None)
    states_feed._parse([behind])  # a batch with a backlog behind it
    assert states_feed._refresh_due()
    states_feed._refreshed_at = time.monotonic() - 1  # refreshed a moment ago
    assert not states_feed._refresh_due()  # it waits; the backlog is remembered
    states_feed._refreshed_at = time.monotonic() - REFRESH_EVERY
    assert states_feed._refresh_due()


@pytest.mark.parametrize("field", [4, 6, 11])
def test_a_submission_its_first_record_cannot_be_made_of_is_unreadable(field: int) -> None:
    meta = INVOCATIONS[0].headers()[c.H_INVOCATION].split("|")
    meta[field] = "x"
    assert task_fact(b"", {c.H_INVOCATION: "|".join(meta)}, 0) is None
