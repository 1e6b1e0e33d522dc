"""Re-scoring as time passes, without I/O: what a lead or a deal scores as of a later moment, which subjects
a pass leaves as they are, and which changes are published."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from services.scoring import store
from services.scoring.domain import Factor, LeadFeatures, OpportunityFeatures, Score, score_lead, score_opportunity
from services.scoring.handlers import (
    Rescored,
    lead_rescored,
    lead_score_changed,
    opportunity_rescored,
    opportunity_score_changed,
)

CAPTURED = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
NO_OUTCOMES = store.WinTallies({}, (0, 0))


def captured_lead() -> LeadFeatures:
    person = {"name": "王先生", "company": "上海某某科技", "phone": "+8613800000000", "email": None}
    return LeadFeatures().captured({"grade": "H", "source": "referral", "owner_id": "rep-1", "contact": person},
                                   CAPTURED)


def kept(result: Score, scored_at: datetime, sequence: int = 1) -> store.Scored:
    """A score as the store keeps it after an event computed it."""
    return store.Scored("subject-1", "rep-1", result.score, result.model_version,
                        [f.as_dict() for f in result.factors], scored_at, sequence)


class FixedModel:
    """A learned lead model that scores every lead 55 (the re-scoring must ask it, not the rules)."""

    version = "gb-test"

    def score(self, features: LeadFeatures) -> Score:
        return Score(55, self.version, (Factor("visits", 5.0, "Visited the site", "访问网站"),))


def test_a_lead_never_contacted_loses_points_once_three_days_pass_since_its_capture() -> None:
    lead = captured_lead()
    at_capture = score_lead(lead, CAPTURED)
    read = kept(at_capture, CAPTURED)
    two_days = lead_rescored(None, CAPTURED + timedelta(days=2), "lead-1", lead, read)
    assert two_days is not None and not lead_score_changed(two_days)  # same score, same factors: not published
    four_days = lead_rescored(None, CAPTURED + timedelta(days=4), "lead-1", lead, read)
    assert four_days is not None and lead_score_changed(four_days)
    assert four_days.result.score == at_capture.score - 8 == 72
    assert any(f.feature == "recency" and f.contribution == -8 for f in four_days.result.factors)
    assert (four_days.subject_id, four_days.read, four_days.features) == ("lead-1", read, lead)


def test_a_lead_scored_after_the_moment_of_the_pass_is_left_as_it_is() -> None:
    lead = captured_lead()
    read = kept(score_lead(lead, CAPTURED), CAPTURED + timedelta(days=5))
    assert lead_rescored(None, CAPTURED + timedelta(days=4), "lead-1", lead, read) is None


def test_a_lead_is_re_scored_by_the_active_learned_model_as_its_events_are() -> None:
    lead = captured_lead()
    read = kept(FixedModel().score(lead), CAPTURED)
    rescored = lead_rescored(FixedModel(), CAPTURED + timedelta(days=10), "lead-1", lead, read)  # type: ignore[arg-type]
    assert rescored is not None and rescored.result.model_version == "gb-test"
    assert not lead_score_changed(rescored)  # the learned model does not read the moment: nothing to publish


def test_a_lead_score_changed_when_its_number_model_or_factors_did() -> None:
    result = score_lead(captured_lead(), CAPTURED)
    read = kept(result, CAPTURED)

    def changed(new: Score) -> bool:
        return lead_score_changed(Rescored("lead-1", read, captured_lead(), new))

    assert not changed(result)
    assert changed(replace(result, score=result.score - 1))
    assert changed(replace(result, model_version="gb-test"))
    # a clamped score keeps its number while a factor appears or moves
    assert changed(replace(result, factors=(*result.factors[:-1], Factor("recency", -8, "Not contacted", "未跟进"))))
    relabelled = tuple(replace(f, label_en=f"{f.label_en}, a day later") for f in result.factors)
    assert not changed(replace(result, factors=relabelled))


def test_a_stale_lead_is_published_when_its_recency_points_change_not_as_its_days_count_up() -> None:
    lead = captured_lead().contacted(CAPTURED, 1)
    read = kept(score_lead(lead, CAPTURED), CAPTURED)
    published = []
    for day in range(1, 41):  # a pass a day for 40 days, each kept score the last one published
        rescored = lead_rescored(None, CAPTURED + timedelta(days=day, hours=1), "lead-1", lead, read)
        assert rescored is not None
        if lead_score_changed(rescored):
            published.append((day, rescored.result.score))
            read = kept(rescored.result, CAPTURED + timedelta(days=day, hours=1))
    assert published == [(8, 84 - 5), (31, 84 - 10)]  # last touch 8 days ago -5, over 30 days -10


def test_a_deal_re_scored_later_ages_in_its_stage_and_only_its_number_is_compared() -> None:
    deal = replace(OpportunityFeatures(owner_id="rep-1", status="open").moved("bidding", 30, CAPTURED),
                   last_event_at=CAPTURED)
    read = kept(score_opportunity(deal, CAPTURED), CAPTURED)
    known = store.KnownOpportunity(deal, read)
    aged = opportunity_rescored(None, NO_OUTCOMES, CAPTURED + timedelta(days=40), "opp-1", known)
    assert aged is not None and aged.result.score == 25 and opportunity_score_changed(aged)
    assert aged.open_moment is not None and aged.open_moment.as_of == CAPTURED + timedelta(days=40)
    other_factors = Rescored("opp-1", read, deal, Score(read.score, "gb-opp-test", ()))
    assert not opportunity_score_changed(other_factors)  # a learned model's factors move with every hour


def test_a_deal_closed_or_told_of_after_the_pass_is_left_as_it_is() -> None:
    deal = replace(OpportunityFeatures(owner_id="rep-1", status="open").moved("bidding", 30, CAPTURED),
                   last_event_at=CAPTURED)
    read = kept(score_opportunity(deal, CAPTURED), CAPTURED)
    later = CAPTURED + timedelta(days=40)
    won = store.KnownOpportunity(replace(deal, status="won"), read)
    assert opportunity_rescored(None, NO_OUTCOMES, later, "opp-1", won) is None
    told_later = store.KnownOpportunity(replace(deal, last_event_at=later + timedelta(hours=1)), read)
    assert opportunity_rescored(None, NO_OUTCOMES, later, "opp-1", told_later) is None
