"""asyncpg queries for the scoring service's tables (migrations/ beside this file)."""

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.scoring.domain import AccountTier, Contract, LeadFeatures, OpportunityFeatures, OpportunityMoment, Score
from shared.db import Connection


@dataclass(frozen=True)
class Scored:
    """A subject's current score as kept, with the sequence of its last scored event."""

    subject_id: str
    owner_id: str | None
    score: int
    model_version: str
    factors: list[dict[str, Any]]
    scored_at: datetime
    sequence: int


def _factors(score: Score) -> str:
    return json.dumps([f.as_dict() for f in score.factors], ensure_ascii=False)


def _scored(row: asyncpg.Record, id_column: str) -> Scored:
    return Scored(row[id_column], row["owner_id"], row["score"], row["model_version"], json.loads(row["factors"]),
                  row["scored_at"], row["sequence"])


# --- leads ------------------------------------------------------------------------------------
# A transaction's events are applied in memory (handlers.Working): the subjects they touch are
# read and locked with one query, and written back with one statement per table before commit.

_LEAD_UPSERT = (
    "INSERT INTO lead_scores (lead_id, owner_id, features, score, model_version, factors, scored_at, sequence)"
    " VALUES ($1, $2, $3::jsonb, $4, $5, $6::jsonb, $7, $8)"
    " ON CONFLICT (lead_id) DO UPDATE SET owner_id = EXCLUDED.owner_id, features = EXCLUDED.features,"
    " score = EXCLUDED.score, model_version = EXCLUDED.model_version, factors = EXCLUDED.factors,"
    " scored_at = EXCLUDED.scored_at, sequence = EXCLUDED.sequence"
)
_LEAD_HISTORY = (
    "INSERT INTO lead_score_history (lead_id, score, model_version, factors, scored_at, cause_event_id,"
    " cause_type) VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7) ON CONFLICT (cause_event_id) DO NOTHING"
)


@dataclass(frozen=True)
class Computed:
    """A score computed for a subject in this transaction, with the event that caused it."""

    subject_id: str
    features_json: dict[str, Any]
    owner_id: str | None
    score: Score
    scored_at: datetime
    sequence: int
    cause_event_id: str
    cause_type: str
    open_moment: OpportunityMoment | None = None  # an open opportunity's: what its outcome will be learned from


async def lock_leads(conn: Connection, lead_ids: list[str]) -> dict[str, tuple[LeadFeatures, Scored]]:
    """The leads' features and current scores, locked for this transaction (in id order: no deadlock)."""
    rows = await conn.fetch(
        "SELECT * FROM lead_scores WHERE lead_id = ANY($1::text[]) ORDER BY lead_id FOR UPDATE", sorted(lead_ids))
    return {r["lead_id"]: (LeadFeatures.from_json(json.loads(r["features"])), _scored(r, "lead_id")) for r in rows}


def _current_rows(computed: list[Computed]) -> list[tuple[Any, ...]]:
    last = {c.subject_id: c for c in computed}  # the newest score of each subject is its current one
    return [(c.subject_id, c.owner_id, json.dumps(c.features_json, ensure_ascii=False), c.score.score,
             c.score.model_version, _factors(c.score), c.scored_at, c.sequence) for c in last.values()]


def _history_rows(computed: list[Computed]) -> list[tuple[Any, ...]]:
    return [(c.subject_id, c.score.score, c.score.model_version, _factors(c.score), c.scored_at, c.cause_event_id,
             c.cause_type) for c in computed]


async def save_leads(conn: Connection, computed: list[Computed], statuses: dict[str, str]) -> None:
    """Current scores (the newest of each lead), one history row per score, then statuses."""
    if computed:
        await conn.executemany(_LEAD_UPSERT, _current_rows(computed))
        await conn.executemany(_LEAD_HISTORY, _history_rows(computed))
    if statuses:
        await conn.executemany("UPDATE lead_scores SET status = $2 WHERE lead_id = $1", list(statuses.items()))


