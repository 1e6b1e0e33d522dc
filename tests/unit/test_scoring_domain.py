"""The scoring rules: lead scores and win probabilities, with their explaining factors."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from services.scoring.domain import (
    MODEL_VERSION,
    LeadFeatures,
    OpportunityFeatures,
    OpportunityMoment,
    score_lead,
    score_opportunity,
    smoothed_win_rate,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def captured(grade: str | None, source: str, **contact: str | None) -> LeadFeatures:
    person = {"name": "王先生", "company": "上海某某科技", "phone": "+8613800000000", "email": None, **contact}
    return LeadFeatures().captured({"grade": grade, "source": source, "owner_id": "rep-1", "contact": person}, NOW)


def test_an_h_grade_referral_outranks_a_c_grade_import() -> None:
    hot = score_lead(captured("H", "referral"), NOW)
    cold = score_lead(captured("C", "import"), NOW)
    assert hot.score > cold.score
    assert hot.model_version == cold.model_version == MODEL_VERSION == "rules-v1"
    assert (hot.score, cold.score) == (30 + 30 + 12 + 8, 30 - 5 - 4 + 8)


def test_factors_are_signed_ranked_and_bilingual() -> None:
    result = score_lead(captured("C", "import", company=None), NOW)
    contributions = [f.contribution for f in result.factors]
    assert contributions == sorted(contributions, key=abs, reverse=True)
    grade = next(f for f in result.factors if f.feature == "grade")
    assert grade.contribution == -5 and "C" in grade.label_en and "意向等级" in grade.label_zh
    completeness = next(f for f in result.factors if f.feature == "completeness")
    assert "company" in completeness.label_en and "公司" in completeness.label_zh
    assert len(result.factors) <= 5


def test_touches_raise_the_score_and_staleness_lowers_it() -> None:
    lead = captured("B", "web_form")
    untouched = score_lead(lead, NOW).score
    touched = lead.contacted(NOW - timedelta(hours=1), 1)
    assert score_lead(touched, NOW).score == untouched + 4
    twice = touched.contacted(NOW, 2)
    assert twice.touches == 2 and score_lead(twice, NOW).score == untouched + 7
    # the same lead seen a month and a half later: the last touch is stale
    assert score_lead(twice, NOW + timedelta(days=45)).score == untouched + 7 - 10
    # never touched four days after capture
    neglected = score_lead(lead, NOW + timedelta(days=4))
    assert neglected.score == untouched - 8
    assert any(f.feature == "recency" and "未跟进" in f.label_zh for f in neglected.factors)


def test_engagement_adds_up_and_is_capped() -> None:
    lead = captured(None, "web_form")
    base = score_lead(lead, NOW).score
    engaged = lead.engaged(2, 120, 4, "webinar_attended").engaged(1, 600, 8, ["whitepaper_downloaded"])
    assert (engaged.visits, engaged.time_on_site_s, engaged.page_views) == (3, 720, 12)
    assert score_lead(engaged, NOW).score == base + 6 + 10 + 5 + 4
    flooded = lead.engaged(1000, 100_000, 1000, ["a", "b", "c", "d", "e"])
    assert score_lead(flooded, NOW).score == base + 8 + 10 + 5 + 6


def test_a_merge_survivor_scores_the_combined_history() -> None:
    survivor = captured(None, "web_form", company=None)
    duplicate = captured("H", "event").contacted(NOW, 1).contacted(NOW, 2).engaged(2, 240, 9, "webinar_attended")
    after = {"owner_id": "rep-1", "grade": "H", "touch_count": 2, "attributes": {"utm_term": "crm"},
             "contact": {"name": "王先生", "company": "星河科技", "phone": "+8613800000000", "email": "w@xh.cn"}}
    merged = survivor.merged(duplicate, after, NOW)
    assert (merged.grade, merged.touches, merged.last_contacted_at) == ("H", 2, NOW)
    assert (merged.has_company, merged.has_email, merged.source, merged.captured_at) == (True, True, "web_form", NOW)
    assert (merged.visits, merged.page_views, merged.activities) == (2, 9, ("webinar_attended",))
    assert merged.attributes == (("utm_term", "crm"),)
    before, now = score_lead(survivor, NOW), score_lead(merged, NOW)
    features = {f.feature for f in now.factors}
    assert now.score > before.score and {"grade", "touches"} <= features
    assert LeadFeatures.from_json(merged.to_json()) == merged


def test_a_score_stays_within_0_and_100() -> None:
    best = captured("H", "referral", email="a@example.com").contacted(NOW, 3).engaged(50, 5000, 50, ["a", "b", "c"])
    assert score_lead(best, NOW).score == 100
    assert 0 <= score_lead(LeadFeatures(), NOW).score <= 100


def test_features_survive_their_json_form() -> None:
    lead = captured("A", "phone").contacted(NOW, 1).engaged(1, 30.5, 2, "x").assigned("rep-2", None)
    assert LeadFeatures.from_json(lead.to_json()) == lead
    assert lead.grade == "A" and lead.owner_id == "rep-2"
    assert lead.regraded("H").grade == "H"
    opp = OpportunityFeatures(owner_id="rep-1").moved("bidding", 30, NOW)
    assert OpportunityFeatures.from_json(opp.to_json()) == opp


def test_an_opportunity_event_tells_amount_product_region_and_the_latest_activity() -> None:
    told = OpportunityFeatures().told({"amount": "120000.50", "product": "GTX Pro", "region": "East"}, NOW)
    assert (told.amount, told.product, told.region, told.last_event_at) == (120000.5, "GTX Pro", "East", NOW)
    # An event without them keeps what was told; an event that overtook a later one leaves the latest time.
    later = told.told({"product": None}, NOW + timedelta(days=2)).told({}, NOW + timedelta(days=1))
    assert (later.amount, later.product, later.last_event_at) == (120000.5, "GTX Pro", NOW + timedelta(days=2))
    moment = OpportunityMoment(replace(later, created_at=NOW).moved("bidding", 30, NOW), NOW + timedelta(days=3), 0.6)
    assert OpportunityMoment.from_json(moment.to_json()) == moment


def test_an_owners_win_rate_is_pulled_toward_the_overall_rate_while_they_have_few_outcomes() -> None:
    assert smoothed_win_rate(0, 0, 0, 0) is None  # nothing recorded yet
    assert smoothed_win_rate(0, 0, 60, 40) == 0.6  # a new owner: the overall rate
    assert smoothed_win_rate(2, 0, 60, 40) == (2 + 20 * 0.6) / 22  # two wins count for a little
    experienced = smoothed_win_rate(900, 100, 960, 1040)  # many outcomes: near the owner's own rate
    assert experienced is not None and abs(experienced - 0.9) < 0.01


def test_win_probability_starts_from_the_stage() -> None:
    opp = OpportunityFeatures(owner_id="rep-1").moved("negotiation", 60, NOW)
    result = score_opportunity(opp, NOW)
    assert result.score == 60 and result.model_version == "rules-v1"
    assert result.factors[0].feature == "stage" and "商务洽谈" in result.factors[0].label_zh
    # no probability in the event: the default pipeline's
    assert score_opportunity(OpportunityFeatures().moved("bidding", None, NOW), NOW).score == 30


def test_a_stage_of_a_configured_pipeline_is_scored_from_its_event() -> None:
    """A key the default pipeline lacks: the event's probability, the key as its label, 30 days as usual."""
    opp = OpportunityFeatures(owner_id="rep-1").moved("site_visit", 45, NOW)
    fresh = score_opportunity(opp, NOW + timedelta(days=30))
    assert fresh.score == 45 and fresh.factors[0].label_en == "Stage site_visit: 45% by default"
    assert "「site_visit」" in fresh.factors[0].label_zh
    stale = score_opportunity(opp, NOW + timedelta(days=61))
    assert stale.score == 35
    assert any(f.feature == "age_in_stage" and "usually 30" in f.label_en for f in stale.factors)


