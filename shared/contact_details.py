"""A person's phone number and e-mail address as every service stores and compares them.

Phones are kept in E.164 (`+8613800138000`), numbers given without a country code read as Chinese;
e-mail addresses lower-cased. Two records naming one person then compare equal, which is what the
duplicate rules of leads and of an account's contacts rely on.
"""

import phonenumbers

from shared.errors import Unprocessable

DEFAULT_PHONE_REGION = "CN"


class InvalidContact(Unprocessable):
    """422: a contact field that cannot be normalised."""


def normalise_phone(raw: str, region: str = DEFAULT_PHONE_REGION, *, field: str = "phone") -> str:
    """E.164; numbers without a country code are read as `region`'s. `field` names the input in the error."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidContact(f"{field}: {raw!r} is not a phone number ({exc})") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidContact(f"{field}: {raw!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_email(raw: str, *, field: str = "email") -> str:
    """Trimmed and lower-cased; refused unless it has a local part, an @ and a dotted domain, no spaces."""
    email = raw.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in email):
        raise InvalidContact(f"{field}: {raw!r} is not an e-mail address")
    return email