async def open_leads(conn: Connection, after: str, limit: int) -> list[tuple[str, LeadFeatures, Scored]]:
    """The next `limit` open leads (not converted, disqualified or merged) in id order after `after` (the
    partial index lead_scores_open), not locked."""
    rows = await conn.fetch(
        "SELECT lead_id, owner_id, features, score, model_version, factors, scored_at, sequence FROM lead_scores"
        " WHERE status = 'open' AND lead_id > $1 ORDER BY lead_id LIMIT $2", after, limit)
    return [(r["lead_id"], LeadFeatures.from_json(json.loads(r["features"])), _scored(r, "lead_id")) for r in rows]


async def lock_open_lead_sequences(conn: Connection, lead_ids: list[str]) -> dict[str, int]:
    """The sequence of the last scored event of each lead still open that no other transaction holds, locked
    (the others are left out rather than waited for). Open: an outcome or a merge closes a lead without
    publishing a score, so its sequence alone does not tell."""
    rows = await conn.fetch(
        "SELECT lead_id, sequence FROM lead_scores WHERE lead_id = ANY($1::text[]) AND status = 'open'"
        " ORDER BY lead_id FOR UPDATE SKIP LOCKED", sorted(lead_ids))
    return {r["lead_id"]: r["sequence"] for r in rows}


async def lead_score(conn: Connection, lead_id: str) -> Scored | None:
    row = await conn.fetchrow("SELECT * FROM lead_scores WHERE lead_id = $1", lead_id)
    return None if row is None else _scored(row, "lead_id")


async def lead_history(conn: Connection, lead_id: str, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT score, model_version, factors, scored_at, cause_type FROM lead_score_history"
        " WHERE lead_id = $1 ORDER BY id DESC LIMIT $2",
        lead_id, limit,
    )
    return rows


# --- opportunities ----------------------------------------------------------------------------


_OPPORTUNITY_UPSERT = (
    "INSERT INTO opportunity_scores (opportunity_id, owner_id, features, score, model_version, factors,"
    " scored_at, sequence, open_moment) VALUES ($1, $2, $3::jsonb, $4, $5, $6::jsonb, $7, $8, $9::jsonb)"
    " ON CONFLICT (opportunity_id) DO UPDATE SET owner_id = EXCLUDED.owner_id, features = EXCLUDED.features,"
    " score = EXCLUDED.score, model_version = EXCLUDED.model_version, factors = EXCLUDED.factors,"
    " scored_at = EXCLUDED.scored_at, sequence = EXCLUDED.sequence,"
    " open_moment = coalesce(EXCLUDED.open_moment, opportunity_scores.open_moment)"
)
_OPPORTUNITY_HISTORY = (
    "INSERT INTO opportunity_score_history (opportunity_id, score, model_version, factors, scored_at,"
    " cause_event_id, cause_type) VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)"
    " ON CONFLICT (cause_event_id) DO NOTHING"
)


@dataclass(frozen=True)
class KnownOpportunity:
    """An opportunity as kept: its features, current score and the moment of its last score while open."""

    features: OpportunityFeatures
    scored: Scored | None = None
    open_moment: OpportunityMoment | None = None


def _known_opportunity(row: asyncpg.Record) -> KnownOpportunity:
    moment = row.get("open_moment")  # not read by the re-scoring, which has no use for it
    return KnownOpportunity(OpportunityFeatures.from_json(json.loads(row["features"])), _scored(row, "opportunity_id"),
                            None if moment is None else OpportunityMoment.from_json(json.loads(moment)))


async def lock_opportunities(conn: Connection, opportunity_ids: list[str]) -> dict[str, KnownOpportunity]:
    """The opportunities' features and current scores, locked for this transaction (in id order: no deadlock)."""
    rows = await conn.fetch(
        "SELECT * FROM opportunity_scores WHERE opportunity_id = ANY($1::text[]) ORDER BY opportunity_id FOR UPDATE",
        sorted(opportunity_ids))
    return {r["opportunity_id"]: _known_opportunity(r) for r in rows}


