"""Backtest the bookings forecast on the CRM export in ../shared/data/crm_sales_opportunities.

    python -m services.forecasting.backtest [--data DIR] [--database-url URL]

Every deal becomes the events the opportunities service publishes, stamped with the data's dates:
`sales.opportunity.created.v1` on its engage date (then `stage_changed` to bidding, as the
opportunities replay maps Engaging), and `won` / `lost` on its close date. They go in time order
through this service's own event path (`EventProcessor`: schema check, inbox, handlers, store,
outbox) into a scratch database. At the start of each month from April to December 2017, before
that month's events, the service forecasts the month's closed-won value from its store (and stores
the forecast, as it does for any forecast); at the end the forecasts are set against the actuals.

What is left out, and why: the export has no expected close date (its close date is the outcome:
using it would tell the forecast the future), so the deals carry none; Prospecting deals have no
engage date and so no place in time. Amounts are USD (the forecast's reporting currency here).
The events do not cross the broker (the consumer is exercised by the integration tests); without
FUNNELCAST_DATABASE_URL or --database-url a throwaway embedded PostgreSQL is started.
"""

import argparse
import asyncio
import csv
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime
from datetime import time as clock
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg

from services.forecasting import bookings, handlers, store
from services.forecasting.config import forecast_settings
from services.forecasting.domain import Period, month_of, parse_period
from services.opportunities.replay import NO_COMPETITOR, PRODUCT_ALIASES, agent_id
from shared.db import SHARED_MIGRATIONS, Database, migrate
from shared.events.envelope import CloudEvent
from shared.inbox import DeadLetters, EventProcessor, Message
from shared.runtime.postgres import EmbeddedPostgres
from shared.settings import with_database

DEFAULT_DATA = Path("..") / "shared" / "data" / "crm_sales_opportunities"
MIGRATIONS = Path(__file__).parent / "migrations"
DATABASE = "funnelcast_forecasting_backtest"
FIRST, LAST = "2017-04", "2017-12"
SOURCE = "/funnelcast/opportunities"


class RefuseDeadLetters(DeadLetters):
    """The backtest's events are built here: one that cannot be applied is a bug, not a poison message."""

    def __init__(self) -> None:
        pass

    async def send(self, message: Message, error: str) -> None:
        raise RuntimeError(f"backtest event {message.key!r} could not be applied: {error}")


def _at(day: date, second: int = 0) -> datetime:
    return datetime.combine(day, clock(9, 0, second), tzinfo=UTC)