def test_maturity_age_and_competitor_adjust_the_probability() -> None:
    opp = OpportunityFeatures(owner_id="rep-1").moved("bidding", 30, NOW)
    assert score_opportunity(OpportunityFeatures(maturity=100, stage="bidding", stage_probability=30), NOW).score == 45
    mature = OpportunityFeatures(**{**opp.__dict__, "maturity": 100})
    assert score_opportunity(mature, NOW).score == 45
    immature = OpportunityFeatures(**{**opp.__dict__, "maturity": 0})
    assert score_opportunity(immature, NOW).score == 15
    assert score_opportunity(opp, NOW + timedelta(days=31)).score == 25
    assert score_opportunity(opp, NOW + timedelta(days=61)).score == 20
    contested = OpportunityFeatures(**{**opp.__dict__, "competitor": "华为"})
    result = score_opportunity(contested, NOW)
    assert result.score == 22
    assert any(f.feature == "competitor" and f.contribution == -8 and "华为" in f.label_zh for f in result.factors)


def test_closed_opportunities_are_certain_and_open_ones_never() -> None:
    assert score_opportunity(OpportunityFeatures(status="won", stage="contract"), NOW).score == 100
    assert score_opportunity(OpportunityFeatures(status="lost", stage="bidding"), NOW).score == 0
    weak = OpportunityFeatures(stage="prospecting", stage_probability=10, maturity=0, competitor="X",
                               stage_entered_at=NOW - timedelta(days=100))
    assert score_opportunity(weak, NOW).score == 1
