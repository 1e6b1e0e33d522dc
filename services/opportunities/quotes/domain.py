"""Quotes: line items, discounts, totals and when a manager must approve, with no I/O.

A quote lists line items (product, quantity, unit price, a line discount in percent) and may take
a further quote discount in percent. Amounts are Decimals rounded half up to the cent:

    line net   = quantity x unit price x (100 - line discount) / 100
    subtotal   = sum of the line nets
    total      = subtotal x (100 - quote discount) / 100
    discount   = (list total - total) / list total, in percent  (list total = sum of quantity x unit price)

The *effective* discount (line and quote discounts together) is what the approval threshold is
compared with, so a large discount cannot pass unseen by being spread over the lines.

Lifecycle: draft -> submitted; submitting a quote whose effective discount passes the threshold
makes it `pending_approval` until a manager approves or rejects it; at or below the threshold it is
approved at once (automatically). A draft or rejected quote can be revised (it becomes a draft
again); an approved quote is final.
"""

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from enum import StrEnum

from shared.errors import DomainError, Unprocessable

_CENT = Decimal("0.01")
_HUNDRED = Decimal(100)
MAX_LINES = 200


class QuoteStatus(StrEnum):
    DRAFT = "draft"
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    REJECTED = "rejected"


class QuoteNotAllowed(DomainError):
    """A quote change its status refuses (409)."""


def _decimal(value: str | int | Decimal, what: str) -> Decimal:
    if isinstance(value, (float, bool)):
        raise Unprocessable(f"{what} must be a decimal string or a whole number, not {value!r}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise Unprocessable(f"{what} must be a decimal number, not {value!r}") from None
    if not number.is_finite():
        raise Unprocessable(f"{what} must be a finite number, not {value!r}")
    return number


def _at_most_two_places(number: Decimal, what: str) -> Decimal:
    if number != number.quantize(_CENT):
        raise Unprocessable(f"{what} has more than two decimal places")
    return number.quantize(_CENT)


def parse_percent(value: str | int | Decimal | None, what: str) -> Decimal:
    """A discount in percent: 0 <= d < 100, at most two decimals (none given: 0)."""
    if value is None or value == "":
        return Decimal("0.00")
    number = _at_most_two_places(_decimal(value, what), what)
    if not Decimal(0) <= number < _HUNDRED:
        raise Unprocessable(f"{what} is a percentage from 0 up to (not including) 100, not {number}")
    return number


def _cents(amount: Decimal) -> Decimal:
    return amount.quantize(_CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class QuoteLine:
    product: str
    quantity: Decimal
    unit_price: Decimal
    discount: Decimal = Decimal("0.00")  # percent off this line

    @classmethod
    def of(
        cls, product: str, quantity: str | int | Decimal, unit_price: str | int | Decimal,
        discount: str | int | Decimal | None = None, *, number: int = 1,
    ) -> "QuoteLine":
        what = f"line {number}"
        if not product or not product.strip():
            raise Unprocessable(f"{what} needs a product")
        amount = _decimal(quantity, f"{what}'s quantity")
        if amount <= 0:
            raise Unprocessable(f"{what}'s quantity must be more than 0")
        if amount != amount.quantize(Decimal("0.001")):
            raise Unprocessable(f"{what}'s quantity has more than three decimal places")
        price = _at_most_two_places(_decimal(unit_price, f"{what}'s unit_price"), f"{what}'s unit_price")
        if price < 0:
            raise Unprocessable(f"{what}'s unit_price must not be negative")
        return cls(product.strip(), amount, price, parse_percent(discount, f"{what}'s discount"))

    @property
    def list_amount(self) -> Decimal:
        return _cents(self.quantity * self.unit_price)

    @property
    def net(self) -> Decimal:
        return _cents(self.quantity * self.unit_price * (_HUNDRED - self.discount) / _HUNDRED)


@dataclass(frozen=True)
class Totals:
    list_total: Decimal  # before any discount
    subtotal: Decimal  # after the line discounts
    total: Decimal  # after the quote discount too
    effective_discount: Decimal  # percent off the list total, both discounts together


def totals(lines: tuple[QuoteLine, ...], discount: Decimal) -> Totals:
    list_total = sum((line.list_amount for line in lines), Decimal("0.00"))
    subtotal = sum((line.net for line in lines), Decimal("0.00"))
    total = _cents(subtotal * (_HUNDRED - discount) / _HUNDRED)
    effective = Decimal("0.00") if list_total == 0 else _cents((list_total - total) * _HUNDRED / list_total)
    return Totals(list_total, subtotal, total, effective)


def quote_lines(entries: list[tuple[str, str | int | Decimal, str | int | Decimal, str | int | Decimal | None]]) -> (
    tuple[QuoteLine, ...]
):
    if not entries:
        raise Unprocessable("a quote needs at least one line item")
    if len(entries) > MAX_LINES:
        raise Unprocessable(f"a quote has at most {MAX_LINES} line items")
    return tuple(QuoteLine.of(*entry, number=n) for n, entry in enumerate(entries, start=1))


def approval_required(figures: Totals, threshold: Decimal) -> bool:
    """A manager approves a quote whose effective discount passes (is above) the threshold."""
    return figures.effective_discount > threshold


def may_revise(quote_id: str, status: str) -> None:
    if QuoteStatus(status) not in (QuoteStatus.DRAFT, QuoteStatus.REJECTED):
        raise QuoteNotAllowed(
            f"quote {quote_id} is {status}: only a draft or rejected quote can be revised"
            + ("; draw up a new quote instead" if status == QuoteStatus.APPROVED else "")
        )


def may_submit(quote_id: str, status: str) -> None:
    if QuoteStatus(status) is not QuoteStatus.DRAFT:
        hint = "; revise it first" if status == QuoteStatus.REJECTED else ""
        raise QuoteNotAllowed(f"quote {quote_id} is {status}: only a draft can be submitted{hint}")


def may_decide(quote_id: str, status: str, *, decided_by: str, submitted_by: str | None) -> None:
    """A pending quote is approved or rejected once, and not by whoever submitted it."""
    if QuoteStatus(status) is not QuoteStatus.PENDING_APPROVAL:
        raise QuoteNotAllowed(f"quote {quote_id} is {status}: only a quote pending approval can be decided")
    if decided_by == submitted_by:
        raise QuoteNotAllowed(f"{decided_by} submitted quote {quote_id} and cannot also approve or reject it")


def approver_for(owner_manager: str | None, submitter_manager: str | None, submitted_by: str) -> str | None:
    """Who is asked to approve: the owner's manager, or the submitter's when the submitter is that manager."""
    if owner_manager is not None and owner_manager != submitted_by:
        return owner_manager
    return submitter_manager
