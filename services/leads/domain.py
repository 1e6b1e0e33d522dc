"""The lead (线索): lifecycle, intent grade and follow-up SLA, contact normalisation, round robin.

Plain Python, no I/O: handlers load a `Lead`, call these rules, save it and publish the events.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from shared.contact_details import InvalidContact, normalise_email, normalise_phone
from shared.errors import DomainError, Unprocessable


class Status(StrEnum):
    NEW = "new"
    CONTACTED = "contacted"
    QUALIFIED = "qualified"
    CONVERTED = "converted"
    DISQUALIFIED = "disqualified"
    MERGED = "merged"  # a duplicate folded into another lead by hand; closed


class Grade(StrEnum):
    """Intent grade of the tracking card: how soon the customer means to buy."""

    H = "H"  # within 5 days
    A = "A"  # within 15 days
    B = "B"  # within 1 month
    C = "C"  # about 2 months


SOURCES = ("web_form", "phone", "email", "sms", "im", "walk_in", "event", "referral", "campaign", "import", "api")
TOUCH_CHANNELS = ("email", "sms", "im", "phone", "visit", "meeting", "other")

# Follow-up is due this long after capture; an ungraded lead must be called within a week to grade it.
FOLLOW_UP_AFTER: dict[Grade | None, timedelta] = {
    Grade.H: timedelta(days=5),
    Grade.A: timedelta(days=15),
    Grade.B: timedelta(days=30),
    Grade.C: timedelta(days=60),
    None: timedelta(days=7),
}

_NEXT: dict[Status, tuple[Status, ...]] = {
    Status.NEW: (Status.CONTACTED, Status.DISQUALIFIED),
    Status.CONTACTED: (Status.QUALIFIED, Status.DISQUALIFIED),
    Status.QUALIFIED: (Status.CONVERTED, Status.DISQUALIFIED),
    Status.CONVERTED: (),
    Status.DISQUALIFIED: (),
    Status.MERGED: (),
}


class TransitionNotAllowed(DomainError):
    """409: the lead's status does not allow this step."""


def follow_up_due(grade: Grade | None, captured_at: datetime) -> datetime:
    return captured_at + FOLLOW_UP_AFTER[grade]


def normalise_company(raw: str | None) -> str | None:
    company = " ".join(raw.split()) if raw else ""
    return company or None


def rep_for_turn(reps: Sequence[str], turn: int) -> str:
    """The rep whose turn it is: a team's turns count 1, 2, 3, ... through its reps in order, wrapping."""
    if not reps:
        raise ValueError("round robin needs at least one rep")
    return reps[(turn - 1) % len(reps)]


@dataclass(frozen=True)
class Contact:
    name: str
    company: str | None = None
    phone: str | None = None  # E.164
    email: str | None = None  # lower-cased

    @classmethod
    def normalised(cls, name: str, company: str | None, phone: str | None, email: str | None) -> "Contact":
        name = " ".join(name.split())
        if not name:
            raise InvalidContact("contact.name: a name is required")
        phone = normalise_phone(phone, field="contact.phone") if phone and phone.strip() else None
        email = normalise_email(email, field="contact.email") if email and email.strip() else None
        if phone is None and email is None:
            raise InvalidContact("contact: a phone or an e-mail is required")
        return cls(name=name, company=normalise_company(company), phone=phone, email=email)

    def as_event(self) -> dict[str, Any]:
        return {"name": self.name, "company": self.company, "phone": self.phone, "email": self.email}


