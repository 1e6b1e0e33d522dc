"""asyncpg queries for the forecasting service's tables (migrations/ beside this file)."""

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.forecasting.domain import Category, DealGroup, DealState, Figures, OwnerSplit, Period, product_key
from shared.db import Connection

_OPEN = [Category.PIPELINE.value, Category.BEST_CASE.value, Category.COMMIT.value]


def _deal(row: asyncpg.Record) -> DealState:
    return DealState(
        opportunity_id=row["opportunity_id"], owner_id=row["owner_id"], amount=row["amount"],
        currency=row["currency"], expected_close_date=row["expected_close_date"], stage=row["stage"],
        status=row["status"], stage_probability=row["stage_probability"],
        scored_probability=row["scored_probability"], closed_on=row["closed_on"], campaign_id=row["campaign_id"],
        product=row["product"], splits=_splits(row["splits"]) if row["splits"] is not None else (),
    )


def _splits(text: str) -> tuple[OwnerSplit, ...]:
    return tuple(OwnerSplit(entry["owner_id"], entry["split"]) for entry in json.loads(text))


def _splits_json(splits: tuple[OwnerSplit, ...]) -> str | None:
    return json.dumps([{"owner_id": s.owner_id, "split": s.split} for s in splits]) if splits else None


async def lock_deals(conn: Connection, opportunity_ids: list[str]) -> dict[str, DealState | None]:
    """These deals, locked for this transaction; None for those not seen yet."""
    rows = await conn.fetch(
        "SELECT * FROM deals WHERE opportunity_id = ANY($1) ORDER BY opportunity_id FOR UPDATE", opportunity_ids)
    found: dict[str, DealState | None] = dict.fromkeys(opportunity_ids)
    found.update({r["opportunity_id"]: _deal(r) for r in rows})
    return found


async def save_deals(
    conn: Connection, deals: list[tuple[DealState, Decimal | None, Category, datetime | None]], at: datetime
) -> None:
    """Upsert deals with their amount in the reporting currency, category and (when created) creation time."""
    await conn.executemany(
        "INSERT INTO deals (opportunity_id, owner_id, amount, currency, amount_reporting, expected_close_date,"
        " stage, status, stage_probability, scored_probability, probability, category, closed_on, forecast_on,"
        " created_at, updated_at, campaign_id, product, splits)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
        " ON CONFLICT (opportunity_id) DO UPDATE SET owner_id = EXCLUDED.owner_id, amount = EXCLUDED.amount,"
        " currency = EXCLUDED.currency, amount_reporting = EXCLUDED.amount_reporting,"
        " expected_close_date = EXCLUDED.expected_close_date, stage = EXCLUDED.stage, status = EXCLUDED.status,"
        " stage_probability = EXCLUDED.stage_probability, scored_probability = EXCLUDED.scored_probability,"
        " probability = EXCLUDED.probability, category = EXCLUDED.category, closed_on = EXCLUDED.closed_on,"
        " forecast_on = EXCLUDED.forecast_on, created_at = coalesce(deals.created_at, EXCLUDED.created_at),"
        " updated_at = EXCLUDED.updated_at, campaign_id = EXCLUDED.campaign_id, product = EXCLUDED.product,"
        " splits = EXCLUDED.splits",
        [(d.opportunity_id, d.owner_id, d.amount, d.currency, amount, d.expected_close_date, d.stage, d.status,
          d.stage_probability, d.scored_probability, d.probability, category.value, d.closed_on, d.forecast_date(),
          created_at, at, d.campaign_id, d.product, _splits_json(d.splits))
         for d, amount, category, created_at in deals],
    )


async def deal_categories(conn: Connection) -> list[asyncpg.Record]:
    """What each deal's category and reporting amount were worked out from, and what they came to."""
    return await conn.fetch(
        "SELECT opportunity_id, status, stage, probability, amount, currency, category, amount_reporting FROM deals")


async def record_transitions(
    conn: Connection, transitions: list[tuple[str, str, str | None, str | None, str, datetime]]
) -> None:
    """Stage moves: (event id, opportunity id, owner, from stage, to stage, when)."""
    await conn.executemany(
        "INSERT INTO deal_transitions (event_id, opportunity_id, owner_id, from_stage, to_stage, at)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING", transitions)


async def save_booking(
    conn: Connection, contract_id: str, opportunity_id: str | None, owner_id: str | None, amount: Decimal,
    currency: str, amount_reporting: Decimal | None, signed_on: date,
) -> None:
    await conn.execute(
        "INSERT INTO bookings (contract_id, opportunity_id, owner_id, amount, currency, amount_reporting, signed_on,"
        " status) VALUES ($1, $2, $3, $4, $5, $6, $7, 'signed') ON CONFLICT (contract_id) DO UPDATE SET"
        " owner_id = EXCLUDED.owner_id, amount = EXCLUDED.amount, currency = EXCLUDED.currency,"
        " amount_reporting = EXCLUDED.amount_reporting, signed_on = EXCLUDED.signed_on, status = 'signed'",
        contract_id, opportunity_id, owner_id, amount, currency, amount_reporting, signed_on,
    )


