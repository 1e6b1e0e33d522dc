"""What every benchmark needs: its own embedded Postgres and broker, and percentiles."""

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiohttp
import asyncpg
import httpx
import psutil

from shared.auth import issue_token
from shared.runtime.broker import TansuBroker
from shared.runtime.postgres import EmbeddedPostgres
from shared.settings import Settings
from shared.topology import WORKERS, port_variable
from tests.support.waiting import eventually, free_port

T = TypeVar("T")


@dataclass
class Stack:
    postgres: EmbeddedPostgres
    broker: TansuBroker
    settings: Settings


@contextlib.contextmanager
def embedded_stack(postgres_settings: dict[str, str] | None = None) -> Iterator[Stack]:
    """A Postgres and a Tansu of the benchmark's own, configured as `make run` configures them (plus
    `postgres_settings`, `postgres -c` options a benchmark needs for its measuring)."""
    with tempfile.TemporaryDirectory(prefix="funnelcast-bench-") as root:
        home = Path(root)
        postgres = EmbeddedPostgres(home / "postgres", free_port(), home / "postgres.log", postgres_settings)
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
def service_processes(settings: Settings, service: str, count: int, module: str | None = None) -> Iterator[list[str]]:
    """`count` processes of one service on loopback, as `funnelcast up --replicas` runs them; their URLs.
    `module`: another entry point of the service than `services.<service>` (e.g. a worker)."""
    process = next((worker.name for worker in WORKERS.values() if worker.module == module), service)
    ports = [free_port() for _ in range(count)]
    procs = []
    for port in ports:
        env = {
            **os.environ,
            "FUNNELCAST_DATABASE_URL": settings.server_url,
            "FUNNELCAST_KAFKA_BOOTSTRAP": settings.kafka_bootstrap_servers,
            "FUNNELCAST_KAFKA_IDEMPOTENCE": "false",
            port_variable(process): str(port),
            "FUNNELCAST_LOG_LEVEL": "WARNING",
            "FUNNELCAST_HOME": str(settings.home),
        }
        procs.append(subprocess.Popen([sys.executable, "-m", module or f"services.{service}"], env=env))
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


@contextlib.asynccontextmanager
async def load_sessions(
    urls: list[str], settings: Settings, connections: int, user: str = "admin-1", role: str = "admin"
) -> AsyncIterator[list[aiohttp.ClientSession]]:
    """An aiohttp session per service URL acting as `user`, for sending a benchmark's load. aiohttp
    rather than httpx: on a 2-core machine the client shares the CPU with the service, Postgres and
    the broker, and httpx spent more CPU per request than the service did (leads README, *Benchmark*)."""
    token = issue_token(user, role, settings.signing_secret, 3600)
    made = [
        aiohttp.ClientSession(
            base_url=url,
            headers={"Authorization": f"Bearer {token}"},
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=60),
        )
        for url in urls
    ]
    try:
        yield made
    finally:
        for session in made:
            await session.close()


def service_cpu_s(service: str, module: str | None = None) -> float:
    """CPU seconds used so far by this process's children running the service (or its `module`)."""
    total = 0.0
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if (module or f"services.{service}") in child.cmdline():
                cpu = child.cpu_times()
                total += cpu.user + cpu.system
    return total


def server_cpu_s(postmaster: psutil.Process) -> float:
    """CPU seconds used so far by a Postgres server and its backends."""
    total = 0.0
    for process in (postmaster, *postmaster.children()):
        with contextlib.suppress(psutil.Error):
            used = process.cpu_times()
            total += used.user + used.system
    return total


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


async def outbox_drained(settings: Settings, service: str) -> bool:
    """Whether the service's relay has published every event of its outbox."""
    conn = await asyncpg.connect(settings.database_url_for(service))
    try:
        return not await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    finally:
        await conn.close()
