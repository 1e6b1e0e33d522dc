"""The outbox is the service's event history: replayable on request, kept for a retention."""

import json
import uuid
from datetime import UTC, datetime, timedelta

from aiokafka import AIOKafkaProducer

from shared.db import Database
from shared.outbox import OutboxRelay, prune_history
from shared.settings import Settings
from tests.support.events import lead_captured, lead_contacted
from tests.support.topics import read_topic


async def test_a_replay_republishes_a_slice_of_history_in_order(
    db: Database, producer: AIOKafkaProducer, settings: Settings
) -> None:
    started = datetime.now(UTC) - timedelta(seconds=1)
    leads = [str(uuid.uuid4()) for _ in range(3)]
    for lead in leads:
        async with db.transaction() as tx:
            tx.publish("sales.lead.captured.v1", lead, lead_captured(lead), sequence=1)
        for n in range(2, 6):
            async with db.transaction() as tx:
                tx.publish("sales.lead.contacted.v1", lead, lead_contacted(lead, n), sequence=n)
    relay = OutboxRelay(db.pool, producer, batch_size=4)  # several replay batches
    await relay.drain()

    target = f"replay-{uuid.uuid4().hex[:8]}"
    progress: list[int] = []

    async def record(count: int) -> None:
        progress.append(count)

    count = await relay.replay(started, event_types=["sales.lead.contacted.v1"], to_topic=target, on_progress=record)

    assert count == 12 and progress[-1] == 12
    records = await read_topic(settings, target, count=12)
    assert len(records) == 12
    for lead in leads:
        mine = [json.loads(r.value) for r in records if r.key == lead.encode()]
        assert [e["sequence"] for e in mine] == [2, 3, 4, 5]
        assert {e["type"] for e in mine} == {"sales.lead.contacted.v1"}
    assert await relay.replay(datetime.now(UTC) + timedelta(hours=1)) == 0


async def test_history_is_pruned_after_the_retention_but_unpublished_events_stay(db: Database) -> None:
    old_published, old_unpublished, recent = (str(uuid.uuid4()) for _ in range(3))
    for lead in (old_published, old_unpublished, recent):
        async with db.transaction() as tx:
            tx.publish("sales.lead.captured.v1", lead, lead_captured(lead), sequence=1)
    await db.pool.execute(
        "UPDATE outbox SET created_at = now() - interval '100 days' WHERE aggregateid = ANY($1)",
        [old_published, old_unpublished],
    )
    await db.pool.execute("UPDATE outbox SET published_at = now() WHERE aggregateid = ANY($1)", [old_published, recent])

    assert await prune_history(db.pool, retention_days=90) == 1
    kept = {r["aggregateid"] for r in await db.pool.fetch("SELECT aggregateid FROM outbox")}
    assert kept == {old_unpublished, recent}
