"""One handler for every consumed event, and the work the background loops hand over.

`on_event` runs in the transaction the framework opened for the event, or for the batch of events it
belongs to (the inbox rows are written in it), and in that transaction: applies the rules (one
notification per rule and recipient, kept unique by (cause, rule, recipient) in the store as well),
queues the e-mails, queues a webhook delivery per matching subscription, and sets or cancels the
timers the event concerns. Notifications, e-mails, webhook deliveries, timers and the digest's rows
are gathered while the batch's events are handled and written, in their order, just before the
commit: a few round trips a batch rather than several an event. A committed notification is announced to every instance
with NOTIFY, so the one holding the rep's socket pushes it.
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
              "sales.lead.converted.v1"}
LEAD_MERGED = "sales.lead.merged.v1"  # about two leads: its subject, the survivor, and the merged one (_merge_changes)
_OPPORTUNITY_ACTIVE = {"sales.opportunity.created.v1", "sales.opportunity.stage_changed.v1",
                       "sales.opportunity.assessed.v1", "sales.opportunity.owners_changed.v1",
                       "sales.opportunity.reactivated.v1"}
# an edit (name, amount, close date, product) is activity too, but it may be of a suspended deal
_OPPORTUNITY_EDITED = "sales.opportunity.updated.v1"
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
    writes = _writes_of(tx, ctx)
    for rule in await _rules(tx.conn, ctx):
        if rule.applies_to(event.type, event.data):
            recipients = resolve_recipients(rule, event.data, ctx.org)
            writes.drafts += await _drafts(tx.conn, ctx, Notice.of(rule), recipients, cause_id=event.id,
                                           event_type=event.type, subject=event.subject, data=event.data,
                                           cause_time=event.time, traceparent=event.traceparent)
    subscriptions = (await _subscriptions(tx.conn, ctx)).get(event.type, [])
    if subscriptions:
        writes.deliveries.append(store.EventToDeliver(subscriptions, event.id, event.type, event.time,
                                                      event.to_json()))
    if event.type == LEAD_MERGED:
        timers, leads = _merge_changes(event)
        writes.timers += timers
        writes.leads += leads
        return
    if (timer_change := _timer_change(ctx, event)) is not None:
        writes.timers.append(timer_change)
    match _watched(event):
        case store.LeadWatch() as lead:
            writes.leads.append(lead)
        case store.OpportunityWatch() as opportunity:
            writes.opportunities.append(opportunity)


@dataclass
class _Writes:
    """What the events of one transaction store, gathered while its handlers run and written just
    before it commits, a few round trips for the whole batch of events instead of several per event
    (the consumer applies a batch of events in one transaction: shared/inbox.py)."""

    drafts: list["Draft"] = field(default_factory=list)
    timers: list[store.TimerChange] = field(default_factory=list)
    leads: list[store.LeadWatch] = field(default_factory=list)
    opportunities: list[store.OpportunityWatch] = field(default_factory=list)
    deliveries: list[store.EventToDeliver] = field(default_factory=list)

    async def write(self, conn: Connection, ctx: Context) -> None:
        await store_drafts(conn, ctx, self.drafts)
        # The cached subscriptions may still name one deleted a moment ago: the store skips it.
        if await store.add_deliveries_of(conn, self.deliveries):
            await conn.execute("SELECT pg_notify($1, '')", WEBHOOKS_DUE_CHANNEL)
        await store.change_timers(conn, self.timers)
        await store.watch_leads(conn, self.leads)
        await store.watch_opportunities(conn, self.opportunities)


def _writes_of(tx: Transaction, ctx: Context) -> _Writes:
    writes: _Writes | None = tx.state.get(__name__)
    if writes is None:
        writes = tx.state[__name__] = _Writes()
        tx.before_commit(lambda: writes.write(tx.conn, ctx))
    return writes


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


@dataclass(frozen=True)
class Draft:
    """A notification to store, and its e-mail when the recipient takes e-mail and has an address."""

    notification: store.NewNotification
    email_to: str | None
    send_after: datetime  # the end of the recipient's quiet hours, or now


async def _drafts(
    conn: Connection, ctx: Context, notice: Notice, recipients: Sequence[str], *, cause_id: str, event_type: str,
    subject: str, data: Mapping[str, Any], cause_time: datetime | None, traceparent: str | None = None,
) -> list[Draft]:
    """One notification per recipient, in their language, on the channels their preferences and quiet
    hours allow."""
    if not recipients:
        return []
    now = ctx.clock.now()
    context = template_context(event_type, subject, data, ctx.org)
    prefs = await _preferences(conn, ctx, recipients)
    drafts = []
    for user_id in recipients:
        preference: Preferences = prefs[user_id]
        channels = preference.channels(notice.channels)
        quiet_until = preference.quiet_until(now)
        if quiet_until is not None and notice.priority != "high" and "push" in channels:
            channels.remove("push")  # quiet hours: it waits in the inbox; high priority still pushes
            metrics.notifications.labels("push", "quiet_hours").inc()
        title, body = render(notice.template(preference.language), context)
        user = ctx.org.user(user_id)
        drafts.append(Draft(
            store.NewNotification(user_id, notice.rule_id, cause_id, event_type, subject, title, body, channels,
                                  notice.priority, cause_time, traceparent),
            user.email if "email" in channels and user is not None and user.email else None,
            quiet_until or now))
    return drafts


async def store_drafts(conn: Connection, ctx: Context, drafts: Sequence[Draft]) -> list[asyncpg.Record]:
    """Store (and announce) the drafts and queue their e-mails; a draft whose cause already notified
    its recipient under its rule is skipped. Returns the notifications created."""
    created = await store.add_notifications(conn, [d.notification for d in drafts])
    by_key = {(row["cause_id"], row["rule_id"], row["recipient"]): row for row in created}
    emails = []
    for draft in drafts:
        n = draft.notification
        row = by_key.get((n.cause_id, n.rule_id, n.recipient))
        if row is None:
            metrics.notifications.labels("inbox", "duplicate").inc()
            continue
        metrics.notifications.labels("inbox", "stored").inc()
        if draft.email_to is not None:
            emails.append(store.NewEmail(row["id"], draft.email_to, n.title, n.body, draft.send_after))
    await store.queue_emails(conn, emails)
    metrics.notifications.labels("email", "queued").inc(len(emails))
    return created


async def notify(
    conn: Connection, ctx: Context, notice: Notice, recipients: Sequence[str], *, cause_id: str, event_type: str,
    subject: str, data: Mapping[str, Any], cause_time: datetime | None, traceparent: str | None = None,
) -> list[asyncpg.Record]:
    """Store (and announce) one notification per recipient now; recipients already notified for this
    cause and rule are skipped. Returns the notifications created."""
    drafts = await _drafts(conn, ctx, notice, recipients, cause_id=cause_id, event_type=event_type,
                           subject=subject, data=data, cause_time=cause_time, traceparent=traceparent)
    return await store_drafts(conn, ctx, drafts)


def _timer_change(ctx: Context, event: CloudEvent) -> store.TimerChange | None:
    data = event.data
    owner = data.get("owner_id") if isinstance(data.get("owner_id"), str) else None
    follow_ups = (FOLLOW_UP_REMINDER, FOLLOW_UP_ESCALATION)
    if event.type == "sales.lead.assigned.v1":
        due = _time(data.get("follow_up_due_at"))
        if owner and due is not None:
            return _follow_up_reminder(event, owner, due)
        return store.TimerChange(event.subject, follow_ups)
    if event.type in _LEAD_DONE:
        return store.TimerChange(event.subject, follow_ups)
    if (event.type in _OPPORTUNITY_ACTIVE or event.type == _OPPORTUNITY_EDITED) and owner:
        days = ctx.config.opportunity_idle_days
        return store.TimerChange(event.subject, (OPPORTUNITY_IDLE,), OPPORTUNITY_IDLE, owner,
                                 event.time + timedelta(days=days),
                                 {"opportunity_id": event.subject, "idle_days": days, "owner_id": owner},
                                 after_cancellation=event.type != _OPPORTUNITY_EDITED)
    if event.type in _OPPORTUNITY_ACTIVE or event.type in _OPPORTUNITY_DONE:
        return store.TimerChange(event.subject, (OPPORTUNITY_IDLE,))
    return None


_LEAD_CLOSED = {"sales.lead.qualified.v1", "sales.lead.disqualified.v1", "sales.lead.converted.v1"}
_OPPORTUNITY_CHANGED = {"sales.opportunity.created.v1", "sales.opportunity.stage_changed.v1",
                        "sales.opportunity.owners_changed.v1", "sales.opportunity.reactivated.v1"}


def _watched(event: CloudEvent) -> store.LeadWatch | store.OpportunityWatch | None:
    """What the daily digest needs from an event: a lead's follow-up and score, an open deal's close date."""
    data, kind = event.data, event.type
    owner = data.get("owner_id") if isinstance(data.get("owner_id"), str) else None
    if kind in ("sales.lead.captured.v1", "sales.lead.assigned.v1", "sales.lead.grade_changed.v1"):
        grade = data.get("grade") if kind != "sales.lead.grade_changed.v1" else data.get("to_grade")
        return store.LeadWatch(event.subject, owner_id=owner, grade=grade if isinstance(grade, str) else None,
                               follow_up_due_at=_time(data.get("follow_up_due_at")))
    if kind == "sales.lead.contacted.v1":
        return store.LeadWatch(event.subject, contacted_at=_time(data.get("contacted_at")) or event.time)
    if kind in _LEAD_CLOSED:
        return store.LeadWatch(event.subject, closed=True)
    if kind == "sales.lead.scored.v1" and isinstance(data.get("score"), int):
        return store.LeadWatch(event.subject, owner_id=owner, score=data["score"],
                               scored_at=_time(data.get("scored_at")) or event.time)
    if kind in _OPPORTUNITY_CHANGED:
        amount = data.get("amount")
        return store.OpportunityWatch(
            event.subject, owner_id=owner, amount=str(amount) if amount is not None else None,
            currency=data.get("currency"), expected_close_date=_date(data.get("expected_close_date")),
            open=True if kind == "sales.opportunity.reactivated.v1" else None)
    if kind in _OPPORTUNITY_DONE:
        return store.OpportunityWatch(event.subject, owner_id=owner, open=False)
    return None


def _follow_up_reminder(event: CloudEvent, owner: str, due: datetime) -> store.TimerChange:
    """The lead's follow-up reminder to its owner at `due`, replacing its earlier reminders and escalations."""
    return store.TimerChange(event.subject, (FOLLOW_UP_REMINDER, FOLLOW_UP_ESCALATION), FOLLOW_UP_REMINDER, owner,
                             due, {"lead_id": event.subject, "grade": event.data.get("grade"),
                                   "due_at": event.data.get("follow_up_due_at"), "owner_id": owner})


