"""Idempotent consumption: every consumed event is applied exactly once, or dead-lettered.

Delivery is at least once. `EventProcessor.process` records the event id in the inbox in the
same transaction as the handler's effect (and the events it publishes), so a redelivered
event changes nothing. A message that cannot be decoded, fails its schema, or makes the
handler fail goes to `<topic>.dlq` with the error and its original headers, and
consumption moves on; an event of a type this version does not know is ignored (a newer
producer's). Database outages are not the message's fault: those are retried
with back-off, holding the partition, so nothing is skipped while Postgres is away.

`EventProcessor.process_batch` applies the records one fetch handed over in ONE transaction
(one commit instead of one per event): the batch's event ids go into the inbox with one
statement, and only those not seen before reach their handlers, in the order given (so each
key's order is kept). When a handler fails, the whole transaction rolls back and the batch is
applied again one event at a time through `process`, which dead-letters the failing event and
applies the others.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared import metrics, tracing
from shared.context import Cause, current_cause, current_event_id
from shared.db import Database, Transaction
from shared.events.catalog import EVENT_TYPES
from shared.events.dead_letter_headers import failure_headers
from shared.events.envelope import CloudEvent, InvalidEvent, parse, validate

log = logging.getLogger(__name__)

Handler = Callable[[Transaction, CloudEvent], Awaitable[None]]

_UNKNOWN_TYPES_SEEN: set[tuple[str, str]] = set()  # (type, consumer group) already logged

# Connection-class errors (08xxx, e.g. ConnectionDoesNotExistError), and asyncpg's InternalClientError ("cannot
# switch to state ...; another operation is in progress") when Postgres goes away mid-statement: the database's
# fault, not the event's, so retried instead of dead-lettered (the fault suite saw valid events dead-lettered).
TRANSIENT_ERRORS = (OSError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError,
                    asyncpg.AdminShutdownError, asyncpg.PostgresConnectionError, asyncpg.SerializationError,
                    asyncpg.DeadlockDetectedError, asyncpg.InternalClientError, TimeoutError)


@dataclass(frozen=True)
class Message:
    """A consumed Kafka record, whatever client delivered it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    DEAD_LETTERED = "dead_lettered"


