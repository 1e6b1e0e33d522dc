"""One function per command: load, apply the domain's rules, save, publish in the same transaction.

These are the only places that open a transaction; a command that fails rolls back its change and
the events it had queued, so a refused request publishes nothing.
"""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from services.leads import metrics, store
from services.leads.domain import Campaign, Contact, Grade, Lead, money, rep_for_turn
from shared.auth import Principal, may_act_on
from shared.db import Database
from shared.errors import DomainError, Forbidden, NotFound, Unprocessable
from shared.events.envelope import CloudEvent
from shared.org import Organisation, Role

SYSTEM = "system"
_CAPTURE_ATTEMPTS = 3


def _ts(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def lead_json(lead: Lead) -> dict[str, Any]:
    """A lead as the API answers it (and as a merge note keeps a merged lead as it was)."""
    return {
        "id": lead.id,
        "status": str(lead.status),
        "grade": lead.grade and str(lead.grade),
        "source": lead.source,
        "region": lead.region,
        "team": lead.team,
        "owner_id": lead.owner_id,
        "campaign_id": lead.campaign_id,
        "contact": lead.contact.as_event(),
        "attributes": lead.attributes,
        "captured_at": _ts(lead.captured_at),
        "captured_by": lead.captured_by,
        "follow_up_due_at": _ts(lead.follow_up_due_at),
        "first_response_at": _ts(lead.first_response_at),
        "last_contacted_at": _ts(lead.last_contacted_at),
        "touch_count": lead.touch_count,
        "disqualify_reason": lead.disqualify_reason,
        "converted_at": _ts(lead.converted_at),
        "merged_into": lead.merged_into,
        "version": lead.version,
    }


@dataclass(frozen=True)
class CaptureLead:
    contact: Contact
    source: str = "api"
    grade: Grade | None = None
    region: str | None = None
    owner_id: str | None = None
    campaign_id: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    captured_at: datetime | None = None
    left_at: datetime | None = None


@dataclass(frozen=True)
class Captured:
    lead: Lead
    duplicate_of: str | None = None
    matched_on: tuple[str, ...] = ()


async def capture_lead(db: Database, org: Organisation, actor: Principal | None, cmd: CaptureLead) -> Captured:
    """Capture a lead, or, when its phone or e-mail is already known, note the contact on that lead.

    Two statements and no explicit transaction: one looks for a duplicate, checks the campaign and takes
    the team's round-robin turn; one writes the lead with its events. Each is group-committed with the
    same statement of concurrent captures (`Database.batched`). A capture that loses a race for the same
    contact between the two writes nothing and finds the duplicate on its next try (its turn is not given
    back: the team's next capture goes to the rep after)."""
    assignment = _assignment(org, actor, cmd)
    query = store.CaptureQuery(cmd.contact.phone, cmd.contact.email, cmd.campaign_id, assignment.round_robin_team)
    for _ in range(_CAPTURE_ATTEMPTS):
        check = await db.batched(store.check_captures, query)
        if check.duplicate is None:
            if not check.campaign_known:
                raise Unprocessable(f"campaign_id: there is no campaign {cmd.campaign_id}")
            lead, events = _new_lead(db, actor, cmd, assignment, check.turn)
            if not await db.batched(store.insert_new_leads, (lead, events)):
                continue
            metrics.leads_captured.labels(cmd.source, str(cmd.grade) if cmd.grade else "none").inc()
            return Captured(lead)
        existing, matched_on = check.duplicate
        async with db.statements() as conn:
            existing = await _survivor(conn, existing)
            noted_on = await _note_duplicate(conn, existing, matched_on, actor, cmd)
            if noted_on != existing.id:  # merged into another lead since it was found: answer with that one
                existing = await store.get(conn, noted_on) or existing
        metrics.lead_duplicates.labels(cmd.source, "+".join(matched_on)).inc()
        return Captured(existing, duplicate_of=existing.id, matched_on=tuple(matched_on))
    raise RuntimeError("capture kept colliding with concurrent captures of the same contact")


@dataclass(frozen=True)
class _Assignment:
    """Whom a new lead goes to: an owner known before it is written, or a turn of a team's round robin."""

    owner_id: str | None = None
    team: str | None = None
    method: str | None = None  # explicit / round_robin
    round_robin_reps: tuple[str, ...] = ()

    @property
    def round_robin_team(self) -> str | None:
        return self.team if self.round_robin_reps else None

    def owner(self, turn: int | None) -> str | None:
        if self.round_robin_reps and turn is not None:
            return rep_for_turn(self.round_robin_reps, turn)
        return self.owner_id


def _assignment(org: Organisation, actor: Principal | None, cmd: CaptureLead) -> _Assignment:
    """Explicit owner; else the region's team by round robin; else a capturing rep; else nobody."""
    if cmd.owner_id is not None:
        user = org.user(cmd.owner_id)
        if user is None or user.role not in (Role.REP, Role.MANAGER):
            raise Unprocessable(f"owner_id: {cmd.owner_id!r} is not a rep or manager of the organisation")
        if actor is not None and not may_act_on(actor, user.id, org):
            raise Forbidden(f"owner_id: {actor.user_id} may not give leads to {user.id}")
        return _Assignment(user.id, user.team, "explicit")
    if cmd.region is not None:
        for team in org.teams_in_region(cmd.region):
            reps = tuple(u.id for u in org.members(team.id))
            if reps:
                return _Assignment(None, team.id, "round_robin", reps)
    if actor is not None and actor.role is Role.REP:
        return _Assignment(actor.user_id, actor.team, "explicit")
    return _Assignment()


def _new_lead(
    db: Database, actor: Principal | None, cmd: CaptureLead, assignment: _Assignment, turn: int | None
) -> tuple[Lead, list[CloudEvent]]:
    """The new lead, given to its owner, and its `captured` (and `assigned`) events."""
    lead = Lead.capture(
        str(uuid.uuid4()),
        cmd.contact,
        source=cmd.source,
        grade=cmd.grade,
        region=cmd.region,
        campaign_id=cmd.campaign_id,
        attributes=cmd.attributes,
        captured_at=cmd.captured_at or datetime.now(UTC),
        captured_by=actor.user_id if actor else None,
    )
    owner = assignment.owner(turn)
    if owner is not None:
        lead.assign(owner, assignment.team)
    events = [
        db.event(
            "sales.lead.captured.v1",
            lead.id,
            {
                "lead_id": lead.id,
                "source": lead.source,
                "grade": lead.grade and str(lead.grade),
                "owner_id": lead.owner_id,
                "campaign_id": lead.campaign_id,
                "region": lead.region,
                "contact": lead.contact.as_event(),
                "captured_at": _ts(lead.captured_at),
                "left_at": _ts(cmd.left_at),
                "attributes": lead.attributes,
                "captured_by": lead.captured_by,
                "follow_up_due_at": _ts(lead.follow_up_due_at),
            },
            sequence=lead.next_version(),
        )
    ]
    if owner is not None:
        round_robin = assignment.method == "round_robin"
        events.append(
            db.event(
                "sales.lead.assigned.v1",
                lead.id,
                {
                    "lead_id": lead.id,
                    "owner_id": owner,
                    "previous_owner_id": None,
                    "team": assignment.team,
                    "region": lead.region,
                    "grade": lead.grade and str(lead.grade),
                    "method": assignment.method,
                    "assigned_by": SYSTEM if round_robin or actor is None else actor.user_id,
                    "reason": None,
                    "assigned_at": _ts(datetime.now(UTC)),  # captured_at may be a walk-in's earlier arrival
                    "follow_up_due_at": _ts(lead.follow_up_due_at),
                },
                sequence=lead.next_version(),
            )
        )
    return lead, events


async def _survivor(conn: store.Connection, lead: Lead) -> Lead:
    """The lead a merged duplicate was folded into (following merges of merges)."""
    for _ in range(10):
        if lead.merged_into is None:
            break
        survivor = await store.get(conn, lead.merged_into)
        if survivor is None:
            break
        lead = survivor
    return lead


async def _note_duplicate(
    conn: store.Connection, existing: Lead, matched_on: list[str], actor: Principal | None, cmd: CaptureLead
) -> str:
    """Note the capture on the lead it duplicates; returns the lead noted on (see `store.add_note`)."""
    return await store.add_note(
        conn,
        str(uuid.uuid4()),
        existing.id,
        "duplicate_capture",
        {
            "matched_on": matched_on,
            "source": cmd.source,
            "contact": cmd.contact.as_event(),
            "grade": cmd.grade and str(cmd.grade),
            "region": cmd.region,
            "campaign_id": cmd.campaign_id,
            "attributes": cmd.attributes,
            "captured_at": _ts(cmd.captured_at or datetime.now(UTC)),
        },
        actor.user_id if actor else None,
    )


async def _load_in_scope(conn: store.Connection, lead_id: str, actor: Principal, org: Organisation) -> Lead:
    """The lead, locked for this transaction; out of the caller's scope it does not exist (404)."""
    lead = await store.get(conn, lead_id, for_update=True)
    if lead is None or not may_act_on(actor, lead.owner_id, org):
        raise NotFound(f"there is no lead {lead_id} that you can see")
    return lead


async def get_lead(db: Database, org: Organisation, actor: Principal, lead_id: str) -> Lead:
    async with db.pool.acquire() as conn:
        lead = await store.get(conn, lead_id)
    if lead is None or not may_act_on(actor, lead.owner_id, org):
        raise NotFound(f"there is no lead {lead_id} that you can see")
    return lead


@dataclass(frozen=True)
class LogTouch:
    channel: str
    note: str | None = None
    outcome: str | None = None
    contacted_at: datetime | None = None


async def log_touch(
    db: Database, org: Organisation, actor: Principal, lead_id: str, cmd: LogTouch
) -> tuple[Lead, dict[str, Any]]:
    async with db.transaction() as tx:
        lead = await _load_in_scope(tx.conn, lead_id, actor, org)
        at = cmd.contacted_at or datetime.now(UTC)
        number = lead.record_touch(at)
        touch_id = str(uuid.uuid4())
        touch: dict[str, Any] = {
            "id": touch_id,
            "number": number,
            "channel": cmd.channel,
            "outcome": cmd.outcome,
            "note": cmd.note,
            "contacted_at": _ts(at),
            "contacted_by": actor.user_id,
        }
        await store.add_touch(
            tx.conn, touch_id, lead.id, number, cmd.channel, cmd.outcome, cmd.note, at, actor.user_id
        )
        tx.publish(
            "sales.lead.contacted.v1",
            lead.id,
            {
                "lead_id": lead.id,
                "touch_id": touch_id,
                "channel": cmd.channel,
                "contacted_at": _ts(at),
                "contacted_by": actor.user_id,
                "touch_number": number,
                "outcome": cmd.outcome,
                "note": cmd.note,
                "owner_id": lead.owner_id,
                "status": str(lead.status),
                "first_response_at": _ts(lead.first_response_at),
            },
            sequence=lead.next_version(),
        )
        await store.save(tx.conn, lead)
    return lead, touch


async def qualify(db: Database, org: Organisation, actor: Principal, lead_id: str, note: str | None) -> Lead:
    async with db.transaction() as tx:
        lead = await _load_in_scope(tx.conn, lead_id, actor, org)
        lead.qualify()
        tx.publish(
            "sales.lead.qualified.v1",
            lead.id,
            {
                "lead_id": lead.id,
                "owner_id": lead.owner_id,
                "grade": lead.grade and str(lead.grade),
                "qualified_by": actor.user_id,
                "qualified_at": _ts(datetime.now(UTC)),
                "note": note,
            },
            sequence=lead.next_version(),
        )
        await store.save(tx.conn, lead)
    return lead


async def disqualify(
    db: Database, org: Organisation, actor: Principal, lead_id: str, reason: str, note: str | None
) -> Lead:
    async with db.transaction() as tx:
        lead = await _load_in_scope(tx.conn, lead_id, actor, org)
        lead.disqualify(reason)
        tx.publish(
            "sales.lead.disqualified.v1",
            lead.id,
            {
                "lead_id": lead.id,
                "reason": lead.disqualify_reason,
                "owner_id": lead.owner_id,
                "disqualified_by": actor.user_id,
                "disqualified_at": _ts(datetime.now(UTC)),
                "note": note,
            },
            sequence=lead.next_version(),
        )
        await store.save(tx.conn, lead)
    return lead


@dataclass(frozen=True)
class ConvertLead:
    account_name: str | None = None
    account_id: str | None = None
    opportunity_name: str | None = None
    amount: Decimal | None = None
    currency: str = "CNY"
    expected_close_date: date | None = None


async def convert(db: Database, org: Organisation, actor: Principal, lead_id: str, cmd: ConvertLead) -> Lead:
    async with db.transaction() as tx:
        lead = await _load_in_scope(tx.conn, lead_id, actor, org)
        now = datetime.now(UTC)
        lead.convert(now)
        # An individual buyer without a company becomes an account in their own name.
        account_name = cmd.account_name or lead.contact.company or lead.contact.name
        tx.publish(
            "sales.lead.converted.v1",
            lead.id,
            {
                "lead_id": lead.id,
                "contact": lead.contact.as_event(),
                "account_name": account_name,
                "account_id": cmd.account_id,
                "owner_id": lead.owner_id,
                "team": lead.team,
                "region": lead.region,
                "campaign_id": lead.campaign_id,
                "source": lead.source,
                "grade": lead.grade and str(lead.grade),
                "attributes": lead.attributes,
                "opportunity": {
                    "name": cmd.opportunity_name or account_name,
                    "amount": str(cmd.amount) if cmd.amount is not None else None,
                    "currency": cmd.currency,
                    "expected_close_date": cmd.expected_close_date.isoformat() if cmd.expected_close_date else None,
                },
                "converted_by": actor.user_id,
                "converted_at": _ts(now),
            },
            sequence=lead.next_version(),
        )
        await store.save(tx.conn, lead)
    return lead


@dataclass(frozen=True)
class RecordEngagement:
    visits: int
    time_on_site_s: float
    page_views: int
    activity: str | None = None
    observed_at: datetime | None = None


async def record_engagement(
    db: Database, org: Organisation, actor: Principal, lead_id: str, cmd: RecordEngagement
) -> Lead:
    async with db.transaction() as tx:
        lead = await _load_in_scope(tx.conn, lead_id, actor, org)
        at = cmd.observed_at or datetime.now(UTC)
        await store.add_engagement(
            tx.conn, lead.id, cmd.visits, cmd.time_on_site_s, cmd.page_views, cmd.activity, actor.user_id, at
        )
        tx.publish(
            "sales.lead.engaged.v1",
            lead.id,
            {
                "lead_id": lead.id,
                "visits": cmd.visits,
                "time_on_site_s": cmd.time_on_site_s,
                "page_views": cmd.page_views,
                "activity": cmd.activity,
                "observed_at": _ts(at),
                "reported_by": actor.user_id,
                "owner_id": lead.owner_id,
            },
            sequence=lead.next_version(),
        )
        await store.save(tx.conn, lead)
    return lead


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)
    duplicates: list[tuple[int, str]] = field(default_factory=list)  # (line, existing lead id)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line, reason)


