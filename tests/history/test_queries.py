"""Listing, counts, idempotency and retention of the history, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import random
import time
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config.model import Config
from gateway.history import Backend, Cursor, TaskHistory, TaskQuery
from gateway.history.model import Fact
from gateway.history.plan import merge
from gateway.history.retention import Retention
from gateway.tasks.invocation import Invocation, Lineage, Source
from gateway.tasks.status import TaskStatus
from tests.history.reference import Model

NOW_MS = int(time.time() * 1000)
S = TaskStatus
_names = itertools.count()


def fresh(prefix: str = "fn") -> str:
    return f"{prefix}{next(_names)}x{random.randrange(10**6)}"


def submission(task_id: str, function: str, ms: int, source: tuple[str, str] = ("api", ""), chain: str = "c") -> Fact:
    inv = Invocation(task_id, function, b"{}", submitted_at=ms / 1000, source=Source(*source), lineage=Lineage(chain))
    return Fact(task_id, function, ms, source[0], source[1], chain, headers=inv.headers())


def state(base: Fact, status: TaskStatus, seq: int, condition: str | None = None) -> Fact:
    finished = int(time.time() * 1000) if status.terminal else None
    record = json.dumps({"task_id": base.task_id, "function": base.function, "status": status.value, "seq": seq})
    return replace(base, status=status, state_seq=seq, condition=condition, finished_ms=finished, record=record)


async def apply(backend: Backend, facts: list[Fact]) -> None:
    await backend.apply(merge(facts), now=time.time(), oldest_ms=lambda _f: 0)


def history(backend: Backend) -> TaskHistory:
    return TaskHistory(Config(), backend=backend)


async def ids(h: TaskHistory, q: TaskQuery) -> list[str]:
    listed, _ = await h.list(q)
    return [t.task_id for t in listed]


async def all_pages(h: TaskHistory, q: TaskQuery) -> list[str]:
    found: list[str] = []
    cursor: Cursor | None = None
    while True:
        listed, cursor = await h.list(replace(q, cursor=cursor))
        found += [t.task_id for t in listed]
        if cursor is None:
            return found


async def test_every_filter_and_both_orders(backend: Backend) -> None:
    fn, other = fresh(), fresh()
    model = Model()
    facts: list[Fact] = []
    statuses = [S.ENQUEUED, S.RUNNING, S.SUCCEEDED, S.FAILED, S.STOPPED]
    for i in range(60):
        sub = submission(
            f"{fn}-{'ab'[i % 2]}{i:03d}",
            fn if i % 3 else other,
            NOW_MS - 60_000 + i * 500 + (i % 4 == 0) * 250,
            source=(["api", "timer", "kafka"][i % 3], f"src{i % 2}"),
            chain=f"chain{i % 5}",
        )
        facts.append(sub)
        status = statuses[i % len(statuses)]
        if status is not S.ENQUEUED:
            condition = {S.SUCCEEDED: "Succeeded", S.FAILED: "RetriesExhausted"}.get(status)
            facts.append(state(sub, status, 1000 + i, condition))
    for fact in facts:
        model.apply(fact)
    await apply(backend, facts)
    h = history(backend)
    queries = [
        TaskQuery(function=fn),
        TaskQuery(function=fn, order="asc"),
        TaskQuery(statuses=(S.SUCCEEDED,), function=other),
        TaskQuery(statuses=(S.FAILED, S.STOPPED, S.RUNNING), function=fn),
        TaskQuery(statuses=(S.FAILED, S.STOPPED), function=fn, order="asc"),
        TaskQuery(function=fn, since_ms=NOW_MS - 40_000, until_ms=NOW_MS - 20_000),
        TaskQuery(function=fn, source_type="timer"),
        TaskQuery(function=fn, source_type="kafka", source_name="src1"),
        TaskQuery(function=fn, condition="RetriesExhausted"),
        TaskQuery(chain="chain3", function=other),
        TaskQuery(prefix=f"{fn}-b"),
        TaskQuery(prefix=f"{fn}-a0", statuses=(S.ENQUEUED, S.SUCCEEDED), order="asc"),
        TaskQuery(prefix=f"{fn}-a0", function=fn, source_type="api"),
        TaskQuery(prefix=fn[:2], function=other, statuses=(S.FAILED,)),  # short: the order index, filtered
        # Without a function: one index range per function, merged.
        TaskQuery(),
        TaskQuery(order="asc", since_ms=NOW_MS - 50_000),
        TaskQuery(statuses=(S.SUCCEEDED,)),
        TaskQuery(statuses=(S.FAILED, S.ENQUEUED), order="asc"),
        TaskQuery(source_type="kafka"),
        TaskQuery(condition="Succeeded", order="asc", until_ms=NOW_MS - 30_000),
        TaskQuery(statuses=(S.RUNNING,), source_type="kafka", source_name="src0"),
        # Filters no one index serves together: each probed, the fewest entries drive.
        TaskQuery(function=fn, statuses=(S.SUCCEEDED,), source_type="timer", condition="Succeeded"),
        TaskQuery(function=fn, source_type="api", condition="RetriesExhausted", order="asc"),
        TaskQuery(function=other, source_type="kafka", condition="Succeeded"),  # common each, never together
        TaskQuery(source_type="timer", condition="RetriesExhausted"),
        TaskQuery(statuses=(S.SUCCEEDED, S.FAILED), source_type="kafka", condition="Succeeded"),
    ]
    for q in queries:
        expected = model.select(q)
        assert await ids(h, replace(q, limit=1000)) == expected, q
        listed, _ = await h.list(replace(q, limit=1000))
        for task in listed:  # the record a list shows is the newest one applied
            record = json.loads(task.record)
            assert record["task_id"] == task.task_id
            assert record["status"] == model.rows[task.task_id].fact.status.value
        assert await all_pages(h, replace(q, limit=7)) == expected, q


async def test_cursor_is_stable_while_tasks_arrive(backend: Backend) -> None:
    fn = fresh()
    first = [submission(f"{fn}-{i:03d}", fn, NOW_MS - 10_000 + (i // 3)) for i in range(40)]  # ties in the ms
    await apply(backend, first)
    h = history(backend)
    seen: list[str] = []
    cursor: Cursor | None = None
    for page in itertools.count():
        listed, cursor = await h.list(TaskQuery(function=fn, limit=6, cursor=cursor))
        seen += [t.task_id for t in listed]
        await apply(backend, [submission(f"{fn}-new{page}", fn, NOW_MS + page)])  # newer than every page
        if cursor is None:
            break
    assert seen == [f.task_id for f in sorted(first, key=lambda f: (f.submitted_ms, f.task_id), reverse=True)]


async def test_a_batch_applied_twice_changes_nothing(backend: Backend) -> None:
    fn = fresh()
    now_ms = int(time.time() * 1000)  # the last-minute counts are checked: stamps of now
    subs = [submission(f"{fn}-{i}", fn, now_ms - 1000 + i) for i in range(10)]
    running = [state(s, S.RUNNING, 100 + i) for i, s in enumerate(subs)]
    done = [state(s, S.SUCCEEDED, 200 + i, "Succeeded") for i, s in enumerate(subs[:6])]
    await apply(backend, subs)
    await apply(backend, running + done)
    before = (await backend.counts([fn], now=time.time()))[fn]
    # Redelivered batches, an older record applied late, a submission's requeue: no change.
    for batch in (subs, running, done, running + subs, done[:3] + running[:3]):
        changes = await backend.apply(merge(batch), now=time.time(), oldest_ms=lambda _f: 0)
        assert changes.empty and not any(changes.counts.values()), batch
    after = (await backend.counts([fn], now=time.time()))[fn]
    assert after == before
    assert after.summary()["totals"] == {
        "submitted": 10, "completed": 6, "failed": 0, "stopped": 0, "expired": 0, "queued": 0, "running": 4,
    }  # fmt: skip
    assert after.summary()["last_minute"] == {"submitted": 10, "completed": 6, "failed": 0}


async def test_a_state_before_its_submission_makes_the_row(backend: Backend) -> None:
    fn = fresh()
    sub = submission(f"{fn}-1", fn, NOW_MS, source=("timer", "nightly"), chain="c9")
    await apply(backend, [state(sub, S.FAILED, 7, "Expired")])
    await apply(backend, [sub])  # the submission arrives later: the row is not made twice
    totals = (await backend.counts([fn], now=time.time()))[fn].summary()["totals"]
    assert totals["submitted"] == 1 and totals["failed"] == 1
    by_source = TaskQuery(source_type="timer", source_name="nightly", function=fn)
    assert await ids(history(backend), by_source) == [sub.task_id]
    assert await backend.function_of(sub.task_id) == fn
    assert await backend.function_of("no-such-task") is None


async def test_retention_deletes_old_rows_and_their_counts(backend: Backend) -> None:
    fn = fresh()
    day_ms = 86_400_000
    old = [submission(f"{fn}-old{i}", fn, NOW_MS - 3 * day_ms + i) for i in range(12)]
    new = [submission(f"{fn}-new{i}", fn, NOW_MS - 1000 + i) for i in range(3)]
    await apply(backend, [*old, *new, state(old[0], S.SUCCEEDED, 5, "Succeeded")])
    sweep = Retention(backend, lambda _f: 2 * 86400.0)
    from gateway.history import retention

    retention_batch = retention.BATCH
    retention.BATCH = 5  # several bounded batches
    try:
        assert await sweep.sweep() == 12
    finally:
        retention.BATCH = retention_batch
    assert await sweep.sweep() == 0  # a second replica's sweep finds nothing
    totals = (await backend.counts([fn], now=time.time()))[fn].summary()["totals"]
    assert totals["submitted"] == 3 and totals["completed"] == 0 and totals["queued"] == 3
    assert sorted(await ids(history(backend), TaskQuery(function=fn))) == sorted(f.task_id for f in new)
    # A submission past retention (a stream replayed from its start) is not indexed again.
    await backend.apply(merge(old), now=time.time(), oldest_ms=lambda _f: NOW_MS - 2 * day_ms)
    assert (await backend.counts([fn], now=time.time()))[fn].summary()["totals"]["submitted"] == 3


FUNCTION_NAMES = st.sampled_from(["f1", "f2"])
STATUSES = st.sampled_from(list(TaskStatus))


@st.composite
def histories(draw: st.DrawFn) -> list[list[Fact]]:
    """Messages of both streams as a feed may see them: in batches, with redeliveries of
    earlier batches and state records out of order."""
    n = draw(st.integers(1, 25))
    facts: list[Fact] = []
    seq = itertools.count(1)
    for i in range(n):
        source = (draw(st.sampled_from(["api", "timer"])), "")
        chain = draw(st.sampled_from(["c1", "c2"]))
        sub = submission(f"t{i:02d}", draw(FUNCTION_NAMES), NOW_MS - draw(st.integers(0, 50)), source, chain)
        facts.append(sub)
        for _ in range(draw(st.integers(0, 3))):
            facts.append(state(sub, draw(STATUSES), next(seq), draw(st.sampled_from([None, "Succeeded", "Expired"]))))
    facts = draw(st.permutations(facts))
    cut = sorted(draw(st.lists(st.integers(0, len(facts)), max_size=5)))
    batches = [facts[a:b] for a, b in itertools.pairwise([0, *cut, len(facts)]) if b > a]
    for _ in range(draw(st.integers(0, 3))):  # redeliveries
        batches.insert(draw(st.integers(0, len(batches))), draw(st.sampled_from(batches)))
    return batches


@pytest.mark.parametrize("order", ["desc", "asc"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=histories(), statuses=st.lists(STATUSES, max_size=3), limit=st.integers(1, 9))
async def test_the_index_answers_what_the_messages_say(
    backend: Backend, order: str, batches: list[list[Fact]], statuses: list[TaskStatus], limit: int
) -> None:
    prefix = fresh("p")
    model = Model()
    for batch in batches:
        batch = [replace(f, task_id=f"{prefix}{f.task_id}", function=f"{prefix}{f.function}") for f in batch]
        for fact in batch:
            model.apply(fact)
        await apply(backend, batch)
    h = history(backend)
    for function in (f"{prefix}f1", f"{prefix}f2"):
        for q in (
            TaskQuery(function=function, order=order),  # type: ignore[arg-type]
            TaskQuery(function=function, statuses=tuple(statuses), order=order),  # type: ignore[arg-type]
            TaskQuery(prefix=f"{prefix}t0", source_type="timer", chain="c1", order=order),  # type: ignore[arg-type]
            TaskQuery(function=function, statuses=tuple(statuses), source_type="timer", condition="Succeeded"),
            TaskQuery(function=function, source_type="api", condition="Expired", order=order),  # type: ignore[arg-type]
        ):
            assert await all_pages(h, replace(q, limit=limit)) == model.select(q)
        counts = (await backend.counts([function], now=time.time()))[function]
        assert {s: n for s, n in counts.by_status.items() if n} == model.by_status(function)
