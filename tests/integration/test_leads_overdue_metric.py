"""The follow-ups-overdue gauge (services/leads/overdue.py) against the real Postgres: the count of a
fresh database by team and grade, as of a fixed time; and the service counting again on its own."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from services.leads import overdue, store
from services.leads.domain import Contact, Grade, Lead
from services.leads.main import service
from shared.db import Database, migrate
from shared.service import create_service_app
from shared.settings import Settings
from tests.integration.test_leads_api import auth, lead_body
from tests.integration.test_leads_web_form import metric
from tests.support.waiting import eventually

LEADS_MIGRATIONS = Path(store.__file__).parent / "migrations"
GAUGE = "funnelcast_leads_follow_ups_overdue"


@pytest.fixture
async def leads_db(db: Database) -> AsyncIterator[Database]:
    """A fresh leads database: only this test's leads are in it."""
    async with db.pool.acquire() as conn:
        await migrate(conn, LEADS_MIGRATIONS)
    yield db


def gauge(team: str, grade: str) -> float | None:
    return REGISTRY.get_sample_value(GAUGE, {"team": team, "grade": grade})


async def add_lead(db: Database, grade: Grade | None, captured_at: datetime, team: str | None = None,
                   *, contacted: bool = False) -> Lead:
    lead = Lead.capture(str(uuid.uuid4()), Contact(name="王伟", phone=f"+86139{uuid.uuid4().int % 10**8:08d}"),
                        source="api", grade=grade, region=None, campaign_id=None, attributes={},
                        captured_at=captured_at, captured_by=None)
    if team is not None:
        lead.assign(f"rep-of-{team}", team)
    async with db.pool.acquire() as conn:
        assert await store.insert_new_leads(conn, [(lead, [])]) == [True]
        if contacted:
            lead.record_touch(captured_at + timedelta(hours=1))
            await store.save(conn, lead)
    return lead


async def test_the_gauge_counts_new_leads_past_their_follow_up_by_team_and_grade(leads_db: Database) -> None:
    as_of = datetime.now(UTC).replace(microsecond=0)
    days = timedelta(days=1)
    # H is due 5 days after capture, B 30, an ungraded lead 7
    late = [await add_lead(leads_db, Grade.H, as_of - 6 * days, "east") for _ in range(2)]
    due_tomorrow = await add_lead(leads_db, Grade.H, as_of - 4 * days, "east")
    due_now = await add_lead(leads_db, Grade.H, as_of - 5 * days, "east")  # not yet overdue: due exactly now
    await add_lead(leads_db, Grade.H, as_of - 10 * days, "east", contacted=True)  # late, but someone called
    await add_lead(leads_db, Grade.B, as_of - 31 * days, "north")
    await add_lead(leads_db, None, as_of - 8 * days)  # unassigned and ungraded
    assert due_now.follow_up_due_at == as_of and due_tomorrow.follow_up_due_at == as_of + days

    await overdue.refresh(leads_db, as_of)
    assert (gauge("east", "H"), gauge("north", "B"), gauge("none", "none")) == (2, 1, 1)
    async with leads_db.pool.acquire() as conn:  # the leads the list filter `overdue=true` finds
        listed = await store.list_leads(conn, store.LeadFilter(overdue_at=as_of), None, 100)
    assert len(listed) == 4 and {lead.id for lead in late} <= {lead.id for lead in listed}

    for lead in late:  # called at last: a team and grade with no overdue lead left reads 0, not its old count
        lead.record_touch(as_of)
        async with leads_db.pool.acquire() as conn:
            await store.save(conn, lead)
    await overdue.refresh(leads_db, as_of)
    assert (gauge("east", "H"), gauge("north", "B"), gauge("none", "none")) == (0, 1, 1)

    await overdue.refresh(leads_db, as_of + 2 * days)
    assert (gauge("east", "H"), gauge("north", "B"), gauge("none", "none")) == (2, 1, 1)


@pytest.fixture
async def counting_often(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app(service, settings.model_copy(update={"leads_overdue_refresh_s": 0.1}))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            yield http
    assert not [task for task in asyncio.all_tasks() if task.get_name() == "count-overdue-follow-ups"]


async def test_the_service_counts_again_on_its_own_while_it_runs(
    counting_often: httpx.AsyncClient, settings: Settings
) -> None:
    db = await Database.open(settings.database_url_for("leads"), "/funnelcast/leads", pool_size=1)
    try:
        async def counted() -> int:
            async with db.pool.acquire() as conn:
                return (await store.count_overdue(conn, datetime.now(UTC))).get(("north", "A"), 0)

        before = await counted()
        month_ago = (datetime.now(UTC) - timedelta(days=30)).isoformat()  # A is due after 15 days
        for _ in range(2):
            response = await counting_often.post("/v1/leads", headers=auth(settings, "admin-1"),
                                                 json=lead_body(grade="A", region="华北", captured_at=month_ago))
            assert response.status_code == 201, response.text
            assert response.json()["team"] == "north"

        async def served_the_count() -> bool:
            served = metric((await counting_often.get("/metrics")).text, GAUGE, {"team": "north", "grade": "A"})
            return served == await counted() >= before + 2

        await eventually(served_the_count, timeout=10)
    finally:
        await db.close()
