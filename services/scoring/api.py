"""HTTP: the current score of a lead or an opportunity, and a lead's score history; scoped by owner."""

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from services.scoring import handlers, store
from services.scoring.domain import MODEL_VERSION, TIER_VERSION
from services.scoring.schedule import scheduled_work
from shared.auth import Principal, may_act_on
from shared.db import Database
from shared.errors import Forbidden, NotFound
from shared.org import Organisation, Role
from shared.service import ServiceDatabase
from shared.settings import get_settings
from shared.web import CurrentPrincipal, organisation, require_roles

Org = Annotated[Organisation, Depends(organisation)]
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]


class FactorOut(BaseModel):
    feature: str
    contribution: float
    label_en: str
    label_zh: str


class ScoreOut(BaseModel):
    score: int
    model_version: str
    factors: list[FactorOut]
    scored_at: datetime
    owner_id: str | None


class LeadScoreOut(ScoreOut):
    lead_id: str


class OpportunityScoreOut(ScoreOut):
    opportunity_id: str


class HistoryEntry(BaseModel):
    score: int
    model_version: str
    factors: list[FactorOut]
    scored_at: datetime
    cause_type: str


class LeadScoreHistory(BaseModel):
    lead_id: str
    items: list[HistoryEntry]


class OpportunityScoreHistory(BaseModel):
    opportunity_id: str
    items: list[HistoryEntry]


def _history(rows: list[Any]) -> list[HistoryEntry]:
    return [
        HistoryEntry(score=r["score"], model_version=r["model_version"], factors=json.loads(r["factors"]),
                     scored_at=_utc(r["scored_at"]), cause_type=r["cause_type"])
        for r in rows
    ]


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _fields(scored: store.Scored) -> dict[str, Any]:
    return {"score": scored.score, "model_version": scored.model_version, "factors": scored.factors,
            "scored_at": _utc(scored.scored_at), "owner_id": scored.owner_id}


def _check_scope(principal: CurrentPrincipal, org: Organisation, scored: store.Scored, what: str) -> None:
    if not may_act_on(principal, scored.owner_id, org):
        raise Forbidden(f"{what} belongs to {scored.owner_id or 'nobody yet'}, outside {principal.user_id}'s scope")


router = APIRouter(tags=["scores"])


@router.get("/v1/leads/{lead_id}/score", response_model=LeadScoreOut)
async def get_lead_score(lead_id: str, principal: CurrentPrincipal, org: Org, db: ServiceDatabase) -> LeadScoreOut:
    """The lead's current score, the model that produced it and its top factors (en and zh-CN)."""
    async with db.pool.acquire() as conn:
        scored = await store.lead_score(conn, lead_id)
    if scored is None:
        raise NotFound(f"no score for lead {lead_id}: the scoring service has not seen it")
    _check_scope(principal, org, scored, f"lead {lead_id}")
    return LeadScoreOut(lead_id=lead_id, **_fields(scored))


