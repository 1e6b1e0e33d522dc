"""Lead scores re-computed as time passes, on the real runtime (a Postgres and a Tansu of this module's own, so
that a pass sees only this module's leads): a lead never contacted loses points once three days pass since
its capture and the new score is published once; an unchanged score, a closed lead (converted, disqualified,
merged) and a lead an event re-scored meanwhile are left as they are; passes at once publish a change once."""

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from services.scoring import handlers
from shared.db import Connection, Database
from shared.events.envelope import CloudEvent, parse_and_validate
from shared.runtime.broker import TansuBroker
from shared.runtime.postgres import EmbeddedPostgres
from shared.settings import Settings
from tests.conftest import own_servers
from tests.integration.test_scoring_service import (  # the service on this module's servers, and its helpers
    BACKLOG_TIMEOUT,
    as_,
    captured,
    contacted,
    history_rows,
    http,
    lead_score,
    new_lead,
    now,
    outcome,
    send,
    settings,
    tables,
)
from tests.support.topics import read_topic
from tests.support.waiting import eventually

__all__ = ["http", "settings", "tables"]  # fixtures: module-scoped, so started again for this module

FOUR_DAYS = timedelta(days=4)  # never contacted and captured over 3 days ago: 8 points off


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedPostgres, TansuBroker]]:
    yield from own_servers(tmp_path_factory, "scoring-lead-rescore")