async def import_leads(
    db: Database,
    org: Organisation,
    actor: Principal,
    rows: Sequence[tuple[int, CaptureLead]],
    *,
    chunk_size: int = 500,
) -> ImportReport:
    """Capture the rows of an import, `chunk_size` rows per transaction.

    A row matching a known lead (or an earlier row) creates nothing and leaves no note, so importing
    the same file again creates nothing; a row the domain refuses (e.g. an unknown owner) is reported
    with its line and the rest go on.
    """
    report = ImportReport()
    for start in range(0, len(rows), chunk_size):
        created: list[Lead] = []
        chunk = rows[start : start + chunk_size]
        async with db.transaction() as tx:
            # one look-up for the chunk; rows created below join it, so a repeat within the file is caught
            known = await store.known_contacts(
                tx.conn,
                [cmd.contact.phone for _, cmd in chunk if cmd.contact.phone],
                [cmd.contact.email for _, cmd in chunk if cmd.contact.email],
            )
            for line, cmd in chunk:
                match = known.get(cmd.contact.phone or "") or known.get(cmd.contact.email or "")
                if match is not None:
                    report.duplicates.append((line, match))
                    continue
                try:
                    lead = await _import_row(db, tx.conn, org, actor, cmd)
                except DomainError as exc:
                    report.rejected.append((line, str(exc)))
                    continue
                if lead is None:  # a concurrent capture took the contact after the look-up
                    existing = await store.find_duplicate(tx.conn, cmd.contact.phone, cmd.contact.email)
                    report.duplicates.append((line, existing[0].id if existing else ""))
                    continue
                created.append(lead)
                known.update({value: lead.id for value in (lead.contact.phone, lead.contact.email) if value})
        for lead in created:
            report.created.append(lead.id)
            metrics.leads_captured.labels(lead.source, str(lead.grade) if lead.grade else "none").inc()
    return report


