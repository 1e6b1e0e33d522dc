"""The event backbone against the real Postgres and broker: outbox, relay, ordering, schemas."""

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from prometheus_client import REGISTRY

from shared.db import Database
from shared.events.envelope import InvalidEvent, parse_and_validate
from shared.outbox import OutboxRelay
from shared.settings import Settings
from tests.support.events import lead_captured, lead_contacted
from tests.support.topics import read_topic
from tests.support.waiting import eventually


async def test_an_event_of_a_rolled_back_transaction_is_never_published(
    db: Database, producer: AIOKafkaProducer, settings: Settings
) -> None:
    kept, discarded = str(uuid.uuid4()), str(uuid.uuid4())
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            tx.publish("sales.lead.captured.v1", discarded, lead_captured(discarded), sequence=1)
            raise RuntimeError("the handler failed after publishing")
    async with db.transaction() as tx:
        tx.publish("sales.lead.captured.v1", kept, lead_captured(kept), sequence=1)

    assert await OutboxRelay(db.pool, producer).publish_batch() == 1
    seen = {r.key.decode() for r in await read_topic(settings, "sales.leads", count=1, match=kept.encode())}
    assert kept in seen
    assert not await read_topic(settings, "sales.leads", count=1, match=discarded.encode(), timeout=2)
    assert await db.pool.fetchval("SELECT count(*) FROM outbox WHERE aggregateid = $1", discarded) == 0


async def test_events_of_one_aggregate_arrive_in_order(
    db: Database, producer: AIOKafkaProducer, settings: Settings
) -> None:
    lead, other = str(uuid.uuid4()), str(uuid.uuid4())

    async def write(aggregate: str, first: int, last: int) -> None:
        for n in range(first, last + 1):
            async with db.transaction() as tx:
                tx.publish("sales.lead.contacted.v1", aggregate, lead_contacted(aggregate, n), sequence=n)

    await asyncio.gather(write(lead, 1, 60), write(other, 1, 60))
    relay = OutboxRelay(db.pool, producer, batch_size=25)  # several batches
    await relay.drain()

    records = await read_topic(settings, "sales.leads", count=60, match=lead.encode())
    sequences = [json.loads(r.value)["sequence"] for r in records]
    assert sequences == list(range(1, 61))
    assert {r.partition for r in records} == {records[0].partition}
    assert all(dict(r.headers)["content-type"] == b"application/cloudevents+json" for r in records)
    assert await relay.backlog() == 0


async def test_published_events_are_valid_cloudevents(
    db: Database, producer: AIOKafkaProducer, settings: Settings
) -> None:
    lead = str(uuid.uuid4())
    counted = {"type": "sales.lead.captured.v1", "topic": "sales.leads"}  # the dashboards' labels
    published_before = REGISTRY.get_sample_value("funnelcast_events_published_total", counted) or 0
    async with db.transaction() as tx:
        sent = tx.publish("sales.lead.captured.v1", lead, lead_captured(lead), sequence=1)
    await OutboxRelay(db.pool, producer).drain()
    assert REGISTRY.get_sample_value("funnelcast_events_published_total", counted) == published_before + 1

    [record] = await read_topic(settings, "sales.leads", count=1, match=lead.encode())
    event = parse_and_validate(record.value)
    body = json.loads(record.value)
    assert event.id == sent.id and event.subject == lead and event.sequence == 1
    assert body["specversion"] == "1.0" and body["source"] == "/funnelcast/leads"
    assert body["datacontenttype"] == "application/json"
    assert body["dataschema"] == "urn:funnelcast:schema:sales.lead.captured.v1"
    assert body["time"].endswith("Z")


async def test_a_schema_invalid_event_is_refused_at_publish_time(db: Database) -> None:
    lead = str(uuid.uuid4())
    bad = lead_captured(lead) | {"grade": "Z"}
    with pytest.raises(InvalidEvent, match="grade"):
        async with db.transaction() as tx:
            tx.publish("sales.lead.captured.v1", lead, bad)
    assert await db.pool.fetchval("SELECT count(*) FROM outbox") == 0


@contextlib.asynccontextmanager
async def leading_relay(db: Database, producer: AIOKafkaProducer) -> AsyncIterator[OutboxRelay]:
    relay = OutboxRelay(db.pool, producer, idle_poll_s=30)  # polling alone would take 30 s
    relay.start()
    try:
        await eventually(lambda: _true(relay.is_leader))
        yield relay
    finally:
        await relay.stop()


async def commit_a_captured_lead_and_read_it(db: Database, settings: Settings) -> list[ConsumerRecord[bytes, bytes]]:
    lead = str(uuid.uuid4())
    async with db.transaction() as tx:
        tx.publish("sales.lead.captured.v1", lead, lead_captured(lead), sequence=1)
    return await read_topic(settings, "sales.leads", count=1, match=lead.encode(), timeout=5)


async def test_the_relay_wakes_on_commit(db: Database, producer: AIOKafkaProducer, settings: Settings) -> None:
    async with leading_relay(db, producer):
        assert await commit_a_captured_lead_and_read_it(db, settings)


async def test_the_leading_relay_reads_the_unpublished_rows_in_index_order(
    db: Database, producer: AIOKafkaProducer, settings: Settings
) -> None:
    # Many published rows and no statistics yet (as in a new database until autovacuum's first analyze):
    # the planner would pick a bitmap scan, which leaves the index entries of the published rows for every
    # later read to visit again.
    await db.pool.execute(
        "INSERT INTO outbox (id, aggregatetype, aggregateid, type, topic, payload)"
        " SELECT gen_random_uuid(), 'lead', 'published', 'sales.lead.contacted.v1', 'sales.leads', '{}'"
        " FROM generate_series(1, 5000)"
    )
    await db.pool.execute("UPDATE outbox SET published_at = now()")
    async with leading_relay(db, producer):
        assert await commit_a_captured_lead_and_read_it(db, settings)

        async def read_by_index_scan() -> bool:
            # Only a plain index scan counts its rows here; a bitmap scan does not.
            fetched = await db.pool.fetchval(
                "SELECT idx_tup_fetch FROM pg_stat_user_indexes WHERE indexrelname = 'outbox_unpublished'"
            )
            return bool(fetched)

        await eventually(read_by_index_scan, timeout=15)


async def test_only_one_relay_is_active_per_database(db: Database, producer: AIOKafkaProducer) -> None:
    first, second = OutboxRelay(db.pool, producer, idle_poll_s=0.1), OutboxRelay(db.pool, producer, idle_poll_s=0.1)
    first.start()
    await eventually(lambda: _true(first.is_leader))
    second.start()
    try:
        await asyncio.sleep(0.5)
        assert not second.is_leader
        await first.stop()
        await eventually(lambda: _true(second.is_leader))
    finally:
        await second.stop()


async def _true(value: bool) -> bool:
    return value


async def test_stopping_the_relay_publishes_what_is_committed(db: Database, producer: AIOKafkaProducer) -> None:
    relay = OutboxRelay(db.pool, producer, batch_size=100, idle_poll_s=30)
    relay.start()
    await eventually(lambda: _true(relay.is_leader))
    lead = str(uuid.uuid4())
    async with db.transaction() as tx:
        for n in range(1, 351):
            tx.publish("sales.lead.contacted.v1", lead, lead_contacted(lead, n), sequence=n)
    await relay.stop(flush_timeout=10)
    assert await relay.backlog() == 0
    assert not relay.is_leader
