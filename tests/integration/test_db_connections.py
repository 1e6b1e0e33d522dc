"""Connections of a service database go back to the pool without asyncpg's reset query (a round trip)
only after a handler's committed transaction or a `statements()` block; everything else is reset."""

from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.db import SHARED_MIGRATIONS, Database, migrate

_LOCK = 4242


@pytest.fixture
async def one_connection(scratch_db: str) -> AsyncIterator[Database]:
    """A service database whose pool has one connection, so each block gets the previous block's."""
    database = await Database.open(scratch_db, "/funnelcast/leads", pool_size=1)
    async with database.pool.acquire() as conn:
        await migrate(conn, SHARED_MIGRATIONS)
    yield database
    await database.close()


async def _application_name(db: Database) -> str:
    async with db.pool.acquire() as conn:
        return str(await conn.fetchval("SHOW application_name"))


async def _lock_held(scratch_db: str) -> bool:
    conn = await asyncpg.connect(scratch_db)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1",
                                        _LOCK))
    finally:
        await conn.close()


async def test_a_committed_transaction_is_not_reset(one_connection: Database) -> None:
    # A session setting inside a transaction breaks the rule of Database.transaction: it shows that
    # no reset query ran when the connection went back to the pool.
    async with one_connection.transaction() as tx:
        await tx.conn.execute("SET application_name = 'left over'")
    assert await _application_name(one_connection) == "left over"


async def test_a_statements_block_is_not_reset(one_connection: Database) -> None:
    async with one_connection.statements() as conn:
        await conn.execute("SET application_name = 'left over'")
    assert await _application_name(one_connection) == "left over"


async def test_a_connection_acquired_from_the_pool_is_reset(one_connection: Database) -> None:
    async with one_connection.pool.acquire() as conn:
        await conn.execute("SET application_name = 'left over'")
    assert await _application_name(one_connection) == ""


async def test_a_failed_transaction_is_reset(one_connection: Database, scratch_db: str) -> None:
    with pytest.raises(RuntimeError):
        async with one_connection.transaction() as tx:
            await tx.conn.execute("SELECT pg_advisory_lock($1)", _LOCK)  # a session lock outlives the rollback
            raise RuntimeError("the handler failed")
    assert not await _lock_held(scratch_db)  # the pool's connection was reset when it came back


async def test_a_spared_connection_is_reset_the_next_time(one_connection: Database) -> None:
    async with one_connection.statements():
        pass
    async with one_connection.pool.acquire() as conn:
        await conn.execute("SET application_name = 'left over'")
    assert await _application_name(one_connection) == ""
