"""The two statements of a capture (services/leads/store.py) against the real Postgres: the check that
finds a duplicate, checks the campaign and takes the team's round-robin turn; and the insert that writes
the lead with its events, or nothing when the contact was taken. Each runs for a batch of captures
(group commit), and for one as for many."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from services.leads import store
from services.leads.domain import Contact, Lead
from shared.db import SHARED_MIGRATIONS, migrate, new_event
from tests.support.waiting import eventually

LEADS_MIGRATIONS = Path(store.__file__).parent / "migrations"


@pytest.fixture
async def pool(scratch_db: str) -> AsyncIterator[asyncpg.Pool]:
    made = await asyncpg.create_pool(scratch_db, min_size=2, max_size=24)
    async with made.acquire() as conn:
        await migrate(conn, SHARED_MIGRATIONS, LEADS_MIGRATIONS)
    yield made
    await made.close()


def new_lead(phone: str) -> Lead:
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
    lead.assign("rep-1", "east")
    return lead


def captured(lead: Lead) -> list:
    data = {
        "lead_id": lead.id, "source": lead.source, "grade": None, "owner_id": lead.owner_id, "campaign_id": None,
        "region": lead.region, "contact": lead.contact.as_event(), "captured_at": lead.captured_at.isoformat(),
    }
    return [new_event("/funnelcast/leads", "sales.lead.captured.v1", lead.id, data, sequence=lead.next_version())]


async def check(pool: asyncpg.Pool, phone: str | None, email: str | None, campaign: str | None, team: str | None):
    [one] = await store.check_captures(pool, [store.CaptureQuery(phone, email, campaign, team)])
    return one


async def insert(pool: asyncpg.Pool, lead: Lead, events: list) -> bool:
    [one] = await store.insert_new_leads(pool, [(lead, events)])
    return one


async def test_turns_count_up_and_a_duplicate_or_unknown_campaign_takes_none(pool: asyncpg.Pool) -> None:
    first = await check(pool, "+8613900000001", None, None, "east")
    assert (first.duplicate, first.campaign_known, first.turn) == (None, True, 1)
    assert (await check(pool, "+8613900000002", None, None, "east")).turn == 2
    assert (await check(pool, "+8613900000002", None, None, "west")).turn == 1  # its own count

    known = new_lead("+8613900000003")
    assert await insert(pool, known, captured(known))
    duplicate = await check(pool, None, None, None, "east")
    assert duplicate.duplicate is None  # neither phone nor e-mail: nothing to match on
    assert duplicate.turn == 3
    duplicate = await check(pool, "+8613900000003", "x@example.cn", None, "east")
    assert duplicate.duplicate is not None
    assert (duplicate.duplicate[0].id, duplicate.duplicate[1], duplicate.turn) == (known.id, ["phone"], None)

    unknown = await check(pool, "+8613900000004", None, "no-such-campaign", "east")
    assert (unknown.campaign_known, unknown.turn) == (False, None)
    assert (await check(pool, "+8613900000004", None, None, None)).turn is None  # no team
    assert (await check(pool, "+8613900000004", None, None, "east")).turn == 4


async def test_a_batch_checks_each_capture_and_gives_each_team_consecutive_turns(pool: asyncpg.Pool) -> None:
    known = new_lead("+8613900000010")
    assert await insert(pool, known, captured(known))
    await pool.execute("INSERT INTO assignment_cursors (team, turns) VALUES ('west', 7)")
    Q = store.CaptureQuery

    checks = await store.check_captures(pool, [
        Q("+8613900000011", None, None, "west"),
        Q("+8613900000012", None, None, "east"),
        Q("+8613900000010", "y@example.cn", None, "east"),  # a duplicate: no turn
        Q("+8613900000013", None, "no-such-campaign", "west"),  # unknown campaign: no turn
        Q("+8613900000014", None, None, None),  # no team
        Q("+8613900000015", None, None, "west"),
        Q("+8613900000016", None, None, "east"),
    ])

    assert [c.turn for c in checks] == [8, 1, None, None, None, 9, 2]
    assert [c.campaign_known for c in checks] == [True, True, True, False, True, True, True]
    assert [c.duplicate and (c.duplicate[0].id, c.duplicate[1]) for c in checks] == (
        [None, None, (known.id, ["phone"]), None, None, None, None])
    assert (await check(pool, "+8613900000017", None, None, "west")).turn == 10


async def test_parallel_captures_each_take_their_own_turn(
    pool: asyncpg.Pool,
) -> None:
    turns = await asyncio.gather(
        *(check(pool, f"+86139100000{n:02d}", None, None, "east") for n in range(20)),
        *(store.check_captures(pool, [store.CaptureQuery(f"+86139200000{n:02d}", None, None, "east")] * 5)
          for n in range(4)),
    )
    taken = [t.turn for t in turns[:20]] + [c.turn for batch in turns[20:] for c in batch]
    assert sorted(taken) == list(range(1, 41))


async def test_the_insert_writes_the_lead_with_its_events_or_nothing_when_the_contact_is_taken(
    pool: asyncpg.Pool,
) -> None:
    lead = new_lead("+8613900000005")
    events = captured(lead)
    assert await insert(pool, lead, events)
    assert await pool.fetchval("SELECT owner_id FROM leads WHERE id = $1", lead.id) == "rep-1"
    assert await pool.fetchval("SELECT type FROM outbox WHERE id = $1", uuid.UUID(events[0].id)) == (
        "sales.lead.captured.v1")

    rival = new_lead("+8613900000005")
    assert not await insert(pool, rival, captured(rival))
    assert await pool.fetchval("SELECT count(*) FROM leads WHERE id = $1", rival.id) == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE aggregateid = $1", rival.id) == 0


async def test_a_batch_insert_writes_each_lead_with_its_own_events_unless_its_contact_is_taken(
    pool: asyncpg.Pool,
) -> None:
    taken = new_lead("+8613900000020")
    assert await insert(pool, taken, captured(taken))
    first, rival_of_taken, second, rival_of_first = (
        new_lead(phone) for phone in ("+8613900000021", "+8613900000020", "+8613900000022", "+8613900000021"))

    written = await store.insert_new_leads(pool, [(lead, captured(lead)) for lead in
                                                  (first, rival_of_taken, second, rival_of_first)])

    assert written == [True, False, True, False]  # the second of two captures of one phone in a batch loses
    for lead, stored in zip((first, rival_of_taken, second, rival_of_first), written, strict=True):
        assert await pool.fetchval("SELECT count(*) FROM leads WHERE id = $1", lead.id) == stored
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE aggregateid = $1", lead.id) == stored


async def test_a_batch_insert_writes_the_events_in_their_order_whatever_the_plan(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("SET plan_cache_mode = force_generic_plan")  # as group-committed statements run
        for size in (1, 1, 50, 50):  # the second time on the prepared statement's cached plan
            leads = [new_lead(f"+86139100{n:05d}") for n in range(size)]
            batch = [(lead, captured(lead) + captured(lead)) for lead in leads]
            assert all(await store.insert_new_leads(conn, batch))
            published_order = await conn.fetch("SELECT id::text FROM outbox ORDER BY position")
            assert [row["id"] for row in published_order] == [event.id for _, events in batch for event in events]
            await conn.execute("TRUNCATE leads, outbox CASCADE")
        await conn.execute("RESET plan_cache_mode")


async def test_an_import_holds_its_team_turn_until_it_commits(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as first, pool.acquire() as second:
        first_tx = first.transaction()
        await first_tx.start()
        assert await store.take_turn(first, "east") == 1

        async def take_turn() -> int:
            async with second.transaction():
                return await store.take_turn(second, "east")

        waiting = asyncio.create_task(take_turn())

        async def blocked_on_the_cursor() -> bool:
            waits = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            return bool(waits)

        await eventually(blocked_on_the_cursor, timeout=10)
        assert not waiting.done()
        await first_tx.commit()
        assert await asyncio.wait_for(waiting, timeout=10) == 2
