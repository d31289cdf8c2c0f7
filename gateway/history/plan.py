"""How a batch of facts changes the history: pure, shared by every backend.

A backend reads the rows the batch touches (under its write lock), hands them here, and
writes the plan back in the same transaction. Idempotent by stream sequence:
- a task row is inserted once (a second fact for a known task never inserts again);
- a row keeps the FNGATE_STATE sequence of the record it reflects, and a state fact applies
  only when its sequence is newer (a redelivery, or an older record applied late, is a no-op);
- counters move only when a row is inserted, deleted, or its status really changes.
So a batch applied twice (a crash after commit, before the ack) changes nothing the second
time, and a batch rolled back (a crash before commit) is applied whole on redelivery.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as quoted
from urllib.parse import unquote

from gateway.tasks import constants as c
from gateway.tasks.invocation import META_VERSION, Invocation, iso
from gateway.tasks.records import RERUN_SOURCE, encode, new_record, trace_entry
from gateway.tasks.status import TaskStatus

from .model import SERIES, Fact, recent_kind
from .series import latency_kinds

# (function, status, state_seq) of a row already in the history
Existing = Mapping[str, tuple[str, str, int]]
# (task_id, function, submitted_ms, status, state_seq, source_type, source_name, condition, chain_id,
#  finished_ms, record)
InsertRow = tuple[str, str, int, str, int, str, str, str | None, str, int | None, str]
# (status, state_seq, condition, finished_ms, record, task_id)
UpdateRow = tuple[str, int, str | None, int | None, str, str]


@dataclass
class Plan:
    inserts: list[InsertRow] = field(default_factory=list)
    updates: list[UpdateRow] = field(default_factory=list)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (function, status) -> delta
    recent: Counter[tuple[str, str, int]] = field(default_factory=Counter)  # (function, kind, second) -> delta
    analyzed: bool = False  # the statistics were refreshed in the batch's transaction (`Backend.apply`)

    @property
    def empty(self) -> bool:
        return not (self.inserts or self.updates)


def merge(facts: Iterable[Fact]) -> dict[str, Fact]:
    """One fact per task: the newest state, or the submission when there is no state."""
    merged: dict[str, Fact] = {}
    for fact in facts:
        known = merged.get(fact.task_id)
        if known is None or fact.state_seq > known.state_seq:
            merged[fact.task_id] = fact
    return merged


def plan(
    facts: Mapping[str, Fact],
    existing: Existing,
    *,
    now: float,
    oldest_ms: Callable[[str], int],
) -> Plan:
    """`oldest_ms(function)`: submissions before it are past retention and not indexed."""
    result = Plan()
    # Counters are kept for the last hour (the overview's charts); the last minute's counts
    # read the newest of them.
    recent_from = int(now) - SERIES
    for task_id, fact in facts.items():
        row = existing.get(task_id)
        if row is None:
            if fact.submitted_ms < oldest_ms(fact.function):
                continue
            result.inserts.append(
                (
                    task_id,
                    fact.function,
                    fact.submitted_ms,
                    fact.status.value,
                    fact.state_seq,
                    fact.source_type,
                    fact.source_name,
                    fact.condition,
                    fact.chain_id,
                    fact.finished_ms,
                    record_of(fact),
                )
            )
            result.counts[(fact.function, fact.status.value)] += 1
            second = fact.submitted_ms // 1000
            if second >= recent_from:
                result.recent[(fact.function, "submitted", second)] += 1
            _note_finished(result, fact, fact.status, recent_from)
            continue
        function, status, state_seq = row
        if fact.state_seq <= state_seq:
            continue
        result.updates.append(
            (fact.status.value, fact.state_seq, fact.condition, fact.finished_ms, record_of(fact), task_id)
        )
        if fact.status.value != status:
            result.counts[(function, status)] -= 1
            result.counts[(function, fact.status.value)] += 1
            _note_finished(result, fact, fact.status, recent_from)
    return result


# A row made from a submission holds the headers its first record is made of, not that
# record: it is rendered when the row is listed (`listed_record`). A feed inserts every
# submission and lists few of them; making each record on insert was a tenth of the live
# feeder's CPU, and the headers are a third of the record's bytes, which every index page
# split and commit of the table writes (docs/architecture.md, "What a row holds").
HEADERS_MARK = "\x1e"  # starts a row's stored headers; a JSON record starts with "{"


def record_of(fact: Fact) -> str:
    """What a row holds for its record: a state's own record, or a submission's headers
    (`listed_record` makes its first record of them)."""
    if fact.record is not None:
        return fact.record
    headers = fact.headers or {}
    # Header values hold no line breaks (NATS forbids them), names no colon.
    return HEADERS_MARK + "\n".join(f"{name}:{value}" for name, value in headers.items())


def listed_record(stored: str) -> str:
    """A row's record as a list shows it (JSON): a state's as stored, a submission's made
    from its headers, as `new_record` would have made it."""
    if not stored.startswith(HEADERS_MARK):
        return stored
    headers = dict(line.split(":", 1) for line in stored[1:].split("\n") if line)
    try:
        return first_record(headers[c.H_INVOCATION], headers.get(c.H_TRACEPARENT), headers.get(c.H_TRACESTATE))
    except (KeyError, ValueError, IndexError):
        return encode(new_record(Invocation.from_message(headers, b""))).decode()


def first_record(meta: str, traceparent: str | None, tracestate: str | None) -> str:
    """`encode(new_record(Invocation.from_message(headers)))` written straight from the
    invocation header: in a live feed every submission makes its row this way, and building
    the invocation, the record and then its JSON was a fifth of the feed's CPU."""
    f = meta.split("|")
    if f[0] != META_VERSION or len(f) not in (12, 14):
        raise ValueError(meta[:80])
    submitted = float(f[3])
    # `quoted` is what json.dumps does to a str, without its call; iso() stamps are plain ASCII.
    at = f'"{iso(submitted)}"'
    scheduled = f'"{iso(float(f[4]) or submitted)}"'
    source_type, source_name = unquote(f[8]), unquote(f[9])
    trace = "null"
    if traceparent:
        trace = json.dumps(trace_entry(traceparent, tracestate), separators=(",", ":"))
    text = (
        f'{{"task_id":{quoted(f[1])},"function":{quoted(f[2])},"status":"Enqueued","attempts":{int(f[6])},'
        f'"submitted_at":{at},"scheduled_at":{scheduled},"started_at":null,"finished_at":null,'
        f'"source":{{"type":{quoted(source_type)},"name":{quoted(source_name)}}},'
        f'"chain":{{"id":{quoted(f[10] or "unknown")},"depth":{int(f[11])}}},"trace":{trace},'
        f'"timeline":[{{"status":"Enqueued","at":{at}}}],"result":null,"error":null,"errors":[],"destinations":[]'
    )
    if source_type == RERUN_SOURCE:
        return f'{text},"rerun_of":{quoted(source_name)}}}'
    return text + "}"


def _note_finished(result: Plan, fact: Fact, status: TaskStatus, recent_from: int) -> None:
    kind = recent_kind(status)
    if kind is None or fact.finished_ms is None:
        return
    second = fact.finished_ms // 1000
    if second >= recent_from:
        result.recent[(fact.function, kind, second)] += 1
        # A latency histogram per minute, in the same counters (series.py)
        for latency in latency_kinds(fact.status, fact.submitted_ms, fact.started_ms, fact.finished_ms):
            result.recent[(fact.function, latency, second - second % 60)] += 1