@dataclass
class Lead:
    id: str
    contact: Contact
    source: str
    grade: Grade | None
    region: str | None
    team: str | None
    owner_id: str | None
    campaign_id: str | None
    attributes: dict[str, str]
    captured_at: datetime
    captured_by: str | None
    follow_up_due_at: datetime
    status: Status = Status.NEW
    first_response_at: datetime | None = None
    last_contacted_at: datetime | None = None
    touch_count: int = 0
    disqualify_reason: str | None = None
    converted_at: datetime | None = None
    merged_into: str | None = None
    version: int = 0

    @classmethod
    def capture(
        cls,
        lead_id: str,
        contact: Contact,
        *,
        source: str,
        grade: Grade | None,
        region: str | None,
        campaign_id: str | None,
        attributes: dict[str, str],
        captured_at: datetime,
        captured_by: str | None,
    ) -> "Lead":
        return cls(
            id=lead_id,
            contact=contact,
            source=source,
            grade=grade,
            region=region,
            team=None,
            owner_id=None,
            campaign_id=campaign_id,
            attributes=dict(attributes),
            captured_at=captured_at,
            captured_by=captured_by,
            follow_up_due_at=follow_up_due(grade, captured_at),
        )

    def next_version(self) -> int:
        """Every event on the lead takes the next version: its CloudEvent `sequence`."""
        self.version += 1
        return self.version

    def assign(self, owner_id: str, team: str | None) -> str | None:
        """Give the lead to an owner; returns the previous owner."""
        self._require_open("assigned")
        previous, self.owner_id, self.team = self.owner_id, owner_id, team
        return previous

    def change_grade(self, grade: Grade, at: datetime) -> bool:
        """A new intent grade restarts the follow-up window from now; False when it is the same grade."""
        self._require_open("regraded")
        if grade is self.grade:
            return False
        self.grade = grade
        self.follow_up_due_at = follow_up_due(grade, at)
        return True

    def record_touch(self, at: datetime) -> int:
        """Log a contact; the first one moves a new lead to contacted. Returns the touch's number."""
        self._require_open("touched")
        if self.status is Status.NEW:
            self.status = Status.CONTACTED
        if self.first_response_at is None:
            self.first_response_at = at
        if self.last_contacted_at is None or at > self.last_contacted_at:
            self.last_contacted_at = at
        self.touch_count += 1
        return self.touch_count

    def qualify(self) -> None:
        self._move_to(Status.QUALIFIED)

    def disqualify(self, reason: str) -> None:
        if not reason or not reason.strip():
            raise Unprocessable("reason: disqualifying a lead needs a reason")
        self._move_to(Status.DISQUALIFIED)
        self.disqualify_reason = reason.strip()

    def convert(self, at: datetime) -> None:
        if self.owner_id is None:
            raise TransitionNotAllowed("the lead has no owner: assign it before converting")
        self._move_to(Status.CONVERTED)
        self.converted_at = at

    def merge_into(self, survivor: "Lead") -> "Merge":
        """Close this lead as a duplicate of `survivor` and give the survivor its history (see `Merge`).

        Both leads must be open. The survivor keeps everything it has and takes from this lead what it
        lacks: a phone, an e-mail, a company, a region, a grade, a campaign, attribute values. The touches
        add up (the earliest first response and the latest contact count, and a new survivor that gets
        touches is contacted); the earlier follow-up due time stands. A phone or e-mail the survivor takes
        leaves this lead, since one lead holds each (the duplicate rule)."""
        if survivor.id == self.id:
            raise Unprocessable("duplicate_id: a lead cannot be merged into itself")
        if survivor.status is Status.MERGED:
            raise TransitionNotAllowed(f"lead {survivor.id} was itself merged into {survivor.merged_into}")
        if survivor.is_closed:
            raise TransitionNotAllowed(f"a {survivor.status} lead is closed: nothing can be merged into it")
        self._require_open("merged")
        matched_on = [
            name
            for name in ("phone", "email", "company")
            if getattr(self.contact, name) and getattr(self.contact, name) == getattr(survivor.contact, name)
        ]
        taken = {
            name: getattr(self.contact, name)
            for name in ("company", "phone", "email")
            if getattr(survivor.contact, name) is None and getattr(self.contact, name) is not None
        }
        survivor.contact = replace(survivor.contact, **taken)
        # one lead holds each phone and e-mail (the duplicate rule): those the survivor took leave this lead
        self.contact = replace(
            self.contact,
            phone=None if "phone" in taken else self.contact.phone,
            email=None if "email" in taken else self.contact.email,
        )
        filled = [f"contact.{name}" for name in taken]
        for name in ("region", "grade", "campaign_id"):
            if getattr(survivor, name) is None and getattr(self, name) is not None:
                setattr(survivor, name, getattr(self, name))
                filled.append(name)
        gaps = {name: value for name, value in self.attributes.items() if name not in survivor.attributes}
        survivor.attributes = {**survivor.attributes, **gaps}
        filled += [f"attributes.{name}" for name in sorted(gaps)]
        touches_before = survivor.touch_count
        survivor._take_touches(self)
        survivor.follow_up_due_at = min(survivor.follow_up_due_at, self.follow_up_due_at)
        self.status = Status.MERGED
        self.merged_into = survivor.id
        return Merge(matched_on, filled, touches_before)

    def _take_touches(self, duplicate: "Lead") -> None:
        if not duplicate.touch_count:
            return
        self.touch_count += duplicate.touch_count
        if self.status is Status.NEW:
            self.status = Status.CONTACTED
        self.first_response_at = _earliest(self.first_response_at, duplicate.first_response_at)
        if duplicate.last_contacted_at is not None and (
            self.last_contacted_at is None or duplicate.last_contacted_at > self.last_contacted_at
        ):
            self.last_contacted_at = duplicate.last_contacted_at

    @property
    def is_closed(self) -> bool:
        return not _NEXT[self.status]

    def _require_open(self, what: str) -> None:
        if self.is_closed:
            raise TransitionNotAllowed(f"a {self.status} lead is closed: it cannot be {what}")

    def _move_to(self, target: Status) -> None:
        allowed = _NEXT[self.status]
        if target not in allowed:
            if not allowed:
                raise TransitionNotAllowed(f"a {self.status} lead is closed: it cannot become {target}")
            names = ", ".join(str(s) for s in allowed)
            raise TransitionNotAllowed(f"a {self.status} lead can only become {names}, not {target}")
        self.status = target


