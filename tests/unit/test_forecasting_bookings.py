"""Bookings forecast maths: monthly history, seasonal naive with its fallback, interval, pipeline estimate, WAPE."""

from datetime import date
from decimal import Decimal

from services.forecasting.bookings import (
    DealFact,
    forecast_bookings,
    monthly_won,
    naive_baselines,
    pipeline_estimate,
    time_series_point,
    wape,
)
from services.forecasting.domain import month_of, parse_period


def won(amount: int, opened: date, closed: date) -> DealFact:
    return DealFact(Decimal(amount), opened, closed, "won")


def test_monthly_history_starts_at_the_first_win_and_counts_quiet_months_as_zero() -> None:
    deals = [won(100, date(2017, 1, 5), date(2017, 3, 2)), won(50, date(2017, 2, 1), date(2017, 5, 9)),
             won(70, date(2017, 4, 1), date(2017, 6, 1)),  # after the cut: not known yet
             DealFact(Decimal(999), date(2017, 1, 1), date(2017, 3, 3), "lost")]
    history = monthly_won(deals, date(2017, 6, 1))
    assert {p.name: v for p, v in history.items()} == {"2017-03": 100, "2017-04": 0, "2017-05": 50}
    assert monthly_won([], date(2017, 6, 1)) == {}


def test_seasonal_naive_over_the_quarter_with_the_mean_before_a_quarter_is_known() -> None:
    history = {parse_period("2017-03"): Decimal(1200), parse_period("2017-04"): Decimal(600)}
    point, method = time_series_point(history, parse_period("2017-05")) or (None, "")
    assert point == 900 and method.startswith("mean")
    history[parse_period("2017-05")] = Decimal(900)
    point, method = time_series_point(history, parse_period("2017-06")) or (None, "")
    assert point == 1200 and method.startswith("seasonal naive")
    assert time_series_point({}, parse_period("2017-06")) is None


def test_the_forecast_carries_an_interval_around_its_point() -> None:
    deals = [won(v, date(2017, 1, 1), date(2017, m, 10))
             for m, v in ((3, 1200), (4, 700), (5, 1000), (6, 1300), (7, 690))]
    made = forecast_bookings(deals, parse_period("2017-08"))
    assert made is not None and made.period == "2017-08"
    assert made.point == 1000 and made.low < made.point < made.high and made.history_months == 5
    assert forecast_bookings([], parse_period("2017-08")) is None


def test_the_pipeline_estimate_weighs_open_deals_by_the_win_rate_of_their_age() -> None:
    # reference month 2017-03: of the value open at its start aged < 30 days, half was won in it
    deals = [won(100, date(2017, 2, 20), date(2017, 3, 10)),
             DealFact(Decimal(100), date(2017, 2, 20), date(2017, 3, 20), "lost"),
             won(40, date(2017, 3, 5), date(2017, 3, 25)),  # opened and won within the month
             DealFact(Decimal(1000), date(2017, 5, 20), None, "open"),  # open at 2017-06-01, 12 days old
             DealFact(Decimal(500), date(2017, 1, 1), None, "open")]  # 151 days old: its bucket had no win
    history = monthly_won(deals, date(2017, 6, 1))
    assert pipeline_estimate(deals, parse_period("2017-06"), history) == Decimal(1000) / 2 + 40


def test_wape_and_the_baselines_of_the_source_notes() -> None:
    assert wape({"a": Decimal(90), "b": Decimal(120)}, {"a": Decimal(100), "b": Decimal(100)}) == Decimal("0.15")
    assert wape({}, {"a": Decimal(1)}) is None
    actuals = {month_of(date(2017, m, 1)): Decimal(m * 100) for m in range(3, 8)}
    baselines = naive_baselines(actuals, [parse_period("2017-04"), parse_period("2017-06"), parse_period("2017-07")])
    assert baselines["naive"] == {"2017-04": 300, "2017-06": 500, "2017-07": 600}
    assert baselines["moving_average_3"] == {"2017-06": 400, "2017-07": 500}
    assert baselines["seasonal_naive"] == {"2017-06": 300, "2017-07": 400}
