"""Forecast maths: periods, forecast categories, weighted figures, roll-ups and quotas. No I/O.

An opportunity counts in the period of its expected close date while it is open, and in the
period of the day it was won once won. Amounts are `Decimal`s in the reporting currency.
"""

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum

CENT = Decimal("0.01")
NO_KEY = "unassigned"  # the team or region of an owner the organisation file does not place
NO_PRODUCT = "unspecified"  # the product key of a deal whose events name no product


class InvalidPeriod(ValueError):
    pass


class PeriodKind(StrEnum):
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"


@dataclass(frozen=True, order=True)
class Period:
    """A calendar month (`2026-11`), quarter (`2026-Q4`) or year (`2026`)."""

    start: date
    end: date  # inclusive
    kind: PeriodKind

    @property
    def name(self) -> str:
        if self.kind is PeriodKind.MONTH:
            return f"{self.start.year:04d}-{self.start.month:02d}"
        if self.kind is PeriodKind.QUARTER:
            return f"{self.start.year:04d}-Q{(self.start.month - 1) // 3 + 1}"
        return f"{self.start.year:04d}"

    def __str__(self) -> str:
        return self.name

    def contains(self, day: date) -> bool:
        return self.start <= day <= self.end

    @property
    def parents(self) -> list["Period"]:
        """The quarter and year a month lies in; the year of a quarter."""
        if self.kind is PeriodKind.MONTH:
            return [quarter_of(self.start), year_of(self.start)]
        if self.kind is PeriodKind.QUARTER:
            return [year_of(self.start)]
        return []

    @property
    def children(self) -> list["Period"]:
        """The months of a quarter; the quarters and months of a year."""
        months = [month_of(date(self.start.year, m, 1)) for m in range(self.start.month, self.end.month + 1)]
        if self.kind is PeriodKind.QUARTER:
            return months
        if self.kind is PeriodKind.YEAR:
            return [quarter_of(date(self.start.year, m, 1)) for m in (1, 4, 7, 10)] + months
        return []

    def next(self) -> "Period":
        return parse_period_like(self, self.end + timedelta(days=1))


_PERIOD = re.compile(r"^(\d{4})(?:-(0[1-9]|1[0-2])|-Q([1-4]))?$")


def _month_end(year: int, month: int) -> date:
    return (date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)) - timedelta(days=1)


def month_of(day: date) -> Period:
    return Period(date(day.year, day.month, 1), _month_end(day.year, day.month), PeriodKind.MONTH)


def quarter_of(day: date) -> Period:
    first = (day.month - 1) // 3 * 3 + 1
    return Period(date(day.year, first, 1), _month_end(day.year, first + 2), PeriodKind.QUARTER)


def year_of(day: date) -> Period:
    return Period(date(day.year, 1, 1), date(day.year, 12, 31), PeriodKind.YEAR)


def parse_period_like(period: Period, day: date) -> Period:
    return {PeriodKind.MONTH: month_of, PeriodKind.QUARTER: quarter_of, PeriodKind.YEAR: year_of}[period.kind](day)


def parse_period(text: str) -> Period:
    match = _PERIOD.match(text.strip())
    if match is None:
        raise InvalidPeriod(f"{text!r} is not a period: use a month (2026-11), a quarter (2026-Q4) or a year (2026)")
    year, month, quarter = match.groups()
    if month:
        return month_of(date(int(year), int(month), 1))
    if quarter:
        return quarter_of(date(int(year), (int(quarter) - 1) * 3 + 1, 1))
    return year_of(date(int(year), 1, 1))


def periods_of(day: date) -> list[Period]:
    """The month, quarter and year a day lies in."""
    return [month_of(day), quarter_of(day), year_of(day)]


# --- forecast categories ----------------------------------------------------------------------


class Category(StrEnum):
    PIPELINE = "pipeline"
    BEST_CASE = "best_case"
    COMMIT = "commit"
    CLOSED_WON = "closed_won"
    OMITTED = "omitted"  # lost, terminated or suspended: out of every figure


