"""Group commit (shared/group_commit.py) against the real Postgres: the same statement of concurrent
requests runs once for all of them, each request gets its own result, and an item the server refuses
fails alone."""

import asyncio
import contextvars
from collections.abc import Sequence

import asyncpg
import pytest

from shared.db import Connection, Database
from tests.support.waiting import eventually

statements_run: list[int] = []
a_statement_started = asyncio.Event()


async def insert_numbers(conn: Connection, numbers: Sequence[str]) -> list[int]:
    """Each text as an integer row (a text that is no integer makes the server refuse the statement);
    each row's id."""
    statements_run.append(len(numbers))
    a_statement_started.set()
    rows = await conn.fetch(
        "INSERT INTO numbers (n) SELECT n::integer FROM unnest($1::text[]) WITH ORDINALITY AS given (n, nth)"
        " ORDER BY nth RETURNING id",
        list(numbers),
    )
    return [row["id"] for row in rows]


@pytest.fixture
async def numbers_db(db: Database) -> Database:
    await db.pool.execute("CREATE TABLE numbers (id serial PRIMARY KEY, n integer NOT NULL)")
    statements_run.clear()
    a_statement_started.clear()
    return db


async def stored(db: Database) -> list[int]:
    return [row["n"] for row in await db.pool.fetch("SELECT n FROM numbers ORDER BY n")]


async def test_a_lone_item_is_run_at_once_in_a_batch_of_its_own(numbers_db: Database) -> None:
    assert await numbers_db.batched(insert_numbers, "7") == 1
    assert statements_run == [1]


async def test_concurrent_items_share_statements_and_each_gets_its_own_result(numbers_db: Database) -> None:
    first = asyncio.create_task(numbers_db.batched(insert_numbers, "0"))
    await a_statement_started.wait()  # the first item's statement is on its way
    ids = [*await asyncio.gather(first, *(numbers_db.batched(insert_numbers, str(n)) for n in range(1, 100)))]

    assert statements_run == [1, 99]  # the other 99 gathered while the first ran
    rows = {row["id"]: row["n"] for row in await numbers_db.pool.fetch("SELECT id, n FROM numbers")}
    assert [rows[i] for i in ids] == list(range(100))


async def test_two_statements_run_at_once_and_the_items_arriving_meanwhile_wait_for_one(
    numbers_db: Database,
) -> None:
    running: list[list[str]] = []
    go_on = asyncio.Event()

    async def statements_running(count: int) -> bool:
        return len(running) == count

    async def held_until_told(conn: Connection, items: Sequence[str]) -> list[str]:
        running.append(list(items))
        await go_on.wait()
        return list(items)

    first = asyncio.create_task(numbers_db.batched(held_until_told, "1"))
    await eventually(lambda: statements_running(1), interval=0.001)
    second = asyncio.create_task(numbers_db.batched(held_until_told, "2"))
    await eventually(lambda: statements_running(2), interval=0.001)  # started at once, beside the first
    waiting = [asyncio.create_task(numbers_db.batched(held_until_told, str(n))) for n in range(3, 6)]
    await asyncio.sleep(0.05)
    assert running == [["1"], ["2"]]  # both statements busy: the other three wait

    go_on.set()
    assert await asyncio.gather(first, second, *waiting) == ["1", "2", "3", "4", "5"]
    assert running[2:] == [["3", "4", "5"]]


async def test_an_item_the_server_refuses_fails_alone(numbers_db: Database) -> None:
    results = await asyncio.gather(
        *(numbers_db.batched(insert_numbers, text) for text in ("1", "2", "not a number", "4")),
        return_exceptions=True,
    )

    assert isinstance(results[2], asyncpg.InvalidTextRepresentationError)
    assert not any(isinstance(result, BaseException) for i, result in enumerate(results) if i != 2)
    assert await stored(numbers_db) == [1, 2, 4]
    assert statements_run == [4, 1, 1, 1, 1]  # the refused batch, then each of its items alone


async def test_an_error_not_of_the_items_fails_the_whole_batch_at_once(numbers_db: Database) -> None:
    attempts: list[list[str]] = []

    async def connection_lost(conn: Connection, items: Sequence[str]) -> list[str]:
        attempts.append(list(items))
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    results = await asyncio.gather(
        *(numbers_db.batched(connection_lost, text) for text in ("1", "2", "3")), return_exceptions=True
    )

    assert all(isinstance(result, asyncpg.ConnectionDoesNotExistError) for result in results)
    assert attempts == [["1", "2", "3"]]  # not tried again item by item


async def test_a_request_cancelled_while_its_item_waits_writes_nothing(numbers_db: Database) -> None:
    first = asyncio.create_task(numbers_db.batched(insert_numbers, "1"))
    withdrawn = asyncio.create_task(numbers_db.batched(insert_numbers, "2"))
    kept = asyncio.create_task(numbers_db.batched(insert_numbers, "3"))
    await asyncio.sleep(0)  # all three queued, their batch not yet sent
    withdrawn.cancel()

    await asyncio.gather(first, kept)
    assert withdrawn.cancelled()
    assert await stored(numbers_db) == [1, 3]
    assert statements_run == [2]


async def test_closing_the_database_first_writes_the_items_queued(numbers_db: Database) -> None:
    queued = [asyncio.create_task(numbers_db.batched(insert_numbers, str(n))) for n in range(5)]
    await asyncio.sleep(0)  # queued, their batch not yet sent
    await numbers_db.close()

    ids = [await task for task in queued]
    assert len(set(ids)) == 5
    assert statements_run == [5]


request_name: contextvars.ContextVar[str] = contextvars.ContextVar("request_name", default="none")


async def test_a_batch_runs_in_no_request_s_context(numbers_db: Database) -> None:
    seen: list[str] = []

    async def note_context(conn: Connection, items: Sequence[str]) -> list[str]:
        seen.append(request_name.get())
        return list(items)

    async def request(name: str) -> str:
        request_name.set(name)  # e.g. the trace or the cause of the request's events
        return await numbers_db.batched(note_context, name)

    assert await asyncio.gather(request("first"), request("second")) == ["first", "second"]
    assert seen == ["none"]


async def plan_cache_modes(conn: Connection, items: Sequence[None]) -> list[str]:
    mode = await conn.fetchval("SELECT current_setting('plan_cache_mode')")
    return [mode for _ in items]


async def test_batched_statements_are_planned_once_for_any_batch_other_statements_as_usual(db: Database) -> None:
    # A batch's plan follows its arrays, not their values; left to choose, Postgres re-planned the capture
    # check for every batch.
    assert await db.batched(plan_cache_modes, None) == "force_generic_plan"
    async with db.statements() as conn:
        assert await conn.fetchval("SELECT current_setting('plan_cache_mode')") == "auto"
