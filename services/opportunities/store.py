"""asyncpg queries for the opportunities service's tables (migrations/ beside this file)."""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.opportunities.domain import (
    Money,
    Opportunity,
    OwnerSplit,
    Pipeline,
    Stage,
    StageChange,
    Status,
)
from shared.db import outbox_insert
from shared.events.envelope import CloudEvent

Row = asyncpg.Record
Conn = asyncpg.Connection | PoolConnectionProxy


# --- accounts -----------------------------------------------------------------------------


async def insert_account(conn: Conn, **fields: Any) -> Row | None:
    """The new account, or None when one with the same normalised name exists."""
    columns = ", ".join(fields)
    placeholders = ", ".join(f"${i}" for i in range(1, len(fields) + 1))
    return await conn.fetchrow(
        f"INSERT INTO accounts ({columns}) VALUES ({placeholders})"  # noqa: S608 - column names are ours
        " ON CONFLICT (normalised_name) DO NOTHING RETURNING *",
        *fields.values(),
    )


async def account(conn: Conn, account_id: str, *, for_update: bool = False) -> Row | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT * FROM accounts WHERE id = $1{lock}", account_id)  # noqa: S608


async def account_by_normalised_name(conn: Conn, normalised_name: str) -> Row | None:
    return await conn.fetchrow("SELECT * FROM accounts WHERE normalised_name = $1", normalised_name)


async def set_account_tier(conn: Conn, account_id: str, value_tier: str | None, buyer_type: str | None) -> None:
    """The scoring service's tier of the account; not an edit (the version stays)."""
    await conn.execute("UPDATE accounts SET value_tier = $2, buyer_type = $3 WHERE id = $1",
                       account_id, value_tier, buyer_type)


async def update_account(conn: Conn, account_id: str, expected_version: int, **fields: Any) -> Row | None:
    """Change the account if it is still at `expected_version`; None if someone changed it meanwhile."""
    sets = [f"{column} = ${i}" for i, column in enumerate(fields, start=3)]
    return await conn.fetchrow(
        f"UPDATE accounts SET {', '.join(sets + ['version = version + 1'])}"  # noqa: S608 - column names are ours
        " WHERE id = $1 AND version = $2 RETURNING *",
        account_id, expected_version, *fields.values(),
    )


async def ancestors(conn: Conn, account_id: str) -> list[str]:
    """The account's parent, the parent's parent, ... (ids)."""
    rows = await conn.fetch(
        "WITH RECURSIVE up(id, parent) AS ("
        " SELECT id, parent_account_id FROM accounts WHERE id = $1"
        " UNION SELECT a.id, a.parent_account_id FROM accounts a JOIN up ON a.id = up.parent)"
        " SELECT id FROM up",
        account_id,
    )
    return [r["id"] for r in rows]


async def list_accounts(
    conn: Conn, *, name: str | None, after: tuple[datetime, str] | None, limit: int
) -> list[Row]:
    clauses, args = _keyset(after)
    if name:
        args.append(f"%{name}%")
        clauses.append(f"name ILIKE ${len(args)}")
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    args.append(limit)
    return await conn.fetch(
        f"SELECT * FROM accounts {where} ORDER BY created_at, id LIMIT ${len(args)}",  # noqa: S608
        *args,
    )


# --- pipelines ------------------------------------------------------------------------------


def to_pipeline(values: Mapping[str, Any]) -> Pipeline:
    """A pipelines row (or its JSON) as the domain's pipeline."""
    stages = values["stages"]
    if isinstance(stages, str):  # jsonb from asyncpg; row_to_json nests it already
        stages = json.loads(stages)
    return Pipeline(
        id=values["id"], name_zh=values["name_zh"], name_en=values["name_en"],
        open_stages=tuple(Stage(s["key"], s["label_zh"], s["label_en"], s["probability"]) for s in stages),
        allow_skipping=values["allow_skipping"], version=values["version"], retired=values["retired"],
    )


@lru_cache(maxsize=256)
def _pipeline_read(
    pipeline_id: str, version: int, name_zh: str, name_en: str, stages: str, allow_skipping: bool, retired: bool
) -> Pipeline:
    return to_pipeline({"id": pipeline_id, "version": version, "name_zh": name_zh, "name_en": name_en,
                        "stages": stages, "allow_skipping": allow_skipping, "retired": retired})


