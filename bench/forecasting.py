"""Benchmark: stage changes in on sales.opportunities -> the forecasting service (its own process) ->
sales.forecast.updated.v1 out on sales.forecasts; latency from the stage change to the forecast.

Starts its own embedded Postgres and Tansu and one forecasting service process (as `funnelcast up`
runs it). Opens `--deals` opportunities (created events, as the opportunities service publishes
them) spread over the sample organisation's reps and December 2026, waits until the service has
them, then sends stage changes open loop at `--rate`/s for `--seconds`: each deal moves between
bidding and negotiation, so every change moves its owner's weighted pipeline and a forecast row is
published. The service applies a consumed batch in one transaction and recomputes each row once
for it; the row carries the batch's first change that touched it as its cause. Latency: from the
moment such a change is produced to the moment the sales.forecast.updated.v1 it caused (its
`causationid`) is read, i.e. for the change of each batch that waited longest; and the time from
the last change sent until the forecast shows all of them.

Run: .venv/bin/python -m bench.forecasting [--deals 300] [--rate 500] [--seconds 10]
"""

import argparse
import asyncio
import itertools
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.harness import embedded_stack, percentiles, ready_clients, service_processes
from shared import kafka
from shared.events.caused import CausedEventReader
from shared.events.envelope import CONTENT_TYPE_HEADER, CloudEvent
from tests.support.waiting import eventually

REPS = ("rep-1", "rep-2", "rep-3")
SOURCE = "/funnelcast/opportunities"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def created(opp: str, n: int) -> CloudEvent:
    data = {"opportunity_id": opp, "name": f"bench {n}", "account_id": "acc-bench", "stage": "bidding",
            "status": "open", "probability": 30, "amount": f"{amount(n)}.00", "currency": "CNY",
            "owner_id": REPS[n % len(REPS)], "expected_close_date": f"2026-12-{1 + n % 28:02d}",
            "created_at": _now(), "lead_id": None, "campaign_id": None}
    return CloudEvent(type="sales.opportunity.created.v1", source=SOURCE, subject=opp, data=data, sequence=1)


def stage_changed(opp: str, n: int, move: int) -> CloudEvent:
    forward = move % 2 == 0
    data = {"opportunity_id": opp, "from_stage": "bidding" if forward else "negotiation",
            "to_stage": "negotiation" if forward else "bidding", "probability": 60 if forward else 30,
            "amount": f"{amount(n)}.00", "currency": "CNY", "owner_id": REPS[n % len(REPS)],
            "changed_by": REPS[n % len(REPS)], "changed_at": _now()}
    return CloudEvent(type="sales.opportunity.stage_changed.v1", source=SOURCE, subject=opp, data=data,
                      sequence=move + 2)


async def send(producer: AIOKafkaProducer, event: CloudEvent) -> "asyncio.Future[Any]":
    future: asyncio.Future[Any] = await producer.send(
        event.topic, event.to_bytes(), key=event.subject.encode(), headers=[CONTENT_TYPE_HEADER])
    return future


def amount(n: int) -> Decimal:
    return Decimal(10000 + n * 100)


async def settled(reader: CausedEventReader, expected: dict[str, Decimal], timeout: float) -> None:
    """Until the last published December row of each rep shows the expected weighted pipeline."""

    async def done() -> bool:
        rows = {rep: reader.latest.get(f"2026-12/owner/{rep}".encode(), {}) for rep in expected}
        return all(Decimal(rows[rep].get("weighted_pipeline", "-1")) == value for rep, value in expected.items())

    await eventually(done, timeout=timeout, interval=0.05)


async def latency_at(
    producer: AIOKafkaProducer, reader: CausedEventReader, deals: list[str], rate: float, seconds: float
) -> tuple[list[float], float]:
    """Open loop: change i leaves at start + i / rate, round robin over the deals. The latencies of the
    changes that caused a published row (the first change of a batch to touch it: the one that waited
    longest), and the time until the forecast showed every change."""
    moves = dict.fromkeys(deals, 0)
    sent: dict[str, float] = {}
    acks = []
    started = time.perf_counter()
    for i, (n, opp) in zip(range(int(rate * seconds)), itertools.cycle(enumerate(deals)), strict=False):
        event = stage_changed(opp, n, moves[opp])
        moves[opp] += 1
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[event.id] = time.perf_counter()
        acks.append(await send(producer, event))
    await asyncio.gather(*acks)
    last_sent = time.perf_counter()
    print(f"sent {len(sent):,} stage changes at {len(sent) / (last_sent - started):,.0f}/s")
    expected: dict[str, Decimal] = dict.fromkeys(REPS, Decimal(0))
    for n, opp in enumerate(deals):
        expected[REPS[n % len(REPS)]] += amount(n) * (60 if moves[opp] % 2 else 30) / 100
    await settled(reader, {rep: value.quantize(Decimal("0.01")) for rep, value in expected.items()}, 300)
    caught_up = time.perf_counter() - last_sent
    return [reader.arrived[i] - at for i, at in sent.items() if i in reader.arrived], caught_up


async def main(args: argparse.Namespace) -> None:
    with embedded_stack() as stack:
        settings = stack.settings
        await kafka.ensure_topics(settings)
        with service_processes(settings, "forecasting", 1) as urls:
            async with ready_clients(urls, settings, 1):
                reader = CausedEventReader(settings, "sales.forecasts")
                await reader.start()
                producer = kafka.producer(settings)
                await producer.start()
                try:
                    deals = [f"opp-bench-{uuid.uuid4()}" for _ in range(args.deals)]
                    await asyncio.gather(*[await send(producer, created(opp, n)) for n, opp in enumerate(deals)])
                    # the consumer group joins after /readyz: this first wait covers it
                    opened = dict.fromkeys(REPS, Decimal(0))
                    for n in range(args.deals):
                        opened[REPS[n % len(REPS)]] += amount(n) * 30 / 100
                    await settled(reader, {rep: value.quantize(Decimal("0.01")) for rep, value in opened.items()}, 300)
                    latencies, caught_up = await latency_at(producer, reader, deals, args.rate, args.seconds)
                finally:
                    await producer.stop()
                    await reader.stop()
    p = percentiles(latencies)
    print(f"stage change -> forecast updated at {args.rate:,.0f}/s: p50 {p['p50']:.1f} ms  p95 {p['p95']:.1f} ms  "
          f"p99 {p['p99']:.1f} ms  ({len(latencies):,} changes that caused a published row; {args.deals} deals)")
    print(f"the forecast showed every change {caught_up * 1000:.0f} ms after the last was sent")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deals", type=int, default=300)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    asyncio.run(main(parser.parse_args()))
