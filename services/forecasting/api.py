"""HTTP: the forecast per period, quotas, attainment and ranking, forecast history; scoped by owner.

A rep's figures are their own deals; a manager's their team's; directors, admins and integrations
see everything. A team or region row shown to a rep or manager sums only the deals they may see.
"""

import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from services.forecasting import handlers, store
from services.forecasting.bookings import wape
from services.forecasting.charts import ForecastPoint, forecast_vs_actual_svg, funnel_svg
from services.forecasting.config import forecast_settings
from services.forecasting.domain import (
    NO_KEY,
    By,
    InvalidPeriod,
    Period,
    PeriodKind,
    money,
    parse_period,
    rank_reps,
)
from services.forecasting.funnel import CohortDeal, Funnel, Transition, credited_to, funnel, funnels_by
from services.forecasting.marketing import (
    Campaign,
    CampaignFigures,
    CampaignLeads,
    LeadFact,
    WonDeal,
    company_economics,
    conversion_by_source_and_grade,
    economics_by,
)
from shared.auth import Principal, may_act_on, visible_owners
from shared.errors import Forbidden, NotFound, Unprocessable
from shared.org import Organisation, Role
from shared.service import ServiceDatabase
from shared.web import CurrentPrincipal, organisation, require_roles

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
    by: Annotated[By, Query(description="owner, team, region or product")] = By.OWNER,
) -> Forecast:
    """Open amount, weighted pipeline, best case, commit, closed won and quota per owner, team, region or
    product (a deal without a product under `unspecified`; products have no quota).

    Open deals count in the period of their expected close date, won deals in the period they were won.
    A deal shared by several owners credits each their split of its figures (their team and region too).
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
        per_owner = handlers.figures_per_owner(org, await store.deal_groups(conn, wanted))
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


class BookingsOut(BaseModel):
    period: str
    currency: str
    point: str
    low: str = Field(description="80 % prediction interval, lower bound")
    high: str = Field(description="80 % prediction interval, upper bound")
    method: str
    pipeline_estimate: str | None = Field(description="what the open deals are likely to win, by their age")
    history_months: int


EveryOwner = Annotated[Principal, Depends(require_roles(Role.DIRECTOR, Role.ADMIN, Role.INTEGRATION))]


@router.get("/forecast/bookings", response_model=BookingsOut)
async def get_bookings_forecast(
    _: EveryOwner, db: ServiceDatabase,
    period: Annotated[str, Query(description="a month (2026-12)")],
) -> BookingsOut:
    """The month's closed-won value forecast from the history (seasonal naive over the quarter), with an
    80 % interval and the open pipeline's estimate beside it (directors, admins). Each answer is stored
    for the accuracy report."""
    wanted = _period(period)
    if wanted.kind is not PeriodKind.MONTH:
        raise Unprocessable("the bookings forecast is per month (e.g. 2026-12)")
    made = await handlers.forecast_bookings(db, wanted)
    if made is None:
        raise NotFound("no closed-won history yet: nothing to forecast from")
    return BookingsOut(
        period=made.period, currency=forecast_settings().currency, point=money(made.point), low=money(made.low),
        high=money(made.high), method=made.method, history_months=made.history_months,
        pipeline_estimate=None if made.pipeline_estimate is None else money(made.pipeline_estimate),
    )


class AccuracyEntry(BaseModel):
    period: str
    made_at: datetime
    as_of: date
    point: str
    low: str
    high: str
    actual: str | None = Field(description="closed won in the period, once it has ended")
    absolute_percentage_error: str | None


class Accuracy(BaseModel):
    currency: str
    wape: str | None = Field(description="over the entries whose period has ended, the latest forecast of each")
    items: list[AccuracyEntry]


@router.get("/forecast/accuracy", response_model=Accuracy)
async def get_forecast_accuracy(
    _: EveryOwner, db: ServiceDatabase, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> Accuracy:
    """Every bookings forecast stored, newest first, against the closed-won value of its month once over."""
    today = datetime.now(UTC).date()
    async with db.pool.acquire() as conn:
        rows = await store.bookings_forecasts(conn, limit)
        periods = [parse_period(r["period"]) for r in rows]
        ended = [p for p in periods if p.end < today]
        actual = await store.won_per_month(conn, min(p.start for p in ended), max(p.end for p in ended)) if ended \
            else {}
    items, latest = [], {}
    for row, period in zip(rows, periods, strict=True):
        done = period.end < today
        value = actual.get(period.name, Decimal(0)) if done else None
        error = None if value is None or value == 0 else abs(row["point"] - value) / value
        items.append(AccuracyEntry(
            period=row["period"], made_at=row["made_at"].astimezone(UTC), as_of=row["as_of"], point=money(row["point"]),
            low=money(row["low"]), high=money(row["high"]), actual=None if value is None else money(value),
            absolute_percentage_error=None if error is None else f"{error * 100:.1f}",
        ))
        if done and row["period"] not in latest:
            latest[row["period"]] = row["point"]
    error_rate = wape(latest, {p: actual.get(p, Decimal(0)) for p in latest})
    return Accuracy(currency=forecast_settings().currency, items=items,
                    wape=None if error_rate is None else f"{error_rate * 100:.1f}")


Breakdown = Literal["owner", "team", "region"]
BreakdownQuery = Annotated[Breakdown | None, Query(description="also one answer per owner, team or region")]
OwnerQuery = Annotated[str | None, Query(description="only this owner's deals and leads")]
TeamQuery = Annotated[str | None, Query(description="only the deals and leads of this team's members")]
RegionQuery = Annotated[str | None, Query(description="only the deals and leads of the owners in this region")]


def _owners_asked(
    principal: Principal, org: Organisation, owner_id: str | None, team: str | None, region: str | None
) -> set[str] | None:
    """The owners whose figures the caller asks for: their scope, narrowed to one owner, a team's members
    or a region's owners (None: everyone's, unowned records too). Naming only owners outside the scope: 403."""
    owners = visible_owners(principal, org)
    placements = {user_id: handlers.placement(org, user_id) for user_id in org.users}
    asked: list[tuple[str, set[str]]] = []
    if owner_id is not None:
        asked.append((owner_id, {owner_id}))
    if team is not None:
        asked.append((team, {u for u, place in placements.items() if place.team == team}))
    if region is not None:
        asked.append((region, {u for u, place in placements.items() if place.region == region}))
    for value, members in asked:
        allowed = members if owners is None else members & owners
        if owners is not None and not allowed:
            raise Forbidden(f"{value} is outside {principal.user_id}'s scope")
        owners = allowed
    return owners


def _key_of(org: Organisation, by: Breakdown) -> Callable[[str | None], str]:
    """Where an owner's records roll up by owner, team or region (a record without owner: unassigned)."""
    breakdown = By(by)
    return lambda owner: NO_KEY if owner is None else handlers.placement(org, owner).key(breakdown, owner)


