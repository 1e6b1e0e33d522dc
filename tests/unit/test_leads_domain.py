"""The lead's rules without I/O: lifecycle, grade SLA, normalisation, round robin."""

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from services.leads.domain import (
    Campaign,
    Contact,
    Grade,
    InvalidContact,
    Lead,
    Status,
    TransitionNotAllowed,
    follow_up_due,
    money,
    normalise_company,
    rep_for_turn,
)
from shared.errors import Unprocessable

CAPTURED = datetime(2026, 11, 3, 2, 15, tzinfo=UTC)


def new_lead(grade: Grade | None = Grade.A, owner: str | None = "rep-1") -> Lead:
    lead = Lead.capture(
        "lead-1",
        Contact.normalised("王伟", " 星河科技 ", "138 0013 8000", None),
        source="api",
        grade=grade,
        region="华东",
        campaign_id=None,
        attributes={},
        captured_at=CAPTURED,
        captured_by="rep-1",
    )
    if owner:
        lead.assign(owner, "east")
    return lead


@pytest.mark.parametrize(
    ("grade", "days"), [(Grade.H, 5), (Grade.A, 15), (Grade.B, 30), (Grade.C, 60), (None, 7)]
)
def test_follow_up_is_due_after_the_grades_window(grade, days):
    assert follow_up_due(grade, CAPTURED) == CAPTURED + timedelta(days=days)
    assert new_lead(grade).follow_up_due_at == CAPTURED + timedelta(days=days)


def test_a_leads_contact_names_its_fields_in_errors():
    with pytest.raises(InvalidContact, match="contact.phone"):
        Contact.normalised("王伟", None, "12345", None)
    with pytest.raises(InvalidContact, match="contact.email"):
        Contact.normalised("王伟", None, None, "wang.wei")
    assert Contact.normalised("王伟", None, "138 0013 8000", None).phone == "+8613800138000"


def test_company_is_trimmed_and_inner_spaces_collapsed():
    assert normalise_company("  上海  星河科技 ") == "上海 星河科技"
    assert normalise_company("   ") is None


def test_a_contact_needs_a_phone_or_an_email():
    with pytest.raises(InvalidContact, match="phone or an e-mail"):
        Contact.normalised("王伟", None, "  ", None)
    assert Contact.normalised("王伟", None, None, "A@B.cn").email == "a@b.cn"


def test_round_robin_turns_go_through_the_team_in_order_and_wrap():
    reps = ["rep-1", "rep-2", "rep-3"]
    assert [rep_for_turn(reps, turn) for turn in range(1, 8)] == [
        "rep-1", "rep-2", "rep-3", "rep-1", "rep-2", "rep-3", "rep-1"]
    assert rep_for_turn(["rep-1", "rep-3"], 3) == "rep-1"  # a rep who left: the turns go round the rest
    with pytest.raises(ValueError):
        rep_for_turn([], 1)


def test_the_first_touch_moves_a_new_lead_to_contacted_and_records_the_first_response():
    lead = new_lead()
    first = CAPTURED + timedelta(hours=1)
    assert lead.record_touch(first) == 1
    assert lead.status is Status.CONTACTED
    assert lead.first_response_at == first
    assert lead.record_touch(first + timedelta(days=1)) == 2
    assert lead.first_response_at == first
    assert lead.last_contacted_at == first + timedelta(days=1)


def test_the_happy_path_to_converted():
    lead = new_lead()
    lead.record_touch(CAPTURED)
    lead.qualify()
    lead.convert(CAPTURED)
    assert lead.status is Status.CONVERTED
    assert lead.converted_at == CAPTURED


def test_qualifying_a_new_lead_says_what_is_allowed():
    with pytest.raises(TransitionNotAllowed, match="a new lead can only become contacted, disqualified, not qualified"):
        new_lead().qualify()