def pipeline_of(row: Row) -> Pipeline:
    """The pipeline an opportunity row was read with (its `pipeline_*` columns, `_WITH_PIPELINE`): the same
    values for every deal of one pipeline version, so its stages are parsed once."""
    return _pipeline_read(row["pipeline_id"], row["pipeline_version"], row["pipeline_name_zh"],
                          row["pipeline_name_en"], row["pipeline_stages"], row["pipeline_allow_skipping"],
                          row["pipeline_retired"])


def _stages_json(pipeline: Pipeline) -> str:
    return json.dumps([{"key": s.key, "label_zh": s.label_zh, "label_en": s.label_en, "probability": s.probability}
                       for s in pipeline.open_stages], ensure_ascii=False)


async def pipelines(conn: Conn) -> list[Row]:
    return await conn.fetch("SELECT * FROM pipelines ORDER BY created_at, id")


async def pipeline(conn: Conn, pipeline_id: str, *, for_update: bool = False) -> Row | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT * FROM pipelines WHERE id = $1{lock}", pipeline_id)  # noqa: S608


async def pipeline_for_new_opportunity(conn: Conn, pipeline_id: str) -> Row | None:
    """The pipeline a new opportunity opens in, read once this transaction may write opportunities: a
    pipeline change (which locks the table against writers, `lock_for_pipeline_change`) is then either
    committed and seen here, or waits for this transaction and counts the new deal."""
    await conn.execute("LOCK TABLE opportunities IN ROW EXCLUSIVE MODE")
    return await pipeline(conn, pipeline_id)


async def lock_for_pipeline_change(conn: Conn) -> None:
    """No opportunity is written while a pipeline changes: the deals counted in a removed stage and those
    re-priced are all there are. Stage moves validated against the version before check it in their update
    (`save_opportunity`), new deals read the pipeline after this lock (`pipeline_for_new_opportunity`).
    Self-conflicting, so two pipeline changes do not deadlock on the re-pricing update."""
    await conn.execute("LOCK TABLE opportunities IN SHARE ROW EXCLUSIVE MODE")


async def insert_pipeline(conn: Conn, pipeline: Pipeline, created_by: str) -> Row | None:
    """The new pipeline, or None when its id is taken."""
    return await conn.fetchrow(
        "INSERT INTO pipelines (id, name_zh, name_en, stages, allow_skipping, retired, created_by)"
        " VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7) ON CONFLICT (id) DO NOTHING RETURNING *",
        pipeline.id, pipeline.name_zh, pipeline.name_en, _stages_json(pipeline), pipeline.allow_skipping,
        pipeline.retired, created_by,
    )


async def update_pipeline(conn: Conn, pipeline: Pipeline, expected_version: int, updated_by: str) -> Row | None:
    return await conn.fetchrow(
        "UPDATE pipelines SET name_zh = $3, name_en = $4, stages = $5::jsonb, allow_skipping = $6, retired = $7,"
        " version = version + 1, updated_by = $8, updated_at = now()"
        " WHERE id = $1 AND version = $2 RETURNING *",
        pipeline.id, expected_version, pipeline.name_zh, pipeline.name_en, _stages_json(pipeline),
        pipeline.allow_skipping, pipeline.retired, updated_by,
    )


async def active_deals_in(conn: Conn, pipeline_id: str, stages: Sequence[str]) -> dict[str, int]:
    """How many open or suspended (may be reactivated) opportunities each of these stages holds."""
    rows = await conn.fetch(
        "SELECT stage, count(*) AS deals FROM opportunities"
        " WHERE pipeline_id = $1 AND stage = ANY($2::text[]) AND status IN ('open', 'suspended') GROUP BY stage",
        pipeline_id, list(stages),
    )
    return {r["stage"]: r["deals"] for r in rows}


async def reprice(conn: Conn, pipeline_id: str, probabilities: Mapping[str, int]) -> list[Row]:
    """Give the open and suspended deals of these stages the stage's new probability, each at a new version;
    the deals changed, each with its `previous_probability` (`before`: the row as the update found it)."""
    return await conn.fetch(
        "UPDATE opportunities o SET probability = p.probability, version = o.version + 1, updated_at = now()"
        " FROM unnest($2::text[], $3::int[]) AS p (stage, probability), opportunities before"
        " WHERE o.pipeline_id = $1 AND o.stage = p.stage AND o.status IN ('open', 'suspended')"
        " AND o.probability <> p.probability AND before.id = o.id"
        " RETURNING o.id, o.version, o.status, o.stage, o.probability, before.probability AS previous_probability,"
        " o.owner_id, o.account_id, o.amount, o.currency, o.product",
        pipeline_id, list(probabilities), list(probabilities.values()),
    )


