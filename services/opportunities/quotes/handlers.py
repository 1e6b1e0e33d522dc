"""Quote commands: load, apply the rules of quotes/domain.py, save and publish in one transaction."""

import json
from datetime import date
from decimal import Decimal
from typing import Any

import asyncpg

from services.opportunities import store as opportunity_store
from services.opportunities.handling import Actor, _new_id, _now, _ts, changed_meanwhile, check_version
from services.opportunities.quotes import store
from services.opportunities.quotes.domain import (
    QuoteLine,
    QuoteStatus,
    Totals,
    approval_required,
    approver_for,
    may_decide,
    may_revise,
    may_submit,
    totals,
)
from shared.db import Database, Transaction
from shared.errors import NotFound, Unprocessable
from shared.org import Organisation

SYSTEM = "system"  # the decider of a quote approved automatically


def _lines_json(lines: tuple[QuoteLine, ...]) -> list[dict[str, str]]:
    return [
        {"product": line.product, "quantity": str(line.quantity), "unit_price": str(line.unit_price),
         "discount": str(line.discount), "net": str(line.net)}
        for line in lines
    ]


def _figures(lines: tuple[QuoteLine, ...], discount: Decimal) -> dict[str, Any]:
    figures: Totals = totals(lines, discount)
    return {
        "lines": json.dumps(_lines_json(lines)), "discount": discount, "list_total": figures.list_total,
        "subtotal": figures.subtotal, "total": figures.total, "effective_discount": figures.effective_discount,
    }


def quote_data(row: asyncpg.Record) -> dict[str, Any]:
    """What every quote event carries: the quote as it now is (amounts and percentages as decimal strings)."""
    return {
        "quote_id": row["id"],
        "opportunity_id": row["opportunity_id"],
        "account_id": row["account_id"],
        "owner_id": row["owner_id"],
        "status": row["status"],
        "currency": row["currency"],
        "lines": json.loads(row["lines"]),
        "discount": str(row["discount"]),
        "list_total": str(row["list_total"]),
        "subtotal": str(row["subtotal"]),
        "total": str(row["total"]),
        "effective_discount": str(row["effective_discount"]),
        "valid_until": None if row["valid_until"] is None else row["valid_until"].isoformat(),
    }


def _publish(tx: Transaction, type_: str, row: asyncpg.Record, sequence: int, **extra: Any) -> None:
    """sales.quote.<type_>.v1 with the quote's data and `extra` (which may say the status it had then)."""
    tx.publish(f"sales.quote.{type_}.v1", row["id"], quote_data(row) | extra, sequence=sequence)


async def _open_opportunity(tx: Transaction, actor: Actor, opportunity_id: str) -> asyncpg.Record:
    row = await opportunity_store.opportunity(tx.conn, opportunity_id)
    if row is None:
        raise NotFound(f"no opportunity {opportunity_id}")
    actor.check_changes(row, f"opportunity {opportunity_id}")
    opportunity_store.to_domain(row).may_quote()
    return row


async def create_quote(
    db: Database, actor: Actor, opportunity_id: str, *, lines: tuple[QuoteLine, ...], discount: Decimal,
    currency: str | None, valid_until: date | None, note: str | None,
) -> asyncpg.Record:
    """Draw up a draft quote for an open opportunity in the caller's scope (sales.quote.created.v1)."""
    async with db.transaction() as tx:
        opportunity = await _open_opportunity(tx, actor, opportunity_id)
        now = _now()
        row = await store.insert_quote(
            tx.conn, id=_new_id("quo"), opportunity_id=opportunity_id, account_id=opportunity["account_id"],
            owner_id=opportunity["owner_id"], currency=currency or opportunity["currency"], **_figures(lines, discount),
            valid_until=valid_until, note=note, status=str(QuoteStatus.DRAFT), created_by=actor.user_id,
            created_at=now, updated_at=now,
        )
        _publish(tx, "created", row, row["version"], created_by=actor.user_id, created_at=_ts(now))
        return row


async def _load(tx: Transaction, actor: Actor, quote_id: str, expected_version: int | None) -> asyncpg.Record:
    row = await store.quote(tx.conn, quote_id)
    if row is None:
        raise NotFound(f"no quote {quote_id}")
    await actor.check_part_changes(tx.conn, row, f"quote {quote_id}")
    check_version(f"quote {quote_id}", row["version"], expected_version)
    return row


async def _save(tx: Transaction, row: asyncpg.Record, events: int, **fields: Any) -> asyncpg.Record:
    saved = await store.save_quote(tx.conn, row["id"], row["version"], events, **fields)
    if saved is None:
        raise changed_meanwhile(f"quote {row['id']}")
    return saved