@router.get("/v1/leads/{lead_id}/score/history", response_model=LeadScoreHistory)
async def get_lead_score_history(
    lead_id: str, principal: CurrentPrincipal, org: Org, db: ServiceDatabase,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> LeadScoreHistory:
    """Every score computed for the lead, newest first, with the event type that caused it."""
    async with db.pool.acquire() as conn:
        scored = await store.lead_score(conn, lead_id)
        if scored is None:
            raise NotFound(f"no score for lead {lead_id}: the scoring service has not seen it")
        _check_scope(principal, org, scored, f"lead {lead_id}")
        rows = await store.lead_history(conn, lead_id, limit)
    return LeadScoreHistory(lead_id=lead_id, items=_history(rows))


@router.get("/v1/opportunities/{opportunity_id}/score", response_model=OpportunityScoreOut)
async def get_opportunity_score(
    opportunity_id: str, principal: CurrentPrincipal, org: Org, db: ServiceDatabase
) -> OpportunityScoreOut:
    """The opportunity's win probability in percent, the model that produced it and its top factors."""
    async with db.pool.acquire() as conn:
        scored = await store.opportunity_score(conn, opportunity_id)
    if scored is None:
        raise NotFound(f"no win probability for opportunity {opportunity_id}: the scoring service has not seen it")
    _check_scope(principal, org, scored, f"opportunity {opportunity_id}")
    return OpportunityScoreOut(opportunity_id=opportunity_id, **_fields(scored))


@router.get("/v1/opportunities/{opportunity_id}/score/history", response_model=OpportunityScoreHistory)
async def get_opportunity_score_history(
    opportunity_id: str, principal: CurrentPrincipal, org: Org, db: ServiceDatabase,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> OpportunityScoreHistory:
    """Every win probability computed for the opportunity, newest first, with the event type that caused it."""
    async with db.pool.acquire() as conn:
        scored = await store.opportunity_score(conn, opportunity_id)
        if scored is None:
            raise NotFound(f"no win probability for opportunity {opportunity_id}: the scoring service has not seen it")
        _check_scope(principal, org, scored, f"opportunity {opportunity_id}")
        rows = await store.opportunity_history(conn, opportunity_id, limit)
    return OpportunityScoreHistory(opportunity_id=opportunity_id, items=_history(rows))


class AccountTierOut(BaseModel):
    account_id: str
    value_tier: str | None
    buyer_type: str | None
    model_version: str
    amount_12m: str
    currency: str | None
    contracts_total: int
    factors: list[FactorOut]
    tiered_at: datetime
    owner_id: str | None


@router.get("/v1/accounts/{account_id}/tier", response_model=AccountTierOut)
async def get_account_tier(
    account_id: str, principal: CurrentPrincipal, org: Org, db: ServiceDatabase
) -> AccountTierOut:
    """The account's value tier (high / medium / low) and buyer type (frequent / occasional / first-time
    buyer) from its signed contracts, with the amount, frequency and recency factors behind it."""
    async with db.pool.acquire() as conn:
        tiered = await store.account_tier(conn, account_id)
    if tiered is None:
        raise NotFound(f"no tier for account {account_id}: the scoring service has seen no contract of it")
    if not may_act_on(principal, tiered.owner_id, org):
        raise Forbidden(f"account {account_id} belongs to {tiered.owner_id}, outside {principal.user_id}'s scope")
    return AccountTierOut(
        account_id=account_id, value_tier=tiered.value_tier, buyer_type=tiered.buyer_type,
        model_version=TIER_VERSION, amount_12m=f"{tiered.amount_12m or 0:.2f}", currency=tiered.currency,
        contracts_total=len(tiered.contracts), factors=tiered.factors, tiered_at=_utc(tiered.tiered_at),
        owner_id=tiered.owner_id,
    )


class ModelOut(BaseModel):
    version: str
    kind: str
    algorithm: str
    trained_at: datetime
    window_from: datetime
    window_to: datetime
    n_train: int
    n_holdout: int
    auc: float
    brier: float
    current_version: str
    current_auc: float
    promoted: bool
    active: bool


class ModelList(BaseModel):
    active_version: str
    items: list[ModelOut]


models = APIRouter(prefix="/v1/models", tags=["models"], lifespan=scheduled_work)


Kind = Literal["lead", "opportunity"]


class RescoringOut(BaseModel):
    as_of: datetime
    examined: int
    rescored: int


AsOf = Annotated[datetime | None, Query(description="the moment to score as of; now when absent")]


def _moment(as_of: datetime | None) -> datetime:
    return datetime.now(UTC) if as_of is None else as_of.replace(tzinfo=as_of.tzinfo or UTC)  # naive: UTC


async def _rescore(db: Database, subjects: handlers.OpenSubjects, as_of: datetime | None) -> RescoringOut:
    done = await handlers.rescore_open(db, subjects, _moment(as_of), get_settings().scoring_rescore_batch)
    return RescoringOut(as_of=done.as_of, examined=done.examined, rescored=done.rescored)


@router.post("/v1/opportunities/rescore", response_model=RescoringOut)
async def rescore_opportunities(_: Admin, db: ServiceDatabase, as_of: AsOf = None) -> RescoringOut:
    """Re-score every open opportunity now (or as of `as_of`, e.g. to evaluate on past data) as the periodic
    re-scoring does, publishing the win probabilities that changed (admin). A deal whose latest event is after
    `as_of` is left as it is."""
    return await _rescore(db, handlers.OPEN_OPPORTUNITIES, as_of)


class RetieringOut(BaseModel):
    as_of: datetime
    examined: int
    retiered: int


@router.post("/v1/accounts/retier", response_model=RetieringOut)
async def retier_accounts(_: Admin, db: ServiceDatabase, as_of: AsOf = None) -> RetieringOut:
    """Re-tier every account with a tier now, or as of `as_of`, as the periodic pass does, publishing the tiers
    time alone moved (a contract past 90 or 365 days) (admin). An account tiered after `as_of` is left as it is."""
    done = await handlers.retier_accounts(db, _moment(as_of), get_settings().scoring_rescore_batch)
    return RetieringOut(as_of=done.as_of, examined=done.examined, retiered=done.rescored)


@router.post("/v1/leads/rescore", response_model=RescoringOut)
async def rescore_leads(_: Admin, db: ServiceDatabase, as_of: AsOf = None) -> RescoringOut:
    """Re-score every open lead (not converted, disqualified or merged) now, or as of `as_of`, as the periodic
    re-scoring does, publishing the scores whose number, model or factors changed (admin). A lead whose
    latest score was computed after `as_of` is left as it is."""
    return await _rescore(db, handlers.OPEN_LEADS, as_of)


@models.post("/{kind}/train", response_model=ModelOut, status_code=201)
async def train_model(kind: Kind, _: Admin, db: ServiceDatabase) -> ModelOut:
    """Train a candidate lead (converted / disqualified) or opportunity (won / lost) model on the outcomes so
    far (admin); it becomes active only if it beats the active model (or the rules) on the newest 20 % of the
    outcomes. 409 while there are too few outcomes."""
    return ModelOut(**await handlers.train_model(db, kind))


@models.post("/{kind}/{version}/activate", status_code=204)
async def activate_model(kind: Kind, version: str, _: Admin, db: ServiceDatabase) -> None:
    """Roll back (or forward) to a model version; `rules-v1` returns to the rule-based score (admin)."""
    await handlers.activate_model(db, kind, version)


@models.get("/{kind}", response_model=ModelList)
async def list_models(kind: Kind, _: CurrentPrincipal, db: ServiceDatabase) -> ModelList:
    """Every model of the kind trained, newest first, with its training window and held-out evaluation."""
    async with db.pool.acquire() as conn:
        rows = await store.models(conn, kind)
    items = [ModelOut(**dict(r)) for r in rows]
    active = next((m.version for m in items if m.active), MODEL_VERSION)
    return ModelList(active_version=active, items=items)


ROUTERS = [router, models]
