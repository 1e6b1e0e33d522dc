"""Bookings forecast: next month's closed-won value from the history, with a prediction interval. No I/O.

The point forecast is a seasonal naive over the quarter: the value won in the same month of the
previous quarter (three months earlier), because B2B bookings follow the quarter (closing pushes at
quarter end). While the history is shorter than that, it is the mean of the months known so far.

The open pipeline gives a second, independent estimate, reported beside it: every deal open at the
start of the month, weighted by the share of the open value of its age that was won within the
reference month (the same month of the previous quarter, else the last month), plus what deals
opened during the reference month won within it. On the CRM export it is the worse of the two
(README: a 50/50 blend is worse than the time series alone), so it does not move the point.

The 80 % interval is the point x (1 +- 1.28 sigma), sigma being the spread of the relative errors
the same method made on the months of the history (one step ahead each); with fewer than two such
errors, the history's coefficient of variation; with a single month, 50 %.
"""

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from services.forecasting.domain import Period, month_of

Z_80 = 1.2816  # two-sided 80 % of a normal distribution
AGE_BUCKETS_DAYS = (30, 60, 90)  # open deals are grouped by age: <30, 30-59, 60-89, >=90 days


@dataclass(frozen=True)
class DealFact:
    """One deal as known at forecast time: its amount, when it opened, and when and how it closed."""

    amount: Decimal
    opened_on: date | None
    closed_on: date | None
    status: str  # open, won, lost, suspended, terminated


@dataclass(frozen=True)
class BookingsForecast:
    period: str
    point: Decimal
    low: Decimal
    high: Decimal
    method: str
    pipeline_estimate: Decimal | None
    history_months: int


def _previous(period: Period, months: int) -> Period:
    day = period.start
    index = day.year * 12 + day.month - 1 - months
    return month_of(date(index // 12, index % 12 + 1, 1))


def monthly_won(deals: Iterable[DealFact], before: date) -> dict[Period, Decimal]:
    """Closed-won value per month, for the months from the first one with a win up to `before`.

    Months after the first win with nothing won count as zero; months before it are unknown."""
    won: dict[Period, Decimal] = {}
    for deal in deals:
        if deal.status == "won" and deal.closed_on is not None and deal.closed_on < before:
            month = month_of(deal.closed_on)
            won[month] = won.get(month, Decimal(0)) + deal.amount
    if not won:
        return {}
    month, last = min(won), month_of(before)
    filled: dict[Period, Decimal] = {}
    while month < last:
        filled[month] = won.get(month, Decimal(0))
        month = month.next()
    return filled


def time_series_point(history: Mapping[Period, Decimal], target: Period) -> tuple[Decimal, str] | None:
    """Seasonal naive over the quarter, else the mean of the history; None without history."""
    earlier = {p: v for p, v in history.items() if p < target}
    if not earlier:
        return None
    same_month_last_quarter = _previous(target, 3)
    if same_month_last_quarter in earlier:
        return earlier[same_month_last_quarter], "seasonal naive (same month of the previous quarter)"
    return sum(earlier.values(), Decimal(0)) / len(earlier), f"mean of the {len(earlier)} months known"


def _sigma(history: Mapping[Period, Decimal]) -> float:
    errors = []
    for month, actual in sorted(history.items()):
        made = time_series_point(history, month)
        if made is not None and actual > 0:
            errors.append(float((made[0] - actual) / actual))
    if len(errors) >= 2:
        return statistics.pstdev(errors) or abs(errors[-1])
    values = [float(v) for v in history.values()]
    if len(values) >= 2 and statistics.fmean(values) > 0:
        return statistics.pstdev(values) / statistics.fmean(values)
    return 0.5


def _bucket(age_days: int) -> int:
    return sum(age_days >= edge for edge in AGE_BUCKETS_DAYS)


def _open_at(deal: DealFact, day: date) -> bool:
    """Open at the start of `day`: opened before it and not closed before it."""
    if deal.opened_on is None or deal.opened_on >= day:
        return False
    if deal.closed_on is not None:
        return deal.closed_on >= day
    return deal.status == "open"


def pipeline_estimate(deals: Sequence[DealFact], target: Period, history: Mapping[Period, Decimal]) -> Decimal | None:
    """What the deals open at the start of `target` are likely to win within it, given their age, plus
    what deals opened during the month are likely to win within it (both from the reference month)."""
    reference = _previous(target, 3)
    if reference not in history:
        reference = _previous(target, 1)
        if reference not in history:
            return None
    open_value = [Decimal(0)] * (len(AGE_BUCKETS_DAYS) + 1)
    won_value = [Decimal(0)] * (len(AGE_BUCKETS_DAYS) + 1)
    new_won = Decimal(0)
    estimate = Decimal(0)
    for deal in deals:
        won_in_reference = deal.status == "won" and deal.closed_on is not None and reference.contains(deal.closed_on)
        if _open_at(deal, reference.start) and deal.opened_on is not None:
            bucket = _bucket((reference.start - deal.opened_on).days)
            open_value[bucket] += deal.amount
            if won_in_reference:
                won_value[bucket] += deal.amount
        elif won_in_reference and deal.opened_on is not None and reference.contains(deal.opened_on):
            new_won += deal.amount
    rates = [won / opened if opened else Decimal(0) for won, opened in zip(won_value, open_value, strict=True)]
    for deal in deals:
        if _open_at(deal, target.start) and deal.opened_on is not None:
            estimate += deal.amount * rates[_bucket((target.start - deal.opened_on).days)]
    return estimate + new_won


def forecast_bookings(deals: Sequence[DealFact], target: Period) -> BookingsForecast | None:
    """The forecast of `target`'s (a month's) closed-won value from what was known at its start."""
    history = monthly_won(deals, target.start)
    made = time_series_point(history, target)
    if made is None:
        return None
    point, method = made
    spread = Decimal(str(round(Z_80 * _sigma(history), 6)))
    return BookingsForecast(
        period=target.name, point=point, low=max(Decimal(0), point * (1 - spread)), high=point * (1 + spread),
        method=method, pipeline_estimate=pipeline_estimate(deals, target, history), history_months=len(history),
    )


# --- accuracy ---------------------------------------------------------------------------------


def wape(forecasts: Mapping[str, Decimal], actuals: Mapping[str, Decimal]) -> Decimal | None:
    """Weighted absolute percentage error: sum |forecast - actual| / sum actual, over the periods of both."""
    common = [p for p in forecasts if p in actuals]
    total = sum((actuals[p] for p in common), Decimal(0))
    if not common or total == 0:
        return None
    return sum((abs(forecasts[p] - actuals[p]) for p in common), Decimal(0)) / total


def naive_baselines(actuals: Mapping[Period, Decimal], targets: Sequence[Period]) -> dict[str, dict[str, Decimal]]:
    """The baselines of SOURCE.md for each target month: same as last month, 3-month moving average,
    same as three months earlier. A baseline is absent for a month whose inputs are not all known."""
    baselines: dict[str, dict[str, Decimal]] = {"naive": {}, "moving_average_3": {}, "seasonal_naive": {}}
    for target in targets:
        previous = [_previous(target, k) for k in (1, 2, 3)]
        if previous[0] in actuals:
            baselines["naive"][target.name] = actuals[previous[0]]
        if all(p in actuals for p in previous):
            baselines["moving_average_3"][target.name] = sum((actuals[p] for p in previous), Decimal(0)) / 3
        if previous[2] in actuals:
            baselines["seasonal_naive"][target.name] = actuals[previous[2]]
    return baselines
