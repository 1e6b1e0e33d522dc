"""Wiring a service: its definition in, a FastAPI app with its whole lifecycle out.

A service declares its routers, its migrations and the handlers of the events it
consumes (`ServiceDefinition`); this module gives it a database with its migrations, an
outbox relay, a Faust agent feeding its handlers, health / readiness / metrics, errors
as problem+json and authentication. The broker connection is made in the background
and retried, so the service keeps taking requests while the broker is away: its events
wait in the outbox.

A stop (SIGTERM) has one budget, FUNNELCAST_SHUTDOWN_GRACE_S from the signal (`StopDeadline`), and
its stages take what is left of it in the order that loses nothing: stop accepting and finish the
requests in flight (uvicorn), the service's own lifespans (notifications: the webhook attempts in
flight), stop consuming (the offsets of what was applied commit), flush the outbox relay last (the
handlers write to the outbox). A stage the budget cuts short is logged and loses nothing: offsets not
committed are consumed again (the inbox skips what was applied), rows not published are the next
relay's, webhook attempts cut short are due again.
"""

import asyncio
import contextlib
import gc
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated, cast

import asyncpg
import uvicorn
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from faust.types import TP

from shared import kafka, replays, tracing
from shared.broker_watch import WATCH_INTERVAL_S, BrokerWatch
from shared.db import SHARED_MIGRATIONS, Database, ensure_database, migrate
from shared.events.catalog import event_type
from shared.inbox import DeadLetters, EventProcessor, Handler
from shared.logs import configure_logging
from shared.openapi import install_documented_problems
from shared.org import cached_organisation
from shared.outbox import OutboxRelay, prune_history
from shared.settings import Settings, get_settings
from shared.streaming import StreamApp, create_stream_app, record_consumer_lag, subscribe
from shared.topology import SERVICES, published_topics
from shared.web import CurrentPrincipal, RequestContextMiddleware, install_error_handlers, install_probes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceDefinition:
    name: str
    routers: Sequence[APIRouter] = ()
    migrations: Path | None = None
    # consumed event type -> handler; the topics to subscribe follow from the types
    handlers: Mapping[str, Handler] = field(default_factory=dict)

    @property
    def consumed_topics(self) -> list[str]:
        return sorted({event_type(t).topic for t in self.handlers})

    @property
    def consumer_group(self) -> str:
        return f"funnelcast-{self.name}"


class StopDeadline:
    """The grace period of a stop as one budget, counted from the signal: each stage of the stop takes
    what the stages before it left."""

    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self._clock = clock
        self._at = clock() + grace_s

    def left(self) -> float:
        """Seconds left of the grace period; 0 once it has run out."""
        return max(0.0, self._at - self._clock())