@dataclass(frozen=True)
class CategoryRules:
    """Which open deals are commit or best case. By stage; a deal's own win probability can lift it.

    Defaults: `contract` is commit, `negotiation` best case, earlier stages pipeline; a deal whose
    win probability reaches `commit_min_probability` (when set) is commit whatever its stage.
    """

    commit_stages: frozenset[str] = frozenset({"contract"})
    best_case_stages: frozenset[str] = frozenset({"negotiation"})
    commit_min_probability: Decimal | None = None
    best_case_min_probability: Decimal | None = None

    def category(self, status: str, stage: str, probability: Decimal) -> Category:
        if status == "won":
            return Category.CLOSED_WON
        if status != "open":
            return Category.OMITTED
        if stage in self.commit_stages or _reaches(probability, self.commit_min_probability):
            return Category.COMMIT
        if stage in self.best_case_stages or _reaches(probability, self.best_case_min_probability):
            return Category.BEST_CASE
        return Category.PIPELINE


def _reaches(probability: Decimal, threshold: Decimal | None) -> bool:
    return threshold is not None and probability >= threshold


def effective_probability(stage_probability: Decimal, scored_probability: Decimal | None) -> Decimal:
    """The scoring service's win probability when it scored the deal, else its stage's default (percent)."""
    return scored_probability if scored_probability is not None else stage_probability


@dataclass(frozen=True)
class Rates:
    """Conversion into the reporting currency: units of it per unit of each other currency."""

    currency: str = "CNY"
    per_unit: Mapping[str, Decimal] = field(default_factory=dict)

    def convert(self, amount: Decimal, currency: str) -> Decimal | None:
        """The amount in the reporting currency, or None when no rate is known."""
        if currency == self.currency:
            return amount
        rate = self.per_unit.get(currency)
        return None if rate is None else amount * rate


def parse_rates(currency: str, text: str) -> Rates:
    """`USD=7.1,EUR=7.8` -> Rates(currency, {...})."""
    rates: dict[str, Decimal] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        code, _, value = part.partition("=")
        rates[code.strip().upper()] = Decimal(value.strip())
    return Rates(currency.upper(), rates)


# --- an opportunity as this service keeps it --------------------------------------------------


@dataclass(frozen=True)
class OwnerSplit:
    """One owner of a deal and the whole percent of its figures credited to them."""

    owner_id: str
    split: int


class InvalidSplits(ValueError):
    pass


def percent_per_key(owners: Sequence[OwnerSplit], key_of: Callable[[str | None], str | None]) -> dict[str, int]:
    """The percent of a deal each key holds, as `key_of` places its owners (None: left out); a deal of
    nobody (no owners) is wholly under the key of None."""
    shares: list[tuple[str | None, int]] = [(o.owner_id, o.split) for o in owners] or [(None, 100)]
    held: dict[str, int] = {}
    for owner, split in shares:
        key = key_of(owner)
        if key is not None:
            held[key] = held.get(key, 0) + split
    return held


def credited_splits(splits: Sequence[OwnerSplit]) -> tuple[OwnerSplit, ...]:
    """Owners' splits as a deal's credits: each owner once, the splits summing to 100 (anything else
    would credit more or less than the deal: such an event is refused, not half applied)."""
    owners = [s.owner_id for s in splits]
    total = sum(s.split for s in splits)
    if not splits or len(set(owners)) != len(owners) or total != 100:
        raise InvalidSplits(f"owner splits must name each owner once and sum to 100: {list(splits)}")
    return tuple(splits)


@dataclass(frozen=True)
class DealState:
    """What the forecast needs of one opportunity.

    `splits` lists the owners sharing the deal (the first is the primary, `owner_id`); empty when the
    primary owner alone holds it, as most deals are.
    """

    opportunity_id: str
    owner_id: str | None = None
    amount: Decimal = Decimal(0)
    currency: str = "CNY"
    expected_close_date: date | None = None
    stage: str = "prospecting"
    status: str = "open"
    stage_probability: Decimal = Decimal(0)
    scored_probability: Decimal | None = None
    closed_on: date | None = None
    campaign_id: str | None = None
    product: str | None = None
    splits: tuple[OwnerSplit, ...] = ()

    @property
    def probability(self) -> Decimal:
        return effective_probability(self.stage_probability, self.scored_probability)

    @property
    def credits(self) -> tuple[OwnerSplit, ...]:
        """Who is credited what share of the deal: its splits, else the primary owner at 100 %."""
        if self.splits:
            return self.splits
        return (OwnerSplit(self.owner_id, 100),) if self.owner_id else ()

    def owned_by(self, owner_id: str) -> "DealState":
        """The deal with this primary owner. Splits naming another primary are out of date (the deal
        changed hands since they were set), so that owner then holds the whole deal."""
        if self.splits and self.splits[0].owner_id != owner_id:
            return replace(self, owner_id=owner_id, splits=())
        return replace(self, owner_id=owner_id)

    def shared_by(self, splits: Sequence[OwnerSplit]) -> "DealState":
        """The deal with these owners (the first the primary); one owner at 100 % is a plain transfer."""
        if not splits:
            return self
        return replace(self, owner_id=splits[0].owner_id, splits=tuple(splits) if len(splits) > 1 else ())

    def forecast_date(self) -> date | None:
        """The day that places the deal in a period: close day once won, else the expected close date."""
        if self.status == "won":
            return self.closed_on
        return self.expected_close_date if self.status == "open" else None

    def changed(self, **changes: object) -> "DealState":
        return replace(self, **changes)  # type: ignore[arg-type]


