"""The scoring service on the real runtime: lead and opportunity events in on sales.leads /
sales.opportunities, scored events out on sales.scores, scores over HTTP, idempotent under redelivery."""

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.scoring import handlers
from services.scoring.main import service
from shared import kafka
from shared.auth import issue_token
from shared.db import Database
from shared.events.envelope import CONTENT_TYPE_HEADER, CloudEvent, parse_and_validate
from shared.org import Role
from shared.runtime.broker import TansuBroker
from shared.runtime.postgres import EmbeddedPostgres
from shared.service import create_service_app
from shared.settings import Settings
from tests.conftest import own_servers, settings_for
from tests.support.topics import read_topic
from tests.support.waiting import eventually

# The first wait covers the consumer group's join (about 3 s on Tansu) and its first fetches.
BACKLOG_TIMEOUT = 60.0
ROLES = {"rep-1": Role.REP, "rep-2": Role.REP, "mgr-1": Role.MANAGER, "dir-1": Role.DIRECTOR, "admin-1": Role.ADMIN}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedPostgres, TansuBroker]]:
    """A new consumer group reads its topics from the start; the session broker holds every earlier
    module's events."""
    yield from own_servers(tmp_path_factory, "scoring")


@pytest.fixture(scope="module")
async def settings(
    servers: tuple[EmbeddedPostgres, TansuBroker], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    configured = settings_for(*servers, tmp_path_factory.mktemp("scoring-home"))
    await kafka.ensure_topics(configured)
    return configured


@pytest.fixture(scope="module")
async def http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app(service, settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture(scope="module")
async def tables(settings: Settings, http: httpx.AsyncClient) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.database_url_for("scoring"), min_size=1, max_size=3)
    yield pool
    await pool.close()


def as_(settings: Settings, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(user, ROLES[user], settings.signing_secret, 600)}"}


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def new_lead() -> str:
    return f"lead-{uuid.uuid4()}"


def captured(lead_id: str, grade: str | None = "H", source: str = "referral", owner: str = "rep-1") -> CloudEvent:
    data = {
        "lead_id": lead_id, "source": source, "grade": grade, "owner_id": owner, "campaign_id": None,
        "region": "华东", "captured_at": now(),
        "contact": {"name": "王先生", "company": "上海某某科技", "phone": "+8613800000000", "email": None},
    }
    return CloudEvent(type="sales.lead.captured.v1", source="/funnelcast/leads", subject=lead_id, data=data,
                      sequence=1)


def contacted(lead_id: str, n: int) -> CloudEvent:
    data = {"lead_id": lead_id, "touch_id": f"touch-{uuid.uuid4()}", "channel": "phone", "contacted_at": now(),
            "contacted_by": "rep-1", "touch_number": n}
    return CloudEvent(type="sales.lead.contacted.v1", source="/funnelcast/leads", subject=lead_id, data=data,
                      sequence=n + 1)


async def send(producer: AIOKafkaProducer, event: CloudEvent) -> None:
    await producer.send_and_wait(event.topic, event.to_bytes(), key=event.subject.encode(),
                                 headers=[CONTENT_TYPE_HEADER])


async def history_rows(tables: asyncpg.Pool, lead_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await tables.fetch(
        "SELECT * FROM lead_score_history WHERE lead_id = $1 ORDER BY id", lead_id)
    return rows


async def lead_score(http: httpx.AsyncClient, settings: Settings, lead_id: str, timeout: float = 30.0,
                     user: str = "rep-1") -> dict[str, Any]:
    async def scored() -> dict[str, Any] | None:
        response = await http.get(f"/v1/leads/{lead_id}/score", headers=as_(settings, user))
        return dict(response.json()) if response.status_code == 200 else None

    return await eventually(scored, timeout=timeout)


async def test_a_captured_lead_gets_a_scored_event_and_a_score_over_the_api(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer
) -> None:
    lead = new_lead()
    event = captured(lead)
    await send(producer, event)
    score = await lead_score(http, settings, lead, timeout=BACKLOG_TIMEOUT)
    assert score["lead_id"] == lead and score["model_version"] == "rules-v1" and score["owner_id"] == "rep-1"
    assert 0 <= score["score"] <= 100 and score["scored_at"]
    top = score["factors"][0]
    assert (top["feature"], top["contribution"]) == ("grade", 30)
    assert top["label_en"] and "意向等级" in top["label_zh"]

    [record] = await read_topic(settings, "sales.scores", count=1, match=lead.encode())
    scored = parse_and_validate(record.value)
    assert (scored.type, scored.subject, scored.sequence) == ("sales.lead.scored.v1", lead, 1)
    assert scored.data["score"] == score["score"] and scored.data["previous_score"] is None
    assert scored.data["factors"] == score["factors"]
    assert scored.causationid == event.id and scored.source == "/funnelcast/scoring"


async def test_an_h_grade_lead_from_a_strong_source_outranks_a_c_grade_one(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer
) -> None:
    hot, cold = new_lead(), new_lead()
    await send(producer, captured(hot, "H", "referral"))
    await send(producer, captured(cold, "C", "import"))
    hot_score = await lead_score(http, settings, hot, timeout=BACKLOG_TIMEOUT)
    cold_score = await lead_score(http, settings, cold, timeout=BACKLOG_TIMEOUT)
    assert hot_score["score"] > cold_score["score"] + 40
    assert any(f["feature"] == "grade" and f["contribution"] < 0 for f in cold_score["factors"])


async def test_a_touch_re_scores_the_lead(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    lead = new_lead()
    await send(producer, captured(lead, "B", "web_form"))
    first = await lead_score(http, settings, lead, timeout=BACKLOG_TIMEOUT)
    await send(producer, contacted(lead, 1))

    async def rescored() -> bool:
        return len(await history_rows(tables, lead)) == 2

    await eventually(rescored, timeout=BACKLOG_TIMEOUT)
    second = await lead_score(http, settings, lead)
    assert second["score"] == first["score"] + 4
    assert any(f["feature"] == "touches" and "跟进" in f["label_zh"] for f in second["factors"])
    history = await http.get(f"/v1/leads/{lead}/score/history", headers=as_(settings, "rep-1"))
    assert [(i["score"], i["cause_type"]) for i in history.json()["items"]] == [
        (second["score"], "sales.lead.contacted.v1"), (first["score"], "sales.lead.captured.v1")]
    records = await read_topic(settings, "sales.scores", count=2, match=lead.encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [(e.sequence, e.data["score"], e.data["previous_score"]) for e in events] == [
        (1, first["score"], None), (2, second["score"], first["score"])]


async def test_a_redelivered_event_does_not_create_a_duplicate_score(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    lead = new_lead()
    event = captured(lead)
    await send(producer, event)
    await send(producer, event)  # redelivery: the same event id
    # Same key, so same partition: once the touch is applied, both copies before it were processed.
    await send(producer, contacted(lead, 1))

    async def touch_applied() -> bool:
        rows = await history_rows(tables, lead)
        return any(r["cause_type"] == "sales.lead.contacted.v1" for r in rows)

    await eventually(touch_applied, timeout=BACKLOG_TIMEOUT)
    rows = await history_rows(tables, lead)
    assert [r["cause_type"] for r in rows] == ["sales.lead.captured.v1", "sales.lead.contacted.v1"]
    assert await tables.fetchval("SELECT sequence FROM lead_scores WHERE lead_id = $1", lead) == 2
    records = await read_topic(settings, "sales.scores", count=3, match=lead.encode(), timeout=3)
    assert [parse_and_validate(r.value).sequence for r in records] == [1, 2]


async def test_scores_are_scoped_by_the_leads_owner(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer
) -> None:
    lead = new_lead()
    await send(producer, captured(lead, owner="rep-1"))
    await lead_score(http, settings, lead, timeout=BACKLOG_TIMEOUT)
    assert (await lead_score(http, settings, lead, user="mgr-1"))["lead_id"] == lead
    assert (await lead_score(http, settings, lead, user="dir-1"))["lead_id"] == lead
    foreign = await http.get(f"/v1/leads/{lead}/score", headers=as_(settings, "rep-2"))
    assert foreign.status_code == 403 and foreign.headers["content-type"].startswith("application/problem+json")
    unknown = await http.get(f"/v1/leads/{new_lead()}/score", headers=as_(settings, "rep-1"))
    assert unknown.status_code == 404
    assert (await http.get(f"/v1/leads/{lead}/score")).status_code == 401


async def test_a_merge_survivor_is_re_scored_with_the_duplicates_touches_and_engagement(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    survivor, duplicate = new_lead(), new_lead()
    await send(producer, captured(survivor, grade=None, source="web_form"))
    await send(producer, captured(duplicate, grade="H"))
    for event in (contacted(duplicate, 1), contacted(duplicate, 2), engaged(duplicate, 9, 240)):
        await send(producer, CloudEvent(type=event.type, source=event.source, subject=duplicate, data=event.data,
                                        sequence=None))
    first = await lead_score(http, settings, survivor, timeout=BACKLOG_TIMEOUT)
    await eventually(lambda: _scored_times(tables, duplicate, 4), timeout=BACKLOG_TIMEOUT)
    merge = CloudEvent(type="sales.lead.merged.v1", source="/funnelcast/leads", subject=survivor, sequence=2, data={
        "lead_id": survivor, "merged_lead_id": duplicate, "matched_on": [], "merged_by": "mgr-1", "merged_at": now(),
        "owner_id": "rep-1", "status": "contacted", "grade": "H", "touch_count": 2, "last_contacted_at": now(),
        "contact": {"name": "王先生", "company": "上海某某科技", "phone": "+8613800000000", "email": "w@example.cn"},
        "attributes": {}, "touches_moved": 2, "notes_moved": 0, "engagements_moved": 1})
    await send(producer, merge)
    await eventually(lambda: _scored_times(tables, survivor, 2), timeout=BACKLOG_TIMEOUT)

    after = await lead_score(http, settings, survivor)
    factors = {f["feature"]: f["contribution"] for f in after["factors"]}
    assert (factors["grade"], factors["touches"]) == (30, 7) and after["score"] > first["score"]
    rows = await history_rows(tables, survivor)
    assert [r["cause_type"] for r in rows] == ["sales.lead.captured.v1", "sales.lead.merged.v1"]
    kept = await tables.fetch("SELECT lead_id, status, features FROM lead_scores WHERE lead_id = ANY($1::text[])"
                              " ORDER BY lead_id = $2", [survivor, duplicate], survivor)
    assert [r["status"] for r in kept] == ["merged", "open"]
    features = json.loads(kept[-1]["features"])  # the engagement told on the duplicate is the survivor's now
    assert (features["touches"], features["page_views"], features["visits"], features["has_email"]) == (2, 9, 1, True)
    records = await read_topic(settings, "sales.scores", count=2, match=survivor.encode())
    rescored = parse_and_validate(records[-1].value)
    assert (rescored.sequence, rescored.causationid, rescored.data["score"]) == (2, merge.id, after["score"])


async def _scored_times(tables: asyncpg.Pool, lead_id: str, count: int) -> bool:
    return len(await history_rows(tables, lead_id)) >= count


async def test_outcomes_are_recorded_for_the_learned_model(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    won_lead, lost_lead = new_lead(), new_lead()
    await send(producer, captured(won_lead))
    await send(producer, CloudEvent(
        type="sales.lead.disqualified.v1", source="/funnelcast/leads", subject=lost_lead,
        data={"lead_id": lost_lead, "reason": "no_budget", "disqualified_by": "rep-1", "disqualified_at": now()}))
    await lead_score(http, settings, won_lead, timeout=BACKLOG_TIMEOUT)
    await send(producer, CloudEvent(
        type="sales.lead.converted.v1", source="/funnelcast/leads", subject=won_lead, data={
            "lead_id": won_lead, "contact": {"name": "王先生"}, "account_name": "上海某某科技", "account_id": None,
            "owner_id": "rep-1", "region": "华东", "campaign_id": None,
            "opportunity": {"name": "项目", "amount": None, "currency": "CNY", "expected_close_date": None},
            "converted_by": "rep-1", "converted_at": now()}))

    async def both() -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await tables.fetch(
            "SELECT * FROM outcomes WHERE subject_id = ANY($1::text[]) ORDER BY positive", [won_lead, lost_lead])
        return rows if len(rows) == 2 else []

    lost, won = await eventually(both, timeout=BACKLOG_TIMEOUT)
    assert (lost["outcome"], lost["positive"], lost["features"]) == ("disqualified", False, None)
    assert (won["outcome"], won["positive"]) == ("converted", True)
    assert '"grade": "H"' in won["features"]


def opportunity_event(type_: str, opportunity_id: str, sequence: int, **data: Any) -> CloudEvent:
    return CloudEvent(type=type_, source="/funnelcast/opportunities", subject=opportunity_id,
                      data={"opportunity_id": opportunity_id, **data}, sequence=sequence)


async def test_an_opportunity_gets_a_win_probability_from_stage_and_maturity(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer
) -> None:
    opp = f"opp-{uuid.uuid4()}"
    money = {"amount": "120000.00", "currency": "CNY", "owner_id": "rep-1"}
    await send(producer, opportunity_event(
        "sales.opportunity.created.v1", opp, 1, name="项目", account_id="acc-1", stage="prospecting",
        status="open", probability=10, expected_close_date=None, created_at=now(), lead_id=None, campaign_id=None,
        **money))
    await send(producer, opportunity_event(
        "sales.opportunity.stage_changed.v1", opp, 2, from_stage="prospecting", to_stage="negotiation",
        probability=60, changed_by="rep-1", changed_at=now(), **money))
    await send(producer, opportunity_event(
        "sales.opportunity.assessed.v1", opp, 3, owner_id="rep-1", stage="negotiation", maturity=100,
        assessment={"need": "decided", "budget": "in_place", "urgency": "driving", "timing": "fixed",
                    "decision_maker_trust": "high", "decision_process_knowledge": "high", "leverage": "high"},
        assessed_by="rep-1", assessed_at=now()))

    async def assessed() -> dict[str, Any] | None:
        response = await http.get(f"/v1/opportunities/{opp}/score", headers=as_(settings, "rep-1"))
        body = dict(response.json()) if response.status_code == 200 else {}
        return body if any(f["feature"] == "maturity" for f in body.get("factors", [])) else None

    score = await eventually(assessed, timeout=BACKLOG_TIMEOUT)
    assert (score["score"], score["model_version"], score["opportunity_id"]) == (75, "rules-v1", opp)
    assert score["factors"][0]["feature"] == "stage" and "商务洽谈" in score["factors"][0]["label_zh"]
    records = await read_topic(settings, "sales.scores", count=3, match=opp.encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [(e.type, e.sequence, e.data["score"]) for e in events] == [
        ("sales.opportunity.scored.v1", 1, 10), ("sales.opportunity.scored.v1", 2, 60),
        ("sales.opportunity.scored.v1", 3, 75)]
    assert (await http.get(f"/v1/opportunities/{opp}/score", headers=as_(settings, "rep-2"))).status_code == 403
    history = (await http.get(f"/v1/opportunities/{opp}/score/history", headers=as_(settings, "mgr-1"))).json()
    assert [(i["score"], i["cause_type"]) for i in history["items"]] == [
        (75, "sales.opportunity.assessed.v1"), (60, "sales.opportunity.stage_changed.v1"),
        (10, "sales.opportunity.created.v1")]


async def test_an_edited_amount_and_product_re_score_the_opportunity_once(
    settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    opp = f"opp-{uuid.uuid4()}"
    created = opportunity_event(
        "sales.opportunity.created.v1", opp, 1, name="项目", account_id="acc-1", stage="bidding", status="open",
        probability=30, amount="120000.00", currency="CNY", expected_close_date=None, product="ERP",
        owner_id="rep-1", created_at=now(), lead_id=None, campaign_id=None)
    edit = opportunity_event(
        "sales.opportunity.updated.v1", opp, 2, name="项目", owner_id="rep-1", account_id="acc-1", stage="bidding",
        probability=30, amount="450000.00", currency="CNY", expected_close_date=None, product="CRM",
        changed_fields=["amount", "product"], changes={"amount": "450000.00", "product": "CRM"},
        previous={"amount": "120000.00", "product": "ERP"}, changed_by="rep-1", changed_at=now())
    assessed = opportunity_event(
        "sales.opportunity.assessed.v1", opp, 3, owner_id="rep-1", stage="bidding", maturity=80,
        assessment=ASSESSMENT, assessed_by="rep-1", assessed_at=now())
    for event in (created, edit, edit, assessed):  # the edit redelivered: the same event id
        await send(producer, event)

    # Same key, so same partition: once the assessment is applied, both copies of the edit were processed.
    async def causes() -> list[str]:
        rows = await tables.fetch(
            "SELECT cause_event_id FROM opportunity_score_history WHERE opportunity_id = $1 ORDER BY id", opp)
        ids = [str(r["cause_event_id"]) for r in rows]
        return ids if assessed.id in ids else []

    assert await eventually(causes, timeout=BACKLOG_TIMEOUT) == [created.id, edit.id, assessed.id]
    features = json.loads(
        await tables.fetchval("SELECT features FROM opportunity_scores WHERE opportunity_id = $1", opp))
    assert (features["amount"], features["product"]) == (450000.0, "CRM")
    records = await read_topic(settings, "sales.scores", count=4, match=opp.encode(), timeout=3)
    assert [(e.type, e.sequence, e.causationid) for e in map(parse_and_validate, (r.value for r in records))] == [
        ("sales.opportunity.scored.v1", 1, created.id), ("sales.opportunity.scored.v1", 2, edit.id),
        ("sales.opportunity.scored.v1", 3, assessed.id)]


async def test_a_stage_repriced_by_an_admin_re_scores_the_opportunity_without_counting_as_activity(
    settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    opp = f"opp-{uuid.uuid4()}"
    figures = {"owner_id": "rep-1", "account_id": "acc-1", "stage": "bidding", "amount": "120000.00",
               "currency": "CNY", "product": "ERP"}
    created = opportunity_event(
        "sales.opportunity.created.v1", opp, 1, **figures, name="项目", status="open", probability=30,
        expected_close_date=None, created_at=now(), lead_id=None, campaign_id=None)
    repriced = opportunity_event(
        "sales.opportunity.repriced.v1", opp, 2, **figures, pipeline_id="project_sales", status="open",
        probability=45, previous_probability=30, changed_by="admin-1", changed_at=now())
    for event in (created, repriced):
        await send(producer, event)

    async def scores() -> list[int]:
        rows = await tables.fetch(
            "SELECT score FROM opportunity_score_history WHERE opportunity_id = $1 ORDER BY id", opp)
        return [r["score"] for r in rows] if len(rows) == 2 else []

    before, after = await eventually(scores, timeout=BACKLOG_TIMEOUT)
    assert after - before == 15  # the rules' base is the stage's probability
    features = json.loads(
        await tables.fetchval("SELECT features FROM opportunity_scores WHERE opportunity_id = $1", opp))
    assert features["stage_probability"] == 45
    assert datetime.fromisoformat(features["last_event_at"]) == created.time  # not activity on the deal


def engaged(lead_id: str, page_views: int, time_on_site_s: float) -> CloudEvent:
    data = {"lead_id": lead_id, "visits": 1, "time_on_site_s": time_on_site_s, "page_views": page_views,
            "activity": None, "observed_at": now(), "reported_by": "svc-erp"}
    return CloudEvent(type="sales.lead.engaged.v1", source="/funnelcast/leads", subject=lead_id, data=data,
                      sequence=2)


def outcome(lead_id: str, positive: bool) -> CloudEvent:
    if positive:
        return CloudEvent(type="sales.lead.converted.v1", source="/funnelcast/leads", subject=lead_id, data={
            "lead_id": lead_id, "contact": {"name": "王先生"}, "account_name": "上海某某科技", "account_id": None,
            "owner_id": "rep-1", "region": "华东", "campaign_id": None,
            "opportunity": {"name": "项目", "amount": None, "currency": "CNY", "expected_close_date": None},
            "converted_by": "rep-1", "converted_at": now()}, sequence=3)
    return CloudEvent(type="sales.lead.disqualified.v1", source="/funnelcast/leads", subject=lead_id, data={
        "lead_id": lead_id, "reason": "no_budget", "disqualified_by": "rep-1", "disqualified_at": now()}, sequence=3)


async def test_a_model_trained_on_outcomes_replaces_the_rules_once_it_beats_them(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    admin = as_(settings, "admin-1")
    assert (await http.post("/v1/models/lead/train", headers=as_(settings, "rep-1"))).status_code == 403
    # Outcomes against the rules' intuition: C-grade leads that read a lot convert, H-grade browsers do not.
    leads = [(new_lead(), i % 2 == 0) for i in range(100)]
    for lead, positive in leads:
        await send(producer, captured(lead, "C" if positive else "H", "web_form"))
        await send(producer, engaged(lead, 12 if positive else 1, 600 if positive else 30))
        await send(producer, outcome(lead, positive))

    async def all_outcomes() -> bool:
        count = await tables.fetchval("SELECT count(*) FROM outcomes WHERE subject_id = ANY($1::text[])"
                                      " AND features IS NOT NULL", [lead for lead, _ in leads])
        return bool(count == len(leads))

    await eventually(all_outcomes, timeout=BACKLOG_TIMEOUT)
    response = await http.post("/v1/models/lead/train", headers=admin)
    assert response.status_code == 201, response.text
    model = response.json()
    assert (model["promoted"], model["active"], model["current_version"]) == (True, True, "rules-v1")
    assert model["auc"] > model["current_auc"] and model["n_holdout"] >= 20 and 0 <= model["brier"] <= 1
    listed = (await http.get("/v1/models/lead", headers=as_(settings, "rep-1"))).json()
    assert listed["active_version"] == model["version"] and listed["items"][0]["version"] == model["version"]

    lead = new_lead()
    await send(producer, captured(lead, "C", "web_form"))
    await send(producer, engaged(lead, 12, 600))

    async def learned_score() -> dict[str, Any] | None:
        score = await lead_score(http, settings, lead)
        return score if len(await history_rows(tables, lead)) == 2 else None

    score = await eventually(learned_score, timeout=30)
    assert score["model_version"] == model["version"] and score["score"] > 50
    assert score["factors"] and all(f["label_zh"] for f in score["factors"])

    # Rollback to the rules.
    assert (await http.post("/v1/models/lead/rules-v1/activate", headers=admin)).status_code == 204
    assert (await http.get("/v1/models/lead", headers=admin)).json()["active_version"] == "rules-v1"
    assert (await http.post("/v1/models/lead/nope/activate", headers=admin)).status_code == 404
    after = new_lead()
    await send(producer, captured(after))
    assert (await lead_score(http, settings, after))["model_version"] == "rules-v1"
    exposition = (await http.get("/metrics")).text
    assert 'funnelcast_scores_computed_total{kind="lead",model_version="rules-v1"}' in exposition
    assert f'funnelcast_scores_computed_total{{kind="lead",model_version="{model["version"]}"}}' in exposition
    assert 'funnelcast_model_training_runs_total{kind="lead",result="promoted"} 1.0' in exposition
    assert 'funnelcast_scoring_latency_seconds_bucket{kind="lead"' in exposition
    assert 'funnelcast_model_auc{kind="lead"} NaN' in exposition


async def test_scheduled_training_waits_for_new_outcomes(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    db = Database(tables, "/funnelcast/scoring")
    assert await handlers.train_model_if_due(db, "lead", 1) is None  # nothing observed since the last model
    lead = new_lead()
    await send(producer, captured(lead, "C", "web_form"))
    await send(producer, outcome(lead, True))

    async def observed() -> bool:
        return bool(await tables.fetchval("SELECT 1 FROM outcomes WHERE subject_id = $1", lead))

    await eventually(observed, timeout=30)
    assert await handlers.train_model_if_due(db, "lead", 2) is None  # one new outcome, two needed
    model = await handlers.train_model_if_due(db, "lead", 1)
    assert model is not None and model["window_to"] >= await tables.fetchval(
        "SELECT observed_at FROM outcomes WHERE subject_id = $1", lead)
    listed = (await http.get("/v1/models/lead", headers=as_(settings, "admin-1"))).json()
    assert model["version"] in [m["version"] for m in listed["items"]]
    assert (await http.post("/v1/models/lead/rules-v1/activate", headers=as_(settings, "admin-1"))).status_code == 204


def contract_event(type_: str, contract_id: str, account_id: str, amount: str, **data: Any) -> CloudEvent:
    body = {"contract_id": contract_id, "opportunity_id": f"opp-{uuid.uuid4()}", "account_id": account_id,
            "amount": amount, "currency": "CNY", "owner_id": "rep-1", **data}
    return CloudEvent(type=type_, source="/funnelcast/opportunities", subject=contract_id, data=body)


async def account_tier(http: httpx.AsyncClient, settings: Settings, account: str, contracts: int) -> dict[str, Any]:
    """The account's tier over the API, once it counts `contracts` contracts."""
    async def tiered() -> dict[str, Any] | None:
        response = await http.get(f"/v1/accounts/{account}/tier", headers=as_(settings, "rep-1"))
        body = response.json() if response.status_code == 200 else None
        return body if body and body["contracts_total"] == contracts else None

    return await eventually(tiered, timeout=BACKLOG_TIMEOUT)


async def test_signed_contracts_give_the_account_a_value_tier(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer
) -> None:
    account = f"acc-{uuid.uuid4()}"
    first, second, third = (f"con-{uuid.uuid4()}" for _ in range(3))
    await send(producer, contract_event("sales.contract.signed.v1", first, account, "150000.00", signed_at=now()))

    def tier(count: int) -> Awaitable[dict[str, Any]]:
        return account_tier(http, settings, account, count)

    answer = await tier(1)
    assert (answer["value_tier"], answer["buyer_type"], answer["amount_12m"]) == ("medium", "first_time", "150000.00")
    assert [f["feature"] for f in answer["factors"]] == ["amount_12m", "frequency", "recency"]

    for contract_id, amount in ((second, "700000.00"), (third, "300000.00")):
        await send(producer, contract_event("sales.contract.signed.v1", contract_id, account, amount, signed_at=now()))
    answer = await tier(3)
    assert (answer["value_tier"], answer["buyer_type"], answer["amount_12m"]) == ("high", "frequent", "1150000.00")

    terminated = {"terminated_by": "mgr-1", "terminated_at": now(), "reason": "客户取消"}
    await send(producer, contract_event("sales.contract.terminated.v1", second, account, "700000.00", **terminated))
    answer = await tier(2)
    assert (answer["value_tier"], answer["buyer_type"], answer["amount_12m"]) == ("high", "occasional", "450000.00")

    records = await read_topic(settings, "sales.scores", count=4, match=account.encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [e.type for e in events] == ["sales.account.tiered.v1"] * 4
    assert [e.sequence for e in events] == [1, 2, 3, 4]
    assert [(e.data["previous_value_tier"], e.data["value_tier"]) for e in events][0] == (None, "medium")
    assert events[-1].data["buyer_type"] == "occasional" and events[-1].data["previous_buyer_type"] == "frequent"
    assert (await http.get(f"/v1/accounts/{account}/tier", headers=as_(settings, "rep-2"))).status_code == 403
    assert (await http.get(f"/v1/accounts/{account}/tier", headers=as_(settings, "mgr-1"))).status_code == 200
    assert (await http.get(f"/v1/accounts/acc-{uuid.uuid4()}/tier", headers=as_(settings, "rep-1"))).status_code == 404


def days_ago(days: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat().replace("+00:00", "Z")


async def test_time_passing_re_tiers_an_account_once_when_its_newest_contract_passes_90_days(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    account = f"acc-{uuid.uuid4()}"
    for amount, age in (("150000.00", 85), ("100000.00", 200)):
        await send(producer, contract_event("sales.contract.signed.v1", f"con-{uuid.uuid4()}", account, amount,
                                            signed_at=days_ago(age)))
    answer = await account_tier(http, settings, account, 2)
    assert (answer["value_tier"], answer["buyer_type"]) == ("high", "occasional")  # 250,000: 2 + 2 + 3 (85 days)

    async def retier(as_of: datetime, user: str = "admin-1") -> httpx.Response:
        return await http.post("/v1/accounts/retier", params={"as_of": as_of.isoformat()}, headers=as_(settings, user))

    async def published() -> int:
        count: int = await tables.fetchval("SELECT count(*) FROM outbox WHERE aggregateid = $1", account)
        return count

    assert (await retier(datetime.now(UTC), "mgr-1")).status_code == 403
    in_three_days = datetime.now(UTC) + timedelta(days=3)  # the newest contract at 88 days: only its label moves
    assert (await retier(in_three_days)).json()["examined"] >= 1
    assert await published() == 2
    in_a_week = datetime.now(UTC) + timedelta(days=7)  # at 92 days: recency 3 -> 2 points
    # Passes at once (the schedules of three replicas): the move is written and published once.
    passes = await asyncio.gather(*(retier(in_a_week) for _ in range(3)))
    assert [p.status_code for p in passes] == [200] * 3, passes[0].text
    assert await published() == 3
    answer = await account_tier(http, settings, account, 2)
    assert (answer["value_tier"], answer["buyer_type"], answer["amount_12m"]) == ("medium", "occasional", "250000.00")
    assert [f["contribution"] for f in answer["factors"]] == [2, 2, 2]

    # A contract signed after the pass re-tiers on top of it, in sequence.
    await send(producer, contract_event("sales.contract.signed.v1", f"con-{uuid.uuid4()}", account, "50000.00",
                                        signed_at=now()))
    await account_tier(http, settings, account, 3)
    events = [parse_and_validate(r.value) for r in await read_topic(settings, "sales.scores", count=4,
                                                                     match=account.encode())]
    assert [e.sequence for e in events] == [1, 2, 3, 4]
    by_time = events[2].data
    assert "cause_contract_id" not in by_time and "cause_contract_id" in events[3].data
    assert (by_time["previous_value_tier"], by_time["value_tier"]) == ("high", "medium")
    assert by_time["tiered_at"] == in_a_week.isoformat().replace("+00:00", "Z")


ASSESSMENT = {"need": "decided", "budget": "in_place", "urgency": "driving", "timing": "fixed",
              "decision_maker_trust": "high", "decision_process_knowledge": "high", "leverage": "high"}


async def opened(producer: AIOKafkaProducer, opp: str, stage: str, maturity: int) -> None:
    money = {"amount": "120000.00", "currency": "CNY", "owner_id": "rep-1"}
    await send(producer, opportunity_event(
        "sales.opportunity.created.v1", opp, 1, name="项目", account_id="acc-1", stage=stage, status="open",
        probability={"prospecting": 10, "contract": 80}[stage], expected_close_date=None, created_at=now(),
        lead_id=None, campaign_id=None, **money))
    await send(producer, opportunity_event(
        "sales.opportunity.assessed.v1", opp, 2, owner_id="rep-1", stage=stage, maturity=maturity,
        assessment=ASSESSMENT, assessed_by="rep-1", assessed_at=now()))


async def test_a_learned_win_probability_model_replaces_the_stage_rules_once_it_beats_them(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    admin = as_(settings, "admin-1")
    assert (await http.post("/v1/models/opportunity/train", headers=admin)).status_code == 409  # no outcomes yet
    # Outcomes against the rules: early, immature deals win; late, mature ones lose.
    deals = [(f"opp-{uuid.uuid4()}", i % 2 == 0) for i in range(100)]
    for opp, won in deals:
        await opened(producer, opp, "prospecting" if won else "contract", 20 if won else 90)
        close = {"amount": "120000.00", "currency": "CNY", "owner_id": "rep-1", "closed_at": now(),
                 "closed_by": "rep-1", "reason": "价格"}
        await send(producer, opportunity_event("sales.opportunity.won.v1", opp, 3, **close) if won else
                   opportunity_event("sales.opportunity.lost.v1", opp, 3, competitor="某竞品", **close))

    async def all_outcomes() -> bool:
        count = await tables.fetchval("SELECT count(*) FROM outcomes WHERE subject_kind = 'opportunity'"
                                      " AND subject_id = ANY($1::text[])", [opp for opp, _ in deals])
        return bool(count == len(deals))

    await eventually(all_outcomes, timeout=BACKLOG_TIMEOUT)
    response = await http.post("/v1/models/opportunity/train", headers=admin)
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["version"].startswith(("gb-opp-", "lr-opp-")) and model["kind"] == "opportunity"
    assert (model["promoted"], model["active"], model["current_version"]) == (True, True, "rules-v1")
    assert model["auc"] > model["current_auc"]
    assert (await http.get("/v1/models/opportunity", headers=admin)).json()["active_version"] == model["version"]
    assert (await http.get("/v1/models/lead", headers=admin)).json()["active_version"] != model["version"]

    async def scored(opp: str, version: str) -> dict[str, Any] | None:
        response = await http.get(f"/v1/opportunities/{opp}/score", headers=as_(settings, "rep-1"))
        body = dict(response.json()) if response.status_code == 200 else {}
        return body if body.get("model_version") == version and len(body["factors"]) > 1 else None

    early = f"opp-{uuid.uuid4()}"
    await opened(producer, early, "prospecting", 20)
    score = await eventually(lambda: scored(early, model["version"]), timeout=30)
    assert 50 < score["score"] <= 99 and all("赢单" in f["label_zh"] for f in score["factors"])

    # Rollback: the stage rules again.
    assert (await http.post("/v1/models/opportunity/rules-v1/activate", headers=admin)).status_code == 204
    assert (await http.post("/v1/models/opportunity/nope/activate", headers=admin)).status_code == 404
    assert (await http.post("/v1/models/account/train", headers=admin)).status_code == 422
    later = f"opp-{uuid.uuid4()}"
    await opened(producer, later, "prospecting", 20)
    score = await eventually(lambda: scored(later, "rules-v1"), timeout=30)
    assert score["score"] == 10 + round((20 - 50) * 0.3)