def _asked_key_of(org: Organisation, by: Breakdown, owners: set[str] | None) -> Callable[[str | None], str | None]:
    """`_key_of` for the owners asked for (None: everyone); the others' shares are left out (None)."""
    key_of = _key_of(org, by)
    return lambda owner: key_of(owner) if owners is None or owner in owners else None


class StageOut(BaseModel):
    stage: str
    reached: int
    amount: str
    conversion_to_next: float | None
    median_days_in_stage: float | None


class FunnelFigures(BaseModel):
    deals: int
    stages: list[StageOut]
    won: int
    lost: int
    won_amount: str
    win_rate: float | None
    median_sales_cycle_days: float | None

    @classmethod
    def of(cls, figures: Funnel) -> "FunnelFigures":
        return cls(
            deals=figures.deals, won=figures.won, lost=figures.lost, won_amount=money(figures.won_amount),
            win_rate=figures.win_rate, median_sales_cycle_days=figures.median_sales_cycle_days,
            stages=[StageOut(stage=s.stage, reached=s.reached, amount=money(s.amount),
                             conversion_to_next=s.conversion_to_next, median_days_in_stage=s.median_days_in_stage)
                    for s in figures.stages],
        )


class FunnelRow(FunnelFigures):
    key: str


class FunnelOut(FunnelFigures):
    period: str
    currency: str
    scope: str
    owner_id: str | None
    team: str | None = None
    region: str | None = None
    by: Breakdown | None = None
    rows: list[FunnelRow] = Field(default_factory=list, description="one funnel per key of `by` (empty without)")


async def _cohort(
    db: ServiceDatabase, owners: set[str] | None, period: Period
) -> tuple[list[CohortDeal], dict[str, list[Transition]]]:
    """The deals opened in the period that these owners hold or share (None: everyone's), whole, with
    their owners' splits, and their stage moves."""
    async with db.pool.acquire() as conn:
        rows = await store.cohort(conn, period.start, period.end, None if owners is None else sorted(owners))
        moves = await store.transitions(conn, [r["opportunity_id"] for r in rows])
    by_deal: dict[str, list[Transition]] = {}
    for move in moves:
        by_deal.setdefault(move["opportunity_id"], []).append(
            Transition(move["opportunity_id"], move["to_stage"], move["at"]))
    deals = [CohortDeal(r["opportunity_id"], r["amount"], r["opened_on"], r["closed_on"], r["status"],
                        () if r["owner_id"] is None else store.credits_of(r["owner_id"], r["splits"]))
             for r in rows]
    return deals, by_deal


