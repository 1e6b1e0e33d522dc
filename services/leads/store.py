"""asyncpg queries for the leads service's tables (schema in migrations/).

SQL text is assembled only from this module's constant column names (the S608 waivers); every
value travels as a bind parameter.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.leads.domain import Campaign, CampaignStatus, Contact, Grade, Lead, Status
from shared.db import outbox_insert
from shared.events.envelope import CloudEvent

# A plain connection or one borrowed from the pool: the queries work on either.
Connection = asyncpg.Connection | PoolConnectionProxy

_COLUMNS = (
    "id, status, grade, source, region, team, owner_id, campaign_id, contact_name, company, phone, email,"
    " attributes, captured_at, captured_by, follow_up_due_at, first_response_at, last_contacted_at,"
    " touch_count, disqualify_reason, converted_at, version, merged_into"
)


def _lead(row: asyncpg.Record) -> Lead:
    return Lead(
        id=row["id"],
        contact=Contact(name=row["contact_name"], company=row["company"], phone=row["phone"], email=row["email"]),
        source=row["source"],
        grade=Grade(row["grade"]) if row["grade"] else None,
        region=row["region"],
        team=row["team"],
        owner_id=row["owner_id"],
        campaign_id=row["campaign_id"],
        attributes=json.loads(row["attributes"]),
        captured_at=row["captured_at"],
        captured_by=row["captured_by"],
        follow_up_due_at=row["follow_up_due_at"],
        status=Status(row["status"]),
        first_response_at=row["first_response_at"],
        last_contacted_at=row["last_contacted_at"],
        touch_count=row["touch_count"],
        disqualify_reason=row["disqualify_reason"],
        converted_at=row["converted_at"],
        merged_into=row["merged_into"],
        version=row["version"],
    )


# The new lead's columns as arrays, one element per lead, in `_COLUMNS` order (`_values`).
_NEW_LEAD_ARRAYS = (
    "unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],"
    " $9::text[], $10::text[], $11::text[], $12::text[], $13::jsonb[], $14::timestamptz[], $15::text[],"
    " $16::timestamptz[], $17::timestamptz[], $18::timestamptz[], $19::integer[], $20::text[],"
    " $21::timestamptz[], $22::integer[], $23::text[])"
)


async def insert_new_leads(conn: Connection, leads: Sequence[tuple[Lead, Sequence[CloudEvent]]]) -> list[bool]:
    """Insert new leads and write their events to the outbox, in one statement (its own transaction
    outside one); for each lead whether it was written: not when another lead, or one before it in
    `leads`, already holds its phone or e-mail (then none of its events is written either)."""
    columns = [list(column) for column in zip(*(_values(lead) for lead, _ in leads), strict=True)]
    events = [event for _, lead_events in leads for event in lead_events]
    outbox_rows, outbox_args = outbox_insert(
        events, after="inserted", first_parameter=len(columns) + 1, by_subject=True
    )
    inserted = await conn.fetchval(
        f"WITH inserted AS (INSERT INTO leads ({_COLUMNS}) SELECT * FROM {_NEW_LEAD_ARRAYS}"  # noqa: S608
        f" ON CONFLICT DO NOTHING RETURNING id), {outbox_rows}"
        " SELECT array_agg(id) FROM inserted",
        *columns,
        *outbox_args,
    )
    written = set(inserted or ())
    return [lead.id in written for lead, _ in leads]


async def save(conn: Connection, lead: Lead) -> None:
    await conn.execute(
        "UPDATE leads SET status = $2, grade = $3, team = $4, owner_id = $5, follow_up_due_at = $6,"
        " first_response_at = $7, last_contacted_at = $8, touch_count = $9, disqualify_reason = $10,"
        " converted_at = $11, version = $12, merged_into = $13, company = $14, phone = $15, email = $16,"
        " region = $17, campaign_id = $18, attributes = $19::jsonb, updated_at = now() WHERE id = $1",
        lead.id,
        str(lead.status),
        lead.grade and str(lead.grade),
        lead.team,
        lead.owner_id,
        lead.follow_up_due_at,
        lead.first_response_at,
        lead.last_contacted_at,
        lead.touch_count,
        lead.disqualify_reason,
        lead.converted_at,
        lead.version,
        lead.merged_into,
        lead.contact.company,
        lead.contact.phone,
        lead.contact.email,
        lead.region,
        lead.campaign_id,
        json.dumps(lead.attributes, ensure_ascii=False),
    )


@dataclass(frozen=True)
class MovedHistory:
    touches: int
    notes: int
    engagements: int


async def move_history(conn: Connection, duplicate_id: str, survivor_id: str, touches_before: int) -> MovedHistory:
    """Re-point a merged duplicate's touches, notes and engagements at its survivor, in one statement. The
    touches are numbered after the survivor's `touches_before`, in the order they happened; each row keeps
    the lead it was first recorded on in `merged_from`. Leads merged into the duplicate earlier now point
    at the survivor: `merged_into` always names a lead that is not merged."""
    row = await conn.fetchrow(
        "WITH ordered AS (SELECT id, row_number() OVER (ORDER BY contacted_at, number) AS position"
        " FROM lead_touches WHERE lead_id = $1),"
        " touches AS (UPDATE lead_touches t SET lead_id = $2, number = $3 + ordered.position,"
        " merged_from = coalesce(t.merged_from, $1) FROM ordered WHERE t.id = ordered.id RETURNING 1),"
        " notes AS (UPDATE lead_notes SET lead_id = $2, merged_from = coalesce(merged_from, $1)"
        " WHERE lead_id = $1 RETURNING 1),"
        " engagements AS (UPDATE lead_engagements SET lead_id = $2, merged_from = coalesce(merged_from, $1)"
        " WHERE lead_id = $1 RETURNING 1),"
        " earlier AS (UPDATE leads SET merged_into = $2 WHERE merged_into = $1)"
        " SELECT (SELECT count(*) FROM touches) AS touches, (SELECT count(*) FROM notes) AS notes,"
        " (SELECT count(*) FROM engagements) AS engagements",
        duplicate_id,
        survivor_id,
        touches_before,
    )
    assert row is not None  # an aggregate always yields its row
    return MovedHistory(row["touches"], row["notes"], row["engagements"])


HISTORY_LIMIT = 500  # rows of each kind a lead's history answers


@dataclass(frozen=True)
class History:
    """A lead's touches, notes and engagements, each oldest first and at most HISTORY_LIMIT of them."""

    touches: list[dict[str, Any]]
    notes: list[dict[str, Any]]
    engagements: list[dict[str, Any]]
    truncated: bool  # some kind has more rows than HISTORY_LIMIT


