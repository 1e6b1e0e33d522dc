"""An account's contacts: fields as stored, the duplicate and primary rules, archiving, with no I/O.

A contact is a person at an account: a name, a job title, the part they play in the purchase, a phone
in E.164 (national numbers read as Chinese) and a lower-cased e-mail. A phone or e-mail is unique among
an account's current contacts; an account has at most one primary contact; a contact is archived, not
deleted, so that the closed deals naming it keep it.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from services.opportunities.domain import StatusNotAllowed
from shared.contact_details import normalise_email, normalise_phone
from shared.errors import DomainError, Unprocessable


class BuyingRole(StrEnum):
    """The part a contact plays in the customer's purchase (the maturity assessment weighs the trust of
    the decision makers)."""

    DECISION_MAKER = "decision_maker"  # 决策者: signs off the purchase
    INFLUENCER = "influencer"  # 影响者: sways the decision
    EVALUATOR = "evaluator"  # 评估者: assesses the offer (technical, procurement)
    USER = "user"  # 使用者: will use what is bought
    OTHER = "other"


class DuplicateContact(DomainError):
    """Another contact of the account has the phone or e-mail (409, naming it)."""


class ContactInUse(DomainError):
    """A contact that open or suspended opportunities name cannot be archived (409, naming them)."""


CONTACT_TEXT_MAX = 200
CONTACT_FIELDS = ("name", "title", "role", "phone", "email", "is_primary")


@dataclass(frozen=True)
class Contact:
    """A person at an account. Phone in E.164 (national numbers read as Chinese), e-mail lower-cased; at
    most one primary contact per account; archived instead of deleted, so closed deals keep naming it."""

    id: str
    account_id: str
    name: str
    title: str | None = None
    role: BuyingRole | None = None
    phone: str | None = None
    email: str | None = None
    is_primary: bool = False
    archived: bool = False
    version: int = 1

    @classmethod
    def new(cls, contact_id: str, account_id: str, values: Mapping[str, Any]) -> "Contact":
        """A contact from the fields given (a name is required, the rest optional), or 422 naming every
        field that cannot be taken."""
        return cls(contact_id, account_id, "").edit({"name": None, **values})[0]

    def edit(self, values: Mapping[str, Any]) -> tuple["Contact", dict[str, Any]]:
        """The contact with the fields given, and those that changed with their new values (none: the same
        contact and an empty dict); 422 naming every field that cannot be taken, 409 when archived."""
        if self.archived:
            raise StatusNotAllowed(f"contact {self.id} is archived and cannot be changed")
        problems: list[str] = []
        unknown = sorted(set(values) - set(CONTACT_FIELDS))
        if unknown:
            problems.append(f"{', '.join(unknown)}: not a field of a contact")
        taken: dict[str, Any] = {}
        for name in CONTACT_FIELDS:
            if name in values:
                try:
                    taken[name] = _contact_field(name, values[name])
                except Unprocessable as exc:
                    problems.append(str(exc))
        if problems:
            raise Unprocessable("; ".join(problems))
        edited = replace(self, **taken)
        changes = {name: value for name, value in edited.values().items() if self.values()[name] != value}
        return (edited, changes) if changes else (self, {})

    def values(self) -> dict[str, Any]:
        """The fields a caller sets, by name."""
        return {"name": self.name, "title": self.title, "role": self.role, "phone": self.phone,
                "email": self.email, "is_primary": self.is_primary}

    def reached_by(self, phone: str | None, email: str | None) -> str | None:
        """Which of `phone` and `email` (normalised) this contact has too: "phone", "e-mail", or None."""
        if phone is not None and phone == self.phone:
            return "phone"
        if email is not None and email == self.email:
            return "e-mail"
        return None

    def check_unique_in_account(self, others: Iterable["Contact"]) -> None:
        """409 naming the account's other (not archived) contact that has this phone or e-mail already."""
        for other in others:
            what = None if other.id == self.id or other.archived else other.reached_by(self.phone, self.email)
            if what is not None:
                raise DuplicateContact(
                    f"contact {other.id} ({other.name}) of account {self.account_id} has the {what} "
                    f"{self.phone if what == 'phone' else self.email} already: change that contact instead of "
                    "adding another"
                )

    def primary_to_demote(self, others: Iterable["Contact"]) -> "Contact | None":
        """The account's current primary contact, which this one replaces as primary (None: nothing to do)."""
        if not self.is_primary:
            return None
        return next((o for o in others if o.is_primary and o.id != self.id and not o.archived), None)

    def archive(self, open_deals: Sequence[str], open_deal_count: int) -> "Contact":
        """Archived (no longer primary), unless open or suspended opportunities name it: 409 with how many
        and which (`open_deals`, the first few of `open_deal_count`)."""
        if self.archived:
            raise StatusNotAllowed(f"contact {self.id} is archived already")
        if open_deal_count:
            more = f" and {open_deal_count - len(open_deals)} more" if open_deal_count > len(open_deals) else ""
            raise ContactInUse(
                f"contact {self.id} is named by {open_deal_count} open or suspended "
                f"opportunit{'y' if open_deal_count == 1 else 'ies'}: {', '.join(open_deals)}{more}; close or "
                "terminate them first, or keep the contact"
            )
        return replace(self, archived=True, is_primary=False)


def known_contact(contacts: Iterable[Contact], phone: str | None, email: str | None) -> Contact | None:
    """The current (not archived) contact reached by this phone or e-mail, normalised: a converted lead's
    person whom the account knows already."""
    return next((c for c in contacts if not c.archived and c.reached_by(phone, email)), None)


def _contact_field(name: str, value: Any) -> Any:
    """One contact field as stored: text trimmed (blank optional text is null), phone E.164, e-mail lower-case."""
    if name == "is_primary":
        if not isinstance(value, bool):
            raise Unprocessable("is_primary: must be true or false")
        return value
    if value is not None and not isinstance(value, str):
        raise Unprocessable(f"{name}: must be a string")
    text = " ".join(value.split()) if value else None
    text = text or None  # blank is absent
    if name == "name" and text is None:
        raise Unprocessable("name: a contact needs a name")
    if text is None:
        return None
    if name == "phone":
        return normalise_phone(text)
    if name == "email":
        return normalise_email(text)
    if name == "role":
        try:
            return BuyingRole(text)
        except ValueError:
            raise Unprocessable(f"role: one of {', '.join(BuyingRole)}, not {text!r}") from None
    if len(text) > CONTACT_TEXT_MAX:
        raise Unprocessable(f"{name}: at most {CONTACT_TEXT_MAX} characters")
    return text
