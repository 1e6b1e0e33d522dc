"""Background work on a schedule: training the learned models, re-scoring open leads and opportunities and
re-tiering accounts.

Started with the service (a lifespan of the models router, inside the service's own, so the database
is open):
- training: every `FUNNELCAST_SCORING_TRAIN_INTERVAL_S` (default 3600) a check per kind, lead and
  opportunity; a kind trains when at least `FUNNELCAST_SCORING_TRAIN_MIN_NEW_OUTCOMES` (default 100)
  of its outcomes were observed since its newest model's training window. Promotion follows the same
  held-out rule as on demand.
- re-scoring: every `FUNNELCAST_SCORING_RESCORE_INTERVAL_S` (default 3600) every open opportunity, then
  every open lead, is re-scored as of now, `FUNNELCAST_SCORING_RESCORE_BATCH` (default 500) per
  transaction; only a changed win probability, or a changed lead score or its factors, is published
  (handlers.rescore_open); then every account with a tier is re-tiered as of now, and only a tier
  that time alone moved (a contract past 90 or 365 days) is published (handlers.retier_accounts).
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from fastapi import FastAPI

from services.scoring import handlers
from shared.db import Database
from shared.settings import get_settings

log = logging.getLogger(__name__)


async def _train(db: Database) -> None:
    for kind in handlers.KINDS:
        model = await handlers.train_model_if_due(db, kind, get_settings().scoring_train_min_new_outcomes)
        if model is not None:
            log.info("scheduled training: %s model %s, AUC %.3f, promoted %s", kind, model["version"], model["auc"],
                     model["promoted"])


async def _rescore(db: Database) -> None:
    as_of = datetime.now(UTC)
    for subjects in (handlers.OPEN_OPPORTUNITIES, handlers.OPEN_LEADS):
        done = await handlers.rescore_open(db, subjects, as_of, get_settings().scoring_rescore_batch)
        log.info("re-scored %d open %ss, %d changed", done.examined, subjects.kind, done.rescored)
    done = await handlers.retier_accounts(db, as_of, get_settings().scoring_rescore_batch)
    log.info("re-tiered %d accounts, %d moved", done.examined, done.rescored)


async def _every(runtime: Any, interval_s: Callable[[], float], work: Callable[[Database], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(interval_s())
        if runtime.db is None:
            continue
        try:
            await work(runtime.db)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("scheduled %s failed: %s", work.__name__.strip("_"), exc)


@contextlib.asynccontextmanager
async def scheduled_work(app: FastAPI) -> AsyncIterator[None]:
    runtime = app.state.runtime
    tasks = [asyncio.create_task(_every(runtime, lambda: get_settings().scoring_train_interval_s, _train),
                                 name="scheduled-training"),
             asyncio.create_task(_every(runtime, lambda: get_settings().scoring_rescore_interval_s, _rescore),
                                 name="scheduled-rescoring")]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
