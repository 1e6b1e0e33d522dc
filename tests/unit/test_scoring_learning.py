"""The learned lead model: training, held-out evaluation against the current model, explained scores."""

from datetime import UTC, datetime, timedelta

import pytest

from services.scoring.domain import LeadFeatures, score_lead
from services.scoring.learning import MIN_OUTCOMES, Example, LinearModel, NotEnoughOutcomes, train

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
    model, _ = train([example(i, i % 2 == 0) for i in range(60)], "lr-json", rules)
    again = LinearModel.from_json("lr-json", model.to_json())
    features = example(3, True).features
    assert again == model and again.score(features) == model.score(features)


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
