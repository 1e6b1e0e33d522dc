"""One handler for every consumed event, and the work the background loops hand over.

`on_event` runs in the transaction the framework opened for the event (the inbox row is written in
it), and in that transaction: applies the rules (one notification per rule and recipient, kept
unique by (cause, rule, recipient) in the store as well), queues the e-mails, queues a webhook
delivery per matching subscription, and sets or cancels the timers the event concerns. A committed
notification is announced to every instance with NOTIFY, so the one holding the rep's socket
pushes it.
"""

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from services.notifications import metrics, store
from services.notifications.clock import Clock
from services.notifications.config import NotificationsConfig
from services.notifications.defaults import DEFAULT_RULES, SYSTEM_TEMPLATES
from services.notifications.domain import (
    Digest,
    Preferences,
    Rule,
    Template,
    next_digest_at,
    parse_rule,
    render,
    resolve_recipients,
    template_context,
)
from shared.db import Connection, Transaction
from shared.events.catalog import EVENT_TYPES
from shared.events.envelope import CloudEvent
from shared.org import Organisation, Role, cached_organisation
from shared.settings import get_settings

log = logging.getLogger(__name__)

KNOWN_EVENT_TYPES = list(EVENT_TYPES)
WEBHOOKS_DUE_CHANNEL = "funnelcast_webhooks_due"  # wakes the delivery loops at commit

FOLLOW_UP_REMINDER, FOLLOW_UP_ESCALATION, OPPORTUNITY_IDLE, DAILY_DIGEST = (
    "follow-up-reminder", "follow-up-escalation", "opportunity-idle", "daily-digest")
_LEAD_DONE = {"sales.lead.contacted.v1", "sales.lead.qualified.v1", "sales.lead.disqualified.v1",
              "sales.lead.converted.v1", "sales.lead.merged.v1"}
_OPPORTUNITY_ACTIVE = {"sales.opportunity.created.v1", "sales.opportunity.stage_changed.v1",
                       "sales.opportunity.assessed.v1", "sales.opportunity.owners_changed.v1",
                       "sales.opportunity.reactivated.v1"}
_OPPORTUNITY_DONE = {"sales.opportunity.won.v1", "sales.opportunity.lost.v1", "sales.opportunity.terminated.v1",
                     "sales.opportunity.archived.v1", "sales.opportunity.suspended.v1"}


@dataclass
class ConfigCache:
    """Rules, webhook subscriptions and preferences kept in memory between events (three queries fewer
    per event). Used only while the push hub listens on Postgres: every change to them is announced on
    store.CONFIG_CHANNEL at commit, and the hub drops the copies (`reset`)."""

    live: bool = False
    generation: int = 0
    rules: list[Rule] | None = None
    subscriptions: dict[str, list[uuid.UUID]] | None = None
    preferences: dict[str, Preferences] | None = None

    def reset(self, live: bool) -> None:
        self.live, self.rules, self.subscriptions, self.preferences = live, None, None, None
        self.generation += 1


@dataclass
class Context:
    org: Organisation
    config: NotificationsConfig = field(default_factory=NotificationsConfig)
    clock: Clock = field(default_factory=Clock)
    cache: ConfigCache = field(default_factory=ConfigCache)


_context: Context | None = None


def configure(context: Context) -> None:
    """Set by the service's start-up (main.py): the organisation, settings and clock handlers use."""
    global _context
    _context = context


def current() -> Context:
    global _context
    if _context is None:
        _context = Context(cached_organisation(get_settings().org_file))
    return _context


def default_rules() -> list[Rule]:
    return [parse_rule(raw, KNOWN_EVENT_TYPES) for raw in DEFAULT_RULES]


@dataclass(frozen=True)
class Notice:
    """What to send: a rule's (or a timer's) templates, channels and priority."""

    rule_id: str
    templates: Mapping[str, Template]
    channels: Sequence[str]
    priority: str = "normal"

    @classmethod
    def of(cls, rule: Rule) -> "Notice":
        return cls(rule.id, rule.templates, rule.channels, rule.priority)

    def template(self, language: str) -> Template:
        return self.templates.get(language) or self.templates["zh-CN"]


async def on_event(tx: Transaction, event: CloudEvent) -> None:
    ctx = current()
    for rule in await _rules(tx.conn, ctx):
        if rule.applies_to(event.type, event.data):
            recipients = resolve_recipients(rule, event.data, ctx.org)
            await notify(tx.conn, ctx, Notice.of(rule), recipients, cause_id=event.id, event_type=event.type,
                         subject=event.subject, data=event.data, cause_time=event.time,
                         traceparent=event.traceparent)
    await _queue_webhooks(tx.conn, ctx, event)
    await _update_timers(tx.conn, ctx, event)
    await _watch(tx.conn, event)


HANDLERS = {t: on_event for t in KNOWN_EVENT_TYPES}


async def _rules(conn: Connection, ctx: Context) -> list[Rule]:
    cache = ctx.cache
    if cache.live and cache.rules is not None:
        return cache.rules
    generation = cache.generation
    rules = await store.rules(conn, KNOWN_EVENT_TYPES, ctx.org.users)
    if cache.live and cache.generation == generation:  # no change announced while loading
        cache.rules = rules
    return rules