# --- opportunities ------------------------------------------------------------------------

# An opportunity is read with its pipeline `p` (one round trip; see pipeline_of). Columns, not row_to_json(p):
# measured on one connection, the JSON made a read about 50 us slower, the columns cost next to nothing.
_WITH_PIPELINE = ("p.version AS pipeline_version, p.name_zh AS pipeline_name_zh, p.name_en AS pipeline_name_en,"
                  " p.stages AS pipeline_stages, p.allow_skipping AS pipeline_allow_skipping,"
                  " p.retired AS pipeline_retired")


async def insert_opportunity(conn: Conn, **fields: Any) -> Row | None:
    """The new opportunity, or None when one was already opened from the same lead."""
    columns = ", ".join(fields)
    placeholders = ", ".join(f"${i}" for i in range(1, len(fields) + 1))
    return await conn.fetchrow(
        f"WITH created AS (INSERT INTO opportunities ({columns}) VALUES ({placeholders})"  # noqa: S608
        " ON CONFLICT (lead_id) DO NOTHING RETURNING *)"
        f" SELECT created.*, {_WITH_PIPELINE} FROM created JOIN pipelines p ON p.id = created.pipeline_id",
        *fields.values(),
    )


# A deal with the pipeline it is in, as `to_domain` reads it.
_DEAL_WITH_PIPELINE = (
    f"SELECT o.*, {_WITH_PIPELINE} FROM opportunities o JOIN pipelines p ON p.id = o.pipeline_id"  # noqa: S608
)


async def opportunity(conn: Conn, opportunity_id: str) -> Row | None:
    return await conn.fetchrow(f"{_DEAL_WITH_PIPELINE} WHERE o.id = $1", opportunity_id)  # noqa: S608


async def opportunities_by_id(conn: Conn, opportunity_ids: Sequence[str]) -> list[Row | None]:
    """Each opportunity, or None where there is none, in the order asked (a group-committed load)."""
    rows = await conn.fetch(f"{_DEAL_WITH_PIPELINE} WHERE o.id = ANY($1::text[])", list(opportunity_ids))  # noqa: S608
    found = {row["id"]: row for row in rows}
    return [found.get(opportunity_id) for opportunity_id in opportunity_ids]


def owners_of(row: Row) -> list[dict[str, Any]]:
    if row["owners"] is None:
        return [{"owner_id": row["owner_id"], "split": 100}]
    owners: list[dict[str, Any]] = json.loads(row["owners"])
    return owners


def holders_of(row: Row) -> list[str]:
    """Whoever owns the deal: the primary owner first, then those holding a split of it."""
    return [o["owner_id"] for o in owners_of(row)]


def to_domain(row: Row) -> Opportunity:
    return Opportunity(
        id=row["id"],
        name=row["name"],
        account_id=row["account_id"],
        owner_id=row["owner_id"],
        money=Money(row["amount"], row["currency"]),
        stage=row["stage"],
        status=Status(row["status"]),
        expected_close_date=row["expected_close_date"],
        stage_entered_at=row["stage_entered_at"],
        version=row["version"],
        product=row["product"],
        probability=row["probability"],
        pipeline=pipeline_of(row),
    )


