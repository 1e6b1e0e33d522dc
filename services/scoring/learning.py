"""The learned models: logistic regressions (scikit-learn) over the features the events tell, trained
from the outcomes this service observed: leads (converted = positive, disqualified = negative) and
opportunities (won = positive, lost = negative).

Opportunity features: the stage one-hot (prospecting, bidding, negotiation, contract), the stage's
default probability, the presales maturity ((maturity - 50) / 50, 0 when not assessed) and whether it
was assessed. A competitor is not a learned feature: only the lost event names one, so it would
learn the outcome itself. The status (won / lost) never is.

Features: grade and source one-hot, company / phone / e-mail given, touches, log visits, log minutes
on site, log page views, activities, and an indicator for every attribute value (form answer, UTM
parameter ...) seen at least `MIN_ATTRIBUTE_COUNT` times in the training slice.

Kept as plain numbers (feature names, means, scales, coefficients, intercept), so a model is stored as
JSON, never as a pickle, and scoring needs no scikit-learn. No I/O here.

Evaluation: the outcomes are ordered by when they were observed; the first 80 % train, the latest
20 % are the held-out slice. A candidate is promoted only if its ROC AUC on that slice is higher than
the current model's (the rules, or the active learned model) on the same slice. Calibration is
reported as the Brier score of the held-out probabilities.

Factors of a learned score: each feature's term of the logit, coef x (value - mean) / scale, turned
into score points by x 25 (the slope of the logistic curve at 50 %, times 100).
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.scoring.domain import (
    SOURCE_POINTS,
    STAGE_LABELS,
    STAGE_PROBABILITY,
    TOP_FACTORS,
    Factor,
    LeadFeatures,
    OpportunityFeatures,
    Score,
)

MIN_OUTCOMES = 40
MIN_ATTRIBUTE_COUNT = 10  # an attribute value seen this often in training becomes an indicator feature
MAX_ATTRIBUTE_FEATURES = 300
HOLDOUT_SHARE = 0.2
POINTS_PER_LOGIT = 25.0

GRADES = ("H", "A", "B", "C")
SOURCES = tuple(SOURCE_POINTS)

# feature name -> (English, Chinese) label stems
_LABELS: dict[str, tuple[str, str]] = {
    **{f"grade_{g}": (f"Intent grade {g}", f"意向等级 {g}") for g in GRADES},
    **{f"source_{s}": (en, zh) for s, (_, en, zh) in SOURCE_POINTS.items()},
    "has_company": ("Company given", "提供了公司"),
    "has_phone": ("Phone given", "提供了电话"),
    "has_email": ("E-mail given", "提供了邮箱"),
    "touches": ("Touches logged", "跟进次数"),
    "visits": ("Site visits", "网站访问次数"),
    "time_on_site": ("Time on site", "网站停留时长"),
    "time_on_site_hours": ("Hours on site", "网站停留小时数"),
    "page_views": ("Page views", "页面浏览数"),
    "activities": ("Marketing activities", "营销活动参与"),
}
FEATURE_NAMES: tuple[str, ...] = tuple(_LABELS)

OPEN_STAGES = ("prospecting", "bidding", "negotiation", "contract")
_OPPORTUNITY_LABELS: dict[str, tuple[str, str]] = {
    **{f"stage_{stage}": (f"Stage {STAGE_LABELS[stage][0]}", f"阶段「{STAGE_LABELS[stage][1]}」")
       for stage in OPEN_STAGES},
    "stage_probability": ("The stage's default probability", "阶段默认赢率"),
    "maturity": ("Presales maturity", "售前成熟度"),
    "maturity_assessed": ("Maturity assessed", "已做成熟度评估"),
}
OPPORTUNITY_FEATURE_NAMES: tuple[str, ...] = tuple(_OPPORTUNITY_LABELS)

Features = LeadFeatures | OpportunityFeatures


class NotEnoughOutcomes(Exception):
    pass


def _attribute_name(key: str, value: str) -> str:
    return f"attr:{key}={value}"


def attribute_vocabulary(examples: Sequence[LeadFeatures]) -> tuple[str, ...]:
    """The attribute values frequent enough in `examples` to learn from, most frequent first."""
    counts: dict[str, int] = {}
    for features in examples:
        for key, value in features.attributes:
            name = _attribute_name(key, value)
            counts[name] = counts.get(name, 0) + 1
    frequent = sorted((n for n, c in counts.items() if c >= MIN_ATTRIBUTE_COUNT), key=lambda n: (-counts[n], n))
    return tuple(frequent[:MAX_ATTRIBUTE_FEATURES])


def _label(name: str) -> tuple[str, str]:
    if name.startswith("attr:"):
        key, _, value = name[len("attr:"):].partition("=")
        return f"{key}: {value}", f"{key}：{value}"
    return _LABELS.get(name) or _OPPORTUNITY_LABELS.get(name) or (name, name)


def vectorise_opportunity(features: OpportunityFeatures, names: Sequence[str]) -> list[float]:
    values: dict[str, float] = {name: 0.0 for name in names}
    if features.stage in OPEN_STAGES:
        values[f"stage_{features.stage}"] = 1.0
    probability = features.stage_probability
    values["stage_probability"] = (STAGE_PROBABILITY.get(features.stage, 10) if probability is None
                                   else probability) / 100
    if features.maturity is not None:
        values["maturity"] = (features.maturity - 50) / 50
        values["maturity_assessed"] = 1.0
    return [values.get(name, 0.0) for name in names]


def vectorise(features: Features, names: Sequence[str] = FEATURE_NAMES) -> list[float]:
    if isinstance(features, OpportunityFeatures):
        return vectorise_opportunity(features, names)
    values: dict[str, float] = {name: 0.0 for name in names}
    for key, value in features.attributes:
        if (name := _attribute_name(key, value)) in values:
            values[name] = 1.0
    if features.grade in GRADES:
        values[f"grade_{features.grade}"] = 1.0
    if features.source in SOURCES:
        values[f"source_{features.source}"] = 1.0
    values["has_company"] = float(features.has_company)
    values["has_phone"] = float(features.has_phone)
    values["has_email"] = float(features.has_email)
    values["touches"] = float(min(features.touches, 5))
    values["visits"] = math.log1p(features.visits)
    values["time_on_site"] = math.log1p(features.time_on_site_s / 60)
    values["time_on_site_hours"] = min(features.time_on_site_s / 3600, 3.0)  # linear, besides the log
    values["page_views"] = math.log1p(features.page_views)
    values["activities"] = float(min(len(features.activities), 5))
    return [values[name] for name in names]


@dataclass(frozen=True)
class LinearModel:
    version: str
    names: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    coefficients: tuple[float, ...]
    intercept: float

    def terms(self, features: Features) -> list[float]:
        x = vectorise(features, self.names)
        return [c * (v - m) / s for c, v, m, s in zip(self.coefficients, x, self.means, self.scales, strict=True)]

    def probability(self, features: Features) -> float:
        return 1 / (1 + math.exp(-(self.intercept + sum(self.terms(features)))))

    def score(self, features: Features) -> Score:
        terms = self.terms(features)
        goal_en, goal_zh = ("win", "赢单") if isinstance(features, OpportunityFeatures) else ("convert", "转化")
        factors = []
        for name, term in zip(self.names, terms, strict=True):
            points = round(term * POINTS_PER_LOGIT, 1)
            if points == 0:
                continue
            en, zh = _label(name)
            sign_en, sign_zh = ("raises", "提高") if points > 0 else ("lowers", "降低")
            factors.append(Factor(name, points, f"{en} {sign_en} the chance to {goal_en}",
                                  f"{zh}{sign_zh}{goal_zh}可能"))
        factors.sort(key=lambda f: abs(f.contribution), reverse=True)
        return Score(int(round(100 * self.probability(features))), self.version, tuple(factors[:TOP_FACTORS]))

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "means": list(self.means), "scales": list(self.scales),
                "coefficients": list(self.coefficients), "intercept": self.intercept}

    @classmethod
    def from_json(cls, version: str, values: dict[str, Any]) -> "LinearModel":
        return cls(version, tuple(values["names"]), tuple(values["means"]), tuple(values["scales"]),
                   tuple(values["coefficients"]), float(values["intercept"]))


@dataclass(frozen=True)
class Example:
    features: Features
    positive: bool
    observed_at: datetime


@dataclass(frozen=True)
class Evaluation:
    auc: float
    brier: float
    current_auc: float
    n_train: int
    n_holdout: int
    window_from: datetime
    window_to: datetime

    @property
    def beats_current(self) -> bool:
        return self.auc > self.current_auc


def train(examples: Sequence[Example], version: str,
          current: Callable[[Example], float]) -> tuple[LinearModel, Evaluation]:
    """Fit on the older 80 %, evaluate it and `current` (a scorer) on the newest 20 %."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss, roc_auc_score

    ordered = sorted(examples, key=lambda e: e.observed_at)
    if len(ordered) < MIN_OUTCOMES:
        raise NotEnoughOutcomes(f"{len(ordered)} outcomes with features; training needs {MIN_OUTCOMES}")
    cut = int(len(ordered) * (1 - HOLDOUT_SHARE))
    training, holdout = ordered[:cut], ordered[cut:]
    for part, name in ((training, "training"), (holdout, "held-out")):
        if len({e.positive for e in part}) < 2:
            raise NotEnoughOutcomes(f"the {name} slice needs both positive and negative outcomes")
    if all(isinstance(e.features, OpportunityFeatures) for e in training):
        names = OPPORTUNITY_FEATURE_NAMES
    else:
        names = FEATURE_NAMES + attribute_vocabulary([e.features for e in training
                                                      if isinstance(e.features, LeadFeatures)])
    x = np.array([vectorise(e.features, names) for e in training])
    y = np.array([e.positive for e in training])
    means = x.mean(axis=0)
    scales = x.std(axis=0)
    scales[scales == 0] = 1.0
    fitted = LogisticRegression(C=1.0, max_iter=1000).fit((x - means) / scales, y)
    model = LinearModel(version, names, tuple(float(m) for m in means), tuple(float(s) for s in scales),
                        tuple(float(c) for c in fitted.coef_[0]), float(fitted.intercept_[0]))
    truth = [e.positive for e in holdout]
    predicted = [model.probability(e.features) for e in holdout]
    evaluation = Evaluation(
        auc=float(roc_auc_score(truth, predicted)),
        brier=float(brier_score_loss(truth, predicted)),
        current_auc=float(roc_auc_score(truth, [current(e) for e in holdout])),
        n_train=len(training),
        n_holdout=len(holdout),
        window_from=ordered[0].observed_at,
        window_to=ordered[-1].observed_at,
    )
    return model, evaluation
