"""A plain-Python model of the history, to compare the databases' answers with."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.history import TaskQuery
from gateway.history.model import Fact
from gateway.tasks.status import TaskStatus


@dataclass
class Row:
    fact: Fact  # the submission's fields, with the newest state applied


class Model:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def apply(self, fact: Fact) -> None:
        row = self.rows.get(fact.task_id)
        if row is None:
            self.rows[fact.task_id] = Row(fact)
        elif fact.state_seq > row.fact.state_seq:
            row.fact = _with_state(row.fact, fact)

    def select(self, q: TaskQuery) -> list[str]:
        found = []
        for row in self.rows.values():
            f = row.fact
            if q.function is not None and f.function != q.function:
                continue
            if q.statuses and f.status not in q.statuses:
                continue
            if q.source_type is not None and f.source_type != q.source_type:
                continue
            if q.source_name is not None and f.source_name != q.source_name:
                continue
            if q.condition is not None and f.condition != q.condition:
                continue
            if q.chain is not None and f.chain_id != q.chain:
                continue
            if q.prefix and not f.task_id.startswith(q.prefix):
                continue
            if q.since_ms is not None and f.submitted_ms < q.since_ms:
                continue
            if q.until_ms is not None and f.submitted_ms > q.until_ms:
                continue
            found.append(f)
        found.sort(key=lambda f: (f.submitted_ms, f.task_id), reverse=q.order == "desc")
        return [f.task_id for f in found]

    def by_status(self, function: str) -> dict[TaskStatus, int]:
        counts: dict[TaskStatus, int] = {}
        for row in self.rows.values():
            if row.fact.function == function:
                counts[row.fact.status] = counts.get(row.fact.status, 0) + 1
        return counts


def _with_state(base: Fact, state: Fact) -> Fact:
    return Fact(
        base.task_id,
        base.function,
        base.submitted_ms,
        base.source_type,
        base.source_name,
        base.chain_id,
        state.status,
        state.state_seq,
        state.condition,
        state.finished_ms,
    )
