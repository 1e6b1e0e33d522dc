"""The forecasting service on the real runtime, fed by the real opportunities and scoring services:
weighted pipeline from their events, a stage move or a close updating the forecast and publishing
sales.forecast.updated.v1, redelivery changing nothing, quotas and role scoping over HTTP."""

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.forecasting import restating
from services.forecasting.config import forecast_settings
from services.forecasting.main import service as forecasting
from services.opportunities.main import service as opportunities
from services.scoring.main import service as scoring
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

# The first wait covers three consumer groups joining (about 3 s each on Tansu) and their first fetches.
TIMEOUT = 60.0
ROLES = {"rep-1": Role.REP, "rep-2": Role.REP, "rep-3": Role.REP, "mgr-1": Role.MANAGER, "mgr-2": Role.MANAGER,
         "dir-1": Role.DIRECTOR, "admin-1": Role.ADMIN}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedPostgres, TansuBroker]]:
    """So the new consumer groups do not read every earlier module's events."""
    yield from own_servers(tmp_path_factory, "forecasting")


@pytest.fixture(scope="module")
async def settings(
    servers: tuple[EmbeddedPostgres, TansuBroker], tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    configured = settings_for(*servers, tmp_path_factory.mktemp("forecasting-home"))
    await kafka.ensure_topics(configured)
    return configured


@pytest.fixture(scope="module")
async def clients(settings: Settings) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """The three services in this process, each behind its own client."""
    async with AsyncExitStack() as stack:
        started = {}
        for definition in (opportunities, scoring, forecasting):
            app = create_service_app(definition, settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
            started[definition.name] = await stack.enter_async_context(client)
        yield started


@pytest.fixture(scope="module")
def http(clients: dict[str, httpx.AsyncClient]) -> httpx.AsyncClient:
    return clients["forecasting"]


@pytest.fixture(scope="module")
async def tables(settings: Settings, http: httpx.AsyncClient) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.database_url_for("forecasting"), min_size=1, max_size=3)
    yield pool
    await pool.close()


def as_(settings: Settings, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(user, ROLES[user], settings.signing_secret, 600)}"}


async def open_opportunity(
    clients: dict[str, httpx.AsyncClient], settings: Settings, owner: str, amount: str, close: str,
    product: str | None = None,
) -> dict[str, Any]:
    body = {"name": f"项目 {uuid.uuid4().hex[:8]}", "account_name": f"客户 {uuid.uuid4().hex[:8]}",
            "amount": amount, "currency": "CNY", "expected_close_date": close, "product": product}
    response = await clients["opportunities"].post("/v1/opportunities", json=body, headers=as_(settings, owner))
    assert response.status_code == 201, response.text
    return dict(response.json())


async def move(clients: dict[str, httpx.AsyncClient], settings: Settings, opp: dict[str, Any], stage: str) -> None:
    response = await clients["opportunities"].post(
        f"/v1/opportunities/{opp['id']}/stage", json={"stage": stage}, headers=as_(settings, opp["owner_id"]))
    assert response.status_code == 200, response.text


async def forecast(
    http: httpx.AsyncClient, settings: Settings, period: str, by: str = "owner", user: str = "dir-1"
) -> dict[str, dict[str, Any]]:
    response = await http.get("/v1/forecast", params={"period": period, "by": by}, headers=as_(settings, user))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["period"], body["by"]) == (period, by)
    return {row["key"]: row for row in body["rows"]}


async def win_probability(clients: dict[str, httpx.AsyncClient], settings: Settings, opp_id: str) -> Decimal | None:
    response = await clients["scoring"].get(f"/v1/opportunities/{opp_id}/score", headers=as_(settings, "dir-1"))
    return Decimal(response.json()["score"]) if response.status_code == 200 else None


