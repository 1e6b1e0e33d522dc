"""Forecast maths: periods, categories, weighted figures, roll-ups, quotas and the ranking of reps."""

from datetime import date
from decimal import Decimal

import pytest

from services.forecasting.domain import (
    NO_PRODUCT,
    By,
    Category,
    CategoryRules,
    DealGroup,
    DealState,
    Figures,
    InvalidPeriod,
    InvalidSplits,
    OwnerSplit,
    Placement,
    affected_owners,
    affected_periods,
    affected_products,
    credited_splits,
    deal_figures,
    money,
    parse_period,
    parse_rates,
    periods_of,
    quota_for,
    rank_reps,
    roll_up,
)
from services.forecasting.handlers import _staged


def test_periods_parse_and_name_themselves() -> None:
    month, quarter, year = parse_period("2026-11"), parse_period("2026-Q4"), parse_period("2026")
    assert (month.start, month.end, month.name) == (date(2026, 11, 1), date(2026, 11, 30), "2026-11")
    assert (quarter.start, quarter.end, quarter.name) == (date(2026, 10, 1), date(2026, 12, 31), "2026-Q4")
    assert (year.start, year.end, year.name) == (date(2026, 1, 1), date(2026, 12, 31), "2026")
    assert parse_period("2024-02").end == date(2024, 2, 29)
    assert [p.name for p in periods_of(date(2026, 2, 28))] == ["2026-02", "2026-Q1", "2026"]
    assert [p.name for p in month.parents] == ["2026-Q4", "2026"]
    assert [p.name for p in quarter.children] == ["2026-10", "2026-11", "2026-12"]
    assert len(year.children) == 16 and parse_period("2026-12").next().name == "2027-01"


@pytest.mark.parametrize("text", ["2026-13", "2026-Q5", "26-11", "2026-11-01", "november", ""])
def test_a_bad_period_is_refused(text: str) -> None:
    with pytest.raises(InvalidPeriod):
        parse_period(text)


def test_categories_by_stage_and_by_probability() -> None:
    rules = CategoryRules()
    assert rules.category("open", "prospecting", Decimal(10)) is Category.PIPELINE
    assert rules.category("open", "negotiation", Decimal(60)) is Category.BEST_CASE
    assert rules.category("open", "contract", Decimal(80)) is Category.COMMIT
    assert rules.category("won", "won", Decimal(100)) is Category.CLOSED_WON
    for status in ("lost", "suspended", "terminated"):
        assert rules.category(status, "contract", Decimal(80)) is Category.OMITTED
    lifted = CategoryRules(commit_min_probability=Decimal(90), best_case_min_probability=Decimal(50))
    assert lifted.category("open", "bidding", Decimal(92)) is Category.COMMIT
    assert lifted.category("open", "bidding", Decimal(55)) is Category.BEST_CASE
    assert lifted.category("open", "bidding", Decimal(30)) is Category.PIPELINE


def test_weighted_pipeline_uses_the_scored_probability_when_there_is_one() -> None:
    rules = CategoryRules()
    staged = DealState("o1", "rep-1", Decimal("100000"), stage="bidding", stage_probability=Decimal(30))
    assert deal_figures(staged, rules, staged.amount).weighted_pipeline == Decimal(30000)
    scored = staged.changed(scored_probability=Decimal(45))
    figures = deal_figures(scored, rules, scored.amount)
    assert (figures.open_amount, figures.weighted_pipeline, figures.commit, figures.best_case) == (
        Decimal(100000), Decimal(45000), 0, 0)


def test_commit_and_best_case_are_cumulative_over_closed_won() -> None:
    rules = CategoryRules()
    deals = [
        DealState("a", amount=Decimal(100), stage="contract", stage_probability=Decimal(80)),
        DealState("b", amount=Decimal(200), stage="negotiation", stage_probability=Decimal(60)),
        DealState("c", amount=Decimal(400), stage="prospecting", stage_probability=Decimal(10)),
        DealState("d", amount=Decimal(800), stage="won", status="won", closed_on=date(2026, 11, 3)),
        DealState("e", amount=Decimal(1600), stage="lost", status="lost"),
    ]
    total = sum((deal_figures(d, rules, d.amount) for d in deals), Figures())
    assert total.open_amount == 700 and total.weighted_pipeline == Decimal(80 + 120 + 40)
    assert (total.closed_won, total.commit, total.best_case) == (800, 900, 1100)
    assert total.deals == 4


def test_a_deal_is_placed_by_expected_close_date_while_open_and_by_close_day_once_won() -> None:
    open_deal = DealState("o", expected_close_date=date(2026, 12, 20))
    won = open_deal.changed(status="won", closed_on=date(2026, 11, 5))
    assert {p.name for p in affected_periods(open_deal, won)} == {"2026-12", "2026-11", "2026-Q4", "2026"}
    suspended = open_deal.changed(status="suspended")
    assert suspended.forecast_date() is None
    assert {p.name for p in affected_periods(None, suspended)} == set()