def ts(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def rescore(http: httpx.AsyncClient, settings: Settings, as_of: datetime) -> dict[str, Any]:
    response = await http.post("/v1/leads/rescore", params={"as_of": ts(as_of)}, headers=as_(settings, "admin-1"))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def causes(tables: asyncpg.Pool, lead_id: str) -> list[str]:
    """The cause types of the lead's scores, oldest first."""
    return [r["cause_type"] for r in await history_rows(tables, lead_id)]


async def published(tables: asyncpg.Pool, lead_id: str) -> int:
    count: int = await tables.fetchval("SELECT count(*) FROM outbox WHERE aggregateid = $1", lead_id)
    return count


async def scored(tables: asyncpg.Pool, lead_ids: list[str], count: int = 1) -> None:
    """Wait until every lead has `count` scores."""
    async def all_scored() -> bool:
        return all([len(await history_rows(tables, lead_id)) == count for lead_id in lead_ids])

    await eventually(all_scored, timeout=BACKLOG_TIMEOUT)


def lead_scores_computed() -> float:
    return REGISTRY.get_sample_value("funnelcast_scores_computed_total", {"kind": "lead", "model_version": "rules-v1"}
                                     ) or 0.0


async def test_a_lead_never_contacted_scores_lower_once_three_days_pass_and_is_published_once(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    neglected, touched = new_lead(), new_lead()
    await send(producer, captured(neglected))
    await send(producer, captured(touched))
    await send(producer, contacted(touched, 1))
    await scored(tables, [neglected])
    await scored(tables, [touched], count=2)
    at_capture = await lead_score(http, settings, neglected)
    touched_score = await lead_score(http, settings, touched)
    assert (await http.post("/v1/leads/rescore", headers=as_(settings, "rep-1"))).status_code == 403
    computed_before = lead_scores_computed()

    later = datetime.now(UTC) + FOUR_DAYS
    first = await rescore(http, settings, later)
    assert (first["examined"], first["rescored"]) == (2, 1)
    assert lead_scores_computed() == computed_before + 1
    after = await lead_score(http, settings, neglected)
    assert after["score"] == at_capture["score"] - 8 == 72
    assert any(f["feature"] == "recency" and f["contribution"] == -8 and "未跟进" in f["label_zh"]
               for f in after["factors"])
    assert after["scored_at"].startswith(later.date().isoformat())
    assert await lead_score(http, settings, touched) == touched_score  # touched within 7 days: nothing moved
    assert await causes(tables, touched) == ["sales.lead.captured.v1", "sales.lead.contacted.v1"]
    assert await published(tables, touched) == 2

    records = await read_topic(settings, "sales.scores", count=2, match=neglected.encode())
    events = [parse_and_validate(r.value) for r in records]  # each validated against its JSON Schema
    assert [(e.type, e.sequence, e.data["score"], e.data["previous_score"]) for e in events] == [
        ("sales.lead.scored.v1", 1, 80, None), ("sales.lead.scored.v1", 2, 72, 80)]
    assert events[1].causationid is None  # no event caused it: time passed
    history = (await http.get(f"/v1/leads/{neglected}/score/history", headers=as_(settings, "rep-1"))).json()
    assert [(i["score"], i["cause_type"]) for i in history["items"]] == [
        (72, "rescore"), (80, "sales.lead.captured.v1")]

    assert (await rescore(http, settings, later))["rescored"] == 0  # nothing moved since: nothing published
    before_the_scores = await rescore(http, settings, datetime.now(UTC) - timedelta(days=1))
    assert (before_the_scores["examined"], before_the_scores["rescored"]) == (0, 0)  # scored after it: left
    assert await published(tables, neglected) == 2


def merged(survivor: str, duplicate: str) -> CloudEvent:
    return CloudEvent(type="sales.lead.merged.v1", source="/funnelcast/leads", subject=survivor, sequence=2, data={
        "lead_id": survivor, "merged_lead_id": duplicate, "matched_on": ["phone"], "merged_by": "rep-1",
        "merged_at": now()})


async def test_converted_disqualified_and_merged_leads_are_not_re_scored(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    converted, disqualified, duplicate, survivor = new_lead(), new_lead(), new_lead(), new_lead()
    for lead_id in (converted, disqualified, duplicate, survivor):
        await send(producer, captured(lead_id))
    await scored(tables, [converted, disqualified, duplicate, survivor])
    await send(producer, outcome(converted, True))
    await send(producer, outcome(disqualified, False))
    await send(producer, merged(survivor, duplicate))

    async def closed() -> dict[str, str] | None:
        rows = await tables.fetch("SELECT lead_id, status FROM lead_scores WHERE lead_id = ANY($1::text[])",
                                  [converted, disqualified, duplicate, survivor])
        statuses = {r["lead_id"]: r["status"] for r in rows}
        return statuses if statuses[duplicate] != "open" else None

    assert await eventually(closed, timeout=BACKLOG_TIMEOUT) == {
        converted: "converted", disqualified: "disqualified", duplicate: "merged", survivor: "open"}
    await rescore(http, settings, datetime.now(UTC) + FOUR_DAYS)
    for lead_id in (converted, disqualified, duplicate):
        assert await causes(tables, lead_id) == ["sales.lead.captured.v1"], lead_id
        assert await published(tables, lead_id) == 1
    assert await causes(tables, survivor) == ["sales.lead.captured.v1", "rescore"]  # open: re-scored as they were


async def test_a_re_score_never_overwrites_a_newer_event_score_and_concurrent_passes_publish_once(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    overtaken, raced = new_lead(), new_lead()
    capture = captured(raced)
    await send(producer, captured(overtaken))
    await send(producer, capture)
    await scored(tables, [overtaken, raced])
    later = datetime.now(UTC) + FOUR_DAYS

    async def read_then_touch(conn: Connection, after: str, limit: int, as_of: datetime) -> handlers.OpenBatch:
        """Read the batch, then let a touch of `overtaken` be scored before the pass writes."""
        batch = await handlers.OPEN_LEADS.read(conn, after, limit, as_of)
        if any(lead_id == overtaken for lead_id, _ in batch):
            await send(producer, contacted(overtaken, 1))
            await scored(tables, [overtaken], count=2)
        return batch

    db = Database(tables, "/funnelcast/scoring")
    overtaking = replace(handlers.OPEN_LEADS, read=read_then_touch)
    await handlers.rescore_open(db, overtaking, later, settings.scoring_rescore_batch)
    # The touch's score stands: computed from the lead as read before it, the re-score was not written.
    assert await causes(tables, overtaken) == ["sales.lead.captured.v1", "sales.lead.contacted.v1"]
    assert await published(tables, overtaken) == 2

    # Passes at once (say, the schedules of three replicas): the change is written and published once.
    await asyncio.gather(*(handlers.rescore_open(db, handlers.OPEN_LEADS, later, settings.scoring_rescore_batch)
                           for _ in range(3)))
    assert await causes(tables, raced) == ["sales.lead.captured.v1", "rescore"]
    assert await published(tables, raced) == 2

    # The capture redelivered after the re-score changes nothing (the inbox); a touch after it, on the same
    # partition (same key), is scored on top of the time-passed score, in sequence.
    await send(producer, capture)
    await send(producer, contacted(raced, 1))
    await scored(tables, [raced], count=3)
    assert await causes(tables, raced) == ["sales.lead.captured.v1", "rescore", "sales.lead.contacted.v1"]
    records = await read_topic(settings, "sales.scores", count=3, match=raced.encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [(e.sequence, e.data["score"], e.data["previous_score"]) for e in events] == [
        (1, 80, None), (2, 72, 80), (3, 84, 72)]