def _merge_changes(event: CloudEvent) -> tuple[list[store.TimerChange], list[store.LeadWatch]]:
    """A merge closes the merged lead (its follow-up reminders stop, the digest leaves it out) and, when the
    event tells the survivor's state after it (merges since these fields exist), updates the survivor: no
    longer new, its reminders stop too (the moved touches contacted it); still new, its reminder moves to
    the follow-up due time the merge left (the earlier of the two leads'), unless that has passed: then the
    survivor's own timers, which may have reminded already, are left as they are."""
    data = event.data
    follow_ups = (FOLLOW_UP_REMINDER, FOLLOW_UP_ESCALATION)
    merged_id = str(data["merged_lead_id"])
    timers = [store.TimerChange(merged_id, follow_ups)]
    leads = [store.LeadWatch(merged_id, closed=True)]
    status = data.get("status")
    if status is None:
        return timers, leads
    owner = data.get("owner_id") if isinstance(data.get("owner_id"), str) else None
    due = _time(data.get("follow_up_due_at"))
    if status != "new":
        timers.append(store.TimerChange(event.subject, follow_ups))
    elif owner and due is not None and due > event.time:
        timers.append(_follow_up_reminder(event, owner, due))
    grade = data.get("grade")
    leads.append(store.LeadWatch(event.subject, grade=grade if isinstance(grade, str) else None,
                                 follow_up_due_at=due, contacted_at=_time(data.get("last_contacted_at"))))
    return timers, leads


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
            await store.change_timers(conn, [store.TimerChange(
                timer["subject"], (), FOLLOW_UP_ESCALATION, manager,
                timer["due_at"] + timedelta(seconds=ctx.config.escalate_after_s), data)])
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
    drafts = []
    for user in ctx.org.with_role(Role.REP):
        found = rows.get(user.id, {})
        digest = Digest(tuple(found.get("overdue", ())), tuple(found.get("closing", ())), tuple(found.get("hot", ())))
        if digest:
            drafts += await _drafts(conn, ctx, notice, [user.id], cause_id=f"timer:{timer['id']}",
                                    event_type=f"notifications.timer.{DAILY_DIGEST}", subject=timer["subject"],
                                    data=digest.context(), cause_time=timer["due_at"])
    await store_drafts(conn, ctx, drafts)
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
