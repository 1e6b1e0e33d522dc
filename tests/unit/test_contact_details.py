"""Phone and e-mail normalisation shared by the leads service and accounts' contacts."""

import pytest

from shared.contact_details import InvalidContact, normalise_email, normalise_phone
from shared.errors import Unprocessable


@pytest.mark.parametrize(
    "raw", ["13800138000", "138 0013 8000", "+86 138-0013-8000", "0086 13800138000", "+8613800138000"]
)
def test_chinese_mobiles_normalise_to_e164(raw):
    assert normalise_phone(raw) == "+8613800138000"


def test_a_number_with_its_country_code_keeps_it():
    assert normalise_phone("+1 650 253 0000") == "+16502530000"


def test_another_default_region_reads_national_numbers_as_its_own():
    assert normalise_phone("650 253 0000", "US") == "+16502530000"


@pytest.mark.parametrize("raw", ["12345", "not a phone", "+86 1"])
def test_a_non_number_is_refused_naming_the_field(raw):
    with pytest.raises(InvalidContact, match=r"^phone: "):
        normalise_phone(raw)
    with pytest.raises(Unprocessable, match=r"^contact\.phone: "):
        normalise_phone(raw, field="contact.phone")


def test_email_is_lower_cased_and_trimmed():
    assert normalise_email("  Wang.Wei@XingHe.CN ") == "wang.wei@xinghe.cn"


@pytest.mark.parametrize("raw", ["wang.wei", "@xinghe.cn", "wang@xinghe", "wang wei@xinghe.cn"])
def test_an_address_without_local_part_at_and_dotted_domain_is_refused(raw):
    with pytest.raises(InvalidContact, match=r"^email: "):
        normalise_email(raw)
