"""HTTP routes for campaigns (市场活动): plan, update, read with their lead counts and cost per lead."""

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints, ValidationInfo, field_validator

from services.leads import handlers, store
from services.leads.api import Org
from services.leads.domain import Campaign, money
from shared.auth import Principal
from shared.errors import NotFound, Unprocessable
from shared.org import Role
from shared.pagination import Page, clamp_limit, decode_cursor, encode_cursor
from shared.service import ServiceDatabase
from shared.web import CurrentPrincipal, require_roles

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])

Marketer = Annotated[Principal, Depends(require_roles(Role.MANAGER, Role.DIRECTOR, Role.ADMIN))]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Channel = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)]
Amount = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=2)]
StatusName = Literal["planned", "running", "completed"]


class CampaignIn(BaseModel):
    name: Name
    channel: Channel
    budget: Amount
    actual_cost: Amount = Decimal(0)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] = "CNY"
    starts_on: date | None = None
    ends_on: date | None = None  # after starts_on: validated in that order
    owner_id: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None

    @field_validator("ends_on")
    @classmethod
    def _period(cls, value: date | None, info: ValidationInfo) -> date | None:
        starts_on = info.data.get("starts_on")
        if value and starts_on and value < starts_on:
            raise ValueError("the campaign ends before it starts")
        return value


class CampaignChange(BaseModel):
    name: Name | None = None
    channel: Channel | None = None
    status: StatusName | None = None
    budget: Amount | None = None
    actual_cost: Amount | None = None
    starts_on: date | None = None
    ends_on: date | None = None
    owner_id: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None


def campaign_json(row: store.CampaignRow, counts: tuple[int, int]) -> dict[str, Any]:
    c = row.campaign
    leads, converted = counts
    return {
        "id": c.id,
        "name": c.name,
        "channel": c.channel,
        "status": str(c.status),
        "budget": money(c.budget),
        "actual_cost": money(c.actual_cost),
        "currency": c.currency,
        "starts_on": c.starts_on.isoformat() if c.starts_on else None,
        "ends_on": c.ends_on.isoformat() if c.ends_on else None,
        "owner_id": c.owner_id,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "version": c.version,
        "leads": leads,
        "converted_leads": converted,
        "cost_per_lead": money(c.actual_cost / leads) if leads else None,
    }


async def _counts(db: ServiceDatabase, ids: list[str]) -> dict[str, tuple[int, int]]:
    async with db.pool.acquire() as conn:
        return await store.campaign_lead_counts(conn, ids)


@router.post("", status_code=201, summary="Plan a campaign (manager, director, admin)")
async def create_campaign(body: CampaignIn, principal: Marketer, db: ServiceDatabase, org: Org) -> JSONResponse:
    campaign = Campaign(
        id=f"cmp-{uuid.uuid4()}",
        name=body.name,
        channel=body.channel,
        budget=body.budget,
        actual_cost=body.actual_cost,
        currency=body.currency,
        starts_on=body.starts_on,
        ends_on=body.ends_on,
        owner_id=body.owner_id,
    )
    row = await handlers.create_campaign(db, org, principal, campaign)
    return JSONResponse(campaign_json(row, (0, 0)), status_code=201)


@router.patch("/{campaign_id}", summary="Change a campaign's fields; status moves planned -> running -> completed")
async def update_campaign(
    campaign_id: str, body: CampaignChange, principal: Marketer, db: ServiceDatabase, org: Org
) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    required = ("name", "channel", "status", "budget", "actual_cost")
    nulls = [name for name in required if name in changes and changes[name] is None]
    if nulls:
        raise Unprocessable(f"{', '.join(nulls)}: may not be null")
    row = await handlers.update_campaign(db, org, principal, campaign_id, changes)
    return campaign_json(row, (await _counts(db, [campaign_id])).get(campaign_id, (0, 0)))


@router.get("/{campaign_id}", summary="A campaign with its lead counts and cost per lead")
async def get_campaign(campaign_id: str, principal: CurrentPrincipal, db: ServiceDatabase) -> dict[str, Any]:
    async with db.pool.acquire() as conn:
        row = await store.get_campaign(conn, campaign_id)
        if row is None:
            raise NotFound(f"there is no campaign {campaign_id}")
        counts = await store.campaign_lead_counts(conn, [campaign_id])
    return campaign_json(row, counts.get(campaign_id, (0, 0)))


@router.get("", summary="Campaigns, newest first, a page at a time")
async def list_campaigns(
    principal: CurrentPrincipal,
    db: ServiceDatabase,
    status: StatusName | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Page[dict[str, Any]]:
    size = clamp_limit(limit)
    after = None
    if cursor is not None:
        created_at, last_id = decode_cursor(cursor)
        try:
            after = (datetime.fromisoformat(created_at), last_id)
        except (TypeError, ValueError):
            raise Unprocessable("cursor is not one this service issued") from None
    async with db.pool.acquire() as conn:
        rows = await store.list_campaigns(conn, status, after, size + 1)
        items = rows[:size]
        counts = await store.campaign_lead_counts(conn, [r.campaign.id for r in items])
    next_cursor = encode_cursor(items[-1].created_at.isoformat(), items[-1].campaign.id) if len(rows) > size else None
    return Page(items=[campaign_json(r, counts.get(r.campaign.id, (0, 0))) for r in items], next_cursor=next_cursor)
