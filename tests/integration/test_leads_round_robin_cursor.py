"""The round-robin cursor of a team (services/leads/store.py) against the real Postgres: locked by one
statement until the capture commits, moved by the lead's insert, and only when the lead was inserted."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from services.leads import store
from services.leads.domain import Contact, Lead
from shared.db import SHARED_MIGRATIONS, migrate
from tests.support.waiting import eventually

LEADS_MIGRATIONS = Path(store.__file__).parent / "migrations"


@pytest.fixture
async def pool(scratch_db: str) -> AsyncIterator[asyncpg.Pool]:
    made = await asyncpg.create_pool(scratch_db, min_size=2, max_size=3)
    async with made.acquire() as conn:
        await migrate(conn, SHARED_MIGRATIONS, LEADS_MIGRATIONS)
    yield made
    await made.close()


def new_lead(owner: str, phone: str) -> Lead:
    lead = Lead.capture(
        str(uuid.uuid4()),
        Contact(name="王伟", phone=phone),
        source="api",
        grade=None,
        region="华东",
        campaign_id=None,
        attributes={},
        captured_at=datetime.now(UTC),
        captured_by=None,
    )
    lead.assign(owner, "east")
    lead.next_version()
    return lead


async def cursor(pool: asyncpg.Pool) -> str | None:
    owner: str | None = await pool.fetchval("SELECT last_owner_id FROM assignment_cursors WHERE team = 'east'")
    return owner


async def test_the_inserted_lead_moves_the_cursor_and_a_lost_race_takes_no_turn(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        assert await store.lock_cursor(conn, "east") is None  # first use: created, nobody served yet
        assert await store.insert_if_unique(conn, new_lead("rep-1", "+8613900000001"), round_robin_team="east")
    assert await cursor(pool) == "rep-1"
    async with pool.acquire() as conn, conn.transaction():
        assert await store.lock_cursor(conn, "east") == "rep-1"
        # the same phone: another capture got there first, so this one answers as a duplicate
        lost = new_lead("rep-2", "+8613900000001")
        assert not await store.insert_if_unique(conn, lost, round_robin_team="east")
    assert await cursor(pool) == "rep-1"
    async with pool.acquire() as conn, conn.transaction():
        # an explicit owner (no round-robin team) leaves the cursor alone
        assert await store.insert_if_unique(conn, new_lead("rep-2", "+8613900000002"))
    assert await cursor(pool) == "rep-1"


async def test_a_second_capture_waits_for_the_first_to_commit_and_sees_its_turn(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as first, pool.acquire() as second:
        first_tx = first.transaction()
        await first_tx.start()
        assert await store.lock_cursor(first, "east") is None

        async def take_turn() -> str | None:
            async with second.transaction():
                return await store.lock_cursor(second, "east")

        waiting = asyncio.create_task(take_turn())

        async def blocked_on_the_cursor() -> bool:
            waits = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            return bool(waits)

        await eventually(blocked_on_the_cursor, timeout=10)
        assert not waiting.done()
        assert await store.insert_if_unique(first, new_lead("rep-1", "+8613900000003"), round_robin_team="east")
        await first_tx.commit()
        assert await asyncio.wait_for(waiting, timeout=10) == "rep-1"