async def save_opportunity(
    conn: Conn, changed: Opportunity, *, expected_version: int, move: "RecordedMove | None" = None,
    splits: Sequence[OwnerSplit] | None = None, events: Sequence[CloudEvent] = (), **extra: Any,
) -> Row | None:
    """Write the changed opportunity if nobody changed it since `expected_version`; None if someone did.

    The version check is in the UPDATE itself: of two concurrent writers holding one version,
    the second waits for the first's row lock, then finds the version moved and changes nothing.
    A stage move also checks that the pipeline it was validated against is still at that version
    (an admin may have removed the stage, changed its probability or retired it meanwhile), writes the
    pipeline (a move into another one), and it alone writes the probability: other changes leave the one
    a pipeline change may have given the deal since it was loaded. A stage move's history row and the
    change's `events` (outbox rows) are written by the same statement, only when the update happened: one
    round trip, and one statement is its own transaction (no BEGIN and COMMIT round trips either). New
    owners (`splits`) rewrite the deal's rows of opportunity_owners in the same statement: one row per owner
    when there are several, none for one.
    """
    sets = ["stage = $3", "status = $4"]
    args: list[Any] = [changed.id, expected_version, changed.stage, str(changed.status)]
    conditions = ["id = $1", "version = $2"]
    if move is not None:
        args += [changed.probability, changed.stage_entered_at, changed.pipeline.id, changed.pipeline.version]
        sets += ["probability = $5", "stage_entered_at = $6", "pipeline_id = $7"]
        conditions.append("EXISTS (SELECT FROM pipelines WHERE pipelines.id = $7 AND version = $8)")
    for column, value in extra.items():
        args.append(value)
        sets.append(f"{column} = ${len(args)}")
    ctes = [
        f"saved AS (UPDATE opportunities SET {', '.join(sets)}, version = version + 1, updated_at = now()"  # noqa: S608
        f" WHERE {' AND '.join(conditions)} RETURNING *)"
    ]
    if move is not None:
        first = len(args) + 1
        args += [move.change.from_stage, move.change.to_stage, move.changed_by, move.changed_at,
                 move.change.seconds_in_previous_stage]
        ctes.append(
            "history AS (INSERT INTO stage_history"  # noqa: S608 - parameter numbers only
            " (opportunity_id, from_stage, to_stage, changed_by, changed_at, seconds_in_previous_stage)"
            f" SELECT id, ${first}, ${first + 1}, ${first + 2}, ${first + 3}::timestamptz, ${first + 4}::bigint"
            " FROM saved)"
        )
    if splits is not None:
        shared = splits if len(splits) > 1 else ()
        args += [[s.owner_id for s in shared], [s.split for s in shared]]
        holders, shares = len(args) - 1, len(args)
        ctes += [
            "splits_dropped AS (DELETE FROM opportunity_owners"  # noqa: S608 - parameter numbers only
            f" WHERE opportunity_id = (SELECT id FROM saved) AND owner_id <> ALL(${holders}::text[]))",
            "splits_kept AS (INSERT INTO opportunity_owners (opportunity_id, owner_id, split)"  # noqa: S608
            f" SELECT saved.id, s.owner_id, s.split FROM saved, unnest(${holders}::text[], ${shares}::int[])"
            " AS s (owner_id, split) ON CONFLICT (opportunity_id, owner_id) DO UPDATE SET split = excluded.split)",
        ]
    if events:
        outbox_rows, outbox_args = outbox_insert(events, after="saved", first_parameter=len(args) + 1)
        ctes.append(outbox_rows)
        args += outbox_args
    return await conn.fetchrow(
        f"WITH {', '.join(ctes)} SELECT saved.*, {_WITH_PIPELINE}"  # noqa: S608 - names are ours
        " FROM saved JOIN pipelines p ON p.id = saved.pipeline_id",
        *args,
    )


@dataclass(frozen=True)
class RecordedMove:
    """A stage move as stage_history keeps it: the move, who made it and when."""

    change: StageChange
    changed_by: str
    changed_at: datetime


@dataclass(frozen=True)
class StageMoveSave:
    """A stage move to save (`save_stage_moves`): the moved opportunity, the version it was moved from,
    its history row and its events."""

    moved: Opportunity
    expected_version: int
    move: RecordedMove
    events: Sequence[CloudEvent]


async def save_stage_moves(conn: Conn, saves: Sequence[StageMoveSave]) -> list[Row | None]:
    """`save_opportunity` of stage moves, many in one statement: for each, the saved opportunity, or None
    when it or its pipeline changed since its version. A move of an opportunity moved earlier in `saves`
    is saved by a statement after the first's, so that it finds the version the first one left."""
    firsts: dict[str, int] = {}
    now, later = [], []
    for nth, save in enumerate(saves):
        (later if save.moved.id in firsts else now).append(nth)
        firsts.setdefault(save.moved.id, nth)
    saved = dict(zip(now, await _save_distinct_stage_moves(conn, [saves[nth] for nth in now]), strict=True))
    if later:
        saved.update(zip(later, await save_stage_moves(conn, [saves[nth] for nth in later]), strict=True))
    return [saved[nth] for nth in range(len(saves))]


