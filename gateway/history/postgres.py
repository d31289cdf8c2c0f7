"""The shared history database for replicas on several hosts: PostgreSQL through asyncpg.

Batches are written with `unnest` over arrays (one statement per table, whatever the batch
size) under a transaction-scoped advisory lock, which serialises the feed's batches and
retention's deletes across every replica: reading the rows a batch touches and writing the
plan back is then atomic. Text columns use the "C" collation, so a task id prefix is a
range of the primary key and the order matches byte order on every server.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg

from .model import WINDOW, Counts, Fact, Listed, TaskQuery
from .plan import Plan, listed_record, plan
from .series import LAST_MINUTE_KINDS, MINUTES_SQL, MinuteRow
from .sql import (
    INDEXES,
    RETIRED_INDEXES,
    SCHEMA_ROWS,
    SCHEMA_VERSION,
    AnalyzeSchedule,
    choose,
    drivers,
    fans_out,
    numbered,
    probe_sql,
    schema_is_current,
    select_sql,
)

log = logging.getLogger(__name__)
LOCK_KEY = 0x666E67617465  # "fngate": the advisory lock every writer takes
FEEDER_KEY = LOCK_KEY + 1  # feeder slot k is the session advisory lock FEEDER_KEY + k
# Seconds a batch's ANALYZE may take (it may wait for autovacuum) before the batch commits without it.
ANALYZE_TIMEOUT = 10.0
LEASE_CHECK_TIMEOUT = 5.0  # seconds a lease's connection has to answer before it counts as lost
TEXT = 'TEXT COLLATE "C"'
SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS tasks (
        task_id {TEXT} PRIMARY KEY, function {TEXT} NOT NULL, submitted_ms BIGINT NOT NULL,
        status {TEXT} NOT NULL, state_seq BIGINT NOT NULL, source_type {TEXT} NOT NULL,
        source_name {TEXT} NOT NULL, condition {TEXT}, chain_id {TEXT} NOT NULL, finished_ms BIGINT,
        record TEXT NOT NULL
    )""",
    *(f"DROP INDEX IF EXISTS {name}" for name in RETIRED_INDEXES),
    *(f"CREATE INDEX IF NOT EXISTS {name} ON tasks {columns}" for name, columns in INDEXES.items()),
    f"""CREATE TABLE IF NOT EXISTS counts (
        function {TEXT} NOT NULL, status {TEXT} NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (function, status)
    )""",
    f"""CREATE TABLE IF NOT EXISTS recent (
        function {TEXT} NOT NULL, kind {TEXT} NOT NULL, second BIGINT NOT NULL, n BIGINT NOT NULL,
        PRIMARY KEY (function, kind, second)
    )""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]
FUNCTIONS = "SELECT DISTINCT function FROM counts WHERE n > 0"
ROWS = "SELECT SUM(n) FROM counts"  # the table's rows, from the counters
COUNTS = (
    """SELECT 's', function, status, n FROM counts WHERE function = ANY($1::text[])
    UNION ALL SELECT 'r', function, kind, SUM(n) FROM recent WHERE function = ANY($1::text[])
    AND kind IN """
    + LAST_MINUTE_KINDS
    + """ AND second > $2 GROUP BY function, kind"""
)
INSERT_TASKS = """INSERT INTO tasks (task_id, function, submitted_ms, status, state_seq, source_type,
    source_name, condition, chain_id, finished_ms, record)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[])"""
UPDATE_TASKS = """UPDATE tasks SET status = u.status, state_seq = u.state_seq, condition = u.condition,
    finished_ms = u.finished_ms, record = u.record
    FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[])
    AS u(status, state_seq, condition, finished_ms, record, task_id) WHERE tasks.task_id = u.task_id"""
UPSERT_COUNTS = """INSERT INTO counts (function, status, n) SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
    ON CONFLICT (function, status) DO UPDATE SET n = counts.n + excluded.n"""
UPSERT_RECENT = """INSERT INTO recent (function, kind, second, n)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
    ON CONFLICT (function, kind, second) DO UPDATE SET n = recent.n + excluded.n"""


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


async def _statement(conn: Any, query: TaskQuery) -> tuple[str, list[Any]]:
    """The listing statement of `query` (numbered placeholders), its index chosen by probes
    where that is needed."""
    candidates = drivers(query)
    need = fans_out(query) or (candidates and query.function is None)
    functions = [r[0] for r in await conn.fetch(FUNCTIONS)] if need else []
    probes: dict[str, int] = {}
    if functions or query.function is not None:
        for driver in candidates:
            probe, values = probe_sql(query, driver, functions)
            probes[driver] = int(await conn.fetchval(numbered(probe), *values))
    sql, params = select_sql(query, functions, choose(probes))
    return numbered(sql), params


class PostgresBackend:
    name = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self.pool: asyncpg.Pool | None = None
        self._lease_conn: asyncpg.Connection | None = None  # a waiting feeder's (feed_lease)
        self._analyze = AnalyzeSchedule()

    async def open(self) -> None:
        # Custom plans only: a generic plan for the listing (LIMIT and filters as parameters)
        # may walk the wrong index for some filter values, and replanning costs microseconds.
        # random_page_cost as for SSDs: at the default (4, for spinning disks) the planner
        # prefers the time index, whose order matches the table's, read backwards and
        # filtered, over a function's exact range; when that function's rows are old, the
        # walk reads the whole table.
        self.pool = await asyncpg.create_pool(
            self.url,
            min_size=1,
            max_size=4,
            command_timeout=60,
            server_settings={"plan_cache_mode": "force_custom_plan", "random_page_cost": "1.1"},
        )
        async with self.pool.acquire() as conn:
            # A read when the schema is there: opening does not wait for a batch being committed.
            with contextlib.suppress(asyncpg.UndefinedTableError):
                if schema_is_current(dict(await conn.fetch(SCHEMA_ROWS))):
                    return
        async with self.pool.acquire() as conn, conn.transaction():
            # Two replicas creating the schema at once would collide in the catalog.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            for statement in SCHEMA:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO meta VALUES ('db_id', $2), ('schema', $1) ON CONFLICT (key) DO UPDATE "
                "SET value = excluded.value WHERE meta.key = 'schema'",
                SCHEMA_VERSION,
                uuid.uuid4().hex[:16],
            )

    def _pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError("the history database is not open")
        return self.pool

    async def close(self) -> None:
        if self._lease_conn is not None:
            with contextlib.suppress(Exception):
                await self._lease_conn.close()
            self._lease_conn = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def database_id(self) -> str:
        return str(await self._pool().fetchval("SELECT value FROM meta WHERE key = 'db_id'"))

    async def apply(
        self, facts: Mapping[str, Fact], *, now: float, oldest_ms: Callable[[str], int], analyze: bool = False
    ) -> Plan:
        async with self._pool().acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            rows = await conn.fetch(
                "SELECT task_id, function, status, state_seq FROM tasks WHERE task_id = ANY($1::text[])", list(facts)
            )
            existing = {r[0]: (r[1], r[2], r[3]) for r in rows}
            changes = plan(facts, existing, now=now, oldest_ms=oldest_ms)
            if changes.inserts:
                await conn.execute(INSERT_TASKS, *_columns(changes.inserts, 11))
            if changes.updates:
                await conn.execute(UPDATE_TASKS, *_columns(changes.updates, 6))
            deltas = [(f, s, n) for (f, s), n in changes.counts.items() if n]
            if deltas:
                await conn.execute(UPSERT_COUNTS, *_columns(deltas, 3))
            if changes.recent:
                recent = [(f, k, s, n) for (f, k, s), n in changes.recent.items()]
                await conn.execute(UPSERT_RECENT, *_columns(recent, 4))
            if analyze:
                try:
                    async with conn.transaction():  # a savepoint: a failed ANALYZE costs the batch nothing
                        await conn.execute("ANALYZE tasks", timeout=ANALYZE_TIMEOUT)
                except (asyncpg.PostgresError, TimeoutError) as exc:
                    log.warning("task index: refreshing the statistics failed: %s", exc)
                else:
                    changes.analyzed = True
                    self._analyze.refreshed(int(await conn.fetchval(ROWS) or 0))
        if not changes.analyzed and self._analyze.note(len(changes.inserts)):
            await self._pool().execute("ANALYZE tasks")
            self._analyze.refreshed(int(await self._pool().fetchval(ROWS) or 0))
        return changes

    async def select(self, query: TaskQuery) -> list[Listed]:
        async with self._pool().acquire() as conn:
            sql, params = await _statement(conn, query)
            rows = await conn.fetch(sql, *params)
        return [Listed(r[0], r[1], r[2], listed_record(r[3])) for r in rows]

    async def explain(self, query: TaskQuery) -> str:
        async with self._pool().acquire() as conn:
            sql, params = await _statement(conn, query)
            rows = await conn.fetch(f"EXPLAIN {sql}", *params)
        return "; ".join(" ".join(str(r[0]).split()) for r in rows)

    async def analyze(self) -> None:
        await self._pool().execute("ANALYZE")
        self._analyze.refreshed(int(await self._pool().fetchval(ROWS) or 0))

    async def counts(self, functions: Sequence[str], *, now: float) -> dict[str, Counts]:
        names = list(functions)
        statuses: dict[str, dict[str, int]] = {n: {} for n in names}
        recent: dict[str, dict[str, int]] = {n: {} for n in names}
        # One round trip: the totals by status (a primary-key range per function) and the
        # last minute's per-second counters (at most 3 x 60 rows per function).
        rows = await self._pool().fetch(COUNTS, names, int(now) - WINDOW)
        for kind, function, key, n in rows:
            (statuses if kind == "s" else recent)[function][key] = n
        return {n: Counts.from_rows(statuses[n], recent[n]) for n in names}

    async def function_of(self, task_id: str) -> str | None:
        value = await self._pool().fetchval("SELECT function FROM tasks WHERE task_id = $1", task_id)
        return None if value is None else str(value)

    async def functions(self) -> list[str]:
        rows = await self._pool().fetch(FUNCTIONS)
        return [str(r[0]) for r in rows]

    async def purge(self, function: str, before_ms: int, limit: int) -> int:
        async with self._pool().acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            rows = await conn.fetch(
                "DELETE FROM tasks WHERE task_id IN (SELECT task_id FROM tasks WHERE function = $1 "
                "AND submitted_ms < $2 ORDER BY submitted_ms LIMIT $3) RETURNING status",
                function,
                before_ms,
                limit,
            )
            gone: dict[str, int] = {}
            for r in rows:
                gone[r[0]] = gone.get(r[0], 0) + 1
            if gone:
                deltas = [(function, s, -n) for s, n in gone.items()]
                await conn.execute(UPSERT_COUNTS, *_columns(deltas, 3))
        return len(rows)

    async def purge_recent(self, before_second: int) -> int:
        result = await self._pool().execute("DELETE FROM recent WHERE second < $1", before_second)
        return int(str(result).split()[-1])

    async def minute_counts(self, function: str, since_second: int) -> list[MinuteRow]:
        rows = await self._pool().fetch(numbered(MINUTES_SQL), function, since_second)
        return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]

    async def feed_lease(self, slots: range) -> SessionLease | None:
        # Its own connection, outside the pool: a session lock lives as long as the session,
        # and the server frees it when the holder dies or its connection drops. A feeder
        # waiting for a slot asks again every second on the same connection.
        conn = self._lease_conn
        if conn is None or conn.is_closed():
            conn = self._lease_conn = await asyncpg.connect(self.url)
        try:
            for slot in slots:
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", FEEDER_KEY + slot):
                    self._lease_conn = None  # the lease's now
                    return SessionLease(conn, slot)
        except BaseException:
            self._lease_conn = None
            await conn.close()
            raise
        return None

    def __repr__(self) -> str:
        return "PostgresBackend()"


class SessionLease:
    """A feeder slot of a PostgreSQL database: a session advisory lock on a connection of its own."""

    def __init__(self, conn: asyncpg.Connection, slot: int) -> None:
        self.conn: asyncpg.Connection | None = conn
        self.slot = slot

    async def held(self) -> bool:
        if self.conn is None or self.conn.is_closed():
            return False
        try:
            await self.conn.fetchval("SELECT 1", timeout=LEASE_CHECK_TIMEOUT)
        except Exception:
            return False  # the session, and with it the lock, may be gone: take a slot again
        return True

    async def release(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
            self.conn = None
