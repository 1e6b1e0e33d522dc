"""The relay holds events while the broker is down and publishes every one, in order, after."""

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import kafka
from shared.db import Database
from shared.outbox import OutboxRelay
from shared.runtime.broker import TansuBroker
from shared.runtime.postgres import EmbeddedPostgres
from tests.conftest import settings_for
from tests.support.topics import read_topic
from tests.support.waiting import eventually, free_port


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of this test's own: stopping it must not disturb the session's."""
    server = TansuBroker(free_port(), tmp_path / "tansu.log")
    server.start()
    yield server
    server.stop()




def stage_changed(opportunity_id: str, n: int) -> dict[str, object]:
    return {
        "opportunity_id": opportunity_id,
        "from_stage": "prospecting",
        "to_stage": "bidding",
        "probability": 30,
        "amount": f"{1000 + n}.00",
        "currency": "CNY",
        "owner_id": "rep-1",
        "changed_by": "rep-1",
        "changed_at": "2026-11-23T10:00:00Z",
    }


async def test_the_relay_holds_events_while_the_broker_is_down(
    own_broker: TansuBroker, postgres: EmbeddedPostgres, db: Database, tmp_path: Path
) -> None:
    settings = settings_for(postgres, own_broker, tmp_path, kafka_request_timeout_ms=2000)
    await kafka.ensure_topics(settings)
    producer = kafka.producer(settings)
    await producer.start()
    relay = OutboxRelay(db.pool, producer, max_backoff_s=0.5, prepare_broker=lambda: kafka.ensure_topics(settings))
    relay.start()
    opportunity = str(uuid.uuid4())
    try:
        own_broker.stop()
        for n in range(1, 101):
            async with db.transaction() as tx:
                tx.publish("sales.opportunity.stage_changed.v1", opportunity, stage_changed(opportunity, n), sequence=n)
        await eventually(lambda: _is(relay.last_error is not None), timeout=30)
        assert await relay.backlog() == 100

        own_broker.start()  # a new, empty broker: Tansu keeps nothing across a restart
        await eventually(lambda: _is_zero(relay), timeout=60)
    finally:
        await relay.stop()
        await producer.stop()

    records = await read_topic(settings, "sales.opportunities", count=100, match=opportunity.encode())
    sequences = [json.loads(r.value)["sequence"] for r in records]
    # At least once: a batch cut off by the outage may be sent again, never out of order.
    assert sorted(set(sequences)) == list(range(1, 101))
    first_of_each = [s for i, s in enumerate(sequences) if s not in sequences[:i]]
    assert first_of_each == list(range(1, 101))
    assert len({r.partition for r in records}) == 1


async def _is(value: bool) -> bool:
    return value


async def _is_zero(relay: OutboxRelay) -> bool:
    return await relay.backlog() == 0