async def _save_distinct_stage_moves(conn: Conn, saves: Sequence[StageMoveSave]) -> list[Row | None]:
    columns: list[list[Any]] = [[] for _ in range(13)]
    for save in saves:
        moved, move = save.moved, save.move
        for column, value in zip(columns, (
            moved.id, save.expected_version, moved.stage, str(moved.status), moved.probability,
            moved.stage_entered_at, moved.pipeline.id, moved.pipeline.version, move.change.from_stage,
            move.change.to_stage, move.changed_by, move.changed_at, move.change.seconds_in_previous_stage,
        ), strict=True):
            column.append(value)
    outbox_rows, outbox_args = outbox_insert(
        [event for save in saves for event in save.events], after="saved", first_parameter=14, by_subject=True
    )
    rows = await conn.fetch(
        "WITH move AS (SELECT * FROM unnest($1::text[], $2::integer[], $3::text[], $4::text[], $5::integer[],"  # noqa: S608
        " $6::timestamptz[], $7::text[], $8::integer[], $9::text[], $10::text[], $11::text[], $12::timestamptz[],"
        " $13::bigint[]) AS m (id, expected_version, stage, status, probability, stage_entered_at, pipeline_id,"
        " pipeline_version, from_stage, to_stage, changed_by, changed_at, seconds_in_previous_stage)),"
        " saved AS (UPDATE opportunities o SET stage = move.stage, status = move.status,"
        " probability = move.probability, stage_entered_at = move.stage_entered_at, pipeline_id = move.pipeline_id,"
        " version = o.version + 1, updated_at = now() FROM move WHERE o.id = move.id"
        " AND o.version = move.expected_version"
        " AND EXISTS (SELECT FROM pipelines WHERE pipelines.id = move.pipeline_id AND version = move.pipeline_version)"
        " RETURNING o.*),"
        " history AS (INSERT INTO stage_history"
        " (opportunity_id, from_stage, to_stage, changed_by, changed_at, seconds_in_previous_stage)"
        " SELECT id, from_stage, to_stage, changed_by, changed_at, seconds_in_previous_stage FROM move"
        " WHERE id IN (SELECT id FROM saved)),"
        f" {outbox_rows} SELECT saved.*, {_WITH_PIPELINE} FROM saved JOIN pipelines p ON p.id = saved.pipeline_id",
        *columns,
        *outbox_args,
    )
    found = {row["id"]: row for row in rows}
    return [found.get(save.moved.id) for save in saves]


async def stage_history(conn: Conn, opportunity_id: str) -> list[Row]:
    return await conn.fetch(
        "SELECT from_stage, to_stage, changed_by, changed_at, seconds_in_previous_stage"
        " FROM stage_history WHERE opportunity_id = $1 ORDER BY id",
        opportunity_id,
    )


@dataclass(frozen=True)
class OpportunityFilter:
    owners: set[str] | None = None  # primary owners (the owner_id and team filters); None: any
    visible_to: frozenset[str] | None = None  # the caller's scope: deals these users own or hold a split of
    stage: str | None = None
    status: str | None = None
    pipeline_id: str | None = None
    account_id: str | None = None
    region: str | None = None
    close_from: date | None = None
    close_to: date | None = None
    amount_min: Decimal | None = None
    amount_max: Decimal | None = None


async def list_opportunities(
    conn: Conn, where: OpportunityFilter, *, after: tuple[datetime, str] | None, limit: int
) -> list[Row]:
    clauses, args = _keyset(after)

    def add(condition: str, value: Any) -> None:
        args.append(value)
        clauses.append(condition.replace("?", f"${len(args)}"))

    if where.owners is not None:
        add("owner_id = ANY(?::text[])", sorted(where.owners))
    if where.visible_to is not None:
        add(f"(owner_id = ANY(?::text[]) OR {split_held_in_scope('id', '?')})", sorted(where.visible_to))
    for column in ("stage", "status", "pipeline_id", "account_id", "region"):
        value = getattr(where, column)
        if value is not None:
            add(f"{column} = ?", value)
    if where.close_from is not None:
        add("expected_close_date >= ?", where.close_from)
    if where.close_to is not None:
        add("expected_close_date <= ?", where.close_to)
    if where.amount_min is not None:
        add("amount >= ?", where.amount_min)
    if where.amount_max is not None:
        add("amount <= ?", where.amount_max)
    condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    args.append(limit)
    return await conn.fetch(
        f"SELECT o.*, {_WITH_PIPELINE} FROM (SELECT * FROM opportunities {condition}"  # noqa: S608
        f" ORDER BY created_at, id LIMIT ${len(args)}) o JOIN pipelines p ON p.id = o.pipeline_id"
        " ORDER BY o.created_at, o.id",
        *args,
    )


