"""Put one event on the broker the way the services do: a transaction's outbox row, then the relay."""

import uuid

from shared import kafka
from shared.db import SHARED_MIGRATIONS, Database, migrate
from shared.events.envelope import CloudEvent
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