async def _preferences(conn: Connection, ctx: Context, users: Sequence[str]) -> dict[str, Preferences]:
    cache = ctx.cache
    if not cache.live:
        return await store.preferences_of(conn, users)
    if cache.preferences is None:
        generation = cache.generation
        stored = await store.all_preferences(conn)
        if cache.generation != generation:
            return await store.preferences_of(conn, users)
        cache.preferences = stored
    return {u: cache.preferences.get(u, Preferences()) for u in users}


async def _subscriptions(conn: Connection, ctx: Context) -> dict[str, list[uuid.UUID]]:
    cache = ctx.cache
    if cache.live and cache.subscriptions is not None:
        return cache.subscriptions
    generation = cache.generation
    subscriptions = await store.subscriptions_by_type(conn)
    if cache.live and cache.generation == generation:
        cache.subscriptions = subscriptions
    return subscriptions


async def notify(
    conn: Connection, ctx: Context, notice: Notice, recipients: Sequence[str], *, cause_id: str, event_type: str,
    subject: str, data: Mapping[str, Any], cause_time: datetime | None, traceparent: str | None = None,
) -> list[asyncpg.Record]:
    """Store (and announce) one notification per recipient; recipients already notified for this
    cause and rule are skipped. Returns the notifications created."""
    if not recipients:
        return []
    now = ctx.clock.now()
    context = template_context(event_type, subject, data, ctx.org)
    prefs = await _preferences(conn, ctx, recipients)
    created = []
    for user_id in recipients:
        preference: Preferences = prefs[user_id]
        channels = preference.channels(notice.channels)
        quiet_until = preference.quiet_until(now)
        if quiet_until is not None and notice.priority != "high" and "push" in channels:
            channels.remove("push")  # quiet hours: it waits in the inbox; high priority still pushes
            metrics.notifications.labels("push", "quiet_hours").inc()
        title, body = render(notice.template(preference.language), context)
        row = await store.add_notification(conn, store.NewNotification(
            user_id, notice.rule_id, cause_id, event_type, subject, title, body, channels, notice.priority,
            cause_time, traceparent))
        if row is None:
            metrics.notifications.labels("inbox", "duplicate").inc()
            continue
        created.append(row)
        metrics.notifications.labels("inbox", "stored").inc()
        user = ctx.org.user(user_id)
        if "email" in channels and user is not None and user.email:
            await store.queue_email(conn, row["id"], user.email, title, body, quiet_until or now)
            metrics.notifications.labels("email", "queued").inc()
    return created


async def _queue_webhooks(conn: Connection, ctx: Context, event: CloudEvent) -> None:
    subscriptions = (await _subscriptions(conn, ctx)).get(event.type, [])
    queued = 0
    for subscription_id in subscriptions:
        if await store.add_delivery(conn, subscription_id, event.id, event.type, event.time, event.to_json()):
            queued += 1
    if queued:
        await conn.execute("SELECT pg_notify($1, '')", WEBHOOKS_DUE_CHANNEL)


async def _update_timers(conn: Connection, ctx: Context, event: CloudEvent) -> None:
    data = event.data
    owner = data.get("owner_id") if isinstance(data.get("owner_id"), str) else None
    if event.type == "sales.lead.assigned.v1":
        due = _time(data.get("follow_up_due_at"))
        if owner and due is not None:
            await store.schedule_timer(conn, FOLLOW_UP_REMINDER, event.subject, owner, due, {
                "lead_id": event.subject, "grade": data.get("grade"), "due_at": data.get("follow_up_due_at"),
                "owner_id": owner}, replacing=[FOLLOW_UP_REMINDER, FOLLOW_UP_ESCALATION])
        else:
            await store.cancel_timers(conn, event.subject, [FOLLOW_UP_REMINDER, FOLLOW_UP_ESCALATION])
    elif event.type in _LEAD_DONE:
        await store.cancel_timers(conn, event.subject, [FOLLOW_UP_REMINDER, FOLLOW_UP_ESCALATION])
    elif event.type in _OPPORTUNITY_ACTIVE and owner:
        days = ctx.config.opportunity_idle_days
        await store.schedule_timer(conn, OPPORTUNITY_IDLE, event.subject, owner, event.time + timedelta(days=days),
                                   {"opportunity_id": event.subject, "idle_days": days, "owner_id": owner},
                                   replacing=[OPPORTUNITY_IDLE])
    elif event.type in _OPPORTUNITY_ACTIVE or event.type in _OPPORTUNITY_DONE:
        await store.cancel_timers(conn, event.subject, [OPPORTUNITY_IDLE])


_LEAD_CLOSED = {"sales.lead.qualified.v1", "sales.lead.disqualified.v1", "sales.lead.converted.v1",
                "sales.lead.merged.v1"}
_OPPORTUNITY_CHANGED = {"sales.opportunity.created.v1", "sales.opportunity.stage_changed.v1",
                        "sales.opportunity.owners_changed.v1", "sales.opportunity.reactivated.v1"}


