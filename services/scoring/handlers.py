"""One function per consumed event: load the features, apply the event, re-score, save and publish.

Every handler runs in the transaction the framework opened for the event, or for the batch of
events it applies together (which also records them in the inbox), so a redelivered event
re-scores nothing and publishes nothing twice. Within a transaction the subjects are held in a
`Working` set: every lead and opportunity the batch's events name is read and locked with one
query when the first handler runs, the events are applied in memory in their order, and the new
scores are written with one statement per table before commit. Events about a lead or
opportunity this service has not seen yet (it joined late, or an event overtook another) start
from empty features rather than failing.
"""

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

from services.scoring import metrics, store
from services.scoring.domain import (
    MODEL_VERSION,
    TIER_VERSION,
    AccountTier,
    Contract,
    LeadFeatures,
    OpportunityFeatures,
    OpportunityMoment,
    Score,
    account_tier,
    score_lead,
    score_opportunity,
    smoothed_win_rate,
    tier_as_time_passed,
)
from services.scoring.learning import Example, LearnedModel, NotEnoughOutcomes, model_from_json, train
from shared.db import Connection, Database, Transaction
from shared.errors import DomainError, NotFound
from shared.events.envelope import CloudEvent, data_time

LEAD_SCORED = "sales.lead.scored.v1"
LEAD_MERGED = "sales.lead.merged.v1"
OPPORTUNITY_SCORED = "sales.opportunity.scored.v1"


def _now() -> datetime:
    return datetime.now(UTC)


