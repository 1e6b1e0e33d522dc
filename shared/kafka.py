"""Kafka clients configured from settings, so every client the project creates honours them.

The embedded broker (Tansu) answers a fetch only when its fetch wait runs out and joins a
group in about half the session timeout (DESIGN.md section 5), so both come from settings.
"""

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.settings import Settings
from shared.topology import TOPICS


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "acks": "all",
        "enable_idempotence": settings.kafka_idempotence,
        "linger_ms": 0,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        # With one batch in flight per partition (aiokafka's default), retries cannot reorder.
        "max_batch_size": 1_048_576,
    }
    return AIOKafkaProducer(**{**options, **overrides})


def consumer_options(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "rebalance_timeout_ms": settings.kafka_rebalance_timeout_ms,
        "heartbeat_interval_ms": settings.kafka_heartbeat_interval_ms,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
    }


def consumer(settings: Settings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    options = {
        **consumer_options(settings),
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
    }
    return AIOKafkaConsumer(*topics, **{**options, **overrides})


async def ensure_topics(settings: Settings) -> None:
    """Create every topic (and its dead-letter topic) that does not exist yet."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=settings.kafka_request_timeout_ms
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, topic.partitions, settings.kafka_replication_factor)
            for topic in TOPICS.values()
            for name in (topic.name, topic.dead_letters)
            if name not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass  # another instance created them first
    finally:
        await admin.close()
