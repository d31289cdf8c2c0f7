"""`fngate tasks list` as a table: one line per task, what a person scans for."""

from __future__ import annotations

from typing import Any

COLUMNS = ("TASK ID", "FUNCTION", "STATUS", "ATTEMPTS", "SUBMITTED", "FINISHED")


def _row(task: dict[str, Any]) -> tuple[str, ...]:
    return (
        str(task.get("task_id", "")),
        str(task.get("function", "")),
        str(task.get("status", "")),
        str(task.get("attempts", "")),
        str(task.get("submitted_at") or "-"),
        str(task.get("finished_at") or "-"),
    )


def task_table(page: dict[str, Any]) -> str:
    """The tasks of one `GET /v1/tasks` page, and how to ask for the next one."""
    rows = [COLUMNS, *(_row(t) for t in page.get("tasks", []))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append("(no tasks)")
    cursor = page.get("next_cursor")
    if cursor:
        lines.append(f"more: --cursor {cursor}")
    return "\n".join(lines)