async def _import_row(
    db: Database, conn: store.Connection, org: Organisation, actor: Principal, cmd: CaptureLead
) -> Lead | None:
    """A new lead of an import, written with its events; None when its contact was taken meanwhile.
    The owner and the campaign are checked before anything is written, so a refusal leaves no trace."""
    assignment = _assignment(org, actor, cmd)
    if cmd.campaign_id is not None and not await store.campaign_exists(conn, cmd.campaign_id):
        raise Unprocessable(f"campaign_id: there is no campaign {cmd.campaign_id}")
    team = assignment.round_robin_team
    turn = await store.take_turn(conn, team) if team else None
    lead, events = _new_lead(db, actor, cmd, assignment, turn)
    [inserted] = await store.insert_new_leads(conn, [(lead, events)])
    return lead if inserted else None


def _campaign_event(campaign: Campaign) -> dict[str, Any]:
    return {
        "campaign_id": campaign.id,
        "name": campaign.name,
        "channel": campaign.channel,
        "status": str(campaign.status),
        "budget": money(campaign.budget),
        "actual_cost": money(campaign.actual_cost),
        "currency": campaign.currency,
        "starts_on": campaign.starts_on.isoformat() if campaign.starts_on else None,
        "ends_on": campaign.ends_on.isoformat() if campaign.ends_on else None,
        "owner_id": campaign.owner_id,
    }


