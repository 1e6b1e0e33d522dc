"""Benchmark: lead events in on sales.leads -> the scoring service (its own process) -> scored events
out on sales.scores, beside the bare broker and Postgres rates of the same run.

Starts its own embedded Postgres and Tansu and one scoring service process (as `funnelcast up`
runs it), produces lead events as the leads service would publish them (captured, then engaged,
contacted, engaged again for each lead), and reads sales.scores in this process:
- throughput: a backlog of `--backlog` events produced at once; scored events/s from the first
  event produced to the last scored event read (each scored event is committed with its inbox row
  and relayed to the broker, so this is the whole path);
- latency: events sent open loop at `--rate`/s for `--seconds`, capture -> scored p50 / p95 / p99
  (from the moment the event is produced to the moment its scored event is read; this process's own
  garbage collector paused meanwhile, so its pauses are not billed to the service);
- the bare rates, for ratios: Faust's delivery of the same kind of backlog to an agent that does
  nothing (the ceiling of any Faust consumer on this machine), the broker's produce rate and
  Postgres's commit rate (one row a transaction);
- the issue's path, lead captured over HTTP -> scored: `--leads-processes` leads service processes
  take captures open loop at `--capture-rate`/s for `--seconds`; for each lead, from the request sent
  and from its HTTP 201 read to its first `sales.lead.scored.v1` read (through the leads service's
  outbox and relay, the broker, the scoring consumer, its outbox and relay, the broker), on a fresh
  Postgres and broker with a scoring process of their own.

Run: .venv/bin/python -m bench.scoring [--backlog 8000] [--rate 300] [--seconds 10] [--capture-rate 500]
     [--leads-processes 1]
"""

import argparse
import asyncio
import contextlib
import gc
import itertools
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.backbone import bare_broker_produce_rate, bare_postgres_commit_rate
from bench.harness import embedded_stack, load_sessions, open_loop, percentiles, ready_clients, service_processes
from shared import kafka
from shared.events.caused import CausedEventReader
from shared.events.envelope import CONTENT_TYPE_HEADER, CloudEvent
from shared.inbox import DeadLetters, EventProcessor, Outcome
from shared.settings import Settings
from shared.streaming import create_stream_app, subscribe
from shared.topology import TOPICS
from tests.support.waiting import eventually

_serial = itertools.count(1)
BARE_TOPIC = "bench.bare-latency"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def lead_events(lead_id: str) -> list[CloudEvent]:
    """What the leads service publishes over a lead's first touches: captured, engaged, contacted, engaged."""
    n = next(_serial)
    captured = {
        "lead_id": lead_id, "source": "web_form", "grade": "HABC"[n % 4], "owner_id": f"rep-{1 + n % 3}",
        "campaign_id": None, "region": "华东", "captured_at": _now(),
        "contact": {"name": f"访客{n}", "company": f"公司{n % 500}", "phone": f"139{n:08d}", "email": None},
        "attributes": {"utm_source": "bench"},
    }
    engaged = {"lead_id": lead_id, "visits": 2, "time_on_site_s": 240.0, "page_views": 5, "activity": "webinar"}
    contacted = {"lead_id": lead_id, "touch_id": f"touch-{n}", "channel": "phone", "contacted_at": _now(),
                 "contacted_by": "rep-1", "touch_number": 1}
    return [
        CloudEvent(type="sales.lead.captured.v1", source="/funnelcast/leads", subject=lead_id, data=captured,
                   sequence=1),
        CloudEvent(type="sales.lead.engaged.v1", source="/funnelcast/leads", subject=lead_id, data=engaged,
                   sequence=2),
        CloudEvent(type="sales.lead.contacted.v1", source="/funnelcast/leads", subject=lead_id, data=contacted,
                   sequence=3),
        CloudEvent(type="sales.lead.engaged.v1", source="/funnelcast/leads", subject=lead_id,
                   data=engaged | {"visits": 1, "activity": None}, sequence=4),
    ]