def _funnel_of(owners: set[str] | None, deals: list[CohortDeal], moves: dict[str, list[Transition]]) -> Funnel:
    """The funnel of everyone's deals, or of the shares these owners hold of theirs."""
    return funnel(deals if owners is None else credited_to(deals, owners), moves)


@router.get("/funnel", response_model=FunnelOut)
async def get_funnel(
    principal: CurrentPrincipal, org: Org, db: ServiceDatabase, period: Annotated[str, Query()],
    owner_id: OwnerQuery = None, team: TeamQuery = None, region: RegionQuery = None, by: BreakdownQuery = None,
) -> FunnelOut:
    """The funnel of the deals opened in the period (the caller's scope, narrowed to one owner, team or
    region): how many reached each stage and with what amount, conversion to the next stage, median days
    in each stage, win rate and median sales cycle; with `by`, the same per owner, team or region too.
    A deal shared by several owners counts in each row holding a share, with that share of its amounts."""
    wanted = _period(period)
    owners = _owners_asked(principal, org, owner_id, team, region)
    deals, moves = await _cohort(db, owners, wanted)
    rows = []
    if by is not None:
        per_key = funnels_by(deals, moves, _asked_key_of(org, by, owners))
        rows = [FunnelRow(key=key, **FunnelFigures.of(figures).model_dump()) for key, figures in per_key.items()]
    return FunnelOut(
        period=wanted.name, currency=forecast_settings().currency, scope=_scope(principal), owner_id=owner_id,
        team=team, region=region, by=by, rows=rows, **FunnelFigures.of(_funnel_of(owners, deals, moves)).model_dump(),
    )


class ConversionOut(BaseModel):
    source: str
    grade: str
    leads: int
    converted: int
    conversion_rate: float | None


class CampaignOut(BaseModel):
    campaign_id: str
    name: str
    cost: str | None
    leads: int
    deals_won: int
    won_amount: str
    cost_per_lead: str | None
    acquisition_cost: str | None
    roi: float | None


def _conversion(leads: list[LeadFact]) -> list[ConversionOut]:
    return [ConversionOut(source=c.source, grade=c.grade, leads=c.leads, converted=c.converted, conversion_rate=c.rate)
            for c in conversion_by_source_and_grade(leads)]


def _campaigns(figures: list[CampaignFigures]) -> list[CampaignOut]:
    def amount(value: Decimal | None) -> str | None:
        return None if value is None else money(value)

    return [CampaignOut(campaign_id=c.campaign_id, name=c.name, cost=amount(c.cost), leads=c.leads,
                        deals_won=c.deals_won, won_amount=money(c.won_amount), cost_per_lead=amount(c.cost_per_lead),
                        acquisition_cost=amount(c.acquisition_cost), roi=None if c.roi is None else float(c.roi))
            for c in figures]


class MarketingRow(BaseModel):
    key: str
    conversion: list[ConversionOut]
    campaigns: list[CampaignOut]


class MarketingOut(BaseModel):
    period: str
    currency: str
    scope: str = Field(description="all, team or own: whose leads and deals the figures count")
    campaigns_over: Literal["lifetime", "period"] = Field(
        description="lifetime: each campaign's whole life; period: its leads captured, deals won and cost in it")
    by: Breakdown | None = None
    conversion: list[ConversionOut] = Field(description="leads captured in the period, by source and grade")
    campaigns: list[CampaignOut] = Field(description="the campaigns, over `campaigns_over`")
    rows: list[MarketingRow] = Field(default_factory=list, description="the same per key of `by` (empty without)")