PLACES = {"rep-1": Placement("east", "华东"), "rep-2": Placement("east", "华东"), "rep-3": Placement("north", "华北")}


def place(owner: str) -> Placement:
    return PLACES.get(owner, Placement(None, None))


def alone(owner: str, product: str = NO_PRODUCT, **figures: Decimal) -> DealGroup:
    return DealGroup(product, (OwnerSplit(owner, 100),), Figures(deals=1, **figures))


def test_roll_up_by_team_and_region_with_unplaced_owners() -> None:
    groups = [alone("rep-1", open_amount=Decimal(1)), alone("rep-2", open_amount=Decimal(2)),
              alone("rep-3", open_amount=Decimal(4)), alone("ghost", open_amount=Decimal(8))]
    assert {k: f.open_amount for k, f in roll_up(groups, By.TEAM, place).items()} == {
        "east": 3, "north": 4, "unassigned": 8}
    assert {k: f.open_amount for k, f in roll_up(groups, By.REGION, place).items()} == {
        "华东": 3, "华北": 4, "unassigned": 8}
    assert set(roll_up(groups, By.OWNER, place)) == {"rep-1", "rep-2", "rep-3", "ghost"}


def test_each_owner_is_credited_their_split_of_every_figure() -> None:
    shared = DealGroup("GTX Pro", (OwnerSplit("rep-1", 60), OwnerSplit("rep-3", 40)), Figures(
        open_amount=Decimal(1000), weighted_pipeline=Decimal(800), commit_open=Decimal(1000),
        closed_won=Decimal(500), booked=Decimal(250), deals=2))
    owners = roll_up([shared], By.OWNER, place)
    rep1, rep3 = owners["rep-1"], owners["rep-3"]
    assert (rep1.open_amount, rep1.weighted_pipeline, rep1.commit, rep1.best_case, rep1.closed_won, rep1.booked) == (
        600, 480, 900, 900, 300, 150)
    assert (rep3.open_amount, rep3.weighted_pipeline, rep3.commit, rep3.best_case, rep3.closed_won, rep3.booked) == (
        400, 320, 600, 600, 200, 100)
    assert rep1.deals == rep3.deals == 2  # a share of a deal is still a deal of the owner's
    # the owners' teams follow them; the shares add up to the whole deal again
    assert {k: f.open_amount for k, f in roll_up([shared], By.TEAM, place).items()} == {"east": 600, "north": 400}
    assert sum((f.commit for f in owners.values()), Decimal(0)) == shared.figures.commit


def test_a_deal_split_inside_one_team_counts_once_there_with_its_whole_amount() -> None:
    shared = DealGroup("GTX Pro", (OwnerSplit("rep-1", 70), OwnerSplit("rep-2", 30)),
                       Figures(open_amount=Decimal(1000), deals=1))
    teams = roll_up([shared, alone("rep-1", open_amount=Decimal(5))], By.TEAM, place)
    assert (teams["east"].open_amount, teams["east"].deals) == (1005, 2)
    products = roll_up([shared], By.PRODUCT, place)
    assert (products["GTX Pro"].open_amount, products["GTX Pro"].deals) == (1000, 1)


def test_roll_up_by_product_with_deals_without_one_and_within_a_scope() -> None:
    groups = [
        alone("rep-1", "GTX Pro", open_amount=Decimal(100)),
        alone("rep-3", "GTX Pro", closed_won=Decimal(40)),
        alone("rep-2", NO_PRODUCT, open_amount=Decimal(7)),
        DealGroup("MG Special", (OwnerSplit("rep-3", 50), OwnerSplit("rep-1", 50)),
                  Figures(open_amount=Decimal(20), deals=1)),
    ]
    products = roll_up(groups, By.PRODUCT, place)
    assert {k: (f.open_amount, f.closed_won, f.deals) for k, f in products.items()} == {
        "GTX Pro": (100, 40, 2), "unspecified": (7, 0, 1), "MG Special": (20, 0, 1)}
    # what rep-1 sees: their own deals and their share of the shared one
    mine = roll_up(groups, By.PRODUCT, place, visible={"rep-1"})
    assert {k: f.open_amount for k, f in mine.items()} == {"GTX Pro": 100, "MG Special": 10}


def test_a_product_row_is_the_deals_not_an_owners() -> None:
    with pytest.raises(ValueError, match="product"):
        Placement("east", "华东").key(By.PRODUCT, "rep-1")


def test_splits_credit_each_owner_once_and_sum_to_100() -> None:
    splits = credited_splits([OwnerSplit("rep-1", 60), OwnerSplit("rep-3", 40)])
    assert splits == (OwnerSplit("rep-1", 60), OwnerSplit("rep-3", 40))
    for wrong in ([OwnerSplit("rep-1", 60), OwnerSplit("rep-3", 30)], [OwnerSplit("rep-1", 50)] * 2, []):
        with pytest.raises(InvalidSplits):
            credited_splits(wrong)