async def booking_amounts(conn: Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT contract_id, opportunity_id, owner_id, amount, currency, amount_reporting, signed_on FROM bookings")


async def set_booking_amounts(conn: Connection, amounts: list[tuple[str, Decimal | None]]) -> None:
    """New amounts in the reporting currency: (contract id, amount or None when its currency has no rate)."""
    await conn.executemany("UPDATE bookings SET amount_reporting = $2 WHERE contract_id = $1", amounts)


async def terminate_booking(conn: Connection, contract_id: str) -> asyncpg.Record | None:
    """Mark a booking terminated; the booking as it was, or None when it was never signed."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "UPDATE bookings SET status = 'terminated' WHERE contract_id = $1 AND status = 'signed'"
        " RETURNING opportunity_id, owner_id, signed_on", contract_id)
    return row


async def signed_days(conn: Connection, opportunity_id: str) -> list[date]:
    """The days the deal's signed contracts were signed (its bookings count in their periods)."""
    rows = await conn.fetch(
        "SELECT DISTINCT signed_on FROM bookings WHERE opportunity_id = $1 AND status = 'signed'", opportunity_id)
    return [r["signed_on"] for r in rows]


def credits_of(owner_id: str, splits: str | None) -> tuple[OwnerSplit, ...]:
    """A deal's owners with their splits: its splits, else its primary owner alone at 100 %."""
    return _splits(splits) if splits is not None else (OwnerSplit(owner_id, 100),)


async def deal_groups(conn: Connection, period: Period) -> list[DealGroup]:
    """The period's figures summed per product, primary owner and splits (the domain's `roll_up`
    credits each owner their split): open deals by expected close date, won ones by close day;
    signed contracts (booked) by signing day, with their deal's product and splits."""
    rows = await conn.fetch(
        "SELECT product, owner_id, splits::text AS splits,"
        " coalesce(sum(amount_reporting) FILTER (WHERE category = ANY($3)), 0) AS open_amount,"
        " coalesce(sum(amount_reporting * probability / 100) FILTER (WHERE category = ANY($3)), 0) AS weighted,"
        " coalesce(sum(amount_reporting) FILTER (WHERE category = 'commit'), 0) AS commit_open,"
        " coalesce(sum(amount_reporting) FILTER (WHERE category = 'best_case'), 0) AS best_case_open,"
        " coalesce(sum(amount_reporting) FILTER (WHERE category = 'closed_won'), 0) AS closed_won,"
        " count(*) AS deals"
        " FROM deals WHERE forecast_on BETWEEN $1 AND $2 AND amount_reporting IS NOT NULL"
        " AND category <> 'omitted' AND owner_id IS NOT NULL GROUP BY 1, 2, 3",
        period.start, period.end, _OPEN,
    )
    groups = [
        DealGroup(product_key(r["product"]), credits_of(r["owner_id"], r["splits"]),
                  Figures(r["open_amount"], r["weighted"], r["commit_open"], r["best_case_open"], r["closed_won"],
                          Decimal(0), r["deals"]))
        for r in rows
    ]
    # a booking counts for its deal's owners when the deal is known here, else for its contract's owner
    booked = await conn.fetch(
        "SELECT d.product, coalesce(d.owner_id, b.owner_id) AS owner_id, d.splits::text AS splits,"
        " sum(b.amount_reporting) AS booked FROM bookings b LEFT JOIN deals d USING (opportunity_id)"
        " WHERE b.signed_on BETWEEN $1 AND $2 AND b.status = 'signed' AND b.amount_reporting IS NOT NULL"
        " AND coalesce(d.owner_id, b.owner_id) IS NOT NULL GROUP BY 1, 2, 3",
        period.start, period.end,
    )
    groups += [DealGroup(product_key(r["product"]), credits_of(r["owner_id"], r["splits"]), Figures(booked=r["booked"]))
               for r in booked]
    return groups


async def quotas(conn: Connection) -> dict[tuple[str, str], Decimal]:
    rows = await conn.fetch("SELECT owner_id, period, amount FROM quotas")
    return {(r["owner_id"], r["period"]): r["amount"] for r in rows}


async def set_quota(conn: Connection, owner_id: str, period: str, amount: Decimal, set_by: str, at: datetime) -> None:
    await conn.execute(
        "INSERT INTO quotas (owner_id, period, amount, set_by, set_at) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (owner_id, period) DO UPDATE SET amount = EXCLUDED.amount, set_by = EXCLUDED.set_by,"
        " set_at = EXCLUDED.set_at",
        owner_id, period, amount, set_by, at,
    )


async def published_rows(
    conn: Connection, period: str, rows: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[dict[str, Any], int]]:
    """The last published figures and sequence of these (by, key) rows of a period, locked."""
    found = await conn.fetch(
        "SELECT by, key, figures, sequence FROM forecast_rows WHERE period = $1"
        " AND (by, key) IN (SELECT * FROM unnest($2::text[], $3::text[])) ORDER BY by, key FOR UPDATE",
        period, [by for by, _ in rows], [key for _, key in rows])
    return {(r["by"], r["key"]): (json.loads(r["figures"]), r["sequence"]) for r in found}


async def save_published_rows(
    conn: Connection, period: str, rows: list[tuple[str, str, dict[str, Any], int, str | None]], at: datetime,
) -> None:
    """Record rows as published (by, key, figures, sequence, causing event id); keep them in the history."""
    values = [(period, by, key, json.dumps(figures, ensure_ascii=False), sequence, cause)
              for by, key, figures, sequence, cause in rows]
    await conn.executemany(
        "INSERT INTO forecast_rows (period, by, key, figures, sequence, updated_at) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (period, by, key) DO UPDATE SET figures = EXCLUDED.figures, sequence = EXCLUDED.sequence,"
        " updated_at = EXCLUDED.updated_at", [(*v[:5], at) for v in values])
    await conn.executemany(
        "INSERT INTO forecast_history (period, by, key, figures, computed_at, cause_event_id)"
        " VALUES ($1, $2, $3, $4, $5, $6)", [(*v[:4], at, v[5]) for v in values])


async def history(conn: Connection, period: str, by: str, keys: list[str] | None, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT key, figures, computed_at FROM forecast_history WHERE period = $1 AND by = $2"
        " AND ($3::text[] IS NULL OR key = ANY($3)) ORDER BY id DESC LIMIT $4",
        period, by, keys, limit,
    )
    return rows


async def deal_facts(conn: Connection) -> list[asyncpg.Record]:
    """Every deal's amount (reporting currency), opening day, close day and status."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT amount_reporting AS amount, (created_at AT TIME ZONE 'UTC')::date AS opened_on, closed_on, status"
        " FROM deals WHERE amount_reporting IS NOT NULL")
    return rows


async def won_per_month(conn: Connection, since: date, until: date) -> dict[str, Decimal]:
    """Closed-won value per month (`YYYY-MM`) for the close days in [since, until]."""
    rows = await conn.fetch(
        "SELECT to_char(closed_on, 'YYYY-MM') AS month, sum(amount_reporting) AS won FROM deals"
        " WHERE status = 'won' AND closed_on BETWEEN $1 AND $2 AND amount_reporting IS NOT NULL GROUP BY 1",
        since, until)
    return {r["month"]: r["won"] for r in rows}


async def save_bookings_forecast(
    conn: Connection, period: str, made_at: datetime, as_of: date, point: Decimal, low: Decimal, high: Decimal,
    method: str, pipeline_estimate: Decimal | None, currency: str,
) -> None:
    await conn.execute(
        "INSERT INTO bookings_forecasts (period, made_at, as_of, point, low, high, method, pipeline_estimate,"
        " currency) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        period, made_at, as_of, point, low, high, method, pipeline_estimate, currency)


async def bookings_forecasts(conn: Connection, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM bookings_forecasts ORDER BY id DESC LIMIT $1", limit)
    return rows


async def cohort(conn: Connection, since: date, until: date, owners: list[str] | None) -> list[asyncpg.Record]:
    """The deals opened in [since, until] (that these owners hold or share; None: all), with their splits."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT opportunity_id, owner_id, splits::text AS splits, coalesce(amount_reporting, 0) AS amount,"
        " (created_at AT TIME ZONE 'UTC')::date AS opened_on, closed_on, status FROM deals"
        " WHERE (created_at AT TIME ZONE 'UTC')::date BETWEEN $1 AND $2 AND ($3::text[] IS NULL OR owner_id = ANY($3)"
        " OR EXISTS (SELECT 1 FROM jsonb_array_elements(splits) AS s WHERE s->>'owner_id' = ANY($3)))",
        since, until, owners)
    return rows