async def history(conn: Connection, lead_id: str) -> History:
    """A lead's history; one row more of each kind than answered is read, to tell a longer one."""
    touches = await conn.fetch(
        "SELECT id, number, channel, outcome, note, contacted_at, contacted_by, merged_from FROM lead_touches"
        " WHERE lead_id = $1 ORDER BY contacted_at, number LIMIT $2",
        lead_id,
        HISTORY_LIMIT + 1,
    )
    notes = await conn.fetch(
        "SELECT id, kind, body, created_by, created_at, merged_from FROM lead_notes"
        " WHERE lead_id = $1 ORDER BY created_at, id LIMIT $2",
        lead_id,
        HISTORY_LIMIT + 1,
    )
    engagements = await conn.fetch(
        "SELECT visits, time_on_site_s, page_views, activity, reported_by, observed_at, merged_from"
        " FROM lead_engagements WHERE lead_id = $1 ORDER BY observed_at, id LIMIT $2",
        lead_id,
        HISTORY_LIMIT + 1,
    )
    return History(
        [dict(r) for r in touches[:HISTORY_LIMIT]],
        [{**dict(r), "body": json.loads(r["body"])} for r in notes[:HISTORY_LIMIT]],
        [dict(r) for r in engagements[:HISTORY_LIMIT]],
        truncated=any(len(rows) > HISTORY_LIMIT for rows in (touches, notes, engagements)),
    )


def _values(lead: Lead) -> tuple[Any, ...]:
    c = lead.contact
    return (
        lead.id,
        str(lead.status),
        lead.grade and str(lead.grade),
        lead.source,
        lead.region,
        lead.team,
        lead.owner_id,
        lead.campaign_id,
        c.name,
        c.company,
        c.phone,
        c.email,
        json.dumps(lead.attributes, ensure_ascii=False),
        lead.captured_at,
        lead.captured_by,
        lead.follow_up_due_at,
        lead.first_response_at,
        lead.last_contacted_at,
        lead.touch_count,
        lead.disqualify_reason,
        lead.converted_at,
        lead.version,
        lead.merged_into,
    )


async def get(conn: Connection, lead_id: str, *, for_update: bool = False) -> Lead | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM leads WHERE id = $1{lock}", lead_id)  # noqa: S608
    return _lead(row) if row else None


