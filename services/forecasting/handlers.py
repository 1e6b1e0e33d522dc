"""One function per consumed event: update the deal, recompute the periods it touches, publish what moved.

Every handler runs in the transaction the framework opened for the event (which also records the
event in the inbox), so a redelivered event changes nothing and publishes nothing twice. Events
about an opportunity not seen yet (the service joined late, or a score overtook the opportunity's
creation) start from an empty deal rather than failing.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from services.forecasting import bookings, metrics, store
from services.forecasting.bookings import BookingsForecast, DealFact
from services.forecasting.config import forecast_settings
from services.forecasting.domain import (
    By,
    DealGroup,
    DealState,
    Figures,
    OwnerSplit,
    Period,
    Placement,
    affected_owners,
    affected_periods,
    affected_products,
    credited_splits,
    money,
    periods_of,
    product_key,
    quota_for,
    roll_up,
    rolled_quota,
)
from shared.context import Cause, current_cause
from shared.db import Connection, Database, Transaction
from shared.events.envelope import CloudEvent, data_time
from shared.org import Organisation, cached_organisation
from shared.settings import get_settings

FORECAST_UPDATED = "sales.forecast.updated.v1"
BY_OWNER = (By.OWNER, By.TEAM, By.REGION)  # the roll-ups that follow a deal's owners
STAGE_PROBABILITY = {"prospecting": 10, "bidding": 30, "negotiation": 60, "contract": 80, "won": 100, "lost": 0}


def _now() -> datetime:
    return datetime.now(UTC)


def organisation() -> Organisation:
    return cached_organisation(get_settings().org_file)


def placement(org: Organisation, owner_id: str) -> Placement:
    user = org.user(owner_id)
    if user is None:
        return Placement(None, None)
    team = org.teams.get(user.team) if user.team else None
    return Placement(user.team, user.region or (team.region if team else None))


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _day(value: Any) -> date | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


# --- the forecast rows ------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    figures: Figures
    quota: Decimal | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "open_amount": money(self.figures.open_amount),
            "weighted_pipeline": money(self.figures.weighted_pipeline),
            "best_case": money(self.figures.best_case),
            "commit": money(self.figures.commit),
            "closed_won": money(self.figures.closed_won),
            "quota": None if self.quota is None else money(self.quota),
            "booked": money(self.figures.booked),
            "deals": self.figures.deals,
        }


async def all_quotas(conn: Connection, org: Organisation) -> dict[tuple[str, str], Decimal]:
    """The organisation file's quotas, overridden by those set over the API."""
    quotas = {(q.user, q.period): q.amount for q in org.quotas}
    quotas.update(await store.quotas(conn))
    return quotas


async def forecast_rows(
    conn: Connection, org: Organisation, period: Period, by: By, visible: set[str] | None,
) -> list[Row]:
    """The rows of a period rolled up by owner, team, region or product, over the shares of the owners in
    `visible` (None: all)."""
    return rows_of(org, period, by, await store.deal_groups(conn, period), await all_quotas(conn, org), visible)


def figures_per_owner(org: Organisation, groups: list[DealGroup]) -> dict[str, Figures]:
    """Each owner's share of the figures."""
    return roll_up(groups, By.OWNER, lambda owner: placement(org, owner))


def rows_of(
    org: Organisation, period: Period, by: By, groups: list[DealGroup], quotas: dict[tuple[str, str], Decimal],
    visible: set[str] | None, keys: set[str] | None = None,
) -> list[Row]:
    """A row for every key with a deal or a quota in the period (`keys` narrows them). Each owner is
    credited their split of a shared deal; the quota of a team or region is the sum of its owners'
    quotas; a product has none."""
    figures = roll_up(groups, by, lambda owner: placement(org, owner), visible)
    with_quota: dict[str, set[str]] = {}
    if by is not By.PRODUCT:
        for owner in {o for o, _ in quotas if visible is None or o in visible}:
            if quota_for(owner, period, quotas) is not None:
                with_quota.setdefault(placement(org, owner).key(by, owner), set()).add(owner)
    rows = [
        Row(key, figures.get(key, Figures()), rolled_quota(with_quota.get(key, set()), period, quotas))
        for key in set(figures) | set(with_quota)
        if keys is None or key in keys
    ]
    return sorted(rows, key=lambda r: r.key)


