"""A service's own database: creation, migrations, and the transaction that carries the outbox.

A handler opens one `Database.transaction()`, changes state through its store, and
`publish`es events; the events are written to the outbox in the same transaction, so
a rolled-back change publishes nothing and a committed one loses nothing.
"""

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from shared.context import current_cause
from shared.events.envelope import CloudEvent, validate
from shared.settings import with_database

log = logging.getLogger(__name__)

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"
# What handlers and stores receive: a plain connection or one lent by the pool.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

OUTBOX_CHANNEL = "funnelcast_outbox"  # notified by the outbox_notify trigger
_MIGRATION_LOCK = 0x46554E4E454C  # any constant: serialises replicas migrating one database


async def ensure_database(server_url: str, database: str) -> None:
    """Create the service's database on the server when it does not exist yet."""
    conn = await asyncpg.connect(with_database(server_url, "postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{database}"')
            except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                pass  # a replica created it first (the race surfaces as either error)
    finally:
        await conn.close()


async def migrate(conn: Connection, *directories: Path) -> list[str]:
    """Apply, in order, every migration not yet recorded; return the names applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        applied = []
        for directory in directories:
            for path in sorted(directory.glob("*.sql")):
                name = f"{directory.parent.name}/{path.name}"
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text(encoding="utf-8"))
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                applied.append(name)
                log.info("applied migration %s", name)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


class Transaction:
    """One database transaction of a handler: the connection and the events it will publish."""

    def __init__(self, conn: Connection, source: str) -> None:
        self.conn = conn
        self.source = source
        self.events: list[CloudEvent] = []
        # Set by the inbox when consuming: every event this transaction applies, in order, so a
        # handler may load what the whole batch needs at once (empty outside consumption).
        self.batch: Sequence[CloudEvent] = ()
        # Handlers' scratch space for this transaction (rows loaded once for the batch ...).
        self.state: dict[str, Any] = {}
        self._before_commit: list[Callable[[], Awaitable[None]]] = []

    def before_commit(self, action: Callable[[], Awaitable[None]]) -> None:
        """Run `action` in this transaction after the handlers, before the outbox write and commit."""
        self._before_commit.append(action)

    def publish(self, type_: str, subject: str, data: dict[str, Any], *, sequence: int | None = None) -> CloudEvent:
        """Queue an event for the outbox; it is checked against its schema now, refused if invalid."""
        cause = current_cause.get()
        event = CloudEvent(
            type=type_,
            source=self.source,
            subject=subject,
            data=data,
            sequence=sequence,
            correlationid=cause.correlation_id if cause else None,
            causationid=cause.causation_id if cause else None,
            traceparent=cause.traceparent if cause else None,
        )
        validate(event)
        self.events.append(event)
        return event

    async def _write_outbox(self) -> None:
        if not self.events:
            return
        await self.conn.executemany(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, topic, payload)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            [(e.id, e.type.split(".")[1], e.subject, e.type, e.topic, e.to_json()) for e in self.events],
        )  # the outbox_notify trigger wakes the relay at commit (migrations/0002)


class Database:
    def __init__(self, pool: asyncpg.Pool, source: str) -> None:
        self.pool = pool
        self.source = source

    @classmethod
    async def open(cls, url: str, source: str, *, pool_size: int = 10) -> "Database":
        pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size)
        return cls(pool, source)

    async def close(self) -> None:
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A transaction whose published events reach the outbox only if it commits."""
        async with self.pool.acquire() as conn, conn.transaction():
            tx = Transaction(conn, self.source)
            yield tx
            for action in tx._before_commit:
                await action()
            await tx._write_outbox()

    async def ping(self) -> bool:
        try:
            async with self.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1")
            return True
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