async def _watch(conn: Connection, event: CloudEvent) -> None:
    """Keep what the daily digest needs: each lead's follow-up and score, each open deal's close date."""
    data, kind = event.data, event.type
    owner = data.get("owner_id") if isinstance(data.get("owner_id"), str) else None
    if kind in ("sales.lead.captured.v1", "sales.lead.assigned.v1", "sales.lead.grade_changed.v1"):
        grade = data.get("grade") if kind != "sales.lead.grade_changed.v1" else data.get("to_grade")
        await store.watch_lead(conn, event.subject, owner_id=owner, grade=grade if isinstance(grade, str) else None,
                               follow_up_due_at=_time(data.get("follow_up_due_at")))
    elif kind == "sales.lead.contacted.v1":
        await store.watch_lead(conn, event.subject, contacted_at=_time(data.get("contacted_at")) or event.time)
    elif kind in _LEAD_CLOSED:
        await store.watch_lead(conn, event.subject, closed=True)
    elif kind == "sales.lead.scored.v1" and isinstance(data.get("score"), int):
        await store.watch_lead(conn, event.subject, owner_id=owner, score=data["score"],
                               scored_at=_time(data.get("scored_at")) or event.time)
    elif kind in _OPPORTUNITY_CHANGED:
        close = data.get("expected_close_date")
        amount = data.get("amount")
        await store.watch_opportunity(
            conn, event.subject, owner_id=owner, amount=str(amount) if amount is not None else None,
            currency=data.get("currency"), expected_close_date=_date(close),
            open_=True if kind == "sales.opportunity.reactivated.v1" else None)
    elif kind in _OPPORTUNITY_DONE:
        await store.watch_opportunity(conn, event.subject, owner_id=owner, open_=False)


def _date(value: Any) -> date | None:
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


async def fire_timer(conn: Connection, ctx: Context, timer: asyncpg.Record) -> None:
    """A due timer: its notification, and for a missed follow-up, the escalation to come."""
    data = json.loads(timer["data"])
    kind = timer["kind"]
    if kind == DAILY_DIGEST:
        await store.timer_fired(conn, timer["id"], ctx.clock.now())  # first: only one digest timer may be pending
        await _send_digests(conn, ctx, timer)
        metrics.timers_fired.labels(kind).inc()
        return
    await notify(conn, ctx, Notice(kind, SYSTEM_TEMPLATES[kind], ("inbox", "push", "email"), "high"),
                 [timer["recipient"]], cause_id=f"timer:{timer['id']}", event_type=f"notifications.timer.{kind}",
                 subject=timer["subject"], data=data, cause_time=timer["due_at"])
    if kind == FOLLOW_UP_REMINDER:
        manager = ctx.org.manager_of(timer["recipient"])
        if manager:
            await store.schedule_timer(conn, FOLLOW_UP_ESCALATION, timer["subject"], manager,
                                       timer["due_at"] + timedelta(seconds=ctx.config.escalate_after_s), data)
    await store.timer_fired(conn, timer["id"], ctx.clock.now())
    metrics.timers_fired.labels(kind).inc()


async def _send_digests(conn: Connection, ctx: Context, timer: asyncpg.Record) -> None:
    """Each rep with something to look at gets a digest; then the next one is scheduled."""
    config = ctx.config
    now = ctx.clock.now()
    today = now.astimezone(ZoneInfo(config.digest_timezone)).date()
    rows = await store.digest_rows(conn, now, today, today + timedelta(days=7), now - timedelta(days=1),
                                   config.digest_high_score)
    notice = Notice(DAILY_DIGEST, SYSTEM_TEMPLATES[DAILY_DIGEST], ("inbox", "push", "email"))
    for user in ctx.org.with_role(Role.REP):
        found = rows.get(user.id, {})
        digest = Digest(tuple(found.get("overdue", ())), tuple(found.get("closing", ())), tuple(found.get("hot", ())))
        if digest:
            await notify(conn, ctx, notice, [user.id], cause_id=f"timer:{timer['id']}",
                         event_type=f"notifications.timer.{DAILY_DIGEST}", subject=timer["subject"],
                         data=digest.context(), cause_time=timer["due_at"])
    await store.ensure_digest_timer(
        conn, next_digest_at(max(now, timer["due_at"]), config.digest_hour, config.digest_timezone))


async def webhook_disabled(conn: Connection, ctx: Context, subscription: asyncpg.Record, failures: int) -> None:
    reason = f"{failures} deliveries in a row were dead-lettered"
    await store.set_enabled(conn, subscription["id"], False, reason)
    subscription_id = str(subscription["id"])
    data = {"url": subscription["url"], "subscription_id": subscription_id, "failures": failures}
    await notify(conn, ctx, Notice("webhook-disabled", SYSTEM_TEMPLATES["webhook-disabled"],
                                   ("inbox", "push", "email"), "high"),
                 [subscription["owner_id"]], cause_id=f"webhook-disabled:{subscription_id}:{failures}",
                 event_type="notifications.webhook.disabled", subject=subscription_id, data=data, cause_time=None)
    log.warning("webhook subscription %s disabled: %s", subscription["id"], reason)
