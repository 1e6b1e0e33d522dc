import asyncio
import time

from aiokafka import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared import kafka
from shared.settings import Settings


async def create_topic(bootstrap_servers: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def read_topic(
    settings: Settings, topic: str, *, count: int, timeout: float = 20.0, match: bytes | None = None
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read a topic from the beginning (no group) until `count` records (whose key is `match`) arrived."""
    consumer = kafka.consumer(settings, topic, group_id=None)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for partition_records in batch.values():
                records.extend(r for r in partition_records if match is None or r.key == match)
        await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return records
