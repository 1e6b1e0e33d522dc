"""The outbox relay: publishes committed outbox rows to Kafka, in order, and marks them.

One relay is active per service database (an advisory lock; other instances stand by),
because two relays claiming rows concurrently could reorder one aggregate's events.
It wakes on NOTIFY at commit and polls as a safety net; while the broker is away it
retries the same rows with back-off, so nothing is dropped and nothing is reordered.
Delivery is at least once: a batch that failed part-way is sent again whole, and the
consumers' inboxes make the repeats harmless.

A broker that restarts empty (the embedded Tansu keeps everything in memory) loses what was
published and not yet consumed. With a `BrokerWatch` the relay guards against it
(docs/broker-restarts.md):
- It knows the broker by its cluster id (a new one for each start of the embedded broker; Apache
  Kafka keeps its id across restarts) and asks again before a batch whenever its producer's
  connections changed (a restart closes them), and after every failed send.
- It keeps a checkpoint per topic in `outbox_checkpoints`: the broker, and `from_position`, the
  lowest outbox position of the batches not yet consumed by every group that consumes the topic
  (`Topic.consumers` in shared/topology.py, and any other group with offsets committed on it). It
  learns that from the acks (partition and offset of each batch, kept in memory) and the groups'
  committed offsets, read every few seconds.
- On a broker with another id it marks the topic's events from `from_position` on as unpublished,
  in the transaction that records the new broker, so the ordinary loop publishes them again, in
  order, before anything newer. On Apache Kafka the id never changes: nothing is re-published.
Consumers on a new broker start over from offset 0 (shared/broker_watch.py); their inboxes skip
what they had applied. A group outside the system is waited for once it has committed offsets on
the topic; before that, the replay API serves it.
"""

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from shared import metrics
from shared.broker_watch import BrokerWatch
from shared.db import OUTBOX_CHANNEL, Connection
from shared.events.envelope import CONTENT_TYPE_HEADER
from shared.topology import TOPICS

log = logging.getLogger(__name__)

_RELAY_LOCK = 0x4F5554424F58  # any constant, one per database
# Murmur2, as Apache Kafka's clients and Debezium partition keys: one aggregate, one partition.
_partitioner = DefaultPartitioner()
_NOTHING_MARKING = (0, 0)  # positions start at 1
CHECKPOINT_INTERVAL_S = 2.0
_MAX_SENT_BATCHES = 10_000  # per topic; older ones merge while consumers lag


@dataclass
class SentBatch:
    """What one relay batch sent to one topic: its positions and, per partition, its last offset."""

    min_position: int
    max_position: int
    last_offsets: dict[int, int] = field(default_factory=dict)

    def consumed_by(self, committed: dict[int, int]) -> bool:
        return all(committed.get(p, -1) > last for p, last in self.last_offsets.items())


