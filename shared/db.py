"""A service's own database: creation, migrations, and the transaction that carries the outbox.

A handler opens one `Database.transaction()`, changes state through its store, and
`publish`es events; the events are written to the outbox in the same transaction, so
a rolled-back change publishes nothing and a committed one loses nothing.
"""

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import asyncpg

from shared.context import current_cause
from shared.events.envelope import CloudEvent, validate
from shared.group_commit import GroupCommit
from shared.settings import with_database

log = logging.getLogger(__name__)

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"
# What handlers and stores receive: a plain connection or one lent by the pool.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

Item = TypeVar("Item")
Result = TypeVar("Result")

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

    def end(self) -> None:
        """Drop the handlers' scratch state and actions once the transaction is over. They refer back to
        the transaction (a working set holding it, a closure over it), so left in place every
        transaction with its batch's loaded rows, scores and events would be a reference cycle, freed
        only by Python's cyclic garbage collector: long after, many at once, in pauses that stopped
        the scoring service's consumer for 40-90 ms of CPU (bench/scoring.py; services/scoring/README.md)."""
        self.state.clear()
        self._before_commit.clear()

    def publish(self, type_: str, subject: str, data: dict[str, Any], *, sequence: int | None = None) -> CloudEvent:
        """Queue an event for the outbox; it is checked against its schema now, refused if invalid."""
        event = new_event(self.source, type_, subject, data, sequence=sequence)
        self.events.append(event)
        return event

    async def _write_outbox(self) -> None:
        if not self.events:
            return
        await self.conn.executemany(
            "INSERT INTO outbox (id, aggregatetype, aggregateid, type, topic, payload)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            [_outbox_row(e) for e in self.events],
        )  # the outbox_notify trigger wakes the relay at commit (migrations/0002)


def new_event(
    source: str, type_: str, subject: str, data: dict[str, Any], *, sequence: int | None = None
) -> CloudEvent:
    """An event caused by the request or event being handled, checked against its schema (InvalidEvent)."""
    cause = current_cause.get()
    event = CloudEvent(
        type=type_,
        source=source,
        subject=subject,
        data=data,
        sequence=sequence,
        correlationid=cause.correlation_id if cause else None,
        causationid=cause.causation_id if cause else None,
        traceparent=cause.traceparent if cause else None,
    )
    validate(event)
    return event


def _outbox_row(event: CloudEvent) -> tuple[str, str, str, str, str, str]:
    return event.id, event.type.split(".")[1], event.subject, event.type, event.topic, event.to_json()


def outbox_insert(
    events: Sequence[CloudEvent], *, after: str, first_parameter: int, by_subject: bool = False
) -> tuple[str, list[Any]]:
    """A data-modifying CTE, `outbox_rows AS (...)`, writing `events` to the outbox only when the CTE named
    `after` returned a row, and its arguments (numbered from `first_parameter`). With it, a change made by
    one statement (e.g. `WITH saved AS (UPDATE ... WHERE version = $2 RETURNING *), <this> SELECT * FROM
    saved`) writes its events in its own implicit transaction: no BEGIN and COMMIT round trips, and no
    event for a change that did not happen. `by_subject`: a statement changing many rows, whose `after`
    returns the `id` of each row it changed; an event is written only when its subject is one of them."""
    n = first_parameter
    # Only parameter numbers and the caller's CTE name are put in the text.
    written = f"e.aggregateid IN (SELECT id FROM {after})" if by_subject else f"EXISTS (SELECT FROM {after})"  # noqa: S608
    sql = (
        "outbox_rows AS (INSERT INTO outbox (id, aggregatetype, aggregateid, type, topic, payload)"  # noqa: S608
        " SELECT id, aggregatetype, aggregateid, type, topic, payload::jsonb FROM unnest("
        f"${n}::uuid[], ${n + 1}::text[], ${n + 2}::text[], ${n + 3}::text[], ${n + 4}::text[], ${n + 5}::text[])"
        " WITH ORDINALITY AS e (id, aggregatetype, aggregateid, type, topic, payload, nth)"
        # In the events' order, whatever the plan: their positions are the order they are published in.
        f" WHERE {written} ORDER BY nth)"  # the outbox_notify trigger wakes the relay at commit
    )
    columns = [list(column) for column in zip(*(_outbox_row(e) for e in events), strict=True)] or [[]] * 6
    return sql, columns


class _PooledConnection(asyncpg.Connection):
    """A connection of a `Database.open` pool: it may go back to the pool without asyncpg's reset."""

    reset_on_release = True

    def release_without_reset(self) -> None:
        self.reset_on_release = False


