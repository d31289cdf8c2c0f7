"""The SQL both backends share: the schema's shape and the listing query."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from gateway.tasks.status import TaskStatus

from .model import TaskQuery

SCHEMA_VERSION = "3"
# What opening a database reads first: with both rows there at this version, the schema is
# current and nothing is written (`schema_is_current`).
SCHEMA_ROWS = "SELECT key, value FROM meta WHERE key IN ('schema', 'db_id')"
COLUMNS = (
    "task_id, function, submitted_ms, status, state_seq, source_type, source_name, condition, chain_id, finished_ms,"
    " record"
)
# Every filter is a range of one index read in order, LIMIT rows long: each index ends in
# the listing order, and holds the function first, then the column it filters on (so
# `function` with any one other filter, alone or with since/until/cursor, is an exact
# range, whichever rows match: old, rare or new). A filter on status, source or condition
# without a function is one such range per function, merged (`fan_out`): a few index
# entries per function, then the page's rows by primary key. A chain is usually
# selective by itself, and status within one has its own index (below); a task id prefix is
# a range of the primary key. Status with source (the pair a
# console asks for) has its own index: each may be common and the pair match nothing, and a
# range of either one filtered by the other would then read the function's every row.
INDEXES = {
    "tasks_by_time": "(submitted_ms, task_id)",
    "tasks_by_function": "(function, submitted_ms, task_id)",
    "tasks_by_function_status": "(function, status, submitted_ms, task_id)",
    "tasks_by_function_status_source": "(function, status, source_type, source_name, submitted_ms, task_id)",
    "tasks_by_function_source": "(function, source_type, source_name, submitted_ms, task_id)",
    "tasks_by_function_condition": "(function, condition, submitted_ms, task_id) WHERE condition IS NOT NULL",
    "tasks_by_chain": "(chain_id, submitted_ms, task_id)",
    # A chain is usually one workflow's few tasks, but a sender may reuse one chain id for
    # everything it sends: status within a chain is then a range of its own, not a walk of
    # the chain's every row in order (at 1M tasks in 7 chains, oldest first: 200-300 ms).
    "tasks_by_function_status_chain": "(function, status, chain_id, submitted_ms, task_id)",
}
RETIRED_INDEXES = ["tasks_by_status", "tasks_by_source", "tasks_by_condition"]  # schema 1
PREFIX_END = "~"  # sorts after every character a task id may hold ([A-Za-z0-9._-])
# A prefix this long is a narrow range of the primary key, read and then sorted; a shorter
# one may match most ids (generated ids share `t-` and their time's leading digits), so the
# listing order's index is read instead, filtered by the prefix. Neither planner can tell
# (SQLite has no statistics of ranges), so the SQL says which: a column written `col || ''`
# is not an index's.
SELECTIVE_PREFIX = 6


def schema_is_current(meta: dict[str, str]) -> bool:
    """Of the rows SCHEMA_ROWS read: this version's schema, with the database's id drawn."""
    return meta.get("schema") == SCHEMA_VERSION and "db_id" in meta


def _long_prefix(query: TaskQuery) -> bool:
    return bool(query.prefix) and len(query.prefix or "") >= SELECTIVE_PREFIX


def fans_out(query: TaskQuery) -> bool:
    """Whether the query is one index range per function (see INDEXES)."""
    return (
        query.function is None
        and query.chain is None
        and not _long_prefix(query)
        and bool(query.statuses or query.source_type is not None or query.condition is not None)
    )


def arms(query: TaskQuery, functions: Sequence[str]) -> list[TaskQuery]:
    """The queries of one index range each that together answer `query`: one per status
    asked, times one per function when the filter needs a function to lead its index."""
    statuses: list[tuple[TaskStatus, ...]] = [(s,) for s in dict.fromkeys(query.statuses)] or [()]
    names: list[str | None] = list(dict.fromkeys(functions)) if fans_out(query) else [query.function]
    return [replace(query, function=f, statuses=s) for f in names for s in statuses]


class AnalyzeSchedule:
    """When to refresh the planner's statistics: after the rows this replica inserted
    reach the table's size at the last refresh (so each doubling of a table being filled
    is seen; the first after `FIRST` rows), and at least every `MOST` rows. A backfill
    grows the table faster than autovacuum (PostgreSQL) looks at it, and SQLite has none:
    with no statistics, or a small table's, the planner's guesses pick the wrong index."""

    FIRST = 1000
    MOST = 1_000_000

    def __init__(self) -> None:
        self.inserted = 0
        self.due = self.FIRST

    def note(self, inserted: int) -> bool:
        """Count a batch's inserts; True when the statistics should be refreshed now."""
        self.inserted += inserted
        return self.inserted >= self.due

    def refreshed(self, rows: int) -> None:
        self.inserted = 0
        self.due = max(self.FIRST, min(rows, self.MOST))


PROBE_ROWS = 1000  # index entries a probe counts at most
# Which filters each candidate index serves after the function (`driver`).
DRIVERS = {"status_source": ("status", "source"), "condition": ("condition",), "source": ("source",)}