class DeadLetters:
    """Sends messages that cannot be processed to `<topic>.dlq`, with why."""

    def __init__(self, producer: AIOKafkaProducer, group: str) -> None:
        self.producer = producer
        self.group = group

    async def send(self, message: Message, error: str) -> None:
        headers = [
            *message.headers,
            *failure_headers(error, self.group, message.topic, message.partition, message.offset, datetime.now(UTC)),
        ]
        dlq = f"{message.topic}.dlq"
        # Awaited to the broker's ack, retried while the broker is away: the offset is
        # committed only after the message is safe, and the consumer does not crash.
        backoff = 0.1
        while True:
            try:
                await self.producer.send_and_wait(dlq, key=message.key, value=message.value, headers=headers)
                break
            except KafkaError as exc:
                log.warning("cannot dead-letter to %s yet (%r); retrying in %.1fs", dlq, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        metrics.dead_letters.labels(dlq).inc()
        log.error("dead-lettered %s[%d]@%d to %s: %s", message.topic, message.partition, message.offset, dlq, error)


class EventProcessor:
    def __init__(self, db: Database, group: str, handlers: dict[str, Handler], dead_letters: DeadLetters) -> None:
        self.db = db
        self.group = group
        self.handlers = handlers
        self.dead_letters = dead_letters
        self.max_backoff_s = 5.0

    async def _to_apply(self, message: Message) -> tuple[CloudEvent, Handler] | Outcome:
        """The message's event and its handler; else what became of it: dead-lettered (sent) when it is no
        valid event, ignored when this consumer has no handler for its type.

        A well-formed event of a type the catalogue does not know is ignored, not dead-lettered: it is most
        likely a newer producer's (a rolling upgrade publishes a new type before every consumer knows it),
        and this consumer, which would not handle it, cannot judge its data. Logged once per type."""
        try:
            event = parse(message.value or b"")
            if event.type not in EVENT_TYPES:
                if (event.type, self.group) not in _UNKNOWN_TYPES_SEEN:
                    _UNKNOWN_TYPES_SEEN.add((event.type, self.group))
                    log.warning("%s: ignoring events of type %s, which this version does not know (first: %s)",
                                self.group, event.type, event.id)
                return Outcome.IGNORED
            validate(event)
        except InvalidEvent as exc:
            metrics.events_failed.labels("invalid", self.group).inc()
            await self.dead_letters.send(message, f"invalid event: {exc}")
            return Outcome.DEAD_LETTERED
        handler = self.handlers.get(event.type)
        return Outcome.IGNORED if handler is None else (event, handler)

    async def process(self, message: Message) -> Outcome:
        to_apply = await self._to_apply(message)
        if isinstance(to_apply, Outcome):
            return to_apply
        event, handler = to_apply
        span = _consumer_span(event, message.topic, self.group)
        cause_token = current_cause.set(_cause_of(event, span.traceparent))
        event_token = current_event_id.set(event.id)
        outcome = Outcome.DEAD_LETTERED
        try:
            outcome = await self._apply_with_retry(message, event, handler)
            return outcome
        finally:
            current_event_id.reset(event_token)
            current_cause.reset(cause_token)
            span.end(error="dead-lettered" if outcome is Outcome.DEAD_LETTERED else None,
                     attributes={"funnelcast.outcome": str(outcome)})

    async def process_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        """Apply `messages` in one transaction; their outcomes, in order (see the module docstring)."""
        outcomes: list[Outcome | None] = [None] * len(messages)
        pending: list[tuple[int, CloudEvent, Handler]] = []
        for i, message in enumerate(messages):
            to_apply = await self._to_apply(message)
            if isinstance(to_apply, Outcome):
                outcomes[i] = to_apply
            else:
                pending.append((i, *to_apply))
        if len(pending) == 1:
            [(i, _, _)] = pending
            outcomes[i] = await self.process(messages[i])
        elif pending:
            applied = await self._apply_batch_with_retry(pending)
            if applied is None:  # a handler failed: one at a time, so only that event is dead-lettered
                for i, _, _ in pending:
                    outcomes[i] = await self.process(messages[i])
            else:
                for (i, _, _), outcome in zip(pending, applied, strict=True):
                    outcomes[i] = outcome
        return [outcome or Outcome.IGNORED for outcome in outcomes]

    async def _apply_batch_with_retry(self, pending: list[tuple[int, CloudEvent, Handler]]) -> list[Outcome] | None:
        backoff = 0.1
        while True:
            try:
                return await self._apply_batch(pending)
            except TRANSIENT_ERRORS as exc:
                log.warning("cannot apply a batch of %d yet (%r); retrying in %.1fs", len(pending), exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            except Exception:  # noqa: BLE001 - some event's failure: the caller retries them one by one
                log.warning("a batch of %d failed; applying its events one at a time", len(pending), exc_info=True)
                return None

    async def _apply_batch(self, pending: list[tuple[int, CloudEvent, Handler]]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        durations: list[float] = []
        async with self.db.transaction() as tx:
            rows = await tx.conn.fetch(
                "INSERT INTO inbox (consumer_group, event_id, event_type)"
                " SELECT $1, e.id, e.type FROM unnest($2::text[], $3::text[]) AS e(id, type)"
                " ON CONFLICT DO NOTHING RETURNING event_id",
                self.group,
                [event.id for _, event, _ in pending],
                [event.type for _, event, _ in pending],
            )
            first_time = {row["event_id"] for row in rows}
            unseen, batch = set(first_time), []
            for _, event, _ in pending:
                if event.id in unseen:
                    unseen.discard(event.id)
                    batch.append(event)
            tx.batch = batch
            for _, event, handler in pending:
                if event.id not in first_time:  # seen before, or earlier in this batch
                    outcomes.append(Outcome.DUPLICATE)
                    continue
                first_time.discard(event.id)
                started = time.perf_counter()
                span = _consumer_span(event, event.topic, self.group)
                cause_token = current_cause.set(_cause_of(event, span.traceparent))
                event_token = current_event_id.set(event.id)
                try:
                    await handler(tx, event)
                except BaseException as exc:
                    span.end(error=f"{type(exc).__name__}: {exc}")
                    raise
                finally:
                    current_event_id.reset(event_token)
                    current_cause.reset(cause_token)
                span.end()
                durations.append(time.perf_counter() - started)
                outcomes.append(Outcome.APPLIED)
        applied = iter(durations)
        for (_, event, _), outcome in zip(pending, outcomes, strict=True):
            if outcome is Outcome.APPLIED:
                metrics.events_consumed.labels(event.type, self.group).inc()
                metrics.handler_duration.labels(event.type, self.group).observe(next(applied))
            else:
                metrics.events_duplicate.labels(event.type, self.group).inc()
        return outcomes

    async def _apply_with_retry(self, message: Message, event: CloudEvent, handler: Handler) -> Outcome:
        backoff = 0.1
        while True:
            try:
                return await self._apply(event, handler)
            except TRANSIENT_ERRORS as exc:
                log.warning("cannot apply %s yet (%r); retrying in %.1fs", event.id, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            except Exception as exc:  # noqa: BLE001 - any other failure is this message's: dead-letter it
                metrics.events_failed.labels(event.type, self.group).inc()
                log.exception("handler for %s failed on event %s", event.type, event.id)
                await self.dead_letters.send(message, f"{type(exc).__name__}: {exc}")
                return Outcome.DEAD_LETTERED

    async def _apply(self, event: CloudEvent, handler: Handler) -> Outcome:
        started = time.perf_counter()
        async with self.db.transaction() as tx:
            first_time = await tx.conn.fetchval(
                "INSERT INTO inbox (consumer_group, event_id, event_type) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING RETURNING true",
                self.group,
                event.id,
                event.type,
            )
            if not first_time:
                metrics.events_duplicate.labels(event.type, self.group).inc()
                return Outcome.DUPLICATE
            tx.batch = (event,)
            await handler(tx, event)
        metrics.events_consumed.labels(event.type, self.group).inc()
        metrics.handler_duration.labels(event.type, self.group).observe(time.perf_counter() - started)
        return Outcome.APPLIED


def _cause_of(event: CloudEvent, traceparent: str) -> Cause:
    """What the events a handler publishes carry about the event that caused them."""
    return Cause(correlation_id=event.correlationid or event.id, causation_id=event.id, traceparent=traceparent)


def _consumer_span(event: CloudEvent, topic: str, group: str) -> tracing.Span:
    """Applying one event: a child of the span that published it (exported only when tracing is on)."""
    return tracing.start_span(
        f"{event.type} process", event.traceparent, "consumer",
        {"messaging.system": "kafka", "messaging.destination.name": topic, "messaging.consumer.group.name": group,
         "cloudevents.event_id": event.id, "cloudevents.event_type": event.type},
    )
