"""The learned lead and opportunity models: training, held-out evaluation, explained scores."""

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from services.scoring.domain import LeadFeatures, OpportunityFeatures, OpportunityMoment, score_lead
from services.scoring.handlers import _rules_probability
from services.scoring.learning import (
    MIN_OUTCOMES,
    OPPORTUNITY_FEATURE_NAMES,
    POINTS_PER_LOGIT,
    TREE_PARAMETERS,
    Example,
    NotEnoughOutcomes,
    TreeModel,
    model_from_json,
    train,
    vectorise,
)

START = datetime(2026, 11, 1, tzinfo=UTC)


def example(i: int, positive: bool) -> Example:
    # Against the rules' intuition: here the C-grade leads that read many pages convert, the H-grade ones do not.
    lead = LeadFeatures(grade="C" if positive else "H", source="web_form", has_phone=True, captured_at=START)
    lead = lead.engaged(1, 600 if positive else 30, 12 if positive else 1, None)
    return Example(lead, positive, START + timedelta(minutes=i))


def rules(e: Example) -> float:
    return score_lead(e.features, e.observed_at).score


def test_a_model_that_sees_what_the_rules_miss_beats_them_on_the_held_out_slice() -> None:
    examples = [example(i, i % 2 == 0) for i in range(100)]
    model, evaluation = train(examples, "lr-test", rules)
    assert (evaluation.n_train, evaluation.n_holdout) == (80, 20)
    assert evaluation.auc > 0.95 and evaluation.current_auc < 0.5 and evaluation.beats_current
    assert 0 <= evaluation.brier < 0.1
    assert (evaluation.window_from, evaluation.window_to) == (START, START + timedelta(minutes=99))
    converts, does_not = model.score(example(0, True).features), model.score(example(1, False).features)
    assert converts.score > 80 > 20 > does_not.score and converts.model_version == "lr-test"
    assert converts.factors and all(f.label_en and f.label_zh for f in converts.factors)
    contributions = [abs(f.contribution) for f in converts.factors]
    assert contributions == sorted(contributions, reverse=True)


def test_a_model_no_better_than_the_current_one_is_not_promoted() -> None:
    examples = [example(i, i % 2 == 0) for i in range(100)]
    _, evaluation = train(examples, "lr-test", lambda e: 1.0 if e.positive else 0.0)  # a perfect current model
    assert evaluation.current_auc == 1.0 and not evaluation.beats_current


def test_training_needs_enough_outcomes_of_both_kinds() -> None:
    with pytest.raises(NotEnoughOutcomes):
        train([example(i, i % 2 == 0) for i in range(MIN_OUTCOMES - 1)], "v", rules)
    with pytest.raises(NotEnoughOutcomes):
        train([example(i, True) for i in range(100)], "v", rules)


def test_a_model_survives_its_json_form() -> None:
    model, _ = train([example(i, i % 2 == 0) for i in range(60)], "gb-json", rules)
    assert isinstance(model, TreeModel) and model.algorithm == "gradient_boosting"
    again = model_from_json("gb-json", model.algorithm, model.to_json())
    features = example(3, True).features
    assert again == model and again.score(features) == model.score(features)


def mixed(i: int) -> Example:
    """A lead whose outcome depends on time on site and page views together, not only by their sum."""
    minutes, pages = (i * 7) % 23, (i * 5) % 13
    lead = LeadFeatures(grade="HABC"[i % 4], source="web_form", captured_at=START).engaged(1, minutes * 60, pages, None)
    return Example(lead, (minutes > 8) != (pages > 9), START + timedelta(minutes=i))


