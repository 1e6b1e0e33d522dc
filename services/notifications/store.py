"""asyncpg queries for the notifications service's tables (migrations/ beside this file)."""

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg

from services.notifications.domain import InvalidRule, Preferences, Rule, parse_rule
from shared.db import Connection

PUSH_CHANNEL = "funnelcast_notifications"  # LISTEN/NOTIFY channel: every instance hears every notification
CONFIG_CHANNEL = "funnelcast_notifications_config"  # rules or subscriptions changed: drop cached copies


async def config_changed(conn: Connection) -> None:
    """Tell every instance (at commit) that rules or subscriptions changed."""
    await conn.execute("SELECT pg_notify($1, '')", CONFIG_CHANNEL)
_NOTIFY_LIMIT = 7000  # Postgres refuses NOTIFY payloads of 8000 bytes or more


# --- rules ------------------------------------------------------------------------------------


async def seed_rules(conn: Connection, rules: Sequence[Rule]) -> list[str]:
    """Insert the shipped rules not seeded before; an admin's deletion or change is kept."""
    seeded = []
    for rule in rules:
        first = await conn.fetchval(
            "INSERT INTO seeded_rules (id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true", rule.id
        )
        if first:
            await conn.execute(
                "INSERT INTO rules (id, definition, updated_by) VALUES ($1, $2, 'system') ON CONFLICT DO NOTHING",
                rule.id, json.dumps(rule.to_json(), ensure_ascii=False),
            )
            seeded.append(rule.id)
    return seeded


async def rules(conn: Connection, event_types: Iterable[str], users: Iterable[str]) -> list[Rule]:
    """Every stored rule that is still valid (a rule naming a user who left is skipped)."""
    known_types, known_users = list(event_types), list(users)
    found = []
    for row in await conn.fetch("SELECT definition FROM rules ORDER BY id"):
        try:
            found.append(parse_rule(json.loads(row["definition"]), known_types, known_users))
        except InvalidRule:
            continue
    return found


