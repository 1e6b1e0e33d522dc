"""Win probabilities on the real runtime (Postgres and Tansu of this module's own, so that the learned model
sees only this module's outcomes): open deals re-scored as time passes, the owners' win tallies, and a
model learned from the moments of the deals' last scores while open."""

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.scoring import handlers
from services.scoring.domain import smoothed_win_rate
from shared.db import Database
from shared.events.envelope import CONTENT_TYPE_HEADER, CloudEvent, parse_and_validate
from shared.inbox import DeadLetters, EventProcessor, Message, Outcome
from shared.runtime.broker import TansuBroker
from shared.runtime.postgres import EmbeddedPostgres
from shared.settings import Settings
from tests.conftest import own_servers
from tests.integration.test_scoring_service import (  # the service on this module's servers, and its helpers
    BACKLOG_TIMEOUT,
    as_,
    http,
    now,
    opportunity_event,
    send,
    settings,
    tables,
)
from tests.support.topics import read_topic
from tests.support.waiting import eventually

__all__ = ["http", "settings", "tables"]  # fixtures: module-scoped, so started again for this module


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedPostgres, TansuBroker]]:
    yield from own_servers(tmp_path_factory, "scoring-win-probability")



def ts(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def created_in_bidding(opp: str, owner: str, at: datetime, stage: str = "bidding") -> CloudEvent:
    """A deal opened in bidding (or `stage`) at `at` (the event happened then)."""
    return CloudEvent(type="sales.opportunity.created.v1", source="/funnelcast/opportunities", subject=opp, time=at,
                      sequence=1, data={
                          "opportunity_id": opp, "name": "项目", "account_id": "acc-1", "stage": stage,
                          "status": "open", "probability": {"bidding": 30, "negotiation": 60}[stage],
                          "amount": "80000.00", "currency": "CNY",
                          "owner_id": owner, "expected_close_date": None, "created_at": ts(at), "lead_id": None,
                          "campaign_id": None})


def closed(opp: str, owner: str, won: bool, sequence: int = 2) -> CloudEvent:
    data = {"amount": "80000.00", "currency": "CNY", "owner_id": owner, "closed_at": now(), "closed_by": owner,
            "reason": "价格"}
    if won:
        return opportunity_event("sales.opportunity.won.v1", opp, sequence, **data)
    return opportunity_event("sales.opportunity.lost.v1", opp, sequence, competitor="某竞品", **data)


async def rescore(http: httpx.AsyncClient, settings: Settings, as_of: datetime | None = None) -> dict[str, Any]:
    params = {} if as_of is None else {"as_of": ts(as_of)}
    response = await http.post("/v1/opportunities/rescore", params=params, headers=as_(settings, "admin-1"))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def current_scores(tables: asyncpg.Pool, opps: list[str]) -> dict[str, int]:
    rows = await tables.fetch("SELECT opportunity_id, score FROM opportunity_scores"
                              " WHERE opportunity_id = ANY($1::text[])", opps)
    return {r["opportunity_id"]: r["score"] for r in rows}


async def test_the_periodic_re_scoring_ages_an_open_deal_and_publishes_only_a_changed_score(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    aged, fresh = f"opp-{uuid.uuid4()}", f"opp-{uuid.uuid4()}"
    started = datetime.now(UTC)
    await send(producer, created_in_bidding(aged, "rep-1", started - timedelta(days=40)))
    await send(producer, created_in_bidding(fresh, "rep-1", started))

    async def both_scored() -> dict[str, int] | None:
        scores = await current_scores(tables, [aged, fresh])
        return scores if len(scores) == 2 else None

    # Scored as of their events: the aged deal had just entered bidding then.
    assert await eventually(both_scored, timeout=BACKLOG_TIMEOUT) == {aged: 30, fresh: 30}
    assert (await http.post("/v1/opportunities/rescore", headers=as_(settings, "rep-1"))).status_code == 403
    first = await rescore(http, settings)
    assert first["examined"] >= 2 and first["rescored"] >= 1
    # 40 days in bidding (usually 30): 5 points off; the fresh deal's score did not change.
    assert await current_scores(tables, [aged, fresh]) == {aged: 25, fresh: 30}
    assert (await rescore(http, settings))["rescored"] == 0  # nothing moved since: nothing published
    published = await tables.fetch("SELECT aggregateid, payload FROM outbox WHERE aggregateid = ANY($1::text[])"
                                   " ORDER BY aggregateid, created_at", [aged, fresh])
    assert sorted(r["aggregateid"] for r in published) == sorted([aged, aged, fresh])
    records = await read_topic(settings, "sales.scores", count=2, match=aged.encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [(e.sequence, e.data["score"], e.data["previous_score"]) for e in events] == [(1, 30, None), (2, 25, 30)]
    history = (await http.get(f"/v1/opportunities/{aged}/score/history", headers=as_(settings, "rep-1"))).json()
    assert [(i["score"], i["cause_type"]) for i in history["items"]] == [
        (25, "rescore"), (30, "sales.opportunity.created.v1")]
    # As of a moment before a deal's latest event, the deal is left as it is.
    assert (await rescore(http, settings, started - timedelta(days=50)))["rescored"] == 0


async def test_a_redelivered_outcome_counts_once_for_its_owner_and_a_second_close_replaces_the_first(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    owner, opp = f"rep-{uuid.uuid4()}", f"opp-{uuid.uuid4()}"
    await send(producer, created_in_bidding(opp, owner, datetime.now(UTC)))
    won = closed(opp, owner, True)
    await send(producer, won)
    await send(producer, won)  # redelivered: the inbox applies it once
    relost = closed(opp, owner, False, sequence=3)  # reopened elsewhere and lost: the latest outcome counts
    await send(producer, relost)

    async def applied() -> bool:
        return bool(await tables.fetchval("SELECT cause_event_id = $2 FROM outcomes WHERE subject_id = $1",
                                          opp, relost.id))

    await eventually(applied, timeout=BACKLOG_TIMEOUT)
    tally = await tables.fetchrow("SELECT won, lost FROM owner_win_tallies WHERE owner_id = $1", owner)
    assert (tally["won"], tally["lost"]) == (0, 1)
    # What is learned from is the deal as it was while open, never the close.
    moment = json.loads(await tables.fetchval("SELECT features FROM outcomes WHERE subject_id = $1", opp))
    assert moment["features"]["status"] == "open" and moment["features"]["competitor"] is None


async def test_a_win_probability_learned_from_age_and_owner_is_promoted_on_schedule_over_the_rules(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    """Long-lived deals win, and every deal of the losing owner is lost: neither is in the rules. The deals are
    in negotiation, a stage the module's earlier outcomes do not have (their prospecting deals won, their
    contract deals lost)."""
    db = Database(tables, "/funnelcast/scoring")

    def created(opp: str, owner: str, at: datetime) -> CloudEvent:
        return created_in_bidding(opp, owner, at, "negotiation")

    winner, loser = f"rep-{uuid.uuid4()}", f"rep-{uuid.uuid4()}"
    assert await handlers.train_model_if_due(db, "opportunity", 100) is None  # too few new outcomes yet

    async def round_of(count: int) -> None:
        started = datetime.now(UTC)
        deals = []
        for i in range(count):
            kind = i % 3  # 0: the winner's long-lived deal, 1: the winner's young one, 2: the loser's young one
            deals.append((f"opp-{uuid.uuid4()}", loser if kind == 2 else winner, kind != 1 or i % 2 == 0,
                          started - timedelta(days=45 if kind == 0 else 1)))
        for opp, owner, _, opened_at in deals:
            await send(producer, created(opp, owner, opened_at))

        async def all_scored() -> bool:
            return len(await current_scores(tables, [d[0] for d in deals])) == count

        await eventually(all_scored, timeout=BACKLOG_TIMEOUT)
        await rescore(http, settings)  # the long-lived deals' last score while open: 45 days in the stage
        for opp, owner, won, _ in deals:
            await send(producer, closed(opp, owner, won and owner == winner))

        async def all_closed() -> bool:
            return bool(await tables.fetchval("SELECT count(*) = $2 FROM outcomes WHERE subject_id = ANY($1::text[])",
                                              [d[0] for d in deals], count))

        await eventually(all_closed, timeout=BACKLOG_TIMEOUT)

    await round_of(45)  # the owners' tallies fill ...
    await round_of(75)  # ... so these deals' moments know the owners' win rates
    model = await handlers.train_model_if_due(db, "opportunity", 100)  # as the schedule does
    assert model is not None and model["version"].startswith(("gb-opp-", "lr-opp-"))
    assert (model["promoted"], model["current_version"]) == (True, "rules-v1") and model["auc"] > model["current_auc"]

    old, young, losers = f"opp-{uuid.uuid4()}", f"opp-{uuid.uuid4()}", f"opp-{uuid.uuid4()}"
    await send(producer, created(old, winner, datetime.now(UTC) - timedelta(days=45)))
    await send(producer, created(young, winner, datetime.now(UTC)))
    await send(producer, created(losers, loser, datetime.now(UTC)))

    async def learned() -> dict[str, int] | None:
        rows = await tables.fetch("SELECT opportunity_id, score, model_version FROM opportunity_scores"
                                  " WHERE opportunity_id = ANY($1::text[])", [old, young, losers])
        return {r["opportunity_id"]: r["score"] for r in rows} if len(rows) == 3 and all(
            r["model_version"] == model["version"] for r in rows) else None

    await eventually(learned, timeout=30)
    await rescore(http, settings)  # the old deal's 45 days count as of now
    scores = await current_scores(tables, [old, young, losers])
    assert scores[old] > scores[young] > scores[losers], scores
    factors = (await http.get(f"/v1/opportunities/{losers}/score", headers=as_(settings, "admin-1"))).json()["factors"]
    assert any(f["feature"] == "owner_win_rate" and f["contribution"] < 0 for f in factors), factors
    assert (await http.post("/v1/models/opportunity/rules-v1/activate", headers=as_(settings, "admin-1"))
            ).status_code == 204


async def test_a_deal_scored_after_an_outcome_in_the_same_batch_sees_that_outcome_once(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer, tables: asyncpg.Pool
) -> None:
    """One consumer batch: a deal of a new owner is won, then another deal of theirs is opened."""
    db = Database(tables, "/funnelcast/scoring")
    owner, won, opened = f"rep-{uuid.uuid4()}", f"opp-{uuid.uuid4()}", f"opp-{uuid.uuid4()}"
    batch = [closed(won, owner, True), created_in_bidding(opened, owner, datetime.now(UTC))]
    processor = EventProcessor(db, "funnelcast-scoring", handlers.HANDLERS, DeadLetters(producer, "funnelcast-scoring"))
    messages = [Message(e.topic, 0, i, e.subject.encode(), e.to_bytes(), (CONTENT_TYPE_HEADER,))
                for i, e in enumerate(batch)]
    assert await processor.process_batch(messages) == [Outcome.APPLIED, Outcome.APPLIED]
    tally = await tables.fetchrow("SELECT won, lost FROM owner_win_tallies WHERE owner_id = $1", owner)
    overall = await tables.fetchrow("SELECT sum(won)::int AS won, sum(lost)::int AS lost FROM owner_win_tallies")
    assert (tally["won"], tally["lost"]) == (1, 0)
    moment = json.loads(await tables.fetchval("SELECT open_moment FROM opportunity_scores WHERE opportunity_id = $1",
                                              opened))
    assert moment["owner_win_rate"] == pytest.approx(smoothed_win_rate(1, 0, overall["won"], overall["lost"]))