def test_the_stored_trees_score_as_scikit_learn_does_and_their_terms_add_up() -> None:
    examples = [mixed(i) for i in range(200)]
    model, _ = train(examples, "gb-check", rules)
    assert isinstance(model, TreeModel) and len(model.trees) == TREE_PARAMETERS["max_iter"]
    training = examples[:160]  # the older 80 %, as train() takes them
    x = np.array([vectorise(e.features, model.names) for e in training])
    fitted = HistGradientBoostingClassifier(**TREE_PARAMETERS).fit(x, [e.positive for e in training])
    expected = fitted.predict_proba(np.array([vectorise(e.features, model.names) for e in examples]))[:, 1]
    assert [model.probability(e.features) for e in examples] == pytest.approx(list(expected), abs=1e-9)
    # The terms are each feature's part of the log-odds beyond the average lead's: the same for every lead.
    walks = [model.logit_and_terms(vectorise(e.features, model.names)) for e in examples]
    assert len({round(logit - sum(terms), 9) for logit, terms in walks}) == 1
    first = examples[0].features
    logit, terms = walks[0]
    top = model.score(first).factors
    largest = sorted(terms, key=abs, reverse=True)[:len(top)]
    assert [f.contribution for f in top] == [round(t * POINTS_PER_LOGIT, 1) for t in largest]
    assert {f.feature for f in top} <= {"time_on_site", "time_on_site_hours", "page_views", "grade_H", "grade_A",
                                        "grade_B", "grade_C"}
    assert model.score(first).score == round(100 / (1 + math.exp(-logit)))


def test_frequent_attribute_values_become_features() -> None:
    def with_answer(i: int, positive: bool) -> Example:
        answer = "Working Professional" if positive else "Student"
        lead = LeadFeatures().captured({"grade": None, "source": "web_form", "contact": {"name": "x", "phone": "1"},
                                        "attributes": {"occupation": answer, "utm_source": f"rare-{i}"}}, START)
        return Example(lead, positive, START + timedelta(minutes=i))

    examples = [with_answer(i, i % 2 == 0) for i in range(100)]
    model, evaluation = train(examples, "lr-attr", rules)
    assert "attr:occupation=Working Professional" in model.names and "attr:occupation=Student" in model.names
    assert not any(name.startswith("attr:utm_source") for name in model.names)  # each seen once: no feature
    assert evaluation.auc > 0.95 and evaluation.current_auc == 0.5
    top = model.score(examples[0].features).factors[0]
    assert top.feature.startswith("attr:occupation") and "occupation" in top.label_en and "occupation" in top.label_zh
    # A yes / no feature may move the score by its absence: then its label says "not".
    assert (top.label_en, top.label_zh) in {
        ("occupation: Working Professional raises the chance to convert",
         "occupation：Working Professional提高转化可能"),
        ("occupation: not Student raises the chance to convert", "occupation：非Student提高转化可能")}
    student = model.score(examples[1].features).factors[0]
    assert student.label_en in {"occupation: Student lowers the chance to convert",
                                "occupation: not Working Professional lowers the chance to convert"}


def deal(i: int, won: bool) -> Example:
    # Won deals were, at the moment of their last score while open, 40 days into bidding with a strong
    # assessment; lost ones 2 days into negotiation with a weak one. The moments of the lost deals carry a
    # competitor and the status "lost" (which a moment while open never does): neither may be learned.
    entered = START + timedelta(days=i)
    as_of = entered + timedelta(days=40 if won else 2)
    features = OpportunityFeatures(stage="bidding" if won else "negotiation", stage_probability=30 if won else 60,
                                   stage_entered_at=entered, created_at=entered, last_event_at=entered,
                                   maturity=80 if won else 30, status="won" if won else "lost",
                                   competitor=None if won else "某竞品", amount=50_000, product="GTX Pro")
    return Example(OpportunityMoment(features, as_of, 0.6), won, START + timedelta(days=200, minutes=i))