def _ts(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def deal_events(data: Path) -> list[CloudEvent]:
    """The events of every deal with an engage date, in time order."""
    prices = {row["product"]: row["sales_price"] for row in _rows(data / "products.csv")}
    offices = {row["sales_agent"]: row["regional_office"] for row in _rows(data / "sales_teams.csv")}
    events: list[CloudEvent] = []
    for row in _rows(data / "sales_pipeline.csv"):
        if row["engage_date"]:
            events.extend(_events_of(row, prices, offices))
    return sorted(events, key=lambda e: (e.time, e.sequence or 0))


def _events_of(row: dict[str, str], prices: dict[str, str], offices: dict[str, str]) -> Iterator[CloudEvent]:
    """While a deal is open its amount is its product's list price: the close value is only known at the
    close (lost deals have 0), so the won event brings it."""
    opp = f"maven-{row['opportunity_id']}"
    owner = agent_id(row["sales_agent"])
    won = row["deal_stage"] == "Won"
    product = PRODUCT_ALIASES.get(row["product"], row["product"])
    common = {"opportunity_id": opp, "amount": f"{Decimal(prices[product]):.2f}", "currency": "USD",
              "owner_id": owner, "product": product}
    opened = _at(date.fromisoformat(row["engage_date"]))
    yield CloudEvent(type="sales.opportunity.created.v1", source=SOURCE, subject=opp, time=opened, sequence=1, data={
        **common, "name": f"{row['product']} · {row['account'] or 'Unknown account'}", "account_id": "maventech",
        "stage": "prospecting", "status": "open", "probability": 10, "expected_close_date": None,
        "region": offices[row["sales_agent"]],
        "created_at": _ts(opened), "lead_id": None, "campaign_id": None})
    yield CloudEvent(type="sales.opportunity.stage_changed.v1", source=SOURCE, subject=opp, time=_at(opened.date(), 1),
                     sequence=2, data={**common, "from_stage": "prospecting", "to_stage": "bidding",
                                       "probability": 30, "changed_by": "svc-erp", "changed_at": _ts(opened)})
    if row["deal_stage"] in ("Won", "Lost") and row["close_date"]:
        closed = _at(date.fromisoformat(row["close_date"]))
        outcome = {"reason": f"{row['deal_stage'].lower()} (imported)", "closed_at": _ts(closed),
                   "closed_by": "svc-erp"}
        if won:
            yield CloudEvent(type="sales.opportunity.won.v1", source=SOURCE, subject=opp, time=closed, sequence=3,
                             data={**common, **outcome, "amount": f"{Decimal(row['close_value']):.2f}"})
        else:
            yield CloudEvent(type="sales.opportunity.lost.v1", source=SOURCE, subject=opp, time=closed, sequence=3,
                             data={**common, **outcome, "competitor": NO_COMPETITOR})


def _message(event: CloudEvent, offset: int) -> Message:
    return Message(topic=event.topic, partition=0, offset=offset, key=event.subject.encode(), value=event.to_bytes())


async def _fresh_database(server_url: str) -> Database:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    db = await Database.open(with_database(server_url, DATABASE), "/funnelcast/forecasting")
    async with db.pool.acquire() as conn:
        await migrate(conn, SHARED_MIGRATIONS, MIGRATIONS)
    return db


async def run(server_url: str, data: Path, batch: int = 200) -> dict[str, Any]:
    """Replay, forecast each month at its start, and measure; the figures as a dict."""
    db = await _fresh_database(server_url)
    processor = EventProcessor(db, "funnelcast-forecasting-backtest", dict(handlers.HANDLERS), RefuseDeadLetters())
    events = deal_events(data)
    targets = _months(parse_period(FIRST), parse_period(LAST))
    forecasts: dict[str, bookings.BookingsForecast] = {}
    started = time.monotonic()
    try:
        pending: list[Message] = []
        upcoming = list(targets)
        for offset, event in enumerate(events):
            while upcoming and event.time.date() >= upcoming[0].start:
                await processor.process_batch(pending)
                pending = []
                target = upcoming.pop(0)
                made = await handlers.forecast_bookings(db, target, as_of=target.start)
                if made is not None:
                    forecasts[target.name] = made
            pending.append(_message(event, offset))
            if len(pending) >= batch:
                await processor.process_batch(pending)
                pending = []
        await processor.process_batch(pending)
        for target in upcoming:  # months after the last event: forecast from everything known
            made = await handlers.forecast_bookings(db, target, as_of=target.start)
            if made is not None:
                forecasts[target.name] = made
        async with db.pool.acquire() as conn:
            actual = await store.won_per_month(conn, date(2017, 1, 1), date(2017, 12, 31))
    finally:
        await db.close()
    elapsed = time.monotonic() - started
    return _report(events, targets, forecasts, actual, elapsed)


def _months(first: Period, last: Period) -> list[Period]:
    months = [first]
    while months[-1] < last:
        months.append(months[-1].next())
    return months


def _report(
    events: Sequence[CloudEvent], targets: list[Period], forecasts: dict[str, bookings.BookingsForecast],
    actual: dict[str, Decimal], elapsed: float,
) -> dict[str, Any]:
    actual_by_month = {month_of(date.fromisoformat(f"{m}-01")): v for m, v in actual.items()}
    in_scope = {t.name: actual.get(t.name, Decimal(0)) for t in targets}
    points = {p: f.point for p, f in forecasts.items()}
    pipeline = {p: f.pipeline_estimate for p, f in forecasts.items() if f.pipeline_estimate is not None}
    baselines = bookings.naive_baselines(actual_by_month, targets)
    inside = [p for p, f in forecasts.items() if f.low <= in_scope[p] <= f.high]
    return {
        "events": len(events), "seconds": elapsed, "forecasts": forecasts, "actual": in_scope,
        "wape": {
            "model": bookings.wape(points, in_scope),
            "pipeline": bookings.wape(pipeline, in_scope),
            "blend": bookings.wape({p: (points[p] + pipeline[p]) / 2 for p in pipeline}, in_scope),
            **{name: bookings.wape(values, in_scope) for name, values in baselines.items()},
        },
        "baseline_months": {name: sorted(values) for name, values in baselines.items()},
        "interval_coverage": (len(inside), len(forecasts)),
    }


def _pct(value: Decimal | None) -> str:
    return "   n/a" if value is None else f"{float(value) * 100:5.1f}%"


def print_report(figures: dict[str, Any]) -> None:
    print(f"replayed {figures['events']} events through the forecasting service's event path "
          f"in {figures['seconds']:.0f}s")
    print(f"{'month':8} {'actual':>11} {'forecast':>11} {'80% interval':>25} {'error':>7} {'pipeline':>11}  method")
    for month, actual in figures["actual"].items():
        made = figures["forecasts"].get(month)
        if made is None:
            print(f"{month:8} {actual:11,.0f} {'-':>11}")
            continue
        error = abs(made.point - actual) / actual if actual else None
        pipeline = "-" if made.pipeline_estimate is None else f"{made.pipeline_estimate:,.0f}"
        print(f"{month:8} {actual:11,.0f} {made.point:11,.0f} {made.low:12,.0f}-{made.high:<12,.0f}"
              f" {_pct(error)} {pipeline:>11}  {made.method}")
    wape = figures["wape"]
    months = figures["baseline_months"]
    print(f"\nWAPE {FIRST}..{LAST} (USD closed won per month):")
    print(f"  bookings forecast (this service)         {_pct(wape['model'])}  target <= 15%")
    print(f"  open-pipeline estimate alone             {_pct(wape['pipeline'])}")
    print(f"  50/50 blend of the two                   {_pct(wape['blend'])}")
    print(f"  naive: same as last month                {_pct(wape['naive'])}  "
          f"({months['naive'][0]}..{months['naive'][-1]}; SOURCE.md: 35%)")
    print(f"  3-month moving average                   {_pct(wape['moving_average_3'])}  "
          f"({months['moving_average_3'][0]}..{months['moving_average_3'][-1]}; SOURCE.md: 20%)")
    print(f"  seasonal naive: same as 3 months earlier {_pct(wape['seasonal_naive'])}  "
          f"({months['seasonal_naive'][0]}..{months['seasonal_naive'][-1]}; SOURCE.md: 8.5%)")
    covered, made = figures["interval_coverage"]
    print(f"  80% interval held the actual in {covered} of {made} months")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _main(data: Path, database_url: str | None) -> None:
    if database_url:
        print_report(await run(database_url, data))
        return
    with tempfile.TemporaryDirectory(prefix="funnelcast-backtest-") as scratch:
        server = EmbeddedPostgres(Path(scratch) / "data", _free_port(), settings={"fsync": "off"})
        server.start()
        try:
            print_report(await run(server.url, data))
        finally:
            server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.forecasting.backtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--database-url", default=os.environ.get("FUNNELCAST_DATABASE_URL"),
                        help="a Postgres server URL (a scratch database is made on it)")
    args = parser.parse_args(argv)
    os.environ["FUNNELCAST_FORECAST_CURRENCY"] = "USD"  # the export's amounts
    forecast_settings.cache_clear()
    asyncio.run(_main(args.data, args.database_url))


if __name__ == "__main__":
    main(sys.argv[1:])