def checkpoint_position(sent: "collections.deque[SentBatch]", committed: list[dict[int, int]],
                        next_position: int) -> int:
    """Drop the batches every group has consumed (oldest first) and return the position to
    re-publish from: the lowest of the batches left, else `next_position`. A lower position
    may be published after a higher one (it committed late), hence the minimum."""
    while sent and all(sent[0].consumed_by(group) for group in committed):
        sent.popleft()
    return min((batch.min_position for batch in sent), default=next_position)


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        producer: AIOKafkaProducer,
        *,
        batch_size: int = 1000,
        idle_poll_s: float = 1.0,
        max_backoff_s: float = 5.0,
        prepare_broker: Callable[[], Awaitable[None]] | None = None,
        watch: BrokerWatch | None = None,
    ) -> None:
        self.pool = pool
        # Without a watch the relay trusts the broker to keep what it acked (Apache Kafka).
        self.watch = watch
        self.broker_id: str | None = None  # the cluster id of the broker published to
        self.republished = 0  # events published again because a broker lost them
        # The producer's connections when the broker was last identified. The objects, not their id()s:
        # held here they stay alive, so a new connection cannot reuse a closed one's id and pass for it.
        self._checked_connections: frozenset[object] = frozenset()
        self._sent: dict[str, collections.deque[SentBatch]] = {}
        self._next_position: dict[str, int] = {}  # per topic: one past the highest position sent
        # Run before retrying a failed batch: a restarted broker may have lost its topics,
        # and Tansu would auto-create them on produce with one partition, breaking key order.
        self.prepare_broker = prepare_broker
        self.producer = producer
        self.batch_size = batch_size
        self.idle_poll_s = idle_poll_s
        self.max_backoff_s = max_backoff_s
        self.is_leader = False
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._partition_cache: dict[str, list[int]] = {}
        self._marking: asyncio.Task[None] | None = None
        self._marking_range = _NOTHING_MARKING
        self._backlog_counted_at = 0.0
        self._session: Connection | None = None
        # While leading, the relay reads its batches on a connection of its own: taken from the pool
        # for each batch, the read queued behind the request handlers' transactions (in the leads
        # service at 200 captures/s, 1.1-1.7 s of waiting for a connection, most of the events' lag).
        self._reader: Connection | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self, flush_timeout: float = 5.0) -> None:
        """Let the relay publish what is committed (within the timeout), then stop it. Rows it had no
        time for stay unpublished: the next relay of this database publishes them."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=flush_timeout)
        except TimeoutError:
            log.warning("stopping: the outbox relay's flush was cut short after %.1f s; the rows not yet"
                        " published wait for the next relay", flush_timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                async with self.pool.acquire() as listener:
                    await self._lead(listener)
                    backoff = 0.1
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.is_leader = False
                self.last_error = f"database: {exc}"
                log.warning("outbox relay lost its database connection: %s; retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            except Exception as exc:  # noqa: BLE001 - the relay must outlive anything; its rows wait for it
                # e.g. asyncpg's InternalClientError ("cannot switch to state ...; another operation is in
                # progress") when Postgres restarts while a mark runs on the session: it used to end the relay.
                self.is_leader = False
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("outbox relay failed; restarting it in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    async def _lead(self, listener: Connection) -> None:
        while not await listener.fetchval("SELECT pg_try_advisory_lock($1)", _RELAY_LOCK):
            self.is_leader = False
            if self._stopping:
                return
            await asyncio.sleep(self.idle_poll_s)  # stand by: another instance relays this database
        self.is_leader = True
        self._session = listener
        # Only the relay's own statements run on this session: its marks. Losing a mark in a
        # crash only means publishing those events again, which the consumers' inboxes
        # absorb, so marks need not wait for their WAL flush.
        await listener.execute("SET synchronous_commit = off")
        await listener.add_listener(OUTBOX_CHANNEL, self._on_notify)
        checkpoints = asyncio.create_task(self._checkpoint_loop(), name="outbox-checkpoints")
        try:
            async with self.pool.acquire() as reader:
                # The oldest-unpublished read must walk the partial index in order: a plain index scan
                # marks the entries of published rows dead as it passes them. The planner, which
                # expects a row or two, picked a bitmap scan, which marks nothing: every read then
                # visited each row published since the last vacuum (5.5 ms a read in the scoring
                # service at 500 captures/s, a third of Postgres's time). The pool resets it on release.
                await reader.execute("SET enable_bitmapscan = off")
                self._reader = reader
                await self._publish_while_leading()
        finally:
            self._reader = None
            checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await checkpoints
            self.is_leader = False
            self._session = None
            with contextlib.suppress(Exception):
                await listener.remove_listener(OUTBOX_CHANNEL, self._on_notify)
                await listener.execute("SELECT pg_advisory_unlock($1)", _RELAY_LOCK)

    async def _publish_while_leading(self) -> None:
        while True:
            # Cleared before reading, so a commit notified mid-batch is not missed.
            self._wake.clear()
            published = await self._publish_with_retry()
            if published < self.batch_size and self._stopping:  # flushed: everything committed so far is out
                await self._finish_marking()
                return
            if not published:
                # Waiting for a NOTIFY only when there was nothing: while events flow, the next read
                # follows at once (at 400 events/s the wake-up came 28 ms after a batch at p50, up to
                # 0.6 s under load, though commits never stopped).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.idle_poll_s)

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    async def _publish_with_retry(self) -> int:
        backoff = 0.1
        while True:
            try:
                published = await self.publish_batch()
                self.last_error = None
                return published
            except KafkaError as exc:
                metrics.relay_failures.inc()
                self._partition_cache.clear()  # a restarted broker may have re-created topics
                self._checked_connections = frozenset()  # and may be another one: ask before the next batch
                self.last_error = f"broker: {exc!r}"
                log.warning("outbox relay cannot publish: %r; retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                if self.prepare_broker is not None:
                    with contextlib.suppress(KafkaError, OSError):
                        await self.prepare_broker()

    async def publish_batch(self) -> int:
        """Publish the oldest unpublished rows, in commit order; return how many."""
        await self._check_broker()
        rows = await (self._reader or self.pool).fetch(
            "SELECT position, type, topic, aggregateid, payload, created_at FROM outbox"
            " WHERE published_at IS NULL AND position NOT BETWEEN $2 AND $3 ORDER BY position LIMIT $1",
            self.batch_size,
            *self._marking_range,
        )
        if not rows:
            await self._finish_marking()
            metrics.outbox_backlog.set(0)
            metrics.outbox_oldest_unpublished.set(0)
            return 0
        await self._observe_backlog(len(rows), rows[0]["created_at"])
        await self._send(rows, record=self.watch is not None)
        # Marking overlaps the next batch's read and send, which skips this batch's range.
        # A row of another aggregate that commits late inside the range waits one batch.
        await self._finish_marking()
        positions = [r["position"] for r in rows]
        self._marking_range = (positions[0], positions[-1])
        self._marking = asyncio.create_task(self._mark_published(positions))
        for (type_, topic), count in collections.Counter((r["type"], r["topic"]) for r in rows).items():
            metrics.events_published.labels(type_, topic).inc(count)
        return len(rows)

    async def _observe_backlog(self, batch_rows: int, oldest: datetime) -> None:
        metrics.outbox_oldest_unpublished.set(max(0.0, time.time() - oldest.timestamp()))
        if batch_rows < self.batch_size:
            metrics.outbox_backlog.set(batch_rows)
        elif time.monotonic() - self._backlog_counted_at > 1.0:
            # A full batch means more wait; counting them all is costly, so at most once a second.
            self._backlog_counted_at = time.monotonic()
            metrics.outbox_backlog.set(await self.backlog())

    async def _finish_marking(self) -> None:
        if self._marking is not None:
            marking, self._marking = self._marking, None
            try:
                await marking
            finally:
                self._marking_range = _NOTHING_MARKING

    async def _mark_published(self, positions: list[int]) -> None:
        # By position, not by range: a lower position may commit after a higher one.
        sql = "UPDATE outbox SET published_at = now() WHERE position = ANY($1::bigint[])"
        if self._session is not None and self.is_leader:
            await self._session.execute(sql, positions)
        else:  # drain() called directly, outside the leading loop
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SET LOCAL synchronous_commit = off")
                await conn.execute(sql, positions)

    async def _send(self, rows: list[asyncpg.Record], to_topic: str | None = None, record: bool = False) -> None:
        """Send rows as record batches per partition (far cheaper than a send() per row),
        keyed by aggregate id with Kafka's default partitioner, and wait for every ack.
        With `record`, remember where each topic's rows landed (for the checkpoints)."""
        batches: dict[tuple[str, int], BatchBuilder] = {}
        counts: dict[tuple[str, int], int] = collections.Counter()
        acks: list[asyncio.Future[Any]] = []
        sent_to: list[tuple[str, int, int]] = []  # topic, partition, records, per ack
        for row in rows:
            topic, key = to_topic or row["topic"], row["aggregateid"].encode()
            partition = _partitioner(key, await self._partitions(topic), [])
            batch = batches.get((topic, partition))
            if batch is None:
                batch = batches[(topic, partition)] = self.producer.create_batch()
            value = row["payload"].encode()
            if batch.append(key=key, value=value, timestamp=None, headers=[CONTENT_TYPE_HEADER]) is None:
                acks.append(await self.producer.send_batch(batch, topic, partition=partition))
                sent_to.append((topic, partition, counts.pop((topic, partition))))
                batch = batches[(topic, partition)] = self.producer.create_batch()
                batch.append(key=key, value=value, timestamp=None, headers=[CONTENT_TYPE_HEADER])
            counts[(topic, partition)] += 1
        for (topic, partition), batch in batches.items():
            acks.append(await self.producer.send_batch(batch, topic, partition=partition))
            sent_to.append((topic, partition, counts[(topic, partition)]))
        metadata = await asyncio.gather(*acks)
        if record:
            await self._record_sent(rows, sent_to, metadata)

    async def _record_sent(
        self, rows: list[asyncpg.Record], sent_to: list[tuple[str, int, int]], metadata: list[Any]
    ) -> None:
        batches: dict[str, SentBatch] = {}
        for row in rows:
            batch = batches.get(row["topic"])
            if batch is None:
                batches[row["topic"]] = SentBatch(row["position"], row["position"])
            else:
                batch.min_position = min(batch.min_position, row["position"])
                batch.max_position = max(batch.max_position, row["position"])
        for (topic, partition, count), ack in zip(sent_to, metadata, strict=True):
            last = batches[topic].last_offsets
            last[partition] = max(last.get(partition, -1), ack.offset + count - 1)
        new_topics = [topic for topic in batches if topic not in self._next_position]
        if new_topics and self.broker_id is not None:
            # The first batch to this topic on this broker: the checkpoint starts at it.
            await self.pool.executemany(
                "INSERT INTO outbox_checkpoints (topic, broker, from_position) VALUES ($1, $2, $3)"
                " ON CONFLICT (topic) DO NOTHING",
                [(topic, self.broker_id, batches[topic].min_position) for topic in new_topics],
            )
        for topic, batch in batches.items():
            sent = self._sent.setdefault(topic, collections.deque())
            sent.append(batch)
            if len(sent) > _MAX_SENT_BATCHES:  # consumers far behind: merge the two oldest
                first, second = sent.popleft(), sent.popleft()
                merged = {p: max(first.last_offsets.get(p, -1), o) for p, o in second.last_offsets.items()}
                sent.appendleft(SentBatch(min(first.min_position, second.min_position), second.max_position,
                                          {**first.last_offsets, **merged}))
            self._next_position[topic] = max(self._next_position.get(topic, 0), batch.max_position + 1)

    # --- a broker that lost what it had -----------------------------------------------------------

    def _producer_connections(self) -> frozenset[object]:
        # aiokafka keeps its broker connections in client._conns; a restarted broker closes them.
        conns = getattr(self.producer.client, "_conns", {})
        return frozenset(conn for conn in conns.values() if conn.connected())

    async def _check_broker(self) -> None:
        """Before a batch: if the producer's connections changed since the broker was last
        identified (a restart closes them), ask its cluster id again and act on a new one."""
        if self.watch is None:
            return
        connections = self._producer_connections()
        if self.broker_id is not None and connections and connections == self._checked_connections:
            return
        identity = await self.watch.identity()  # KafkaError/OSError: the batch is retried
        if identity != self.broker_id:
            await self._adopt_broker(identity)
        self._checked_connections = connections

    async def _adopt_broker(self, identity: str) -> None:
        """Make `identity` the broker published to; re-publish what a lost broker may not have
        delivered: for each topic checkpointed on another broker, its events from the checkpoint."""
        await self._finish_marking()
        async with self.pool.acquire() as conn, conn.transaction():
            stale = await conn.fetch(
                "SELECT topic, broker, from_position FROM outbox_checkpoints WHERE broker <> $1 FOR UPDATE", identity
            )
            again = 0
            for checkpoint in stale:
                status = await conn.execute(
                    "UPDATE outbox SET published_at = NULL"
                    " WHERE topic = $1 AND position >= $2 AND published_at IS NOT NULL",
                    checkpoint["topic"],
                    checkpoint["from_position"],
                )
                again += int(status.split()[-1])
            await conn.execute(
                "UPDATE outbox_checkpoints SET broker = $1, updated_at = now() WHERE broker <> $1", identity
            )
        previous, self.broker_id = self.broker_id, identity
        self._sent.clear()
        self._next_position.clear()
        self._partition_cache.clear()
        if previous is not None:
            if self.prepare_broker is not None:  # an empty broker: create the topics first
                await self.prepare_broker()
            # The producer's metadata still describes the old broker's partitions; Tansu accepts records
            # for a partition its (auto-created, fewer-partition) topic does not have, and no consumer
            # is assigned it: events published there were lost (seen by bench/chaos.py).
            await self.producer.client.force_metadata_update()
        if stale:
            self.republished += again
            metrics.outbox_republished.inc(again)
            log.warning(
                "the broker is a new one (cluster id %s, was %s): publishing %d event(s) of %s again",
                identity, previous or ", ".join(sorted({c["broker"] for c in stale})), again,
                ", ".join(c["topic"] for c in stale),
            )

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_S)
            try:
                await self.checkpoint()
            except (KafkaError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.debug("outbox checkpoint skipped: %r", exc)

    async def checkpoint(self) -> None:
        """Move each topic's checkpoint past the batches every consuming group has committed."""
        broker, watch = self.broker_id, self.watch
        if watch is None or broker is None or not await self._still_talking_to(watch, broker):
            return
        listed = await watch.groups()
        for topic, sent in list(self._sent.items()):
            partitions = sorted({p for batch in sent for p in batch.last_offsets})
            declared = TOPICS[topic].consumer_groups if topic in TOPICS else []
            committed = [await watch.committed(group, topic, partitions) for group in declared] if sent else []
            for group in (g for g in listed if sent and g not in declared):
                offsets = await watch.committed(group, topic, partitions)
                if any(offset >= 0 for offset in offsets.values()):  # it consumes the topic too
                    committed.append(offsets)
            if self.broker_id != broker or not await self._still_talking_to(watch, broker):
                return  # another broker meanwhile: its offsets say nothing of these batches
            position = checkpoint_position(sent, committed, self._next_position[topic])
            await self.pool.execute(
                "UPDATE outbox_checkpoints SET from_position = $3, updated_at = now()"
                " WHERE topic = $1 AND broker = $2 AND from_position <> $3",
                topic, broker, position,
            )

    async def _still_talking_to(self, watch: BrokerWatch, broker: str) -> bool:
        """Whether the watch still reaches `broker`. Asked before and after reading committed offsets:
        a new broker's offsets, compared with the old one's acks, would pass batches it never had as
        consumed, and the checkpoint would skip them (docs/broker-restarts.md). Another broker makes the
        relay identify it before its next batch."""
        if await watch.identity() == broker:
            return True
        self._checked_connections = frozenset()
        self._wake.set()
        return False

    async def _partitions(self, topic: str) -> list[int]:
        partitions = self._partition_cache.get(topic)
        if partitions is None:
            partitions = sorted(await self.producer.partitions_for(topic))
            self._partition_cache[topic] = partitions
        return partitions

    async def replay(
        self,
        since: datetime,
        until: datetime | None = None,
        event_types: Sequence[str] | None = None,
        to_topic: str | None = None,
        on_progress: Callable[[int], Awaitable[None]] | None = None,
    ) -> int:
        """Publish the history of [since, until) again, in commit order, to each event's own
        topic or to `to_topic`; return how many events. The events are the same (same ids),
        so consumers that saw them already skip them and a new subscriber gets the history."""
        sent, after = 0, 0
        while True:
            rows = await self.pool.fetch(
                "SELECT position, topic, aggregateid, payload FROM outbox"
                " WHERE position > $1 AND created_at >= $2 AND ($3::timestamptz IS NULL OR created_at < $3)"
                " AND ($4::text[] IS NULL OR type = ANY($4)) AND published_at IS NOT NULL"
                " ORDER BY position LIMIT $5",
                after,
                since,
                until,
                list(event_types) if event_types else None,
                self.batch_size,
            )
            if not rows:
                return sent
            await self._send(rows, to_topic)
            sent += len(rows)
            after = rows[-1]["position"]
            if on_progress is not None:
                await on_progress(sent)

    async def drain(self) -> None:
        while await self.publish_batch() == self.batch_size:
            pass
        await self._finish_marking()

    async def backlog(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))




async def prune_history(pool: asyncpg.Pool, retention_days: int) -> int:
    """Delete published events older than the retention; the outbox is the replayable history."""
    result = await pool.execute(
        "DELETE FROM outbox WHERE published_at IS NOT NULL AND created_at < now() - make_interval(days => $1)",
        retention_days,
    )
    return int(result.split()[-1])
