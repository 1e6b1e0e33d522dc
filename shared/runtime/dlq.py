"""Dead letters: read what reached `<topic>.dlq`, and re-drive it to its topic once the cause is fixed.

`funnelcast dlq list|show|replay TOPIC` is built on this. A re-driven message goes back to the
topic it came from, byte for byte, with its key (so the same partition) and its original headers;
every consumer group sees it again, and the inboxes make it a no-op for the groups that had applied
it, so only the group that failed applies it, once. What has been re-driven is remembered as the
committed offsets of the consumer group `funnelcast-dlq-replay` on the dead-letter topic, so a second
`replay` sends only what reached the topic since, and `funnelcast status` counts what waits past them.
"""

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from shared import kafka
from shared.events import dead_letter_headers as dlq_header
from shared.settings import Settings
from shared.topology import TOPICS

REPLAY_GROUP = "funnelcast-dlq-replay"
_DLQ_SUFFIX = ".dlq"


class DeadLetterError(Exception):
    """A dead-letter command that cannot be carried out (unknown topic, broker unreachable)."""


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    replayed: bool

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", "replace")
        return None

    @property
    def consumer_group(self) -> str | None:
        """The group whose handler failed on it."""
        return self.header(dlq_header.CONSUMER_GROUP.name)

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def original_topic(self) -> str:
        return self.header(dlq_header.ORIGINAL_TOPIC.name) or self.topic.removesuffix(_DLQ_SUFFIX)

    @property
    def event(self) -> dict[str, Any] | None:
        """The CloudEvent it carries, when its value is one."""
        try:
            body = json.loads(self.value or b"")
        except (ValueError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    def summary(self) -> dict[str, Any]:
        event = self.event or {}
        return {
            "position": self.position,
            "state": "replayed" if self.replayed else "pending",
            "failed_at": self.header(dlq_header.FAILED_AT.name),
            "group": self.consumer_group,
            "type": event.get("type"),
            "subject": event.get("subject") or (self.key or b"").decode("utf-8", "replace"),
            "event_id": event.get("id"),
            "error": self.header(dlq_header.ERROR.name),
        }

    def details(self) -> dict[str, Any]:
        value: Any = self.event if self.event is not None else (self.value or b"").decode("utf-8", "replace")
        return {
            **self.summary(),
            "topic": self.topic,
            "original": {
                "topic": self.original_topic,
                "partition": self.header(dlq_header.ORIGINAL_PARTITION.name),
                "offset": self.header(dlq_header.ORIGINAL_OFFSET.name),
            },
            "key": (self.key or b"").decode("utf-8", "replace"),
            "headers": {key: value.decode("utf-8", "replace") for key, value in self.headers},
            "value": value,
        }


def dead_letter_topic(topic: str) -> str:
    """`sales.leads` or `sales.leads.dlq` -> `sales.leads.dlq` (a known topic's only)."""
    source = topic.removesuffix(_DLQ_SUFFIX)
    if source not in TOPICS:
        raise DeadLetterError(f"unknown topic {topic!r}; topics are {', '.join(TOPICS)}")
    return TOPICS[source].dead_letters


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    await consumer.topics()  # a metadata refresh
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise DeadLetterError(f"the broker has no topic {topic} (has `funnelcast up` created the topics?)")
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def read_dead_letters(settings: Settings, topic: str) -> list[DeadLetter]:
    """Every message on the topic's dead-letter topic, oldest first per partition."""
    dlq = dead_letter_topic(topic)
    consumer = kafka.consumer(settings, group_id=REPLAY_GROUP, enable_auto_commit=False)
    try:
        await consumer.start()
        return await _read(consumer, dlq)
    except KafkaError as exc:
        raise DeadLetterError(f"cannot read {dlq}: {exc!r}") from None
    finally:
        await consumer.stop()


async def _read(consumer: AIOKafkaConsumer, dlq: str) -> list[DeadLetter]:
    partitions = await _partitions(consumer, dlq)
    replayed_until = {tp: (await consumer.committed(tp)) or 0 for tp in partitions}
    return await _read_from(consumer, dict.fromkeys(partitions, 0), replayed_until)


async def _read_from(consumer: AIOKafkaConsumer, starts: dict[TopicPartition, int],
                     replayed_until: dict[TopicPartition, int]) -> list[DeadLetter]:
    """The letters of each partition from its start offset to its end as it is now."""
    consumer.assign(list(starts))  # no group membership: the group only keeps what was re-driven
    ends = await consumer.end_offsets(list(starts))
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    letters: list[DeadLetter] = []
    pending = {tp for tp in starts if ends[tp] > starts[tp]}
    while pending:
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
        if not pending:
            break
        batches = await consumer.getmany(*pending, timeout_ms=500)
        for tp, records in batches.items():
            for record in records:
                if record.offset >= ends[tp]:
                    continue
                letters.append(DeadLetter(
                    tp.topic, record.partition, record.offset, record.key, record.value,
                    tuple((k, bytes(v)) for k, v in record.headers), record.offset < replayed_until[tp],
                ))
    return sorted(letters, key=lambda letter: (letter.partition, letter.offset))


async def waiting_per_group(settings: Settings) -> Counter[str]:
    """How many dead letters wait (not re-driven yet) per consumer group that wrote them, over every
    dead-letter topic: for `funnelcast status`. The offsets say where letters wait, and only those are
    read (for their consumer-group header): nothing waiting costs one metadata request and the offsets."""
    consumer = kafka.consumer(settings, group_id=REPLAY_GROUP, enable_auto_commit=False)
    try:
        await consumer.start()
        await consumer.topics()  # a metadata refresh
        partitions = [TopicPartition(topic.dead_letters, p) for topic in TOPICS.values()
                      for p in sorted(consumer.partitions_for_topic(topic.dead_letters) or ())]
        ends = await consumer.end_offsets(partitions)
        replayed_until = {tp: (await consumer.committed(tp)) or 0 for tp in partitions}
        waiting = {tp: offset for tp, offset in replayed_until.items() if offset < ends[tp]}
        letters = await _read_from(consumer, waiting, waiting) if waiting else []
    finally:
        await consumer.stop()
    return Counter(letter.consumer_group or "" for letter in letters)


async def replay_dead_letters(
    settings: Settings, topic: str, *, dry_run: bool = False, on_sent: Callable[[DeadLetter], None] | None = None
) -> list[DeadLetter]:
    """Send every dead letter not re-driven yet back to its original topic; return those sent."""
    dlq = dead_letter_topic(topic)
    consumer = kafka.consumer(settings, group_id=REPLAY_GROUP, enable_auto_commit=False)
    producer = kafka.producer(settings)
    sent: list[DeadLetter] = []
    started = False
    try:
        await consumer.start()
        letters = [letter for letter in await _read(consumer, dlq) if not letter.replayed]
        if dry_run or not letters:
            return letters
        await producer.start()
        started = True
        done: dict[TopicPartition, int] = {}
        for letter in letters:
            headers = [(k, v) for k, v in letter.headers if not k.startswith(dlq_header.PREFIX)]
            headers.append((dlq_header.REPLAYED_FROM.name, f"{dlq}:{letter.position}".encode()))
            await producer.send_and_wait(letter.original_topic, key=letter.key, value=letter.value, headers=headers)
            sent.append(letter)
            if on_sent is not None:
                on_sent(letter)
            done[TopicPartition(dlq, letter.partition)] = letter.offset + 1
        # After the sends: a crash in between re-sends on the next replay, which the inboxes absorb.
        await consumer.commit(done)
        return sent
    except KafkaError as exc:
        raise DeadLetterError(f"replaying {dlq} stopped after {len(sent)} messages: {exc!r}") from None
    finally:
        if started:
            await producer.stop()
        await consumer.stop()