async def transitions(conn: Connection, opportunity_ids: list[str]) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT opportunity_id, to_stage, at FROM deal_transitions WHERE opportunity_id = ANY($1) ORDER BY at",
        opportunity_ids)
    return rows


async def save_lead(
    conn: Connection, lead_id: str, source: str | None, grade: str | None, campaign_id: str | None,
    owner_id: str | None, captured_on: date,
) -> None:
    await conn.execute(
        "INSERT INTO leads (lead_id, source, grade, campaign_id, owner_id, captured_on) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (lead_id) DO UPDATE SET source = EXCLUDED.source, grade = EXCLUDED.grade,"
        " campaign_id = EXCLUDED.campaign_id, owner_id = EXCLUDED.owner_id, captured_on = EXCLUDED.captured_on",
        lead_id, source, grade, campaign_id, owner_id, captured_on)


async def assign_lead(conn: Connection, lead_id: str, owner_id: str) -> None:
    """The lead's owner now (a lead captured before this service listened is recorded as it is now)."""
    await conn.execute(
        "INSERT INTO leads (lead_id, owner_id) VALUES ($1, $2) ON CONFLICT (lead_id) DO UPDATE SET owner_id = $2",
        lead_id, owner_id)


async def merge_lead(conn: Connection, lead_id: str, survivor_id: str) -> None:
    """Mark a lead merged into another (a lead not seen yet is recorded as merged)."""
    await conn.execute(
        "INSERT INTO leads (lead_id, merged_into) VALUES ($1, $2)"
        " ON CONFLICT (lead_id) DO UPDATE SET merged_into = EXCLUDED.merged_into",
        lead_id, survivor_id)