async def rule_definitions(conn: Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT definition, updated_at, updated_by FROM rules ORDER BY id")
    return [{**json.loads(r["definition"]), "updated_at": r["updated_at"], "updated_by": r["updated_by"]} for r in rows]


async def put_rule(conn: Connection, rule: Rule, by: str) -> bool:
    """Create or replace a rule; True when it was created."""
    created: bool = await conn.fetchval(
        "INSERT INTO rules (id, definition, updated_by) VALUES ($1, $2, $3)"
        " ON CONFLICT (id) DO UPDATE SET definition = excluded.definition, updated_at = now(),"
        " updated_by = excluded.updated_by RETURNING xmax = 0",
        rule.id, json.dumps(rule.to_json(), ensure_ascii=False), by,
    )
    await config_changed(conn)
    return created


async def delete_rule(conn: Connection, rule_id: str) -> bool:
    await config_changed(conn)
    return await conn.fetchval("DELETE FROM rules WHERE id = $1 RETURNING true", rule_id) is not None


# --- notifications ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NewNotification:
    recipient: str
    rule_id: str
    cause_id: str
    event_type: str
    subject: str
    title: str
    body: str
    channels: Sequence[str]
    priority: str
    cause_time: datetime | None
    traceparent: str | None = None




async def add_notifications(conn: Connection, new: Sequence[NewNotification]) -> list[asyncpg.Record]:
    """Store notifications, in order, in one round trip; those whose cause already notified their
    recipient under their rule are skipped. Returns the ones created. Each created one meant for push
    is announced on PUSH_CHANNEL at commit (NOTIFY is transactional), so whichever instance holds the
    recipient's socket pushes it."""
    if not new:
        return []
    # fetchmany and executemany pipeline their statements: one round trip for the whole list
    created: list[asyncpg.Record] = await conn.fetchmany(
        "INSERT INTO notifications (id, recipient, rule_id, cause_id, event_type, subject, title, body, channels,"
        " priority, cause_time, traceparent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        " ON CONFLICT (cause_id, rule_id, recipient) DO NOTHING RETURNING *",
        [(uuid.uuid4(), n.recipient, n.rule_id, n.cause_id, n.event_type, n.subject, n.title, n.body,
          list(n.channels), n.priority, n.cause_time, n.traceparent) for n in new],
    )
    announced = [as_message(row) for row in created if "push" in row["channels"]]
    if announced:
        await conn.executemany("SELECT pg_notify($1, $2)", [(PUSH_CHANNEL, p) for p in push_payloads(announced)])
    return created


def push_payloads(messages: Sequence[dict[str, Any]]) -> list[str]:
    """NOTIFY payloads for these notifications: JSON arrays of them, each under Postgres's size limit
    (a batch of events costs a few NOTIFYs, not one per notification). One too large to go alone is
    sent as a reference, which the socket reads from the table."""
    payloads: list[str] = []
    chunk: list[str] = []
    size = 2
    for message in messages:
        encoded = json.dumps(message, ensure_ascii=False, default=str)
        if len(encoded.encode()) + 2 > _NOTIFY_LIMIT:
            encoded = json.dumps({"id": message["id"], "recipient": message["recipient"], "seq": message["seq"],
                                  "ref": True})
        length = len(encoded.encode()) + 1  # and a comma
        if chunk and size + length > _NOTIFY_LIMIT:
            payloads.append(f"[{','.join(chunk)}]")
            chunk, size = [], 2
        chunk.append(encoded)
        size += length
    if chunk:
        payloads.append(f"[{','.join(chunk)}]")
    return payloads


def as_message(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """A notification as the inbox and the stream show it (CONTRACT.md names the first six fields)."""
    return {
        "id": str(row["id"]),
        "title": row["title"],
        "body": row["body"],
        "created_at": _ts(row["created_at"]),
        "subject": row["subject"],
        "event_type": row["event_type"],
        "seq": row["seq"],
        "recipient": row["recipient"],
        "rule_id": row["rule_id"],
        "priority": row["priority"],
        "channels": list(row["channels"]),
        "cause_time": _ts(row["cause_time"]),
        "read": row["read_at"] is not None,
        "read_at": _ts(row["read_at"]),
        "traceparent": row["traceparent"],
    }


def _ts(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


async def notification(conn: Connection, notification_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM notifications WHERE id = $1", uuid.UUID(notification_id)
    )
    return row


async def inbox(
    conn: Connection, recipient: str, *, unread_only: bool, before_seq: int | None, limit: int
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM notifications WHERE recipient = $1"
        " AND ($2::bool IS false OR read_at IS NULL) AND ($3::bigint IS NULL OR seq < $3)"
        " ORDER BY seq DESC LIMIT $4",
        recipient, unread_only, before_seq, limit,
    )
    return rows


async def unread_count(conn: Connection, recipient: str) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM notifications WHERE recipient = $1 AND read_at IS NULL", recipient
    )
    return count


async def since(conn: Connection, recipient: str, after_seq: int, limit: int = 1000) -> list[asyncpg.Record]:
    """The recipient's push notifications after a cursor, oldest first (missed while away)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM notifications WHERE recipient = $1 AND seq > $2"
        " AND 'push' = ANY(channels) ORDER BY seq LIMIT $3",
        recipient, after_seq, limit,
    )
    return rows


async def seq_of(conn: Connection, recipient: str, notification_id: str) -> int | None:
    seq: int | None = await conn.fetchval(
        "SELECT seq FROM notifications WHERE id = $1 AND recipient = $2", uuid.UUID(notification_id), recipient
    )
    return seq


async def latest_seq(conn: Connection, recipient: str) -> int:
    seq: int = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM notifications WHERE recipient = $1", recipient)
    return seq


async def mark_read(conn: Connection, recipient: str, ids: Sequence[str] | None) -> int:
    """Mark some (or, with None, all) of the recipient's notifications read; how many changed."""
    if ids is None:
        result: str = await conn.execute(
            "UPDATE notifications SET read_at = now() WHERE recipient = $1 AND read_at IS NULL", recipient
        )
    else:
        result = await conn.execute(
            "UPDATE notifications SET read_at = now() WHERE recipient = $1 AND id = ANY($2::uuid[])"
            " AND read_at IS NULL",
            recipient, [uuid.UUID(i) for i in ids],
        )
    return int(result.split()[-1])


# --- preferences ------------------------------------------------------------------------------


async def preferences(conn: Connection, user_id: str) -> Preferences:
    row = await conn.fetchrow("SELECT * FROM preferences WHERE user_id = $1", user_id)
    return Preferences() if row is None else _preferences(row)


def _preferences(row: asyncpg.Record) -> Preferences:
    return Preferences(row["language"], frozenset(row["opted_out"]), row["quiet_start"], row["quiet_end"],
                       row["timezone"])


async def preferences_of(conn: Connection, user_ids: Sequence[str]) -> dict[str, Preferences]:
    rows = await conn.fetch("SELECT * FROM preferences WHERE user_id = ANY($1::text[])", list(user_ids))
    found = {r["user_id"]: _preferences(r) for r in rows}
    return {u: found.get(u, Preferences()) for u in user_ids}


async def all_preferences(conn: Connection) -> dict[str, Preferences]:
    """Every user's stored preferences (users without a row have the defaults)."""
    return {r["user_id"]: _preferences(r) for r in await conn.fetch("SELECT * FROM preferences")}


async def put_preferences(conn: Connection, user_id: str, prefs: Preferences) -> None:
    await conn.execute(
        "INSERT INTO preferences (user_id, language, opted_out, quiet_start, quiet_end, timezone)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (user_id) DO UPDATE SET language = excluded.language,"
        " opted_out = excluded.opted_out, quiet_start = excluded.quiet_start, quiet_end = excluded.quiet_end,"
        " timezone = excluded.timezone, updated_at = now()",
        user_id, prefs.language, sorted(prefs.opted_out), prefs.quiet_start, prefs.quiet_end, prefs.timezone,
    )
    await config_changed(conn)


# --- e-mail -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewEmail:
    notification_id: uuid.UUID
    to_address: str
    subject: str
    body: str
    send_after: datetime


async def queue_emails(conn: Connection, emails: Sequence[NewEmail]) -> None:
    if emails:
        await conn.executemany(
            "INSERT INTO emails (notification_id, to_address, subject, body, send_after)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (notification_id) DO NOTHING",
            [(e.notification_id, e.to_address, e.subject, e.body, e.send_after) for e in emails],
        )


async def claim_emails(conn: Connection, now: datetime, lease_until: datetime, limit: int) -> list[asyncpg.Record]:
    """Due e-mails, leased to the caller until `lease_until` (as webhook deliveries are), each with the
    cause (`cause_id`) and trace (`traceparent`) of its notification."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "WITH due AS (SELECT id FROM emails WHERE status = 'pending' AND send_after <= $1 ORDER BY send_after"
        " LIMIT $3 FOR UPDATE SKIP LOCKED)"
        " UPDATE emails e SET send_after = $2 FROM due, notifications n WHERE e.id = due.id"
        " AND n.id = e.notification_id RETURNING e.*, n.cause_id, n.traceparent",
        now, lease_until, limit,
    )
    return rows


async def email_sent(conn: Connection, email_id: int) -> None:
    await conn.execute(
        "UPDATE emails SET status = 'sent', sent_at = now(), attempts = attempts + 1 WHERE id = $1", email_id
    )


async def email_failed(conn: Connection, email_id: int, error: str, retry_at: datetime | None) -> None:
    await conn.execute(
        "UPDATE emails SET attempts = attempts + 1, last_error = $2,"
        " status = CASE WHEN $3::timestamptz IS NULL THEN 'failed' ELSE 'pending' END,"
        " send_after = coalesce($3, send_after) WHERE id = $1",
        email_id, error[:2000], retry_at,
    )


# --- timers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimerChange:
    """Cancel the subject's open timers of the `cancelling` kinds, then, with a `kind`, add a timer."""

    subject: str
    cancelling: Sequence[str]
    kind: str | None = None
    recipient: str | None = None
    due_at: datetime | None = None
    data: Mapping[str, Any] | None = None
    # False: add no timer while the subject's latest timer of the kind stands cancelled, i.e. stopped by
    # a close or a suspension rather than replaced (an edit of a suspended deal restarts no reminder)
    after_cancellation: bool = True


async def change_timers(conn: Connection, changes: Sequence[TimerChange]) -> None:
    """Apply the changes in order, in one round trip (each statement sees the ones before it, so a
    subject's timer added and then cancelled in one batch of events ends cancelled)."""
    if changes:
        await conn.executemany(
            "WITH cancelled AS (UPDATE timers SET cancelled_at = now() WHERE subject = $2 AND kind = ANY($6::text[])"
            " AND fired_at IS NULL AND cancelled_at IS NULL)"
            " INSERT INTO timers (kind, subject, recipient, due_at, data)"
            " SELECT $1::text, $2::text, $3::text, $4::timestamptz, $5::jsonb WHERE $1::text IS NOT NULL"
            " AND ($7::boolean OR NOT coalesce((SELECT cancelled_at IS NOT NULL FROM timers"
            " WHERE subject = $2 AND kind = $1::text ORDER BY id DESC LIMIT 1), false))",
            [(c.kind, c.subject, c.recipient, c.due_at,
              None if c.data is None else json.dumps(c.data, ensure_ascii=False, default=str), list(c.cancelling),
              c.after_cancellation)
             for c in changes],
        )


async def claim_due_timers(conn: Connection, now: datetime, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM timers WHERE fired_at IS NULL AND cancelled_at IS NULL AND due_at <= $1"
        " ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        now, limit,
    )
    return rows


async def timer_fired(conn: Connection, timer_id: int, at: datetime) -> None:
    await conn.execute("UPDATE timers SET fired_at = $2 WHERE id = $1", timer_id, at)


async def timers_due(conn: Connection, now: datetime) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM timers WHERE fired_at IS NULL AND cancelled_at IS NULL AND due_at <= $1", now
    )
    return count


async def open_timers(conn: Connection, subject: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, kind, recipient, due_at, fired_at, cancelled_at FROM timers WHERE subject = $1 ORDER BY id",
        subject,
    )
    return rows


# --- the digest's read model ------------------------------------------------------------------


@dataclass(frozen=True)
class LeadWatch:
    """What one event says about a lead (None: unchanged)."""

    lead_id: str
    owner_id: str | None = None
    grade: str | None = None
    follow_up_due_at: datetime | None = None
    contacted_at: datetime | None = None
    closed: bool = False
    score: int | None = None
    scored_at: datetime | None = None


@dataclass(frozen=True)
class OpportunityWatch:
    """What one event says about an opportunity (None: unchanged)."""

    opportunity_id: str
    owner_id: str | None = None
    amount: str | None = None
    currency: str | None = None
    expected_close_date: date | None = None
    open: bool | None = None


async def watch_leads(conn: Connection, changes: Sequence[LeadWatch]) -> None:
    """Merge what events say about leads, in order, in one round trip."""
    if changes:
        await conn.executemany(
            "INSERT INTO lead_watch (lead_id, owner_id, grade, follow_up_due_at, contacted_at, closed, score,"
            " scored_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (lead_id) DO UPDATE SET"
            " owner_id = coalesce(excluded.owner_id, lead_watch.owner_id),"
            " grade = coalesce(excluded.grade, lead_watch.grade),"
            " follow_up_due_at = coalesce(excluded.follow_up_due_at, lead_watch.follow_up_due_at),"
            " contacted_at = coalesce(excluded.contacted_at, lead_watch.contacted_at),"
            " closed = lead_watch.closed OR excluded.closed,"
            " score = coalesce(excluded.score, lead_watch.score),"
            " scored_at = coalesce(excluded.scored_at, lead_watch.scored_at)",
            [(c.lead_id, c.owner_id, c.grade, c.follow_up_due_at, c.contacted_at, c.closed, c.score, c.scored_at)
             for c in changes],
        )


async def watch_opportunities(conn: Connection, changes: Sequence[OpportunityWatch]) -> None:
    """Merge what events say about opportunities, in order, in one round trip."""
    if changes:
        await conn.executemany(
            "INSERT INTO opportunity_watch (opportunity_id, owner_id, amount, currency, expected_close_date, open)"
            " VALUES ($1, $2, $3::numeric, $4, $5, coalesce($6, true)) ON CONFLICT (opportunity_id) DO UPDATE SET"
            " owner_id = coalesce(excluded.owner_id, opportunity_watch.owner_id),"
            " amount = coalesce($3::numeric, opportunity_watch.amount),"
            " currency = coalesce(excluded.currency, opportunity_watch.currency),"
            " expected_close_date = coalesce(excluded.expected_close_date, opportunity_watch.expected_close_date),"
            " open = coalesce($6, opportunity_watch.open)",
            [(c.opportunity_id, c.owner_id, c.amount, c.currency, c.expected_close_date, c.open) for c in changes],
        )


async def digest_rows(
    conn: Connection, now: datetime, week_from: date, week_to: date, scored_since: datetime, high_score: int
) -> dict[str, dict[str, list[str]]]:
    """owner -> {"overdue": lead ids, "closing": opportunity ids, "hot": lead ids}."""
    found: dict[str, dict[str, list[str]]] = {}

    def add(owner: str, kind: str, subject: str) -> None:
        found.setdefault(owner, {"overdue": [], "closing": [], "hot": []})[kind].append(subject)

    for r in await conn.fetch(
        "SELECT owner_id, lead_id FROM lead_watch WHERE NOT closed AND contacted_at IS NULL"
        " AND follow_up_due_at < $1 AND owner_id IS NOT NULL ORDER BY follow_up_due_at", now):
        add(r["owner_id"], "overdue", r["lead_id"])
    for r in await conn.fetch(
        "SELECT owner_id, opportunity_id FROM opportunity_watch WHERE open AND owner_id IS NOT NULL"
        " AND expected_close_date BETWEEN $1 AND $2 ORDER BY expected_close_date", week_from, week_to):
        add(r["owner_id"], "closing", r["opportunity_id"])
    for r in await conn.fetch(
        "SELECT owner_id, lead_id FROM lead_watch WHERE NOT closed AND owner_id IS NOT NULL AND score >= $1"
        " AND scored_at >= $2 ORDER BY score DESC", high_score, scored_since):
        add(r["owner_id"], "hot", r["lead_id"])
    return found


async def ensure_digest_timer(conn: Connection, due_at: datetime) -> None:
    """The next daily digest, unless one is pending (instances race harmlessly: a unique index)."""
    await conn.execute(
        "INSERT INTO timers (kind, subject, recipient, due_at) VALUES ('daily-digest', $1, '*', $2)"
        " ON CONFLICT (kind) WHERE kind = 'daily-digest' AND fired_at IS NULL AND cancelled_at IS NULL DO NOTHING",
        f"digest:{due_at.date().isoformat()}", due_at,
    )


# --- webhooks ---------------------------------------------------------------------------------



async def add_subscription(
    conn: Connection, owner_id: str, url: str, event_types: Sequence[str], secret: str
) -> asyncpg.Record:
    row: asyncpg.Record | None = await conn.fetchrow(
        "INSERT INTO webhook_subscriptions (id, owner_id, url, event_types, secret) VALUES ($1, $2, $3, $4, $5)"
        " RETURNING *",
        uuid.uuid4(), owner_id, url, list(event_types), secret,
    )
    await config_changed(conn)
    assert row is not None
    return row


async def subscription(conn: Connection, subscription_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM webhook_subscriptions WHERE id = $1", _uuid(subscription_id)
    )
    return row


async def subscriptions(conn: Connection, owner_id: str | None) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT * FROM webhook_subscriptions WHERE $1::text IS NULL OR owner_id = $1"
        " ORDER BY created_at",
        owner_id,
    )
    return rows


