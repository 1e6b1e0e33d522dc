"""Faust, wired to the runtime: reacting services declare handlers, not plumbing.

`create_stream_app` builds a faust-streaming app from settings; `subscribe` adds an agent
that feeds every record of some topics through an `EventProcessor` (decode, dedupe,
handle, dead-letter). The agent applies the records in batches, each in one transaction
(`EventProcessor.process_batch`): while one batch is applied the next records queue up (at
most FUNNELCAST_CONSUMER_BATCH_MAX), and the next batch is all of them; the stream is
`noack()`, so a record is acked (its offset committable) only once its batch is applied.
The app runs inside the service's uvicorn loop (faust.contrib.asgi.faust_app_running), so
one process serves HTTP and consumes.

Faust 0.15 hard-codes `fetch_max_wait_ms=1500` for its worker consumer. Tansu answers a
fetch only when that wait runs out, so every hop would cost up to 1.5 s (DESIGN.md section 5).
The `funnelcast://` transport below is Faust's aiokafka transport with that one value taken
from FUNNELCAST_KAFKA_FETCH_MAX_WAIT_MS; it is registered through Faust's documented
`faust.transports` entry point (pyproject.toml).

Its consumer also keeps an app started on a new, empty broker (docs/broker-restarts.md) from trusting
committed offsets it did not write: Faust seeks every assigned partition to its committed offset after
each rebalance (table recovery's `perform_seek`) and then drops every record below that position, so
an offset the previous app committed on the new broker (its position in the lost log) would hide the
re-published records below it. Such an app reads a partition from offset 0 until it has committed
there itself, and an app that was replaced (`superseded`) commits nothing more.
"""

