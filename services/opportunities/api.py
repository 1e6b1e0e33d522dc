"""HTTP: parse, authorise, call a handler, shape the answer."""

import json
from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, Header, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from services.opportunities import handlers, store
from services.opportunities.domain import (
    Assessment,
    CloseSummary,
    ContractStatus,
    Money,
    OpportunityEdit,
    Pipeline,
    Status,
    define_pipeline,
    owner_splits,
    parse_money,
)
from services.opportunities.handling import Actor, list_parts
from shared.auth import Principal, visible_owners
from shared.errors import Forbidden, PreconditionFailed, Unprocessable
from shared.org import Organisation, Role
from shared.pagination import Page, clamp_limit, decode_cursor, encode_cursor
from shared.service import ServiceDatabase
from shared.web import CurrentPrincipal, organisation, require_roles

Org = Annotated[Organisation, Depends(organisation)]


async def current_actor(principal: CurrentPrincipal, org: Org) -> Actor:
    owners = visible_owners(principal, org)
    return Actor(principal.user_id, None if owners is None else frozenset(owners))


CurrentActor = Annotated[Actor, Depends(current_actor)]
IfMatch = Annotated[str | None, Header(description='The ETag of the version the change is based on, e.g. "3"')]


def _expected_version(if_match: str | None, body_version: int | None) -> int | None:
    header_version = None
    if if_match is not None and if_match.strip() != "*":
        tag = if_match.strip().removeprefix("W/").strip('"')
        if not tag.isdigit():
            raise PreconditionFailed(f"If-Match {if_match!r} is not an ETag this service issued")
        header_version = int(tag)
    if header_version is not None and body_version is not None and header_version != body_version:
        raise PreconditionFailed(f"If-Match names version {header_version} but the body says {body_version}")
    return header_version if header_version is not None else body_version


def _etag(version: int) -> str:
    return f'"{version}"'