@router.get("/funnel/marketing", response_model=MarketingOut)
async def get_marketing_funnel(
    principal: CurrentPrincipal, org: Org, db: ServiceDatabase, period: Annotated[str, Query()],
    campaigns: Annotated[Literal["lifetime", "period"], Query(
        description="each campaign over its whole life (the default) or over the period")] = "lifetime",
    owner_id: OwnerQuery = None, team: TeamQuery = None, region: RegionQuery = None, by: BreakdownQuery = None,
) -> MarketingOut:
    """Lead-to-opportunity conversion by source and grade for the leads captured in the period; cost per
    lead, customer acquisition cost and ROI per campaign, over its whole life or over the period. Reps see
    their own leads and deals, managers their team's, directors everyone's; narrowed to one owner, team or
    region, and with `by` also per owner, team or region. Everyone's figures carry each campaign's whole
    cost; a part of them (a scope, an owner, a team, a region) is charged the share of each campaign's
    cost that its leads are of the campaign's leads."""
    wanted = _period(period)
    owners = _owners_asked(principal, org, owner_id, team, region)
    window = (wanted.start, wanted.end) if campaigns == "period" else None
    rates = forecast_settings().conversion()
    async with db.pool.acquire() as conn:
        asked = None if owners is None else sorted(owners)
        lead_rows = await store.leads_captured(conn, wanted.start, wanted.end, asked)
        campaign_rows = await store.campaigns(conn)
        brought_rows = await store.campaign_leads(conn, *(window or (None, None)))
        won_rows = await store.campaign_won_deals(conn, *(window or (None, None)))
    leads = [LeadFact(r["source"], r["grade"], r["converted"], r["owner_id"]) for r in lead_rows]
    known = [Campaign(r["campaign_id"], r["name"], rates.convert(r["actual_cost"], r["currency"]), r["starts_on"],
                      r["ends_on"], r["leads_lifetime"]) for r in campaign_rows]
    brought = [CampaignLeads(r["campaign_id"], r["owner_id"], r["leads"]) for r in brought_rows]
    won = [WonDeal(r["campaign_id"], r["amount"],
                   () if r["owner_id"] is None else store.credits_of(r["owner_id"], r["splits"])) for r in won_rows]
    if owners is None:
        overall = company_economics(known, brought, won, window)
    else:
        in_scope = economics_by(known, brought, won, window, lambda o: "asked" if o in owners else None)
        overall = in_scope.get("asked", [])
    rows: list[MarketingRow] = []
    if by is not None:
        per_key = economics_by(known, brought, won, window, _asked_key_of(org, by, owners))
        key_of = _key_of(org, by)  # the leads read are the asked owners' already
        leads_per_key: dict[str, list[LeadFact]] = {}
        for lead in leads:
            leads_per_key.setdefault(key_of(lead.owner_id), []).append(lead)
        rows = [MarketingRow(key=key, conversion=_conversion(leads_per_key.get(key, [])),
                             campaigns=_campaigns(per_key.get(key, [])))
                for key in sorted(set(per_key) | set(leads_per_key))]
    return MarketingOut(period=wanted.name, currency=rates.currency, scope=_scope(principal), campaigns_over=campaigns,
                        by=by, conversion=_conversion(leads), campaigns=_campaigns(overall), rows=rows)


SVG = "image/svg+xml"


@router.get("/charts/funnel.svg", response_class=Response, responses={200: {"content": {SVG: {}}}})
async def get_funnel_chart(
    principal: CurrentPrincipal, org: Org, db: ServiceDatabase, period: Annotated[str, Query()],
    owner_id: OwnerQuery = None, team: TeamQuery = None, region: RegionQuery = None,
) -> Response:
    """The funnel of GET /v1/funnel as an SVG picture."""
    wanted = _period(period)
    owners = _owners_asked(principal, org, owner_id, team, region)
    figures = _funnel_of(owners, *await _cohort(db, owners, wanted))
    title = " · ".join([f"Funnel {wanted.name}", *(v for v in (owner_id, team, region) if v)])
    return Response(funnel_svg(figures, title, forecast_settings().currency), media_type=SVG)


@router.get("/charts/forecast.svg", response_class=Response, responses={200: {"content": {SVG: {}}}})
async def get_forecast_chart(
    _: EveryOwner, db: ServiceDatabase,
    period: Annotated[str, Query(description="a quarter or a year: one bar per month")],
) -> Response:
    """Bookings forecast vs actual closed won per month of a quarter or year, as an SVG picture: the
    latest stored forecast of each month with its 80 % interval, beside what was won."""
    wanted = _period(period)
    months = [p for p in wanted.children if p.kind is PeriodKind.MONTH] or [wanted]
    async with db.pool.acquire() as conn:
        actual = await store.won_per_month(conn, wanted.start, wanted.end)
        stored = await store.bookings_forecasts(conn, 10_000)
    latest: dict[str, Any] = {}
    for row in stored:  # newest first
        latest.setdefault(row["period"], row)
    today = datetime.now(UTC).date()
    points = [
        ForecastPoint(
            period=m.name, actual=actual.get(m.name, Decimal(0)) if m.start <= today else None,
            forecast=latest[m.name]["point"] if m.name in latest else None,
            low=latest[m.name]["low"] if m.name in latest else None,
            high=latest[m.name]["high"] if m.name in latest else None,
        )
        for m in months
    ]
    chart = forecast_vs_actual_svg(points, f"Bookings forecast vs actual {wanted.name}", forecast_settings().currency)
    return Response(chart, media_type=SVG)


def _visible_keys(principal: Principal, org: Organisation, by: By) -> set[str] | None:
    owners = visible_owners(principal, org)
    if owners is None:
        return None
    if by is By.OWNER:
        return owners
    if principal.role is Role.MANAGER and by is By.TEAM:  # a manager's team row is theirs
        return {handlers.placement(org, o).key(by, o) for o in owners}
    return set()  # region and product rows are published over everyone's deals


ROUTERS = [router]