def test_converting_needs_a_qualified_lead_with_an_owner():
    lead = new_lead()
    lead.record_touch(CAPTURED)
    with pytest.raises(TransitionNotAllowed, match="can only become qualified, disqualified"):
        lead.convert(CAPTURED)
    unowned = new_lead(owner=None)
    unowned.record_touch(CAPTURED)
    unowned.qualify()
    with pytest.raises(TransitionNotAllowed, match="no owner"):
        unowned.convert(CAPTURED)


def test_disqualifying_needs_a_reason_and_closes_the_lead():
    lead = new_lead()
    with pytest.raises(Unprocessable, match="reason"):
        lead.disqualify("  ")
    lead.disqualify("no_budget")
    assert lead.status is Status.DISQUALIFIED and lead.disqualify_reason == "no_budget"
    with pytest.raises(TransitionNotAllowed, match="closed"):
        lead.qualify()
    with pytest.raises(TransitionNotAllowed, match="closed"):
        lead.record_touch(CAPTURED)


def test_every_event_takes_the_next_version():
    lead = new_lead()
    assert [lead.next_version() for _ in range(3)] == [1, 2, 3]


def campaign(**overrides: object) -> Campaign:
    fields: dict[str, object] = {
        "id": "cmp-1", "name": "秋季展会", "channel": "event", "budget": Decimal("50000"), "actual_cost": Decimal(0),
        "currency": "CNY", "starts_on": date(2026, 10, 20), "ends_on": date(2026, 11, 30), "owner_id": "mgr-1",
    }
    fields.update(overrides)
    return Campaign(**fields)  # type: ignore[arg-type]


def test_a_campaign_moves_planned_running_completed_and_never_back():
    c = campaign()
    assert c.change(status="running", actual_cost=Decimal("100")) == ["status", "actual_cost"]
    assert c.change(status="running") == []
    with pytest.raises(TransitionNotAllowed, match="a running campaign can only become completed, not planned"):
        c.change(status="planned")
    c.change(status="completed")
    with pytest.raises(TransitionNotAllowed, match="only its actual_cost"):
        c.change(name="x")
    assert c.change(actual_cost=Decimal("48000")) == ["actual_cost"]


def test_a_campaign_refuses_negative_money_and_a_period_ending_before_it_starts_and_keeps_its_state():
    with pytest.raises(Unprocessable, match="budget"):
        campaign(budget=Decimal(-1))
    c = campaign()
    with pytest.raises(Unprocessable, match="ends_on"):
        c.change(ends_on=date(2026, 1, 1), name="新名字")
    assert c.ends_on == date(2026, 11, 30) and c.name == "秋季展会"


def test_money_is_a_two_place_decimal_string():
    assert money(Decimal("5E+4")) == "50000.00"
    assert money(Decimal("12000.5")) == "12000.50"


def test_a_new_grade_restarts_the_follow_up_window_from_the_change():
    lead = new_lead(Grade.C)
    later = CAPTURED + timedelta(days=20)
    assert lead.change_grade(Grade.H, later) is True
    assert lead.follow_up_due_at == later + timedelta(days=5)
    assert lead.change_grade(Grade.H, later) is False
    lead.disqualify("no_budget")
    with pytest.raises(TransitionNotAllowed, match="closed"):
        lead.change_grade(Grade.A, later)


def test_a_merged_duplicate_is_closed_and_points_at_its_survivor():
    survivor, duplicate = new_lead(), new_lead()
    duplicate.id = "lead-2"
    with pytest.raises(Unprocessable, match="itself"):
        survivor.merge_into(survivor)
    assert duplicate.merge_into(survivor).matched_on == ["phone", "company"]
    assert duplicate.status is Status.MERGED and duplicate.merged_into == survivor.id
    with pytest.raises(TransitionNotAllowed, match="closed"):
        duplicate.merge_into(survivor)
    with pytest.raises(TransitionNotAllowed, match="was itself merged"):
        new_lead().merge_into(duplicate)