async def create_campaign(db: Database, org: Organisation, actor: Principal, campaign: Campaign) -> store.CampaignRow:
    if campaign.owner_id is not None and org.user(campaign.owner_id) is None:
        raise Unprocessable(f"owner_id: {campaign.owner_id!r} is not a user of the organisation")
    now = datetime.now(UTC)
    async with db.transaction() as tx:
        sequence = campaign.next_version()
        await store.insert_campaign(tx.conn, campaign, actor.user_id, now)
        tx.publish(
            "sales.campaign.created.v1",
            campaign.id,
            {**_campaign_event(campaign), "created_by": actor.user_id, "created_at": _ts(now)},
            sequence=sequence,
        )
    return store.CampaignRow(campaign, actor.user_id, now)


async def update_campaign(
    db: Database, org: Organisation, actor: Principal, campaign_id: str, changes: dict[str, Any]
) -> store.CampaignRow:
    owner = changes.get("owner_id")
    if owner is not None and org.user(owner) is None:
        raise Unprocessable(f"owner_id: {owner!r} is not a user of the organisation")
    async with db.transaction() as tx:
        found = await store.get_campaign(tx.conn, campaign_id, for_update=True)
        if found is None:
            raise NotFound(f"there is no campaign {campaign_id}")
        campaign = found.campaign
        changed = campaign.change(**changes)
        if changed:
            tx.publish(
                "sales.campaign.updated.v1",
                campaign.id,
                {
                    **_campaign_event(campaign),
                    "changed_fields": changed,
                    "updated_by": actor.user_id,
                    "updated_at": _ts(datetime.now(UTC)),
                },
                sequence=campaign.next_version(),
            )
            await store.save_campaign(tx.conn, campaign)
    return found


