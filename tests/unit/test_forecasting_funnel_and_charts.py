"""Funnel analytics over a cohort, and the SVG charts drawn from it and from the bookings forecasts."""

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from xml.etree import ElementTree

from services.forecasting.charts import ForecastPoint, forecast_vs_actual_svg, funnel_svg
from services.forecasting.funnel import CohortDeal, Transition, funnel

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)


def moves(opp: str, *stages_and_days: tuple[str, int]) -> list[Transition]:
    return [Transition(opp, stage, T0 + timedelta(days=day)) for stage, day in stages_and_days]


def cohort() -> tuple[list[CohortDeal], dict[str, list[Transition]]]:
    deals = [
        CohortDeal("a", Decimal(100), date(2026, 11, 2), None, "open"),
        CohortDeal("b", Decimal(200), date(2026, 11, 2), None, "open"),
        CohortDeal("c", Decimal(300), date(2026, 11, 2), date(2026, 11, 22), "won"),
        CohortDeal("d", Decimal(400), date(2026, 11, 2), date(2026, 11, 12), "lost"),
    ]
    transitions = {
        "a": moves("a", ("prospecting", 0)),
        "b": moves("b", ("prospecting", 0), ("bidding", 4)),
        "c": moves("c", ("prospecting", 0), ("bidding", 2), ("won", 20)),  # closed from bidding
        "d": moves("d", ("prospecting", 0), ("bidding", 6), ("negotiation", 8), ("lost", 10)),
    }
    return deals, transitions


def test_the_funnel_counts_who_reached_each_stage_and_converts_between_them() -> None:
    figures = funnel(*cohort())
    reached = {s.stage: s.reached for s in figures.stages}
    assert reached == {"prospecting": 4, "bidding": 3, "negotiation": 2, "contract": 1}  # won went through all
    first = figures.stages[0]
    assert first.amount == 1000 and first.conversion_to_next == 0.75
    assert figures.stages[0].median_days_in_stage == 4  # 4, 2 and 6 days in prospecting before moving on
    assert figures.stages[1].median_days_in_stage == 10  # 18 (c) and 2 (d) days in bidding
    assert (figures.won, figures.lost, figures.won_amount) == (1, 1, 300)
    assert figures.win_rate == 0.5 and figures.median_sales_cycle_days == 20


def test_an_empty_cohort_has_no_rates() -> None:
    figures = funnel([], {})
    assert figures.deals == 0 and figures.win_rate is None and figures.median_sales_cycle_days is None
    assert all(s.reached == 0 and s.conversion_to_next is None for s in figures.stages)


def test_the_charts_are_well_formed_svg_with_their_figures() -> None:
    picture = funnel_svg(funnel(*cohort()), "Funnel 2026-11 <east>", "CNY")
    root = ElementTree.fromstring(picture)  # noqa: S314 - our own output
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "Funnel 2026-11 &lt;east&gt;" in picture and "win rate 50%" in picture
    assert len(root.findall("{http://www.w3.org/2000/svg}rect")) == 1 + 4  # background + one bar per stage
    points = [ForecastPoint("2017-05", Decimal(1025713), Decimal(928302), Decimal(663819), Decimal(1192785)),
              ForecastPoint("2017-06", None, Decimal(1134672), Decimal(649927), Decimal(1619417))]
    chart = ElementTree.fromstring(  # noqa: S314 - our own output
        forecast_vs_actual_svg(points, "Bookings 2017-Q2", "USD"))
    assert len(chart.findall("{http://www.w3.org/2000/svg}circle")) == 2
    assert len(chart.findall("{http://www.w3.org/2000/svg}rect")) == 1 + 1  # one actual so far


def test_lead_conversion_by_source_and_grade_and_campaign_economics() -> None:
    from services.forecasting.marketing import CampaignFigures, LeadFact, conversion_by_source_and_grade

    leads = [LeadFact("web_form", "H", True), LeadFact("web_form", "H", False), LeadFact("web_form", "C", False),
             LeadFact(None, None, True)]
    rows = {(c.source, c.grade): (c.leads, c.converted, c.rate) for c in conversion_by_source_and_grade(leads)}
    assert rows == {("web_form", "H"): (2, 1, 0.5), ("web_form", "C"): (1, 0, 0.0), ("unknown", "none"): (1, 1, 1.0)}
    campaign = CampaignFigures("c1", "展会", Decimal(10000), leads=40, deals_won=2, won_amount=Decimal(50000))
    assert (campaign.cost_per_lead, campaign.acquisition_cost, campaign.roi) == (250, 5000, 4)
    unpriced = CampaignFigures("c2", "other currency", None, leads=3, deals_won=0, won_amount=Decimal(0))
    assert (unpriced.cost_per_lead, unpriced.acquisition_cost, unpriced.roi) == (None, None, None)