def _ts(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _scored_data(kind: str, subject_id: str, result: Score, previous: store.Scored | None, scored_at: datetime,
                 owner_id: str | None) -> dict[str, Any]:
    """The data of a `sales.lead.scored.v1` / `sales.opportunity.scored.v1` (`kind` lead / opportunity)."""
    return {
        f"{kind}_id": subject_id,
        "score": result.score,
        "previous_score": previous.score if previous else None,
        "model_version": result.model_version,
        "factors": [f.as_dict() for f in result.factors],
        "scored_at": _ts(scored_at),
        "owner_id": owner_id,
    }


# --- leads ------------------------------------------------------------------------------------

_loaded_models: dict[str, LearnedModel] = {}  # version -> model: parameters never change once stored


async def _loaded(conn: Connection, row: Any) -> LearnedModel:
    """The model a `models` row (version, algorithm) names; its parameters are read and parsed once per version."""
    model = _loaded_models.get(row["version"])
    if model is None:
        parameters = await store.model_parameters(conn, row["version"])
        model = _loaded_models[row["version"]] = model_from_json(row["version"], row["algorithm"], parameters)
    return model


async def _active_model(conn: Connection, kind: str) -> LearnedModel | None:
    row = await store.active_model(conn, kind)
    return None if row is None else await _loaded(conn, row)


async def _active_models(conn: Connection) -> tuple[LearnedModel | None, LearnedModel | None]:
    """The active learned lead and opportunity models (None: the rules), with one query once they are loaded."""
    active = {r["kind"]: r for r in await store.active_models(conn)}
    lead, opportunity = [await _loaded(conn, active[kind]) if kind in active else None for kind in KINDS]
    return lead, opportunity


def _lead_id(event: CloudEvent) -> str:
    return str(event.data.get("lead_id") or event.subject)


def _lead_ids(event: CloudEvent) -> list[str]:
    """The leads a lead event names: its own, and for a merge also the duplicate folded into it."""
    if event.type == LEAD_MERGED:
        return [_lead_id(event), str(event.data["merged_lead_id"])]
    return [_lead_id(event)]


def _opportunity_id(event: CloudEvent) -> str:
    return str(event.data.get("opportunity_id") or event.subject)


@dataclass
class Working:
    """The leads and opportunities one transaction's events touch, and the scores computed for them."""

    tx: Transaction
    lead_model: LearnedModel | None
    opportunity_model: LearnedModel | None
    leads: dict[str, tuple[LeadFeatures, store.Scored | None]] = field(default_factory=dict)
    opportunities: dict[str, store.KnownOpportunity] = field(default_factory=dict)
    lead_scores: list[store.Computed] = field(default_factory=list)
    lead_statuses: dict[str, str] = field(default_factory=dict)
    opportunity_scores: list[store.Computed] = field(default_factory=list)
    # won / lost so far of the owners of the batch's opportunities (those in `tallied`), and overall
    tallies: store.WinTallies = field(default_factory=lambda: store.WinTallies({}, (0, 0)))
    tallied: set[str] = field(default_factory=set)
    tallies_loaded: bool = False  # the overall tally is loaded with the first owners asked for, even none

    @classmethod
    async def of(cls, tx: Transaction) -> "Working":
        """This transaction's working set; the first call loads (and locks) every subject of the batch."""
        working: Working | None = tx.state.get("scoring")
        if working is None:
            working = tx.state["scoring"] = cls(tx, *await _active_models(tx.conn))
            lead_ids = [i for e in tx.batch if e.type.startswith("sales.lead.") for i in _lead_ids(e)]
            opportunity_ids = [_opportunity_id(e) for e in tx.batch if e.type.startswith("sales.opportunity.")]
            await working._load(lead_ids, opportunity_ids)
            tx.before_commit(working.save)
        return working

    async def _load(self, lead_ids: list[str], opportunity_ids: list[str]) -> None:
        lead_ids = [i for i in set(lead_ids) if i not in self.leads]
        if lead_ids:
            found = await store.lock_leads(self.tx.conn, lead_ids)
            self.leads.update({i: found.get(i, (LeadFeatures(), None)) for i in lead_ids})
        opportunity_ids = [i for i in set(opportunity_ids) if i not in self.opportunities]
        if opportunity_ids:
            found_opportunities = await store.lock_opportunities(self.tx.conn, opportunity_ids)
            self.opportunities.update(
                {i: found_opportunities.get(i, store.KnownOpportunity(OpportunityFeatures())) for i in opportunity_ids})
            owners = [o for o in (k.features.owner_id for k in self.opportunities.values()) if o]
            owners += [str(e.data["owner_id"]) for e in self.tx.batch
                       if e.type.startswith("sales.opportunity.") and e.data.get("owner_id")]
            await self._load_tallies(owners)

    async def _load_tallies(self, owner_ids: list[str]) -> None:
        wanted = [o for o in set(owner_ids) if o not in self.tallied]
        if wanted or not self.tallies_loaded:
            loaded = await store.win_tallies(self.tx.conn, wanted)
            self.tallies = store.WinTallies(self.tallies.by_owner | loaded.by_owner, loaded.overall)
            self.tallied.update(wanted)
            self.tallies_loaded = True

    async def owner_win_rate(self, owner_id: str | None) -> float | None:
        """The owner's smoothed win rate from the outcomes recorded so far (this batch's included)."""
        if owner_id is not None:
            await self._load_tallies([owner_id])
        won, lost = self.tallies.by_owner.get(owner_id, (0, 0)) if owner_id else (0, 0)
        return smoothed_win_rate(won, lost, *self.tallies.overall)

    async def count_outcome(self, owner_id: str | None, won: bool, replaced: Any) -> None:
        """Count a deal's outcome for its owner, taking back the outcome it replaces (a reopened deal that
        closed again), in the tallies kept and in this batch's copy."""
        changes: list[tuple[str, int, int]] = []
        if replaced is not None and replaced["counted_owner"]:
            changes.append((replaced["counted_owner"], -int(replaced["positive"]), -int(not replaced["positive"])))
        if owner_id:
            changes.append((owner_id, int(won), int(not won)))
        for owner, won_change, lost_change in changes:
            await self._load_tallies([owner])  # before the change: the copy then takes it as the table does
            await store.count_opportunity_outcome(self.tx.conn, owner, won_change, lost_change)
            owner_won, owner_lost = self.tallies.by_owner.get(owner, (0, 0))
            overall_won, overall_lost = self.tallies.overall
            self.tallies = store.WinTallies(
                self.tallies.by_owner | {owner: (owner_won + won_change, owner_lost + lost_change)},
                (overall_won + won_change, overall_lost + lost_change))

    async def lead(self, lead_id: str) -> tuple[LeadFeatures, store.Scored | None]:
        await self._load([lead_id], [])
        return self.leads[lead_id]

    async def opportunity(self, opportunity_id: str) -> store.KnownOpportunity:
        await self._load([], [opportunity_id])
        return self.opportunities[opportunity_id]

    def scored(self, lead_id: str, features: LeadFeatures, result: Score, now: datetime,
               event: CloudEvent) -> store.Scored | None:
        """Keep a new score of a lead; return the previous one (None for its first)."""
        current = self.leads[lead_id][1]
        computed = _computed(lead_id, features, current, result, now, event.id, event.type)
        self.leads[lead_id] = (features, _kept(computed))
        self.lead_scores.append(computed)
        return current

    def scored_opportunity(self, opportunity_id: str, moment: OpportunityMoment, result: Score, now: datetime,
                           event: CloudEvent) -> store.Scored | None:
        """Keep a new win probability of an opportunity (and, while it is open, the moment it is of); return
        the previous one (None for its first)."""
        known = self.opportunities[opportunity_id]
        open_moment = moment if is_open(moment.features) else None
        computed = _computed(opportunity_id, moment.features, known.scored, result, now, event.id, event.type,
                             open_moment)
        self.opportunities[opportunity_id] = store.KnownOpportunity(moment.features, _kept(computed),
                                                                    open_moment or known.open_moment)
        self.opportunity_scores.append(computed)
        return known.scored

    async def save(self) -> None:
        await store.save_leads(self.tx.conn, self.lead_scores, self.lead_statuses)
        await store.save_opportunities(self.tx.conn, self.opportunity_scores)


def _computed(subject_id: str, features: LeadFeatures | OpportunityFeatures, current: store.Scored | None,
              result: Score, now: datetime, cause_id: str, cause_type: str,
              open_moment: OpportunityMoment | None = None) -> store.Computed:
    sequence = (current.sequence if current else 0) + 1
    return store.Computed(subject_id, features.to_json(), features.owner_id, result, now, sequence, cause_id,
                          cause_type, open_moment)


def _kept(computed: store.Computed) -> store.Scored:
    """The current score as `computed` leaves it."""
    return store.Scored(computed.subject_id, computed.owner_id, computed.score.score, computed.score.model_version,
                        [f.as_dict() for f in computed.score.factors], computed.scored_at, computed.sequence)


def _score_lead(model: LearnedModel | None, features: LeadFeatures, now: datetime) -> Score:
    """The active learned model's score when one was promoted, else the rules' (as of `now`)."""
    return model.score(features) if model is not None else score_lead(features, now)


async def _rescore_lead(
    tx: Transaction, event: CloudEvent, change: Callable[[LeadFeatures], LeadFeatures]
) -> None:
    lead_id = _lead_id(event)
    working = await Working.of(tx)
    features, _ = await working.lead(lead_id)
    features = change(features)
    now = _now()
    result = _score_lead(working.lead_model, features, now)
    current = working.scored(lead_id, features, result, now, event)
    metrics.scores_computed.labels("lead", result.model_version).inc()
    metrics.scoring_latency.labels("lead").observe(max(0.0, (now - event.time).total_seconds()))
    tx.publish(LEAD_SCORED, lead_id, _scored_data("lead", lead_id, result, current, now, features.owner_id),
               sequence=(current.sequence if current else 0) + 1)


async def lead_captured(tx: Transaction, event: CloudEvent) -> None:
    at = data_time(event.data.get("captured_at"), event.time)
    await _rescore_lead(tx, event, lambda f: f.captured(event.data, at))


async def lead_engaged(tx: Transaction, event: CloudEvent) -> None:
    data = event.data
    await _rescore_lead(
        tx, event,
        lambda f: f.engaged(int(data.get("visits") or 0), float(data.get("time_on_site_s") or 0),
                            int(data.get("page_views") or 0), data.get("activity")),
    )


async def lead_contacted(tx: Transaction, event: CloudEvent) -> None:
    at = data_time(event.data.get("contacted_at"), event.time)
    number = event.data.get("touch_number")
    await _rescore_lead(tx, event, lambda f: f.contacted(at, number if isinstance(number, int) else None))


async def lead_grade_changed(tx: Transaction, event: CloudEvent) -> None:
    def regrade(features: LeadFeatures) -> LeadFeatures:
        owner = event.data.get("owner_id")
        changed = features.regraded(event.data.get("to_grade"))
        return changed.assigned(owner, None) if owner else changed

    await _rescore_lead(tx, event, regrade)


async def lead_assigned(tx: Transaction, event: CloudEvent) -> None:
    await _rescore_lead(tx, event, lambda f: f.assigned(str(event.data["owner_id"]), event.data.get("grade")))


async def _lead_outcome(tx: Transaction, event: CloudEvent, outcome: str, positive: bool, at_field: str) -> None:
    lead_id = _lead_id(event)
    working = await Working.of(tx)
    features, current = await working.lead(lead_id)
    known = features.to_json() if current else None
    await store.record_outcome(tx.conn, "lead", lead_id, outcome, positive, known,
                               data_time(event.data.get(at_field), event.time), event.id)
    working.lead_statuses[lead_id] = outcome


async def lead_converted(tx: Transaction, event: CloudEvent) -> None:
    await _lead_outcome(tx, event, "converted", True, "converted_at")


async def lead_disqualified(tx: Transaction, event: CloudEvent) -> None:
    await _lead_outcome(tx, event, "disqualified", False, "disqualified_at")


async def lead_merged(tx: Transaction, event: CloudEvent) -> None:
    """A duplicate folded into another lead is closed: its score stays as it was and is no longer re-scored
    as time passes. Not an outcome: the lead did not convert or fail, it was the same person twice. The
    survivor now holds the duplicate's history: it is re-scored from the event's account of it after the
    merge (touches, grade, contact, attributes) and the duplicate's engagement as its events told it; a
    merge published before the leads service told the survivor's state (no `touch_count`) re-scores
    nothing. Both are locked with the batch's other leads (`Working.of`)."""
    working = await Working.of(tx)
    duplicate_id = str(event.data["merged_lead_id"])
    working.lead_statuses[duplicate_id] = "merged"
    if "touch_count" not in event.data:
        return
    duplicate, _ = await working.lead(duplicate_id)
    contacted = event.data.get("last_contacted_at")
    last_contacted_at = data_time(contacted, event.time) if contacted else None
    await _rescore_lead(tx, event, lambda f: f.merged(duplicate, event.data, last_contacted_at))


# --- opportunities ----------------------------------------------------------------------------


def _competitor(data: dict[str, Any], features: OpportunityFeatures) -> str | None:
    named = data.get("competitor")
    return str(named) if isinstance(named, str) and named else features.competitor


def is_open(features: OpportunityFeatures) -> bool:
    return features.status == "open" and features.stage not in ("won", "lost")


def score_moment(model: LearnedModel | None, moment: OpportunityMoment) -> Score:
    """The win probability as of the moment: the active learned model's while the deal is open (1-99, as the
    rules), else the rules' (closed won 100, lost 0; the stage defaults while no model is active)."""
    result = score_opportunity(moment.features, moment.as_of)
    if model is not None and is_open(moment.features):
        learned = model.score(moment)
        result = replace(learned, score=max(1, min(99, learned.score)))
    return result


async def _rescore_opportunity(
    tx: Transaction, event: CloudEvent, change: Callable[[OpportunityFeatures], OpportunityFeatures],
    *, activity: bool = True,
) -> OpportunityFeatures:
    """Apply the event and re-score as of its time (the moment it happened: age in stage and recency are
    measured from there; the periodic re-scoring moves them on). An event that is not `activity` on the deal
    leaves its recency as it was."""
    opportunity_id = _opportunity_id(event)
    working = await Working.of(tx)
    known = await working.opportunity(opportunity_id)
    features = change(known.features)
    if activity:
        features = features.told(event.data, event.time)
    owner = event.data.get("owner_id")
    if isinstance(owner, str) and owner:
        features = replace(features, owner_id=owner)
    competitor = _competitor(event.data, features)
    if competitor != features.competitor:
        features = replace(features, competitor=competitor)
    if features.created_at is None:  # first seen by another event than its creation
        features = replace(features, created_at=features.stage_entered_at or event.time)
    moment = OpportunityMoment(features, event.time, await working.owner_win_rate(features.owner_id))
    result = score_moment(working.opportunity_model, moment)
    now = _now()
    current = working.scored_opportunity(opportunity_id, moment, result, now, event)
    metrics.scores_computed.labels("opportunity", result.model_version).inc()
    metrics.scoring_latency.labels("opportunity").observe(max(0.0, (now - event.time).total_seconds()))
    tx.publish(OPPORTUNITY_SCORED, opportunity_id,
               _scored_data("opportunity", opportunity_id, result, current, now, features.owner_id),
               sequence=(current.sequence if current else 0) + 1)
    return features


def _probability(data: dict[str, Any]) -> float | None:
    value = data.get("probability")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


async def opportunity_created(tx: Transaction, event: CloudEvent) -> None:
    data = event.data
    at = data_time(data.get("created_at"), event.time)
    await _rescore_opportunity(
        tx, event,
        lambda f: replace(f.moved(str(data.get("stage") or "prospecting"), _probability(data), at),
                          status=str(data.get("status") or "open"), created_at=at),
    )


async def opportunity_stage_changed(tx: Transaction, event: CloudEvent) -> None:
    data = event.data
    at = data_time(data.get("changed_at"), event.time)
    await _rescore_opportunity(tx, event, lambda f: f.moved(str(data["to_stage"]), _probability(data), at))


async def opportunity_assessed(tx: Transaction, event: CloudEvent) -> None:
    maturity = event.data.get("maturity")
    await _rescore_opportunity(
        tx, event,
        lambda f: replace(f, maturity=maturity if isinstance(maturity, int) else None),
    )


async def opportunity_updated(tx: Transaction, event: CloudEvent) -> None:
    """An edit without a stage move (PATCH): the amount and product it carries are the deal's now, so a null
    product is one that was cleared, not one the event leaves unsaid (`told` takes the amount)."""
    product = event.data.get("product")
    await _rescore_opportunity(
        tx, event, lambda f: replace(f, product=product if isinstance(product, str) and product else None))


async def opportunity_repriced(tx: Transaction, event: CloudEvent) -> None:
    """The deal's stage has a new default probability (an admin changed the pipeline): the rules' base for it.
    Nobody touched the deal, so its activity recency stays that of its latest event."""
    probability = _probability(event.data)
    await _rescore_opportunity(tx, event, lambda f: replace(f, stage_probability=probability), activity=False)


async def _opportunity_closed(tx: Transaction, event: CloudEvent, outcome: str) -> None:
    """Re-score to 100 / 0 and record the outcome with the moment of the deal's last score while it was open
    (not the features at the close: see learning.py), counted for its owner's win rate."""
    opportunity_id = _opportunity_id(event)
    working = await Working.of(tx)
    open_moment = (await working.opportunity(opportunity_id)).open_moment
    features = await _rescore_opportunity(tx, event, lambda f: replace(f, status=outcome))
    replaced = await store.record_outcome(
        tx.conn, "opportunity", opportunity_id, outcome, outcome == "won",
        None if open_moment is None else open_moment.to_json(), data_time(event.data.get("closed_at"), event.time),
        event.id, counted_owner=features.owner_id)
    await working.count_outcome(features.owner_id, outcome == "won", replaced)


async def opportunity_won(tx: Transaction, event: CloudEvent) -> None:
    await _opportunity_closed(tx, event, "won")


async def opportunity_lost(tx: Transaction, event: CloudEvent) -> None:
    await _opportunity_closed(tx, event, "lost")


# --- re-scoring as time passes ----------------------------------------------------------------


@dataclass(frozen=True)
class Rescoring:
    """What one pass of the periodic re-scoring did."""

    as_of: datetime
    examined: int  # subjects looked at: open leads or deals, accounts with a tier
    rescored: int  # of which the score or tier moved: published


@dataclass(frozen=True)
class Rescored:
    """A subject's score as of a pass's moment, computed from its row as read (without a lock)."""

    subject_id: str
    read: store.Scored  # the score it had when read: the new one is written only while that is still current
    features: LeadFeatures | OpportunityFeatures
    result: Score
    open_moment: OpportunityMoment | None = None  # an opportunity's: kept for its outcome, as an event's score


def lead_rescored(model: LearnedModel | None, as_of: datetime, lead_id: str, features: LeadFeatures,
                  read: store.Scored) -> Rescored | None:
    """An open lead's score as of `as_of`, by the model the events' scores use (its recency of contact moves
    with the moment under the rules); None for a lead scored after `as_of`, which is left as it is."""
    if read.scored_at > as_of:
        return None
    return Rescored(lead_id, read, features, _score_lead(model, features, as_of))


def lead_score_changed(rescored: Rescored) -> bool:
    """Whether a lead's score, its model or its factors (which ones, and their points) changed: a clamped
    score (0 or 100) can keep its number while a recency factor appears, and a rep reads the factors. Not
    their labels alone: a recency label counts the days ("Not contacted in the 12 days since capture"), so
    it would publish every stale lead every day; the label kept is true as of the score's `scored_at`."""
    read, result = rescored.read, rescored.result
    return (read.score != result.score or read.model_version != result.model_version
            or [(f["feature"], f["contribution"]) for f in read.factors]
            != [(f.feature, f.contribution) for f in result.factors])


def opportunity_rescored(model: LearnedModel | None, tallies: store.WinTallies, as_of: datetime,
                         opportunity_id: str, known: store.KnownOpportunity) -> Rescored | None:
    """An open deal's win probability as of `as_of` (age in stage, the deal's age and activity recency move
    without an event; the owner's win rate and the active model may have changed); None for a deal closed
    meanwhile or whose latest event is after `as_of`, which is left as it is."""
    features = known.features
    if (known.scored is None or not is_open(features)
            or (features.last_event_at is not None and features.last_event_at > as_of)):
        return None
    won, lost = tallies.by_owner.get(features.owner_id or "", (0, 0))
    moment = OpportunityMoment(features, as_of, smoothed_win_rate(won, lost, *tallies.overall))
    return Rescored(opportunity_id, known.scored, features, score_moment(model, moment), moment)


def opportunity_score_changed(rescored: Rescored) -> bool:
    """Whether a deal's integer win probability changed (a learned model's factors move with every hour of
    age: publishing them would publish nearly every deal on every pass)."""
    return rescored.read.score != rescored.result.score


# The next batch of open subjects after an id, in id order: each with its id and what re-scores it as of
# the pass's moment (called between yields to the event loop; None: not re-scored).
OpenBatch = list[tuple[str, Callable[[], Rescored | None]]]


@dataclass(frozen=True)
class OpenSubjects:
    """One kind of subject the periodic re-scoring walks: how it reads them, tells a changed score, and locks
    and writes the changed ones."""

    kind: str  # lead / opportunity: the metric's label and the scored event's `<kind>_id`
    event_type: str
    read: Callable[[Connection, str, int, datetime], Awaitable[OpenBatch]]
    changed: Callable[[Rescored], bool]
    # the sequences of the subjects no other transaction holds, locked (the others are left out)
    lock_sequences: Callable[[Connection, list[str]], Awaitable[dict[str, int]]]
    save: Callable[[Connection, list[store.Computed]], Awaitable[None]]


async def _open_leads(conn: Connection, after: str, limit: int, as_of: datetime) -> OpenBatch:
    found = await store.open_leads(conn, after, limit)
    if not found:
        return []
    model = await _active_model(conn, "lead")
    return [(lead_id, partial(lead_rescored, model, as_of, lead_id, features, read))
            for lead_id, features, read in found]


async def _open_opportunities(conn: Connection, after: str, limit: int, as_of: datetime) -> OpenBatch:
    found = await store.open_opportunities(conn, after, limit)
    if not found:
        return []
    model = await _active_model(conn, "opportunity")
    tallies = await store.win_tallies(conn, [k.features.owner_id for _, k in found if k.features.owner_id])
    return [(opportunity_id, partial(opportunity_rescored, model, tallies, as_of, opportunity_id, known))
            for opportunity_id, known in found]


async def _save_leads(conn: Connection, computed: list[store.Computed]) -> None:
    await store.save_leads(conn, computed, {})


OPEN_LEADS = OpenSubjects("lead", LEAD_SCORED, _open_leads, lead_score_changed, store.lock_open_lead_sequences,
                          _save_leads)
OPEN_OPPORTUNITIES = OpenSubjects("opportunity", OPPORTUNITY_SCORED, _open_opportunities, opportunity_score_changed,
                                  store.lock_opportunity_sequences, store.save_opportunities)


async def rescore_open(db: Database, subjects: OpenSubjects, as_of: datetime, batch_size: int) -> Rescoring:
    """Re-score every open subject of a kind as of `as_of`, `batch_size` at a time in id order; publish only
    the changed scores. The scores are computed without a lock (yielding to the event loop as they go); only
    the changed subjects are locked and written, in one short transaction a batch, and a subject an event
    re-scored meanwhile, or one a consumer transaction holds, is left to that event's score. A subject whose
    latest event (a lead: its latest score) is after `as_of` is left as it is (its state at `as_of` is not
    kept)."""
    examined = rescored = 0
    after = ""
    while True:
        async with db.statements() as conn:
            found = await subjects.read(conn, after, batch_size, as_of)
        if not found:
            break
        after = found[-1][0]
        changed: list[Rescored] = []
        for i, (_, rescore) in enumerate(found):
            if i % RESCORE_YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a learned score costs about 0.3 ms: let the consumer and HTTP run
            result = rescore()
            if result is None:
                continue
            examined += 1
            if subjects.changed(result):
                changed.append(result)
        if changed:
            rescored += await _save_rescored(db, subjects, changed, as_of)
    return Rescoring(as_of, examined, rescored)


RESCORE_YIELD_EVERY = 50  # subjects scored between two yields to the event loop


async def _save_rescored(db: Database, subjects: OpenSubjects, changed: list[Rescored], as_of: datetime) -> int:
    """Write and publish the changed scores whose subject is as it was read; return how many."""
    async with db.transaction() as tx:
        sequences = await subjects.lock_sequences(tx.conn, [r.subject_id for r in changed])
        computed: list[store.Computed] = []
        for rescored in changed:
            if sequences.get(rescored.subject_id) != rescored.read.sequence:
                continue  # held, re-scored or closed by an event meanwhile: its score is that event's
            computed.append(_computed(rescored.subject_id, rescored.features, rescored.read, rescored.result, as_of,
                                      f"rescore-{uuid.uuid4()}", "rescore", rescored.open_moment))
            metrics.scores_computed.labels(subjects.kind, rescored.result.model_version).inc()
            data = _scored_data(subjects.kind, rescored.subject_id, rescored.result, rescored.read, as_of,
                                rescored.features.owner_id)
            tx.publish(subjects.event_type, rescored.subject_id, data, sequence=computed[-1].sequence)
        await subjects.save(tx.conn, computed)
    return len(computed)


# --- account value tiers ---------------------------------------------------------------------

ACCOUNT_TIERED = "sales.account.tiered.v1"


async def _retier_account(
    tx: Transaction, event: CloudEvent, change: Callable[[list[Contract]], list[Contract]], owner: str | None
) -> None:
    account_id = str(event.data["account_id"])
    current = await store.lock_account(tx.conn, account_id)
    contracts = change(current.contracts if current else [])
    now = _now()
    await _save_tier(tx, account_id, current, contracts, account_tier(contracts, now), now,
                     owner or (current.owner_id if current else None), event)


async def _save_tier(
    tx: Transaction, account_id: str, current: store.Tiered | None, contracts: list[Contract],
    tier: AccountTier | None, now: datetime, owner: str | None, cause: CloudEvent | None,
) -> None:
    """Keep the account's tier and publish it with the next sequence. `cause`: the contract event that moved
    it; None when time passing did (the event then names no contract)."""
    sequence = (current.sequence if current else 0) + 1
    await store.save_account(tx.conn, account_id, owner, contracts, tier, now, sequence)
    cause_data = cause.data if cause else {}
    data = {
        "account_id": account_id,
        "value_tier": tier.value_tier if tier else None,
        "buyer_type": tier.buyer_type if tier else None,
        "previous_value_tier": current.value_tier if current else None,
        "previous_buyer_type": current.buyer_type if current else None,
        "model_version": TIER_VERSION,
        "amount_12m": f"{tier.amount_12m:.2f}" if tier else "0.00",
        "currency": tier.currency if tier else str(cause_data.get("currency") or "CNY"),
        "contracts_12m": tier.contracts_12m if tier else 0,
        "contracts_total": tier.contracts_total if tier else 0,
        "last_signed_at": _ts(tier.last_signed_at) if tier else None,
        "factors": [f.as_dict() for f in tier.factors] if tier else [],
        "tiered_at": _ts(now),
        "owner_id": owner,
    }
    if "contract_id" in cause_data:
        data["cause_contract_id"] = str(cause_data["contract_id"])
    tx.publish(ACCOUNT_TIERED, account_id, data, sequence=sequence)


async def contract_signed(tx: Transaction, event: CloudEvent) -> None:
    data = event.data
    signed = Contract(str(data["contract_id"]), Decimal(str(data["amount"])), str(data["currency"]),
                      data_time(data.get("signed_at"), event.time))
    await _retier_account(
        tx, event, lambda contracts: [c for c in contracts if c.contract_id != signed.contract_id] + [signed],
        str(data.get("owner_id") or "") or None,
    )


async def contract_terminated(tx: Transaction, event: CloudEvent) -> None:
    gone = str(event.data["contract_id"])
    await _retier_account(tx, event, lambda contracts: [c for c in contracts if c.contract_id != gone], None)


async def retier_accounts(db: Database, as_of: datetime, batch_size: int) -> Rescoring:
    """Re-tier every account with a tier as of `as_of`, `batch_size` at a time in id order, publishing those
    time alone moved (`tier_as_time_passed`). As the re-scoring: read without a lock, then only the moved
    accounts are locked and written, each only if no contract event re-tiered it meanwhile (and one a
    consumer transaction holds is left to it), so passes at once publish a move once."""
    examined = retiered = 0
    after = ""
    while True:
        async with db.statements() as conn:
            found = await store.tiered_accounts(conn, after, batch_size)
        if not found:
            break
        after = found[-1].account_id
        examined += len(found)
        moved = [(account, tier) for account in found
                 if (tier := tier_as_time_passed(account.contracts, account.tiered_at, as_of)) is not None]
        if moved:
            async with db.transaction() as tx:
                sequences = await store.lock_account_sequences(tx.conn, [account.account_id for account, _ in moved])
                for account, tier in moved:
                    if sequences.get(account.account_id) == account.sequence:
                        await _save_tier(tx, account.account_id, account, account.contracts, tier, as_of,
                                         account.owner_id, None)
                        retiered += 1
    return Rescoring(as_of, examined, retiered)


# --- the learned models ----------------------------------------------------------------------

KINDS = ("lead", "opportunity")
DEFAULT_VERSION = {"lead": MODEL_VERSION, "opportunity": MODEL_VERSION}


def _rules_probability(example: Example) -> float:
    """The rules' probability for a held-out example, as they would have scored it while still open."""
    features = example.features
    if isinstance(features, OpportunityMoment):
        # The moment of its last score while open, as the learned model sees it: neither the lost event's
        # competitor nor the time the deal took to close (before moments were kept, the rules read both and
        # scored 0.83 on the CRM replay's held-out slice, where every lost deal names a competitor).
        return score_opportunity(features.features, features.as_of).score / 100
    assert isinstance(features, LeadFeatures)
    return score_lead(features, example.observed_at).score / 100


def _features_of(kind: str, values: dict[str, Any]) -> LeadFeatures | OpportunityMoment:
    return LeadFeatures.from_json(values) if kind == "lead" else OpportunityMoment.from_json(values)


async def train_model(db: Database, kind: str) -> dict[str, Any]:
    """Train a candidate on the `kind`'s outcomes; promote it only if it beats the active model (or the
    rules) on the held-out slice. The fit runs in a worker thread, so event handling and HTTP go on meanwhile.
    """
    async with db.pool.acquire() as conn:
        rows = await store.examples(conn, kind)
        current_model = await _active_model(conn, kind)
    examples = [Example(_features_of(kind, json.loads(r["features"])), r["positive"], r["observed_at"])
                for r in rows]

    def current(example: Example) -> float:
        if current_model is not None:
            return current_model.probability(example.features)
        return _rules_probability(example)

    trained_at = _now()
    # boosted trees for leads (gb-...); for opportunities learning.py picks trees or a logistic regression
    # and names it gb-opp-... or lr-opp-...
    prefix = "gb" if kind == "lead" else "opp"
    version = f"{prefix}-{trained_at:%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    try:
        model, evaluation = await asyncio.to_thread(train, examples, version, current)
    except NotEnoughOutcomes as exc:
        metrics.training_runs.labels(kind, "not_enough_outcomes").inc()
        raise DomainError(f"not trained: {exc}") from None
    current_version = current_model.version if current_model is not None else DEFAULT_VERSION[kind]
    async with db.transaction() as tx:
        await store.save_model(tx.conn, model.version, kind, model.algorithm, model.to_json(), trained_at,
                               asdict(evaluation), current_version, evaluation.beats_current)
    metrics.training_runs.labels(kind, "promoted" if evaluation.beats_current else "kept_current").inc()
    if evaluation.beats_current:
        metrics.model_auc.labels(kind).set(evaluation.auc)
    async with db.pool.acquire() as conn:
        [entry] = [r for r in await store.models(conn, kind) if r["version"] == model.version]
    return dict(entry)


async def train_model_if_due(db: Database, kind: str, min_new_outcomes: int) -> dict[str, Any] | None:
    """Train (as on demand) when at least `min_new_outcomes` outcomes of the kind arrived since its newest model."""
    async with db.pool.acquire() as conn:
        new = await store.outcomes_since_last_model(conn, kind)
    if new < max(1, min_new_outcomes):
        return None
    try:
        return await train_model(db, kind)
    except DomainError:
        return None  # not enough outcomes of both kinds yet: counted in the training-runs metric


async def activate_model(db: Database, kind: str, version: str) -> None:
    """Roll forward or back: make `version` active; `rules-v1` goes back to the rules."""
    async with db.transaction() as tx:
        if not await store.activate_model(tx.conn, kind, None if version == DEFAULT_VERSION[kind] else version):
            raise NotFound(f"no {kind} model {version}")
        auc = await tx.conn.fetchval("SELECT auc FROM models WHERE version = $1", version)
    metrics.model_auc.labels(kind).set(float("nan") if auc is None else auc)


HANDLERS = {
    "sales.lead.captured.v1": lead_captured,
    "sales.lead.engaged.v1": lead_engaged,
    "sales.lead.contacted.v1": lead_contacted,
    "sales.lead.grade_changed.v1": lead_grade_changed,
    "sales.lead.assigned.v1": lead_assigned,
    "sales.lead.converted.v1": lead_converted,
    "sales.lead.disqualified.v1": lead_disqualified,
    LEAD_MERGED: lead_merged,
    "sales.opportunity.created.v1": opportunity_created,
    "sales.opportunity.stage_changed.v1": opportunity_stage_changed,
    "sales.opportunity.assessed.v1": opportunity_assessed,
    "sales.opportunity.updated.v1": opportunity_updated,
    "sales.opportunity.repriced.v1": opportunity_repriced,
    "sales.opportunity.won.v1": opportunity_won,
    "sales.opportunity.lost.v1": opportunity_lost,
    "sales.contract.signed.v1": contract_signed,
    "sales.contract.terminated.v1": contract_terminated,
}