async def _reset_unless_spared(conn: asyncpg.Connection) -> None:
    """The pool's reset on release (asyncpg has already rolled back any open transaction and dropped the
    listener callbacks): asyncpg's reset query (advisory locks, cursors, LISTEN, settings), a round trip,
    unless the connection was used only in ways that leave no session state (`release_without_reset`)."""
    if isinstance(conn, _PooledConnection) and not conn.reset_on_release:
        conn.reset_on_release = True
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)


class Database:
    def __init__(
        self, pool: asyncpg.Pool, source: str, *, batch_pool: asyncpg.Pool | None = None, spares_resets: bool = False
    ) -> None:
        self.pool = pool
        # Group-committed statements run on connections of their own that plan them once: their plans
        # follow their arrays' lengths, not their values, yet Postgres's cost estimate kept re-planning a
        # capture's duplicate check for every batch (0.37 ms of planning for 0.08 ms of execution).
        self._batch_pool = batch_pool or pool
        self.source = source
        self._spares_resets = spares_resets  # the pools' connections are _PooledConnection (open())
        self._group_commits: dict[Callable[..., Any], GroupCommit[Any, Any]] = {}

    @classmethod
    async def open(cls, url: str, source: str, *, pool_size: int = 10, batch_pool_size: int = 4) -> "Database":
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=pool_size, connection_class=_PooledConnection, reset=_reset_unless_spared
        )
        batch_pool = await asyncpg.create_pool(
            url, min_size=0, max_size=batch_pool_size, connection_class=_PooledConnection,
            reset=_reset_unless_spared, server_settings={"plan_cache_mode": "force_generic_plan"},
        )
        return cls(pool, source, batch_pool=batch_pool, spares_resets=True)

    async def close(self) -> None:
        for group_commit in self._group_commits.values():
            await group_commit.close()
        if self._batch_pool is not self.pool:
            await self._batch_pool.close()
        await self.pool.close()

    def terminate(self) -> None:
        """Close every connection at once: a transaction still running rolls back."""
        if self._batch_pool is not self.pool:
            self._batch_pool.terminate()
        self.pool.terminate()

    def _spare_reset(self, conn: Connection) -> None:
        if self._spares_resets:
            cast(_PooledConnection, conn).release_without_reset()  # a proxy: the call reaches the connection

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A transaction whose published events reach the outbox only if it commits.

        Only transaction-scoped state belongs in it (SET LOCAL, row locks, pg_advisory_xact_lock), never
        session state (SET, session advisory locks, LISTEN): once it commits, its connection goes back to
        the pool without asyncpg's reset query, which saves a round trip per transaction. A transaction
        that fails is reset as usual."""
        async with self.pool.acquire() as conn:
            tx = Transaction(conn, self.source)
            try:
                async with conn.transaction():
                    yield tx
                    for action in tx._before_commit:
                        await action()
                    await tx._write_outbox()
            finally:
                tx.end()
            self._spare_reset(conn)

    @contextlib.asynccontextmanager
    async def statements(self, *, batched: bool = False) -> AsyncIterator[Connection]:
        """A connection for statements that each commit on their own: reads, and a change made by one
        statement that writes its events itself (`event`, `outbox_insert`). The same rule as in a
        transaction: no session state on it, since after a block that ends without an error the connection
        goes back to the pool without asyncpg's reset query. `batched`: for a group-committed statement."""
        async with (self._batch_pool if batched else self.pool).acquire() as conn:
            yield conn
            self._spare_reset(conn)

    async def batched(
        self, statement: Callable[[Connection, Sequence[Item]], Awaitable[Sequence[Result]]], item: Item
    ) -> Result:
        """`statement`'s result for `item`, run in one statement with the items the same statement is given
        by concurrent requests meanwhile (group commit: shared/group_commit.py). `statement` commits on its
        own, as under `statements()`."""
        group_commit = self._group_commits.get(statement)
        if group_commit is None:
            group_commit = self._group_commits[statement] = GroupCommit(self, statement)
        result: Result = await group_commit.submit(item)
        return result

    def event(self, type_: str, subject: str, data: dict[str, Any], *, sequence: int | None = None) -> CloudEvent:
        """An event of this service, for a change that writes it with `outbox_insert`."""
        return new_event(self.source, type_, subject, data, sequence=sequence)

    async def ping(self) -> bool:
        try:
            async with self.pool.acquire(timeout=2) as conn:
                await conn.fetchval("SELECT 1")
            return True
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