async def send(producer: AIOKafkaProducer, event: CloudEvent) -> "asyncio.Future[Any]":
    ack: asyncio.Future[Any] = await producer.send(event.topic, event.to_bytes(), key=event.subject.encode(),
                                                   headers=[CONTENT_TYPE_HEADER])
    return ack


async def cpu_seconds(service: httpx.AsyncClient) -> float:
    """The service process's CPU time so far (prometheus_client's process collector)."""
    text = (await service.get("/metrics")).text
    [line] = [x for x in text.splitlines() if x.startswith("process_cpu_seconds_total ")]
    return float(line.split()[1])


async def backlog_throughput(
    producer: AIOKafkaProducer, reader: CausedEventReader, service: httpx.AsyncClient, count: int
) -> tuple[float, float]:
    """Scored events/s through a backlog of `count`, and the service's CPU milliseconds per event."""
    events = [e for _ in range(count // 4) for e in lead_events(f"lead-bench-{uuid.uuid4()}")]
    cpu_before = await cpu_seconds(service)
    started = time.perf_counter()
    await asyncio.gather(*[await send(producer, e) for e in events])
    await reader.wait_for([e.id for e in events], timeout=max(300.0, count / 10))
    last = max(reader.arrived[e.id] for e in events)
    cpu_ms = (await cpu_seconds(service) - cpu_before) * 1000 / len(events)
    return len(events) / (last - started), cpu_ms


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection in this process meanwhile. The load and the reader of sales.scores
    share it, and what the reader keeps (every scored event's data) grows its heap: a full collection
    came once in a latency run and stalled sending and reading together for 140-520 ms (loaded machine),
    billed to the service as latency."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def latency_at(producer: AIOKafkaProducer, reader: CausedEventReader, rate: float, seconds: float) -> list[float]:
    """Open loop: event i leaves at start + i / rate; four events per lead, in their order."""
    total = int(rate * seconds)
    events = [e for _ in range((total + 3) // 4) for e in lead_events(f"lead-bench-{uuid.uuid4()}")][:total]
    sent: dict[str, float] = {}
    acks = []
    started = time.perf_counter()
    for i, event in enumerate(events):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[event.id] = time.perf_counter()
        acks.append(await send(producer, event))
    await asyncio.gather(*acks)
    await reader.wait_for(list(sent), timeout=120)
    return [reader.arrived[i] - at for i, at in sent.items()]


async def capture_latency_at(
    leads: list[aiohttp.ClientSession], reader: CausedEventReader, rate: float, seconds: float
) -> tuple[list[float], list[float]]:
    """Captures through the leads service's API, open loop at `rate`; for each lead, from the request
    sent and from its HTTP 201 read to the first `sales.lead.scored.v1` of the lead read."""
    spread = itertools.cycle(leads)
    sent: dict[bytes, float] = {}
    answered: dict[bytes, float] = {}

    async def capture() -> None:
        n = next(_serial)
        body = {"contact": {"name": f"访客{n}", "phone": f"138{n:08d}"}, "source": "web_form",
                "grade": "HABC"[n % 4], "region": ("华东", "华北")[n % 2]}
        started = time.perf_counter()
        async with next(spread).post("/v1/leads", json=body) as response:
            lead = await response.json()
        if response.status != 201:
            raise RuntimeError(f"capture answered {response.status}: {lead}")
        key = lead["id"].encode()
        sent[key], answered[key] = started, time.perf_counter()

    await open_loop(rate, seconds, capture)

    async def all_scored() -> bool:
        return all(key in reader.first_arrived for key in sent)

    await eventually(all_scored, timeout=120, interval=0.2)
    return ([reader.first_arrived[key] - at for key, at in sent.items()],
            [reader.first_arrived[key] - at for key, at in answered.items()])


class _Counting(EventProcessor):
    """Applies nothing: counts what Faust hands over."""

    def __init__(self, producer: AIOKafkaProducer, expected: int) -> None:
        super().__init__(None, "bench-bare-faust", {}, DeadLetters(producer, "bench-bare-faust"))  # type: ignore[arg-type]
        self.expected = expected
        self.all_delivered = asyncio.Event()
        self.delivered = 0
        self.first_at: float | None = None
        self.last_at = 0.0

    async def process_batch(self, messages: Any) -> list[Outcome]:
        self.first_at = self.first_at or time.perf_counter()
        self.last_at = time.perf_counter()
        self.delivered += len(messages)
        if self.delivered >= self.expected:
            self.all_delivered.set()
        return [Outcome.IGNORED] * len(messages)


async def bare_faust_delivery(settings: Settings, count: int) -> float:
    """A backlog of `count` lead events on a topic of its own, read by a Faust agent that does nothing."""
    topic = f"bench.bare-faust.{uuid.uuid4().hex[:8]}"
    producer = kafka.producer(settings)
    await producer.start()
    events = [e for _ in range(count // 4) for e in lead_events(f"lead-bench-{uuid.uuid4()}")]
    acks = [await producer.send(topic, e.to_bytes(), key=e.subject.encode(), headers=[CONTENT_TYPE_HEADER])
            for e in events]
    await asyncio.gather(*acks)
    app = create_stream_app(f"bench-bare-{uuid.uuid4().hex[:8]}", settings)
    counting = _Counting(producer, len(events))
    subscribe(app, counting, [topic])
    app.finalize()
    await app.start()
    try:
        await asyncio.wait_for(counting.all_delivered.wait(), 300)
    finally:
        await app.stop()
        await producer.stop()
    assert counting.first_at is not None
    return (counting.delivered - 1) / (counting.last_at - counting.first_at)


async def warmed_up(producer: AIOKafkaProducer, reader: CausedEventReader) -> None:
    """The consumer group joins after /readyz: wait for a first lead's scores."""
    warm = lead_events(f"lead-bench-{uuid.uuid4()}")
    await asyncio.gather(*[await send(producer, e) for e in warm])
    await reader.wait_for([e.id for e in warm], timeout=120)


async def bare_publish_to_consume(settings: Settings, rate: float, seconds: float) -> list[float]:
    """The broker alone, for comparison with the capture path: messages produced one at a time, open loop
    at `rate`, on a topic with sales.leads's partitions, each from its send to its read by a consumer with
    the services' fetch settings."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(BARE_TOPIC, TOPICS["sales.leads"].partitions, 1)])
    finally:
        await admin.close()
    consumer, producer = kafka.consumer(settings, group_id=None), kafka.producer(settings)
    await consumer.start()
    await producer.start()
    partitions = [TopicPartition(BARE_TOPIC, p) for p in range(TOPICS["sales.leads"].partitions)]
    consumer.assign(partitions)
    sent: dict[bytes, float] = {}
    read: dict[bytes, float] = {}

    async def read_all() -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                now = time.perf_counter()
                for record in records:
                    read.setdefault(record.key, now)

    async def publish() -> None:
        key = str(next(_serial)).encode()
        sent[key] = time.perf_counter()
        await (await producer.send(BARE_TOPIC, b"x" * 500, key=key))

    reader = asyncio.create_task(read_all())
    try:
        await open_loop(rate, seconds, publish)

        async def all_read() -> bool:
            return read.keys() >= sent.keys()

        await eventually(all_read, timeout=60, interval=0.1)
    finally:
        reader.cancel()
        await producer.stop()
        await consumer.stop()
    return [read[key] - at for key, at in sent.items()]


async def capture_path(args: argparse.Namespace) -> tuple[list[float], list[float], list[float]]:
    """HTTP capture -> first score, on a stack of its own: the embedded broker's cost per fetch grows with
    the record batches it holds (bench.broker_storage), so after the other phases it would bill the
    path for their leftovers, which a Kafka broker would not. First the bare broker's publish -> consume
    latency at the same rate, on the same broker, before the services start."""
    with embedded_stack() as stack:
        settings = stack.settings
        await kafka.ensure_topics(settings)
        bare = await bare_publish_to_consume(settings, args.capture_rate, args.seconds)
        with (
            service_processes(settings, "scoring", 1) as scoring_urls,
            service_processes(settings, "leads", args.leads_processes) as leads_urls,
            collector_paused(),
        ):
            async with (
                ready_clients(scoring_urls + leads_urls, settings, 1),
                load_sessions(leads_urls, settings, 64) as leads,
            ):
                reader = CausedEventReader(settings, "sales.scores")
                await reader.start()
                try:
                    await capture_latency_at(leads, reader, 20, 2)  # warm-up: connections, groups
                    from_sent, from_201 = await capture_latency_at(leads, reader, args.capture_rate, args.seconds)
                    return from_sent, from_201, bare
                finally:
                    await reader.stop()


async def main(args: argparse.Namespace) -> None:
    with embedded_stack() as stack:
        settings = stack.settings
        await kafka.ensure_topics(settings)
        with service_processes(settings, "scoring", 1) as urls:
            async with ready_clients(urls, settings, 1) as [service]:
                reader = CausedEventReader(settings, "sales.scores")
                await reader.start()
                producer = kafka.producer(settings)
                await producer.start()
                try:
                    await warmed_up(producer, reader)
                    throughput, cpu_ms = await backlog_throughput(producer, reader, service, args.backlog)
                    with collector_paused():
                        latencies = await latency_at(producer, reader, args.rate, args.seconds)
                finally:
                    await producer.stop()
                    await reader.stop()
        # After the service stopped: the bare produce writes raw values to sales.leads.
        produce_rate = await bare_broker_produce_rate(settings, 50_000)
        faust_rate = await bare_faust_delivery(settings, args.backlog)
        commit_rate = await bare_postgres_commit_rate(stack.postgres.url, 3.0)
    if args.capture_rate:
        from_sent, from_201, bare = await capture_path(args)

    p = percentiles(latencies)
    print(f"scored through a backlog: {throughput:9,.0f} events/s  ({args.backlog:,} events; target >= 1,500)")
    print(f"scoring process CPU:      {cpu_ms:9.2f} ms an event   (one free core: {1000 / cpu_ms:,.0f} events/s)")
    print(f"bare Faust delivery:      {faust_rate:9,.0f} events/s  (scored / bare = {throughput / faust_rate:.2f}:"
          " an agent that applies nothing)")
    print(f"bare Postgres commits:    {commit_rate:9,.0f} txn/s     (scored / bare commit = "
          f"{throughput / commit_rate:.2f}: a batch shares a commit)")
    print(f"bare broker produce:      {produce_rate:9,.0f} msgs/s    (scored / bare = {throughput / produce_rate:.3f})")
    print(f"lead event -> scored at {args.rate:,.0f} events/s: p50 {p['p50']:.1f} ms  p95 {p['p95']:.1f} ms  "
          f"p99 {p['p99']:.1f} ms  ({len(latencies):,} events; target p99 <= 100 ms)")
    if args.capture_rate:
        for start, samples in (("request sent", from_sent), ("HTTP 201 read", from_201)):
            q = percentiles(samples)
            print(f"HTTP capture -> scored at {args.capture_rate:,.0f} captures/s, from the {start}:"
                  f" p50 {q['p50']:.1f} ms  p95 {q['p95']:.1f} ms  p99 {q['p99']:.1f} ms"
                  f"  ({len(samples):,} leads, {args.leads_processes} leads processes; target p99 <= 100 ms)")
        q = percentiles(bare)
        print(f"bare broker publish -> consume at {args.capture_rate:,.0f} msgs/s, same broker before the services:"
              f" p50 {q['p50']:.1f} ms  p95 {q['p95']:.1f} ms  p99 {q['p99']:.1f} ms  (the path crosses it twice)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=8_000)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--capture-rate", type=float, default=500.0,
                        help="captures/s through the leads service's API for the HTTP capture -> scored latency"
                             " (0: leave that phase out)")
    # One, as `funnelcast up` runs the service: on 2 cores a second leads process cost the path more than it
    # gave (smaller group commits, a second process's wake-ups: p99 from the 201 120 ms against 75 ms).
    parser.add_argument("--leads-processes", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
