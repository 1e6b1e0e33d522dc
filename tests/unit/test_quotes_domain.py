"""Quotes: line items, discounts, totals (Decimal, half up to the cent) and when a manager must approve."""

from decimal import Decimal

import pytest

from services.opportunities.quotes.domain import (
    QuoteLine,
    QuoteNotAllowed,
    approval_required,
    approver_for,
    may_decide,
    may_revise,
    may_submit,
    parse_percent,
    quote_lines,
    totals,
)
from shared.errors import Unprocessable


def test_a_line_nets_its_discount_and_the_quote_discount_applies_after() -> None:
    lines = quote_lines([("License", 10, "25000.00", "5"), ("Implementation", "2.5", "8000.00", None)])
    assert [line.net for line in lines] == [Decimal("237500.00"), Decimal("20000.00")]
    figures = totals(lines, parse_percent("10", "discount"))
    assert figures.list_total == Decimal("270000.00")
    assert figures.subtotal == Decimal("257500.00")
    assert figures.total == Decimal("231750.00")
    # 270000 - 231750 = 38250, 14.17 % of the list total
    assert figures.effective_discount == Decimal("14.17")


def test_amounts_round_half_up_to_the_cent() -> None:
    line = QuoteLine.of("Widget", 3, "0.35", "50")  # 1.05 x 50 % = 0.525
    assert line.net == Decimal("0.53")
    assert totals((line,), Decimal("0")).total == Decimal("0.53")


def test_no_discount_is_zero_and_a_free_quote_has_no_effective_discount() -> None:
    figures = totals(quote_lines([("Sample", 1, "0.00", None)]), Decimal("0"))
    assert (figures.total, figures.effective_discount) == (Decimal("0.00"), Decimal("0.00"))


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (("", 1, "10.00", None), "needs a product"),
        (("X", 0, "10.00", None), "more than 0"),
        (("X", -2, "10.00", None), "more than 0"),
        (("X", "1.0001", "10.00", None), "three decimal places"),
        (("X", 1.5, "10.00", None), "not 1.5"),
        (("X", 1, "10.001", None), "two decimal places"),
        (("X", 1, "-1.00", None), "negative"),
        (("X", 1, "ten", None), "decimal number"),
        (("X", 1, "10.00", "100"), "percentage"),
        (("X", 1, "10.00", "-1"), "percentage"),
        (("X", 1, "10.00", "5.555"), "two decimal places"),
        (("X", 1, "NaN", None), "finite"),
    ],
)
def test_bad_lines_are_refused_with_the_reason(entry: tuple, words: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(Unprocessable, match=words):
        quote_lines([entry])


def test_a_quote_needs_a_line() -> None:
    with pytest.raises(Unprocessable, match="at least one line"):
        quote_lines([])


def test_approval_is_required_only_past_the_threshold() -> None:
    threshold = Decimal("10")
    at = totals(quote_lines([("X", 1, "100.00", "10")]), Decimal("0"))
    past = totals(quote_lines([("X", 1, "100.00", "10")]), Decimal("0.01"))
    below = totals(quote_lines([("X", 1, "100.00", "5")]), Decimal("0"))
    assert not approval_required(at, threshold)
    assert approval_required(past, threshold)
    assert not approval_required(below, threshold)


def test_line_and_quote_discounts_count_together_against_the_threshold() -> None:
    # 6 % off the lines and 6 % off the quote: neither passes 10 %, together they take 11.64 %
    figures = totals(quote_lines([("X", 1, "1000.00", "6")]), Decimal("6"))
    assert figures.effective_discount == Decimal("11.64")
    assert approval_required(figures, Decimal("10"))


def test_the_lifecycle() -> None:
    may_revise("q", "draft")
    may_revise("q", "rejected")
    with pytest.raises(QuoteNotAllowed, match="new quote"):
        may_revise("q", "approved")
    with pytest.raises(QuoteNotAllowed, match="only a draft or rejected"):
        may_revise("q", "pending_approval")
    may_submit("q", "draft")
    with pytest.raises(QuoteNotAllowed, match="revise it first"):
        may_submit("q", "rejected")
    may_decide("q", "pending_approval", decided_by="mgr-1", submitted_by="rep-1")
    with pytest.raises(QuoteNotAllowed, match="only a quote pending approval"):
        may_decide("q", "approved", decided_by="mgr-1", submitted_by="rep-1")
    with pytest.raises(QuoteNotAllowed, match="cannot also approve"):
        may_decide("q", "pending_approval", decided_by="mgr-1", submitted_by="mgr-1")


def test_the_approver_is_the_owners_manager_unless_that_manager_submitted() -> None:
    assert approver_for("mgr-1", "mgr-1", submitted_by="rep-1") == "mgr-1"
    assert approver_for("mgr-1", "dir-1", submitted_by="mgr-1") == "dir-1"
    assert approver_for(None, None, submitted_by="admin-1") is None
