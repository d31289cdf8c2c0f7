"""The default history database: one SQLite file under nats.data_dir.

WAL journal, so readers never wait for the feed's writes and several gateway processes on
one host can share the file; `BEGIN IMMEDIATE` takes the one write lock SQLite has, which
serialises the feed's batches across those processes. The stdlib driver is blocking, so each
connection lives on its own thread (a writer and a reader): the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .model import WINDOW, Counts, Fact, Listed, TaskQuery
from .plan import Plan, listed_record, plan
from .series import LAST_MINUTE_KINDS, MINUTES_SQL, MinuteRow
from .sql import (
    COLUMNS,
    INDEXES,
    RETIRED_INDEXES,
    SCHEMA_ROWS,
    SCHEMA_VERSION,
    AnalyzeSchedule,
    choose,
    drivers,
    fans_out,
    probe_sql,
    schema_is_current,
    select_sql,
)

T = TypeVar("T")
log = logging.getLogger(__name__)
CACHE_KIB = 64 * 1024  # page cache per connection: the hot ends of the indexes stay in memory
CHUNK = 500  # ids per IN (...) list: well under SQLite's bound on parameters
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS tasks (
        task_id TEXT PRIMARY KEY, function TEXT NOT NULL, submitted_ms INTEGER NOT NULL,
        status TEXT NOT NULL, state_seq INTEGER NOT NULL, source_type TEXT NOT NULL,
        source_name TEXT NOT NULL, condition TEXT, chain_id TEXT NOT NULL, finished_ms INTEGER,
        record TEXT NOT NULL
    ) WITHOUT ROWID""",
    *(f"DROP INDEX IF EXISTS {name}" for name in RETIRED_INDEXES),
    *(f"CREATE INDEX IF NOT EXISTS {name} ON tasks {columns}" for name, columns in INDEXES.items()),
    """CREATE TABLE IF NOT EXISTS counts (
        function TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (function, status)
    )""",
    """CREATE TABLE IF NOT EXISTS recent (
        function TEXT NOT NULL, kind TEXT NOT NULL, second INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (function, kind, second)
    )""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]
UPSERT_COUNT = (
    "INSERT INTO counts (function, status, n) VALUES (?, ?, ?) "
    "ON CONFLICT (function, status) DO UPDATE SET n = n + excluded.n"
)
UPSERT_RECENT = (
    "INSERT INTO recent (function, kind, second, n) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (function, kind, second) DO UPDATE SET n = n + excluded.n"
)


FUNCTIONS = "SELECT DISTINCT function FROM counts WHERE n > 0"
ANALYSIS_ROWS = 2000  # rows of each index ANALYZE samples: a few ms, and estimates good enough


def _analyze(conn: sqlite3.Connection) -> int:
    """Refresh the statistics; returns the table's rows (from the counters)."""
    # Without statistics SQLite guesses that every index equality narrows alike, and may
    # read `function = ?` in order filtering a chain instead of the chain's few rows.
    conn.execute(f"PRAGMA analysis_limit={ANALYSIS_ROWS}")
    conn.execute("ANALYZE")
    return int(conn.execute("SELECT COALESCE(SUM(n), 0) FROM counts").fetchone()[0])


def _statement(conn: sqlite3.Connection, query: TaskQuery) -> tuple[str, list[Any]]:
    """The listing statement of `query`, its index chosen by probes where that is needed."""
    candidates = drivers(query)
    need = fans_out(query) or (candidates and query.function is None)
    functions = [r[0] for r in conn.execute(FUNCTIONS)] if need else []
    probes: dict[str, int] = {}
    if functions or query.function is not None:
        for driver in candidates:
            probe, values = probe_sql(query, driver, functions)
            probes[driver] = conn.execute(probe, values).fetchone()[0]
    return select_sql(query, functions, choose(probes))


