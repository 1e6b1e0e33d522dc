"""Stored deals and bookings brought in line with the forecast's current settings at start-up.

A deal's category (FUNNELCAST_FORECAST_COMMIT_STAGES, _BEST_CASE_STAGES, _COMMIT_MIN_PROBABILITY,
_BEST_CASE_MIN_PROBABILITY) and its amount in the reporting currency (FUNNELCAST_FORECAST_CURRENCY and
_RATES) are worked out when its events arrive. After the settings change, the stored deals and bookings
would keep what the old ones made of them until their next event, and the forecast would mix both. So
every instance, as it starts (a lifespan of `lifecycle`, inside the service's own, so the database is
open), reads what the current settings make of each deal and booking and re-writes those that differ,
refreshing and publishing the forecast rows they move, in one transaction. With nothing changed it only
reads: two scans, a few milliseconds for 10,000 deals. Instances starting together restate once: the
first holds a transaction-scoped advisory lock, the next finds nothing left to change.
"""

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from fastapi import APIRouter, FastAPI

from services.forecasting import store
from services.forecasting.config import forecast_settings
from services.forecasting.domain import CategoryRules, Rates, affected_periods, product_key
from services.forecasting.handlers import refresh_booking, schedule_refresh
from shared.db import Database, Transaction

log = logging.getLogger(__name__)

_RESTATING_LOCK = 0x666F7265  # "fore": one restatement at a time across instances


@dataclass(frozen=True)
class Restated:
    deals: int
    bookings: int


async def restate(db: Database) -> Restated:
    """Re-write the deals and bookings the current settings see otherwise than stored; how many."""
    settings = forecast_settings()
    rules, rates = settings.category_rules(), settings.conversion()
    async with db.transaction() as tx:
        await tx.conn.execute("SELECT pg_advisory_xact_lock($1)", _RESTATING_LOCK)
        return Restated(await _restate_deals(tx, rules, rates), await _restate_bookings(tx, rates))


async def _restate_deals(tx: Transaction, rules: CategoryRules, rates: Rates) -> int:
    stale = [r["opportunity_id"] for r in await store.deal_categories(tx.conn)
             if (r["category"], r["amount_reporting"]) != (rules.category(r["status"], r["stage"], r["probability"]),
                                                           rates.convert(r["amount"], r["currency"]))]
    if not stale:
        return 0
    deals = [deal for deal in (await store.lock_deals(tx.conn, stale)).values() if deal is not None]
    await store.save_deals(tx.conn, [
        (deal, rates.convert(deal.amount, deal.currency), rules.category(deal.status, deal.stage, deal.probability),
         None) for deal in deals], datetime.now(UTC))
    for deal in deals:
        schedule_refresh(tx, affected_periods(None, deal), None, owners=[c.owner_id for c in deal.credits],
                         products=[product_key(deal.product)])
    return len(deals)


async def _restate_bookings(tx: Transaction, rates: Rates) -> int:
    converted = [(row, rates.convert(row["amount"], row["currency"])) for row in await store.booking_amounts(tx.conn)]
    stale = [(row, amount) for row, amount in converted if amount != row["amount_reporting"]]
    await store.set_booking_amounts(tx.conn, [(row["contract_id"], amount) for row, amount in stale])
    for row, _ in stale:
        await refresh_booking(tx, row["opportunity_id"], row["owner_id"], row["signed_on"], None)
    return len(stale)


@contextlib.asynccontextmanager
async def restating(app: FastAPI) -> AsyncIterator[None]:
    try:
        restated = await restate(app.state.runtime.db)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.error("could not restate the deals under the current forecast settings (restated at the next "
                  "start; until then each deal follows them from its next event): %s", exc)
    else:
        if restated.deals or restated.bookings:
            log.info("restated %d deal(s) and %d booking(s) under the current forecast settings",
                     restated.deals, restated.bookings)
    yield


lifecycle = APIRouter(lifespan=restating)
