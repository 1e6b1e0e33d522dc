"""Batched consumption (EventProcessor.process_batch and the Faust agent's take_events): one
transaction a batch, still applied once per event id, in order per key, poison dead-lettered alone."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from aiokafka import AIOKafkaProducer

from shared.db import Database, Transaction
from shared.events.envelope import CONTENT_TYPE_HEADER, CloudEvent
from shared.inbox import DeadLetters, EventProcessor, Message, Outcome
from shared.settings import Settings
from shared.streaming import StreamApp, create_stream_app, subscribe
from tests.support.topics import create_topic, read_topic
from tests.support.waiting import eventually

TRAIL_TABLE = "CREATE TABLE trail (id bigserial PRIMARY KEY, lead_id text NOT NULL, touch int NOT NULL, txid bigint)"


def contacted(lead_id: str, n: int) -> CloudEvent:
    data = {"lead_id": lead_id, "touch_id": f"touch-{uuid.uuid4()}", "channel": "phone",
            "contacted_at": "2026-11-23T08:00:00Z", "contacted_by": "rep-1", "touch_number": n}
    return CloudEvent(type="sales.lead.contacted.v1", source="/funnelcast/leads", subject=lead_id, data=data,
                      sequence=n)


def as_message(event: CloudEvent, offset: int) -> Message:
    return Message("sales.leads", 0, offset, event.subject.encode(), event.to_bytes(), (CONTENT_TYPE_HEADER,))


async def record_touch(tx: Transaction, event: CloudEvent) -> None:
    if event.data["touch_number"] == 13:
        raise ValueError("unlucky touch")
    await tx.conn.execute("INSERT INTO trail (lead_id, touch, txid) VALUES ($1, $2, txid_current())",
                          event.subject, event.data["touch_number"])


@pytest.fixture(autouse=True)
async def trail_table(db: Database) -> None:
    await db.pool.execute(TRAIL_TABLE)


async def trail(db: Database, lead_id: str) -> list[tuple[int, int]]:
    rows = await db.pool.fetch("SELECT touch, txid FROM trail WHERE lead_id = $1 ORDER BY id", lead_id)
    return [(r["touch"], r["txid"]) for r in rows]


def processor_for(db: Database, producer: AIOKafkaProducer, group: str) -> EventProcessor:
    return EventProcessor(db, group, {"sales.lead.contacted.v1": record_touch}, DeadLetters(producer, group))


async def test_a_batch_is_one_transaction_applied_once_per_event_in_order(
    db: Database, producer: AIOKafkaProducer
) -> None:
    processor = processor_for(db, producer, f"test-{uuid.uuid4()}")
    lead, other = f"lead-{uuid.uuid4()}", f"lead-{uuid.uuid4()}"
    seen_before = contacted(lead, 1)
    assert await processor.process(as_message(seen_before, 0)) is Outcome.APPLIED
    events = [seen_before, contacted(lead, 2), contacted(other, 1), contacted(lead, 3), contacted(other, 2)]
    messages = [as_message(e, i + 1) for i, e in enumerate(events)]
    messages.insert(3, messages[1])  # redelivered inside the same batch

    outcomes = await processor.process_batch(messages)

    assert outcomes == [Outcome.DUPLICATE, Outcome.APPLIED, Outcome.APPLIED, Outcome.DUPLICATE,
                        Outcome.APPLIED, Outcome.APPLIED]
    lead_trail, other_trail = await trail(db, lead), await trail(db, other)
    assert [touch for touch, _ in lead_trail] == [1, 2, 3]
    assert [touch for touch, _ in other_trail] == [1, 2]
    batch_transactions = {txid for _, txid in lead_trail[1:] + other_trail}
    assert len(batch_transactions) == 1 and lead_trail[0][1] not in batch_transactions
    assert await processor.process_batch(messages) == [Outcome.DUPLICATE] * len(messages)
    assert len(await trail(db, lead)) == 3


async def test_a_poison_event_in_a_batch_is_dead_lettered_and_the_others_applied(
    db: Database, producer: AIOKafkaProducer, settings: Settings
) -> None:
    group = f"test-{uuid.uuid4()}"
    processor = processor_for(db, producer, group)
    lead, poison_lead = f"lead-{uuid.uuid4()}", f"lead-{uuid.uuid4()}"
    poison = contacted(poison_lead, 13)
    events = [contacted(lead, 1), contacted(lead, 2), poison, contacted(lead, 3)]
    undecodable = Message("sales.leads", 0, 99, b"garbage", b"{not json", ())

    outcomes = await processor.process_batch([as_message(e, i) for i, e in enumerate(events)] + [undecodable])

    assert outcomes == [Outcome.APPLIED, Outcome.APPLIED, Outcome.DEAD_LETTERED, Outcome.APPLIED,
                        Outcome.DEAD_LETTERED]
    assert [touch for touch, _ in await trail(db, lead)] == [1, 2, 3]
    [dead] = await read_topic(settings, "sales.leads.dlq", count=1, match=poison_lead.encode())
    assert dict(dead.headers)["dlq-error"] == b"ValueError: unlucky touch"
    assert dict(dead.headers)["dlq-consumer-group"] == group.encode()
    # No inbox row for the poison event: a replay after a fix applies it.
    assert await db.pool.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", poison.id) == 0
    assert await db.pool.fetchval("SELECT count(*) FROM inbox WHERE consumer_group = $1", group) == 3


@pytest.fixture
async def backlog_topic(settings: Settings) -> str:
    """A topic of the test's own. On sales.leads the app would first read every other test's events, and
    their `contacted` events lack a touch number: a batch holding one fails and is applied one at a time,
    which hid the batching (a fresh-clone run: 199 events, 199 transactions)."""
    name = f"test.batches.{uuid.uuid4().hex[:8]}"
    await create_topic(settings.kafka_bootstrap_servers, name, 1)
    return name


@pytest.fixture
async def batching_app(
    db: Database, producer: AIOKafkaProducer, settings: Settings, backlog_topic: str
) -> AsyncIterator[StreamApp]:
    """Not started: the test starts it once its backlog is in the log."""
    app = create_stream_app(f"test-{uuid.uuid4().hex[:8]}", settings.model_copy(update={"consumer_batch_max": 50}))
    subscribe(app, processor_for(db, producer, app.conf.id), [backlog_topic])
    app.finalize()
    yield app
    await app.stop()


async def test_the_agent_applies_a_backlog_in_batches_in_order(
    batching_app: StreamApp, db: Database, producer: AIOKafkaProducer, backlog_topic: str
) -> None:
    assert batching_app.batch_max == 50
    lead = f"lead-{uuid.uuid4()}"
    sent = [contacted(lead, n) for n in range(1, 201) if n != 13]
    for event in sent:
        await producer.send(backlog_topic, event.to_bytes(), key=lead.encode(), headers=[CONTENT_TYPE_HEADER])
    await producer.send_and_wait(backlog_topic, sent[0].to_bytes(), key=lead.encode())  # a redelivery
    # Started on the backlog: consuming while the events were sent, it could keep up with them one at a time.
    await batching_app.start()

    async def all_applied() -> list[tuple[int, int]] | None:
        rows = await trail(db, lead)
        return rows if len(rows) == len(sent) else None

    rows = await eventually(all_applied, timeout=60)
    assert [touch for touch, _ in rows] == [e.data["touch_number"] for e in sent]
    assert len({txid for _, txid in rows}) < len(sent)  # several events shared a transaction
    assert batching_app.agent_failure is None


class FailingApplier(EventProcessor):
    """A failure outside the handlers (which would be dead-lettered): the batch applier itself stops."""

    async def process_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        raise RuntimeError("a bug outside the handlers")


async def test_an_app_whose_applier_failed_stops_and_its_records_are_read_again(
    db: Database, producer: AIOKafkaProducer, settings: Settings, backlog_topic: str
) -> None:
    """Faust waits for every record it handed out to be acked before it stops; those of a failed applier
    never were, and its stop hung. It now lets go of them, commits nothing, and the next app applies them."""
    group = f"test-{uuid.uuid4().hex[:8]}"
    lead = f"lead-{uuid.uuid4()}"
    sent = [contacted(lead, n) for n in range(1, 31) if n != 13]
    for event in sent:
        await producer.send(backlog_topic, event.to_bytes(), key=lead.encode(), headers=[CONTENT_TYPE_HEADER])
    await producer.flush()
    tuned = settings.model_copy(update={"consumer_batch_max": 5})

    failing = create_stream_app(group, tuned)
    working = processor_for(db, producer, failing.conf.id)
    subscribe(failing, FailingApplier(db, working.group, working.handlers, working.dead_letters), [backlog_topic])
    failing.finalize()
    await failing.start()

    async def failed() -> str | None:
        return failing.agent_failure

    assert "a bug outside the handlers" in await eventually(failed, timeout=30)
    stopping = asyncio.ensure_future(failing.stop())
    await asyncio.wait({stopping}, timeout=30)
    assert stopping.done(), "the app whose applier failed did not stop"
    assert await trail(db, lead) == []

    following = create_stream_app(group, tuned)
    subscribe(following, working, [backlog_topic])
    following.finalize()
    await following.start()
    try:
        async def all_applied() -> list[tuple[int, int]] | None:
            rows = await trail(db, lead)
            return rows if len(rows) == len(sent) else None

        rows = await eventually(all_applied, timeout=60)
        assert [touch for touch, _ in rows] == [e.data["touch_number"] for e in sent]
    finally:
        await following.stop()


async def test_handlers_see_the_batch_and_can_write_once_before_commit(
    db: Database, producer: AIOKafkaProducer
) -> None:
    batches_seen: list[int] = []

    async def buffered(tx: Transaction, event: CloudEvent) -> None:
        touches: list[tuple[str, int]] | None = tx.state.get("touches")
        if touches is None:
            touches = tx.state["touches"] = []
            batches_seen.append(len(tx.batch))

            async def write() -> None:
                await tx.conn.executemany("INSERT INTO trail (lead_id, touch, txid) VALUES ($1, $2, txid_current())",
                                          touches)

            tx.before_commit(write)
        touches.append((event.subject, event.data["touch_number"]))

    group = f"test-{uuid.uuid4()}"
    processor = EventProcessor(db, group, {"sales.lead.contacted.v1": buffered}, DeadLetters(producer, group))
    lead = f"lead-{uuid.uuid4()}"
    events = [contacted(lead, n) for n in (1, 2, 3)]
    assert await processor.process(as_message(events[0], 0)) is Outcome.APPLIED
    messages = [as_message(e, i) for i, e in enumerate(events)]

    assert await processor.process_batch(messages) == [Outcome.DUPLICATE, Outcome.APPLIED, Outcome.APPLIED]
    assert batches_seen == [1, 2]  # the batch holds the events applied, not the duplicates
    assert [touch for touch, _ in await trail(db, lead)] == [1, 2, 3]
