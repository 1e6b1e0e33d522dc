"""Put events on the broker: one the way the services do (a transaction's outbox row, then the relay), or
many at once the way any publisher may."""

import asyncio
import uuid
from collections.abc import Sequence

from aiokafka.structs import RecordMetadata

from shared import kafka
from shared.db import SHARED_MIGRATIONS, Database, migrate
from shared.events.envelope import CONTENT_TYPE_HEADER, CloudEvent
from shared.outbox import OutboxRelay
from shared.settings import Settings

CONTRACTS_TOPIC = "sales.contracts"


async def publish_signed_contract(database_url: str, settings: Settings) -> CloudEvent:
    """Publish a `sales.contract.signed.v1` (fresh contract id, amount "880000.00") to sales.contracts.

    The Kafka key is the contract id, which is also the event's `subject`.
    """
    db = await Database.open(database_url, "/funnelcast/opportunities")
    producer = kafka.producer(settings)
    await producer.start()
    contract = f"contract-{uuid.uuid4()}"
    try:
        async with db.pool.acquire() as conn:
            await migrate(conn, SHARED_MIGRATIONS)
        async with db.transaction() as tx:
            sent = tx.publish(
                "sales.contract.signed.v1",
                contract,
                {
                    "contract_id": contract,
                    "opportunity_id": "opp-1",
                    "account_id": "acc-1",
                    "amount": "880000.00",
                    "currency": "CNY",
                    "owner_id": "rep-1",
                    "signed_at": "2026-11-23T06:30:00Z",
                },
                sequence=1,
            )
        await OutboxRelay(db.pool, producer).drain()
    finally:
        await producer.stop()
        await db.close()
    return sent


async def send_events(settings: Settings, events: Sequence[CloudEvent]) -> list[RecordMetadata]:
    """Publish the events to their topics, keyed by subject, in order per subject; once all are stored, where
    each is (its partition and offset)."""
    producer = kafka.producer(settings)
    await producer.start()
    try:
        sent = [await producer.send(e.topic, e.to_bytes(), key=e.subject.encode(), headers=[CONTENT_TYPE_HEADER])
                for e in events]
        return list(await asyncio.gather(*sent))
    finally:
        await producer.stop()