async def attribute_lead(conn: Connection, lead_id: str, campaign_id: str) -> None:
    """The campaign a lead is attributed to now (a lead not seen yet is recorded with it)."""
    await conn.execute(
        "INSERT INTO leads (lead_id, campaign_id) VALUES ($1, $2) ON CONFLICT (lead_id) DO UPDATE SET campaign_id = $2",
        lead_id, campaign_id)


async def convert_lead(conn: Connection, lead_id: str, converted_on: date, campaign_id: str | None) -> None:
    """Mark a lead converted (a lead captured before this service listened is recorded as it is now)."""
    await conn.execute(
        "INSERT INTO leads (lead_id, campaign_id, converted_on) VALUES ($1, $2, $3)"
        " ON CONFLICT (lead_id) DO UPDATE SET converted_on = EXCLUDED.converted_on,"
        " campaign_id = coalesce(leads.campaign_id, EXCLUDED.campaign_id)",
        lead_id, campaign_id, converted_on)


async def save_campaign(
    conn: Connection, campaign_id: str, name: str, channel: str | None, actual_cost: Decimal, currency: str,
    starts_on: date | None, ends_on: date | None,
) -> None:
    await conn.execute(
        "INSERT INTO campaigns (campaign_id, name, channel, actual_cost, currency, starts_on, ends_on)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (campaign_id) DO UPDATE SET name = EXCLUDED.name,"
        " channel = EXCLUDED.channel, actual_cost = EXCLUDED.actual_cost, currency = EXCLUDED.currency,"
        " starts_on = EXCLUDED.starts_on, ends_on = EXCLUDED.ends_on",
        campaign_id, name, channel, actual_cost, currency, starts_on, ends_on)


async def leads_captured(conn: Connection, since: date, until: date, owners: list[str] | None) -> list[asyncpg.Record]:
    """The leads captured in [since, until] (held by these owners; None: everyone's, unowned ones too)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT source, grade, owner_id, converted_on IS NOT NULL AS converted FROM leads"
        " WHERE captured_on BETWEEN $1 AND $2 AND merged_into IS NULL AND ($3::text[] IS NULL OR owner_id = ANY($3))",
        since, until, owners)
    return rows


async def campaigns(conn: Connection) -> list[asyncpg.Record]:
    """Every campaign: its cost and currency, its run, and how many leads it brought in all."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT c.campaign_id, c.name, c.actual_cost, c.currency, c.starts_on, c.ends_on,"
        " (SELECT count(*) FROM leads l WHERE l.campaign_id = c.campaign_id AND l.merged_into IS NULL)"
        " AS leads_lifetime"
        " FROM campaigns c ORDER BY c.campaign_id")
    return rows


async def campaign_leads(conn: Connection, since: date | None, until: date | None) -> list[asyncpg.Record]:
    """Per campaign and owner: the campaign's leads they hold (captured in [since, until]; None: ever)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT campaign_id, owner_id, count(*) AS leads FROM leads WHERE campaign_id IN (SELECT campaign_id"
        " FROM campaigns) AND merged_into IS NULL AND ($1::date IS NULL OR captured_on BETWEEN $1 AND $2)"
        " GROUP BY 1, 2",
        since, until)
    return rows


async def campaign_won_deals(conn: Connection, since: date | None, until: date | None) -> list[asyncpg.Record]:
    """The deals attributed to a campaign that were won (closed in [since, until]; None: ever), with their
    owner and splits."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT campaign_id, coalesce(amount_reporting, 0) AS amount, owner_id, splits::text AS splits FROM deals"
        " WHERE campaign_id IN (SELECT campaign_id FROM campaigns) AND status = 'won'"
        " AND ($1::date IS NULL OR closed_on BETWEEN $1 AND $2)",
        since, until)
    return rows