@dataclass
class _Pending:
    """The rows the events of one transaction moved: recomputed once, before it commits.

    A consumed batch applies many events in one transaction; recomputing per event would read and
    write the same rows again and again. Each row published carries as its cause the first event of
    the transaction that touched it (so event -> forecast latency is measured from the earliest)."""

    touched: dict[tuple[Period, By, str], Cause | None]
    events: list[CloudEvent]


def schedule_refresh(
    tx: Transaction, periods: Iterable[Period], event: CloudEvent | None, *,
    owners: Iterable[str | None] = (), products: Iterable[str] = (),
) -> None:
    """Have the rows of these owners (and their teams and regions) and of these products in these periods
    recomputed before the transaction commits, and published if they moved."""
    pending: _Pending | None = tx.state.get("forecasting.refresh")
    if pending is None:
        pending = tx.state["forecasting.refresh"] = _Pending({}, [])
        tx.before_commit(lambda: _flush(tx, pending))
    cause = current_cause.get()
    org = organisation()
    keys = {(by, placement(org, owner).key(by, owner)) for owner in owners if owner for by in BY_OWNER}
    keys |= {(By.PRODUCT, product) for product in products}
    for period in periods:
        for by, key in keys:
            pending.touched.setdefault((period, by, key), cause)
    if event is not None:
        pending.events.append(event)


async def _flush(tx: Transaction, pending: _Pending) -> None:
    deals: _Deals | None = tx.state.get("forecasting.deals")
    if deals is not None:
        await deals.save(tx)
    await refresh(tx, pending.touched)
    now = _now()
    for event in pending.events:
        metrics.update_lag.observe(max(0.0, (now - event.time).total_seconds()))


async def refresh(tx: Transaction, touched: dict[tuple[Period, By, str], Cause | None]) -> int:
    """Recompute the touched rows (months, quarters and years; by owner, team, region and product);
    publish those whose figures moved since last published. Returns how many rows were published."""
    org = organisation()
    published = 0
    now = _now()
    quotas: dict[tuple[str, str], Decimal] | None = None
    for period in sorted({p for p, _, _ in touched}):
        metrics.recomputations.inc()
        groups = await store.deal_groups(tx.conn, period)
        quotas = quotas if quotas is not None else await all_quotas(tx.conn, org)
        current: dict[tuple[str, str], tuple[Row, Cause | None]] = {}
        for by in By:
            keys = {key: cause for (p, b, key), cause in touched.items() if p == period and b is by}
            if not keys:
                continue
            rows = {r.key: r for r in rows_of(org, period, by, groups, quotas, None, set(keys))}
            current.update({(by.value, key): (rows.get(key, Row(key, Figures(), None)), cause)
                            for key, cause in keys.items()})
        published += await _publish_moved(tx, period, current, now)
    return published


async def _publish_moved(
    tx: Transaction, period: Period, current: dict[tuple[str, str], tuple[Row, Cause | None]], now: datetime
) -> int:
    """Publish (and store) the rows whose figures differ from those last published."""
    last = await store.published_rows(tx.conn, period.name, sorted(current))
    moved: list[tuple[str, str, dict[str, Any], int, Cause | None]] = []
    for (by, key), (row, cause) in sorted(current.items()):
        figures = row.as_dict()
        before = last.get((by, key))
        if before is None and row.figures == Figures() and row.quota is None:
            continue  # nothing to say about a row never published that is still empty
        if before is not None and before[0] == figures:
            continue
        moved.append((by, key, figures, (before[1] if before else 0) + 1, cause))
    if not moved:
        return 0
    await store.save_published_rows(
        tx.conn, period.name,
        [(by, key, figures, sequence, cause.causation_id if cause else None)
         for by, key, figures, sequence, cause in moved], now)
    currency = forecast_settings().currency
    stamp = now.isoformat().replace("+00:00", "Z")
    for by, key, figures, sequence, cause in moved:
        data = {"period": period.name, "by": by, **figures, "currency": currency, "updated_at": stamp}
        token = current_cause.set(cause) if cause is not None else None
        try:
            tx.publish(FORECAST_UPDATED, f"{period.name}/{by}/{key}", data, sequence=sequence)
        finally:
            if token is not None:
                current_cause.reset(token)
        metrics.rows_published.labels(by).inc()
    return len(moved)


# --- opportunities ----------------------------------------------------------------------------


