"""A broker that restarts empty: the relay re-publishes from its checkpoint, and only from there.

The events every consuming group has committed are not sent again; the ones published after
them are. A relay that meets the same broker again (a durable broker restarted: same cluster
id) publishes nothing again.
"""

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from shared import kafka
from shared.broker_watch import BrokerWatch
from shared.db import Database
from shared.outbox import OutboxRelay
from shared.runtime.broker import TansuBroker
from shared.runtime.postgres import EmbeddedPostgres
from shared.settings import Settings
from shared.topology import TOPICS
from tests.conftest import settings_for
from tests.support.events import stage_changed
from tests.support.topics import read_topic
from tests.support.waiting import eventually, free_port

TOPIC = "sales.opportunities"


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    server = TansuBroker(free_port(), tmp_path / "tansu.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def own_settings(own_broker: TansuBroker, postgres: EmbeddedPostgres, tmp_path: Path) -> Settings:
    settings = settings_for(postgres, own_broker, tmp_path)
    await kafka.ensure_topics(settings)
    return settings


async def publish(db: Database, opportunity: str, numbers: range) -> None:
    for n in numbers:
        async with db.transaction() as tx:
            tx.publish("sales.opportunity.stage_changed.v1", opportunity, stage_changed(opportunity, n), sequence=n)


async def consume_and_commit(settings: Settings, group: str, wanted: int, match: bytes) -> None:
    """Consume TOPIC as `group` until `wanted` records keyed `match` arrived, commit, leave."""
    consumer = kafka.consumer(settings, TOPIC, group_id=group)
    await consumer.start()
    try:
        seen = 0
        while seen < wanted:
            batch = await consumer.getmany(timeout_ms=200)
            seen += sum(1 for records in batch.values() for r in records if r.key == match)
        await consumer.commit()
    finally:
        await consumer.stop()


def relay_for(db: Database, settings: Settings, producer: object, watch: BrokerWatch) -> OutboxRelay:
    return OutboxRelay(
        db.pool, producer,  # type: ignore[arg-type]
        max_backoff_s=0.3, prepare_broker=lambda: kafka.ensure_topics(settings), watch=watch,
    )


async def sequences_on_topic(settings: Settings, opportunity: str, count: int) -> list[int]:
    records = await read_topic(settings, TOPIC, count=count, match=opportunity.encode(), timeout=5)
    return [json.loads(r.value)["sequence"] for r in records]


async def test_a_new_broker_gets_again_what_was_not_consumed_and_only_that(
    own_broker: TansuBroker, own_settings: Settings, db: Database
) -> None:
    settings = own_settings
    producer = kafka.producer(settings)
    await producer.start()
    watch = BrokerWatch(settings.kafka_bootstrap_servers, 2000)
    relay = relay_for(db, settings, producer, watch)
    relay.start()
    opportunity = str(uuid.uuid4())
    try:
        await publish(db, opportunity, range(1, 51))
        await eventually(lambda: _backlog_is(relay, 0), timeout=30)
        # every group that consumes the topic has consumed and committed the first 50
        await asyncio.gather(*(
            consume_and_commit(settings, group, 50, opportunity.encode()) for group in TOPICS[TOPIC].consumer_groups
        ))
        await relay.checkpoint()
        last = await db.pool.fetchval("SELECT max(position) FROM outbox")
        assert await db.pool.fetchval(
            "SELECT from_position FROM outbox_checkpoints WHERE topic = $1", TOPIC
        ) == last + 1

        await publish(db, opportunity, range(51, 81))  # published, never consumed
        await eventually(lambda: _backlog_is(relay, 0), timeout=30)
        await relay.checkpoint()  # the consumers are gone: the checkpoint stays before event 51

        own_broker.kill()
        own_broker.start()  # new and empty, with a cluster id of its own
        await eventually(lambda: _is(relay.republished == 30), timeout=60)
        await eventually(lambda: _backlog_is(relay, 0), timeout=30)
        assert relay.broker_id == own_broker.cluster_id
    finally:
        await relay.stop()
        await producer.stop()
        await watch.close()

    assert sorted(await sequences_on_topic(settings, opportunity, 30)) == list(range(51, 81))


async def test_the_same_broker_again_means_nothing_is_published_again(
    own_broker: TansuBroker, own_settings: Settings, db: Database
) -> None:
    """As a durable broker (Apache Kafka) restarted: same cluster id, same log, nothing re-sent."""
    settings = own_settings
    producer = kafka.producer(settings)
    await producer.start()
    watch = BrokerWatch(settings.kafka_bootstrap_servers, 2000)
    opportunity = str(uuid.uuid4())
    try:
        await run_relay_once(db, settings, producer, watch, opportunity, range(1, 21))  # nobody consumes them
        # a service restarted, the broker kept
        second = await run_relay_once(db, settings, producer, watch, opportunity, range(21, 26))
        assert second.broker_id == own_broker.cluster_id
        assert second.republished == 0
    finally:
        await producer.stop()
        await watch.close()

    assert await sequences_on_topic(settings, opportunity, 25) == list(range(1, 26))


async def test_offsets_committed_on_a_new_broker_do_not_move_the_old_brokers_checkpoint(
    own_broker: TansuBroker, own_settings: Settings, db: Database
) -> None:
    """The checkpoint runs on its own timer: it may read the groups' offsets after the broker restarted and
    before the relay has noticed. Offsets on the new log, compared with the acks of the old one, must not pass
    the old log's unconsumed events as consumed, or the relay would not publish them again."""
    settings = own_settings
    producer = kafka.producer(settings)
    await producer.start()
    watch = BrokerWatch(settings.kafka_bootstrap_servers, 2000)
    relay = relay_for(db, settings, producer, watch)
    opportunity = str(uuid.uuid4())
    try:
        await publish(db, opportunity, range(1, 31))
        await relay.drain()  # on the first broker, consumed by no one

        own_broker.kill()
        own_broker.start()
        await kafka.ensure_topics(settings)
        partitions = await producer.partitions_for(TOPIC)
        await asyncio.gather(*(
            commit_offsets(settings, group, {p: 1_000 for p in partitions}) for group in TOPICS[TOPIC].consumer_groups
        ))  # each group far along the new log, as after consuming newer events there
        await eventually(lambda: _checkpointed(relay), timeout=30)

        await relay.drain()  # identifies the new broker
        assert relay.broker_id == own_broker.cluster_id
        assert relay.republished == 30
    finally:
        await producer.stop()
        await watch.close()

    assert sorted(await sequences_on_topic(settings, opportunity, 30)) == list(range(1, 31))


async def commit_offsets(settings: Settings, group: str, offsets: dict[int, int]) -> None:
    consumer = kafka.consumer(settings, group_id=group)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(TOPIC, p) for p in offsets])
        await consumer.commit({TopicPartition(TOPIC, p): offset for p, offset in offsets.items()})
    finally:
        await consumer.stop()


async def _checkpointed(relay: OutboxRelay) -> bool:
    """One checkpoint run; False while the watch is still finding the broker after its restart."""
    try:
        await relay.checkpoint()
    except KafkaError:
        return False
    return True


async def run_relay_once(
    db: Database, settings: Settings, producer: object, watch: BrokerWatch, opportunity: str, numbers: range
) -> OutboxRelay:
    """A relay's life: start, publish `numbers`, see them out, stop."""
    relay = relay_for(db, settings, producer, watch)
    relay.start()
    await publish(db, opportunity, numbers)
    await eventually(lambda: _backlog_is(relay, 0), timeout=30)
    await relay.stop()
    return relay


async def _is(value: bool) -> bool:
    return value


async def _backlog_is(relay: OutboxRelay, count: int) -> bool:
    return await relay.backlog() == count
