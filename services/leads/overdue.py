"""The follow-ups-overdue gauge, kept current by counting again every FUNNELCAST_LEADS_OVERDUE_REFRESH_S.

The count runs in every instance, from start-up (a lifespan of `lifecycle`, a router inside the service's
own, so the database is open) until it stops; it is one query on an index of the new leads (migration
0005), a few milliseconds for a million leads. Each instance's gauge is the whole database's count, so
Prometheus aggregates instances with `max by (team, grade)`. When a count fails the gauge keeps the
last one and the failure is logged.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
from fastapi import APIRouter, FastAPI

from services.leads import metrics, store
from shared.db import Database

log = logging.getLogger(__name__)

_NONE = "none"  # the label of a lead without a team or a grade


async def refresh(db: Database, as_of: datetime) -> None:
    """Set the gauge to the leads overdue at `as_of`; a (team, grade) that has none left reads 0."""
    async with db.pool.acquire() as conn:
        counts = await store.count_overdue(conn, as_of)
    overdue = {(team or _NONE, grade or _NONE): count for (team, grade), count in counts.items()}
    [family] = metrics.follow_ups_overdue.collect()
    for sample in family.samples:
        overdue.setdefault((sample.labels["team"], sample.labels["grade"]), 0)
    for (team, grade), count in overdue.items():
        metrics.follow_ups_overdue.labels(team=team, grade=grade).set(count)


async def _count_every(db: Database, interval_s: float) -> None:
    while True:
        try:
            await refresh(db, datetime.now(UTC))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("could not count the overdue follow-ups (the gauge keeps its last count): %s", exc)
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def counting(app: FastAPI) -> AsyncIterator[None]:
    runtime = app.state.runtime
    task = asyncio.create_task(_count_every(runtime.db, runtime.settings.leads_overdue_refresh_s),
                               name="count-overdue-follow-ups")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


lifecycle = APIRouter(lifespan=counting)