def test_an_opportunity_model_learns_from_a_moment_while_open_never_the_outcome_itself() -> None:
    model, evaluation = train([deal(i, i % 3 != 0) for i in range(90)], "opp-test", lambda e: 0.5)
    assert set(OPPORTUNITY_FEATURE_NAMES) <= set(model.names)
    assert "attr:product=GTX Pro" in model.names
    assert not {"competitor", "status", "observed_at"} & set(model.names)
    assert evaluation.auc > 0.95 and evaluation.beats_current
    entered = START + timedelta(days=100)
    open_deal = OpportunityFeatures(stage="bidding", stage_probability=30, maturity=80, stage_entered_at=entered,
                                    created_at=entered, last_event_at=entered, amount=50_000, product="GTX Pro")
    won_like = model.score(OpportunityMoment(open_deal, entered + timedelta(days=40), 0.6))
    assert won_like.score > 80 and won_like.model_version in {"gb-opp-test", "lr-opp-test"}
    assert all("chance to win" in f.label_en and "赢单" in f.label_zh for f in won_like.factors)
    moment = OpportunityMoment(open_deal, entered, 0.6)
    assert model.probability(replace(moment, features=replace(open_deal, competitor="某竞品", status="lost"))
                             ) == model.probability(moment)
    assert model_from_json(model.version, model.algorithm, model.to_json()) == model


def test_the_opportunity_inputs_are_measured_as_of_the_moment() -> None:
    created = START
    features = OpportunityFeatures(stage="bidding", stage_probability=30, stage_entered_at=created + timedelta(days=3),
                                   created_at=created, last_event_at=created + timedelta(days=13), amount=999.0,
                                   product="GTX Pro", region="East")
    names = (*OPPORTUNITY_FEATURE_NAMES, "attr:product=GTX Pro", "attr:region=West")
    # 2026-11-01 + 33 days is in December: the third month of its quarter
    values = dict(zip(names, vectorise(OpportunityMoment(features, created + timedelta(days=33), 0.7), names),
                      strict=True))
    assert values["amount"] == pytest.approx(math.log(1000))
    assert values["days_in_stage"] == pytest.approx(math.log1p(30))
    assert values["deal_age"] == pytest.approx(math.log1p(33))
    assert values["days_since_activity"] == pytest.approx(math.log1p(20))
    assert (values["owner_win_rate"], values["month_of_quarter"]) == (0.7, 3.0)
    assert (values["stage_bidding"], values["stage_probability"]) == (1.0, 0.3)
    assert (values["attr:product=GTX Pro"], values["attr:region=West"]) == (1.0, 0.0)
    # A moment before an event (no negative ages), and an owner without a rate yet: neutral values.
    early = dict(zip(names, vectorise(OpportunityMoment(features, created, None), names), strict=True))
    assert (early["days_in_stage"], early["days_since_activity"], early["owner_win_rate"]) == (0.0, 0.0, 0.5)


def late_in_quarter(i: int) -> Example:
    """A deal that wins when it is old in the last month of the quarter or young in another month: an
    interaction a linear model cannot draw."""
    as_of = datetime(2017, 1 + i % 12, 2, tzinfo=UTC)
    old = i % 5 < 2
    entered = as_of - timedelta(days=60 if old else 3)
    features = OpportunityFeatures(stage="bidding", stage_entered_at=entered, created_at=entered, last_event_at=entered)
    won = old == (as_of.month % 3 == 0)
    return Example(OpportunityMoment(features, as_of, 0.6), won, as_of + timedelta(minutes=i))


def test_the_opportunity_model_is_trees_where_they_rank_better() -> None:
    model, evaluation = train([late_in_quarter(i) for i in range(300)], "opp-pick", lambda e: 0.5)
    assert isinstance(model, TreeModel) and model.version == "gb-opp-pick"
    assert evaluation.auc > 0.95


def test_the_rules_are_compared_on_the_moment_the_learned_model_sees() -> None:
    entered = START + timedelta(days=1)
    bidding = OpportunityFeatures(stage="bidding", stage_probability=30, stage_entered_at=entered)
    # Scored as of a day into bidding, and as of 90 days (more than twice the usual 30): -10.
    fresh = Example(OpportunityMoment(bidding, entered + timedelta(days=1), None), False, entered + timedelta(days=2))
    aged = Example(OpportunityMoment(bidding, entered + timedelta(days=90), None), True, entered + timedelta(days=91))
    assert (_rules_probability(fresh), _rules_probability(aged)) == (0.30, 0.20)
