"""The outbox relay: publishes committed outbox rows to Kafka, in order, and marks them.

One relay is active per service database (an advisory lock; other instances stand by),
because two relays claiming rows concurrently could reorder one aggregate's events.
It wakes on NOTIFY at commit and polls as a safety net; while the broker is away it
retries the same rows with back-off, so nothing is dropped and nothing is reordered.
Delivery is at least once: a batch that failed part-way is sent again whole, and the
consumers' inboxes make the repeats harmless.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared import metrics
from shared.db import OUTBOX_CHANNEL
from shared.events.envelope import CONTENT_TYPE_HEADER

log = logging.getLogger(__name__)

_RELAY_LOCK = 0x4F5554424F58  # any constant, one per database


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
    ) -> None:
        self.pool = pool
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
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self, flush_timeout: float = 5.0) -> None:
        """Publish what is committed (within the timeout), then stop."""
        if self._task is None:
            return
        if self.is_leader:
            with contextlib.suppress(TimeoutError, asyncpg.PostgresError, OSError, KafkaError):
                await asyncio.wait_for(self.drain(), timeout=flush_timeout)
        self._stopping = True
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

    async def _lead(self, listener: asyncpg.Connection) -> None:
        while not await listener.fetchval("SELECT pg_try_advisory_lock($1)", _RELAY_LOCK):
            self.is_leader = False
            await asyncio.sleep(self.idle_poll_s)  # stand by: another instance relays this database
        self.is_leader = True
        await listener.add_listener(OUTBOX_CHANNEL, self._on_notify)
        try:
            while True:
                published = await self._publish_with_retry()
                if published < self.batch_size:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=self.idle_poll_s)
        finally:
            self.is_leader = False
            with contextlib.suppress(Exception):
                await listener.remove_listener(OUTBOX_CHANNEL, self._on_notify)
                await listener.execute("SELECT pg_advisory_unlock($1)", _RELAY_LOCK)

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
                self.last_error = f"broker: {exc!r}"
                log.warning("outbox relay cannot publish: %r; retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                if self.prepare_broker is not None:
                    with contextlib.suppress(KafkaError, OSError):
                        await self.prepare_broker()

    async def publish_batch(self) -> int:
        """Publish the oldest unpublished rows, in commit order; return how many."""
        rows = await self.pool.fetch(
            "SELECT position, type, topic, aggregateid, payload::text AS payload, created_at FROM outbox"
            " WHERE published_at IS NULL ORDER BY position LIMIT $1",
            self.batch_size,
        )
        if not rows:
            metrics.outbox_backlog.set(0)
            metrics.outbox_oldest_unpublished.set(0)
            return 0
        backlog = len(rows) if len(rows) < self.batch_size else await self.backlog()
        _observe_backlog(backlog, rows[0]["created_at"])
        sends = [
            await self.producer.send(
                r["topic"], key=r["aggregateid"].encode(), value=r["payload"].encode(), headers=[CONTENT_TYPE_HEADER]
            )
            for r in rows
        ]
        await asyncio.gather(*sends)
        # Mark by position, not by range: a lower position may commit after a higher one.
        await self.pool.execute(
            "UPDATE outbox SET published_at = now() WHERE position = ANY($1::bigint[])", [r["position"] for r in rows]
        )
        for r in rows:
            metrics.events_published.labels(r["type"]).inc()
        return len(rows)

    async def drain(self) -> None:
        while await self.publish_batch() == self.batch_size:
            pass

    async def backlog(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"))


def _observe_backlog(backlog: int, oldest: datetime) -> None:
    metrics.outbox_backlog.set(backlog)
    metrics.outbox_oldest_unpublished.set(max(0.0, time.time() - oldest.timestamp()))


async def prune_history(pool: asyncpg.Pool, retention_days: int) -> int:
    """Delete published events older than the retention; the outbox is the replayable history."""
    result = await pool.execute(
        "DELETE FROM outbox WHERE published_at IS NOT NULL AND created_at < now() - make_interval(days => $1)",
        retention_days,
    )
    return int(result.split()[-1])
