"""What every benchmark needs: its own embedded Postgres and broker, and percentiles."""

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared import kafka
from shared.auth import issue_token
from shared.runtime.broker import TansuBroker
from shared.runtime.postgres import EmbeddedPostgres
from shared.settings import Settings
from tests.support.waiting import eventually, free_port

T = TypeVar("T")


@dataclass
class Stack:
    postgres: EmbeddedPostgres
    broker: TansuBroker
    settings: Settings


@contextlib.contextmanager
def embedded_stack() -> Iterator[Stack]:
    """A Postgres and a Tansu of the benchmark's own, configured as `make run` configures them."""
    with tempfile.TemporaryDirectory(prefix="funnelcast-bench-") as root:
        home = Path(root)
        postgres = EmbeddedPostgres(home / "postgres", free_port(), home / "postgres.log")
        broker = TansuBroker(free_port(), home / "tansu.log")
        postgres.start()
        broker.start()
        try:
            settings = Settings(
                database_url=postgres.url, kafka_bootstrap=broker.bootstrap, kafka_idempotence=False, home=home
            )
            yield Stack(postgres, broker, settings)
        finally:
            broker.stop()
            postgres.stop()


def percentiles(samples_s: list[float]) -> dict[str, float]:
    """p50 / p95 / p99 in milliseconds."""
    cuts = statistics.quantiles(samples_s, n=100, method="inclusive")
    return {"p50": cuts[49] * 1000, "p95": cuts[94] * 1000, "p99": cuts[98] * 1000}


@contextlib.contextmanager
def service_processes(settings: Settings, service: str, count: int) -> Iterator[list[str]]:
    """`count` processes of one service on loopback, as `funnelcast up --replicas` runs them; their URLs."""
    ports = [free_port() for _ in range(count)]
    procs = []
    for port in ports:
        env = {
            **os.environ,
            "FUNNELCAST_DATABASE_URL": settings.server_url,
            "FUNNELCAST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap_servers,
            "FUNNELCAST_KAFKA_IDEMPOTENCE": "false",
            f"FUNNELCAST_{service.upper()}_PORT": str(port),
            "FUNNELCAST_LOG_LEVEL": "WARNING",
            "FUNNELCAST_HOME": str(settings.home),
        }
        procs.append(subprocess.Popen([sys.executable, "-m", f"services.{service}"], env=env))
    try:
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


@contextlib.asynccontextmanager
async def ready_clients(
    urls: list[str], settings: Settings, connections: int, user: str = "admin-1", role: str = "admin"
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """A client per URL acting as `user`, each returned once its service answers /readyz."""
    token = issue_token(user, role, settings.signing_secret, 3600)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    made = [
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=30)
        for url in urls
    ]
    try:
        for client in made:

            async def ready(client: httpx.AsyncClient = client) -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await client.get("/readyz")).status_code == 200
                return False

            await eventually(ready, timeout=60, interval=0.2)
        yield made
    finally:
        for client in made:
            await client.aclose()


class CausedEventReader:
    """Reads a topic from its end; notes when the first event caused by each event id arrived
    (its `causationid`), so a benchmark can time event -> reaction."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.consumer: AIOKafkaConsumer = kafka.consumer(settings, group_id=None)
        self.arrived: dict[str, float] = {}
        self.latest: dict[bytes, dict[str, Any]] = {}  # the data of the last event read per key
        self.awaited: set[str] = set()
        self.all_arrived = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        partitions = [TopicPartition(self.topic, p)
                      for p in sorted(self.consumer.partitions_for_topic(self.topic) or [])]
        self.consumer.assign(partitions)
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
                    event = json.loads(record.value)
                    cause = event["causationid"]
                    self.arrived.setdefault(cause, now)
                    if record.key is not None:
                        self.latest[record.key] = event["data"]
                    self.awaited.discard(cause)
            if not self.awaited:
                self.all_arrived.set()

    async def wait_for(self, ids: list[str], timeout: float) -> None:
        """Until an event caused by each of `ids` was read."""
        self.awaited = {i for i in ids if i not in self.arrived}
        self.all_arrived.clear()
        if self.awaited:
            await asyncio.wait_for(self.all_arrived.wait(), timeout)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.consumer.stop()


async def open_loop(rate: float, seconds: float, start: Callable[[], Awaitable[T]]) -> list[T]:
    """Open-loop load: call i of `start` leaves at t0 + i / rate, whatever the answers before it."""
    started = time.perf_counter()
    tasks = []
    for i in range(int(rate * seconds)):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(start()))
    return list(await asyncio.gather(*tasks))
