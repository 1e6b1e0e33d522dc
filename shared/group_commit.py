"""Group commit: one statement of many concurrent requests, run once for all of them.

Under load, the requests a process serves at the same moment each run the same short statement (a
lead capture's duplicate check, its insert with its events; a deal's load, its stage move). Run one by
one, each costs a round trip, a commit and the wake-ups of both processes; at a thousand captures a
second that is most of the CPU the service and Postgres spend. A `GroupCommit` queues the items of the
requests and runs the items queued so far as one statement over all of them, on a pooled connection:
one round trip and one commit. Up to two such statements run at once; while they run the next batch
gathers, so a request waits for nothing until both are busy (its batch of one starts at once) and
batches grow only with the load. With one, every request that found it busy waited for its whole
statement, the disk flush of its commit included: at 500 captures a second that tripled the median
latency of a capture.

A batch the server refuses for what it holds (a bad value, a broken constraint, a deadlock) is run
again item by item, so that the error is the one item's that caused it; any other error (the
connection, the pool, a server shutting down) is every item's of the batch.
"""

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

import asyncpg
from prometheus_client import Histogram

if TYPE_CHECKING:
    from shared.db import Connection, Database

Item = TypeVar("Item")
Result = TypeVar("Result")

_REFUSED_FOR_ITS_CONTENT = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.TransactionRollbackError,  # a deadlock or a serialization failure
)

# `statement`: the batch function's name, e.g. `insert_new_leads`.
batch_size = Histogram(
    "funnelcast_db_batch_size",
    "Items written by one group-committed statement",
    ["statement"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


class GroupCommit(Generic[Item, Result]):
    """`submit(item)` runs `statement(conn, items)` (one result per item, in order) on the items
    submitted meanwhile, at most `max_batch` at a time and at most `in_flight` statements at once."""

    def __init__(
        self,
        db: "Database",
        statement: Callable[["Connection", Sequence[Item]], Awaitable[Sequence[Result]]],
        *,
        max_batch: int = 256,
        in_flight: int = 2,
    ) -> None:
        self._db = db
        self._statement = statement
        self._max_batch = max_batch
        self._in_flight = in_flight
        self._queued: list[tuple[Item, asyncio.Future[Result]]] = []
        self._runners: set[asyncio.Task[None]] = set()
        self._sizes = batch_size.labels(statement.__name__)

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queued.append((item, future))
        if len(self._runners) < self._in_flight:
            # A context of its own: the batch serves many requests, not the one that happened to start it.
            self._runners.add(asyncio.create_task(self._run_queued(), context=contextvars.Context()))
        # A request cancelled while its item waits withdraws it; once sent, the statement runs to its end.
        return await future

    async def close(self) -> None:
        """Wait for the batches being written; a closing service answers its requests."""
        while self._runners:
            await asyncio.shield(next(iter(self._runners)))

    async def _run_queued(self) -> None:
        runner = asyncio.current_task()
        try:
            while self._queued:
                batch = [(item, future) for item, future in self._queued[: self._max_batch] if not future.done()]
                del self._queued[: self._max_batch]
                if batch:
                    self._sizes.observe(len(batch))
                    await self._run(batch)
        finally:
            if runner is not None:
                self._runners.discard(runner)
            if not self._runners:  # items left only when this task was cancelled
                for _, future in self._queued:
                    future.cancel()
                self._queued.clear()

    async def _run(self, batch: list[tuple[Item, "asyncio.Future[Result]"]]) -> None:
        try:
            async with self._db.statements(batched=True) as conn:
                results = await self._statement(conn, [item for item, _ in batch])
        except _REFUSED_FOR_ITS_CONTENT as error:
            if len(batch) == 1:
                _fail(batch[0][1], error)
            else:
                for one in batch:
                    await self._run([one])
        except Exception as error:  # the connection, the pool: every item of the batch failed alike
            for _, future in batch:
                _fail(future, error)
        except BaseException:
            for _, future in batch:
                future.cancel()
            raise
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # its request was cancelled meanwhile
                    future.set_result(result)


def _fail(future: "asyncio.Future[Result]", error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
