"""Backbone benchmark: outbox -> relay -> broker -> consumer, beside the bare broker and database.

Prints, from one run on this machine:
- events/s drained from a filled outbox to the broker by the relay;
- commit-to-consume latency p50/p95/p99 at a steady 1,000 events/s (one event a transaction);
- the bare broker's produce rate and the bare Postgres commit rate, for the ratios.

Run: .venv/bin/python bench/backbone.py [--events 100000] [--rate 1000] [--seconds 10]
"""

import argparse
import asyncio
import json
import multiprocessing
import time
import uuid
from typing import Any

import asyncpg
from aiokafka import TopicPartition

from bench.harness import embedded_stack, percentiles
from shared import kafka
from shared.db import SHARED_MIGRATIONS, Database, migrate
from shared.events.envelope import CloudEvent
from shared.outbox import OutboxRelay
from shared.settings import Settings
from tests.support.waiting import eventually

TOPIC = "sales.leads"
PAYLOAD_BYTES = 500
LATENCY_KEY_PREFIX = b"latency-lead-"


def contacted(lead_id: str, n: int) -> CloudEvent:
    return CloudEvent(
        type="sales.lead.contacted.v1",
        source="/funnelcast/leads",
        subject=lead_id,
        sequence=n,
        data={
            "lead_id": lead_id,
            "touch_id": f"touch-{n}",
            "channel": "phone",
            "contacted_at": "2026-11-23T09:00:00Z",
            "contacted_by": "rep-1",
            "note": "x" * 200,
        },
    )


async def bare_broker_produce_rate(settings: Settings, count: int) -> float:
    """Record batches of 500-byte values straight to one topic: the broker's and client's best."""
    producer = kafka.producer(settings)
    await producer.start()
    value = b"x" * PAYLOAD_BYTES
    try:
        partitions = sorted(await producer.partitions_for(TOPIC))
        started = time.perf_counter()
        acks, batch, sent = [], producer.create_batch(), 0
        while sent < count:
            if batch.append(key=str(sent % 1000).encode(), value=value, timestamp=None) is None:
                acks.append(await producer.send_batch(batch, TOPIC, partition=partitions[len(acks) % len(partitions)]))
                batch = producer.create_batch()
                continue
            sent += 1
        acks.append(await producer.send_batch(batch, TOPIC, partition=partitions[0]))
        await asyncio.gather(*acks)
        return count / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def bare_postgres_commit_rate(url: str, seconds: float) -> float:
    """One-row transactions on one connection, as fast as they commit."""
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE TABLE IF NOT EXISTS bare (id bigserial PRIMARY KEY, body jsonb)")
    body = json.dumps({"note": "x" * PAYLOAD_BYTES})
    count, deadline = 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        async with conn.transaction():
            await conn.execute("INSERT INTO bare (body) VALUES ($1)", body)
        count += 1
    elapsed = time.perf_counter() - started
    await conn.close()
    return count / elapsed


async def fill_outbox(db: Database, count: int) -> None:
    rows = []
    for n in range(count):
        event = contacted(f"lead-{n % 5000}", n)
        rows.append((uuid.UUID(event.id), "lead", event.subject, event.type, event.topic, event.to_json()))
    async with db.pool.acquire() as conn:
        await conn.copy_records_to_table(
            "outbox", records=rows, columns=["id", "aggregatetype", "aggregateid", "type", "topic", "payload"]
        )
        # What autovacuum would do after such a burst (the migration lowers its thresholds).
        await conn.execute("ANALYZE outbox")


async def drain_rate(db: Database, settings: Settings, count: int) -> float:
    await fill_outbox(db, count)
    producer = kafka.producer(settings)
    await producer.start()
    relay = OutboxRelay(db.pool, producer, batch_size=settings.relay_batch_size)
    try:
        started = time.perf_counter()
        await relay.drain()
        elapsed = time.perf_counter() - started
        assert await relay.backlog() == 0
        return count / elapsed
    finally:
        await producer.stop()


async def _leading(relay: OutboxRelay) -> bool:
    return relay.is_leader


def consume_in_own_process(settings: Settings, total: int, ready: Any, results: Any) -> None:
    """The subscriber runs in a process of its own, as a consuming service does."""

    async def consume() -> None:
        consumer = kafka.consumer(settings, group_id=None)
        await consumer.start()
        partitions = [TopicPartition(TOPIC, p) for p in sorted(consumer.partitions_for_topic(TOPIC) or [])]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for partition in partitions:
            await consumer.position(partition)
        ready.set()
        received: dict[str, float] = {}
        deadline = time.time() + 120
        while len(received) < total and time.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            now = time.time()
            for records in batch.values():
                for record in records:
                    if record.key.startswith(LATENCY_KEY_PREFIX):
                        received.setdefault(json.loads(record.value)["id"], now)
        await consumer.stop()
        results.put(received)

    asyncio.run(consume())


async def commit_to_consume(db: Database, settings: Settings, rate: float, seconds: float) -> list[float]:
    total = int(rate * seconds)
    context = multiprocessing.get_context("spawn")
    ready, results = context.Event(), context.Queue()
    subscriber = context.Process(target=consume_in_own_process, args=(settings, total, ready, results))
    subscriber.start()
    await asyncio.get_running_loop().run_in_executor(None, ready.wait, 60)
    producer = kafka.producer(settings)
    await producer.start()
    relay = OutboxRelay(db.pool, producer, idle_poll_s=1.0)
    relay.start()
    await eventually(lambda: _leading(relay))

    committed: dict[str, float] = {}
    started = time.perf_counter()
    for n in range(total):
        # Open loop: each write is due at its own time, whatever the last one took.
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        async with db.transaction() as tx:
            subject = f"{LATENCY_KEY_PREFIX.decode()}{n % 500}"
            event = tx.publish("sales.lead.contacted.v1", subject, contacted(subject, n).data, sequence=n)
        committed[event.id] = time.time()

    received = await asyncio.get_running_loop().run_in_executor(None, results.get, True, 150)
    subscriber.join(10)
    await relay.stop()
    await producer.stop()
    missing = len(committed.keys() - received.keys())
    if missing:
        raise SystemExit(f"{missing} committed events never arrived")
    return [received[event_id] - at for event_id, at in committed.items()]


async def main(args: argparse.Namespace) -> None:
    with embedded_stack() as stack:
        settings = stack.settings
        await kafka.ensure_topics(settings)
        db = await Database.open(stack.postgres.url, "/funnelcast/leads", pool_size=4)
        async with db.pool.acquire() as conn:
            await migrate(conn, SHARED_MIGRATIONS)

        produce_rate = await bare_broker_produce_rate(settings, args.events)
        commit_rate = await bare_postgres_commit_rate(stack.postgres.url, 3.0)
        drained = await drain_rate(db, settings, args.events)
        latencies = await commit_to_consume(db, settings, args.rate, args.seconds)
        await db.close()

    p = percentiles(latencies)
    print(f"outbox drain:            {drained:10,.0f} events/s  ({args.events:,} events; target >= 20,000)")
    print(f"bare broker produce:     {produce_rate:10,.0f} msgs/s    (drain / bare = {drained / produce_rate:.2f})")
    print(f"bare Postgres commits:   {commit_rate:10,.0f} txn/s     (one connection, one row a transaction)")
    print(
        f"commit -> consume at {args.rate:,.0f}/s: p50 {p['p50']:.1f} ms  p95 {p['p95']:.1f} ms  p99 {p['p99']:.1f} ms"
        f"  ({len(latencies):,} events; target p99 <= 30 ms)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    asyncio.run(main(parser.parse_args()))