async def open_opportunities(conn: Connection, after: str, limit: int) -> list[tuple[str, KnownOpportunity]]:
    """The next `limit` open opportunities in id order after `after` (the partial index
    opportunity_scores_open), not locked, without their open moment."""
    rows = await conn.fetch(
        "SELECT opportunity_id, owner_id, features, score, model_version, factors, scored_at, sequence"
        " FROM opportunity_scores WHERE (features->>'status') = 'open' AND opportunity_id > $1"
        " ORDER BY opportunity_id LIMIT $2", after, limit)
    return [(r["opportunity_id"], _known_opportunity(r)) for r in rows]


async def lock_opportunity_sequences(conn: Connection, opportunity_ids: list[str]) -> dict[str, int]:
    """The sequence of the last scored event of each opportunity no other transaction holds, locked (those
    another transaction holds are left out rather than waited for)."""
    rows = await conn.fetch(
        "SELECT opportunity_id, sequence FROM opportunity_scores WHERE opportunity_id = ANY($1::text[])"
        " ORDER BY opportunity_id FOR UPDATE SKIP LOCKED", sorted(opportunity_ids))
    return {r["opportunity_id"]: r["sequence"] for r in rows}


def _opportunity_rows(computed: list[Computed]) -> list[tuple[Any, ...]]:
    last = {c.subject_id: c for c in computed}
    return [(*row, None if c.open_moment is None else json.dumps(c.open_moment.to_json(), ensure_ascii=False))
            for row, c in zip(_current_rows(computed), last.values(), strict=True)]


async def save_opportunities(conn: Connection, computed: list[Computed]) -> None:
    if computed:
        await conn.executemany(_OPPORTUNITY_UPSERT, _opportunity_rows(computed))
        await conn.executemany(_OPPORTUNITY_HISTORY, _history_rows(computed))


@dataclass(frozen=True)
class WinTallies:
    """Won and lost deals so far: per owner (those asked for) and overall."""

    by_owner: dict[str, tuple[int, int]]
    overall: tuple[int, int]


async def win_tallies(conn: Connection, owner_ids: list[str]) -> WinTallies:
    rows = await conn.fetch(
        "SELECT owner_id, won, lost FROM owner_win_tallies WHERE owner_id = ANY($1::text[])"
        " UNION ALL SELECT NULL, coalesce(sum(won), 0), coalesce(sum(lost), 0) FROM owner_win_tallies",
        sorted(set(owner_ids)))
    overall = next((int(r["won"]), int(r["lost"])) for r in rows if r["owner_id"] is None)
    return WinTallies({r["owner_id"]: (r["won"], r["lost"]) for r in rows if r["owner_id"] is not None}, overall)


async def count_opportunity_outcome(conn: Connection, owner_id: str, won: int, lost: int) -> None:
    """Add to (or, with negative counts, take back from) an owner's tally of won and lost deals."""
    # The CHECK holds for the row proposed for insertion even when it conflicts: a taking back proposes 0.
    await conn.execute(
        "INSERT INTO owner_win_tallies (owner_id, won, lost) VALUES ($1, greatest($2, 0), greatest($3, 0))"
        " ON CONFLICT (owner_id) DO UPDATE SET won = owner_win_tallies.won + $2, lost = owner_win_tallies.lost + $3",
        owner_id, won, lost)


async def opportunity_history(conn: Connection, opportunity_id: str, limit: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT score, model_version, factors, scored_at, cause_type FROM opportunity_score_history"
        " WHERE opportunity_id = $1 ORDER BY id DESC LIMIT $2",
        opportunity_id, limit,
    )
    return rows


async def opportunity_score(conn: Connection, opportunity_id: str) -> Scored | None:
    row = await conn.fetchrow("SELECT * FROM opportunity_scores WHERE opportunity_id = $1", opportunity_id)
    return None if row is None else _scored(row, "opportunity_id")


# --- account tiers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tiered:
    account_id: str
    owner_id: str | None
    contracts: list[Contract]
    value_tier: str | None
    buyer_type: str | None
    amount_12m: Any
    currency: str | None
    factors: list[dict[str, Any]]
    tiered_at: datetime
    sequence: int