async def subscriptions_by_type(conn: Connection) -> dict[str, list[uuid.UUID]]:
    """The enabled subscriptions, by the event types they take."""
    found: dict[str, list[uuid.UUID]] = {}
    for row in await conn.fetch("SELECT id, event_types FROM webhook_subscriptions WHERE enabled ORDER BY created_at"):
        for event_type in row["event_types"]:
            found.setdefault(event_type, []).append(row["id"])
    return found


async def set_enabled(conn: Connection, subscription_id: str, enabled: bool, reason: str | None) -> None:
    await conn.execute(
        "UPDATE webhook_subscriptions SET enabled = $2, disabled_reason = $3,"
        " consecutive_failures = CASE WHEN $2 THEN 0 ELSE consecutive_failures END WHERE id = $1",
        _uuid(subscription_id), enabled, reason,
    )
    await config_changed(conn)


async def delete_subscription(conn: Connection, subscription_id: str) -> None:
    await conn.execute("DELETE FROM webhook_subscriptions WHERE id = $1", _uuid(subscription_id))
    await config_changed(conn)


async def add_delivery(
    conn: Connection, subscription_id: str | uuid.UUID, event_id: str, event_type: str, event_time: datetime,
    payload: str, replay_of: uuid.UUID | None = None,
) -> uuid.UUID | None:
    """A delivery (a replay when `replay_of` is set); None when the subscription is gone or the event
    was already queued for it.

    The subscription is locked against deletion until the transaction ends (FOR KEY SHARE: updates of
    its state go on). One being deleted makes this wait for that transaction and then leaves it out,
    so a delivery is never queued for a deleted subscription (no foreign-key violation failing the
    consumer's whole batch), and one queued before a deletion commits goes with the subscription
    (ON DELETE CASCADE)."""
    delivery_id = uuid.uuid4()
    inserted = await conn.fetchval(
        "WITH live AS (SELECT id FROM webhook_subscriptions WHERE id = $1 FOR KEY SHARE)"
        " INSERT INTO webhook_deliveries (id, subscription_id, event_id, event_type, event_time, payload, replay_of)"
        " SELECT $2, id, $3, $4, $5, $6, $7 FROM live ON CONFLICT DO NOTHING RETURNING true",
        _uuid(subscription_id), delivery_id, event_id, event_type, event_time, payload, replay_of,
    )
    return delivery_id if inserted else None