def drivers(query: TaskQuery) -> list[str]:
    """The indexes that could each drive a query filtering on several of status, source and
    condition, when no single index serves them all: SQLite's statistics are averages, and
    both planners take filters as independent, so either may read a common status's range
    filtered by a source the function never had. The backend probes each (`probe_sql`) and
    the one with the fewest matching entries drives."""
    if (query.prefix and _long_prefix(query)) or query.chain is not None or query.condition is None:
        return []
    if not (query.statuses or query.source_type is not None):
        return []
    return ["status_source" if query.statuses else "source", "condition"]


def probe_sql(query: TaskQuery, driver: str, functions: Sequence[str]) -> tuple[str, list[Any]]:
    """How many index entries (up to PROBE_ROWS) match the filters `driver` serves."""
    served = DRIVERS[driver]
    names = [query.function] if query.function is not None else list(functions)
    probe = replace(
        query,
        function=None,
        statuses=query.statuses[:1] if "status" in served else (),
        source_type=query.source_type if "source" in served else None,
        source_name=query.source_name if "source" in served else None,
        condition=query.condition if "condition" in served else None,
        cursor=None,
    )
    where, params = _where(probe)
    marks = ",".join("?" * len(names))
    sql = (
        f"SELECT COUNT(*) FROM (SELECT 1 FROM tasks WHERE function IN ({marks}) AND {' AND '.join(where)} LIMIT ?) AS p"
    )
    return sql, [*names, *params, PROBE_ROWS]


def _where(query: TaskQuery, driver: str | None = None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    by_key = _long_prefix(query)
    other = " || ''" if by_key else ""  # the primary key drives: no other column's index
    served = DRIVERS.get(driver or "", ("status", "source", "condition"))
    status_sql = "status" if "status" in served else "status || ''"
    source_sql = ("source_type", "source_name") if "source" in served else ("source_type || ''", "source_name || ''")
    condition_sql = "condition" if "condition" in served else "condition || ''"

    def add(clause: str, *values: Any) -> None:
        where.append(clause)
        params.extend(values)

    if query.function is not None:
        add(f"function{other} = ?", query.function)
    if query.statuses:
        add(f"{status_sql}{other} = ?", query.statuses[0].value)
    if query.source_type is not None:
        add(f"{source_sql[0]}{other} = ?", query.source_type)
    if query.source_name is not None:
        add(f"{source_sql[1]}{other} = ?", query.source_name)
    if query.condition is not None:
        add(f"{condition_sql}{other} = ?", query.condition)
    if query.chain is not None:
        add(f"chain_id{other} = ?", query.chain)
    if query.prefix:
        key = "task_id" if by_key else "task_id || ''"
        add(f"{key} >= ? AND {key} < ?", query.prefix, query.prefix + PREFIX_END)
    if query.since_ms is not None:
        add("submitted_ms >= ?", query.since_ms)
    if query.until_ms is not None:
        add("submitted_ms <= ?", query.until_ms)
    if query.cursor is not None:
        ms, task_id = query.cursor.submitted_ms, query.cursor.task_id
        # The plain bound lets every planner narrow the index range; the row comparison
        # then places the cursor exactly.
        if query.order == "desc":
            add("submitted_ms <= ? AND (submitted_ms, task_id) < (?, ?)", ms, ms, task_id)
        else:
            add("submitted_ms >= ? AND (submitted_ms, task_id) > (?, ?)", ms, ms, task_id)
    return where, params


def choose(probes: dict[str, int]) -> str | None:
    """The driver whose probe matched fewest entries (None: let the planner choose)."""
    return min(probes, key=lambda d: probes[d]) if probes else None


def select_sql(query: TaskQuery, functions: Sequence[str] = (), driver: str | None = None) -> tuple[str, list[Any]]:
    """The listing query with `?` placeholders: `query.limit` rows in order. `functions`
    (every function with rows) is needed only when `fans_out(query)`; `driver`, one of
    `drivers(query)`, names the index the filters are read from."""
    direction = "DESC" if query.order == "desc" else "ASC"
    order = f"ORDER BY submitted_ms {direction}, task_id {direction} LIMIT ?"
    record = "''" if query.ids_only else "record"
    parts = arms(query, functions)
    if len(parts) == 1:
        where, params = _where(parts[0], driver)
        sql = f"SELECT task_id, function, submitted_ms, {record} FROM tasks"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return f"{sql} {order}", [*params, query.limit]
    if not parts:  # no function has rows
        return "SELECT task_id, function, submitted_ms, record FROM tasks WHERE 1 = 0", []
    # The keys of each range (index entries only), merged; then the page's rows by key.
    selects: list[str] = []
    params = []
    for n, part in enumerate(parts):
        where, values = _where(part, driver)
        selects.append(
            f"SELECT * FROM (SELECT submitted_ms, task_id FROM tasks WHERE {' AND '.join(where)} {order}) AS a{n}"
        )
        params += [*values, query.limit]
    keys = " UNION ALL ".join(selects)
    sql = (
        f"SELECT t.task_id, t.function, t.submitted_ms, {'t.' + record if record == 'record' else record} "
        f"FROM (SELECT * FROM ({keys}) AS u ORDER BY submitted_ms {direction}, task_id {direction} LIMIT ?) AS k "
        f"JOIN tasks AS t ON t.task_id = k.task_id ORDER BY k.submitted_ms {direction}, k.task_id {direction}"
    )
    return sql, [*params, query.limit]


def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, …`."""
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _m: f"${next(counter)}", sql)
