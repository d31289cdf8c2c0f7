"""Feeder slots (history/feeder.py): one holder per slot, freed when the holder lets go or
its process or connection dies, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

from gateway.history import Backend, open_backend
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]


async def test_a_slot_has_one_holder_until_it_lets_go(backend: Backend, index_url: str, tmp_path: Path) -> None:
    first = await backend.feed_lease(range(1))
    assert first is not None and await first.held() and first.slot == 0
    other = open_backend(index_url, tmp_path)  # another process's view of the same database
    await other.open()
    try:
        assert await other.feed_lease(range(1)) is None
        second = await other.feed_lease(range(2))  # a second slot is free
        assert second is not None and second.slot == 1
        await second.release()
        await first.release()
        assert not await first.held()
        again = await other.feed_lease(range(1))
        assert again is not None
        await again.release()
    finally:
        await other.close()


async def test_a_dead_holder_frees_its_slot(backend: Backend, index_url: str, tmp_path: Path) -> None:
    # A process that takes the slot and is then SIGKILLed: no release, no clean close.
    script = textwrap.dedent(f"""
        import asyncio
        from gateway.history import open_backend
        async def main():
            backend = open_backend({index_url!r}, {str(tmp_path)!r})
            await backend.open()
            lease = await backend.feed_lease(range(1))
            print("held" if lease else "refused", flush=True)
            await asyncio.sleep(600)
        asyncio.run(main())
    """)
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    try:
        assert holder.stdout is not None and (await holder.stdout.readline()).strip() == b"held"
        assert await backend.feed_lease(range(1)) is None
    finally:
        holder.kill()
        await holder.wait()
    lease = await wait_until(lambda: backend.feed_lease(range(1)), timeout=10, interval=0.1)
    await lease.release()


async def test_a_postgresql_slot_is_lost_with_its_connection(tmp_path: Path) -> None:
    import asyncpg

    from tests.history.conftest import create_pg_database, drop_pg_database

    name = await create_pg_database()
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    backend = open_backend(url, tmp_path)
    await backend.open()
    try:
        lease = await backend.feed_lease(range(1))
        assert lease is not None and await lease.held()
        admin = await asyncpg.connect(url)
        try:  # the server ends the holder's session (a network cut, a failover)
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            )
        finally:
            await admin.close()
        assert not await lease.held()  # the feeder stops feeding and waits for a slot again
        await lease.release()
        again = await backend.feed_lease(range(1))
        assert again is not None
        await again.release()
    finally:
        await backend.close()
        await drop_pg_database(name)