def test_nothing_merges_into_a_closed_lead_and_a_refused_merge_changes_neither():
    for close in (lambda lead: lead.disqualify("no_budget"), _converted):
        survivor, duplicate = new_lead(), second_lead()
        close(survivor)
        before = (replace(survivor), replace(duplicate))
        with pytest.raises(TransitionNotAllowed, match="nothing can be merged into it"):
            duplicate.merge_into(survivor)
        assert (survivor, duplicate) == before


def _converted(lead: Lead) -> None:
    lead.record_touch(CAPTURED)
    lead.qualify()
    lead.convert(CAPTURED)


def second_lead(grade: Grade | None = Grade.H, **contact: str | None) -> Lead:
    """Another lead of the same person, captured a day later with other details."""
    details = {"name": "王 伟", "company": None, "phone": "139 1111 2222", "email": "Wang@XH.cn"} | contact
    lead = Lead.capture(
        "lead-2",
        Contact.normalised(**details),  # type: ignore[arg-type]
        source="web_form",
        grade=grade,
        region="华北",
        campaign_id="campaign-9",
        attributes={"utm_source": "wechat", "utm_term": "crm"},
        captured_at=CAPTURED + timedelta(days=1),
        captured_by=None,
    )
    lead.assign("rep-2", "east")
    return lead


def test_the_survivor_keeps_its_values_and_takes_what_it_lacks_from_the_duplicate():
    survivor = new_lead(grade=None)
    survivor.attributes = {"utm_source": "baidu"}
    duplicate = second_lead()
    merge = duplicate.merge_into(survivor)
    # the survivor's own phone, company, region and attribute values win; its gaps are filled
    assert survivor.contact == Contact("王伟", "星河科技", "+8613800138000", "wang@xh.cn")
    assert survivor.region == "华东" and survivor.grade is Grade.H and survivor.campaign_id == "campaign-9"
    assert survivor.attributes == {"utm_source": "baidu", "utm_term": "crm"}
    assert merge.filled == ["contact.email", "grade", "campaign_id", "attributes.utm_term"]
    # the e-mail moved (one lead holds it); the phone the survivor did not take stays on the duplicate
    assert duplicate.contact == Contact("王 伟", None, "+8613911112222", None)
    # the earlier follow-up stands: the survivor's ungraded week against the duplicate's H (5 days from a day later)
    assert survivor.follow_up_due_at == CAPTURED + timedelta(days=6)
    assert survivor.owner_id == "rep-1" and survivor.source == "api" and survivor.captured_at == CAPTURED


def test_a_graded_survivor_keeps_its_grade_even_when_the_duplicate_is_hotter():
    survivor = new_lead(grade=Grade.C)
    second_lead(grade=Grade.H).merge_into(survivor)
    assert survivor.grade is Grade.C


def test_the_touches_add_up_with_the_earliest_response_and_the_latest_contact():
    survivor, duplicate = new_lead(), second_lead()
    survivor.record_touch(CAPTURED + timedelta(days=3))
    duplicate.record_touch(CAPTURED + timedelta(days=1, hours=2))
    duplicate.record_touch(CAPTURED + timedelta(days=4))
    merge = duplicate.merge_into(survivor)
    assert merge.touches_before == 1 and survivor.touch_count == 3
    assert survivor.first_response_at == CAPTURED + timedelta(days=1, hours=2)
    assert survivor.last_contacted_at == CAPTURED + timedelta(days=4)
    assert survivor.status is Status.CONTACTED


def test_a_new_survivor_given_touches_is_contacted_and_a_qualified_one_stays_qualified():
    survivor, duplicate = new_lead(), second_lead()
    duplicate.record_touch(CAPTURED + timedelta(days=2))
    duplicate.merge_into(survivor)
    assert (survivor.status, survivor.touch_count) == (Status.CONTACTED, 1)
    assert survivor.first_response_at == survivor.last_contacted_at == CAPTURED + timedelta(days=2)
    qualified, untouched = new_lead(), second_lead()
    qualified.record_touch(CAPTURED)
    qualified.qualify()
    untouched.merge_into(qualified)
    assert (qualified.status, qualified.touch_count, qualified.first_response_at) == (Status.QUALIFIED, 1, CAPTURED)
