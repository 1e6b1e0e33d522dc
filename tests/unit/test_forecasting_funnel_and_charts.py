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


def test_stages_of_a_configured_pipeline_are_not_in_the_funnel_and_fail_nothing() -> None:
    """The funnel's stages are the default pipeline's; a deal whose moves name only other keys has reached
    its first stage (it was opened), and time spent in such a stage is no stage's."""
    deals = [CohortDeal("e", Decimal(100), date(2026, 11, 2), None, "open"),
             CohortDeal("f", Decimal(200), date(2026, 11, 2), None, "open")]
    transitions = {"e": moves("e", ("lead_in", 0), ("site_visit", 3)),
                   "f": moves("f", ("lead_in", 0), ("bidding", 2), ("site_visit", 9))}
    figures = funnel(deals, transitions)
    assert {s.stage: s.reached for s in figures.stages} == {"prospecting": 2, "bidding": 1, "negotiation": 0,
                                                            "contract": 0}
    assert figures.stages[1].median_days_in_stage == 7  # f's 7 days in bidding; lead_in's days count nowhere
    assert figures.stages[0].median_days_in_stage is None


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


def test_one_funnel_per_key_of_the_deals_owners_counting_their_shares() -> None:
    from services.forecasting.domain import OwnerSplit
    from services.forecasting.funnel import credited_to, funnels_by

    deals, transitions = cohort()
    owners = [(OwnerSplit("rep-1", 100),), (OwnerSplit("rep-3", 100),),
              (OwnerSplit("rep-1", 60), OwnerSplit("rep-3", 40)), ()]  # c is shared; d is nobody's
    owned = [CohortDeal(d.opportunity_id, d.amount, d.opened_on, d.closed_on, d.status, o)
             for d, o in zip(deals, owners, strict=True)]
    teams = {"rep-1": "east", "rep-3": "north"}
    per_team = funnels_by(owned, transitions, lambda owner: teams.get(owner or "", "unassigned"))
    assert list(per_team) == ["east", "north", "unassigned"]
    east, north = per_team["east"], per_team["north"]
    assert (east.deals, east.won, east.won_amount, east.stages[0].amount) == (2, 1, 180, 100 + 180)
    assert (north.deals, north.won, north.won_amount, north.stages[1].reached) == (2, 1, 120, 2)
    assert (per_team["unassigned"].deals, per_team["unassigned"].lost) == (1, 1)
    one_team = funnels_by(owned, transitions, lambda owner: "east" if owner == "rep-1" else None)
    assert list(one_team) == ["east"] and one_team["east"] == east
    shares = credited_to(owned, {"rep-3"})
    assert [(d.opportunity_id, d.amount) for d in shares] == [("b", 200), ("c", 120)]
    assert funnel(shares, transitions).won_amount == north.won_amount


def test_a_campaigns_cost_in_a_period_follows_its_run_else_its_leads() -> None:
    from services.forecasting.marketing import Campaign, cost_in_window

    first_quarter = Campaign("c1", "推广", Decimal(9000), date(2034, 1, 1), date(2034, 3, 31), leads_lifetime=4)
    february = (date(2034, 2, 1), date(2034, 2, 28))
    assert cost_in_window(first_quarter, february, leads_in_window=0) == Decimal(9000) * 28 / 90
    assert cost_in_window(first_quarter, (date(2034, 4, 1), date(2034, 4, 30)), 0) == 0
    assert cost_in_window(first_quarter, None, 0) == 9000  # the whole life
    undated = Campaign("c2", "转介绍", Decimal(1000), None, None, leads_lifetime=4)
    assert cost_in_window(undated, february, leads_in_window=1) == 250
    assert cost_in_window(Campaign("c3", "x", Decimal(1000), None, None, 0), february, 0) is None
    assert cost_in_window(Campaign("c4", "x", None, None, None, 4), february, 1) is None  # no rate


def test_a_campaigns_cost_is_charged_to_the_owners_of_its_leads_and_won_deals_split() -> None:
    from services.forecasting.domain import OwnerSplit
    from services.forecasting.marketing import Campaign, CampaignLeads, WonDeal, company_economics, economics_by

    campaigns = [Campaign("c1", "推广", Decimal(3000), None, None, leads_lifetime=3),
                 Campaign("c2", "no leads yet", Decimal(500), None, None, leads_lifetime=0)]
    leads = [CampaignLeads("c1", "rep-1", 2), CampaignLeads("c1", "rep-3", 1)]
    won = [WonDeal("c1", Decimal(9000), (OwnerSplit("rep-3", 100),)),
           WonDeal("c1", Decimal(1000), (OwnerSplit("rep-1", 60), OwnerSplit("rep-3", 40))),
           WonDeal("c1", Decimal(100), ())]
    [whole, unstarted] = company_economics(campaigns, leads, won, None)
    assert (whole.cost, whole.leads, whole.deals_won, whole.won_amount) == (3000, 3, 3, 10100)
    assert (unstarted.cost, unstarted.leads) == (500, 0)  # listed with its whole cost
    teams = {"rep-1": "east", "rep-3": "north"}
    per_team = economics_by(campaigns, leads, won, None, lambda owner: teams.get(owner or "", "unassigned"))
    [east], [north], [unowned] = per_team["east"], per_team["north"], per_team["unassigned"]
    assert (east.cost, east.leads, east.deals_won, east.won_amount) == (2000, 2, 1, 600)  # its 60 % of a deal
    assert (north.cost, north.deals_won, north.won_amount, north.acquisition_cost) == (1000, 2, 9400, 500)
    assert (unowned.cost, unowned.deals_won, unowned.acquisition_cost) == (0, 1, 0)  # a won deal without a lead
    assert sum((f.cost or Decimal(0)) for rows in per_team.values() for f in rows) == whole.cost
    assert sum(f.won_amount for rows in per_team.values() for f in rows) == whole.won_amount
    only_north = economics_by(campaigns, leads, won, None, lambda owner: "asked" if owner == "rep-3" else None)
    assert only_north == {"asked": [north]}
