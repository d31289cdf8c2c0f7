"""A page of the listing completes the records it returns to the schema without checking
each one (`schemas.complete`): for every record the pipeline writes, that answer must be
the one `shape` gives after checking."""

from __future__ import annotations

import copy
import json
import time

from gateway.tasks import lifecycle
from gateway.tasks.invocation import Invocation, Lineage, Source
from gateway.tasks.records import Record, encode, new_record, stamp
from gateway.tasks.status import TaskStatus
from gateway.web import schemas
from gateway.web.schemas import complete, shape

S = TaskStatus


def records() -> list[Record]:
    now = time.time()
    inv = Invocation("t-1", "fn", b"{}", submitted_at=now, source=Source("kafka", "orders"), lineage=Lineage("c1", 2))
    traced = Invocation("t-2", "fn", b"{}", traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    rerun = Invocation("t-3", "fn", b"{}", source=Source("rerun", "t-1"))
    queued = new_record(inv)
    running = lifecycle.claim(
        queued, now=now, attempt=1, scheduled_at=now, max_event_age=60, depth=1, max_depth=10
    ).record
    assert running is not None
    settled = [
        lifecycle.settle(
            running,
            now=now,
            outcome=o,
            attempt=a,
            transient_count=0,
            scheduled_at=now,
            max_retries=r,
            retry_delay=1.0,
            max_event_age=3600.0,
            result=res,
            message="boom",
        ).record
        for o, a, r, res in [
            ("succeeded", 1, 0, {"ok": [1, 2]}),
            ("function_error", 1, 2, None),  # Retrying, with errors
            ("function_error", 3, 2, None),  # RetriesExhausted
            ("timeout", 1, 0, None),
            ("transient", 1, 0, None),
            ("stopped", 1, 0, None),
        ]
    ]
    delivered = copy.deepcopy(settled[0])
    delivered["destinations"] = [
        {"on": "success", "type": "http", "target": "http://x", "status": "delivered", "attempts": 1,
         "history": [{"attempt": 1, "status": "delivered"}]},
        {"on": "failure", "type": "nats", "target": "subj", "status": "pending", "attempts": 0},
    ]  # fmt: skip
    return [
        queued, new_record(traced), new_record(rerun), running, *settled, delivered,
        lifecycle.stop(queued, now), stamp(queued, S.EXPIRED, now, condition="Expired"),
    ]  # fmt: skip


def test_a_page_completes_records_as_shape_checks_them() -> None:
    texts = [encode(r).decode() for r in records()]
    for cursor in (None, "1700000000000-t-1"):
        page = {"tasks": [json.loads(t) for t in texts], "next_cursor": cursor}
        expected = shape(schemas.TaskPage, {"tasks": [json.loads(t) for t in texts], "next_cursor": cursor})
        assert schemas.TaskPage.model_validate(expected)  # the records do conform: a real comparison
        assert complete(schemas.TaskPage, page) == expected
    # A default list is made per record, never one object shared by two of them.
    bare = [json.loads(texts[0]), json.loads(texts[0])]
    for record in bare:
        del record["destinations"]
    first, second = complete(schemas.TaskPage, {"tasks": bare, "next_cursor": None})["tasks"]
    assert first["destinations"] == second["destinations"] == []
    assert first["destinations"] is not second["destinations"]
