"""Consuming: idempotent application, dead letters, and a Faust agent on the real broker."""

import json
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from faust.types import TP

from shared import kafka, metrics
from shared.broker_watch import BrokerWatch
from shared.db import Database, Transaction
from shared.events import dead_letter_headers as dlq_header
from shared.events.envelope import CONTENT_TYPE_HEADER, CloudEvent
from shared.inbox import DeadLetters, EventProcessor, Message, Outcome
from shared.settings import Settings
from shared.streaming import StreamApp, create_stream_app, record_consumer_lag, subscribe
from tests.support.topics import read_topic
from tests.support.waiting import eventually

SCORES_TABLE = "CREATE TABLE scores (lead_id text PRIMARY KEY, applied int NOT NULL DEFAULT 0)"


def captured(lead_id: str) -> CloudEvent:
    return CloudEvent(
        type="sales.lead.captured.v1",
        source="/funnelcast/leads",
        subject=lead_id,
        sequence=1,
        data={
            "lead_id": lead_id,
            "source": "phone",
            "grade": "A",
            "owner_id": "rep-2",
            "campaign_id": None,
            "region": "华东",
            "contact": {"name": "李女士", "company": None, "phone": "+8613900000000", "email": None},
            "captured_at": "2026-11-23T08:00:00Z",
        },
    )


async def count_application(tx: Transaction, event: CloudEvent) -> None:
    await tx.conn.execute(
        "INSERT INTO scores (lead_id, applied) VALUES ($1, 1)"
        " ON CONFLICT (lead_id) DO UPDATE SET applied = scores.applied + 1",
        event.subject,
    )


async def fail_on_purpose(tx: Transaction, event: CloudEvent) -> None:
    raise ValueError(f"cannot score {event.subject}")


@pytest.fixture(autouse=True)
async def scores_table(db: Database) -> None:
    await db.pool.execute(SCORES_TABLE)




def as_message(event: CloudEvent, offset: int = 0) -> Message:
    return Message("sales.leads", 0, offset, event.subject.encode(), event.to_bytes(), (CONTENT_TYPE_HEADER,))


async def applied(db: Database, lead_id: str) -> int:
    return int(await db.pool.fetchval("SELECT coalesce(max(applied), 0) FROM scores WHERE lead_id = $1", lead_id))


async def test_a_redelivered_event_is_applied_once(db: Database, producer: AIOKafkaProducer) -> None:
    processor = EventProcessor(
        db, "test-scoring", {"sales.lead.captured.v1": count_application}, DeadLetters(producer, "test-scoring")
    )
    event = captured(str(uuid.uuid4()))
    assert await processor.process(as_message(event, 7)) is Outcome.APPLIED
    assert await processor.process(as_message(event, 7)) is Outcome.DUPLICATE
    assert await processor.process(as_message(event, 8)) is Outcome.DUPLICATE
    assert await applied(db, event.subject) == 1


async def test_a_failing_handler_dead_letters_and_rolls_back(
    db: Database, producer: AIOKafkaProducer, settings: Settings
) -> None:
    group = f"test-{uuid.uuid4()}"
    processor = EventProcessor(db, group, {"sales.lead.captured.v1": fail_on_purpose}, DeadLetters(producer, group))
    event = captured(str(uuid.uuid4()))
    assert await processor.process(as_message(event)) is Outcome.DEAD_LETTERED

    [dead] = await read_topic(settings, "sales.leads.dlq", count=1, match=event.subject.encode())
    headers = dict(dead.headers)
    assert headers["dlq-error"] == f"ValueError: cannot score {event.subject}".encode()
    assert headers["dlq-consumer-group"] == group.encode()
    assert headers["content-type"] == b"application/cloudevents+json"  # original headers kept
    # every header docs/asyncapi.yaml's DeadLetterHeaders lists (tests/unit/test_asyncapi.py), in order
    assert [name for name, _ in dead.headers if name.startswith(dlq_header.PREFIX)] == [
        header.name for header in dlq_header.FAILURE_HEADERS]
    assert json.loads(dead.value)["id"] == event.id
    # The failed attempt left no inbox row, so a replay after a fix applies it.
    assert await db.pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", event.id) == 0


@pytest.fixture
async def stream_app(db: Database, producer: AIOKafkaProducer, settings: Settings) -> AsyncIterator[StreamApp]:
    app = create_stream_app(f"test-{uuid.uuid4().hex[:8]}", settings)
    group = app.conf.id
    processor = EventProcessor(db, group, {"sales.lead.captured.v1": count_application}, DeadLetters(producer, group))
    subscribe(app, processor, ["sales.leads"])
    app.finalize()
    await app.start()
    yield app
    await app.stop()