_QUEUE_DELIVERIES = (
    "WITH live AS (SELECT id FROM webhook_subscriptions WHERE id = ANY($1::uuid[]) AND enabled FOR KEY SHARE),"
    " queued AS (INSERT INTO webhook_deliveries (id, subscription_id, event_id, event_type, event_time, payload)"
    " SELECT gen_random_uuid(), id, $2, $3, $4, $5 FROM live ON CONFLICT DO NOTHING RETURNING 1)"
    " SELECT count(*) FROM queued"
)


@dataclass(frozen=True)
class EventToDeliver:
    """An event to queue for webhook subscriptions (those still there and enabled when queued)."""

    subscription_ids: Sequence[uuid.UUID]
    event_id: str
    event_type: str
    event_time: datetime
    payload: str


async def add_deliveries(
    conn: Connection, subscription_ids: Sequence[uuid.UUID], event_id: str, event_type: str, event_time: datetime,
    payload: str,
) -> int:
    """Queue an event for each of these subscriptions still there and enabled (locked as in
    `add_delivery`); how many were queued."""
    return await add_deliveries_of(conn, [EventToDeliver(subscription_ids, event_id, event_type, event_time, payload)])


async def add_deliveries_of(conn: Connection, events: Sequence[EventToDeliver]) -> int:
    """`add_deliveries` for each event, in order, in one round trip (pipelined); how many were queued."""
    if not events:
        return 0
    counts = await conn.fetchmany(_QUEUE_DELIVERIES, [
        (list(e.subscription_ids), e.event_id, e.event_type, e.event_time, e.payload) for e in events])
    return sum(int(row[0]) for row in counts)