def _after(cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    created_at, row_id = decode_cursor(cursor)
    try:
        return datetime.fromisoformat(str(created_at)), row_id
    except ValueError:
        raise Unprocessable("cursor is not one this service issued") from None


def _next_cursor(rows: list[asyncpg.Record], limit: int) -> str | None:
    if len(rows) < limit:
        return None
    return encode_cursor(rows[-1]["created_at"].isoformat(), rows[-1]["id"])


def _known_owner(org: Organisation, owner_id: str) -> None:
    if org.user(owner_id) is None:
        raise Unprocessable(f"owner {owner_id!r} is not a user of the organisation")


# --- opportunities ------------------------------------------------------------------------

opportunities = APIRouter(prefix="/v1/opportunities", tags=["opportunities"])


class OpportunityIn(BaseModel):
    name: str = Field(min_length=1)
    account_id: str | None = None
    account_name: str | None = None
    amount: str | None = Field(None, description='Decimal string, e.g. "120000.00"; never a float')
    currency: str | None = Field(None, description="ISO 4217, CNY when absent")
    owner_id: str | None = Field(None, description="The caller when absent")
    expected_close_date: date | None = None
    region: str | None = None
    campaign_id: str | None = None
    product: str | None = Field(None, min_length=1, max_length=200,
                                description="The product or product line it is for; the forecast rolls up by it")
    pipeline_id: str | None = Field(None, description="The pipeline it opens in (its first stage); the default "
                                                      "project-sales pipeline when absent")
    contact_id: str | None = Field(None, description="The customer's contact for the deal: a current contact of "
                                                     "the account")


class OpportunityChange(BaseModel):
    """The fields to change; those absent stay as they are."""

    model_config = ConfigDict(extra="forbid")  # a stage or status is changed by its own route, never here

    name: str | None = Field(None, min_length=1, max_length=500)
    amount: str | None = Field(None, description='Decimal string, e.g. "120000.00"; never a float')
    currency: str | None = Field(None, description="ISO 4217")
    expected_close_date: date | None = Field(None, description="null clears it (the forecast then leaves it out)")
    product: str | None = Field(None, min_length=1, max_length=200, description="null clears it")
    version: int | None = None


class StageIn(BaseModel):
    stage: str
    version: int | None = None


class PipelineMoveIn(BaseModel):
    pipeline_id: str
    stage: str | None = Field(None, description="An open stage of that pipeline; none: its first stage")
    version: int | None = None


class CloseIn(BaseModel):
    outcome: str
    reason: str | None = None
    competitor: str | None = None
    version: int | None = None


class AssessmentIn(BaseModel):
    need: str | None = Field(None, description="decided | planned | latent")
    budget: str | None = Field(None, description="in_place | preliminary | none")
    urgency: str | None = Field(None, description="driving | none")
    timing: str | None = Field(None, description="fixed | flexible | none")
    decision_maker_trust: str | None = Field(None, description="high | medium | low")
    decision_process_knowledge: str | None = Field(None, description="high | medium | low")
    leverage: str | None = Field(None, description="high | medium | low")
    version: int | None = None


class OwnerIn(BaseModel):
    owner_id: str
    split: int


class OwnersIn(BaseModel):
    owners: list[OwnerIn] = Field(description="The first is the primary owner; whole-percent splits summing to 100")
    version: int | None = None


class StatusIn(BaseModel):
    reason: str | None = None
    version: int | None = None


def opportunity_json(row: asyncpg.Record, history: list[asyncpg.Record] | None = None) -> dict[str, Any]:
    pipeline = store.pipeline_of(row)
    body: dict[str, Any] = {
        "id": row["id"],
        "name": row["name"],
        "account_id": row["account_id"],
        "contact_id": row["contact_id"],
        "owner_id": row["owner_id"],
        "owners": store.owners_of(row),
        "region": row["region"],
        "pipeline_id": row["pipeline_id"],
        "stage": row["stage"],
        "stage_label": pipeline.labels(row["stage"]),
        "status": row["status"],
        "probability": row["probability"],
        "amount": str(row["amount"]),
        "currency": row["currency"],
        "expected_close_date": row["expected_close_date"],
        "stage_entered_at": row["stage_entered_at"],
        "lead_id": row["lead_id"],
        "campaign_id": row["campaign_id"],
        "product": row["product"],
        "close_reason": row["close_reason"],
        "competitor": row["competitor"],
        "closed_at": row["closed_at"],
        "status_reason": row["status_reason"],
        "assessment": None if row["assessment"] is None else json.loads(row["assessment"]),
        "maturity": row["maturity"],
        "version": row["version"],
        "created_by": row["created_by"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
    if history is not None:
        body["stage_history"] = [dict(h) for h in history]
    return body


@opportunities.post("", status_code=201)
async def create_opportunity(
    body: OpportunityIn, actor: CurrentActor, org: Org, db: ServiceDatabase, response: Response
) -> dict[str, Any]:
    """Open an opportunity in the first stage; the account is given by id, or by name (matched or created)."""
    owner_id = body.owner_id or actor.user_id
    _known_owner(org, owner_id)
    row = await handlers.create_opportunity(
        db, actor, name=body.name, account_id=body.account_id, account_name=body.account_name,
        money=parse_money(body.amount, body.currency), owner_id=owner_id,
        expected_close_date=body.expected_close_date, region=body.region, campaign_id=body.campaign_id,
        product=body.product.strip() if body.product and body.product.strip() else None,
        pipeline_id=body.pipeline_id, contact_id=body.contact_id,
    )
    response.headers["ETag"] = _etag(row["version"])
    response.headers["Location"] = f"/v1/opportunities/{row['id']}"
    return opportunity_json(row, [])


@opportunities.get("")
async def list_opportunities(
    actor: CurrentActor,
    org: Org,
    db: ServiceDatabase,
    stage: str | None = None,
    status: Status | None = None,
    pipeline_id: str | None = None,
    owner_id: str | None = None,
    team: str | None = None,
    account_id: str | None = None,
    region: str | None = None,
    close_from: date | None = None,
    close_to: date | None = None,
    amount_min: Annotated[str | None, Query(description="decimal string")] = None,
    amount_max: Annotated[str | None, Query(description="decimal string")] = None,
    cursor: str | None = None,
    limit: int | None = None,
) -> Page[dict[str, Any]]:
    """Opportunities in the caller's scope, oldest first, filtered; `next_cursor` pages on."""
    owners: set[str] | None = None
    if owner_id is not None:
        owners = {owner_id}
    if team is not None:
        members = {u.id for u in org.members(team)}
        owners = members if owners is None else owners & members
    where = store.OpportunityFilter(
        owners=owners, stage=stage, status=str(status) if status else None, pipeline_id=pipeline_id,
        account_id=account_id, region=region,
        close_from=close_from, close_to=close_to,
        amount_min=parse_money(amount_min, None).amount if amount_min else None,
        amount_max=parse_money(amount_max, None).amount if amount_max else None,
    )
    size = clamp_limit(limit)
    rows = await handlers.list_opportunities(db, actor, where, after=_after(cursor), limit=size)
    return Page(items=[opportunity_json(r) for r in rows], next_cursor=_next_cursor(rows, size))


@opportunities.get("/{opportunity_id}")
async def get_opportunity(
    opportunity_id: str, actor: CurrentActor, db: ServiceDatabase, response: Response
) -> dict[str, Any]:
    """The opportunity with its stage history; the ETag is its version, for If-Match on changes."""
    row, history = await handlers.get_opportunity(db, actor, opportunity_id)
    response.headers["ETag"] = _etag(row["version"])
    return opportunity_json(row, history)


def _answer(
    row: asyncpg.Record, response: Response,
    shape: Callable[[asyncpg.Record], dict[str, Any]] = opportunity_json,
) -> dict[str, Any]:
    """The record as JSON, with its version as the ETag."""
    response.headers["ETag"] = _etag(row["version"])
    return shape(row)


@opportunities.patch("/{opportunity_id}")
async def edit_opportunity(
    opportunity_id: str, body: OpportunityChange, actor: CurrentActor, db: ServiceDatabase, response: Response,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    """Change the name, amount, currency, expected close date or product of an open or suspended
    opportunity (the fields given; a closed or terminated one: 409). The stage moves by POST .../stage.
    A stale If-Match or version gets 412; a change publishes sales.opportunity.updated.v1."""
    expected = _expected_version(if_match, body.version)
    changes = OpportunityEdit.of(body.model_dump(exclude_unset=True, exclude={"version"}))
    return _answer(await handlers.edit(db, actor, opportunity_id, changes, expected), response)


@opportunities.post("/{opportunity_id}/stage")
async def change_stage(
    opportunity_id: str, body: StageIn, actor: CurrentActor, db: ServiceDatabase, response: Response,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    """Move to another open stage (closing is POST .../close); a stale If-Match or version gets 412."""
    expected = _expected_version(if_match, body.version)
    return _answer(await handlers.change_stage(db, actor, opportunity_id, body.stage, expected), response)


@opportunities.post("/{opportunity_id}/pipeline")
async def move_to_pipeline(
    opportunity_id: str, body: PipelineMoveIn, actor: CurrentActor, db: ServiceDatabase, response: Response,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    """Move an open opportunity into an open stage of another pipeline, which is not retired (409 otherwise);
    recorded and published as a stage change naming both pipelines. A stale If-Match or version gets 412."""
    expected = _expected_version(if_match, body.version)
    moved = await handlers.move_to_pipeline(db, actor, opportunity_id, body.pipeline_id, body.stage, expected)
    return _answer(moved, response)


@opportunities.post("/{opportunity_id}/close")
async def close(
    opportunity_id: str, body: CloseIn, actor: CurrentActor, db: ServiceDatabase, response: Response,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    """Close won or lost with a summary: a reason, and the competitor that won when lost."""
    expected = _expected_version(if_match, body.version)
    summary = CloseSummary.of(body.outcome, body.reason, body.competitor)
    return _answer(await handlers.close(db, actor, opportunity_id, summary, expected), response)


@opportunities.put("/{opportunity_id}/assessment")
async def assess(
    opportunity_id: str, body: AssessmentIn, actor: CurrentActor, db: ServiceDatabase, response: Response,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    """Record the presales maturity assessment (成熟度评估): need, budget, urgency, timing and the
    competitive position (decision makers' trust, knowledge of the decision process, leverage)."""
    expected = _expected_version(if_match, body.version)
    assessment = Assessment.of(body.model_dump(exclude={"version"}))
    return _answer(await handlers.assess(db, actor, opportunity_id, assessment, expected), response)


@opportunities.put("/{opportunity_id}/owners")
async def change_owners(
    opportunity_id: str, body: OwnersIn, actor: CurrentActor, org: Org, db: ServiceDatabase, response: Response,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    """Set the owners and their splits; one owner at 100 is a transfer. Every owner must be in the caller's
    scope (a manager shares or transfers within the team)."""
    expected = _expected_version(if_match, body.version)
    for owner in body.owners:
        _known_owner(org, owner.owner_id)
    owners = owner_splits([(o.owner_id, o.split) for o in body.owners])
    return _answer(await handlers.change_owners(db, actor, opportunity_id, owners, expected), response)


def _status_route(action: str, doc: str) -> None:
    async def route(
        opportunity_id: str, actor: CurrentActor, db: ServiceDatabase, response: Response,
        body: StatusIn | None = None, if_match: IfMatch = None,
    ) -> dict[str, Any]:
        body = body or StatusIn()
        expected = _expected_version(if_match, body.version)
        row = await handlers.set_status(db, actor, opportunity_id, action, body.reason, expected)
        return _answer(row, response)

    route.__doc__ = doc
    route.__name__ = action
    opportunities.post(f"/{{opportunity_id}}/{action}")(route)


_status_route("suspend", "Suspend (中止) an open opportunity, with a reason; it can be reactivated.")
_status_route("reactivate", "Reactivate a suspended opportunity.")
_status_route("terminate", "Terminate (终止) an open or suspended opportunity, with a reason; it is final.")
_status_route("archive", "Archive a closed (won or lost) opportunity; the reason is optional.")


# --- pipelines ------------------------------------------------------------------------------

pipelines = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])
Admin = Annotated[Principal, Depends(require_roles(Role.ADMIN))]


class Localised(BaseModel):
    """A text in Simplified Chinese and in English."""

    model_config = ConfigDict(populate_by_name=True)

    zh_cn: str = Field(alias="zh-CN", description="简体中文")
    en: str = Field(description="English")

    def as_dict(self) -> dict[str, str]:
        return {"zh-CN": self.zh_cn, "en": self.en}


class PipelineStageIn(BaseModel):
    key: str = Field(description="A slug (lower-case letters, digits, _), unique in the pipeline; not won / lost")
    label: Localised
    probability: int = Field(description="The default win probability of a deal in this stage, percent 0-100")


class PipelineDefinition(BaseModel):
    """A pipeline's whole definition: its names, its open stages in order (won and lost close every
    pipeline and are not given), and whether a forward move may skip stages."""

    name: Localised
    stages: list[PipelineStageIn]
    allow_skipping: bool = Field(True, description="false: forwards only to the next open stage (back is "
                                                   "allowed) and closed won only from the last open stage")
    retired: bool = Field(False, description="true: no opportunity opens in it or moves into it any more; the "
                                             "deals in it carry on to their close (the default pipeline never)")


class PipelineIn(PipelineDefinition):
    id: str = Field(description="A slug (lower-case letters, digits, _ or -), never changed")


class PipelineChange(PipelineDefinition):
    version: int | None = None


def _defined(pipeline_id: str, body: PipelineDefinition) -> Pipeline:
    stages = [{"key": s.key, "label": s.label.as_dict(), "probability": s.probability} for s in body.stages]
    return define_pipeline(pipeline_id, body.name.as_dict(), stages, body.allow_skipping, retired=body.retired)


def pipeline_json(row: asyncpg.Record) -> dict[str, Any]:
    pipeline = store.to_pipeline(row)
    return {
        "id": pipeline.id,
        "name": pipeline.names,
        "stages": [{"key": s.key, "label": s.labels, "probability": s.probability, "closed": s.closed}
                   for s in pipeline.stages],
        "allow_skipping": pipeline.allow_skipping,
        "retired": pipeline.retired,
        "version": pipeline.version,
        "created_by": row["created_by"],
        "created_at": row["created_at"],
        "updated_by": row["updated_by"],
        "updated_at": row["updated_at"],
    }


@pipelines.get("")
async def list_pipelines(_: CurrentPrincipal, db: ServiceDatabase) -> dict[str, Any]:
    """Every pipeline with its stages (open ones in order, then won and lost), labels and probabilities."""
    return {"items": [pipeline_json(r) for r in await handlers.list_pipelines(db)]}


@pipelines.get("/{pipeline_id}")
async def get_pipeline(pipeline_id: str, _: CurrentPrincipal, db: ServiceDatabase, response: Response
                       ) -> dict[str, Any]:
    """A pipeline; the ETag is its version, for If-Match on a change."""
    return _answer(await handlers.get_pipeline(db, pipeline_id), response, pipeline_json)


@pipelines.post("", status_code=201)
async def create_pipeline(body: PipelineIn, admin: Admin, db: ServiceDatabase, response: Response) -> dict[str, Any]:
    """Define a pipeline (admin only); 409 when the id is taken, 422 naming every problem of the definition."""
    row = await handlers.create_pipeline(db, admin.user_id, _defined(body.id, body))
    response.headers["Location"] = f"/v1/pipelines/{row['id']}"
    return _answer(row, response, pipeline_json)


@pipelines.put("/{pipeline_id}")
async def update_pipeline(
    pipeline_id: str, body: PipelineChange, admin: Admin, db: ServiceDatabase, response: Response,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    """Replace a pipeline's definition (admin only); a stale If-Match or version gets 412. Removing or
    renaming a stage that open or suspended opportunities are in is refused (409, with how many); a changed
    probability applies at once to the deals in that stage."""
    expected = _expected_version(if_match, body.version)
    row = await handlers.update_pipeline(db, admin.user_id, _defined(pipeline_id, body), expected)
    return _answer(row, response, pipeline_json)


# --- accounts -----------------------------------------------------------------------------

accounts = APIRouter(prefix="/v1/accounts", tags=["accounts"])
_CREDIT_ROLES = (Role.MANAGER, Role.DIRECTOR, Role.ADMIN, Role.INTEGRATION)


class AccountIn(BaseModel):
    name: str = Field(min_length=1)
    region: str | None = None
    owner_id: str | None = None
    parent_account_id: str | None = None
    key_account: bool = False
    credit_limit: str | None = Field(None, description="Decimal string; none means no limit")
    credit_currency: str | None = None


class AccountChange(BaseModel):
    name: str | None = Field(None, min_length=1)
    region: str | None = None
    owner_id: str | None = None
    parent_account_id: str | None = None
    key_account: bool | None = None
    credit_limit: str | None = Field(None, description="Decimal string; null removes the limit")
    credit_currency: str | None = None
    version: int | None = None


def account_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "region": row["region"],
        "owner_id": row["owner_id"],
        "parent_account_id": row["parent_account_id"],
        "key_account": row["key_account"],
        "value_tier": row["value_tier"],
        "buyer_type": row["buyer_type"],
        "credit_limit": None if row["credit_limit"] is None else str(row["credit_limit"]),
        "credit_currency": row["credit_currency"],
        "lead_id": row["lead_id"],
        "version": row["version"],
        "created_by": row["created_by"],
        "created_at": row["created_at"],
    }


@accounts.post("", status_code=201)
async def create_account(
    body: AccountIn, principal: CurrentPrincipal, actor: CurrentActor, org: Org, db: ServiceDatabase
) -> dict[str, Any]:
    """Create an account; a name that matches an existing one once normalised gets 409 naming it.

    A credit limit is set by a manager, director, admin or integration, not by a rep."""
    credit: Money | None = None
    if body.credit_limit is not None:
        if principal.role not in _CREDIT_ROLES:
            raise Forbidden("a credit limit is set by a manager, director, admin or integration")
        credit = parse_money(body.credit_limit, body.credit_currency)
    if body.owner_id is not None:
        _known_owner(org, body.owner_id)
    row = await handlers.create_account(
        db, actor, name=body.name, region=body.region, owner_id=body.owner_id,
        parent_account_id=body.parent_account_id, key_account=body.key_account, credit_limit=credit,
    )
    return account_json(row)


@accounts.patch("/{account_id}")
async def update_account(
    account_id: str, body: AccountChange, principal: CurrentPrincipal, actor: CurrentActor, org: Org,
    db: ServiceDatabase, response: Response, if_match: IfMatch = None,
) -> dict[str, Any]:
    """Change the fields given (region, owner, parent, key-account flag, name, credit limit); `version` or
    If-Match guards against lost updates. The credit limit is changed by a manager, director, admin or
    integration only."""
    expected = _expected_version(if_match, body.version)
    changes = body.model_dump(exclude_unset=True, exclude={"version"})
    if "credit_limit" in changes or "credit_currency" in changes:
        if principal.role not in _CREDIT_ROLES:
            raise Forbidden("a credit limit is set by a manager, director, admin or integration")
        if changes.get("credit_limit") is not None:
            credit = parse_money(changes["credit_limit"], changes.get("credit_currency"))
            changes["credit_limit"], changes["credit_currency"] = credit.amount, credit.currency
    if changes.get("owner_id") is not None:
        _known_owner(org, changes["owner_id"])
    for required in ("name", "key_account", "credit_currency"):
        if required in changes and changes[required] is None:
            raise Unprocessable(f"{required} cannot be null")
    row = await handlers.update_account(db, actor, account_id, changes, expected)
    response.headers["ETag"] = _etag(row["version"])
    return account_json(row)


@accounts.get("")
async def list_accounts(
    _: CurrentPrincipal, db: ServiceDatabase, name: str | None = None, cursor: str | None = None,
    limit: int | None = None,
) -> Page[dict[str, Any]]:
    """Accounts, oldest first; `name` matches part of the name. Every role sees the whole customer list,
    so that nobody creates a customer twice."""
    size = clamp_limit(limit)
    rows = await handlers.list_accounts(db, name=name, after=_after(cursor), limit=size)
    return Page(items=[account_json(r) for r in rows], next_cursor=_next_cursor(rows, size))


@accounts.get("/{account_id}")
async def get_account(account_id: str, _: CurrentPrincipal, db: ServiceDatabase) -> dict[str, Any]:
    return account_json(await handlers.get_account(db, account_id))


# --- contracts ----------------------------------------------------------------------------

contracts = APIRouter(prefix="/v1/contracts", tags=["contracts"])


class ContractIn(BaseModel):
    opportunity_id: str
    amount: str | None = Field(None, description="Decimal string; the opportunity's amount when absent")
    currency: str | None = None


def contract_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "opportunity_id": row["opportunity_id"],
        "account_id": row["account_id"],
        "owner_id": row["owner_id"],
        "amount": str(row["amount"]),
        "currency": row["currency"],
        "status": row["status"],
        "campaign_id": row["campaign_id"],
        "signed_by": row["signed_by"],
        "signed_at": row["signed_at"],
        "executed_at": row["executed_at"],
        "terminated_at": row["terminated_at"],
        "termination_reason": row["termination_reason"],
        "version": row["version"],
        "created_by": row["created_by"],
        "created_at": row["created_at"],
    }


class ContractEnd(BaseModel):
    reason: str | None = None


@contracts.post("", status_code=201)
async def create_contract(body: ContractIn, actor: CurrentActor, db: ServiceDatabase) -> dict[str, Any]:
    """Draw up a contract (合同) for a won opportunity or one in the contract stage."""
    money = None if body.amount is None else parse_money(body.amount, body.currency)
    return contract_json(await handlers.create_contract(db, actor, opportunity_id=body.opportunity_id, money=money))


@contracts.get("")
async def list_contracts(
    actor: CurrentActor, db: ServiceDatabase, opportunity_id: str | None = None, account_id: str | None = None,
    status: ContractStatus | None = None, cursor: str | None = None, limit: int | None = None,
) -> Page[dict[str, Any]]:
    """Contracts in the caller's scope (their owner's, or their deal's owners' and split holders'), oldest
    first; `status=signed&account_id=...` is what a customer has booked."""
    size = clamp_limit(limit)
    rows = await list_parts(db, actor, "contracts", after=_after(cursor), limit=size, equal={
        "opportunity_id": opportunity_id, "account_id": account_id, "status": None if status is None else str(status)})
    return Page(items=[contract_json(r) for r in rows], next_cursor=_next_cursor(rows, size))


@contracts.get("/{contract_id}")
async def get_contract(contract_id: str, actor: CurrentActor, db: ServiceDatabase) -> dict[str, Any]:
    return contract_json(await handlers.get_contract(db, actor, contract_id))


@contracts.post("/{contract_id}/sign")
async def sign_contract(contract_id: str, actor: CurrentActor, db: ServiceDatabase) -> dict[str, Any]:
    """Sign; refused (409) when it would take the customer's signed total past its credit limit."""
    return contract_json(await handlers.sign_contract(db, actor, contract_id))




@contracts.post("/{contract_id}/execute")
async def execute_contract(contract_id: str, actor: CurrentActor, db: ServiceDatabase) -> dict[str, Any]:
    """Record a signed contract as executed (fulfilled); it stops counting against the credit limit."""
    return contract_json(await handlers.end_contract(db, actor, contract_id, "execute", None))


@contracts.post("/{contract_id}/terminate")
async def terminate_contract(
    contract_id: str, body: ContractEnd, actor: CurrentActor, db: ServiceDatabase
) -> dict[str, Any]:
    """Terminate a draft or signed contract, with a reason; a signed one stops counting against the limit."""
    return contract_json(await handlers.end_contract(db, actor, contract_id, "terminate", body.reason))