async def test_a_faust_agent_applies_events_once_and_dead_letters_poison(
    stream_app: StreamApp, db: Database, producer: AIOKafkaProducer, settings: Settings
) -> None:
    good, after_poison = captured(str(uuid.uuid4())), captured(str(uuid.uuid4()))
    poison_key = f"poison-{uuid.uuid4()}".encode()
    await producer.send_and_wait("sales.leads", key=good.subject.encode(), value=good.to_bytes())
    await producer.send_and_wait("sales.leads", key=good.subject.encode(), value=good.to_bytes())  # redelivery
    await producer.send_and_wait("sales.leads", key=poison_key, value=b"{not json")
    await producer.send_and_wait("sales.leads", key=after_poison.subject.encode(), value=after_poison.to_bytes())

    await eventually(lambda: applied(db, after_poison.subject), timeout=30)
    assert await applied(db, good.subject) == 1
    [dead] = await read_topic(settings, "sales.leads.dlq", count=1, match=poison_key)
    assert dead.value == b"{not json"
    assert dict(dead.headers)["dlq-error"].startswith(b"invalid event: not JSON")
    assert stream_app.agent_failure is None

    record_consumer_lag(stream_app, stream_app.conf.id)
    lag = {
        sample.labels["partition"]: sample.value
        for metric in metrics.consumer_lag.collect()
        for sample in metric.samples
        if sample.labels["group"] == stream_app.conf.id and sample.labels["topic"] == "sales.leads"
    }
    assert lag and all(behind >= 0 for behind in lag.values())


async def test_faust_consumers_use_the_configured_fetch_wait(stream_app: StreamApp, settings: Settings) -> None:
    # Faust 0.15 would pass 1500 ms; Tansu holds every fetch that long (DESIGN.md section 5).
    aiokafka_consumer = stream_app.consumer._thread._consumer
    assert aiokafka_consumer is not None
    assert aiokafka_consumer._fetcher._fetch_max_wait_ms == settings.kafka_fetch_max_wait_ms == 10


async def test_an_event_of_a_type_this_version_does_not_know_is_ignored_and_a_bad_one_dead_lettered(
    db: Database, producer: AIOKafkaProducer, settings: Settings
) -> None:
    """A newer producer's type (a rolling upgrade) is not poison for an older consumer: it is ignored, not
    dead-lettered; a known type whose data fails its schema still is."""
    group = f"test-unknown-{uuid.uuid4().hex[:8]}"
    processor = EventProcessor(db, group, {"sales.lead.captured.v1": count_application},
                               DeadLetters(producer, group))
    event = captured(str(uuid.uuid4()))
    body = json.loads(event.to_bytes())
    newer = json.dumps(body | {"id": str(uuid.uuid4()), "type": "sales.lead.teleported.v1"}).encode()
    broken = json.dumps(body | {"id": str(uuid.uuid4()), "data": {"lead_id": 12}}).encode()
    messages = [Message("sales.leads", 0, n, event.subject.encode(), value) for n, value in enumerate((newer, broken))]

    assert [await processor.process(m) for m in messages] == [Outcome.IGNORED, Outcome.DEAD_LETTERED]
    assert await processor.process_batch(messages) == [Outcome.IGNORED, Outcome.DEAD_LETTERED]
    dead = await read_topic(settings, "sales.leads.dlq", count=3, match=event.subject.encode(), timeout=3)
    assert [dict(d.headers)["dlq-consumer-group"] for d in dead] == [group.encode()] * 2  # the broken one, twice
    assert all(b"sales.lead.teleported.v1" not in (d.value or b"") for d in dead)


async def test_an_app_on_a_new_broker_reads_below_offsets_it_did_not_commit(
    db: Database, producer: AIOKafkaProducer, settings: Settings
) -> None:
    """On a new, empty broker the previous app may have committed its positions in the lost log before it
    was stopped; Faust seeks to committed offsets after every rebalance and drops the records below them,
    so the re-published records would never be applied. An app that distrusts them reads from 0."""
    app = create_stream_app(f"test-{uuid.uuid4().hex[:8]}", settings)
    group = app.conf.id
    events = [captured(str(uuid.uuid4())) for _ in range(6)]
    for event in events:
        await producer.send_and_wait("sales.leads", key=event.subject.encode(), value=event.to_bytes())
    previous_app = kafka.consumer(settings, group_id=group)
    await previous_app.start()
    partitions = [TopicPartition("sales.leads", p) for p in range(6)]
    previous_app.assign(partitions)
    await previous_app.commit({tp: OffsetAndMetadata(1_000_000, "") for tp in partitions})  # far beyond the log
    await previous_app.stop()

    processor = EventProcessor(db, group, {"sales.lead.captured.v1": count_application}, DeadLetters(producer, group))
    subscribe(app, processor, ["sales.leads"])
    app.trusted_offsets = set()  # as an app started on a new broker
    app.finalize()
    await app.start()
    try:
        for event in events:
            assert await eventually(lambda e=event: applied(db, e.subject), timeout=30) == 1
        await eventually(lambda: _trusted(app), timeout=30)  # its own commits are trusted from then on
        app.superseded = True  # taken off its broker: what it would commit now belongs to a lost log
        assert await app.consumer._commit({TP("sales.leads", 0): 999}) is False
        watch = BrokerWatch(settings.kafka_bootstrap_servers)
        try:
            assert (await watch.committed(group, "sales.leads", [0]))[0] != 999
        finally:
            await watch.close()
    finally:
        await app.stop()


async def _trusted(app: StreamApp) -> bool:
    return bool(app.trusted_offsets)
