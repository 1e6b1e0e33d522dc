"""Benchmark of the embedded broker alone: does its work per request grow with what it stores?

The soak (`bench.soak`) slows down minute by minute on the embedded runtime while the broker's CPU
grows. This isolates the broker: a Tansu of its own, one topic of 6
partitions, filled step by step with record batches of one message each (what a relay publishing
as events commit sends at a low rate), and at every step:
- produce: the broker's CPU per batch while filling;
- follow: one-message batches produced at 100/s for 5 s while a consumer reads them from the end of
  the log (a consumer keeping up, with the 10 ms fetch wait the services use): the broker's CPU per
  message and the median produce -> read latency;
- list offsets: `end_offsets` of the 6 partitions (ListOffsets latest), the broker's CPU a call.
Then the same number of messages stored in few, large batches, for contrast.

Run: .venv/bin/python -m bench.broker_storage [--steps 0,10000,20000,40000] [--message-bytes 800]
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from shared.runtime.broker import TansuBroker
from tests.support.topics import create_topic
from tests.support.waiting import free_port

TOPIC = "bench.storage"
PARTITIONS = 6
FOLLOW_RATE = 100.0
FOLLOW_SECONDS = 5.0
LIST_OFFSETS_CALLS = 100


@dataclass
class Step:
    stored_batches: int
    stored_messages: int
    produce_us_a_batch: float
    follow_us_a_message: float
    follow_median_ms: float
    list_offsets_us: float


def broker_cpu_s(broker: psutil.Process) -> float:
    times = broker.cpu_times()
    return float(times.user + times.system)


class Probe:
    """One broker, a producer and a consumer assigned every partition (no group: no commits)."""

    def __init__(self, broker: TansuBroker, message: bytes) -> None:
        assert broker.pid is not None
        self.process = psutil.Process(broker.pid)
        self.message = message
        self.producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False,
                                         max_batch_size=1 << 20)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=10,
                                         enable_auto_commit=False)
        self.partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        self.batches = 0
        self.messages = 0

    async def __aenter__(self) -> "Probe":
        await self.producer.start()
        await self.consumer.start()
        self.consumer.assign(self.partitions)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.consumer.stop()
        await self.producer.stop()

    async def fill_one_by_one(self, batches: int) -> float:
        """Produce one-message batches, one to each partition at a time, up to `batches` stored; the
        broker's CPU microseconds a batch."""
        before, added = broker_cpu_s(self.process), 0
        while self.batches < batches:
            sent = [await self.producer.send(TOPIC, self.message, partition=p) for p in range(PARTITIONS)]
            await asyncio.gather(*sent)
            self.batches += PARTITIONS
            self.messages += PARTITIONS
            added += PARTITIONS
        return (broker_cpu_s(self.process) - before) * 1e6 / added if added else 0.0

    async def fill_in_large_batches(self, messages: int, per_batch: int = 500) -> None:
        while self.messages < messages:
            partition = self.batches % PARTITIONS
            sent = [await self.producer.send(TOPIC, self.message, partition=partition) for _ in range(per_batch)]
            await asyncio.gather(*sent)
            self.batches += 1
            self.messages += per_batch

    async def follow(self) -> tuple[float, float]:
        """One-message batches produced at FOLLOW_RATE/s for FOLLOW_SECONDS while the consumer reads
        them from the end of the log: the broker's CPU microseconds a message (its produce, its
        fetch and the empty fetches between) and the median produce -> read milliseconds."""
        ends = await self.consumer.end_offsets(self.partitions)
        for partition in self.partitions:
            self.consumer.seek(partition, ends[partition])
        count = int(FOLLOW_RATE * FOLLOW_SECONDS)
        sent_at: list[float] = []  # by the number each message carries
        delays: list[float] = []

        async def read() -> None:
            while len(delays) < count:
                for records in (await self.consumer.getmany(timeout_ms=1000)).values():
                    for record in records:
                        if record.value is None or not record.value[:1].isdigit():  # stored before: not followed
                            continue
                        delays.append(time.perf_counter() - sent_at[int(record.value.split(b" ", 1)[0])])

        reader = asyncio.create_task(read())
        before, started = broker_cpu_s(self.process), time.perf_counter()
        for n in range(count):
            await asyncio.sleep(max(0.0, started + n / FOLLOW_RATE - time.perf_counter()))
            sent_at.append(time.perf_counter())
            value = b"%d %s" % (n, self.message)
            await (await self.producer.send(TOPIC, value, partition=n % PARTITIONS))
        await asyncio.wait_for(reader, timeout=120)
        self.batches += count
        self.messages += count
        cpu_us = (broker_cpu_s(self.process) - before) * 1e6 / count
        return cpu_us, statistics.median(delays) * 1000

    async def list_offsets(self) -> float:
        before = broker_cpu_s(self.process)
        for _ in range(LIST_OFFSETS_CALLS):
            await self.consumer.end_offsets(self.partitions)
        return (broker_cpu_s(self.process) - before) * 1e6 / LIST_OFFSETS_CALLS

    async def measure(self, produce_us: float) -> Step:
        stored_batches, stored_messages = self.batches, self.messages
        follow_us, follow_ms = await self.follow()
        return Step(stored_batches, stored_messages, produce_us, follow_us, follow_ms, await self.list_offsets())


async def on_a_fresh_broker(
    home: Path, message: bytes, work: Callable[[Probe], Awaitable[list[Step]]]
) -> list[Step]:
    port = free_port()
    broker = TansuBroker(port, home / f"tansu-{port}.log")
    broker.start()
    try:
        await create_topic(broker.bootstrap, TOPIC, PARTITIONS)
        async with Probe(broker, message) as probe:
            return await work(probe)
    finally:
        broker.stop()


def row(label: str, step: Step) -> str:
    produce = f"{step.produce_us_a_batch:8,.0f}" if step.produce_us_a_batch else "       -"
    return (f"{label:<22} {step.stored_batches:>8,} {step.stored_messages:>9,}  {produce}"
            f"  {step.follow_us_a_message:9,.0f}  {step.follow_median_ms:9.1f}  {step.list_offsets_us:9,.0f}")


async def main(args: argparse.Namespace) -> None:
    message = b"x" * args.message_bytes
    with tempfile.TemporaryDirectory(prefix="funnelcast-bench-") as root:
        async def small_batches(probe: Probe) -> list[Step]:
            return [await probe.measure(await probe.fill_one_by_one(batches)) for batches in args.steps]

        async def large_batches(probe: Probe) -> list[Step]:
            await probe.fill_in_large_batches(max(args.steps))
            return [await probe.measure(0.0)]

        small = await on_a_fresh_broker(Path(root), message, small_batches)
        large = await on_a_fresh_broker(Path(root), message, large_batches)
    print(f"{'':<22} {'batches':>8} {'messages':>9}  {'filling':>8}  {'follow':>9}  {'follow':>9}  {'offsets':>9}")
    print(f"{'stored as':<22} {'stored':>8} {'stored':>9}  {'us/batch':>8}  {'us/msg':>9}  {'p50 ms':>9}"
          f"  {'us/call':>9}   (microseconds: the broker's CPU)")
    for step in small:
        print(row("one-message batches", step))
    print(row("500-message batches", large[0]))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=lambda text: [int(n) for n in text.split(",")], default=[0, 10_000, 20_000, 40_000],
                   help="stored one-message batches at which to measure")
    p.add_argument("--message-bytes", type=int, default=800, help="about a lead event's size")
    return p


if __name__ == "__main__":
    asyncio.run(main(parser().parse_args()))