def _opportunity_id(event: CloudEvent) -> str:
    return str(event.data.get("opportunity_id") or event.subject)


def _with_common_fields(deal: DealState, data: dict[str, Any]) -> DealState:
    """Amount, currency, owner, expected close date, campaign and product when the event carries them."""
    changes: dict[str, Any] = {}
    amount = _decimal(data.get("amount"))
    if amount is not None:
        changes["amount"] = amount
    if isinstance(data.get("currency"), str):
        changes["currency"] = data["currency"]
    if "expected_close_date" in data:
        changes["expected_close_date"] = _day(data["expected_close_date"])
    if isinstance(data.get("campaign_id"), str) and data["campaign_id"]:
        changes["campaign_id"] = data["campaign_id"]
    if "product" in data:  # carried by every opportunity event of a producer that knows products
        changes["product"] = data["product"] if isinstance(data["product"], str) and data["product"] else None
    changed = deal.changed(**changes) if changes else deal
    owner = data.get("owner_id")
    return changed.owned_by(owner) if isinstance(owner, str) and owner else changed


def _staged(deal: DealState, stage: str | None, probability: Any) -> DealState:
    if not stage:
        return deal
    given = _decimal(probability)
    default = Decimal(STAGE_PROBABILITY.get(stage, int(deal.stage_probability)))
    return deal.changed(stage=stage, stage_probability=given if given is not None else default)


@dataclass
class _Deals:
    """The deals a transaction's events touch: loaded (locked) once for its batch, saved once before it commits."""

    known: dict[str, DealState | None]
    changed: dict[str, DealState]
    created_at: dict[str, datetime]
    transitions: list[tuple[str, str, str | None, str | None, str, datetime]]

    async def get(self, tx: Transaction, opportunity_id: str) -> DealState | None:
        if opportunity_id not in self.known:  # an event outside the batch the inbox announced
            self.known.update(await store.lock_deals(tx.conn, [opportunity_id]))
        return self.known[opportunity_id]

    def put(self, deal: DealState) -> None:
        self.known[deal.opportunity_id] = self.changed[deal.opportunity_id] = deal

    async def save(self, tx: Transaction) -> None:
        settings = forecast_settings()
        rates, rules, now = settings.conversion(), settings.category_rules(), _now()
        await store.save_deals(tx.conn, [
            (deal, rates.convert(deal.amount, deal.currency),
             rules.category(deal.status, deal.stage, deal.probability), self.created_at.get(deal.opportunity_id))
            for deal in self.changed.values()
        ], now)
        await store.record_transitions(tx.conn, self.transitions)


async def _deals(tx: Transaction) -> _Deals:
    deals: _Deals | None = tx.state.get("forecasting.deals")
    if deals is None:
        ids = sorted({_opportunity_id(e) for e in tx.batch if e.type in HANDLERS and e.type.startswith("sales.opp")})
        deals = tx.state["forecasting.deals"] = _Deals(await store.lock_deals(tx.conn, ids), {}, {}, [])
    return deals  # saved by the refresh every change schedules, before it reads them


async def _apply(
    tx: Transaction, event: CloudEvent, change: Callable[[DealState], DealState], *, created: bool = False,
    fields: dict[str, Any] | None = None,
) -> DealState:
    """Apply an opportunity event to its deal: the common `fields` (default: the event's data), then `change`."""
    opportunity_id = _opportunity_id(event)
    deals = await _deals(tx)
    before = await deals.get(tx, opportunity_id)
    common = event.data if fields is None else fields
    after = change(_with_common_fields(before or DealState(opportunity_id), common))
    deals.put(after)
    if created:
        deals.created_at.setdefault(opportunity_id, event.time)
    if before is None or before.stage != after.stage:
        deals.transitions.append((event.id, opportunity_id, after.owner_id, before.stage if before else None,
                                  after.stage, event.time))
    periods = affected_periods(before, after)
    if before is not None and (before.credits, before.product) != (after.credits, after.product):
        # who is credited (or under which product) moved: so do the rows of its bookings' periods
        periods |= {p for day in await store.signed_days(tx.conn, opportunity_id) for p in periods_of(day)}
    schedule_refresh(tx, periods, event, owners=affected_owners(before, after),
                     products=affected_products(before, after))
    return after


