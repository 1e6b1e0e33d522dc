"""`funnelcast dlq list|show|replay`: an event a broken handler dead-lettered is re-driven after the fix
and applied once, on a real broker of this module's own (clean dead-letter topics) and real Postgres."""

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from shared import kafka
from shared.db import Database, Transaction
from shared.events.envelope import CONTENT_TYPE_HEADER, CloudEvent
from shared.inbox import DeadLetters, EventProcessor
from shared.runtime.broker import TansuBroker
from shared.runtime.dlq import waiting_per_group
from shared.runtime.postgres import EmbeddedPostgres
from shared.settings import Settings
from shared.streaming import StreamApp, create_stream_app, subscribe
from tests.conftest import settings_for
from tests.support.waiting import eventually, free_port

GROUP = "funnelcast-dlq-test"


@pytest.fixture(scope="module")
def dlq_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    server = TansuBroker(free_port(), tmp_path_factory.mktemp("dlq-broker") / "tansu.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def settings(
    postgres: EmbeddedPostgres, dlq_broker: TansuBroker, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    configured = settings_for(postgres, dlq_broker, tmp_path_factory.mktemp("dlq-home"))
    await kafka.ensure_topics(configured)
    return configured


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    started = kafka.producer(settings)
    await started.start()
    yield started
    await started.stop()


class Contracts:
    """A consumer's effect that fails while `broken`, as a deployed bug would."""

    def __init__(self) -> None:
        self.broken = True

    async def apply(self, tx: Transaction, event: CloudEvent) -> None:
        if self.broken:
            raise KeyError(f"no currency table for {event.data['currency']}")
        await tx.conn.execute("INSERT INTO booked (contract_id) VALUES ($1)", event.subject)


@pytest.fixture
async def consumer(db: Database, producer: AIOKafkaProducer, settings: Settings) -> AsyncIterator[Contracts]:
    await db.pool.execute("CREATE TABLE booked (contract_id text NOT NULL)")
    contracts = Contracts()
    app: StreamApp = create_stream_app(f"dlq-test-{uuid.uuid4().hex[:6]}", settings)
    group = app.conf.id
    processor = EventProcessor(
        db, group, {"sales.contract.signed.v1": contracts.apply}, DeadLetters(producer, group)
    )
    subscribe(app, processor, ["sales.contracts"])
    app.finalize()
    await app.start()
    yield contracts
    await app.stop()


def signed(currency: str) -> CloudEvent:
    contract = f"contract-{uuid.uuid4()}"
    return CloudEvent(
        type="sales.contract.signed.v1", source="/funnelcast/opportunities", subject=contract, sequence=1,
        data={"contract_id": contract, "opportunity_id": "opp-1", "account_id": "acc-1", "amount": "120000.00",
              "currency": currency, "owner_id": "rep-1", "signed_at": "2026-11-23T06:30:00Z"},
    )


async def funnelcast(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process, off the event loop (the consumer under test shares the loop)."""
    return await asyncio.to_thread(_run_cli, settings, *args)


def _run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUNNELCAST_")}
    env.update({
        "FUNNELCAST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap_servers,
        "FUNNELCAST_KAFKA_IDEMPOTENCE": "false",
        "FUNNELCAST_HOME": str(settings.home),
    })
    return subprocess.run(
        [sys.executable, "-m", "shared.runtime.cli", *args], capture_output=True, text=True, timeout=60, env=env,
        cwd=Path(__file__).parents[2],
    )


async def listed(settings: Settings) -> list[dict[str, str]]:
    result = await funnelcast(settings, "dlq", "list", "sales.contracts", "--json")
    assert result.returncode == 0, result.stderr
    letters: list[dict[str, str]] = json.loads(result.stdout)
    return letters


async def booked(db: Database, contract: str) -> int:
    return int(await db.pool.fetchval("SELECT count(*) FROM booked WHERE contract_id = $1", contract))


async def test_a_dead_lettered_event_replayed_after_the_fix_is_applied_once(
    consumer: Contracts, db: Database, producer: AIOKafkaProducer, settings: Settings
) -> None:
    event = signed("XTS")
    await producer.send_and_wait(
        "sales.contracts", key=event.subject.encode(), value=event.to_bytes(), headers=[CONTENT_TYPE_HEADER]
    )
    poison_key = f"poison-{uuid.uuid4()}"
    await producer.send_and_wait("sales.contracts", key=poison_key.encode(), value=b"{not json")

    async def both_dead_lettered() -> list[dict[str, str]] | None:
        letters = await listed(settings)
        return letters if len(letters) == 2 else None

    letters = await eventually(both_dead_lettered, timeout=60, interval=0.5)
    [letter] = [x for x in letters if x["event_id"] == event.id]
    assert letter["state"] == "pending" and letter["type"] == "sales.contract.signed.v1"
    assert letter["subject"] == event.subject and "no currency table for XTS" in letter["error"]
    assert await booked(db, event.subject) == 0
    assert await waiting_per_group(settings) == {letter["group"]: 2}  # what `funnelcast status` shows

    table = await funnelcast(settings, "dlq", "list", "sales.contracts.dlq")
    assert table.returncode == 0 and "2 dead letters, 2 not re-driven yet" in table.stdout, table.stdout
    shown = await funnelcast(settings, "dlq", "show", "sales.contracts", event.id)
    assert shown.returncode == 0, shown.stderr
    details = json.loads(shown.stdout)
    assert details["value"]["id"] == event.id and details["original"]["topic"] == "sales.contracts"
    assert details["headers"]["content-type"] == "application/cloudevents+json"
    assert (await funnelcast(settings, "dlq", "show", "sales.contracts", "9:999")).returncode == 1

    dry = await funnelcast(settings, "dlq", "replay", "sales.contracts", "--dry-run")
    assert "would re-drive 2 dead letters" in dry.stdout
    assert all(x["state"] == "pending" for x in await listed(settings))

    consumer.broken = False  # the fix is deployed
    replay = await funnelcast(settings, "dlq", "replay", "sales.contracts")
    assert replay.returncode == 0 and "re-drove 2 dead letters" in replay.stdout, replay.stdout + replay.stderr
    await eventually(lambda: booked(db, event.subject), timeout=30)
    # The poison message bounces back once more; it is the only new dead letter.
    async def pending() -> list[dict[str, str]]:
        return [x for x in await listed(settings) if x["state"] == "pending"]

    letters = await eventually(pending, timeout=60, interval=0.5)
    assert [x["subject"] for x in letters] == [poison_key]
    assert await waiting_per_group(settings) == {letter["group"]: 1}  # the re-driven ones no longer count

    again = await funnelcast(settings, "dlq", "replay", "sales.contracts")
    assert "re-drove 1 dead letters" in again.stdout  # only the poison's second arrival was pending
    redelivered = event.to_bytes()
    await producer.send_and_wait("sales.contracts", key=event.subject.encode(), value=redelivered)
    marker = signed("CNY")  # a later event: once it is booked, the redelivery before it was handled
    await producer.send_and_wait("sales.contracts", key=marker.subject.encode(), value=marker.to_bytes())
    await eventually(lambda: booked(db, marker.subject), timeout=30)
    assert await booked(db, event.subject) == 1


async def test_unknown_topics_are_refused(settings: Settings) -> None:
    result = await funnelcast(settings, "dlq", "list", "sales.nothing")
    assert result.returncode == 1 and "unknown topic" in result.stderr

