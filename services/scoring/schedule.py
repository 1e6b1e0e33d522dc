"""Training on a schedule: the lead model retrains in the background once enough new outcomes arrived.

Started with the service (a lifespan of the models router, inside the service's own, so the database
is open); it waits `FUNNELCAST_SCORING_TRAIN_INTERVAL_S` (default 3600) between checks and trains when
at least `FUNNELCAST_SCORING_TRAIN_MIN_NEW_OUTCOMES` (default 100) lead outcomes were observed since
the newest model's training window. Promotion follows the same held-out rule as on demand.
"""

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from fastapi import FastAPI

from services.scoring import handlers

log = logging.getLogger(__name__)


def _interval_s() -> float:
    return float(os.environ.get("FUNNELCAST_SCORING_TRAIN_INTERVAL_S", "3600"))


def _min_new_outcomes() -> int:
    return int(os.environ.get("FUNNELCAST_SCORING_TRAIN_MIN_NEW_OUTCOMES", "100"))


async def _train_on_schedule(runtime: Any) -> None:
    while True:
        await asyncio.sleep(_interval_s())
        if runtime.db is None:
            continue
        try:
            model = await handlers.train_lead_model_if_due(runtime.db, _min_new_outcomes())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("scheduled training failed: %s", exc)
            continue
        if model is not None:
            log.info("scheduled training: model %s, AUC %.3f, promoted %s", model["version"], model["auc"],
                     model["promoted"])


@contextlib.asynccontextmanager
async def scheduled_training(app: FastAPI) -> AsyncIterator[None]:
    task = asyncio.create_task(_train_on_schedule(app.state.runtime), name="scheduled-training")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
