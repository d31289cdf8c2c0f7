"""The SQL both backends share: the schema's shape and the listing query."""

from __future__ import annotations

import re
from typing import Any

from .model import TaskQuery

SCHEMA_VERSION = "1"
COLUMNS = (
    "task_id, function, submitted_ms, status, state_seq, source_type, source_name, condition, chain_id, finished_ms,"
    " record"
)
# One index per filter, each ending in the listing order, so every filter (alone, or with
# since/until/cursor) is a range of one index read in order, LIMIT rows long. A task id
# prefix is a range of the primary key. (function, status) is the dashboard's common pair.
INDEXES = {
    "tasks_by_time": "(submitted_ms, task_id)",
    "tasks_by_function": "(function, submitted_ms, task_id)",
    "tasks_by_function_status": "(function, status, submitted_ms, task_id)",
    "tasks_by_status": "(status, submitted_ms, task_id)",
    "tasks_by_source": "(source_type, source_name, submitted_ms, task_id)",
    "tasks_by_condition": "(condition, submitted_ms, task_id) WHERE condition IS NOT NULL",  # terminal ones only
    "tasks_by_chain": "(chain_id, submitted_ms, task_id)",
}
PREFIX_END = "~"  # sorts after every character a task id may hold ([A-Za-z0-9._-])


def select_sql(query: TaskQuery) -> tuple[str, list[Any]]:
    """The listing query with `?` placeholders, for at most one status."""
    where: list[str] = []
    params: list[Any] = []

    def add(clause: str, *values: Any) -> None:
        where.append(clause)
        params.extend(values)

    if query.function is not None:
        add("function = ?", query.function)
    if query.statuses:
        add("status = ?", query.statuses[0].value)
    if query.source_type is not None:
        add("source_type = ?", query.source_type)
    if query.source_name is not None:
        add("source_name = ?", query.source_name)
    if query.condition is not None:
        add("condition = ?", query.condition)
    if query.chain is not None:
        add("chain_id = ?", query.chain)
    if query.prefix:
        add("task_id >= ? AND task_id < ?", query.prefix, query.prefix + PREFIX_END)
    if query.since_ms is not None:
        add("submitted_ms >= ?", query.since_ms)
    if query.until_ms is not None:
        add("submitted_ms <= ?", query.until_ms)
    desc = query.order == "desc"
    if query.cursor is not None:
        ms, task_id = query.cursor.submitted_ms, query.cursor.task_id
        # The plain bound lets every planner narrow the index range; the row comparison
        # then places the cursor exactly.
        if desc:
            add("submitted_ms <= ? AND (submitted_ms, task_id) < (?, ?)", ms, ms, task_id)
        else:
            add("submitted_ms >= ? AND (submitted_ms, task_id) > (?, ?)", ms, ms, task_id)
    direction = "DESC" if desc else "ASC"
    record = "''" if query.ids_only else "record"
    sql = f"SELECT task_id, function, submitted_ms, {record} FROM tasks"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY submitted_ms {direction}, task_id {direction} LIMIT ?"
    params.append(query.limit)
    return sql, params


def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1, $2, …`."""
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _m: f"${next(counter)}", sql)
