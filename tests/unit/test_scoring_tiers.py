"""Account value tiers and buyer types from signed contracts (amount, frequency, recency)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from services.scoring.domain import Contract, account_tier

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