async def opportunity_created(tx: Transaction, event: CloudEvent) -> None:
    data = event.data
    await _apply(tx, event, lambda d: _staged(d, str(data.get("stage") or "prospecting"), data.get("probability"))
                 .changed(status=str(data.get("status") or "open")), created=True)


async def opportunity_stage_changed(tx: Transaction, event: CloudEvent) -> None:
    data = event.data
    await _apply(tx, event, lambda d: _staged(d, str(data["to_stage"]), data.get("probability")))


def _closed(outcome: str, event: CloudEvent) -> Callable[[DealState], DealState]:
    closed_on = data_time(event.data.get("closed_at"), event.time).date()
    return lambda d: _staged(d, outcome, None).changed(status=outcome, closed_on=closed_on)


async def opportunity_won(tx: Transaction, event: CloudEvent) -> None:
    await _apply(tx, event, _closed("won", event))


async def opportunity_lost(tx: Transaction, event: CloudEvent) -> None:
    await _apply(tx, event, _closed("lost", event))


def _status(status: str) -> Callable[[DealState], DealState]:
    return lambda d: d.changed(status=status)


async def opportunity_suspended(tx: Transaction, event: CloudEvent) -> None:
    await _apply(tx, event, _status("suspended"))


async def opportunity_reactivated(tx: Transaction, event: CloudEvent) -> None:
    await _apply(tx, event, _status("open"))


async def opportunity_terminated(tx: Transaction, event: CloudEvent) -> None:
    await _apply(tx, event, _status("terminated"))


async def opportunity_restated(tx: Transaction, event: CloudEvent) -> None:
    """A change without a stage move, an edit (`updated`) or the stage's new default probability (`repriced`):
    its amount, currency, expected close date and product are the common fields every opportunity event
    carries, and it names the stage the deal is in with that stage's probability."""
    data = event.data
    await _apply(tx, event, lambda d: _staged(d, data.get("stage"), data.get("probability")))


async def opportunity_owners_changed(tx: Transaction, event: CloudEvent) -> None:
    splits = credited_splits([OwnerSplit(str(e["owner_id"]), int(e["split"])) for e in event.data["owners"]])
    await _apply(tx, event, lambda d: d.shared_by(splits))


async def opportunity_scored(tx: Transaction, event: CloudEvent) -> None:
    score = _decimal(event.data.get("score"))
    owner = event.data.get("owner_id")

    def scored(deal: DealState) -> DealState:
        # The score's owner is the scoring service's picture, which may predate a change of owners
        # (it does not read them): it only places a deal not seen yet.
        placed = deal.owned_by(owner) if deal.owner_id is None and isinstance(owner, str) and owner else deal
        return placed.changed(scored_probability=score)

    # A score carries the owner and the probability only: not the amount or the dates.
    await _apply(tx, event, scored, fields={})


# --- contracts --------------------------------------------------------------------------------


async def contract_signed(tx: Transaction, event: CloudEvent) -> None:
    data = event.data
    amount = _decimal(data.get("amount")) or Decimal(0)
    currency = str(data.get("currency") or "CNY")
    signed_on = data_time(data.get("signed_at"), event.time).date()
    owner = data.get("owner_id")
    await store.save_booking(tx.conn, str(data.get("contract_id") or event.subject), data.get("opportunity_id"),
                             owner, amount, currency, forecast_settings().conversion().convert(amount, currency),
                             signed_on)
    await refresh_booking(tx, data.get("opportunity_id"), owner, signed_on, event)


async def contract_terminated(tx: Transaction, event: CloudEvent) -> None:
    booking = await store.terminate_booking(tx.conn, str(event.data.get("contract_id") or event.subject))
    if booking is not None:
        await refresh_booking(tx, booking["opportunity_id"], booking["owner_id"], booking["signed_on"], event)


async def refresh_booking(
    tx: Transaction, opportunity_id: str | None, owner: str | None, signed_on: date, event: CloudEvent | None
) -> None:
    """A booking counts for its deal's owners (by their splits) and product, else its contract's owner."""
    deal = await (await _deals(tx)).get(tx, opportunity_id) if opportunity_id else None
    owners = [owner, *(c.owner_id for c in deal.credits)] if deal else [owner]
    schedule_refresh(tx, periods_of(signed_on), event, owners=owners,
                     products=[product_key(deal.product if deal else None)])


# --- leads and campaigns (the marketing side of the funnel) -----------------------------------