def cents(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01")))


async def test_weighted_pipeline_is_the_sum_of_amount_times_the_scored_win_probability(
    clients: dict[str, httpx.AsyncClient], http: httpx.AsyncClient, settings: Settings
) -> None:
    period = "2031-03"
    deals = [
        await open_opportunity(clients, settings, "rep-1", "120000.00", "2031-03-05"),
        await open_opportunity(clients, settings, "rep-1", "80000.00", "2031-03-28"),
        await open_opportunity(clients, settings, "rep-2", "250000.00", "2031-03-15"),
        await open_opportunity(clients, settings, "rep-3", "60000.00", "2031-03-31"),
    ]
    await move(clients, settings, deals[1], "bidding")
    await move(clients, settings, deals[2], "bidding")
    await move(clients, settings, deals[2], "negotiation")

    async def settled() -> dict[str, dict[str, Any]] | None:
        # The scoring service's current win probability of each deal; the forecast must weigh by it.
        probabilities = [await win_probability(clients, settings, d["id"]) for d in deals]
        if any(p is None for p in probabilities):
            return None
        expected: dict[str, Decimal] = {}
        for deal, probability in zip(deals, probabilities, strict=True):
            assert probability is not None
            expected[deal["owner_id"]] = expected.get(deal["owner_id"], Decimal(0)) + (
                Decimal(deal["amount"]) * probability / 100)
        rows = await forecast(http, settings, period)
        weighted = {k: rows[k]["weighted_pipeline"] for k in expected if k in rows}
        return rows if weighted == {k: cents(v) for k, v in expected.items()} else None

    rows = await eventually(settled, timeout=TIMEOUT, interval=0.2)
    assert rows["rep-1"]["open_amount"] == "200000.00" and rows["rep-2"]["open_amount"] == "250000.00"
    # negotiation is best case, nothing is in contract (commit) or won yet
    assert (rows["rep-2"]["best_case"], rows["rep-2"]["commit"], rows["rep-2"]["closed_won"]) == (
        "250000.00", "0.00", "0.00")
    assert rows["rep-1"]["best_case"] == "0.00"
    # the sample organisation's Q4 2026 quotas do not reach March 2031
    assert rows["rep-1"]["quota"] is None
    teams = await forecast(http, settings, period, "team")
    assert Decimal(teams["east"]["weighted_pipeline"]) == (
        Decimal(rows["rep-1"]["weighted_pipeline"]) + Decimal(rows["rep-2"]["weighted_pipeline"]))
    regions = await forecast(http, settings, period, "region")
    assert regions["华北"]["open_amount"] == "60000.00"
    quarter = await forecast(http, settings, "2031-Q1")
    assert quarter["rep-1"]["open_amount"] == "200000.00"
    year = await forecast(http, settings, "2031", "region")
    assert year["华东"]["open_amount"] == "450000.00"


async def published(settings: Settings, subject: str, count: int) -> list[CloudEvent]:
    records = await read_topic(settings, "sales.forecasts", count=count, match=subject.encode(), timeout=TIMEOUT)
    return [parse_and_validate(r.value) for r in records]


async def published_until(settings: Settings, subject: str, last: Callable[[dict[str, Any]], bool]) -> list[CloudEvent]:
    """The row's events once the last one published satisfies `last` (events of one batch are coalesced)."""

    async def arrived() -> list[CloudEvent] | None:
        records = await read_topic(settings, "sales.forecasts", count=10**6, match=subject.encode(), timeout=1.0)
        events = [parse_and_validate(r.value) for r in records]
        return events if events and last(events[-1].data) else None

    return await eventually(arrived, timeout=TIMEOUT)


async def test_a_stage_move_and_a_close_update_the_forecast_and_publish_it(
    clients: dict[str, httpx.AsyncClient], http: httpx.AsyncClient, settings: Settings
) -> None:
    period, subject = "2031-05", "2031-05/owner/rep-2"
    deal = await open_opportunity(clients, settings, "rep-2", "300000.00", "2031-05-20")

    async def counted() -> bool:
        return (await forecast(http, settings, period)).get("rep-2", {}).get("open_amount") == "300000.00"

    await eventually(counted, timeout=TIMEOUT)
    await move(clients, settings, deal, "bidding")
    await move(clients, settings, deal, "negotiation")
    await move(clients, settings, deal, "contract")

    async def committed() -> bool:
        return (await forecast(http, settings, period)).get("rep-2", {}).get("commit") == "300000.00"

    await eventually(committed, timeout=TIMEOUT)
    events = await published_until(settings, subject, lambda data: data["commit"] == "300000.00")
    assert [e.type for e in events] == ["sales.forecast.updated.v1"] * len(events)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    last = events[-1].data
    assert (last["period"], last["by"], last["key"], last["currency"]) == (period, "owner", "rep-2", "CNY")
    assert (last["open_amount"], last["commit"], last["best_case"]) == ("300000.00", "300000.00", "300000.00")
    assert events[-1].source == "/funnelcast/forecasting"

    won_before = Decimal((await forecast(http, settings, "2026-Q4")).get("rep-2", {}).get("closed_won", "0"))
    closed = await clients["opportunities"].post(
        f"/v1/opportunities/{deal['id']}/close", json={"outcome": "won", "reason": "价格与交付期占优"},
        headers=as_(settings, "rep-2"))
    assert closed.status_code == 200, closed.text

    async def left_the_period() -> bool:
        return "rep-2" not in await forecast(http, settings, period)  # no deal nor quota left there

    await eventually(left_the_period, timeout=TIMEOUT)
    # won today: it leaves May 2031 and counts as closed won in the period it was won
    today = datetime.now(UTC).date()
    quarter = f"{today.year}-Q{(today.month - 1) // 3 + 1}"
    rows = await forecast(http, settings, quarter)
    assert Decimal(rows["rep-2"]["closed_won"]) - (won_before if quarter == "2026-Q4" else 0) >= Decimal(300000)
    emptied = await published_until(settings, subject, lambda data: data["open_amount"] == "0.00")
    assert emptied[-1].data["commit"] == "0.00" and emptied[-1].sequence == len(emptied)


async def test_an_edit_without_a_stage_move_moves_the_forecast_once(
    clients: dict[str, httpx.AsyncClient], http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer,
    tables: asyncpg.Pool,
) -> None:
    deal = await open_opportunity(clients, settings, "rep-2", "200000.00", "2033-06-10", "GTX Basic")
    path, headers = f"/v1/opportunities/{deal['id']}", as_(settings, "rep-2")

    async def counted() -> bool:
        return (await forecast(http, settings, "2033-06")).get("rep-2", {}).get("open_amount") == "200000.00"

    await eventually(counted, timeout=TIMEOUT)
    edit = {"amount": "260000.00", "expected_close_date": "2033-08-05", "product": "GTX Pro"}
    edited = await clients["opportunities"].patch(path, json=edit, headers={**headers, "If-Match": '"1"'})
    assert edited.status_code == 200, edited.text

    async def moved() -> bool:
        return (await forecast(http, settings, "2033-08")).get("rep-2", {}).get("open_amount") == "260000.00"

    await eventually(moved, timeout=TIMEOUT)
    assert "rep-2" not in await forecast(http, settings, "2033-06")  # it left June
    products = await forecast(http, settings, "2033-08", "product")
    assert products["GTX Pro"]["open_amount"] == "260000.00" and "GTX Basic" not in products
    august = await published_until(settings, "2033-08/owner/rep-2", lambda data: data["open_amount"] == "260000.00")
    [update] = [parse_and_validate(r.value) for r in await read_topic(
        settings, "sales.opportunities", count=2, match=deal["id"].encode())
        if b"sales.opportunity.updated.v1" in r.value]
    assert august[-1].causationid == update.id  # the edit caused the published row
    await published_until(settings, "2033-06/owner/rep-2", lambda data: data["open_amount"] == "0.00")

    history = "SELECT count(*) FROM forecast_history WHERE cause_event_id = $1"
    caused = await tables.fetchval(history, update.id)
    await send(producer, update)  # redelivered; the next edit (same key) is applied after it
    again = await clients["opportunities"].patch(path, json={"amount": "270000.00"}, headers=headers)
    assert again.status_code == 200, again.text

    async def edited_again() -> bool:
        return (await forecast(http, settings, "2033-08")).get("rep-2", {}).get("open_amount") == "270000.00"

    await eventually(edited_again, timeout=TIMEOUT)
    assert await tables.fetchval(history, update.id) == caused  # the copy published nothing
    assert await tables.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", update.id) == 1
    assert (await forecast(http, settings, "2033-08"))["rep-2"]["deals"] == 1


async def test_a_stage_repriced_by_an_admin_reweighs_its_open_deals(
    clients: dict[str, httpx.AsyncClient], http: httpx.AsyncClient, settings: Settings, tables: asyncpg.Pool
) -> None:
    """An admin's new default probability reaches the forecast without any deal moving: the opportunities
    service announces each deal re-priced, scoring re-scores it, forecasting weighs it by the new score."""
    opportunities = clients["opportunities"]
    pipeline_id = f"renewals-{uuid.uuid4().hex[:8]}"
    stages = [{"key": "renewal_due", "label": {"zh-CN": "待续约", "en": "Renewal due"}, "probability": 20}]
    definition = {"name": {"zh-CN": "续约", "en": "Renewals"}, "stages": stages, "allow_skipping": True}
    created = await opportunities.post("/v1/pipelines", json={"id": pipeline_id, **definition},
                                       headers=as_(settings, "admin-1"))
    assert created.status_code == 201, created.text
    opened = await opportunities.post("/v1/opportunities", headers=as_(settings, "rep-3"), json={
        "name": "续约 2034", "account_name": f"客户 {uuid.uuid4().hex[:8]}", "amount": "100000.00",
        "expected_close_date": "2034-02-10", "pipeline_id": pipeline_id})
    assert opened.status_code == 201, opened.text
    deal = opened.json()

    async def weighted_at_its_score() -> tuple[Decimal, str] | None:
        probability = await win_probability(clients, settings, deal["id"])
        row = (await forecast(http, settings, "2034-02")).get("rep-3")
        if probability is None or row is None or row["weighted_pipeline"] != cents(100000 * probability / 100):
            return None
        return probability, row["weighted_pipeline"]

    before, _ = await eventually(weighted_at_its_score, timeout=TIMEOUT)
    stages[0]["probability"] = 50
    changed = await opportunities.put(f"/v1/pipelines/{pipeline_id}", json=definition,
                                      headers={**as_(settings, "admin-1"), "If-Match": '"1"'})
    assert changed.status_code == 200, changed.text

    async def reweighed() -> tuple[Decimal, str] | None:
        weighed = await weighted_at_its_score()
        return weighed if weighed is not None and weighed[0] == before + 30 else None

    await eventually(reweighed, timeout=TIMEOUT)
    # the stage's probability too, which weighs the deal while it has no score
    async def stage_probability() -> Decimal | None:
        stored = await tables.fetchval("SELECT stage_probability FROM deals WHERE opportunity_id = $1", deal["id"])
        return stored if stored == 50 else None

    await eventually(stage_probability, timeout=TIMEOUT)


async def test_deals_and_bookings_are_restated_when_the_forecast_settings_change(
    clients: dict[str, httpx.AsyncClient], http: httpx.AsyncClient, settings: Settings,
    producer: AIOKafkaProducer, tables: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deal in negotiation is best case; with negotiation made a commit stage, the next start restates it
    and publishes the row it moves; a second start changes nothing; the old settings bring it back. A
    booking in a currency without a rate counts once a rate is set."""
    deal = await open_opportunity(clients, settings, "rep-3", "70000.00", "2035-05-20")
    await move(clients, settings, deal, "negotiation")
    contract = f"ctr-{uuid.uuid4()}"
    await send(producer, CloudEvent(
        type="sales.contract.signed.v1", source="/funnelcast/opportunities", subject=contract, sequence=1, data={
            "contract_id": contract, "opportunity_id": f"opp-{uuid.uuid4()}", "account_id": "acc-1",
            "amount": "1000.00", "currency": "USD", "owner_id": "rep-3", "signed_at": "2035-06-03T08:00:00Z"}))

    async def booked() -> str | None:
        row = (await forecast(http, settings, "2035-06")).get("rep-3")
        return None if row is None else str(row["booked"])

    async def kept() -> bool:
        return bool(await tables.fetchval("SELECT count(*) FROM bookings WHERE contract_id = $1"
                                          " AND amount_reporting IS NULL", contract))  # no USD rate: left out

    await eventually(kept, timeout=TIMEOUT)

    async def figures() -> tuple[str, str] | None:
        row = (await forecast(http, settings, "2035-05")).get("rep-3")
        return None if row is None else (row["commit"], row["best_case"])  # best case counts commit in

    async def best_case() -> bool:
        return await figures() == ("0.00", "70000.00")

    await eventually(best_case, timeout=TIMEOUT)
    db = await Database.open(settings.database_url_for("forecasting"), "/funnelcast/forecasting", pool_size=2)
    try:
        assert await restating.restate(db) == restating.Restated(deals=0, bookings=0)  # nothing changed
        monkeypatch.setenv("FUNNELCAST_FORECAST_COMMIT_STAGES", "negotiation,contract")
        forecast_settings.cache_clear()
        restated = await restating.restate(db)
        assert restated.deals >= 1 and restated.bookings == 0  # the module's other negotiation deals too
        assert await figures() == ("70000.00", "70000.00")
        await published_until(settings, "2035-05/owner/rep-3", lambda data: data["commit"] == "70000.00")
        assert await restating.restate(db) == restating.Restated(deals=0, bookings=0)

        monkeypatch.delenv("FUNNELCAST_FORECAST_COMMIT_STAGES")
        forecast_settings.cache_clear()
        assert (await restating.restate(db)).deals >= 1
        assert await best_case()

        monkeypatch.setenv("FUNNELCAST_FORECAST_RATES", "USD=7.1")
        forecast_settings.cache_clear()
        assert (await restating.restate(db)).bookings >= 1
        assert await booked() == "7100.00"
        monkeypatch.delenv("FUNNELCAST_FORECAST_RATES")
        forecast_settings.cache_clear()
        assert (await restating.restate(db)).bookings >= 1  # left out again, for the module's other tests
        assert restating.lifecycle in forecasting.routers  # what every start runs
    finally:
        forecast_settings.cache_clear()
        await db.close()


async def test_owner_splits_products_and_yearly_rows(
    clients: dict[str, httpx.AsyncClient], http: httpx.AsyncClient, settings: Settings
) -> None:
    period, product = "2032-02", f"数据平台 {uuid.uuid4().hex[:6]}"
    shared = await open_opportunity(clients, settings, "rep-1", "100000.00", "2032-02-10", product)
    assert shared["product"] == product
    await open_opportunity(clients, settings, "rep-1", "5000.00", "2032-02-20")  # names no product
    split = {"owners": [{"owner_id": "rep-1", "split": 60}, {"owner_id": "rep-3", "split": 40}]}
    response = await clients["opportunities"].put(
        f"/v1/opportunities/{shared['id']}/owners", json=split, headers=as_(settings, "dir-1"))
    assert response.status_code == 200, response.text
    for stage in ("bidding", "negotiation", "contract"):
        await move(clients, settings, shared, stage)

    async def credited() -> dict[str, dict[str, Any]] | None:
        rows = await forecast(http, settings, period)
        ready = rows.get("rep-3", {}).get("commit") == "40000.00" and rows["rep-1"]["open_amount"] == "65000.00"
        return rows if ready else None

    owners = await eventually(credited, timeout=TIMEOUT)
    assert (owners["rep-1"]["commit"], owners["rep-1"]["deals"], owners["rep-3"]["open_amount"]) == (
        "60000.00", 2, "40000.00")
    # the weighted pipeline splits too (the scoring service's probability, whatever it is now)
    assert Decimal(owners["rep-1"]["weighted_pipeline"]) > Decimal(owners["rep-3"]["weighted_pipeline"]) > 0
    teams = await forecast(http, settings, period, "team")
    assert (teams["east"]["commit"], teams["north"]["commit"], teams["north"]["deals"]) == (
        "60000.00", "40000.00", 1)
    products = await forecast(http, settings, period, "product")
    assert (products[product]["open_amount"], products[product]["commit"], products[product]["deals"]) == (
        "100000.00", "100000.00", 1)
    assert products["unspecified"]["open_amount"] == "5000.00" and products[product]["quota"] is None
    mine = await forecast(http, settings, period, "product", user="rep-3")  # a rep sees their share
    assert set(mine) == {product} and mine[product]["open_amount"] == "40000.00"

    # published as months and quarters are: product rows, and yearly rows
    by_product = await published_until(settings, f"{period}/product/{product}",
                                       lambda data: data["commit"] == "100000.00")
    assert by_product[-1].data["by"] == "product" and by_product[-1].data["quota"] is None
    yearly = await published_until(settings, "2032/owner/rep-3", lambda data: data["commit"] == "40000.00")
    assert (yearly[-1].data["period"], yearly[-1].data["open_amount"]) == ("2032", "40000.00")
    assert [e.sequence for e in yearly] == list(range(1, len(yearly) + 1))

    today = datetime.now(UTC).date()
    month = f"{today:%Y-%m}"
    won_before = Decimal((await forecast(http, settings, month)).get("rep-3", {}).get("closed_won", "0"))
    closed = await clients["opportunities"].post(
        f"/v1/opportunities/{shared['id']}/close", json={"outcome": "won", "reason": "联合投标"},
        headers=as_(settings, "rep-1"))
    assert closed.status_code == 200, closed.text

    async def won_share() -> Decimal | None:
        won = Decimal((await forecast(http, settings, month)).get("rep-3", {}).get("closed_won", "0"))
        return won - won_before if won != won_before else None

    assert await eventually(won_share, timeout=TIMEOUT) == Decimal(40000)
    assert product not in await forecast(http, settings, period, "product")  # it left February 2032


def opportunity_event(type_: str, opp_id: str, sequence: int, **data: Any) -> CloudEvent:
    return CloudEvent(type=type_, source="/funnelcast/opportunities", subject=opp_id, data=data, sequence=sequence)


def created(opp_id: str, owner: str, amount: str, close: str) -> CloudEvent:
    return opportunity_event(
        "sales.opportunity.created.v1", opp_id, 1, opportunity_id=opp_id, name="重放项目", account_id="acc-x",
        stage="prospecting", status="open", probability=10, amount=amount, currency="CNY", owner_id=owner,
        expected_close_date=close, created_at="2026-11-23T08:00:00Z", lead_id=None, campaign_id=None)


def stage_changed(opp_id: str, owner: str, amount: str, to_stage: str, probability: int) -> CloudEvent:
    return opportunity_event(
        "sales.opportunity.stage_changed.v1", opp_id, 2, opportunity_id=opp_id, from_stage="prospecting",
        to_stage=to_stage, probability=probability, amount=amount, currency="CNY", owner_id=owner,
        changed_by=owner, changed_at="2026-11-23T08:05:00Z")


async def send(producer: AIOKafkaProducer, event: CloudEvent) -> None:
    await producer.send_and_wait(event.topic, event.to_bytes(), key=event.subject.encode(),
                                 headers=[CONTENT_TYPE_HEADER])


async def test_a_redelivered_event_changes_nothing(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    period, opp = "2031-07", f"opp-{uuid.uuid4()}"
    first = created(opp, "rep-3", "500000.00", "2031-07-10")
    await send(producer, first)
    await send(producer, first)  # redelivered: same event id
    # same key, same partition: once the move is applied, both copies before it were processed
    await send(producer, stage_changed(opp, "rep-3", "500000.00", "bidding", 30))

    async def moved() -> bool:
        return await tables.fetchval("SELECT stage FROM deals WHERE opportunity_id = $1", opp) == "bidding"

    await eventually(moved, timeout=TIMEOUT)
    await send(producer, first)  # and once more, after everything
    await send(producer, stage_changed(opp, "rep-3", "500000.00", "negotiation", 60))  # same key: after the copy

    async def negotiating() -> bool:
        return await tables.fetchval("SELECT stage FROM deals WHERE opportunity_id = $1", opp) == "negotiation"

    await eventually(negotiating, timeout=TIMEOUT)
    rows = await forecast(http, settings, period)
    # counted once, and the late copy did not move it back to its first stage
    assert (rows["rep-3"]["open_amount"], rows["rep-3"]["best_case"], rows["rep-3"]["deals"]) == (
        "500000.00", "500000.00", 1)
    assert await tables.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", first.id) == 1
    causes = await tables.fetch(
        "SELECT cause_event_id FROM forecast_history WHERE period = $1 AND by = 'owner' AND key = 'rep-3'", period)
    assert [c["cause_event_id"] for c in causes].count(first.id) == 1  # the copies published nothing
    events = await published(settings, f"{period}/owner/rep-3", len(causes))
    # (a score arriving meanwhile may publish one more)
    assert len(events) >= len(causes) and [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert {e.data["open_amount"] for e in events} == {"500000.00"}


async def test_role_scoping_and_quotas(
    clients: dict[str, httpx.AsyncClient], http: httpx.AsyncClient, settings: Settings
) -> None:
    period = "2031-09"
    for owner, amount in (("rep-1", "1000.00"), ("rep-2", "2000.00"), ("rep-3", "4000.00")):
        await open_opportunity(clients, settings, owner, amount, "2031-09-15")

    async def all_three() -> dict[str, dict[str, Any]] | None:
        rows = await forecast(http, settings, period)
        return rows if {"rep-1", "rep-2", "rep-3"} <= set(rows) else None

    await eventually(all_three, timeout=TIMEOUT)
    assert set(await forecast(http, settings, period, user="rep-1")) == {"rep-1"}
    assert set(await forecast(http, settings, period, user="mgr-1")) == {"rep-1", "rep-2"}
    assert set(await forecast(http, settings, period, user="mgr-2")) == {"rep-3"}
    team_view = await forecast(http, settings, period, "team", user="mgr-1")
    assert set(team_view) == {"east"} and team_view["east"]["open_amount"] == "3000.00"
    own_region = await forecast(http, settings, period, "region", user="rep-1")
    assert own_region["华东"]["open_amount"] == "1000.00"  # a rep's region row sums only their deals
    assert (await forecast(http, settings, period, "region"))["华东"]["open_amount"] == "3000.00"

    anonymous = await http.get("/v1/forecast", params={"period": period})
    assert anonymous.status_code == 401
    bad = await http.get("/v1/forecast", params={"period": "2031-13"}, headers=as_(settings, "dir-1"))
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")

    quota = {"amount": "9000.00"}
    by_rep = await http.put(f"/v1/quotas/rep-1/{period}", json=quota, headers=as_(settings, "rep-1"))
    assert by_rep.status_code == 403
    other_team = await http.put(f"/v1/quotas/rep-3/{period}", json=quota, headers=as_(settings, "mgr-1"))
    assert other_team.status_code == 403
    done = await http.put(f"/v1/quotas/rep-1/{period}", json=quota, headers=as_(settings, "mgr-1"))
    assert done.status_code == 200 and done.json()["amount"] == "9000.00"
    rows = await forecast(http, settings, period, user="mgr-1")
    assert rows["rep-1"]["quota"] == "9000.00" and rows["rep-2"]["quota"] is None
    assert (await forecast(http, settings, period, "team"))["east"]["quota"] == "9000.00"
    events = await published(settings, f"{period}/owner/rep-1", 2)
    assert events[-1].data["quota"] == "9000.00"
    # the sample organisation's quarter quota shares down to its months
    november = await forecast(http, settings, "2026-11", user="rep-3")
    assert november.get("rep-3", {}).get("quota") == "333333.33"


async def test_attainment_ranks_the_reps_against_their_quotas(
    clients: dict[str, httpx.AsyncClient], http: httpx.AsyncClient, settings: Settings
) -> None:
    period = "2026-Q4"
    response = await http.get("/v1/attainment", params={"period": period}, headers=as_(settings, "dir-1"))
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [i["rank"] for i in items] == list(range(1, len(items) + 1))
    by_owner = {i["owner_id"]: i for i in items}
    assert {"rep-1", "rep-2", "rep-3"} <= set(by_owner)
    rep1 = by_owner["rep-1"]
    assert rep1["quota"] == "1500000.00"
    expected = Decimal(rep1["closed_won"]) * 100 / Decimal(rep1["quota"])
    assert Decimal(rep1["attainment_percent"]) == expected.quantize(Decimal("0.1"))
    assert Decimal(rep1["gap_to_quota"]) == Decimal(1500000) - Decimal(rep1["closed_won"])
    mine = await http.get("/v1/attainment", params={"period": period}, headers=as_(settings, "rep-2"))
    assert [i["owner_id"] for i in mine.json()["items"]] == ["rep-2"]


async def test_funnel_bookings_forecast_accuracy_and_charts(
    clients: dict[str, httpx.AsyncClient], http: httpx.AsyncClient, settings: Settings
) -> None:
    today = datetime.now(UTC).date()
    month = f"{today:%Y-%m}"
    deal = await open_opportunity(clients, settings, "rep-1", "70000.00", "2031-11-30")
    await move(clients, settings, deal, "bidding")
    lost = await clients["opportunities"].post(
        f"/v1/opportunities/{deal['id']}/close", json={"outcome": "lost", "reason": "预算取消", "competitor": "none"},
        headers=as_(settings, "rep-1"))
    assert lost.status_code == 200, lost.text

    async def funnel_of_rep_1() -> dict[str, Any] | None:
        response = await http.get("/v1/funnel", params={"period": month, "owner_id": "rep-1"},
                                  headers=as_(settings, "mgr-1"))
        assert response.status_code == 200, response.text
        body = dict(response.json())
        return body if body["lost"] >= 1 else None

    body = await eventually(funnel_of_rep_1, timeout=TIMEOUT)
    stages = {s["stage"]: s for s in body["stages"]}
    assert stages["prospecting"]["reached"] == body["deals"] >= 1
    assert stages["bidding"]["reached"] >= 1 and body["win_rate"] is not None
    outside = await http.get("/v1/funnel", params={"period": month, "owner_id": "rep-3"},
                             headers=as_(settings, "mgr-1"))
    assert outside.status_code == 403
    picture = await http.get("/v1/charts/funnel.svg", params={"period": month}, headers=as_(settings, "rep-1"))
    assert picture.status_code == 200 and picture.headers["content-type"].startswith("image/svg+xml")
    assert picture.text.startswith("<svg") and "prospecting" in picture.text

    # the deal won in an earlier test is this month's history: next month's forecast starts from it
    year, number = (today.year + 1, 1) if today.month == 12 else (today.year, today.month + 1)
    next_month = f"{year}-{number:02d}"
    forbidden = await http.get("/v1/forecast/bookings", params={"period": next_month},
                               headers=as_(settings, "mgr-1"))
    assert forbidden.status_code == 403
    made = await http.get("/v1/forecast/bookings", params={"period": next_month}, headers=as_(settings, "dir-1"))
    assert made.status_code == 200, made.text
    forecast_body = made.json()
    regions = await forecast(http, settings, month, "region")
    won_this_month = sum(Decimal(r["closed_won"]) for r in regions.values())
    assert won_this_month >= Decimal(300000) and Decimal(forecast_body["point"]) == won_this_month
    assert Decimal(forecast_body["low"]) <= Decimal(forecast_body["point"]) <= Decimal(forecast_body["high"])
    assert forecast_body["history_months"] == 1 and forecast_body["method"].startswith("mean")
    accuracy = await http.get("/v1/forecast/accuracy", headers=as_(settings, "dir-1"))
    assert accuracy.status_code == 200
    latest = accuracy.json()["items"][0]
    assert (latest["period"], latest["point"], latest["actual"]) == (next_month, forecast_body["point"], None)
    chart = await http.get("/v1/charts/forecast.svg", params={"period": str(year)}, headers=as_(settings, "dir-1"))
    assert chart.status_code == 200 and chart.text.count("<circle") >= 1


def campaign_created(campaign: str, cost: str, starts_on: str, ends_on: str) -> CloudEvent:
    return CloudEvent(type="sales.campaign.created.v1", source="/funnelcast/leads", subject=campaign, sequence=1, data={
        "campaign_id": campaign, "name": "展会推广", "channel": "event", "status": "running", "budget": cost,
        "actual_cost": cost, "currency": "CNY", "starts_on": starts_on, "ends_on": ends_on,
        "created_at": f"{starts_on}T00:00:00Z"})


async def win_for_campaign(
    producer: AIOKafkaProducer, campaign: str, owner: str, amount: str, day: str, shared_with: str | None = None
) -> None:
    """A deal attributed to the campaign, opened and won on `day` (shared 50/50 with `shared_with`)."""
    opp = f"opp-{uuid.uuid4()}"
    opened = created(opp, owner, amount, day)
    await send(producer, CloudEvent(type=opened.type, source=opened.source, subject=opp, sequence=1,
                                    data={**opened.data, "campaign_id": campaign}))
    if shared_with is not None:
        await send(producer, opportunity_event(
            "sales.opportunity.owners_changed.v1", opp, 2, opportunity_id=opp, owner_id=owner,
            previous_owner_id=owner, owners=[{"owner_id": owner, "split": 50}, {"owner_id": shared_with, "split": 50}],
            changed_by="dir-1", changed_at=f"{day}T07:00:00Z"))
    await send(producer, opportunity_event(
        "sales.opportunity.won.v1", opp, 3, opportunity_id=opp, amount=amount, currency="CNY", owner_id=owner,
        reason="活动签约", closed_at=f"{day}T08:00:00Z", closed_by=owner))


async def test_lead_conversion_and_campaign_economics(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer
) -> None:
    campaign, month = f"camp-{uuid.uuid4()}", "2031-02"
    await send(producer, campaign_created(campaign, "12000.00", "2031-02-01", "2031-02-28"))
    leads = [f"lead-{uuid.uuid4()}" for _ in range(3)]
    for lead, grade in zip(leads, ("H", "H", "B"), strict=True):
        await send(producer, CloudEvent(
            type="sales.lead.captured.v1", source="/funnelcast/leads", subject=lead, sequence=1, data={
                "lead_id": lead, "source": "event", "grade": grade, "owner_id": "rep-1", "campaign_id": campaign,
                "region": "华东", "captured_at": "2031-02-10T08:00:00Z",
                "contact": {"name": "访客", "company": "某公司", "phone": "+8613900000000", "email": None}}))
    await send(producer, CloudEvent(
        type="sales.lead.converted.v1", source="/funnelcast/leads", subject=leads[0], sequence=2, data={
            "lead_id": leads[0], "contact": {"name": "访客", "company": "某公司", "phone": "+8613900000000",
                                             "email": None},
            "account_name": "某公司", "account_id": None, "owner_id": "rep-1", "region": "华东",
            "campaign_id": campaign, "converted_by": "rep-1",
            "opportunity": {"name": "展会项目", "amount": None, "currency": "CNY", "expected_close_date": None},
            "converted_at": "2031-02-12T08:00:00Z"}))
    await win_for_campaign(producer, campaign, "rep-1", "48000.00", "2031-02-27")

    async def economics() -> dict[str, Any] | None:
        response = await http.get("/v1/funnel/marketing", params={"period": month}, headers=as_(settings, "dir-1"))
        assert response.status_code == 200, response.text
        body = dict(response.json())
        mine = [c for c in body["campaigns"] if c["campaign_id"] == campaign]
        ready = mine and mine[0]["leads"] == 3 and mine[0]["deals_won"] == 1 and any(
            r["source"] == "event" and r["converted"] == 1 for r in body["conversion"])
        return body if ready else None

    body = await eventually(economics, timeout=TIMEOUT)
    [row] = [c for c in body["campaigns"] if c["campaign_id"] == campaign]
    assert (row["cost"], row["cost_per_lead"], row["acquisition_cost"], row["won_amount"]) == (
        "12000.00", "4000.00", "12000.00", "48000.00")
    assert row["roi"] == 3.0
    by_grade = {r["grade"]: r for r in body["conversion"] if r["source"] == "event"}
    assert (by_grade["H"]["leads"], by_grade["H"]["converted"], by_grade["B"]["conversion_rate"]) == (2, 1, 0.0)
    own = await http.get("/v1/funnel/marketing", params={"period": month}, headers=as_(settings, "rep-1"))
    assert own.status_code == 200 and own.json()["scope"] == "own"  # a rep sees their own leads' figures
    [mine] = [c for c in own.json()["campaigns"] if c["campaign_id"] == campaign]
    assert (mine["leads"], mine["cost"], mine["deals_won"]) == (3, "12000.00", 1)  # rep-1 holds every lead


def lead_captured(lead: str, owner: str, campaign: str, day: str) -> CloudEvent:
    return CloudEvent(type="sales.lead.captured.v1", source="/funnelcast/leads", subject=lead, sequence=1, data={
        "lead_id": lead, "source": "event", "grade": "A", "owner_id": owner, "campaign_id": campaign, "region": None,
        "captured_at": f"{day}T08:00:00Z", "contact": {"name": "访客", "company": None, "phone": None,
                                                        "email": f"{lead}@example.test"}})


async def test_a_merge_survivor_without_a_campaign_takes_the_merged_leads_campaign(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    campaign = f"camp-{uuid.uuid4()}"
    await send(producer, campaign_created(campaign, "900.00", "2035-01-01", "2035-01-31"))
    survivor, duplicate = f"lead-{uuid.uuid4()}", f"lead-{uuid.uuid4()}"
    captured = lead_captured(survivor, "rep-1", campaign, "2035-01-05")
    await send(producer, CloudEvent(type=captured.type, source=captured.source, subject=survivor, sequence=1,
                                    data={**captured.data, "campaign_id": None}))
    await send(producer, lead_captured(duplicate, "rep-1", campaign, "2035-01-06"))
    await send(producer, CloudEvent(
        type="sales.lead.merged.v1", source="/funnelcast/leads", subject=survivor, sequence=3, data={
            "lead_id": survivor, "merged_lead_id": duplicate, "matched_on": [], "merged_by": "mgr-1",
            "merged_at": "2035-01-07T08:00:00Z", "campaign_id": campaign, "filled": ["campaign_id"]}))

    async def attributed() -> list[asyncpg.Record] | None:
        rows = await tables.fetch("SELECT lead_id, campaign_id, merged_into FROM leads WHERE lead_id = ANY($1::text[])"
                                  " ORDER BY lead_id = $2", [survivor, duplicate], survivor)
        return rows if [(r["campaign_id"], r["merged_into"]) for r in rows] == [
            (campaign, survivor), (campaign, None)] else None

    await eventually(attributed, timeout=TIMEOUT)
    response = await http.get("/v1/funnel/marketing", params={"period": "2035-01"}, headers=as_(settings, "dir-1"))
    [row] = [c for c in response.json()["campaigns"] if c["campaign_id"] == campaign]
    assert (row["leads"], row["cost_per_lead"]) == (1, "900.00")  # the survivor, counted once


async def test_campaign_economics_per_period_and_team_and_scope(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    campaign, month = f"camp-{uuid.uuid4()}", "2034-02"
    # 90 days, 28 of them in February
    await send(producer, campaign_created(campaign, "9000.00", "2034-01-01", "2034-03-31"))
    leads = [f"lead-{uuid.uuid4()}" for _ in range(4)]
    for lead, owner, day in zip(leads, ("rep-1", "rep-1", "rep-3", "rep-1"),
                                ("2034-02-05", "2034-02-06", "2034-02-07", "2034-01-10"), strict=True):
        await send(producer, lead_captured(lead, owner, campaign, day))
    duplicate = f"lead-{uuid.uuid4()}"  # captured again, then merged into the first: not a lead of its own
    await send(producer, lead_captured(duplicate, "rep-1", campaign, "2034-02-09"))
    await send(producer, CloudEvent(
        type="sales.lead.merged.v1", source="/funnelcast/leads", subject=leads[0], sequence=2, data={
            "lead_id": leads[0], "merged_lead_id": duplicate, "matched_on": ["email"], "merged_by": "rep-1",
            "merged_at": "2034-02-10T08:00:00Z"}))
    await send(producer, CloudEvent(  # a manager gives one of rep-1's leads to rep-2
        type="sales.lead.assigned.v1", source="/funnelcast/leads", subject=leads[1], sequence=2, data={
            "lead_id": leads[1], "owner_id": "rep-2", "previous_owner_id": "rep-1", "team": "east", "grade": "A",
            "method": "explicit", "assigned_by": "mgr-1", "reason": None, "assigned_at": "2034-02-08T08:00:00Z"}))
    await win_for_campaign(producer, campaign, "rep-3", "30000.00", "2034-02-20")
    await win_for_campaign(producer, campaign, "rep-1", "10000.00", "2034-02-21", shared_with="rep-3")

    async def marketing(user: str = "dir-1", **params: str) -> dict[str, Any]:
        response = await http.get("/v1/funnel/marketing", params={"period": month, **params},
                                   headers=as_(settings, user))
        assert response.status_code == 200, response.text
        return dict(response.json())

    def ours(campaigns: list[dict[str, Any]]) -> dict[str, Any]:
        [row] = [c for c in campaigns if c["campaign_id"] == campaign]
        return row

    async def arrived() -> bool:
        merged = await tables.fetchrow("SELECT captured_on, merged_into FROM leads WHERE lead_id = $1", duplicate)
        if merged is None or merged["captured_on"] is None or merged["merged_into"] != leads[0]:
            return False
        lifetime = [c for c in (await marketing())["campaigns"] if c["campaign_id"] == campaign]
        reassigned = [c for c in (await marketing(owner_id="rep-2"))["campaigns"] if c["campaign_id"] == campaign]
        return [(c["leads"], c["deals_won"]) for c in lifetime + reassigned] == [(4, 2), (1, 0)]

    await eventually(arrived, timeout=TIMEOUT)
    period = await marketing(campaigns="period", by="team")
    assert period["campaigns_over"] == "period"
    whole = ours(period["campaigns"])
    assert (whole["cost"], whole["leads"], whole["cost_per_lead"], whole["acquisition_cost"], whole["deals_won"]) == (
        "2800.00", 3, "933.33", "1400.00", 2)
    assert round(whole["roi"], 4) == round((40000 - 2800) / 2800, 4)
    teams = {row["key"]: row for row in period["rows"]}
    east, north = ours(teams["east"]["campaigns"]), ours(teams["north"]["campaigns"])
    # the cost follows the leads; a shared deal counts in both teams with its shares
    assert (east["cost"], east["leads"], east["deals_won"], east["won_amount"]) == ("1866.67", 2, 1, "5000.00")
    assert (north["cost"], north["leads"], north["deals_won"], north["won_amount"]) == ("933.33", 1, 2, "35000.00")
    assert [(c["source"], c["grade"], c["leads"]) for c in teams["east"]["conversion"]
            if c["source"] == "event" and c["grade"] == "A"][0][2] >= 2
    in_region = ours((await marketing(campaigns="period", region="华北"))["campaigns"])
    assert in_region == north
    managed = await marketing("mgr-1", campaigns="period", by="owner")
    assert managed["scope"] == "team" and ours(managed["campaigns"]) == east
    assert {row["key"] for row in managed["rows"]} <= {"rep-1", "rep-2", "mgr-1"}
    reps = {row["key"]: ours(row["campaigns"]) for row in managed["rows"] if row["key"] in ("rep-1", "rep-2")}
    assert {rep: (c["leads"], c["cost"]) for rep, c in reps.items()} == {
        "rep-1": (1, "933.33"), "rep-2": (1, "933.33")}  # the reassigned lead counts under rep-2
    outside = await http.get("/v1/funnel/marketing", params={"period": month, "team": "north"},
                             headers=as_(settings, "mgr-1"))
    assert outside.status_code == 403


async def test_the_funnel_per_team_and_region_in_one_call(
    clients: dict[str, httpx.AsyncClient], http: httpx.AsyncClient, settings: Settings, tables: asyncpg.Pool
) -> None:
    month = f"{datetime.now(UTC).date():%Y-%m}"
    north_deal = await open_opportunity(clients, settings, "rep-3", "10000.00", "2031-12-31")
    await move(clients, settings, north_deal, "bidding")

    async def funnel(user: str = "dir-1", **params: str) -> dict[str, Any]:
        response = await http.get("/v1/funnel", params={"period": month, **params}, headers=as_(settings, user))
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def counted() -> bool:
        stage = await tables.fetchval("SELECT stage FROM deals WHERE opportunity_id = $1", north_deal["id"])
        return bool(stage == "bidding")

    await eventually(counted, timeout=TIMEOUT)
    body = await funnel(by="team")
    rows = {row["key"]: row for row in body["rows"]}
    # a shared deal counts in each team holding a share, with that share of its amount
    assert sum(row["deals"] for row in rows.values()) >= body["deals"]
    assert sum(Decimal(row["stages"][0]["amount"]) for row in rows.values()) == Decimal(body["stages"][0]["amount"])
    north = await funnel(team="north")
    figures = ("deals", "stages", "won", "lost", "won_amount", "win_rate", "median_sales_cycle_days")
    assert {k: north[k] for k in figures} == {k: rows["north"][k] for k in figures}
    assert north["stages"][1]["reached"] >= 1  # the deal moved to bidding
    by_region = {row["key"]: row for row in (await funnel(by="region"))["rows"]}
    assert {k: by_region["华北"][k] for k in figures} == {k: north[k] for k in figures}
    managed = await funnel("mgr-1", by="team")
    assert [row["key"] for row in managed["rows"]] == ["east"] and managed["deals"] == rows["east"]["deals"]
    refused = await http.get("/v1/funnel", params={"period": month, "team": "north"}, headers=as_(settings, "mgr-1"))
    assert refused.status_code == 403


async def test_the_funnel_counts_each_owners_share_of_a_shared_deal(
    clients: dict[str, httpx.AsyncClient], http: httpx.AsyncClient, settings: Settings, tables: asyncpg.Pool
) -> None:
    month = f"{datetime.now(UTC).date():%Y-%m}"

    async def opened_amounts() -> dict[str, tuple[int, Decimal]]:
        """Deals and prospecting amount per owner and team (a director's view), and as mgr-2 sees them."""
        seen: dict[str, tuple[int, Decimal]] = {}
        for user, by in (("dir-1", "owner"), ("dir-1", "team"), ("mgr-2", "team")):
            response = await http.get("/v1/funnel", params={"period": month, "by": by}, headers=as_(settings, user))
            assert response.status_code == 200, response.text
            seen |= {f"{user}/{row['key']}": (row["deals"], Decimal(row["stages"][0]["amount"]))
                     for row in response.json()["rows"]}
        return seen

    before = await opened_amounts()
    deal = await open_opportunity(clients, settings, "rep-1", "50000.00", "2031-12-31")
    split = {"owners": [{"owner_id": "rep-1", "split": 60}, {"owner_id": "rep-3", "split": 40}]}
    shared = await clients["opportunities"].put(
        f"/v1/opportunities/{deal['id']}/owners", json=split, headers=as_(settings, "dir-1"))
    assert shared.status_code == 200, shared.text

    async def split_applied() -> bool:
        return await tables.fetchval("SELECT splits FROM deals WHERE opportunity_id = $1", deal["id"]) is not None

    await eventually(split_applied, timeout=TIMEOUT)
    after = await opened_amounts()
    grew = {key: (after[key][0] - before.get(key, (0, Decimal(0)))[0], after[key][1] - before.get(key, (0, 0))[1])
            for key in after if after[key] != before.get(key)}
    assert grew == {"dir-1/rep-1": (1, Decimal(30000)), "dir-1/rep-3": (1, Decimal(20000)),
                    "dir-1/east": (1, Decimal(30000)), "dir-1/north": (1, Decimal(20000)),
                    "mgr-2/north": (1, Decimal(20000))}  # mgr-2 sees rep-3's share of rep-1's deal
