"""Replays for subscribers: `POST /v1/replays` re-publishes a slice of the outbox history.

Every service that publishes events gets this router (shared/service.py). A replay sends the
same events again (same ids, so a consumer that saw them skips them) in commit order, keyed by
aggregate id as the relay does, to each event's own topic or to a named target topic. It runs in
the background; the `replays` table (shared migration 0003) holds what was asked and how far it
got, so `GET /v1/replays/{id}` answers on any replica.
"""

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import AwareDatetime, BaseModel, Field

from shared.auth import Principal
from shared.errors import DomainError, NotFound, Unprocessable
from shared.events.catalog import EVENT_TYPES
from shared.org import Role
from shared.outbox import OutboxRelay
from shared.topology import TOPICS, all_topic_names
from shared.web import require_roles

log = logging.getLogger(__name__)

# Kafka's own rule for topic names.
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_PROGRESS_EVERY_S = 0.5


class ReplayRequest(BaseModel):
    since: AwareDatetime = Field(description="Replay events committed at or after this time (RFC 3339).")
    until: AwareDatetime | None = Field(
        None, description="... and before this time; default: the time of the request."
    )
    event_types: list[str] | None = Field(
        None, description="Only these types (default: every type this service publishes)."
    )
    target_topic: str | None = Field(
        None, description="Send every event to this topic instead of its own (a subscriber's private topic)."
    )


class Replay(BaseModel):
    id: str
    status: str = Field(description="running, done, failed or interrupted (the service stopped first).")
    count: int = Field(description="Events in the range when the replay was accepted.")
    sent: int = Field(description="Events sent so far.")
    since: datetime
    until: datetime
    event_types: list[str] | None
    target_topic: str | None
    requested_by: str
    created_at: datetime
    finished_at: datetime | None
    error: str | None


class BrokerUnavailable(DomainError):
    status = 503
    title = "Service Unavailable"


class ReplayRunning(DomainError):
    status = 409
    title = "Conflict"


def _utc(moment: datetime, name: str) -> datetime:
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise Unprocessable(f"{name} is out of range") from None


def _checked(body: ReplayRequest, service: str, now: datetime) -> tuple[datetime, datetime, list[str] | None]:
    since = _utc(body.since, "since")
    until = _utc(body.until, "until") if body.until is not None else now
    if until <= since:
        raise Unprocessable("until must be later than since")
    own_types = {e.type for e in EVENT_TYPES.values() if TOPICS[e.topic].publisher == service}
    if body.event_types is not None:
        foreign = sorted(set(body.event_types) - own_types)
        if foreign:
            raise Unprocessable(
                f"this service ({service}) does not publish {', '.join(foreign)}; it publishes "
                f"{', '.join(sorted(own_types)) or 'nothing yet'}"
            )
    if body.target_topic is not None:
        if not _TOPIC_NAME.match(body.target_topic):
            raise Unprocessable(f"{body.target_topic!r} is not a valid Kafka topic name")
        if body.target_topic in all_topic_names():
            raise Unprocessable(
                f"{body.target_topic} is one of Funnelcast's own topics; leave target_topic out to replay "
                f"to each event's own topic"
            )
    return since, until, sorted(set(body.event_types)) if body.event_types else None


async def _row(pool: asyncpg.Pool, replay_id: uuid.UUID) -> Replay | None:
    row = await pool.fetchrow("SELECT * FROM replays WHERE id = $1", replay_id)
    return None if row is None else _replay(row)


def _replay(row: asyncpg.Record) -> Replay:
    values: dict[str, Any] = dict(row)
    values["id"] = str(values["id"])
    return Replay(**values)


