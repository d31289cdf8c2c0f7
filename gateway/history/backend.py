"""The one interface every history database implements, and how a URL picks one."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from ..errors import ConfigError
from .model import Counts, Fact, Listed, TaskQuery
from .plan import Plan
from .series import MinuteRow

OldestMs = Callable[[str], int]


class FeedLease(Protocol):
    """One of the database's feeder slots, held by one process until it lets go or dies
    (the operating system or the database server then frees it)."""

    slot: int  # which one: slot 0's holder feeds always, the others only through a backlog

    async def held(self) -> bool:
        """Still ours (the holder's connection to the database is alive)."""

    async def release(self) -> None: ...


class Backend(Protocol):
    """A database holding the task rows and their counters.

    Writers (`apply`, `purge`) are serialised across every process sharing the database (a
    write lock), so reading the rows a batch touches and writing the plan back is atomic.
    """

    name: str

    async def open(self) -> None:
        """Connect and create the schema if it is not there (idempotent, safe to race)."""

    async def close(self) -> None: ...

    async def database_id(self) -> str:
        """A random id drawn when the schema was created: it names the feed's consumers, so
        replicas sharing a database share them, and a new (or deleted) database is fed from
        the start of the streams."""

    async def apply(self, facts: Mapping[str, Fact], *, now: float, oldest_ms: OldestMs, analyze: bool = False) -> Plan:
        """Apply one batch (one fact per task) in one transaction; returns what it changed.
        `analyze`: the statistics are refreshed in the same transaction (the last batch of a
        backlog: its rows and the figures that plan their queries become visible at once)."""

    async def select(self, query: TaskQuery) -> list[Listed]:
        """Up to `query.limit` tasks in order (`sql.select_sql`)."""

    async def explain(self, query: TaskQuery) -> str:
        """The database's plan of the statement `select` runs for `query`, on one line."""

    async def analyze(self) -> None:
        """Refresh the planner's statistics of the tables (after a bulk load)."""

    async def counts(self, functions: Sequence[str], *, now: float) -> dict[str, Counts]: ...

    async def function_of(self, task_id: str) -> str | None: ...

    async def functions(self) -> list[str]:
        """Every function that has rows."""

    async def purge(self, function: str, before_ms: int, limit: int) -> int:
        """Delete up to `limit` of the function's rows submitted before `before_ms`; returns how many."""

    async def purge_recent(self, before_second: int) -> int:
        """Drop per-second counters older than `before_second`."""

    async def minute_counts(self, function: str, since_second: int) -> list[MinuteRow]:
        """The function's counters from `since_second` on, summed by kind and minute (series.py)."""

    async def feed_lease(self, slots: range) -> FeedLease | None:
        """The first free one of these feeder slots, else None (feeder.py). The slots are
        an economy, not a safeguard: two feeders at once are still correct (plan.py)."""


def open_backend(url: str, data_dir: str | Path) -> Backend:
    """`sqlite` (a file under data_dir), `sqlite:///path`, or `postgresql://…`."""
    if url == "sqlite" or url.startswith("sqlite:"):
        from .sqlite import SqliteBackend

        path = Path(url[len("sqlite://") :]) if url.startswith("sqlite://") else Path(data_dir) / "index.db"
        return SqliteBackend(path)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            raise ConfigError(
                ["index.url: a postgresql:// index needs the asyncpg driver: pip install asyncpg"]
            ) from None
        from .postgres import PostgresBackend

        return PostgresBackend(url)
    raise ConfigError([f"index.url: must be sqlite, sqlite:///path or postgresql://… (got {url!r})"])