async def revise_quote(
    db: Database, actor: Actor, quote_id: str, expected_version: int | None, *, lines: tuple[QuoteLine, ...],
    discount: Decimal, currency: str | None, valid_until: date | None, note: str | None,
) -> asyncpg.Record:
    """New lines and discount for a draft or rejected quote; it is a draft again (sales.quote.revised.v1)."""
    async with db.transaction() as tx:
        row = await _load(tx, actor, quote_id, expected_version)
        may_revise(quote_id, row["status"])
        await _open_opportunity(tx, actor, row["opportunity_id"])
        saved = await _save(
            tx, row, 1, **_figures(lines, discount), currency=currency or row["currency"], valid_until=valid_until,
            note=note, status=str(QuoteStatus.DRAFT), approval_required=None, approval_threshold=None,
            approver_id=None, submitted_by=None, submitted_at=None, decided_by=None, decided_at=None,
            decision_reason=None,
        )
        _publish(tx, "revised", saved, saved["version"], revised_by=actor.user_id, revised_at=_ts(_now()))
        return saved


async def submit_quote(
    db: Database, actor: Actor, org: Organisation, quote_id: str, expected_version: int | None, threshold: Decimal
) -> asyncpg.Record:
    """Submit a draft: past the discount threshold it waits for a manager (sales.quote.submitted.v1 with
    approval_required and approver_id, the notification's cue); otherwise it is approved at once
    (submitted, then sales.quote.approved.v1 with automatic true, in the same transaction)."""
    async with db.transaction() as tx:
        row = await _load(tx, actor, quote_id, expected_version)
        may_submit(quote_id, row["status"])
        await _open_opportunity(tx, actor, row["opportunity_id"])
        figures = Totals(row["list_total"], row["subtotal"], row["total"], row["effective_discount"])
        required = approval_required(figures, threshold)
        now = _now()
        approver = (
            approver_for(org.manager_of(row["owner_id"]), org.manager_of(actor.user_id), actor.user_id)
            if required else None
        )
        submitted = {"submitted_by": actor.user_id, "submitted_at": now, "approval_required": required,
                     "approval_threshold": threshold, "approver_id": approver}
        if required:
            saved = await _save(tx, row, 1, status=str(QuoteStatus.PENDING_APPROVAL), **submitted)
        else:
            saved = await _save(tx, row, 2, status=str(QuoteStatus.APPROVED), **submitted, decided_by=SYSTEM,
                                decided_at=now)
        _publish(
            tx, "submitted", saved, row["version"] + 1, status=str(QuoteStatus.PENDING_APPROVAL if required
                                                                   else QuoteStatus.APPROVED),
            submitted_by=actor.user_id, submitted_at=_ts(now), approval_required=required,
            approval_threshold=str(threshold), approver_id=approver,
        )
        if not required:
            _publish(tx, "approved", saved, saved["version"], approved_by=SYSTEM, approved_at=_ts(now),
                     automatic=True, reason=f"discount {saved['effective_discount']} % is within the threshold of "
                     f"{threshold} %")
        return saved


async def decide_quote(
    db: Database, actor: Actor, quote_id: str, expected_version: int | None, *, approve: bool, reason: str | None
) -> asyncpg.Record:
    """A manager (of the owner's team), director or admin approves or rejects a pending quote; a rejection
    needs a reason. Whoever submitted the quote does not decide it."""
    why = reason.strip() if reason and reason.strip() else None
    if not approve and why is None:
        raise Unprocessable("rejecting a quote needs a reason")
    async with db.transaction() as tx:
        row = await _load(tx, actor, quote_id, expected_version)
        may_decide(quote_id, row["status"], decided_by=actor.user_id, submitted_by=row["submitted_by"])
        now = _now()
        status = QuoteStatus.APPROVED if approve else QuoteStatus.REJECTED
        saved = await _save(tx, row, 1, status=str(status), decided_by=actor.user_id, decided_at=now,
                            decision_reason=why)
        if approve:
            _publish(tx, "approved", saved, saved["version"], approved_by=actor.user_id, approved_at=_ts(now),
                     automatic=False, reason=why)
        else:
            _publish(tx, "rejected", saved, saved["version"], rejected_by=actor.user_id, rejected_at=_ts(now),
                     reason=why)
        return saved


async def get_quote(db: Database, actor: Actor, quote_id: str) -> asyncpg.Record:
    async with db.statements() as conn:
        row = await store.quote(conn, quote_id)
        if row is None:
            raise NotFound(f"no quote {quote_id}")
        await actor.check_part_reads(conn, row, f"quote {quote_id}")
        return row