async def lead_captured(tx: Transaction, event: CloudEvent) -> None:
    data = event.data
    await store.save_lead(tx.conn, str(data.get("lead_id") or event.subject), data.get("source"), data.get("grade"),
                          data.get("campaign_id"), data.get("owner_id"),
                          data_time(data.get("captured_at"), event.time).date())


async def lead_assigned(tx: Transaction, event: CloudEvent) -> None:
    """A lead given to another owner: its conversion and its campaign's cost count under them from now."""
    data = event.data
    await store.assign_lead(tx.conn, str(data.get("lead_id") or event.subject), str(data["owner_id"]))


async def lead_merged(tx: Transaction, event: CloudEvent) -> None:
    """A duplicate folded into another lead is no lead of its own in the conversion and campaign figures; the
    survivor takes its campaign when it had none (the event names the survivor's campaign after the merge,
    since the leads service added it: older merges leave the survivor's as it was)."""
    data = event.data
    survivor = str(data.get("lead_id") or event.subject)
    await store.merge_lead(tx.conn, str(data["merged_lead_id"]), survivor)
    if data.get("campaign_id"):
        await store.attribute_lead(tx.conn, survivor, str(data["campaign_id"]))


async def lead_converted(tx: Transaction, event: CloudEvent) -> None:
    data = event.data
    await store.convert_lead(tx.conn, str(data.get("lead_id") or event.subject),
                             data_time(data.get("converted_at"), event.time).date(), data.get("campaign_id"))


async def campaign_changed(tx: Transaction, event: CloudEvent) -> None:
    data = event.data
    await store.save_campaign(
        tx.conn, str(data.get("campaign_id") or event.subject), str(data.get("name") or ""), data.get("channel"),
        _decimal(data.get("actual_cost")) or Decimal(0), str(data.get("currency") or "CNY"),
        _day(data.get("starts_on")), _day(data.get("ends_on")))


HANDLERS = {
    "sales.opportunity.created.v1": opportunity_created,
    "sales.opportunity.stage_changed.v1": opportunity_stage_changed,
    "sales.opportunity.won.v1": opportunity_won,
    "sales.opportunity.lost.v1": opportunity_lost,
    "sales.opportunity.suspended.v1": opportunity_suspended,
    "sales.opportunity.reactivated.v1": opportunity_reactivated,
    "sales.opportunity.terminated.v1": opportunity_terminated,
    "sales.opportunity.owners_changed.v1": opportunity_owners_changed,
    "sales.opportunity.updated.v1": opportunity_restated,
    "sales.opportunity.repriced.v1": opportunity_restated,
    "sales.opportunity.scored.v1": opportunity_scored,
    "sales.contract.signed.v1": contract_signed,
    "sales.contract.terminated.v1": contract_terminated,
    "sales.lead.captured.v1": lead_captured,
    "sales.lead.assigned.v1": lead_assigned,
    "sales.lead.converted.v1": lead_converted,
    "sales.lead.merged.v1": lead_merged,
    "sales.campaign.created.v1": campaign_changed,
    "sales.campaign.updated.v1": campaign_changed,
}


# --- quotas -----------------------------------------------------------------------------------


async def set_quota(db: Database, owner_id: str, period: Period, amount: Decimal, set_by: str) -> None:
    """Set an owner's quota for a period; republish the rows whose quota moved (that period, the periods
    it lies in and its parts)."""
    async with db.transaction() as tx:
        await store.set_quota(tx.conn, owner_id, period.name, amount, set_by, _now())
        schedule_refresh(tx, [period, *period.parents, *period.children], None, owners=[owner_id])


# --- bookings forecast ------------------------------------------------------------------------


async def forecast_bookings(db: Database, period: Period, as_of: date | None = None) -> BookingsForecast | None:
    """Forecast a month's closed-won value from the deals known now, and store the forecast made."""
    async with db.transaction() as tx:
        facts = [DealFact(r["amount"], r["opened_on"], r["closed_on"], r["status"])
                 for r in await store.deal_facts(tx.conn)]
        made = bookings.forecast_bookings(facts, period)
        if made is not None:
            await store.save_bookings_forecast(
                tx.conn, made.period, _now(), as_of or _now().date(), made.point, made.low, made.high, made.method,
                made.pipeline_estimate, forecast_settings().currency)
    return made
