"""Account value tiers and buyer types from signed contracts (amount, frequency, recency)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from services.scoring.domain import Contract, account_tier, tier_as_time_passed

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def contract(n: int, amount: str, days_ago: int, currency: str = "CNY") -> Contract:
    return Contract(f"con-{n}", Decimal(amount), currency, NOW - timedelta(days=days_ago))


def test_no_contract_no_tier() -> None:
    assert account_tier([], NOW) is None


def test_a_first_small_contract_is_a_low_value_first_time_buyer_unless_large() -> None:
    small = account_tier([contract(1, "50000.00", 2)], NOW)
    assert small is not None
    # amount 1 + first-time 1 + recent 3 = 5: medium
    assert (small.value_tier, small.buyer_type, small.amount_12m) == ("medium", "first_time", Decimal("50000.00"))
    old_small = account_tier([contract(1, "50000.00", 400)], NOW)
    assert old_small is not None and (old_small.value_tier, old_small.amount_12m) == ("low", Decimal(0))
    large = account_tier([contract(1, "1500000.00", 2)], NOW)
    assert large is not None and (large.value_tier, large.buyer_type) == ("high", "first_time")


def test_three_contracts_in_a_year_make_a_frequent_buyer() -> None:
    tier = account_tier([contract(1, "100000", 300), contract(2, "80000", 100), contract(3, "90000", 10)], NOW)
    assert tier is not None
    assert (tier.buyer_type, tier.contracts_12m, tier.contracts_total) == ("frequent", 3, 3)
    assert tier.amount_12m == Decimal("270000") and tier.value_tier == "high"  # 2 + 3 + 3
    assert tier.recency_days == 10 and tier.last_signed_at == NOW - timedelta(days=10)


def test_an_occasional_buyer_gone_quiet_drops_to_low() -> None:
    tier = account_tier([contract(1, "30000", 700), contract(2, "20000", 200)], NOW)
    assert tier is not None
    # amount 20,000 in 12 months: 1; occasional 2; last contract 200 days ago: 2 -> 5 medium
    assert (tier.value_tier, tier.buyer_type) == ("medium", "occasional")
    quiet = account_tier([contract(1, "30000", 900), contract(2, "20000", 500)], NOW)
    assert quiet is not None and (quiet.value_tier, quiet.buyer_type, quiet.recency_days) == ("low", "occasional", 500)


def test_the_amount_is_in_the_newest_contracts_currency_and_factors_explain_it() -> None:
    tier = account_tier([contract(1, "900000", 30, "USD"), contract(2, "250000", 5, "CNY")], NOW)
    assert tier is not None and (tier.currency, tier.amount_12m) == ("CNY", Decimal("250000"))
    assert [f.feature for f in tier.factors] == ["amount_12m", "frequency", "recency"]
    assert [f.contribution for f in tier.factors] == [2, 2, 3]
    assert "250,000.00 CNY" in tier.factors[0].label_en and "近 12 个月" in tier.factors[0].label_zh


def test_contracts_round_trip_through_json() -> None:
    signed = contract(7, "120000.50", 3)
    assert Contract.from_json(signed.to_json()) == signed


def test_time_alone_moves_a_tier_when_a_contract_passes_90_or_365_days_not_as_each_day_passes() -> None:
    contracts = [contract(1, "150000", 85), contract(2, "100000", 200)]
    tiered = account_tier(contracts, NOW)
    assert tiered is not None and (tiered.value_tier, tiered.buyer_type) == ("high", "occasional")  # 2 + 2 + 3
    # Days 85 to 90 of the newest contract: only the recency label's day count moves.
    assert tier_as_time_passed(contracts, NOW, NOW + timedelta(days=5)) is None
    # Day 91: recency 3 -> 2 points, 7 -> 6: medium.
    day_91 = NOW + timedelta(days=6)
    recency = tier_as_time_passed(contracts, NOW, day_91)
    assert recency is not None and (recency.value_tier, recency.amount_12m) == ("medium", Decimal("250000"))
    assert [f.contribution for f in recency.factors] == [2, 2, 2]
    # The older contract past 365 days: 150,000 in 12 months, under 200,000 (2 -> 1 points), still medium.
    year = tier_as_time_passed(contracts, day_91, NOW + timedelta(days=170))
    assert year is not None
    assert (year.value_tier, year.amount_12m, year.contracts_12m) == ("medium", Decimal("150000"), 1)
    assert [f.contribution for f in year.factors] == [1, 2, 2]
    # The newest past 365 days too: recency 1 point, nothing in 12 months: low.
    quiet = tier_as_time_passed(contracts, NOW + timedelta(days=170), NOW + timedelta(days=290))
    assert quiet is not None and (quiet.value_tier, quiet.amount_12m, quiet.contracts_12m) == ("low", Decimal(0), 0)


def test_a_count_of_the_last_12_months_moves_a_tier_even_with_the_same_points() -> None:
    # The USD contracts count for frequency only: one leaving the 12 months changes the count, not the points.
    contracts = [contract(1, "50000", 360, "USD"), contract(2, "60000", 300, "USD"), contract(3, "90000", 100),
                 contract(4, "80000", 50)]
    moved = tier_as_time_passed(contracts, NOW, NOW + timedelta(days=10))
    assert moved is not None and (moved.value_tier, moved.buyer_type, moved.contracts_12m) == ("high", "frequent", 3)
    assert [f.contribution for f in moved.factors] == [1, 3, 3]


def test_no_re_tier_for_a_moment_not_later_than_the_tier() -> None:
    contracts = [contract(1, "300000", 89)]
    assert tier_as_time_passed(contracts, NOW, NOW) is None
    assert tier_as_time_passed(contracts, NOW, NOW - timedelta(days=30)) is None
