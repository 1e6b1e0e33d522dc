"""The learned lead and opportunity models: training, held-out evaluation, explained scores."""

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from services.scoring.domain import LeadFeatures, OpportunityFeatures, score_lead
from services.scoring.handlers import _rules_probability
from services.scoring.learning import (
    MIN_OUTCOMES,
    OPPORTUNITY_FEATURE_NAMES,
    POINTS_PER_LOGIT,
    TREE_PARAMETERS,
    Example,
    LinearModel,
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
    # Won deals closed from bidding with a strong assessment, lost ones from negotiation with a weak one;
    # every lost deal names a competitor and carries status "lost": neither may be learned.
    features = OpportunityFeatures(stage="bidding" if won else "negotiation", stage_probability=30 if won else 60,
                                   maturity=80 if won else 30, status="won" if won else "lost",
                                   competitor=None if won else "某竞品")
    return Example(features, won, START + timedelta(minutes=i))


def test_an_opportunity_model_learns_stage_and_maturity_not_the_outcome_itself() -> None:
    model, evaluation = train([deal(i, i % 3 != 0) for i in range(90)], "lr-opp-test", lambda e: 0.5)
    assert model.names == OPPORTUNITY_FEATURE_NAMES
    assert not {"competitor", "status"} & set(model.names)
    assert evaluation.auc > 0.95 and evaluation.beats_current
    open_deal = OpportunityFeatures(stage="bidding", stage_probability=30, maturity=80)
    won_like = model.score(open_deal)
    assert won_like.score > 80 and won_like.model_version == "lr-opp-test"
    assert all("chance to win" in f.label_en and "赢单" in f.label_zh for f in won_like.factors)
    assert model.probability(replace(open_deal, competitor="某竞品")) == model.probability(open_deal)
    assert isinstance(model, LinearModel) and model.algorithm == "logistic_regression"
    assert model_from_json("lr-opp-test", model.algorithm, model.to_json()) == model


def test_the_rules_are_compared_on_what_they_knew_while_the_deal_was_open() -> None:
    entered = START + timedelta(days=1)
    lost = OpportunityFeatures(stage="bidding", stage_probability=30, stage_entered_at=entered, status="lost",
                               competitor="某竞品")
    won = replace(lost, status="won", competitor=None)
    # The lost deal closed a day later, the won one after 90 days in bidding (more than twice the usual 30).
    lost_example = Example(lost, False, entered + timedelta(days=1))
    won_example = Example(won, True, entered + timedelta(days=90))
    assert _rules_probability(lost_example) == _rules_probability(won_example) == 0.30