def _tiered(row: asyncpg.Record) -> Tiered:
    return Tiered(row["account_id"], row["owner_id"], [Contract.from_json(c) for c in json.loads(row["contracts"])],
                  row["value_tier"], row["buyer_type"], row["amount_12m"], row["currency"],
                  json.loads(row["factors"]), row["tiered_at"], row["sequence"])


async def lock_account(conn: Connection, account_id: str) -> Tiered | None:
    row = await conn.fetchrow("SELECT * FROM account_tiers WHERE account_id = $1 FOR UPDATE", account_id)
    return None if row is None else _tiered(row)


async def account_tier(conn: Connection, account_id: str) -> Tiered | None:
    row = await conn.fetchrow("SELECT * FROM account_tiers WHERE account_id = $1", account_id)
    return None if row is None else _tiered(row)


async def tiered_accounts(conn: Connection, after: str, limit: int) -> list[Tiered]:
    """The next `limit` accounts with a tier (a contract that counts) in id order after `after`, not locked."""
    rows = await conn.fetch("SELECT * FROM account_tiers WHERE value_tier IS NOT NULL AND account_id > $1"
                            " ORDER BY account_id LIMIT $2", after, limit)
    return [_tiered(row) for row in rows]


async def lock_account_sequences(conn: Connection, account_ids: list[str]) -> dict[str, int]:
    """The sequence of the last tiered event of each account no other transaction holds, locked (those another
    transaction holds are left out rather than waited for)."""
    rows = await conn.fetch("SELECT account_id, sequence FROM account_tiers WHERE account_id = ANY($1::text[])"
                            " ORDER BY account_id FOR UPDATE SKIP LOCKED", sorted(account_ids))
    return {r["account_id"]: r["sequence"] for r in rows}


async def save_account(
    conn: Connection, account_id: str, owner_id: str | None, contracts: list[Contract], tier: AccountTier | None,
    tiered_at: datetime, sequence: int,
) -> None:
    factors = json.dumps([f.as_dict() for f in tier.factors] if tier else [], ensure_ascii=False)
    await conn.execute(
        "INSERT INTO account_tiers (account_id, owner_id, contracts, value_tier, buyer_type, amount_12m, currency,"
        " factors, tiered_at, sequence) VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7, $8::jsonb, $9, $10)"
        " ON CONFLICT (account_id) DO UPDATE SET owner_id = EXCLUDED.owner_id, contracts = EXCLUDED.contracts,"
        " value_tier = EXCLUDED.value_tier, buyer_type = EXCLUDED.buyer_type, amount_12m = EXCLUDED.amount_12m,"
        " currency = EXCLUDED.currency, factors = EXCLUDED.factors, tiered_at = EXCLUDED.tiered_at,"
        " sequence = EXCLUDED.sequence",
        account_id, owner_id, json.dumps([c.to_json() for c in contracts]), tier.value_tier if tier else None,
        tier.buyer_type if tier else None, tier.amount_12m if tier else None, tier.currency if tier else None,
        factors, tiered_at, sequence,
    )


# --- outcomes ---------------------------------------------------------------------------------


async def record_outcome(
    conn: Connection, kind: str, subject_id: str, outcome: str, positive: bool, features: dict[str, Any] | None,
    observed_at: datetime, cause_event_id: str, counted_owner: str | None = None,
) -> asyncpg.Record | None:
    """Keep what became of a lead or opportunity; the latest outcome wins (a reopened deal can close again).
    `counted_owner`: the owner whose win tally counts it. Returns the outcome it replaced (`positive`,
    `counted_owner`), if any."""
    previous: asyncpg.Record | None = await conn.fetchrow(
        "SELECT positive, counted_owner FROM outcomes WHERE subject_kind = $1 AND subject_id = $2 FOR UPDATE",
        kind, subject_id)
    await conn.execute(
        "INSERT INTO outcomes (subject_kind, subject_id, positive, outcome, features, observed_at, cause_event_id,"
        " counted_owner) VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)"
        " ON CONFLICT (subject_kind, subject_id) DO UPDATE SET positive = EXCLUDED.positive,"
        " outcome = EXCLUDED.outcome, features = EXCLUDED.features, observed_at = EXCLUDED.observed_at,"
        " cause_event_id = EXCLUDED.cause_event_id, counted_owner = EXCLUDED.counted_owner",
        kind, subject_id, positive, outcome, None if features is None else json.dumps(features, ensure_ascii=False),
        observed_at, cause_event_id, counted_owner,
    )
    return previous