async def change_grade(db: Database, org: Organisation, actor: Principal, lead_id: str, grade: Grade) -> Lead:
    async with db.transaction() as tx:
        lead = await _load_in_scope(tx.conn, lead_id, actor, org)
        previous = lead.grade
        now = datetime.now(UTC)
        if lead.change_grade(grade, now):
            tx.publish(
                "sales.lead.grade_changed.v1",
                lead.id,
                {
                    "lead_id": lead.id,
                    "from_grade": previous and str(previous),
                    "to_grade": str(grade),
                    "follow_up_due_at": _ts(lead.follow_up_due_at),
                    "owner_id": lead.owner_id,
                    "changed_by": actor.user_id,
                    "changed_at": _ts(now),
                },
                sequence=lead.next_version(),
            )
            await store.save(tx.conn, lead)
    return lead


async def reassign(
    db: Database, org: Organisation, actor: Principal, lead_id: str, owner_id: str, reason: str | None
) -> Lead:
    """A manager (or director, admin) gives a lead in their scope to someone in their scope."""
    user = org.user(owner_id)
    if user is None or user.role not in (Role.REP, Role.MANAGER):
        raise Unprocessable(f"owner_id: {owner_id!r} is not a rep or manager of the organisation")
    if not may_act_on(actor, owner_id, org):
        raise Forbidden(f"owner_id: {actor.user_id} may not give leads to {owner_id}")
    async with db.transaction() as tx:
        lead = await _load_in_scope(tx.conn, lead_id, actor, org)
        if lead.owner_id == owner_id:
            return lead
        previous = lead.assign(owner_id, user.team)
        tx.publish(
            "sales.lead.assigned.v1",
            lead.id,
            {
                "lead_id": lead.id,
                "owner_id": owner_id,
                "previous_owner_id": previous,
                "team": user.team,
                "region": lead.region,
                "grade": lead.grade and str(lead.grade),
                "method": "explicit",
                "assigned_by": actor.user_id,
                "reason": reason,
                "assigned_at": _ts(datetime.now(UTC)),
                "follow_up_due_at": _ts(lead.follow_up_due_at),
            },
            sequence=lead.next_version(),
        )
        await store.save(tx.conn, lead)
    return lead