def affected_periods(before: DealState | None, after: DealState) -> set[Period]:
    """Every period whose figures the change from `before` to `after` may move."""
    days = {s.forecast_date() for s in (before, after) if s is not None}
    return {p for day in days if day is not None for p in periods_of(day)}


def affected_owners(before: DealState | None, after: DealState) -> set[str]:
    """Every owner credited with a share of the deal before or after the change."""
    return {c.owner_id for state in (before, after) if state is not None for c in state.credits}


def affected_products(before: DealState | None, after: DealState) -> set[str]:
    """The product keys the deal counted under before and after the change."""
    return {product_key(state.product) for state in (before, after) if state is not None}


def product_key(product: str | None) -> str:
    return product or NO_PRODUCT


# --- figures and roll-ups ---------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """The open deals' amounts per category and the won amount of one key for one period.

    best_case and commit are cumulative, as forecast calls are made: commit = closed won + the
    commit deals; best case = commit + the best-case deals. Pipeline deals count only in the
    open amount and the weighted pipeline.
    """

    open_amount: Decimal = Decimal(0)
    weighted_pipeline: Decimal = Decimal(0)
    commit_open: Decimal = Decimal(0)
    best_case_open: Decimal = Decimal(0)
    closed_won: Decimal = Decimal(0)
    booked: Decimal = Decimal(0)  # signed contracts in the period
    deals: int = 0

    @property
    def commit(self) -> Decimal:
        return self.closed_won + self.commit_open

    @property
    def best_case(self) -> Decimal:
        return self.commit + self.best_case_open

    def share(self, percent: int) -> "Figures":
        """The part of these figures credited to an owner holding `percent` of the deals (their split);
        the deals stay whole: a share of a deal is still one deal."""
        if percent == 100:
            return self
        part = Decimal(percent) / 100
        return Figures(self.open_amount * part, self.weighted_pipeline * part, self.commit_open * part,
                       self.best_case_open * part, self.closed_won * part, self.booked * part, self.deals)

    def __add__(self, other: "Figures") -> "Figures":
        return Figures(
            self.open_amount + other.open_amount,
            self.weighted_pipeline + other.weighted_pipeline,
            self.commit_open + other.commit_open,
            self.best_case_open + other.best_case_open,
            self.closed_won + other.closed_won,
            self.booked + other.booked,
            self.deals + other.deals,
        )


def deal_figures(deal: DealState, rules: CategoryRules, amount: Decimal) -> Figures:
    """One deal's contribution to its period's figures (`amount` already in the reporting currency)."""
    category = rules.category(deal.status, deal.stage, deal.probability)
    if category is Category.CLOSED_WON:
        return Figures(closed_won=amount, deals=1)
    if category is Category.OMITTED:
        return Figures()
    weighted = amount * deal.probability / 100
    return Figures(
        open_amount=amount,
        weighted_pipeline=weighted,
        commit_open=amount if category is Category.COMMIT else Decimal(0),
        best_case_open=amount if category is Category.BEST_CASE else Decimal(0),
        deals=1,
    )


class By(StrEnum):
    OWNER = "owner"
    TEAM = "team"
    REGION = "region"
    PRODUCT = "product"


@dataclass(frozen=True)
class Placement:
    """Where an owner rolls up: their team and region (from the organisation file)."""

    team: str | None
    region: str | None

    def key(self, by: By, owner_id: str) -> str:
        """The owner's row key by owner, team or region (a product row is the deal's, not the owner's)."""
        if by is By.PRODUCT:
            raise ValueError("deals roll up by product through their own product, not their owner")
        if by is By.OWNER:
            return owner_id
        value = self.team if by is By.TEAM else self.region
        return value or NO_KEY


