"""The history backends under test: every test taking `backend` runs on SQLite and on
PostgreSQL (127.0.0.1:5432, user postgres; each test creates and drops its own database)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.history import Backend, open_backend

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_HINT = (
    "PostgreSQL is not reachable at 127.0.0.1:5432 as user postgres (trust auth); the history "
    "tests run on it too. Start it (pg_ctlcluster --skip-systemctl-redirect 15 main start) and run again"
)


async def create_pg_database() -> str:
    import asyncpg

    name = f"fngate_test_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"{PG_HINT} ({exc})", pytrace=False)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_pg_database(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An `index.url` for a fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'index.db'}"
        return
    name = await create_pg_database()
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        await drop_pg_database(name)


@pytest.fixture
async def backend(index_url: str, tmp_path: Path) -> AsyncIterator[Backend]:
    opened = open_backend(index_url, tmp_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