async def _run(relay: OutboxRelay, replay_id: uuid.UUID, body: ReplayRequest, since: datetime, until: datetime,
               event_types: list[str] | None) -> None:
    pool = relay.pool
    last_saved = 0.0
    loop = asyncio.get_running_loop()

    async def progress(sent: int) -> None:
        nonlocal last_saved
        if loop.time() - last_saved >= _PROGRESS_EVERY_S:
            last_saved = loop.time()
            await pool.execute("UPDATE replays SET sent = $2 WHERE id = $1", replay_id, sent)

    try:
        sent = await relay.replay(since, until, event_types, body.target_topic, progress)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.shield(pool.execute(
                "UPDATE replays SET status = 'interrupted', finished_at = now() WHERE id = $1", replay_id
            ))
        raise
    except (KafkaError, OSError, asyncpg.PostgresError) as exc:
        log.error("replay %s failed: %r", replay_id, exc)
        await pool.execute(
            "UPDATE replays SET status = 'failed', error = $2, finished_at = now() WHERE id = $1",
            replay_id, repr(exc)[:2000],
        )
        return
    await pool.execute(
        "UPDATE replays SET status = 'done', sent = $2, finished_at = now() WHERE id = $1", replay_id, sent
    )
    log.info("replay %s done: %d events", replay_id, sent)


@contextlib.asynccontextmanager
async def _replay_tasks(app: FastAPI) -> AsyncIterator[None]:
    """Replays run as tasks of the service; a stopping service marks the unfinished ones interrupted."""
    tasks: set[asyncio.Task[None]] = set()
    app.state.replay_tasks = tasks
    app.state.replay_lock = asyncio.Lock()
    try:
        yield
    finally:
        for task in list(tasks):
            task.cancel()
        for task in list(tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


router = APIRouter(prefix="/v1/replays", tags=["replays"], lifespan=_replay_tasks)
Operator = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.INTEGRATION))]


def _relay(request: Request) -> OutboxRelay:
    runtime = request.app.state.runtime
    if runtime.relay is None or not runtime.broker_connected:
        raise BrokerUnavailable("the broker is not connected yet; try again shortly")
    relay: OutboxRelay = runtime.relay
    return relay


@router.post("", status_code=202, response_model=Replay)
async def start_replay(body: ReplayRequest, request: Request, principal: Operator) -> Replay:
    """Re-publish this service's events of [since, until) in commit order (admin or integration).
    One replay at a time per instance: a second while one runs is refused (409)."""
    service: str = request.app.state.runtime.definition.name
    since, until, event_types = _checked(body, service, datetime.now(UTC))
    relay = _relay(request)
    tasks: set[asyncio.Task[None]] = request.app.state.replay_tasks
    async with request.app.state.replay_lock:  # the check and the start, one request at a time
        if tasks:
            raise ReplayRunning("a replay is running on this instance; follow it with GET /v1/replays/{id}")
        return await _start(relay, tasks, principal, body, since, until, event_types)


async def _start(relay: OutboxRelay, tasks: set[asyncio.Task[None]], principal: Principal, body: ReplayRequest,
                 since: datetime, until: datetime, event_types: list[str] | None) -> Replay:
    replay_id = uuid.uuid4()
    async with relay.pool.acquire() as conn, conn.transaction():
        count = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE created_at >= $1 AND created_at < $2"
            " AND ($3::text[] IS NULL OR type = ANY($3)) AND published_at IS NOT NULL",
            since, until, event_types,
        )
        row = await conn.fetchrow(
            "INSERT INTO replays (id, requested_by, since, until, event_types, target_topic, count)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
            replay_id, principal.user_id, since, until, event_types, body.target_topic, count,
        )
        assert row is not None
    task = asyncio.create_task(_run(relay, replay_id, body, since, until, event_types), name=f"replay-{replay_id}")
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    log.info("replay %s of %d events requested by %s", replay_id, count, principal.user_id)
    return _replay(row)


@router.get("/{replay_id}", response_model=Replay)
async def replay_progress(replay_id: uuid.UUID, request: Request, _: Operator) -> Replay:
    """A replay's progress: `sent` of `count`, and its status."""
    replay = await _row(request.app.state.runtime.db.pool, replay_id)
    if replay is None:
        raise NotFound(f"no replay {replay_id}")
    return replay


@router.get("", response_model=list[Replay])
async def recent_replays(request: Request, _: Operator) -> list[Replay]:
    """The 50 most recent replays of this service."""
    rows = await request.app.state.runtime.db.pool.fetch("SELECT * FROM replays ORDER BY created_at DESC LIMIT 50")
    return [_replay(row) for row in rows]