async def find_duplicate(
    conn: Connection, phone: str | None, email: str | None
) -> tuple[Lead, list[str]] | None:
    """The oldest lead sharing the normalised phone or e-mail, and what matched."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM leads WHERE (phone = $1) OR (email = $2) ORDER BY captured_at, id LIMIT 1",  # noqa: S608
        phone,
        email,
    )
    return _matched(row, phone, email) if row is not None else None


def _matched(row: asyncpg.Record, phone: str | None, email: str | None) -> tuple[Lead, list[str]]:
    lead = _lead(row)
    matched = [
        name for name, mine in (("phone", phone), ("email", email)) if mine and getattr(lead.contact, name) == mine
    ]
    return lead, matched


@dataclass(frozen=True)
class CaptureCheck:
    duplicate: tuple[Lead, list[str]] | None  # the known lead with this phone or e-mail, and what matched
    campaign_known: bool  # the capture names no campaign, or one that exists
    turn: int | None  # the round-robin turn this capture took in its team; None when it took none


@dataclass(frozen=True)
class CaptureQuery:
    """What a capture's check looks for: its normalised contact, its campaign and its round-robin team."""

    phone: str | None
    email: str | None
    campaign_id: str | None
    round_robin_team: str | None


async def check_captures(conn: Connection, queries: Sequence[CaptureQuery]) -> list[CaptureCheck]:
    """Before captures, in one statement: for each, the duplicate, if any; whether its campaign exists;
    and, for a round-robin team when neither stops the capture, the team's next turn. A team's captures
    take consecutive turns in the order given; its cursor's row is locked only for this statement (teams
    in name order, so that two such statements never wait on each other in a cycle), and parallel
    captures each get their own turn without waiting on one another's commits.

    The statement commits without waiting for its WAL to reach the disk (`synchronous_commit` off for
    this transaction only), so the cursor's row lock is not held through a disk flush: with it held, every
    capture of a team waited for the flush of the one before, and that was the capture rate's limit. The
    turn is durable before any lead that took it is: the lead's insert, a synchronous commit after it,
    flushes the log up to itself. A crash in between loses the capture, not a lead.

    Each contact is looked up by its own unique index (two probes, not one `OR`): on a table the planner
    has no statistics for yet, an `OR` made it walk the whole table by capture time for every capture."""
    rows = await conn.fetch(
        "WITH query AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])"  # noqa: S608
        " WITH ORDINALITY AS q (phone, email, campaign_id, team, nth)),"
        f" found AS (SELECT query.nth AS query_nth, lead.* FROM query CROSS JOIN LATERAL (SELECT * FROM"
        f" (SELECT {_COLUMNS} FROM leads WHERE phone = query.phone"
        f" UNION ALL SELECT {_COLUMNS} FROM leads WHERE email = query.email) AS known"
        " ORDER BY captured_at, id LIMIT 1) AS lead),"
        " checked AS (SELECT nth, team, campaign_id IS NULL"
        " OR EXISTS (SELECT FROM campaigns WHERE campaigns.id = query.campaign_id) AS campaign_known,"
        " NOT EXISTS (SELECT FROM found WHERE found.query_nth = query.nth) AS new FROM query),"
        " takers AS (SELECT nth, team, row_number() OVER (PARTITION BY team ORDER BY nth) AS place,"
        " count(*) OVER (PARTITION BY team) AS taken FROM checked WHERE team IS NOT NULL AND new AND campaign_known),"
        " turns AS (INSERT INTO assignment_cursors AS cursor (team, turns) SELECT DISTINCT team, taken FROM takers"
        " ORDER BY team ON CONFLICT (team) DO UPDATE SET turns = cursor.turns + excluded.turns RETURNING team, turns)"
        " SELECT checked.campaign_known, turns.turns - takers.taken + takers.place AS turn, found.*"
        " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit,"
        " checked LEFT JOIN takers USING (nth) LEFT JOIN turns ON turns.team = takers.team"
        " LEFT JOIN found ON found.query_nth = checked.nth ORDER BY checked.nth",
        [q.phone for q in queries],
        [q.email for q in queries],
        [q.campaign_id for q in queries],
        [q.round_robin_team for q in queries],
    )
    return [
        CaptureCheck(
            duplicate=_matched(row, query.phone, query.email) if row["id"] is not None else None,
            campaign_known=row["campaign_known"],
            turn=row["turn"],
        )
        for query, row in zip(queries, rows, strict=True)
    ]


async def take_turn(conn: Connection, team: str) -> int:
    """The team's next round-robin turn (1, 2, 3, ...); inside a transaction its cursor stays locked
    until the end."""
    turn: int = await conn.fetchval(
        "INSERT INTO assignment_cursors AS cursor (team, turns) VALUES ($1, 1)"
        " ON CONFLICT (team) DO UPDATE SET turns = cursor.turns + 1 RETURNING turns",
        team,
    )
    return turn


