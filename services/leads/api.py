"""HTTP routes of the leads service: parse and check the request, call a handler, shape the answer."""

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints, ValidationInfo, field_validator, model_validator

from services.leads import handlers, store
from services.leads.domain import (
    SOURCES,
    TOUCH_CHANNELS,
    Contact,
    Grade,
    normalise_company,
)
from services.leads.handlers import lead_json
from shared.auth import Principal, may_act_on, visible_owners
from shared.contact_details import InvalidContact, normalise_email, normalise_phone
from shared.errors import Unprocessable
from shared.org import Organisation, Role
from shared.pagination import Page, clamp_limit, decode_cursor, encode_cursor
from shared.service import ServiceDatabase
from shared.web import CurrentPrincipal, organisation, require_roles

router = APIRouter(prefix="/v1/leads", tags=["leads"])

Org = Annotated[Organisation, Depends(organisation)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Note = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)]
Source = Literal[SOURCES]  # type: ignore[valid-type]
Channel = Literal[TOUCH_CHANNELS]  # type: ignore[valid-type]
AttributeName = Annotated[str, StringConstraints(min_length=1, max_length=100)]
AttributeValue = Annotated[str, StringConstraints(max_length=2000)]
GradeName = Literal["H", "A", "B", "C"]
Integrator = Annotated[Principal, Depends(require_roles(Role.INTEGRATION, Role.ADMIN))]


class ContactIn(BaseModel):
    name: Text
    company: Annotated[str, StringConstraints(max_length=200)] | None = None
    phone: Annotated[str, StringConstraints(max_length=40)] | None = None
    email: Annotated[str, StringConstraints(max_length=254)] | None = None

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        return _normalised(normalise_phone, value)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return _normalised(normalise_email, value)

    @field_validator("company")
    @classmethod
    def _company(cls, value: str | None) -> str | None:
        return normalise_company(value)

    @model_validator(mode="after")
    def _reachable(self) -> "ContactIn":
        if self.phone is None and self.email is None:
            raise ValueError("a contact needs a phone or an e-mail")
        return self


