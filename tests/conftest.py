"""Session fixtures: one real PostgreSQL and one real Kafka-protocol broker (Tansu) for the run."""

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from shared import kafka
from shared.db import SHARED_MIGRATIONS, Database, migrate
from shared.runtime.broker import TansuBroker
from shared.runtime.postgres import EmbeddedPostgres
from shared.settings import Settings
from tests.support.waiting import free_port

# Tests never use the developer's running stack.
for _name in [n for n in os.environ if n.startswith("FUNNELCAST_")]:
    del os.environ[_name]


def throwaway_postgres(root: Path) -> EmbeddedPostgres:
    """A started Postgres server under `root`: durability off makes tests faster and changes no behaviour
    under test."""
    server = EmbeddedPostgres(root / "data", free_port(), root / "postgres.log", settings={"fsync": "off"})
    server.start()
    return server


def own_servers(factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[EmbeddedPostgres, TansuBroker]]:
    """A Postgres server and a broker of a module's own, for a module-scoped fixture to yield from.

    They go together: a service's outbox history belongs to the broker it was published to, and a relay
    that finds its database on another broker publishes all of it again (broker restart recovery), which
    would flood the session broker's later modules with earlier modules' events."""
    root = factory.mktemp(f"{name}-servers")
    database = throwaway_postgres(root / "postgres")
    broker = TansuBroker(free_port(), root / "tansu.log")
    broker.start()
    yield database, broker
    broker.stop()
    database.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    server = throwaway_postgres(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    root = tmp_path_factory.mktemp("broker")
    server = TansuBroker(free_port(), root / "tansu.log")
    server.start()
    yield server
    server.stop()


def settings_for(postgres: EmbeddedPostgres, broker: TansuBroker, home: Path, **overrides: object) -> Settings:
    return Settings(
        database_url=postgres.url,
        kafka_bootstrap=broker.bootstrap,
        kafka_idempotence=False,  # Tansu does not implement InitProducerId
        home=home,
        relay_idle_poll_s=0.2,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
async def settings(
    postgres: EmbeddedPostgres, broker: TansuBroker, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    configured = settings_for(postgres, broker, tmp_path_factory.mktemp("home"))
    await kafka.ensure_topics(configured)
    return configured


@pytest.fixture
async def scratch_db(postgres: EmbeddedPostgres, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh, empty database on the session server; its URL."""
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "").replace("-", "_")[:50]
    admin = await asyncpg.connect(postgres.url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    yield postgres.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
async def db(scratch_db: str) -> AsyncIterator[Database]:
    """A fresh service database with the shared outbox and inbox tables, as a leads service's."""
    database = await Database.open(scratch_db, "/funnelcast/leads")
    async with database.pool.acquire() as conn:
        await migrate(conn, SHARED_MIGRATIONS)
    yield database
    await database.close()


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    started = kafka.producer(settings)
    await started.start()
    yield started
    await started.stop()