async def known_contacts(conn: Connection, phones: list[str], emails: list[str]) -> dict[str, str]:
    """Of the given normalised phones and e-mails, those a lead already holds: value -> lead id (the survivor's
    for a merged lead)."""
    rows = await conn.fetch(
        "SELECT coalesce(merged_into, id) AS id, phone, email FROM leads"
        " WHERE phone = ANY($1::text[]) OR email = ANY($2::text[])",
        phones,
        emails,
    )
    known: dict[str, str] = {}
    for row in rows:
        for value in (row["phone"], row["email"]):
            if value is not None:
                known.setdefault(value, row["id"])
    return known


async def add_note(
    conn: Connection, note_id: str, lead_id: str, kind: str, body: dict[str, Any], created_by: str | None
) -> str:
    """Note on the lead, or on its survivor when a merge committed meanwhile: the lead's row is locked
    for the statement (waiting for a merge holding it) and read again once free, so a capture that found
    the duplicate before the merge does not leave its note behind on the closed lead. Returns the lead
    noted on."""
    noted_on: str = await conn.fetchval(
        "INSERT INTO lead_notes (id, lead_id, kind, body, created_by)"
        " SELECT $1, coalesce(lead.merged_into, lead.id), $3, $4::jsonb, $5"
        " FROM (SELECT id, merged_into FROM leads WHERE id = $2 FOR KEY SHARE) AS lead RETURNING lead_id",
        note_id,
        lead_id,
        kind,
        json.dumps(body, ensure_ascii=False, default=str),
        created_by,
    )
    return noted_on


async def add_touch(
    conn: Connection,
    touch_id: str,
    lead_id: str,
    number: int,
    channel: str,
    outcome: str | None,
    note: str | None,
    contacted_at: datetime,
    contacted_by: str,
) -> None:
    await conn.execute(
        "INSERT INTO lead_touches (id, lead_id, number, channel, outcome, note, contacted_at, contacted_by)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        touch_id,
        lead_id,
        number,
        channel,
        outcome,
        note,
        contacted_at,
        contacted_by,
    )


async def add_engagement(
    conn: Connection,
    lead_id: str,
    visits: int,
    time_on_site_s: float,
    page_views: int,
    activity: str | None,
    reported_by: str,
    observed_at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO lead_engagements"
        " (lead_id, visits, time_on_site_s, page_views, activity, reported_by, observed_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        lead_id,
        visits,
        time_on_site_s,
        page_views,
        activity,
        reported_by,
        observed_at,
    )


@dataclass(frozen=True)
class LeadFilter:
    owners: set[str] | None = None  # the caller's scope; None = every lead
    status: str | None = None
    grade: str | None = None
    owner_id: str | None = None
    region: str | None = None
    source: str | None = None
    campaign_id: str | None = None
    team: str | None = None
    captured_from: datetime | None = None
    captured_to: datetime | None = None
    overdue_at: datetime | None = None  # leads still new whose follow-up was due before this time


SORTS = {"captured_at", "follow_up_due_at"}  # the lead columns a listing may be ordered by

# Overdue for follow-up: still new (nobody has contacted it) and its follow-up due before a given time.
# One definition for the list filter `overdue=true` and the overdue gauge; `{}` is the time's parameter.
_OVERDUE = "status = 'new' AND follow_up_due_at < {}"


async def list_leads(
    conn: Connection,
    where: LeadFilter,
    after: tuple[datetime, str] | None,
    limit: int,
    *,
    sort: str = "captured_at",
    descending: bool = True,
) -> list[Lead]:
    """Ordered by `sort` then id, both descending or both ascending (keyset: rows after `after`)."""
    if sort not in SORTS:
        raise ValueError(f"cannot sort leads by {sort!r}")
    direction, beyond = ("DESC", "<") if descending else ("ASC", ">")
    clauses: list[str] = []
    args: list[Any] = []

    def add(clause: str, value: Any) -> None:
        args.append(value)
        clauses.append(clause.format(f"${len(args)}"))

    if where.owners is not None:
        add("owner_id = ANY({}::text[])", sorted(where.owners))
    for column in ("status", "grade", "owner_id", "region", "source", "campaign_id", "team"):
        value = getattr(where, column)
        if value is not None:
            add(f"{column} = {{}}", value)
    if where.captured_from is not None:
        add("captured_at >= {}", where.captured_from)
    if where.captured_to is not None:
        add("captured_at < {}", where.captured_to)
    if where.overdue_at is not None:
        add(_OVERDUE, where.overdue_at)
    if after is not None:
        args.extend(after)
        clauses.append(f"({sort}, id) {beyond} (${len(args) - 1}, ${len(args)})")
    args.append(limit)
    where_sql = " WHERE " + " AND ".join(clauses) if clauses else ""
    order = f"{sort} {direction}, id {direction}"
    sql = f"SELECT {_COLUMNS} FROM leads{where_sql} ORDER BY {order} LIMIT ${len(args)}"  # noqa: S608
    return [_lead(r) for r in await conn.fetch(sql, *args)]