@dataclass(frozen=True)
class DealGroup:
    """The summed figures of the deals (of one period) that share one product and one list of owners
    with their splits: what the store sums, so that the splits are applied here, once per group."""

    product: str
    owners: tuple[OwnerSplit, ...]
    figures: Figures


def roll_up(
    groups: Iterable[DealGroup], by: By, place: Callable[[str], Placement], visible: Collection[str] | None = None,
) -> dict[str, Figures]:
    """The groups' figures summed per owner, team, region or product, each owner credited their split.

    Owners of one group that share a key add their splits (two owners of one team: the team has their
    sum), and the group's deals count once per key they reach, so a split deal is one deal in a team,
    region or product row. `visible`: the owners whose shares count (None: all).
    """
    rows: dict[str, Figures] = {}
    for group in groups:
        shares: dict[str, int] = {}
        for credit in group.owners:
            if visible is not None and credit.owner_id not in visible:
                continue
            key = group.product if by is By.PRODUCT else place(credit.owner_id).key(by, credit.owner_id)
            shares[key] = shares.get(key, 0) + credit.split
        for key, percent in shares.items():
            rows[key] = rows.get(key, Figures()) + group.figures.share(percent)
    return rows


def money(amount: Decimal) -> str:
    """A decimal string with two places, as every amount in the API and events."""
    return str(amount.quantize(CENT, rounding=ROUND_HALF_UP))


# --- quotas -----------------------------------------------------------------------------------


def quota_for(owner_id: str, period: Period, quotas: Mapping[tuple[str, str], Decimal]) -> Decimal | None:
    """The owner's quota for the period: set for it, else a share of the enclosing period's
    (a quarter / 3 per month, a year / 4 per quarter, / 12 per month), else the sum of the
    quotas set for its parts (the quarters of a year, else its months; the months of a quarter)."""
    explicit = quotas.get((owner_id, period.name))
    if explicit is not None:
        return explicit
    for parent in period.parents:
        whole = quotas.get((owner_id, parent.name))
        if whole is not None:
            parts = 3 if (period.kind, parent.kind) == (PeriodKind.MONTH, PeriodKind.QUARTER) else (
                4 if period.kind is PeriodKind.QUARTER else 12)
            return whole / parts
    quarters = [p for p in period.children if p.kind is PeriodKind.QUARTER]
    months = [p for p in period.children if p.kind is PeriodKind.MONTH]
    for parts_of in (quarters, months):
        set_parts = [quotas[(owner_id, p.name)] for p in parts_of if (owner_id, p.name) in quotas]
        if set_parts:
            return sum(set_parts, Decimal(0))
    return None


def rolled_quota(owners: Iterable[str], period: Period, quotas: Mapping[tuple[str, str], Decimal]) -> Decimal | None:
    found = [q for q in (quota_for(o, period, quotas) for o in owners) if q is not None]
    return sum(found, Decimal(0)) if found else None


@dataclass(frozen=True)
class Attainment:
    owner_id: str
    quota: Decimal | None
    closed_won: Decimal
    commit: Decimal
    rank: int

    @property
    def attainment(self) -> Decimal | None:
        """Closed won as a percentage of quota (None without a quota)."""
        if self.quota is None or self.quota == 0:
            return None
        return (self.closed_won * 100 / self.quota).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)

    @property
    def gap(self) -> Decimal | None:
        """What is still missing to reach quota (0 once reached)."""
        return None if self.quota is None else max(Decimal(0), self.quota - self.closed_won)


def rank_reps(
    reps: Sequence[str], per_owner: Mapping[str, Figures], period: Period,
    quotas: Mapping[tuple[str, str], Decimal],
) -> list[Attainment]:
    """Reps ranked by attainment (closed won / quota), then by closed won; reps without a quota last."""
    entries = [
        Attainment(rep, quota_for(rep, period, quotas), per_owner.get(rep, Figures()).closed_won,
                   per_owner.get(rep, Figures()).commit, 0)
        for rep in reps
    ]

    def order(entry: Attainment) -> tuple[int, Decimal, Decimal, str]:
        ratio = entry.attainment
        return (0 if ratio is not None else 1, -(ratio or Decimal(0)), -entry.closed_won, entry.owner_id)

    return [replace(entry, rank=i + 1) for i, entry in enumerate(sorted(entries, key=order))]