def test_a_deal_is_credited_to_its_primary_owner_until_it_is_shared() -> None:
    deal = DealState("o", "rep-1", Decimal(100), product="GTX Pro")
    assert deal.credits == (OwnerSplit("rep-1", 100),)
    assert DealState("o").credits == ()
    shared = deal.shared_by([OwnerSplit("rep-2", 60), OwnerSplit("rep-1", 40)])
    assert (shared.owner_id, shared.credits) == ("rep-2", (OwnerSplit("rep-2", 60), OwnerSplit("rep-1", 40)))
    assert shared.owned_by("rep-2").credits == shared.credits  # a later event naming the same primary
    # an event naming another primary: the splits are out of date, that owner holds the whole deal
    assert shared.owned_by("rep-3").credits == (OwnerSplit("rep-3", 100),)
    transferred = shared.shared_by([OwnerSplit("rep-3", 100)])
    assert (transferred.owner_id, transferred.splits) == ("rep-3", ())
    assert affected_owners(deal, shared) == {"rep-1", "rep-2"}
    assert affected_owners(None, transferred) == {"rep-3"}
    assert affected_products(deal, deal.changed(product=None)) == {"GTX Pro", NO_PRODUCT}


def test_a_share_of_the_figures_scales_every_amount_but_not_the_deals() -> None:
    whole = Figures(Decimal(300), Decimal(90), Decimal(30), Decimal(60), Decimal(150), Decimal(15), 3)
    third = whole.share(33)
    assert (third.open_amount, third.weighted_pipeline, third.commit_open, third.best_case_open,
            third.closed_won, third.booked, third.deals) == (
        Decimal("99"), Decimal("29.7"), Decimal("9.9"), Decimal("19.8"), Decimal("49.5"), Decimal("4.95"), 3)
    assert whole.share(100) == whole


def test_quotas_are_explicit_or_shared_from_the_enclosing_period_or_summed_from_parts() -> None:
    quotas = {("rep-1", "2026-Q4"): Decimal(1500000), ("rep-2", "2026-11"): Decimal(100),
              ("rep-2", "2026-12"): Decimal(50), ("rep-3", "2027"): Decimal(1200)}
    assert quota_for("rep-1", parse_period("2026-Q4"), quotas) == 1500000
    assert quota_for("rep-1", parse_period("2026-11"), quotas) == 500000
    assert quota_for("rep-1", parse_period("2026"), quotas) == 1500000
    assert quota_for("rep-2", parse_period("2026-Q4"), quotas) == 150
    assert quota_for("rep-3", parse_period("2027-Q2"), quotas) == 300
    assert quota_for("rep-3", parse_period("2027-02"), quotas) == 100
    assert quota_for("rep-1", parse_period("2026-Q3"), quotas) is None


def test_reps_rank_by_attainment_then_closed_won_and_without_quota_last() -> None:
    quotas = {("a", "2026-Q4"): Decimal(100), ("b", "2026-Q4"): Decimal(1000), ("c", "2026-Q4"): Decimal(200)}
    per_owner = {"a": Figures(closed_won=Decimal(50)), "b": Figures(closed_won=Decimal(900)),
                 "c": Figures(closed_won=Decimal(100)), "d": Figures(closed_won=Decimal(5000))}
    ranked = rank_reps(["a", "b", "c", "d"], per_owner, parse_period("2026-Q4"), quotas)
    # a and c tie at 50 %: the one that won more ranks first
    assert [(r.owner_id, r.rank) for r in ranked] == [("b", 1), ("c", 2), ("a", 3), ("d", 4)]
    assert ranked[0].attainment == Decimal("90.0") and ranked[0].gap == 100
    assert ranked[3].attainment is None and ranked[3].gap is None


def test_amounts_are_two_place_strings_and_currencies_convert_at_configured_rates() -> None:
    assert money(Decimal("1234.5")) == "1234.50" and money(Decimal("0.005")) == "0.01"
    rates = parse_rates("cny", "USD=7.1, EUR = 7.8")
    assert rates.convert(Decimal(10), "USD") == Decimal("71.0")
    assert rates.convert(Decimal(10), "CNY") == 10 and rates.convert(Decimal(10), "JPY") is None


def test_a_stage_of_a_configured_pipeline_takes_the_events_probability() -> None:
    """A stage key the default pipeline lacks: the event's probability; without one (no v1 event omits it),
    the deal keeps the probability it had. Its category follows the probability rules (not in the
    commit or best-case stages, which name the default pipeline's)."""
    deal = DealState("opp-1", "rep-1", Decimal(1000), stage="prospecting", stage_probability=Decimal(10))
    visited = _staged(deal, "site_visit", 45)
    assert (visited.stage, visited.stage_probability) == ("site_visit", Decimal(45))
    assert _staged(visited, "shortlist", None).stage_probability == Decimal(45)
    rules = CategoryRules(commit_min_probability=Decimal(40))
    assert rules.category("open", visited.stage, visited.probability) is Category.COMMIT