async def merge(db: Database, org: Organisation, actor: Principal, survivor_id: str, duplicate_id: str) -> Lead:
    """Fold a duplicate lead into another by hand: the duplicate is closed as merged, pointing at the survivor,
    and its touches, notes and engagements move onto the survivor, which takes the details it lacked
    (`Lead.merge_into`); a `merge` note on the survivor keeps the duplicate as it was."""
    async with db.transaction() as tx:
        # lock in id order, so two merges of the same pair cannot deadlock
        loaded = {
            lead_id: await _load_in_scope(tx.conn, lead_id, actor, org)
            for lead_id in sorted({survivor_id, duplicate_id})
        }
        survivor, duplicate = loaded[survivor_id], loaded[duplicate_id]
        as_it_was = lead_json(duplicate)
        merged = duplicate.merge_into(survivor)
        moved = await store.move_history(tx.conn, duplicate.id, survivor.id, merged.touches_before)
        now = datetime.now(UTC)
        await store.add_note(
            tx.conn,
            str(uuid.uuid4()),
            survivor.id,
            "merge",
            {"merged_lead": as_it_was, "matched_on": merged.matched_on, "filled": merged.filled},
            actor.user_id,
        )
        tx.publish(
            "sales.lead.merged.v1",
            survivor.id,
            {
                "lead_id": survivor.id,
                "merged_lead_id": duplicate.id,
                "matched_on": merged.matched_on,
                "merged_by": actor.user_id,
                "merged_at": _ts(now),
                "owner_id": survivor.owner_id,
                "merged_lead_owner_id": duplicate.owner_id,
                "filled": merged.filled,
                "touches_moved": moved.touches,
                "notes_moved": moved.notes,
                "engagements_moved": moved.engagements,
                "status": str(survivor.status),
                "grade": survivor.grade and str(survivor.grade),
                "campaign_id": survivor.campaign_id,
                "region": survivor.region,
                "contact": survivor.contact.as_event(),
                "attributes": survivor.attributes,
                "touch_count": survivor.touch_count,
                "first_response_at": _ts(survivor.first_response_at),
                "last_contacted_at": _ts(survivor.last_contacted_at),
                "follow_up_due_at": _ts(survivor.follow_up_due_at),
            },
            sequence=survivor.next_version(),
        )
        await store.save(tx.conn, duplicate)  # first: it gives up the phone or e-mail the survivor takes
        await store.save(tx.conn, survivor)
    return survivor


async def lead_history(db: Database, org: Organisation, actor: Principal, lead_id: str) -> tuple[Lead, store.History]:
    lead = await get_lead(db, org, actor, lead_id)
    async with db.pool.acquire() as conn:
        return lead, await store.history(conn, lead.id)
