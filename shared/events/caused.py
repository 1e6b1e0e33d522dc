"""What events caused: a topic read by the `causationid` of its events, for the tools that time or
check event -> reaction from outside the services (the benchmarks, the scoring evaluation)."""

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import kafka
from shared.settings import Settings


class CausedEventReader:
    """Reads a topic from its end (or, `from_start`, its beginning); notes for each event id when the
    first event it caused arrived and that event's data, and the data of the last event read per key."""

    def __init__(self, settings: Settings, topic: str, from_start: bool = False) -> None:
        self.topic = topic
        self.from_start = from_start
        self.consumer: AIOKafkaConsumer = kafka.consumer(settings, group_id=None)
        self.arrived: dict[str, float] = {}
        self.caused: dict[str, dict[str, Any]] = {}  # causing event id -> the data of the first event it caused
        self.latest: dict[bytes, dict[str, Any]] = {}  # the data of the last event read per key
        self.first_arrived: dict[bytes, float] = {}  # when the first event of each key was read
        self.awaited: set[str] = set()
        self.all_arrived = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        partitions = [TopicPartition(self.topic, p)
                      for p in sorted(self.consumer.partitions_for_topic(self.topic) or [])]
        self.consumer.assign(partitions)
        if self.from_start:
            await self.consumer.seek_to_beginning(*partitions)
        else:
            await self.consumer.seek_to_end(*partitions)
        for partition in partitions:
            await self.consumer.position(partition)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    event = json.loads(record.value or b"{}")
                    cause = event.get("causationid")  # none for work of a service's own (a scheduled re-score)
                    if cause is not None:
                        self.arrived.setdefault(cause, now)
                        self.caused.setdefault(cause, event["data"])
                        self.awaited.discard(cause)
                    if record.key is not None:
                        self.latest[record.key] = event["data"]
                        self.first_arrived.setdefault(record.key, now)
            if not self.awaited:
                self.all_arrived.set()

    async def wait_for(self, ids: Sequence[str], timeout: float) -> None:
        """Until an event caused by each of `ids` was read; TimeoutError after `timeout` seconds."""
        self.awaited = {i for i in ids if i not in self.arrived}
        self.all_arrived.clear()
        if self.awaited:
            await asyncio.wait_for(self.all_arrived.wait(), timeout)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.consumer.stop()
