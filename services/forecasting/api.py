"""HTTP: the forecast per period, quotas, attainment and ranking, forecast history; scoped by owner.

A rep's figures are their own deals; a manager's their team's; directors, admins and integrations
see everything. A team or region row shown to a rep or manager sums only the deals they may see.
"""

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from services.forecasting import handlers, store
from services.forecasting.config import forecast_settings
from services.forecasting.domain import By, InvalidPeriod, Period, money, parse_period, rank_reps
from shared.auth import Principal, may_act_on, visible_owners
from shared.errors import Forbidden, Unprocessable
from shared.org import Organisation, Role
from shared.service import ServiceDatabase
from shared.web import CurrentPrincipal, organisation

Org = Annotated[Organisation, Depends(organisation)]


def _period(text: str) -> Period:
    try:
        return parse_period(text)
    except InvalidPeriod as exc:
        raise Unprocessable(str(exc)) from None


def _scope(principal: Principal) -> str:
    if principal.sees_everything:
        return "all"
    return "team" if principal.role is Role.MANAGER else "own"


class ForecastRow(BaseModel):
    key: str
    open_amount: str
    weighted_pipeline: str
    best_case: str
    commit: str
    closed_won: str
    quota: str | None
    booked: str = Field(description="Signed contracts in the period (not in the CONTRACT's minimum)")
    deals: int


class Forecast(BaseModel):
    period: str
    by: By
    currency: str
    scope: str = Field(description="all, team or own: whose deals the figures sum")
    rows: list[ForecastRow]


router = APIRouter(prefix="/v1", tags=["forecast"])


@router.get("/forecast", response_model=Forecast)
async def get_forecast(
    principal: CurrentPrincipal, org: Org, db: ServiceDatabase,
    period: Annotated[str, Query(description="a month (2026-11), a quarter (2026-Q4) or a year (2026)")],
    by: Annotated[By, Query(description="owner, team or region")] = By.OWNER,
) -> Forecast:
    """Open amount, weighted pipeline, best case, commit, closed won and quota per owner, team or region.

    Open deals count in the period of their expected close date, won deals in the period they were won.
    Weighted pipeline = amount x win probability (the scoring service's when it scored the deal, else
    the stage's default). Commit = closed won + deals in the commit stages; best case = commit + deals in
    the best-case stages (FUNNELCAST_FORECAST_* settings; defaults: contract, negotiation).
    """
    wanted = _period(period)
    async with db.pool.acquire() as conn:
        rows = await handlers.forecast_rows(conn, org, wanted, by, visible_owners(principal, org))
    return Forecast(period=wanted.name, by=by, currency=forecast_settings().currency, scope=_scope(principal),
                    rows=[ForecastRow(**r.as_dict()) for r in rows])


class QuotaIn(BaseModel):
    amount: Decimal = Field(ge=0, description="decimal string in the reporting currency")


class QuotaOut(BaseModel):
    owner_id: str
    period: str
    amount: str
    currency: str


@router.put("/quotas/{owner_id}/{period}", response_model=QuotaOut)
async def put_quota(
    owner_id: str, period: str, body: QuotaIn, principal: CurrentPrincipal, org: Org, db: ServiceDatabase
) -> QuotaOut:
    """Set a rep's quota for a month, quarter or year (managers for their team, directors and admins for
    anyone); it overrides the organisation file's and republishes the forecast rows it moves."""
    wanted = _period(period)
    user = org.user(owner_id)
    if user is None or user.role is not Role.REP:
        raise Unprocessable(f"{owner_id} is not a rep of the organisation")
    if principal.role not in (Role.MANAGER, Role.DIRECTOR, Role.ADMIN) or not may_act_on(principal, owner_id, org):
        raise Forbidden(f"{principal.user_id} may not set {owner_id}'s quota: managers set their team's")
    await handlers.set_quota(db, owner_id, wanted, body.amount, principal.user_id)
    return QuotaOut(owner_id=owner_id, period=wanted.name, amount=money(body.amount),
                    currency=forecast_settings().currency)


class AttainmentOut(BaseModel):
    rank: int
    owner_id: str
    team: str | None
    quota: str | None
    closed_won: str
    commit: str
    attainment_percent: str | None
    gap_to_quota: str | None


class Ranking(BaseModel):
    period: str
    currency: str
    items: list[AttainmentOut]


@router.get("/attainment", response_model=Ranking)
async def get_attainment(
    principal: CurrentPrincipal, org: Org, db: ServiceDatabase, period: Annotated[str, Query()]
) -> Ranking:
    """Quota attainment of each rep (closed won / quota), the gap to quota, and their rank among all reps."""
    wanted = _period(period)
    async with db.pool.acquire() as conn:
        per_owner = await store.figures_per_owner(conn, wanted)
        quotas = await handlers.all_quotas(conn, org)
    reps = sorted({u.id for u in org.users.values() if u.role is Role.REP} | set(per_owner))
    ranked = rank_reps(reps, per_owner, wanted, quotas)
    visible = visible_owners(principal, org)
    items = [
        AttainmentOut(
            rank=a.rank, owner_id=a.owner_id, team=org.team_of(a.owner_id),
            quota=None if a.quota is None else money(a.quota), closed_won=money(a.closed_won),
            commit=money(a.commit), attainment_percent=None if a.attainment is None else str(a.attainment),
            gap_to_quota=None if a.gap is None else money(a.gap),
        )
        for a in ranked
        if visible is None or a.owner_id in visible
    ]
    return Ranking(period=wanted.name, currency=forecast_settings().currency, items=items)


class HistoryEntry(BaseModel):
    key: str
    computed_at: datetime
    figures: dict[str, Any]


class ForecastHistory(BaseModel):
    period: str
    by: By
    items: list[HistoryEntry]


@router.get("/forecast/history", response_model=ForecastHistory)
async def get_forecast_history(
    principal: CurrentPrincipal, org: Org, db: ServiceDatabase, period: Annotated[str, Query()],
    by: By = By.OWNER, key: str | None = None, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ForecastHistory:
    """Every forecast row published for the period, newest first: what was forecast when, for accuracy
    reports against the actuals. Reps see their own rows, managers their team's and its members'."""
    wanted = _period(period)
    keys = _visible_keys(principal, org, by)
    if key is not None:
        if keys is not None and key not in keys:
            raise Forbidden(f"{by.value} {key} is outside {principal.user_id}'s scope")
        keys = {key}
    async with db.pool.acquire() as conn:
        rows = await store.history(conn, wanted.name, by.value, None if keys is None else sorted(keys), limit)
    return ForecastHistory(period=wanted.name, by=by, items=[
        HistoryEntry(key=r["key"], computed_at=r["computed_at"].astimezone(UTC), figures=json.loads(r["figures"]))
        for r in rows
    ])


def _visible_keys(principal: Principal, org: Organisation, by: By) -> set[str] | None:
    owners = visible_owners(principal, org)
    if owners is None:
        return None
    if by is By.OWNER:
        return owners
    if principal.role is Role.MANAGER:  # a manager's team row is theirs; a region's is not
        return {handlers.placement(org, o).key(by, o) for o in owners} if by is By.TEAM else set()
    return set()


ROUTERS = [router]