async def claim_deliveries(
    conn: Connection, now: datetime, lease_until: datetime, limit: int, allowances: Mapping[uuid.UUID, int],
    default_allowance: int,
) -> list[asyncpg.Record]:
    """Due deliveries of enabled subscriptions, oldest first, at most `limit`, and at most each
    subscription's allowance (`allowances`, else `default_allowance`): one subscription's backlog
    cannot fill a claim, and what is over its allowance stays due. Each is leased to the caller
    until `lease_until`: other instances skip it meanwhile, and a caller that dies leaves it due again
    when the lease ends."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "WITH allowed AS (SELECT s.id, coalesce(a.n, $6) AS n FROM webhook_subscriptions s"
        "  LEFT JOIN unnest($4::uuid[], $5::int[]) AS a (id, n) ON a.id = s.id WHERE s.enabled),"
        " due AS (SELECT d.id FROM allowed CROSS JOIN LATERAL ("
        "  SELECT d.id, d.next_attempt_at FROM webhook_deliveries d"
        "  WHERE d.subscription_id = allowed.id AND d.status = 'pending' AND d.next_attempt_at <= $1"
        "  ORDER BY d.next_attempt_at LIMIT allowed.n FOR UPDATE SKIP LOCKED) d"
        "  ORDER BY d.next_attempt_at LIMIT $3)"
        " UPDATE webhook_deliveries d SET next_attempt_at = $2 FROM due, webhook_subscriptions s"
        " WHERE d.id = due.id AND s.id = d.subscription_id"
        " RETURNING d.id, d.subscription_id, d.payload, d.attempts, s.url, s.secret",
        now, lease_until, limit, list(allowances), list(allowances.values()), default_allowance,
    )
    return rows


async def release_deliveries(conn: Connection, delivery_ids: Sequence[uuid.UUID], now: datetime) -> None:
    """End the leases of deliveries whose attempts were cut short: due again at `now`."""
    await conn.execute("UPDATE webhook_deliveries SET next_attempt_at = $2 WHERE id = ANY($1) AND status = 'pending'",
                       delivery_ids, now)


@dataclass(frozen=True)
class Attempt:
    delivery_id: uuid.UUID
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: float
    outcome: str  # succeeded | retry | dead
    next_attempt_at: datetime | None


async def record_attempts(conn: Connection, attempts: Sequence[Attempt]) -> None:
    """Log a batch of attempts and move each delivery on (done, due again later, or dead). A delivery
    deleted meanwhile with its subscription is skipped: updating the delivery first locks it, so the
    attempt's row never points at a delivery that is gone."""
    await conn.execute(
        "WITH a AS (SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::text[], $5::float8[], $6::text[],"
        "  $7::timestamptz[]) AS a (delivery_id, attempt, status_code, error, duration_ms, outcome, next_attempt_at)),"
        " moved AS (UPDATE webhook_deliveries d SET attempts = a.attempt, last_status = a.status_code,"
        "  last_error = a.error, status = CASE a.outcome WHEN 'retry' THEN 'pending' ELSE a.outcome END,"
        "  next_attempt_at = coalesce(a.next_attempt_at, d.next_attempt_at),"
        "  finished_at = CASE WHEN a.outcome = 'retry' THEN NULL ELSE now() END"
        "  FROM a WHERE d.id = a.delivery_id RETURNING d.id)"
        " INSERT INTO webhook_attempts (delivery_id, attempt, status_code, error, duration_ms)"
        " SELECT a.delivery_id, a.attempt, a.status_code, a.error, a.duration_ms FROM a JOIN moved ON moved.id ="
        " a.delivery_id ON CONFLICT DO NOTHING",
        [a.delivery_id for a in attempts], [a.attempt for a in attempts], [a.status_code for a in attempts],
        [a.error for a in attempts], [a.duration_ms for a in attempts], [a.outcome for a in attempts],
        [a.next_attempt_at for a in attempts],
    )