def split_held_in_scope(deal_id: str, scope: str) -> str:
    """SQL: someone in the scope `scope` (a text[] parameter) holds a split of the deal whose id is `deal_id`.
    Beside its primary owner's scope, that is who may read a deal (handling.Actor.check_reads on holders_of)."""
    return f"{deal_id} IN (SELECT opportunity_id FROM opportunity_owners WHERE owner_id = ANY({scope}::text[]))"  # noqa: S608


async def list_deal_parts(
    conn: Conn, table: Literal["quotes", "contracts"], *, owners: set[str] | None, equal: Mapping[str, Any],
    after: tuple[datetime, str] | None, limit: int,
) -> list[Row]:
    """A page of a deal's quotes or contracts, oldest first: those whose columns hold the `equal` values
    given (None: any), readable by `owners` (None: everyone) by check_part_reads' rule: the record's owner,
    or an owner or split holder of its deal, in scope."""
    clauses, args = _keyset(after)

    def add(condition: str, value: Any) -> None:
        args.append(value)
        clauses.append(condition.replace("?", f"${len(args)}"))

    if owners is not None:
        add("(owner_id = ANY(?::text[])"  # noqa: S608 - the SQL is ours
            " OR opportunity_id IN (SELECT id FROM opportunities WHERE owner_id = ANY(?::text[]))"
            f" OR {split_held_in_scope('opportunity_id', '?')})", sorted(owners))
    for column, value in equal.items():
        if value is not None:
            add(f"{column} = ?", value)
    condition = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    args.append(limit)
    return await conn.fetch(
        f"SELECT * FROM {table} {condition} ORDER BY created_at, id LIMIT ${len(args)}",  # noqa: S608
        *args,
    )


def _keyset(after: tuple[datetime, str] | None) -> tuple[list[str], list[Any]]:
    if after is None:
        return [], []
    return ["(created_at, id) > ($1, $2)"], [after[0], after[1]]


# --- contracts ----------------------------------------------------------------------------


async def insert_contract(conn: Conn, **fields: Any) -> Row:
    columns = ", ".join(fields)
    placeholders = ", ".join(f"${i}" for i in range(1, len(fields) + 1))
    row = await conn.fetchrow(
        f"INSERT INTO contracts ({columns}) VALUES ({placeholders}) RETURNING *",  # noqa: S608
        *fields.values(),
    )
    assert row is not None
    return row


async def contract(conn: Conn, contract_id: str, *, for_update: bool = False) -> Row | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(f"SELECT * FROM contracts WHERE id = $1{lock}", contract_id)  # noqa: S608


async def signed_total(conn: Conn, account_id: str, currency: str) -> Decimal:
    total: Decimal = await conn.fetchval(
        "SELECT coalesce(sum(amount), 0) FROM contracts WHERE account_id = $1 AND status = 'signed' AND currency = $2",
        account_id, currency,
    )
    return total


async def set_contract_status(conn: Conn, contract_id: str, status: str, **fields: Any) -> Row:
    sets = ["status = $2", "version = version + 1"] + [f"{c} = ${i}" for i, c in enumerate(fields, start=3)]
    row = await conn.fetchrow(
        f"UPDATE contracts SET {', '.join(sets)} WHERE id = $1 RETURNING *",  # noqa: S608 - column names are ours
        contract_id, status, *fields.values(),
    )
    assert row is not None
    return row


async def mark_signed(conn: Conn, contract_id: str, signed_by: str, signed_at: datetime) -> Row:
    row = await conn.fetchrow(
        "UPDATE contracts SET status = 'signed', signed_by = $2, signed_at = $3, version = version + 1"
        " WHERE id = $1 RETURNING *",
        contract_id, signed_by, signed_at,
    )
    assert row is not None
    return row