def _normalised(normalise: Any, value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        result: str = normalise(value)
    except InvalidContact as exc:
        raise ValueError(str(exc).split(": ", 1)[-1]) from None
    return result


class LeadIn(BaseModel):
    contact: ContactIn
    source: Source = "api"
    grade: GradeName | None = None
    region: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)] | None = None
    owner_id: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    campaign_id: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    attributes: dict[AttributeName, AttributeValue] = Field(default_factory=dict, max_length=100)
    captured_at: datetime | None = Field(None, description="When the lead arrived (walk-ins: arrival); default now")
    left_at: datetime | None = Field(None, description="Walk-ins: when the visitor left")

    @field_validator("captured_at", "left_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return _as_utc(value)

    @field_validator("left_at")
    @classmethod
    def _after_arrival(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        arrived = info.data.get("captured_at")
        if value and arrived and value < arrived:
            raise ValueError("the visitor left before arriving (captured_at)")
        return value


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def capture_command(body: LeadIn) -> handlers.CaptureLead:
    contact = Contact(
        name=" ".join(body.contact.name.split()),
        company=body.contact.company,
        phone=body.contact.phone,
        email=body.contact.email,
    )
    return handlers.CaptureLead(
        contact=contact,
        source=body.source,
        grade=Grade(body.grade) if body.grade else None,
        region=body.region,
        owner_id=body.owner_id,
        campaign_id=body.campaign_id,
        attributes=body.attributes,
        captured_at=body.captured_at,
        left_at=body.left_at,
    )


@router.post("", status_code=201, summary="Capture a lead (201), or name the existing one it duplicates (200)")
async def capture_lead(body: LeadIn, principal: CurrentPrincipal, db: ServiceDatabase, org: Org) -> JSONResponse:
    result = await handlers.capture_lead(db, org, principal, capture_command(body))
    if result.duplicate_of is None:
        return JSONResponse(lead_json(result.lead), status_code=201)
    duplicate = {"duplicate_of": result.duplicate_of, "matched_on": list(result.matched_on)}
    if not may_act_on(principal, result.lead.owner_id, org):
        return JSONResponse(duplicate, status_code=200)  # the id only: the lead itself is not the caller's to see
    return JSONResponse({**lead_json(result.lead), **duplicate}, status_code=200)


@router.get("/{lead_id}", summary="One lead (404 when it does not exist or is outside the caller's scope)")
async def get_lead(lead_id: str, principal: CurrentPrincipal, db: ServiceDatabase, org: Org) -> dict[str, Any]:
    return lead_json(await handlers.get_lead(db, org, principal, lead_id))


@router.get(
    "/{lead_id}/history",
    summary="A lead's touches, notes and engagements, oldest first (a merged duplicate's are its survivor's)",
)
async def lead_history(lead_id: str, principal: CurrentPrincipal, db: ServiceDatabase, org: Org) -> dict[str, Any]:
    lead, history = await handlers.lead_history(db, org, principal, lead_id)
    return {
        "lead_id": lead.id,
        "merged_into": lead.merged_into,
        "touches": [{**t, "contacted_at": _ts(t["contacted_at"])} for t in history.touches],
        "notes": [{**n, "created_at": _ts(n["created_at"])} for n in history.notes],
        "engagements": [{**e, "observed_at": _ts(e["observed_at"])} for e in history.engagements],
        "truncated": history.truncated,
    }


@router.get("", summary="Leads the caller may see, newest first, filtered, a page at a time")
async def list_leads(
    principal: CurrentPrincipal,
    db: ServiceDatabase,
    org: Org,
    status: Literal["new", "contacted", "qualified", "converted", "disqualified", "merged"] | None = None,
    grade: GradeName | None = None,
    owner_id: str | None = None,
    team: str | None = None,
    region: str | None = None,
    source: Source | None = None,
    campaign_id: str | None = None,
    captured_from: datetime | None = None,
    captured_to: datetime | None = None,
    overdue: bool = Query(False, description="only new leads whose follow-up is past due"),
    sort: Literal["-captured_at", "captured_at", "follow_up_due_at", "-follow_up_due_at"] = Query(
        "-captured_at", description="a field, `-` first for descending; ties are broken by id"
    ),
    limit: int | None = None,
    cursor: str | None = None,
) -> Page[dict[str, Any]]:
    size = clamp_limit(limit)
    column = sort.lstrip("-")
    after = None
    if cursor is not None:
        position, last_id = decode_cursor(cursor)
        try:
            cursor_sort, value = position
            if cursor_sort != sort:
                raise ValueError(sort)
            after = (datetime.fromisoformat(value), last_id)
        except (TypeError, ValueError):
            raise Unprocessable("cursor is not one this service issued for this sort") from None
    where = store.LeadFilter(
        owners=visible_owners(principal, org),
        status=status,
        grade=grade,
        owner_id=owner_id,
        team=team,
        region=region,
        source=source,
        campaign_id=campaign_id,
        captured_from=_as_utc(captured_from),
        captured_to=_as_utc(captured_to),
        overdue_at=datetime.now(UTC) if overdue else None,
    )
    async with db.pool.acquire() as conn:
        rows = await store.list_leads(
            conn, where, after, size + 1, sort=column, descending=sort.startswith("-")
        )
    items = rows[:size]
    next_cursor = None
    if len(rows) > size:
        last = items[-1]
        next_cursor = encode_cursor([sort, getattr(last, column).isoformat()], last.id)
    return Page(items=[lead_json(lead) for lead in items], next_cursor=next_cursor)


class TouchIn(BaseModel):
    channel: Channel
    note: Note | None = None
    outcome: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)] | None = None
    contacted_at: datetime | None = None

    @field_validator("contacted_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        value = _as_utc(value)
        if value is not None and value > datetime.now(UTC):
            raise ValueError("contacted_at is in the future")
        return value


@router.post("/{lead_id}/touches", status_code=201, summary="Log a touch; the first moves a new lead to contacted")
async def log_touch(
    lead_id: str, body: TouchIn, principal: CurrentPrincipal, db: ServiceDatabase, org: Org
) -> dict[str, Any]:
    command = handlers.LogTouch(
        channel=body.channel, note=body.note, outcome=body.outcome, contacted_at=body.contacted_at
    )
    lead, touch = await handlers.log_touch(db, org, principal, lead_id, command)
    return {"touch": touch, "lead": lead_json(lead)}


class QualifyIn(BaseModel):
    note: Note | None = None


@router.post("/{lead_id}/qualify", summary="contacted -> qualified")
async def qualify(
    lead_id: str, principal: CurrentPrincipal, db: ServiceDatabase, org: Org, body: QualifyIn | None = None
) -> dict[str, Any]:
    return lead_json(await handlers.qualify(db, org, principal, lead_id, body.note if body else None))


class DisqualifyIn(BaseModel):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    note: Note | None = None


@router.post("/{lead_id}/disqualify", summary="new, contacted or qualified -> disqualified (a reason is required)")
async def disqualify(
    lead_id: str, body: DisqualifyIn, principal: CurrentPrincipal, db: ServiceDatabase, org: Org
) -> dict[str, Any]:
    return lead_json(await handlers.disqualify(db, org, principal, lead_id, body.reason, body.note))


class OpportunityIn(BaseModel):
    name: Text | None = None
    amount: Decimal | None = Field(None, ge=0, max_digits=18, decimal_places=2)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "CNY"
    expected_close_date: date | None = None


class ConvertIn(BaseModel):
    account_name: Text | None = None
    account_id: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    opportunity: OpportunityIn = Field(default_factory=OpportunityIn)


@router.post("/{lead_id}/convert", summary="qualified -> converted; the opportunities service opens the deal")
async def convert(
    lead_id: str, principal: CurrentPrincipal, db: ServiceDatabase, org: Org, body: ConvertIn | None = None
) -> dict[str, Any]:
    body = body or ConvertIn()
    command = handlers.ConvertLead(
        account_name=body.account_name,
        account_id=body.account_id,
        opportunity_name=body.opportunity.name,
        amount=body.opportunity.amount,
        currency=body.opportunity.currency,
        expected_close_date=body.opportunity.expected_close_date,
    )
    return lead_json(await handlers.convert(db, org, principal, lead_id, command))


class EngagementIn(BaseModel):
    visits: int = Field(ge=0, le=1_000_000)
    time_on_site_s: float = Field(ge=0, le=1e9)
    page_views: int = Field(ge=0, le=10_000_000)
    activity: Annotated[str, StringConstraints(max_length=200)] | None = None
    observed_at: datetime | None = None

    @field_validator("observed_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return _as_utc(value)


@router.post("/{lead_id}/engagement", summary="Web tracking / marketing automation engagement (integration role)")
async def record_engagement(
    lead_id: str, body: EngagementIn, principal: Integrator, db: ServiceDatabase, org: Org
) -> dict[str, Any]:
    command = handlers.RecordEngagement(
        visits=body.visits,
        time_on_site_s=body.time_on_site_s,
        page_views=body.page_views,
        activity=body.activity,
        observed_at=body.observed_at,
    )
    return lead_json(await handlers.record_engagement(db, org, principal, lead_id, command))


class GradeIn(BaseModel):
    grade: GradeName


@router.post("/{lead_id}/grade", summary="Change the intent grade; the follow-up window restarts from now")
async def change_grade(
    lead_id: str, body: GradeIn, principal: CurrentPrincipal, db: ServiceDatabase, org: Org
) -> dict[str, Any]:
    return lead_json(await handlers.change_grade(db, org, principal, lead_id, Grade(body.grade)))


class AssignIn(BaseModel):
    owner_id: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    reason: Note | None = None


Reassigner = Annotated[Principal, Depends(require_roles(Role.MANAGER, Role.DIRECTOR, Role.ADMIN))]


@router.post("/{lead_id}/assign", summary="Reassign a lead (manager within their team; director, admin)")
async def reassign(
    lead_id: str, body: AssignIn, principal: Reassigner, db: ServiceDatabase, org: Org
) -> dict[str, Any]:
    return lead_json(await handlers.reassign(db, org, principal, lead_id, body.owner_id, body.reason))


class MergeIn(BaseModel):
    duplicate_id: Annotated[str, StringConstraints(min_length=1, max_length=100)]


@router.post("/{lead_id}/merge", summary="Merge the duplicate `duplicate_id` into this lead (both in scope)")
async def merge(
    lead_id: str, body: MergeIn, principal: CurrentPrincipal, db: ServiceDatabase, org: Org
) -> dict[str, Any]:
    return lead_json(await handlers.merge(db, org, principal, lead_id, body.duplicate_id))