async def count_outcomes(conn: Connection, outcomes: Mapping[uuid.UUID, Sequence[bool]]) -> dict[uuid.UUID, int]:
    """Track dead-lettered deliveries in a row per subscription, given each one's final outcomes in
    order (True: succeeded); a success resets the count. One statement for all; a subscription whose
    count stays 0 is not written (the usual case: every delivery succeeded). Returns the counts of the
    subscriptions that have failures in a row now (a deleted subscription is left out)."""
    ids, resets, added = [], [], []
    for subscription_id, succeeded in outcomes.items():
        last_success = max((i for i, ok in enumerate(succeeded) if ok), default=None)
        ids.append(subscription_id)
        resets.append(last_success is not None)
        added.append(len(succeeded) if last_success is None else len(succeeded) - last_success - 1)
    rows = await conn.fetch(
        "UPDATE webhook_subscriptions s SET consecutive_failures ="
        " CASE WHEN o.reset THEN o.added ELSE s.consecutive_failures + o.added END"
        " FROM unnest($1::uuid[], $2::bool[], $3::int[]) AS o (id, reset, added)"
        " WHERE s.id = o.id AND NOT (o.reset AND o.added = 0 AND s.consecutive_failures = 0)"
        " RETURNING s.id, s.consecutive_failures",
        ids, resets, added,
    )
    return {row["id"]: row["consecutive_failures"] for row in rows if row["consecutive_failures"]}