class _Connection:
    """A sqlite3 connection used from its own single thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fngate-sqlite")
        self.conn: sqlite3.Connection | None = None

    def _open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash (the feed's SIGKILL), and only
        # an OS crash may lose the last ones, which the feed then applies again.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self.conn = conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            if self.conn is None:
                self._open()
            assert self.conn is not None
            return fn(self.conn)

        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    async def close(self) -> None:
        def shut(conn: sqlite3.Connection) -> None:
            conn.close()

        if self.conn is not None:
            await self.run(shut)
            self.conn = None
        self.executor.shutdown(wait=False)
        # Usable again: a failed open is closed and retried.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fngate-sqlite")


def _write(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer = _Connection(path)
        self.reader = _Connection(path)
        self._analyze = AnalyzeSchedule()

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def current(conn: sqlite3.Connection) -> bool:
            try:
                return schema_is_current(dict(conn.execute(SCHEMA_ROWS)))
            except sqlite3.OperationalError:  # no such table: a new file
                return False

        # A read when the schema is there: opening does not wait for a batch being committed.
        if await self.reader.run(current):
            return

        def create(conn: sqlite3.Connection) -> None:
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('db_id', ?)", (uuid.uuid4().hex[:16],))

        await self.writer.run(lambda conn: _write(conn, create))

    async def close(self) -> None:
        await self.writer.close()
        await self.reader.close()

    async def database_id(self) -> str:
        row = await self.reader.run(lambda conn: conn.execute("SELECT value FROM meta WHERE key = 'db_id'").fetchone())
        return str(row[0])

    async def apply(
        self, facts: Mapping[str, Fact], *, now: float, oldest_ms: Callable[[str], int], analyze: bool = False
    ) -> Plan:
        def work(conn: sqlite3.Connection) -> Plan:
            ids = list(facts)
            existing: dict[str, tuple[str, str, int]] = {}
            for i in range(0, len(ids), CHUNK):
                chunk = ids[i : i + CHUNK]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT task_id, function, status, state_seq FROM tasks WHERE task_id IN ({marks})"
                for task_id, function, status, state_seq in conn.execute(sql, chunk):
                    existing[task_id] = (function, status, state_seq)
            changes = plan(facts, existing, now=now, oldest_ms=oldest_ms)
            if changes.inserts:
                conn.executemany(f"INSERT INTO tasks ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", changes.inserts)
            if changes.updates:
                conn.executemany(
                    "UPDATE tasks SET status = ?, state_seq = ?, condition = ?, finished_ms = ?, record = ? "
                    "WHERE task_id = ?",
                    changes.updates,
                )
            deltas = [(f, s, n) for (f, s), n in changes.counts.items() if n]
            if deltas:
                conn.executemany(UPSERT_COUNT, deltas)
            if changes.recent:
                conn.executemany(UPSERT_RECENT, [(f, k, s, n) for (f, k, s), n in changes.recent.items()])
            if analyze:
                try:
                    rows = _analyze(conn)
                except sqlite3.Error as exc:  # the batch commits without it
                    log.warning("task index: refreshing the statistics failed: %s", exc)
                else:
                    changes.analyzed = True
                    self._analyze.refreshed(rows)
            return changes

        changes = await self.writer.run(lambda conn: _write(conn, work))
        if not changes.analyzed and self._analyze.note(len(changes.inserts)):
            self._analyze.refreshed(await self.writer.run(_analyze))
        return changes

    async def select(self, query: TaskQuery) -> list[Listed]:
        def read(conn: sqlite3.Connection) -> list[Listed]:
            sql, params = _statement(conn, query)
            return [Listed(r[0], r[1], r[2], listed_record(r[3])) for r in conn.execute(sql, params)]

        return await self.reader.run(read)

    async def explain(self, query: TaskQuery) -> str:
        def read(conn: sqlite3.Connection) -> str:
            sql, params = _statement(conn, query)
            return "; ".join(str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))

        return await self.reader.run(read)

    async def analyze(self) -> None:
        self._analyze.refreshed(await self.writer.run(_analyze))

    async def counts(self, functions: Sequence[str], *, now: float) -> dict[str, Counts]:
        names = list(functions)

        def read(conn: sqlite3.Connection) -> dict[str, Counts]:
            marks = ",".join("?" * len(names))
            statuses: dict[str, dict[str, int]] = {n: {} for n in names}
            recent: dict[str, dict[str, int]] = {n: {} for n in names}
            if names:
                for function, status, n in conn.execute(
                    f"SELECT function, status, n FROM counts WHERE function IN ({marks})", names
                ):
                    statuses[function][status] = n
                rows = conn.execute(
                    f"SELECT function, kind, SUM(n) FROM recent WHERE function IN ({marks}) "
                    f"AND kind IN {LAST_MINUTE_KINDS} AND second > ? GROUP BY function, kind",
                    [*names, int(now) - WINDOW],
                )
                for function, kind, n in rows:
                    recent[function][kind] = n
            return {n: Counts.from_rows(statuses[n], recent[n]) for n in names}

        return await self.reader.run(read)

    async def function_of(self, task_id: str) -> str | None:
        row = await self.reader.run(
            lambda conn: conn.execute("SELECT function FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        )
        return None if row is None else str(row[0])

    async def functions(self) -> list[str]:
        rows = await self.reader.run(lambda conn: conn.execute(FUNCTIONS).fetchall())
        return [str(r[0]) for r in rows]

    async def purge(self, function: str, before_ms: int, limit: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "DELETE FROM tasks WHERE task_id IN (SELECT task_id FROM tasks WHERE function = ? AND submitted_ms < ? "
                "ORDER BY submitted_ms LIMIT ?) RETURNING status",
                (function, before_ms, limit),
            ).fetchall()
            gone: dict[str, int] = {}
            for (status,) in rows:
                gone[status] = gone.get(status, 0) + 1
            conn.executemany(UPSERT_COUNT, [(function, s, -n) for s, n in gone.items()])
            return len(rows)

        return await self.writer.run(lambda conn: _write(conn, work))

    async def purge_recent(self, before_second: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM recent WHERE second < ?", (before_second,)).rowcount

        return await self.writer.run(lambda conn: _write(conn, work))

    async def minute_counts(self, function: str, since_second: int) -> list[MinuteRow]:
        rows = await self.reader.run(lambda conn: conn.execute(MINUTES_SQL, (function, since_second)).fetchall())
        return [(str(kind), int(minute), int(n)) for kind, minute, n in rows]

    async def feed_lease(self, slots: range) -> FileLease | None:
        for slot in slots:
            lease = FileLease.take(self.path.with_name(f"{self.path.name}.feeder-{slot}.lock"), slot)
            if lease is not None:
                return lease
        return None

    def __repr__(self) -> str:
        return f"SqliteBackend({str(self.path)!r})"


class FileLease:
    """A feeder slot of a SQLite database: an exclusive flock on a file beside it, which the
    kernel lets go when the holding process dies, however it dies."""

    def __init__(self, fd: int, slot: int) -> None:
        self.fd: int | None = fd
        self.slot = slot

    @classmethod
    def take(cls, path: Path, slot: int) -> FileLease | None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(fd, slot)

    async def held(self) -> bool:
        return self.fd is not None

    async def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = None