def _earliest(first: datetime | None, second: datetime | None) -> datetime | None:
    return min((at for at in (first, second) if at is not None), default=None)


@dataclass(frozen=True)
class Merge:
    """What merging a duplicate gave its survivor."""

    matched_on: list[str]  # the contact fields the two shared (phone, email, company)
    filled: list[str]  # the survivor's gaps the duplicate filled: contact.phone, grade, attributes.utm_term ...
    # the survivor's touches before: the duplicate's are numbered after them, in the order they happened
    touches_before: int


class CampaignStatus(StrEnum):
    PLANNED = "planned"
    RUNNING = "running"
    COMPLETED = "completed"


_CAMPAIGN_NEXT: dict[CampaignStatus, tuple[CampaignStatus, ...]] = {
    CampaignStatus.PLANNED: (CampaignStatus.RUNNING, CampaignStatus.COMPLETED),
    CampaignStatus.RUNNING: (CampaignStatus.COMPLETED,),
    CampaignStatus.COMPLETED: (),
}
CAMPAIGN_FIELDS = ("name", "channel", "status", "budget", "actual_cost", "starts_on", "ends_on", "owner_id")
_CENTS = Decimal("0.01")


def money(amount: Decimal) -> str:
    """A decimal string with two places (`"50000.00"`), never exponent notation."""
    return str(amount.quantize(_CENTS))


@dataclass
class Campaign:
    """A marketing campaign (市场活动): plan, period, budget and actual cost, status."""

    id: str
    name: str
    channel: str
    budget: Decimal
    actual_cost: Decimal
    currency: str
    starts_on: date | None
    ends_on: date | None
    owner_id: str | None
    status: CampaignStatus = CampaignStatus.PLANNED
    version: int = 0

    def __post_init__(self) -> None:
        self._check()

    def next_version(self) -> int:
        self.version += 1
        return self.version

    def change(self, **changes: Any) -> list[str]:
        """Apply the given fields; returns the names that really changed (status only moves forward)."""
        unknown = set(changes) - set(CAMPAIGN_FIELDS)
        if unknown:
            raise Unprocessable(f"{', '.join(sorted(unknown))}: not a field of a campaign")
        if self.status is CampaignStatus.COMPLETED and changes.keys() - {"actual_cost"}:
            # the final bill can still arrive after the campaign ended
            raise TransitionNotAllowed("a completed campaign is closed: only its actual_cost can change")
        status = changes.get("status")
        if status is not None and CampaignStatus(status) is not self.status:
            target = CampaignStatus(status)
            if target not in _CAMPAIGN_NEXT[self.status]:
                names = ", ".join(str(s) for s in _CAMPAIGN_NEXT[self.status]) or "nothing"
                raise TransitionNotAllowed(f"a {self.status} campaign can only become {names}, not {target}")
            changes["status"] = target
        changed = [name for name, value in changes.items() if getattr(self, name) != value]
        previous = {name: getattr(self, name) for name in changed}
        for name in changed:
            setattr(self, name, changes[name])
        try:
            self._check()
        except Unprocessable:
            for name, value in previous.items():
                setattr(self, name, value)
            raise
        return changed

    def _check(self) -> None:
        if self.budget < 0:
            raise Unprocessable("budget: must not be negative")
        if self.actual_cost < 0:
            raise Unprocessable("actual_cost: must not be negative")
        if self.starts_on and self.ends_on and self.ends_on < self.starts_on:
            raise Unprocessable("ends_on: the campaign ends before it starts")