import asyncio
import collections
import logging
import time
from collections.abc import Mapping
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from shared import metrics
from shared.inbox import EventProcessor, Message
from shared.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_FETCH_MAX_WAIT_MS = 10


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # AIOKafkaConsumer reads this when start() builds its fetcher (checked by a test).
        consumer._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", DEFAULT_FETCH_MAX_WAIT_MS)
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek to the committed offsets, except where the app does not trust them: there, to offset 0."""
        committed = dict(await super().seek_to_committed())
        trusted = cast(StreamApp, self.app).trusted_offsets
        if trusted is not None:
            for tp in self.assignment() - trusted:
                await self._seek(tp, 0)
                committed[tp] = 0
        return committed

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        app = cast(StreamApp, self.app)
        if app.superseded:
            return False  # its positions belong to a log the broker lost
        if app.agent_failure is not None:
            return False  # it let go of records it never applied (`_apply_in_batches`)
        committed: bool = await super()._commit(offsets)
        if committed and app.trusted_offsets is not None:
            app.trusted_offsets.update(offsets)
        return committed


class Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class StreamApp(faust.App):
    """A Faust app that remembers its fetch wait and whether an agent has crashed."""

    fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS
    # Not `crashed`: mode.Service already owns that name (a bool it acts on).
    agent_failure: str | None = None
    processed_offsets: dict[tuple[str, int], int]
    batch_max: int = 1
    # None: every committed offset is trusted. A set: the partitions whose committed offset this app
    # wrote itself; the others are read from offset 0 (an app started on a new, empty broker).
    trusted_offsets: set[TP] | None = None
    # Replaced by a new app (its broker was replaced by a new, empty one, or it never got its
    # partitions): it must commit nothing more, its positions may belong to a lost log.
    superseded: bool = False

    # Since when (time.monotonic) the app has been waiting for its partitions (started, or revoked in a
    # rebalance); None while it has them.
    waiting_since: float | None = None

    def waiting_for_partitions(self) -> float:
        """Seconds the app has been waiting for its partitions (0 while it has them)."""
        return 0.0 if self.waiting_since is None else time.monotonic() - self.waiting_since


def create_stream_app(service: str, settings: Settings) -> StreamApp:
    servers = ";".join(settings.kafka_bootstrap_servers.split(","))
    datadir = settings.home / "faust" / service
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust makes only the last level
    app = StreamApp(
        f"funnelcast-{service}",
        broker=f"funnelcast://{servers}",
        store="memory://",
        # Tables live in memory, but Faust still creates its data directory: keep it in the state home.
        datadir=str(datadir),
        web_enabled=False,
        autodiscover=False,
        # Topics are created by shared.kafka.ensure_topics with their partition counts.
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        topic_replication_factor=settings.kafka_replication_factor,
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_rebalance_timeout=settings.kafka_rebalance_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_ms / 1000,
        broker_request_timeout=max(settings.kafka_request_timeout_ms, settings.kafka_session_timeout_ms) / 1000,
        broker_commit_interval=1.0,
    )
    app.fetch_max_wait_ms = settings.kafka_fetch_max_wait_ms
    app.processed_offsets = {}
    app.batch_max = max(1, settings.consumer_batch_max)
    app.waiting_since = time.monotonic()

    async def revoked(sender: Any, /, *_: Any, signal: Any, **__: Any) -> None:
        app.waiting_since = time.monotonic()

    async def assigned(sender: Any, /, *_: Any, signal: Any, **__: Any) -> None:
        app.waiting_since = None

    app.on_partitions_revoked.connect(revoked)
    app.on_partitions_assigned.connect(assigned)
    return app


def subscribe(app: StreamApp, processor: EventProcessor, topics: list[str]) -> None:
    """Feed every record of `topics` through the processor, in batches, one agent for them all."""
    channel = app.topic(*topics, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    async def apply_events(stream: Any) -> None:
        try:
            await _apply_in_batches(app, processor, stream.noack())
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("the %s agent crashed", processor.group)
            raise

    app.agent(channel, name=f"{processor.group}.apply_events")(apply_events)


async def _apply_in_batches(app: StreamApp, processor: EventProcessor, stream: Any) -> None:
    """Records flow into a bounded queue while the previous batch is applied; each batch is
    everything queued meanwhile (at most `app.batch_max`), acked only once applied.

    So a lone event is applied at once, and under load the batches grow by themselves."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=app.batch_max)
    # Taken from the stream and not acked yet, in order: queued, or in the batch being applied.
    unacked: collections.deque[Any] = collections.deque()

    async def apply_batches() -> None:
        while True:
            records = [await queue.get()]
            while len(records) < app.batch_max and not queue.empty():
                records.append(queue.get_nowait())
            messages = [
                Message(
                    topic=record.message.topic,
                    partition=record.message.partition,
                    offset=record.message.offset,
                    key=record.message.key,
                    value=record.message.value,
                    headers=_headers(record.message.headers),
                )
                for record in records
            ]
            await processor.process_batch(messages)
            for record, message in zip(records, messages, strict=True):
                await stream.ack(record)
                unacked.popleft()
                app.processed_offsets[(message.topic, message.partition)] = message.offset

    def stopped(task: asyncio.Task[None]) -> None:
        # Reported at once (readiness), not only when the next record finds the queue full.
        if not task.cancelled() and (exc := task.exception()) is not None:
            app.agent_failure = f"{type(exc).__name__}: {exc}"
            log.error("the %s batch applier stopped: %r", processor.group, exc)

    applier = asyncio.create_task(apply_batches(), name=f"{processor.group}.apply_batches")
    applier.add_done_callback(stopped)
    try:
        async for record in stream.events():
            unacked.append(record)
            if not queue.full():
                queue.put_nowait(record)
                continue
            put = asyncio.ensure_future(queue.put(record))
            done, _ = await asyncio.wait({put, applier}, return_when=asyncio.FIRST_COMPLETED)
            if applier in done:  # it can only have failed
                put.cancel()
                applier.result()  # raises what stopped it
                raise RuntimeError("the batch applier stopped")
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        app.agent_failure = app.agent_failure or f"{type(exc).__name__}: {exc}"
        raise
    finally:
        applier.cancel()
        await asyncio.wait({applier})  # whether it was cancelled or had failed: nothing to raise here
        if app.agent_failure is not None:  # this agent or its applier failed
            # Faust waits for every record it handed out to be acked before it gives partitions up or stops,
            # and these never will be: let go of them. The app commits nothing more (`_Consumer._commit`),
            # so they stay uncommitted and are read again by whoever consumes the partitions next.
            for record in unacked:
                await stream.ack(record)


def _headers(headers: Any) -> tuple[tuple[str, bytes], ...]:
    items = headers.items() if isinstance(headers, dict) else (headers or ())
    return tuple((str(k), bytes(v or b"")) for k, v in items)


def record_consumer_lag(app: StreamApp, group: str) -> None:
    """Set funnelcast_consumer_lag from each assigned partition's high-water mark."""
    consumer = app.consumer
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        processed = app.processed_offsets.get((tp.topic, tp.partition))
        if processed is None:
            continue  # nothing consumed here yet: the committed position is the broker's to tell
        behind = highwater - (processed + 1)
        metrics.consumer_lag.labels(tp.topic, str(tp.partition), group).set(max(0, behind))