# --- models -----------------------------------------------------------------------------------


async def examples(conn: Connection, kind: str) -> list[asyncpg.Record]:
    """A kind's outcomes with the features known when they happened (the training data). An opportunity's
    are the moment of its last score while open (`as_of`); those recorded before moments were kept held
    the features at the close and are left out."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT features, positive, observed_at FROM outcomes WHERE subject_kind = $1 AND features IS NOT NULL"
        " AND (subject_kind = 'lead' OR features ? 'as_of') ORDER BY observed_at, subject_id", kind
    )
    return rows


async def outcomes_since_last_model(conn: Connection, kind: str) -> int:
    """Outcomes with features observed after the newest model's training window (all of them before any model)."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM outcomes WHERE subject_kind = $1 AND features IS NOT NULL"
        " AND (subject_kind = 'lead' OR features ? 'as_of')"
        " AND observed_at > coalesce((SELECT max(window_to) FROM models WHERE kind = $1), '-infinity')",
        kind)
    return count


async def active_models(conn: Connection) -> list[asyncpg.Record]:
    """Kind, version and algorithm of the active models (their parameters: `model_parameters`)."""
    rows: list[asyncpg.Record] = await conn.fetch("SELECT kind, version, algorithm FROM models WHERE active")
    return rows


async def active_model(conn: Connection, kind: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT version, algorithm FROM models WHERE kind = $1 AND active", kind)
    return row


async def model_parameters(conn: Connection, version: str) -> dict[str, Any]:
    """A model's parameters (a tree ensemble's are a few hundred kB: read once per version, not per batch)."""
    parameters: dict[str, Any] = json.loads(await conn.fetchval("SELECT parameters FROM models WHERE version = $1",
                                                                 version))
    return parameters


async def save_model(
    conn: Connection, version: str, kind: str, algorithm: str, parameters: dict[str, Any], trained_at: datetime,
    evaluation: dict[str, Any], current_version: str, promoted: bool,
) -> None:
    if promoted:
        await conn.execute("UPDATE models SET active = false WHERE kind = $1 AND active", kind)
    await conn.execute(
        "INSERT INTO models (version, kind, algorithm, parameters, trained_at, window_from, window_to, n_train,"
        " n_holdout, auc, brier, current_version, current_auc, promoted, active)"
        " VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)",
        version, kind, algorithm, json.dumps(parameters), trained_at, evaluation["window_from"],
        evaluation["window_to"], evaluation["n_train"], evaluation["n_holdout"], evaluation["auc"],
        evaluation["brier"], current_version, evaluation["current_auc"], promoted,
    )


async def activate_model(conn: Connection, kind: str, version: str | None) -> bool:
    """Make `version` the active model of its kind (None: back to the rules); False if there is no such model."""
    if version is not None and not await conn.fetchval(
            "SELECT 1 FROM models WHERE kind = $1 AND version = $2", kind, version):
        return False
    await conn.execute("UPDATE models SET active = false WHERE kind = $1 AND active", kind)
    if version is not None:
        await conn.execute("UPDATE models SET active = true WHERE version = $1", version)
    return True


async def models(conn: Connection, kind: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT version, kind, algorithm, trained_at, window_from, window_to, n_train, n_holdout, auc, brier,"
        " current_version, current_auc, promoted, active FROM models WHERE kind = $1 ORDER BY trained_at DESC",
        kind)
    return rows
