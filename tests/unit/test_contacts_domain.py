"""An account's contacts without I/O: fields as stored, edits, the duplicate and primary rules, archiving."""

import pytest

from services.opportunities.contacts.domain import BuyingRole, Contact, ContactInUse, DuplicateContact, known_contact
from services.opportunities.domain import StatusNotAllowed
from shared.errors import Unprocessable


def contact(contact_id: str = "con-1", **values: object) -> Contact:
    return Contact.new(contact_id, "acc-1", {"name": "李娜", **values})


def test_a_new_contact_is_stored_normalised():
    made = contact(name="  李  娜 ", title=" 采购经理 ", role="decision_maker", phone="138 0013 8000",
                   email=" Li.Na@XingHe.CN ", is_primary=True)
    assert (made.name, made.title, made.role) == ("李 娜", "采购经理", BuyingRole.DECISION_MAKER)
    assert (made.phone, made.email, made.is_primary) == ("+8613800138000", "li.na@xinghe.cn", True)


def test_a_contact_needs_only_a_name():
    made = contact()
    assert (made.title, made.role, made.phone, made.email, made.is_primary) == (None, None, None, None, False)
    with pytest.raises(Unprocessable, match="name: a contact needs a name"):
        Contact.new("con-1", "acc-1", {"phone": "13800138000"})


def test_every_field_that_cannot_be_taken_is_named_at_once():
    with pytest.raises(Unprocessable) as refused:
        contact(name=" ", phone="12345", email="li.na", role="boss", is_primary="yes", age="40")
    for named in ("age: not a field", "name:", "phone:", "email:", "role: one of decision_maker", "is_primary:"):
        assert named in str(refused.value)


def test_an_edit_changes_the_fields_given_and_says_which_changed():
    before = contact(phone="13800138000", title="工程师")
    edited, changes = before.edit({"title": "采购经理", "phone": "+86 138-0013-8000", "email": None})
    assert changes == {"title": "采购经理"}  # the same number, another spelling; e-mail was null already
    assert edited.title == "采购经理" and edited.phone == before.phone


def test_an_edit_that_changes_nothing_returns_the_same_contact():
    before = contact(role="user")
    assert before.edit({"role": "user", "name": "李娜"}) == (before, {})


def test_optional_fields_clear_with_null_but_the_name_does_not():
    before = contact(title="经理", phone="13800138000")
    edited, changes = before.edit({"title": None, "phone": "  "})
    assert (edited.title, edited.phone) == (None, None) and set(changes) == {"title", "phone"}
    with pytest.raises(Unprocessable, match="name"):
        before.edit({"name": None})


def test_a_phone_or_email_another_contact_of_the_account_has_is_refused_naming_it():
    existing = [contact("con-1", phone="13800138000"), contact("con-2", name="王伟", email="wang@xinghe.cn")]
    with pytest.raises(DuplicateContact, match="contact con-1 .*phone \\+8613800138000"):
        contact("con-3", name="Li Na", phone="+86 13800138000").check_unique_in_account(existing)
    with pytest.raises(DuplicateContact, match="contact con-2 \\(王伟\\).*e-mail wang@xinghe.cn"):
        contact("con-3", email="WANG@xinghe.cn").check_unique_in_account(existing)
    contact("con-3", phone="13900139000").check_unique_in_account(existing)
    existing[0].check_unique_in_account(existing)  # a contact does not duplicate itself


def test_an_archived_contact_frees_its_phone_and_email():
    archived = contact("con-1", phone="13800138000").archive([], 0)
    contact("con-2", phone="13800138000").check_unique_in_account([archived])


def test_a_new_primary_contact_demotes_the_former_one():
    former = contact("con-1", is_primary=True)
    others = [former, contact("con-2")]
    assert contact("con-3", is_primary=True).primary_to_demote(others) == former
    assert contact("con-3").primary_to_demote(others) is None
    assert former.primary_to_demote(others) is None


def test_a_contact_named_by_open_deals_is_not_archived():
    in_use = contact()
    with pytest.raises(ContactInUse, match="named by 1 open or suspended opportunity: opp-1;"):
        in_use.archive(["opp-1"], 1)
    with pytest.raises(ContactInUse, match="named by 7 open or suspended opportunities: opp-1, opp-2 and 5 more"):
        in_use.archive(["opp-1", "opp-2"], 7)


def test_an_archived_contact_is_no_longer_primary_and_cannot_change():
    archived = contact(is_primary=True).archive([], 0)
    assert (archived.archived, archived.is_primary) == (True, False)
    with pytest.raises(StatusNotAllowed, match="archived"):
        archived.edit({"title": "经理"})
    with pytest.raises(StatusNotAllowed, match="archived already"):
        archived.archive([], 0)


def test_a_converted_leads_person_is_a_known_contact_when_a_phone_or_email_matches():
    archived = contact("con-1", phone="13800138000").archive([], 0)
    current = contact("con-2", email="wang@xinghe.cn")
    assert known_contact([archived, current], "+8613800138000", None) is None  # archived ones are not known
    assert known_contact([archived, current], "+8613900139000", "wang@xinghe.cn") == current
    assert known_contact([archived, current], None, None) is None