async def count_overdue(conn: Connection, as_of: datetime) -> dict[tuple[str | None, str | None], int]:
    """Leads overdue for follow-up at `as_of` by (team, grade), None for no team or no grade: only the
    pairs that have any. An index-only scan of the new leads' index (migration 0005)."""
    rows = await conn.fetch(
        f"SELECT team, grade, count(*) FROM leads WHERE {_OVERDUE.format('$1')} GROUP BY team, grade",  # noqa: S608
        as_of,
    )
    return {(row["team"], row["grade"]): row["count"] for row in rows}


_CAMPAIGN_COLUMNS = (
    "id, name, channel, status, budget, actual_cost, currency, starts_on, ends_on, owner_id, version,"
    " created_by, created_at"
)


def _campaign(row: asyncpg.Record) -> Campaign:
    return Campaign(
        id=row["id"],
        name=row["name"],
        channel=row["channel"],
        budget=row["budget"],
        actual_cost=row["actual_cost"],
        currency=row["currency"],
        starts_on=row["starts_on"],
        ends_on=row["ends_on"],
        owner_id=row["owner_id"],
        status=CampaignStatus(row["status"]),
        version=row["version"],
    )


@dataclass(frozen=True)
class CampaignRow:
    campaign: Campaign
    created_by: str
    created_at: datetime


async def insert_campaign(conn: Connection, campaign: Campaign, created_by: str, created_at: datetime) -> None:
    await conn.execute(
        f"INSERT INTO campaigns ({_CAMPAIGN_COLUMNS})"  # noqa: S608
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        campaign.id,
        campaign.name,
        campaign.channel,
        str(campaign.status),
        campaign.budget,
        campaign.actual_cost,
        campaign.currency,
        campaign.starts_on,
        campaign.ends_on,
        campaign.owner_id,
        campaign.version,
        created_by,
        created_at,
    )


async def save_campaign(conn: Connection, campaign: Campaign) -> None:
    await conn.execute(
        "UPDATE campaigns SET name = $2, channel = $3, status = $4, budget = $5, actual_cost = $6,"
        " starts_on = $7, ends_on = $8, owner_id = $9, version = $10, updated_at = now() WHERE id = $1",
        campaign.id,
        campaign.name,
        campaign.channel,
        str(campaign.status),
        campaign.budget,
        campaign.actual_cost,
        campaign.starts_on,
        campaign.ends_on,
        campaign.owner_id,
        campaign.version,
    )


async def get_campaign(conn: Connection, campaign_id: str, *, for_update: bool = False) -> CampaignRow | None:
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1{lock}", campaign_id)  # noqa: S608
    return CampaignRow(_campaign(row), row["created_by"], row["created_at"]) if row else None


async def campaign_exists(conn: Connection, campaign_id: str) -> bool:
    return bool(await conn.fetchval("SELECT true FROM campaigns WHERE id = $1", campaign_id))


async def list_campaigns(
    conn: Connection, status: str | None, after: tuple[datetime, str] | None, limit: int
) -> list[CampaignRow]:
    rows = await conn.fetch(
        f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns"  # noqa: S608
        " WHERE ($1::text IS NULL OR status = $1)"
        " AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))"
        " ORDER BY created_at DESC, id DESC LIMIT $4",
        status,
        after[0] if after else None,
        after[1] if after else "",
        limit,
    )
    return [CampaignRow(_campaign(r), r["created_by"], r["created_at"]) for r in rows]


async def campaign_lead_counts(conn: Connection, campaign_ids: list[str]) -> dict[str, tuple[int, int]]:
    """Per campaign: leads attributed to it, and how many of them converted. A merged duplicate is no lead
    of its own (its survivor, which took its campaign if it had none, is)."""
    rows = await conn.fetch(
        "SELECT campaign_id, count(*) AS leads, count(*) FILTER (WHERE status = 'converted') AS converted"
        " FROM leads WHERE campaign_id = ANY($1::text[]) AND status <> 'merged' GROUP BY campaign_id",
        campaign_ids,
    )
    return {r["campaign_id"]: (r["leads"], r["converted"]) for r in rows}