async def subscription_secret_row(conn: Connection, subscription_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id::text, owner_id, url, enabled FROM webhook_subscriptions WHERE id = $1", subscription_id
    )
    return row


async def deliveries(
    conn: Connection, subscription_id: str, status: str | None, limit: int
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id::text, event_id, event_type, event_time, status, attempts, next_attempt_at, last_status,"
        " last_error, replay_of::text, created_at, finished_at FROM webhook_deliveries"
        " WHERE subscription_id = $1 AND ($2::text IS NULL OR status = $2) ORDER BY created_at DESC, id LIMIT $3",
        _uuid(subscription_id), status, limit,
    )
    return rows


async def attempts_of(conn: Connection, delivery_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    rows = await conn.fetch(
        "SELECT delivery_id::text, attempt, attempted_at, status_code, error, duration_ms FROM webhook_attempts"
        " WHERE delivery_id = ANY($1::uuid[]) ORDER BY delivery_id, attempt",
        [_uuid(i) for i in delivery_ids],
    )
    found: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        found.setdefault(r["delivery_id"], []).append({k: r[k] for k in r.keys() if k != "delivery_id"})
    return found


async def delivery(conn: Connection, subscription_id: str, delivery_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM webhook_deliveries WHERE id = $1 AND subscription_id = $2",
        _uuid(delivery_id), _uuid(subscription_id),
    )
    return row


async def deliveries_between(
    conn: Connection, subscription_id: str, since: datetime, until: datetime | None, event_types: Sequence[str] | None
) -> list[asyncpg.Record]:
    """The first deliveries of events in a time range (replays are not replayed again)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, event_id, event_type, event_time, payload FROM webhook_deliveries WHERE subscription_id = $1"
        " AND replay_of IS NULL AND event_time >= $2 AND ($3::timestamptz IS NULL OR event_time < $3)"
        " AND ($4::text[] IS NULL OR event_type = ANY($4)) ORDER BY event_time, id",
        _uuid(subscription_id), since, until, list(event_types) if event_types else None,
    )
    return rows


def _uuid(value: str | uuid.UUID) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)
