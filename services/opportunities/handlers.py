"""One function per command or consumed event: load, apply the domain, save and publish in one transaction."""

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.opportunities import store
from services.opportunities.contacts import handlers as contacts
from services.opportunities.domain import (
    DEFAULT_PIPELINE_ID,
    Assessment,
    CloseSummary,
    ContractStatus,
    Money,
    Opportunity,
    OpportunityEdit,
    Outcome,
    OwnerSplit,
    Pipeline,
    StageChange,
    Status,
    check_credit,
    contract_transition,
    normalise_name,
    parse_money,
    required_reason,
)
from services.opportunities.handling import Actor, _new_id, _now, _ts, changed_meanwhile, check_version
from shared.db import Database, Transaction
from shared.errors import DomainError, NotFound, Unprocessable
from shared.events.envelope import CloudEvent


def _day(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


# --- accounts -----------------------------------------------------------------------------


def _account_data(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "account_id": row["id"],
        "name": row["name"],
        "region": row["region"],
        "owner_id": row["owner_id"],
        "parent_account_id": row["parent_account_id"],
        "key_account": row["key_account"],
        "value_tier": row["value_tier"],
        "lead_id": row["lead_id"],
        "created_by": row["created_by"],
        "created_at": _ts(row["created_at"]),
    }


async def _new_account(
    tx: Transaction, *, name: str, region: str | None, owner_id: str | None, created_by: str,
    lead_id: str | None = None, parent_account_id: str | None = None, key_account: bool = False,
    credit_limit: Money | None = None,
) -> asyncpg.Record | None:
    """Insert and announce an account; None when its normalised name is taken."""
    if not name.strip() or not normalise_name(name):
        raise Unprocessable("an account needs a name")
    if parent_account_id is not None and await store.account(tx.conn, parent_account_id) is None:
        raise Unprocessable(f"parent account {parent_account_id} does not exist")
    row = await store.insert_account(
        tx.conn,
        id=_new_id("acc"), name=name.strip(), normalised_name=normalise_name(name), region=region,
        owner_id=owner_id, parent_account_id=parent_account_id, key_account=key_account,
        credit_limit=credit_limit.amount if credit_limit else None,
        credit_currency=credit_limit.currency if credit_limit else "CNY",
        lead_id=lead_id, created_by=created_by, created_at=_now(),
    )
    if row is not None:
        tx.publish("sales.account.created.v1", row["id"], _account_data(row), sequence=row["version"])
    return row


async def _account_named(tx: Transaction, name: str, **new: Any) -> asyncpg.Record:
    """The account with this normalised name, created (and announced) when there is none."""
    existing = await store.account_by_normalised_name(tx.conn, normalise_name(name))
    if existing is not None:
        return existing
    created = await _new_account(tx, name=name, **new)
    if created is None:  # created concurrently between the look-up and the insert
        created = await store.account_by_normalised_name(tx.conn, normalise_name(name))
    assert created is not None
    return created


async def create_account(
    db: Database, actor: Actor, *, name: str, region: str | None, owner_id: str | None,
    parent_account_id: str | None, key_account: bool, credit_limit: Money | None,
) -> asyncpg.Record:
    if owner_id is not None:
        actor.check(owner_id, "the account's owner")
    async with db.transaction() as tx:
        row = await _new_account(
            tx, name=name, region=region, owner_id=owner_id, created_by=actor.user_id,
            parent_account_id=parent_account_id, key_account=key_account, credit_limit=credit_limit,
        )
        if row is None:
            existing = await store.account_by_normalised_name(tx.conn, normalise_name(name))
            assert existing is not None
            raise DomainError(f"an account named like {name!r} exists already: {existing['id']} ({existing['name']})")
        return row


_ACCOUNT_FIELDS = ("name", "region", "owner_id", "parent_account_id", "key_account", "credit_limit", "credit_currency")


async def update_account(
    db: Database, actor: Actor, account_id: str, changes: dict[str, Any], expected_version: int | None
) -> asyncpg.Record:
    """Change some of an account's details; publishes sales.account.updated.v1 with the changed fields."""
    async with db.transaction() as tx:
        row = await store.account(tx.conn, account_id)
        if row is None:
            raise NotFound(f"no account {account_id}")
        if row["owner_id"] is not None:
            actor.check(row["owner_id"], f"account {account_id}")
        if changes.get("owner_id") is not None:
            actor.check(changes["owner_id"], "the account's new owner")
        check_version(f"account {account_id}", row["version"], expected_version)
        columns = {k: v for k, v in changes.items() if k in _ACCOUNT_FIELDS and row[k] != v}
        if "name" in columns:
            if not normalise_name(columns["name"]):
                raise Unprocessable("an account needs a name")
            taken = await store.account_by_normalised_name(tx.conn, normalise_name(columns["name"]))
            if taken is not None and taken["id"] != account_id:
                raise DomainError(f"an account named like {columns['name']!r} exists already: {taken['id']}")
            columns["normalised_name"] = normalise_name(columns["name"])
        parent = columns.get("parent_account_id")
        if parent is not None:
            if await store.account(tx.conn, parent) is None:
                raise Unprocessable(f"parent account {parent} does not exist")
            if account_id in await store.ancestors(tx.conn, parent):
                raise Unprocessable(f"account {parent} is {account_id} or one of its subsidiaries: no cycles")
        if not columns:
            return row
        saved = await store.update_account(tx.conn, account_id, row["version"], **columns)
        if saved is None:
            raise changed_meanwhile(f"account {account_id}")
        data = _account_data(saved)
        del data["created_by"], data["created_at"]
        data |= {"changed_fields": sorted(c for c in columns if c != "normalised_name"), "updated_by": actor.user_id,
                 "updated_at": _ts(_now())}
        tx.publish("sales.account.updated.v1", account_id, data, sequence=saved["version"])
        return saved


async def get_account(db: Database, account_id: str) -> asyncpg.Record:
    async with db.statements() as conn:
        row = await store.account(conn, account_id)
    if row is None:
        raise NotFound(f"no account {account_id}")
    return row


async def list_accounts(
    db: Database, *, name: str | None, after: tuple[datetime, str] | None, limit: int
) -> list[asyncpg.Record]:
    async with db.statements() as conn:
        return await store.list_accounts(conn, name=name, after=after, limit=limit)


# --- pipelines ------------------------------------------------------------------------------


async def list_pipelines(db: Database) -> list[asyncpg.Record]:
    async with db.statements() as conn:
        return await store.pipelines(conn)


async def get_pipeline(db: Database, pipeline_id: str) -> asyncpg.Record:
    async with db.statements() as conn:
        row = await store.pipeline(conn, pipeline_id)
    if row is None:
        raise NotFound(f"no pipeline {pipeline_id}")
    return row


async def create_pipeline(db: Database, admin_id: str, pipeline: Pipeline) -> asyncpg.Record:
    async with db.transaction() as tx:
        row = await store.insert_pipeline(tx.conn, pipeline, admin_id)
    if row is None:
        raise DomainError(f"a pipeline {pipeline.id} exists already; PUT /v1/pipelines/{pipeline.id} changes it")
    return row


async def update_pipeline(
    db: Database, admin_id: str, changed: Pipeline, expected_version: int | None
) -> asyncpg.Record:
    """Replace a pipeline's names, stages and skipping rule. A stage that open or suspended deals are in
    cannot be removed or renamed (409 with their number); a changed probability is given at once to the
    open and suspended deals in that stage, each announcing it (`sales.opportunity.repriced.v1`, in the
    same transaction): the services that weigh deals by their probability learn it now, not from each
    deal's next event."""
    async with db.transaction() as tx:
        await store.lock_for_pipeline_change(tx.conn)
        row = await store.pipeline(tx.conn, changed.id, for_update=True)
        if row is None:
            raise NotFound(f"no pipeline {changed.id}")
        check_version(f"pipeline {changed.id}", row["version"], expected_version)
        current = store.to_pipeline(row)
        if replace(changed, version=current.version) == current:
            return row
        removed = current.removed_keys(changed)
        if removed:
            current.check_removal(await store.active_deals_in(tx.conn, changed.id, removed))
        saved = await store.update_pipeline(tx.conn, changed, row["version"], admin_id)
        assert saved is not None  # the row is locked (FOR UPDATE) and at the version just read
        repriced = current.changed_probabilities(changed)
        if repriced:
            changed_at = _ts(_now())
            for deal in await store.reprice(tx.conn, changed.id, repriced):
                tx.publish("sales.opportunity.repriced.v1", deal["id"],
                           _repriced_data(deal, changed.id, admin_id, changed_at), sequence=deal["version"])
        return saved


def _repriced_data(deal: asyncpg.Record, pipeline_id: str, admin_id: str, changed_at: str) -> dict[str, Any]:
    return {
        "opportunity_id": deal["id"],
        "pipeline_id": pipeline_id,
        "stage": deal["stage"],
        "status": deal["status"],
        "probability": deal["probability"],
        "previous_probability": deal["previous_probability"],
        "owner_id": deal["owner_id"],
        "account_id": deal["account_id"],
        "amount": str(deal["amount"]),
        "currency": deal["currency"],
        "product": deal["product"],
        "changed_by": admin_id,
        "changed_at": changed_at,
    }


# --- opportunities ------------------------------------------------------------------------


def _created_data(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "opportunity_id": row["id"],
        "name": row["name"],
        "account_id": row["account_id"],
        "contact_id": row["contact_id"],
        "stage": row["stage"],
        "status": row["status"],
        "probability": row["probability"],
        "amount": str(row["amount"]),
        "currency": row["currency"],
        "owner_id": row["owner_id"],
        "expected_close_date": _day(row["expected_close_date"]),
        "region": row["region"],
        "lead_id": row["lead_id"],
        "campaign_id": row["campaign_id"],
        "product": row["product"],
        "pipeline_id": row["pipeline_id"],
        "created_by": row["created_by"],
        "created_at": _ts(row["created_at"]),
    }


async def _pipeline_to_open_in(tx: Transaction, pipeline_id: str | None) -> Pipeline:
    """The pipeline a new opportunity opens in (None: the default one); 422 for an unknown id, 409 for a
    retired one."""
    row = await store.pipeline_for_new_opportunity(tx.conn, pipeline_id or DEFAULT_PIPELINE_ID)
    if row is None:
        raise Unprocessable(f"pipeline_id: there is no pipeline {pipeline_id}; GET /v1/pipelines lists them")
    pipeline = store.to_pipeline(row)
    pipeline.check_entry()
    return pipeline


async def _open_opportunity(
    tx: Transaction, *, name: str, account_id: str, owner_id: str, money: Money, expected_close_date: date | None,
    region: str | None, created_by: str, campaign_id: str | None = None, lead_id: str | None = None,
    contact_id: str | None = None, product: str | None = None, pipeline: Pipeline,
) -> asyncpg.Record | None:
    """Open an opportunity in the first stage of `pipeline` (read with `_pipeline_to_open_in`)."""
    if not name.strip():
        raise Unprocessable("an opportunity needs a name")
    now = _now()
    first = pipeline.first_stage
    row = await store.insert_opportunity(
        tx.conn,
        id=_new_id("opp"), name=name.strip(), account_id=account_id, contact_id=contact_id, owner_id=owner_id,
        region=region, pipeline_id=pipeline.id, stage=first.key, status=str(Status.OPEN),
        probability=first.probability, amount=money.amount, currency=money.currency,
        expected_close_date=expected_close_date, stage_entered_at=now, lead_id=lead_id, campaign_id=campaign_id,
        product=product, created_by=created_by, created_at=now, updated_at=now,
    )
    if row is not None:
        tx.publish("sales.opportunity.created.v1", row["id"], _created_data(row), sequence=row["version"])
    return row


async def create_opportunity(
    db: Database, actor: Actor, *, name: str, account_id: str | None, account_name: str | None, money: Money,
    owner_id: str, expected_close_date: date | None, region: str | None, campaign_id: str | None,
    product: str | None = None, pipeline_id: str | None = None, contact_id: str | None = None,
) -> asyncpg.Record:
    actor.check(owner_id, "the new opportunity's owner")
    if (account_id is None) == (account_name is None or not account_name.strip()):
        raise Unprocessable("give either account_id or account_name")
    async with db.transaction() as tx:
        pipeline = await _pipeline_to_open_in(tx, pipeline_id)
        if account_id is not None:
            account = await store.account(tx.conn, account_id)
            if account is None:
                raise Unprocessable(f"account {account_id} does not exist")
        else:
            assert account_name is not None
            account = await _account_named(
                tx, account_name, region=region, owner_id=owner_id, created_by=actor.user_id
            )
        if contact_id is not None:
            await contacts.check_contact_of(tx, contact_id, account["id"])
        row = await _open_opportunity(
            tx, name=name, account_id=account["id"], owner_id=owner_id, money=money,
            expected_close_date=expected_close_date, region=region or account["region"], created_by=actor.user_id,
            campaign_id=campaign_id, product=product, pipeline=pipeline, contact_id=contact_id,
        )
        assert row is not None  # no lead_id, so no conflict
        return row


async def get_opportunity(db: Database, actor: Actor, opportunity_id: str) -> tuple[asyncpg.Record, list[Any]]:
    async with db.statements() as conn:
        row = await store.opportunity(conn, opportunity_id)
        if row is None:
            raise NotFound(f"no opportunity {opportunity_id}")
        actor.check_reads(store.holders_of(row), f"opportunity {opportunity_id}")
        return row, await store.stage_history(conn, opportunity_id)


async def list_opportunities(
    db: Database, actor: Actor, where: store.OpportunityFilter, *, after: tuple[datetime, str] | None, limit: int
) -> list[asyncpg.Record]:
    """The deals matching `where` that the caller may read: owned, or with a split held, by someone in scope."""
    async with db.statements() as conn:
        return await store.list_opportunities(conn, replace(where, visible_to=actor.owners), after=after, limit=limit)


# A change of one opportunity: the changed opportunity, the stage move (if any), extra columns, event;
# None when the request changes nothing (no update, no event).
Change = tuple[Opportunity, StageChange | None, dict[str, Any], str, dict[str, Any]] | None


async def _change(
    db: Database, actor: Actor, opportunity_id: str, expected_version: int | None,
    apply: Callable[[Opportunity, datetime], Change], splits: tuple[OwnerSplit, ...] | None = None,
) -> asyncpg.Record:
    """Load, check scope and version, apply the domain, then save and publish in one statement.

    That statement is its own transaction: it changes the row only if the version is still the one
    loaded (else 412), and writes the stage_history row and the event (outbox) only if it did. The load
    needs no transaction around it: the versioned update is what keeps a concurrent change from being
    lost, as it was when both ran in one transaction (read committed: the load took no lock there either).
    Two round trips (load, statement) instead of five plus the pool's reset. The load, and the save of a
    plain stage move (the pipeline's busiest change), are group-committed with those of concurrent
    requests (`Database.batched`).
    """
    row = await db.batched(store.opportunities_by_id, opportunity_id)
    if row is None:
        raise NotFound(f"no opportunity {opportunity_id}")
    actor.check_changes(row, f"opportunity {opportunity_id}")
    check_version(f"opportunity {opportunity_id}", row["version"], expected_version)
    now = _now()
    change = apply(store.to_domain(row), now)
    if change is None:
        return row
    changed, move, extra, event_type, event_data = change
    version = row["version"] + 1  # what the update makes it
    event = db.event(event_type, opportunity_id, _common(changed) | event_data, sequence=version)
    recorded = None if move is None else store.RecordedMove(move, actor.user_id, now)
    if recorded is not None and splits is None and not extra:
        saved = await db.batched(
            store.save_stage_moves, store.StageMoveSave(changed, row["version"], recorded, [event])
        )
    else:
        async with db.statements() as conn:
            saved = await store.save_opportunity(
                conn, changed, expected_version=row["version"], move=recorded, splits=splits, events=[event],
                **extra,
            )
    if saved is None:
        raise changed_meanwhile(f"opportunity {opportunity_id}" + (" or its pipeline" if move else ""))
    return saved


def _common(changed: Opportunity) -> dict[str, Any]:
    """What every event of a changed opportunity carries, from the change (known before it is saved: the
    event is written by the same statement)."""
    return {
        "opportunity_id": changed.id,
        "owner_id": changed.owner_id,
        "account_id": changed.account_id,
        "stage": changed.stage,
        "amount": str(changed.money.amount),
        "currency": changed.money.currency,
        "product": changed.product,
    }


def _stage_moved(
    current: Opportunity, moved: Opportunity, move: StageChange, actor: Actor, now: datetime
) -> Change:
    """A stage move with its `stage_changed` event; a move into another pipeline names the one it left."""
    data = {
        "pipeline_id": moved.pipeline.id,
        "from_stage": move.from_stage, "to_stage": move.to_stage, "probability": moved.probability,
        "expected_close_date": _day(moved.expected_close_date), "changed_by": actor.user_id,
        "changed_at": _ts(now), "seconds_in_previous_stage": move.seconds_in_previous_stage,
    }
    if moved.pipeline.id != current.pipeline.id:
        data["from_pipeline_id"] = current.pipeline.id
    return moved, move, {}, "sales.opportunity.stage_changed.v1", data


async def change_stage(
    db: Database, actor: Actor, opportunity_id: str, stage: str, expected_version: int | None
) -> asyncpg.Record:
    def apply(current: Opportunity, now: datetime) -> Change:
        return _stage_moved(current, *current.move_to(stage, now), actor, now)

    return await _change(db, actor, opportunity_id, expected_version, apply)


async def move_to_pipeline(
    db: Database, actor: Actor, opportunity_id: str, pipeline_id: str, stage: str | None,
    expected_version: int | None,
) -> asyncpg.Record:
    """Into an open stage of another pipeline: a stage change (history, `stage_changed` naming both
    pipelines), checked against the target pipeline's version in its update (412 if an admin changed it)."""
    async with db.statements() as conn:
        row = await store.pipeline(conn, pipeline_id)
    if row is None:
        raise Unprocessable(f"pipeline_id: there is no pipeline {pipeline_id}; GET /v1/pipelines lists them")
    target = store.to_pipeline(row)

    def apply(current: Opportunity, now: datetime) -> Change:
        return _stage_moved(current, *current.move_to_pipeline(target, stage, now), actor, now)

    return await _change(db, actor, opportunity_id, expected_version, apply)


async def close(
    db: Database, actor: Actor, opportunity_id: str, summary: CloseSummary, expected_version: int | None
) -> asyncpg.Record:
    def apply(current: Opportunity, now: datetime) -> Change:
        closed, move = current.close(summary, now)
        extra = {"close_reason": summary.reason, "competitor": summary.competitor, "closed_at": now}
        data: dict[str, Any] = {
            "stage": move.from_stage,  # the stage it was in when closed
            "reason": summary.reason, "closed_by": actor.user_id, "closed_at": _ts(now),
        }
        if summary.outcome is Outcome.LOST:
            data["competitor"] = summary.competitor
        type_ = "sales.opportunity.won.v1" if summary.outcome is Outcome.WON else "sales.opportunity.lost.v1"
        return closed, move, extra, type_, data

    return await _change(db, actor, opportunity_id, expected_version, apply)


def _event_value(value: Any) -> Any:
    """An edited field's value as events carry it: amounts as decimal strings, days as ISO dates."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    return value


async def edit(
    db: Database, actor: Actor, opportunity_id: str, changes: OpportunityEdit, expected_version: int | None
) -> asyncpg.Record:
    """Change an open or suspended opportunity's name, amount, currency, expected close date or product
    without moving its stage; publishes sales.opportunity.updated.v1 with the fields that changed. A
    request that changes nothing changes nothing (no new version, no event)."""

    def apply(current: Opportunity, now: datetime) -> Change:
        edited, changed = current.edit(changes)
        if not changed:
            return None
        previous = {f: _event_value(v) for f, v in current.editable_values().items() if f in changed}
        data = {
            "name": edited.name, "expected_close_date": _day(edited.expected_close_date),
            "probability": edited.probability, "changed_fields": sorted(changed),
            "changes": {f: _event_value(v) for f, v in changed.items()}, "previous": previous,
            "changed_by": actor.user_id, "changed_at": _ts(now),
        }
        return edited, None, changed, "sales.opportunity.updated.v1", data

    return await _change(db, actor, opportunity_id, expected_version, apply)


async def assess(
    db: Database, actor: Actor, opportunity_id: str, assessment: Assessment, expected_version: int | None
) -> asyncpg.Record:
    """Record the maturity assessment (成熟度评估) of an open opportunity; scoring reads the event."""

    def apply(current: Opportunity, now: datetime) -> Change:
        extra = {"assessment": json.dumps(assessment.factors), "maturity": assessment.maturity}
        data = {"assessment": assessment.factors, "maturity": assessment.maturity, "assessed_by": actor.user_id,
                "assessed_at": _ts(now)}
        return current.assess(assessment), None, extra, "sales.opportunity.assessed.v1", data

    return await _change(db, actor, opportunity_id, expected_version, apply)


async def change_owners(
    db: Database, actor: Actor, opportunity_id: str, owners: tuple[OwnerSplit, ...], expected_version: int | None
) -> asyncpg.Record:
    """New owners with their splits (a transfer is one new owner at 100 %); the first is the primary."""
    for owner in owners:
        actor.check(owner.owner_id, f"new owner {owner.owner_id}")
    listed = [{"owner_id": o.owner_id, "split": o.split} for o in owners]

    def apply(current: Opportunity, now: datetime) -> Change:
        changed = current.change_owners(owners)
        extra = {"owner_id": changed.owner_id, "owners": json.dumps(listed)}
        data = {"previous_owner_id": current.owner_id, "owners": listed, "changed_by": actor.user_id,
                "changed_at": _ts(now)}
        return changed, None, extra, "sales.opportunity.owners_changed.v1", data

    return await _change(db, actor, opportunity_id, expected_version, apply, splits=owners)


_STATUS_EVENTS = {
    "suspend": "sales.opportunity.suspended.v1",
    "reactivate": "sales.opportunity.reactivated.v1",
    "terminate": "sales.opportunity.terminated.v1",
    "archive": "sales.opportunity.archived.v1",
}


async def set_status(
    db: Database, actor: Actor, opportunity_id: str, action: str, reason: str | None, expected_version: int | None
) -> asyncpg.Record:
    """suspend (中止), reactivate, terminate (终止), archive; suspending and terminating need a reason."""

    def apply(current: Opportunity, now: datetime) -> Change:
        why: str | None
        if action == "archive":
            changed, why = current.archive(), (reason.strip() if reason and reason.strip() else None)
            data = {"outcome": current.status.value, "by": actor.user_id, "reason": why, "at": _ts(now)}
            return changed, None, {"status_reason": why}, _STATUS_EVENTS[action], data
        if action == "suspend":
            changed, why = current.suspend(), required_reason(reason, "suspending")
        elif action == "terminate":
            changed, why = current.terminate(), required_reason(reason, "terminating")
        else:
            changed, why = current.reactivate(), (reason.strip() if reason and reason.strip() else None)
        data = {"by": actor.user_id, "reason": why, "at": _ts(now)}
        return changed, None, {"status_reason": why}, _STATUS_EVENTS[action], data

    return await _change(db, actor, opportunity_id, expected_version, apply)


# --- contracts ----------------------------------------------------------------------------


async def create_contract(
    db: Database, actor: Actor, *, opportunity_id: str, money: Money | None
) -> asyncpg.Record:
    """Draw up a draft contract (version 1), announced by sales.contract.created.v1 from the same transaction:
    subscribers (ERP, finance) learn of a draft before it is signed."""
    async with db.transaction() as tx:
        row = await store.opportunity(tx.conn, opportunity_id)
        if row is None:
            raise Unprocessable(f"opportunity {opportunity_id} does not exist")
        actor.check_changes(row, f"opportunity {opportunity_id}")
        store.to_domain(row).may_take_contract()
        money = money or Money(row["amount"], row["currency"])
        created = await store.insert_contract(
            tx.conn,
            id=_new_id("ctr"), opportunity_id=opportunity_id, account_id=row["account_id"], owner_id=row["owner_id"],
            amount=money.amount, currency=money.currency, status=str(ContractStatus.DRAFT),
            campaign_id=row["campaign_id"], created_by=actor.user_id, version=1,
        )
        tx.publish(
            "sales.contract.created.v1",
            created["id"],
            {
                "contract_id": created["id"], "opportunity_id": opportunity_id, "account_id": created["account_id"],
                "amount": str(created["amount"]), "currency": created["currency"], "owner_id": created["owner_id"],
                "campaign_id": created["campaign_id"], "status": created["status"],
                "created_by": actor.user_id, "created_at": _ts(created["created_at"]),
            },
            sequence=created["version"],
        )
        return created


async def get_contract(db: Database, actor: Actor, contract_id: str) -> asyncpg.Record:
    async with db.statements() as conn:
        row = await store.contract(conn, contract_id)
        if row is None:
            raise NotFound(f"no contract {contract_id}")
        await actor.check_part_reads(conn, row, f"contract {contract_id}")
        return row


async def sign_contract(db: Database, actor: Actor, contract_id: str) -> asyncpg.Record:
    async with db.transaction() as tx:
        row = await store.contract(tx.conn, contract_id, for_update=True)
        if row is None:
            raise NotFound(f"no contract {contract_id}")
        await actor.check_part_changes(tx.conn, row, f"contract {contract_id}")
        if row["status"] == ContractStatus.SIGNED:
            raise DomainError(f"contract {contract_id} is signed already")
        contract_transition(contract_id, row["status"], "sign")
        # The account's row lock serialises signatures against one credit limit.
        account = await store.account(tx.conn, row["account_id"], for_update=True)
        assert account is not None
        limit = None if account["credit_limit"] is None else Money(account["credit_limit"], account["credit_currency"])
        amount = Money(row["amount"], row["currency"])
        signed_total: Decimal = await store.signed_total(tx.conn, account["id"], row["currency"])
        check_credit(account_id=account["id"], credit_limit=limit, signed_total=signed_total, contract=amount)
        now = _now()
        signed = await store.mark_signed(tx.conn, contract_id, actor.user_id, now)
        tx.publish(
            "sales.contract.signed.v1",
            contract_id,
            {
                "contract_id": contract_id, "opportunity_id": signed["opportunity_id"],
                "account_id": signed["account_id"], "amount": str(signed["amount"]), "currency": signed["currency"],
                "owner_id": signed["owner_id"], "campaign_id": signed["campaign_id"], "signed_by": actor.user_id,
                "signed_at": _ts(now), "starts_on": None, "ends_on": None,
            },
            sequence=signed["version"],
        )
        return signed


async def end_contract(
    db: Database, actor: Actor, contract_id: str, action: str, reason: str | None
) -> asyncpg.Record:
    """execute a signed contract, or terminate a draft or signed one (with a reason)."""
    async with db.transaction() as tx:
        row = await store.contract(tx.conn, contract_id, for_update=True)
        if row is None:
            raise NotFound(f"no contract {contract_id}")
        await actor.check_part_changes(tx.conn, row, f"contract {contract_id}")
        status = contract_transition(contract_id, row["status"], action)
        now = _now()
        data: dict[str, Any] = {
            "contract_id": contract_id, "opportunity_id": row["opportunity_id"], "account_id": row["account_id"],
            "amount": str(row["amount"]), "currency": row["currency"], "owner_id": row["owner_id"],
            "campaign_id": row["campaign_id"],
        }
        if action == "execute":
            saved = await store.set_contract_status(tx.conn, contract_id, str(status), executed_at=now)
            data |= {"executed_by": actor.user_id, "executed_at": _ts(now)}
        else:
            why = required_reason(reason, "terminating a contract")
            saved = await store.set_contract_status(
                tx.conn, contract_id, str(status), terminated_at=now, termination_reason=why
            )
            data |= {"reason": why, "was_signed": row["status"] == ContractStatus.SIGNED,
                     "terminated_by": actor.user_id, "terminated_at": _ts(now)}
        tx.publish(f"sales.contract.{action}d.v1", contract_id, data, sequence=saved["version"])
        return saved


# --- consumed events ----------------------------------------------------------------------


async def lead_converted(tx: Transaction, event: CloudEvent) -> None:
    """sales.lead.converted.v1: the account (created, or linked by id or normalised name), contact, opportunity.

    The inbox applies each event once; the unique lead_id on opportunities and contacts also
    keeps a second event for the same lead (a re-conversion, a replay) from opening a second one.
    """
    data = event.data
    lead_id = data["lead_id"]
    if await tx.conn.fetchval("SELECT 1 FROM opportunities WHERE lead_id = $1", lead_id):
        return
    account = await store.account(tx.conn, data["account_id"]) if data.get("account_id") else None
    if account is None:
        account = await _account_named(
            tx, data["account_name"], region=data.get("region"), owner_id=data["owner_id"],
            created_by=data["converted_by"], lead_id=lead_id,
        )
    contact_id = await contacts.contact_of_converted_lead(
        tx, account["id"], data["contact"], lead_id, data["converted_by"]
    )
    offered = data["opportunity"]
    pipeline = await _pipeline_to_open_in(tx, None)  # a converted lead opens in the default pipeline
    await _open_opportunity(
        tx, name=offered["name"], account_id=account["id"], owner_id=data["owner_id"],
        money=parse_money(offered.get("amount"), offered.get("currency")),
        expected_close_date=date.fromisoformat(offered["expected_close_date"])
        if offered.get("expected_close_date") else None,
        region=data.get("region"), created_by=data["converted_by"], campaign_id=data.get("campaign_id"),
        lead_id=lead_id, contact_id=contact_id, pipeline=pipeline,
    )


async def account_tiered(tx: Transaction, event: CloudEvent) -> None:
    """sales.account.tiered.v1 (scoring): show the account's value tier and buyer type. Not an edit of the
    account: its version and events stay as they are; an account this service does not have is skipped."""
    data = event.data
    await store.set_account_tier(tx.conn, data["account_id"], data.get("value_tier"), data.get("buyer_type"))
