"""HTTP for quotes: parse, authorise, call a handler, shape the answer."""

import os
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg
from fastapi import APIRouter, Response
from pydantic import BaseModel, Field, StrictInt, StrictStr

from services.opportunities.api import CurrentActor, IfMatch, Org, _after, _etag, _expected_version, _next_cursor
from services.opportunities.domain import parse_money
from services.opportunities.handling import list_parts
from services.opportunities.quotes import handlers
from services.opportunities.quotes.domain import QuoteStatus, parse_percent, quote_lines
from shared.errors import Forbidden
from shared.org import Role
from shared.pagination import Page, clamp_limit
from shared.service import ServiceDatabase
from shared.web import CurrentPrincipal

THRESHOLD_VARIABLE = "FUNNELCAST_QUOTE_APPROVAL_DISCOUNT"
DEFAULT_THRESHOLD = "10"
_DECIDERS = (Role.MANAGER, Role.DIRECTOR, Role.ADMIN)


def approval_threshold() -> Decimal:
    """The effective discount (percent) above which a manager approves a quote; read at each submission."""
    return parse_percent(os.environ.get(THRESHOLD_VARIABLE, DEFAULT_THRESHOLD), THRESHOLD_VARIABLE)


quotes = APIRouter(tags=["quotes"])

Number = StrictStr | StrictInt


class LineIn(BaseModel):
    product: str = Field(min_length=1)
    quantity: Number = Field(description='A whole number or a decimal string, e.g. 3 or "2.5"')
    unit_price: StrictStr = Field(description='Decimal string, e.g. "1200.00"; never a float')
    discount: Number | None = Field(None, description='Percent off this line, e.g. "5" or "12.5"')


class QuoteIn(BaseModel):
    lines: list[LineIn]
    discount: Number | None = Field(None, description="Percent off the whole quote, after the line discounts")
    currency: str | None = Field(None, description="ISO 4217; the opportunity's when absent")
    valid_until: date | None = None
    note: str | None = None
    version: int | None = None


class DecisionIn(BaseModel):
    reason: str | None = None
    version: int | None = None


class VersionIn(BaseModel):
    version: int | None = None


def quote_json(row: asyncpg.Record) -> dict[str, Any]:
    data = handlers.quote_data(row)
    del data["quote_id"]
    return {
        "id": row["id"],
        **data,
        "note": row["note"],
        "approval_required": row["approval_required"],
        "approval_threshold": None if row["approval_threshold"] is None else str(row["approval_threshold"]),
        "approver_id": row["approver_id"],
        "submitted_by": row["submitted_by"],
        "submitted_at": row["submitted_at"],
        "decided_by": row["decided_by"],
        "decided_at": row["decided_at"],
        "decision_reason": row["decision_reason"],
        "version": row["version"],
        "created_by": row["created_by"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _answer(row: asyncpg.Record, response: Response) -> dict[str, Any]:
    response.headers["ETag"] = _etag(row["version"])
    return quote_json(row)


def _parsed(body: QuoteIn) -> dict[str, Any]:
    if body.currency is not None:
        parse_money(None, body.currency)  # checks the code
    return {
        "lines": quote_lines([(line.product, line.quantity, line.unit_price, line.discount) for line in body.lines]),
        "discount": parse_percent(body.discount, "discount"), "currency": body.currency,
        "valid_until": body.valid_until, "note": body.note,
    }


@quotes.post("/v1/opportunities/{opportunity_id}/quotes", status_code=201)
async def create_quote(
    opportunity_id: str, body: QuoteIn, actor: CurrentActor, db: ServiceDatabase, response: Response
) -> dict[str, Any]:
    """Draw up a draft quote (报价) for an open opportunity: line items (product, quantity, unit price, line
    discount in percent) and a quote discount in percent; the totals are computed."""
    row = await handlers.create_quote(db, actor, opportunity_id, **_parsed(body))
    response.headers["Location"] = f"/v1/quotes/{row['id']}"
    return _answer(row, response)


@quotes.get("/v1/quotes")
async def list_quotes(
    actor: CurrentActor, db: ServiceDatabase, opportunity_id: str | None = None, status: QuoteStatus | None = None,
    approver_id: str | None = None, cursor: str | None = None, limit: int | None = None,
) -> Page[dict[str, Any]]:
    """Quotes in the caller's scope, oldest first; `status=pending_approval&approver_id=me` is a manager's queue."""
    size = clamp_limit(limit)
    rows = await list_parts(db, actor, "quotes", after=_after(cursor), limit=size, equal={
        "opportunity_id": opportunity_id, "status": None if status is None else str(status),
        "approver_id": approver_id})
    return Page(items=[quote_json(r) for r in rows], next_cursor=_next_cursor(rows, size))


@quotes.get("/v1/quotes/{quote_id}")
async def get_quote(quote_id: str, actor: CurrentActor, db: ServiceDatabase, response: Response) -> dict[str, Any]:
    return _answer(await handlers.get_quote(db, actor, quote_id), response)


@quotes.put("/v1/quotes/{quote_id}")
async def revise_quote(
    quote_id: str, body: QuoteIn, actor: CurrentActor, db: ServiceDatabase, response: Response,
    if_match: IfMatch = None,
) -> dict[str, Any]:
    """Replace the lines, discount and terms of a draft or rejected quote; it is a draft again."""
    expected = _expected_version(if_match, body.version)
    return _answer(await handlers.revise_quote(db, actor, quote_id, expected, **_parsed(body)), response)


@quotes.post("/v1/quotes/{quote_id}/submit")
async def submit_quote(
    quote_id: str, actor: CurrentActor, org: Org, db: ServiceDatabase, response: Response,
    body: VersionIn | None = None, if_match: IfMatch = None,
) -> dict[str, Any]:
    """Submit a draft. Past the discount threshold it is `pending_approval` for the owner's manager;
    otherwise it is approved at once."""
    expected = _expected_version(if_match, (body or VersionIn()).version)
    row = await handlers.submit_quote(db, actor, org, quote_id, expected, approval_threshold())
    return _answer(row, response)


def _decision_route(action: str, doc: str) -> None:
    async def route(
        quote_id: str, principal: CurrentPrincipal, actor: CurrentActor, db: ServiceDatabase, response: Response,
        body: DecisionIn | None = None, if_match: IfMatch = None,
    ) -> dict[str, Any]:
        if principal.role not in _DECIDERS:
            raise Forbidden(f"a quote is {action}d by a manager, director or admin, not by a {principal.role}")
        body = body or DecisionIn()
        expected = _expected_version(if_match, body.version)
        row = await handlers.decide_quote(db, actor, quote_id, expected, approve=action == "approve",
                                          reason=body.reason)
        return _answer(row, response)

    route.__doc__ = doc
    route.__name__ = f"{action}_quote"
    quotes.post(f"/v1/quotes/{{quote_id}}/{action}")(route)


_decision_route("approve", "Approve a quote pending approval (manager of the owner's team, director or admin).")
_decision_route("reject", "Reject a quote pending approval, with a reason; the owner may revise and resubmit it.")