class ServiceRuntime:
    """The running parts of one service process."""

    def __init__(self, definition: ServiceDefinition, settings: Settings) -> None:
        self.definition = definition
        self.settings = settings
        self.db: Database | None = None
        self.producer: AIOKafkaProducer | None = None
        self.relay: OutboxRelay | None = None
        self.stream: StreamApp | None = None
        self.watch: BrokerWatch | None = None
        self.stream_broker: str | None = None  # the cluster id of the broker the stream app reads
        self.broker_connected = False
        self._watcher: asyncio.Task[None] | None = None
        self._connector: asyncio.Task[None] | None = None
        self._lag_reporter: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._stop_deadline: StopDeadline | None = None

    def stopping(self) -> StopDeadline:
        """The deadline of the stop under way: set when the signal arrived (`ServiceServer`), or by this
        first call when the service is stopped without one (tests)."""
        if self._stop_deadline is None:
            self._stop_deadline = StopDeadline(self.settings.shutdown_grace_s)
        return self._stop_deadline

    async def start(self) -> None:
        name = self.definition.name
        self.producer = kafka.producer(self.settings)
        await ensure_database(self.settings.server_url, SERVICES[name].database)
        self.db = await Database.open(
            self.settings.database_url_for(name), SERVICES[name].source, pool_size=self.settings.db_pool_size
        )
        async with self.db.pool.acquire() as conn:
            directories = [SHARED_MIGRATIONS] + ([self.definition.migrations] if self.definition.migrations else [])
            await migrate(conn, *directories)
        self.watch = BrokerWatch(self.settings.kafka_bootstrap_servers, self.settings.kafka_request_timeout_ms)
        self.relay = OutboxRelay(
            self.db.pool,
            self.producer,
            batch_size=self.settings.relay_batch_size,
            idle_poll_s=self.settings.relay_idle_poll_s,
            max_backoff_s=self.settings.relay_max_backoff_s,
            prepare_broker=lambda: kafka.ensure_topics(self.settings),
            watch=self.watch,
        )
        if self.definition.handlers:
            self.stream = self._new_stream_app()
        self._connector = asyncio.create_task(self._connect_broker(), name="connect-broker")
        self._pruner = asyncio.create_task(self._prune_outbox_history(), name="prune-outbox")

    def _new_stream_app(self) -> StreamApp:
        assert self.db is not None and self.producer is not None
        stream = create_stream_app(self.definition.name, self.settings)
        processor = EventProcessor(
            self.db,
            self.definition.consumer_group,
            dict(self.definition.handlers),
            DeadLetters(self.producer, self.definition.consumer_group),
        )
        subscribe(stream, processor, self.definition.consumed_topics)
        return stream

    async def _watch_broker(self) -> None:
        """A new, empty broker (another cluster id): consume it with a new Faust app from offset 0
        (shared/broker_watch.py), once the topics exist again. An app that has waited for its
        partitions far longer than a group join takes is replaced as well."""
        assert self.watch is not None
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                identity = await self.watch.identity()
                if self.stream_broker is None:
                    self.stream_broker = identity
                    continue
                if identity == self.stream_broker:
                    await self._replace_stuck_stream()  # only while the broker answers: it may be away
                    continue
                log.warning("the broker is a new one (cluster id %s, was %s): consuming it from the start",
                            identity, self.stream_broker)
                await kafka.ensure_topics(self.settings)
            except (KafkaError, OSError) as exc:
                log.debug("broker watch: %r", exc)
                continue
            try:
                await self._restart_stream(trusted_offsets=set())
            except Exception:  # noqa: BLE001 - keep watching: the next round starts another app
                log.exception("could not start consuming the new broker; retrying")
                continue
            self.stream_broker = identity

    async def _replace_stuck_stream(self) -> None:
        """Seen on the embedded broker, now and then, after it restarted: the new app never got its
        partitions (its group join never completed). A new app joins afresh."""
        assert self.stream is not None
        waited = self.stream.waiting_for_partitions()
        if waited < self.settings.stream_assignment_deadline_s:
            return
        log.warning("the consumer has waited %.0f s for its partitions: starting a new one", waited)
        trusted = self.stream.trusted_offsets
        try:
            await self._restart_stream(trusted_offsets=None if trusted is None else set(trusted))
        except Exception:  # noqa: BLE001 - keep watching: the next round starts another app
            log.exception("could not start a new consumer; retrying")

    async def _restart_stream(self, trusted_offsets: set[TP] | None) -> None:
        """Replace the Faust app by a new one; `trusted_offsets` as StreamApp.trusted_offsets."""
        old, self.stream = self.stream, self._new_stream_app()
        if old is not None:
            old.superseded = True  # even if stopping it takes longer than the grace period
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), timeout=self.settings.shutdown_grace_s)
        self.stream.trusted_offsets = trusted_offsets
        self.stream.finalize()
        await self.stream.start()

    async def _prune_outbox_history(self) -> None:
        """Keep the outbox history for the configured retention; check hourly."""
        assert self.db is not None
        while True:
            try:
                pruned = await prune_history(self.db.pool, self.settings.outbox_retention_days)
                if pruned:
                    log.info("pruned %d published events past the retention", pruned)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("could not prune the outbox history: %s", exc)
            await asyncio.sleep(3600)

    async def _connect_broker(self) -> None:
        backoff = 0.2
        assert self.producer is not None
        while True:
            try:
                await kafka.ensure_topics(self.settings)
                await self.producer.start()
                break
            except (KafkaError, OSError) as exc:
                log.warning("broker not reachable yet (%r); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self.broker_connected = True
        assert self.relay is not None
        self.relay.start()
        if self.stream is not None:
            assert self.watch is not None
            with contextlib.suppress(KafkaError, OSError):
                self.stream_broker = await self.watch.identity()
            self.stream.finalize()
            await self.stream.start()
            self._watcher = asyncio.create_task(self._watch_broker(), name="watch-broker")
            self._lag_reporter = asyncio.create_task(self._report_lag(), name="consumer-lag")
        freeze_start_up_objects()

    async def _report_lag(self) -> None:
        assert self.stream is not None
        while True:
            await asyncio.sleep(5)
            with contextlib.suppress(Exception):
                record_consumer_lag(self.stream, self.definition.consumer_group)

    async def stop(self) -> None:
        """The last stages of a stop, within what is left of its grace period: stop consuming (the
        offsets of what was applied commit), then flush the relay (what the handlers wrote); then close."""
        deadline = self.stopping()
        for task in (self._watcher, self._lag_reporter, self._connector, self._pruner):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.stream is not None and self.broker_connected:
            await self._stop_consuming(deadline)
        if self.relay is not None:
            await self.relay.stop(flush_timeout=deadline.left())
        if self.producer is not None and self.broker_connected:
            with contextlib.suppress(Exception):
                await self.producer.stop()
        if self.watch is not None:
            await self.watch.close()
        if self.db is not None:
            try:
                await asyncio.wait_for(self.db.close(), timeout=deadline.left())
            except TimeoutError:  # a stage cut short may still hold a connection: its transaction rolls back
                self.db.terminate()
        # A process may start a service again (tests): its next stop has a budget of its own, and what
        # this start-up built is garbage now.
        self._stop_deadline = None
        gc.unfreeze()

    async def _stop_consuming(self, deadline: StopDeadline) -> None:
        assert self.stream is not None
        try:
            await asyncio.wait_for(self.stream.stop(), timeout=deadline.left())
        except TimeoutError:
            log.warning("stopping: the consumer's stop was cut short, the grace period (%.1f s) ran out; the"
                        " events applied since its last commit will be consumed again (the inbox skips them)",
                        deadline.grace_s)
        except Exception:  # noqa: BLE001 - e.g. the broker went away: its offsets are consumed again all the same
            log.warning("stopping: the consumer did not stop cleanly", exc_info=True)

    async def readiness(self) -> dict[str, str]:
        problems: dict[str, str] = {}
        if self.db is None or not await self.db.ping():
            problems["database"] = "unreachable"
        if not self.broker_connected:
            problems["broker"] = "not connected"
        elif not await self._broker_answers():
            problems["broker"] = "unreachable"
        if self.stream is not None and self.stream.agent_failure:
            problems["consumer"] = f"agent crashed: {self.stream.agent_failure}"
        return problems

    async def _broker_answers(self) -> bool:
        assert self.producer is not None
        client = self.producer.client
        try:
            await asyncio.wait_for(client.fetch_all_metadata(), timeout=2)
            return True
        except (KafkaError, OSError, TimeoutError):
            return False


def freeze_start_up_objects() -> None:
    """Leave what start-up built (modules, classes, the web app, the Faust app, pools: about 110,000
    objects in the scoring service) out of every later garbage collection.

    Python's full (generation 2) collection walks every tracked object, and one runs each time enough
    new objects have survived: in the scoring service at 500 events/s that was a pause of 70-170 ms of
    CPU every several seconds, during which no event moved (the tail of bench/scoring.py's latency).
    Frozen objects are still freed by reference counting; only cycles among them are not collected
    while they are frozen (until the service stops; a Faust app replaced after a broker restart stays
    frozen). What is garbage now is collected first."""
    gc.collect()
    gc.freeze()


identity = APIRouter(prefix="/v1", tags=["identity"])


@identity.get("/me")
async def whoami(principal: CurrentPrincipal) -> dict[str, str | None]:
    """Who the bearer token says the caller is, as this service sees them."""
    return {"user_id": principal.user_id, "role": principal.role, "team": principal.team}


def create_service_app(definition: ServiceDefinition, settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    runtime = ServiceRuntime(definition, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.auth_secret is None:
            log.warning("FUNNELCAST_AUTH_SECRET is not set: tokens are signed with the public dev secret")
        if tracing.configure_tracing(definition.name):
            log.info("exporting spans to the OTLP endpoint of OTEL_EXPORTER_OTLP_ENDPOINT")
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()
            await asyncio.to_thread(tracing.shutdown_tracing)  # exports what is buffered

    app = FastAPI(
        title=f"Funnelcast {definition.name}",
        version="1",
        description=f"Owns {SERVICES[definition.name].owns}.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.org = cached_organisation(settings.org_file)
    app.state.runtime = runtime
    install_error_handlers(app)
    install_documented_problems(app)
    install_probes(app, runtime.readiness)
    app.include_router(identity)
    if published_topics(definition.name):  # its outbox history can be replayed to subscribers
        app.include_router(replays.router)
    for router in definition.routers:
        app.include_router(router)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.cors_origin_list:  # browsers elsewhere may call the APIs only from the origins named
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "If-Match", "traceparent", "X-Correlation-Id"],
            expose_headers=["ETag", "Location", "Retry-After"],
        )
    return app


async def database(request: Request) -> Database:
    db: Database | None = request.app.state.runtime.db
    assert db is not None, "the service has not started"
    return db


ServiceDatabase = Annotated[Database, Depends(database)]


# How long an idle keep-alive connection is kept open. HTTP clients keep idle connections for a while
# (httpx 5 s, aiohttp 15 s, browsers 60 s or more) and reuse them unasked; a server that closes one first
# races the client's next request on it, which then fails with a connection reset (httpx.ReadError) and
# is not retried. uvicorn's default is 5 s, exactly httpx's: under load the race was lost often enough to
# abort benchmarks. Outlasting the clients makes them close idle connections first.
HTTP_KEEP_ALIVE_S = 75


class ServiceServer(uvicorn.Server):
    """uvicorn's server, its stop timed by the service's `StopDeadline`: the deadline is set when the signal
    arrives, and the HTTP drain (the stop's first stage) has what is left of it."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.runtime: ServiceRuntime = cast(FastAPI, config.app).state.runtime

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.runtime.stopping()  # the budget starts now, not when uvicorn's loop next looks (up to 0.1 s later)
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn types it int, but hands it to asyncio.wait_for, which takes seconds as a float
        self.config.timeout_graceful_shutdown = self.runtime.stopping().left()  # type: ignore[assignment]
        await super().shutdown(sockets)


def server_config(definition: ServiceDefinition, settings: Settings, process: str | None = None) -> uvicorn.Config:
    """The uvicorn configuration one service process runs with; `process`: a worker of the service
    (shared/topology.py WORKERS), on the worker's port."""
    return uvicorn.Config(
        create_service_app(definition, settings),
        host=settings.host,
        port=settings.port_for(process or definition.name),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
        timeout_keep_alive=HTTP_KEEP_ALIVE_S,
    )


def serve(definition: ServiceDefinition, process: str | None = None) -> None:
    """Run one service process (`python -m services.<name>`), or one of its workers' (`process`: its name
    in shared/topology.py WORKERS, which gives its port and names its log lines)."""
    settings = get_settings()
    configure_logging(process or definition.name, settings.log_level)
    server = ServiceServer(server_config(definition, settings, process))
    server.run()
    if not server.started:
        sys.exit(3)  # what uvicorn.run exits with when the server failed to start
