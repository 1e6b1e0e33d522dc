"""The learned models (scikit-learn) over the features the events tell, trained from the outcomes this
service observed: leads (converted = positive, disqualified = negative) and opportunities (won =
positive, lost = negative).

Leads: gradient-boosted trees (`HistGradientBoostingClassifier`, 300 trees of at most 4 leaves,
learning rate 0.05, L2 1.0, no early stopping, so a fit is deterministic). The time on site does not
act linearly and matters differently by source and form answer: on the X Education leads (README,
"Evaluation on real data") small trees rank better than the logistic regression both at capture
(0.81 against 0.77, same engaged-trained model applied before any engagement) and once engagement is
known (0.89 against 0.88). Opportunities: trees or a logistic regression, whichever ranks the newest
quarter of the training slice better when fitted on the rest (a tie: the logistic regression).

Opportunity features, each as of one moment while the deal was open (`OpportunityMoment`): the stage
one-hot (prospecting, bidding, negotiation, contract), the stage's default probability, the presales
maturity ((maturity - 50) / 50, 0 when not assessed) and whether it was assessed, log(1 + amount),
log(1 + days) in the current stage, since the deal was created and since its last event (activity
recency), the owner's smoothed win rate from the outcomes recorded before that moment, the month of
the quarter (1-3) and an indicator for every product and region seen at least `MIN_ATTRIBUTE_COUNT`
times in the training slice. The training examples are the moments of each deal's last score while it
was open, never the close: a deal's age at its close is its time to close, which would teach the
outcome's timing, and the close carries the outcome (the lost event names a competitor, the won event
the close value). So the competitor is not a learned feature, and the status (won / lost) never is.

Features: grade and source one-hot, company / phone / e-mail given, touches, log visits, log minutes
on site, log page views, activities, and an indicator for every attribute value (form answer, UTM
parameter ...) seen at least `MIN_ATTRIBUTE_COUNT` times in the training slice.

Both are kept as plain numbers, stored as JSON, never as a pickle (a pickle runs code when it is
loaded, and the models table is written by whoever can write that database), and scoring needs no
scikit-learn: the logistic regression as feature names, means, scales, coefficients and intercept; the
trees as the baseline log-odds and, per tree, its nodes (feature, threshold, left, right, value), read
from the fitted estimator and checked against its own `predict_proba` in the unit tests. No I/O here.

Evaluation: the outcomes are ordered by when they were observed; the first 80 % train, the latest
20 % are the held-out slice. A candidate is promoted only if its ROC AUC on that slice is higher than
the current model's (the rules, or the active learned model) on the same slice. Calibration is
reported as the Brier score of the held-out probabilities.

Factors of a learned score: each feature's term of the logit, turned into score points by x 25 (the
slope of the logistic curve at 50 %, times 100). For the logistic regression the term is
coef x (value - mean) / scale. For the trees it is the feature's share of the path each tree takes
(the change of the node value at every split on it, a node's value being the mean of the training
leads that reached it), so the terms add up to the lead's log-odds minus the average lead's.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from services.scoring.domain import (
    SOURCE_POINTS,
    STAGE_LABELS,
    STAGE_PROBABILITY,
    TOP_FACTORS,
    Factor,
    LeadFeatures,
    OpportunityMoment,
    Score,
)

MIN_OUTCOMES = 40
MIN_ATTRIBUTE_COUNT = 10  # an attribute value seen this often in training becomes an indicator feature
MAX_ATTRIBUTE_FEATURES = 300
HOLDOUT_SHARE = 0.2
POINTS_PER_LOGIT = 25.0
TREE_PARAMETERS: dict[str, Any] = {"learning_rate": 0.05, "max_iter": 300, "max_leaf_nodes": 4,
                                   "l2_regularization": 1.0, "early_stopping": False, "random_state": 0}

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
    "amount": ("The amount", "商机金额"),
    "days_in_stage": ("Time in the current stage", "在当前阶段的时长"),
    "deal_age": ("The deal's age", "商机存续时长"),
    "days_since_activity": ("Time since the last activity", "距上次活动的时长"),
    "owner_win_rate": ("The owner's win rate so far", "负责人至今的赢单率"),
    "month_of_quarter": ("The month of the quarter", "所处季度月份"),
}
OPPORTUNITY_FEATURE_NAMES: tuple[str, ...] = tuple(_OPPORTUNITY_LABELS)
# Product and region values seen this often in the training slice become indicator features.
OPPORTUNITY_CATEGORIES = ("product", "region")

Features = LeadFeatures | OpportunityMoment


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


def category_vocabulary(moments: Sequence[OpportunityMoment]) -> tuple[str, ...]:
    """The products and regions frequent enough in `moments` to learn from, as `attr:` indicator names."""
    counts: dict[str, int] = {}
    for moment in moments:
        for name in _category_names(moment):
            counts[name] = counts.get(name, 0) + 1
    return tuple(sorted(n for n, c in counts.items() if c >= MIN_ATTRIBUTE_COUNT))


def _category_names(moment: OpportunityMoment) -> list[str]:
    values = {"product": moment.features.product, "region": moment.features.region}
    return [_attribute_name(key, value) for key, value in values.items() if value]


# Yes / no features: when one is 0 it moves the score by its absence, and its label says so.
_INDICATORS = ("attr:", "grade_", "source_", "stage_", "has_", "maturity_assessed")


def _label(name: str, value: float) -> tuple[str, str]:
    absent = value == 0 and name.startswith(_INDICATORS)
    if name.startswith("attr:"):
        key, _, answer = name[len("attr:"):].partition("=")
        return (f"{key}: not {answer}", f"{key}：非{answer}") if absent else (f"{key}: {answer}", f"{key}：{answer}")
    en, zh = _LABELS.get(name) or _OPPORTUNITY_LABELS.get(name) or (name, name)
    return (f"{en}: no", f"{zh}：否") if absent else (en, zh)


def _log_days(since: datetime | None, until: datetime) -> float:
    """log(1 + days) from `since` to `until` (0 when `since` is unknown or later)."""
    if since is None:
        return 0.0
    return math.log1p(max(0.0, (until - since).total_seconds() / 86400))


def vectorise_opportunity(moment: OpportunityMoment, names: Sequence[str]) -> list[float]:
    """The inputs of the opportunity model as of the moment: everything is known then (never the outcome, the
    close date or the close value: the moment is one while the deal was open)."""
    features, as_of = moment.features, moment.as_of
    values: dict[str, float] = {name: 1.0 for name in _category_names(moment)}
    values["amount"] = math.log1p(max(0.0, features.amount or 0.0))
    values["days_in_stage"] = _log_days(features.stage_entered_at, as_of)
    values["deal_age"] = _log_days(features.created_at or features.stage_entered_at, as_of)
    values["days_since_activity"] = _log_days(features.last_event_at, as_of)
    values["owner_win_rate"] = 0.5 if moment.owner_win_rate is None else moment.owner_win_rate
    values["month_of_quarter"] = float((as_of.month - 1) % 3 + 1)
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
    """The model's inputs in the order of `names` (an attribute or feature a model does not name is left out)."""
    if isinstance(features, OpportunityMoment):
        return vectorise_opportunity(features, names)
    values: dict[str, float] = {}
    for key, value in features.attributes:
        values[_attribute_name(key, value)] = 1.0
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
    return [values.get(name, 0.0) for name in names]


def _explained(version: str, features: Features, names: Sequence[str], x: Sequence[float], logit: float,
               terms: Sequence[float]) -> Score:
    """The score of a learned model with its top factors (the largest terms), labelled in en and zh-CN."""
    goal_en, goal_zh = ("win", "赢单") if isinstance(features, OpportunityMoment) else ("convert", "转化")
    largest = sorted((i for i, term in enumerate(terms) if round(term * POINTS_PER_LOGIT, 1) != 0),
                     key=lambda i: abs(terms[i]), reverse=True)[:TOP_FACTORS]
    factors = []
    for i in largest:
        points = round(terms[i] * POINTS_PER_LOGIT, 1)
        en, zh = _label(names[i], x[i])
        sign_en, sign_zh = ("raises", "提高") if points > 0 else ("lowers", "降低")
        factors.append(Factor(names[i], points, f"{en} {sign_en} the chance to {goal_en}",
                              f"{zh}{sign_zh}{goal_zh}可能"))
    return Score(int(round(100 * _sigmoid(logit))), version, tuple(factors))


def _sigmoid(logit: float) -> float:
    return 1 / (1 + math.exp(-max(-700.0, min(700.0, logit))))  # math.exp overflows beyond about 709


@dataclass(frozen=True)
class LinearModel:
    version: str
    names: tuple[str, ...]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    coefficients: tuple[float, ...]
    intercept: float
    algorithm: ClassVar[str] = "logistic_regression"

    def terms(self, x: Sequence[float]) -> list[float]:
        """Each feature's term of the log-odds, for the inputs `x` (`vectorise`)."""
        return [c * (v - m) / s for c, v, m, s in zip(self.coefficients, x, self.means, self.scales, strict=True)]

    def probability(self, features: Features) -> float:
        return _sigmoid(self.intercept + sum(self.terms(vectorise(features, self.names))))

    def score(self, features: Features) -> Score:
        x = vectorise(features, self.names)
        terms = self.terms(x)
        return _explained(self.version, features, self.names, x, self.intercept + sum(terms), terms)

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "means": list(self.means), "scales": list(self.scales),
                "coefficients": list(self.coefficients), "intercept": self.intercept}

    @classmethod
    def from_json(cls, version: str, values: dict[str, Any]) -> "LinearModel":
        return cls(version, tuple(values["names"]), tuple(values["means"]), tuple(values["scales"]),
                   tuple(values["coefficients"]), float(values["intercept"]))


# A tree node: (index of the feature split on, or -1 for a leaf; threshold, value <= threshold goes left;
# left child; right child; value: a leaf's log-odds, an inner node's the mean over the training examples
# that reached it).
Node = tuple[int, float, int, int, float]


@dataclass(frozen=True)
class TreeModel:
    version: str
    names: tuple[str, ...]
    baseline: float  # the log-odds every tree adds to
    trees: tuple[tuple[Node, ...], ...]
    algorithm: ClassVar[str] = "gradient_boosting"

    def logit_and_terms(self, x: Sequence[float]) -> tuple[float, list[float]]:
        """The log-odds for the inputs `x` (`vectorise`), and each feature's share of it beyond the average
        example's (see the module)."""
        terms = [0.0] * len(self.names)
        logit = self.baseline
        for nodes in self.trees:
            node = nodes[0]
            while node[0] >= 0:
                child = nodes[node[2]] if x[node[0]] <= node[1] else nodes[node[3]]
                terms[node[0]] += child[4] - node[4]
                node = child
            logit += node[4]
        return logit, terms

    def probability(self, features: Features) -> float:
        return _sigmoid(self.logit_and_terms(vectorise(features, self.names))[0])

    def score(self, features: Features) -> Score:
        x = vectorise(features, self.names)
        logit, terms = self.logit_and_terms(x)
        return _explained(self.version, features, self.names, x, logit, terms)

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "baseline": self.baseline,
                "trees": [[list(node) for node in nodes] for nodes in self.trees]}

    @classmethod
    def from_json(cls, version: str, values: dict[str, Any]) -> "TreeModel":
        trees = tuple(tuple((int(f), float(t), int(left), int(right), float(v)) for f, t, left, right, v in nodes)
                      for nodes in values["trees"])
        return cls(version, tuple(values["names"]), float(values["baseline"]), trees)


LearnedModel = LinearModel | TreeModel
_ALGORITHMS: dict[str, type[LinearModel] | type[TreeModel]] = {
    LinearModel.algorithm: LinearModel, TreeModel.algorithm: TreeModel}


def model_from_json(version: str, algorithm: str, values: dict[str, Any]) -> LearnedModel:
    """A stored model (its `algorithm` column and its parameters) ready to score."""
    return _ALGORITHMS[algorithm].from_json(version, values)


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


def _fit_linear(version: str, names: tuple[str, ...], x: Any, y: Any) -> LinearModel:
    from sklearn.linear_model import LogisticRegression

    means = x.mean(axis=0)
    scales = x.std(axis=0)
    scales[scales < 1e-9] = 1.0  # a feature (nearly) constant in training: its float noise is no scale
    fitted = LogisticRegression(C=1.0, max_iter=1000).fit((x - means) / scales, y)
    return LinearModel(version, names, tuple(float(m) for m in means), tuple(float(s) for s in scales),
                       tuple(float(c) for c in fitted.coef_[0]), float(fitted.intercept_[0]))


def _tree_nodes(nodes: Any) -> tuple[Node, ...]:
    """One fitted tree's nodes; an inner node's value becomes the count-weighted mean of its children's
    (scikit-learn keeps a meaningful value on the leaves only)."""
    values = [float(v) for v in nodes["value"]]

    def settle(i: int) -> float:
        if not nodes["is_leaf"][i]:
            left, right = int(nodes["left"][i]), int(nodes["right"][i])
            n_left, n_right = int(nodes["count"][left]), int(nodes["count"][right])
            values[i] = (settle(left) * n_left + settle(right) * n_right) / (n_left + n_right)
        return values[i]

    settle(0)
    return tuple((-1 if leaf else int(feature), float(threshold), int(left), int(right), values[i])
                 for i, (leaf, feature, threshold, left, right)
                 in enumerate(zip(nodes["is_leaf"], nodes["feature_idx"], nodes["num_threshold"], nodes["left"],
                                  nodes["right"], strict=True)))


def _fit_trees(version: str, names: tuple[str, ...], x: Any, y: Any) -> TreeModel:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    # One OpenMP thread: the fit is background work beside the event loop, and on 2 busy cores its
    # threads waiting on each other made it 10-15 times slower (5,174 leads: 1.1 s with one thread,
    # 10-15 s with the default, measured under load).
    with threadpool_limits(limits=1, user_api="openmp"):
        fitted = HistGradientBoostingClassifier(**TREE_PARAMETERS).fit(x, y)
    # `_predictors` (one tree per boosting round for two classes) and `_baseline_prediction` are the fitted
    # estimator's own; scikit-learn is pinned and the unit tests compare these trees with its predict_proba.
    return TreeModel(version, names, float(fitted._baseline_prediction.ravel()[0]),
                     tuple(_tree_nodes(predictor.nodes) for [predictor] in fitted._predictors))


def _auc(truth: Sequence[bool], predicted: Sequence[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, predicted))


def _fit_opportunity(version: str, names: tuple[str, ...], training: Sequence[Example]) -> LearnedModel:
    """Boosted trees or a logistic regression, whichever ranks better the newest quarter of the training slice
    when fitted on the rest (the held-out slice stays untouched for the comparison with the current model),
    refitted on the whole training slice."""
    import numpy as np

    cut = int(len(training) * 0.75)
    fitting, checking = training[:cut], training[cut:]
    fitters: dict[str, Callable[[str, tuple[str, ...], Any, Any], LearnedModel]] = {
        "gb": _fit_trees, "lr": _fit_linear}
    best = "lr"
    if len({e.positive for e in fitting}) == 2 and len({e.positive for e in checking}) == 2:
        x = np.array([vectorise(e.features, names) for e in fitting])
        y = np.array([e.positive for e in fitting])
        truth = [e.positive for e in checking]
        fitted = {prefix: fit(version, names, x, y) for prefix, fit in fitters.items()}
        aucs = {prefix: _auc(truth, [model.probability(e.features) for e in checking])
                for prefix, model in fitted.items()}
        best = max(aucs, key=lambda prefix: (aucs[prefix], prefix == "lr"))  # a tie: the simpler model
    x = np.array([vectorise(e.features, names) for e in training])
    y = np.array([e.positive for e in training])
    return fitters[best](f"{best}-{version}", names, x, y)


def train(examples: Sequence[Example], version: str,
          current: Callable[[Example], float]) -> tuple[LearnedModel, Evaluation]:
    """Fit on the older 80 %, evaluate it and `current` (a scorer) on the newest 20 %: boosted trees for
    leads (named `version`); for opportunities trees or a logistic regression, whichever ranks the newest
    part of the training slice better (named `gb-<version>` / `lr-<version>`)."""
    import numpy as np
    from sklearn.metrics import brier_score_loss

    ordered = sorted(examples, key=lambda e: e.observed_at)
    if len(ordered) < MIN_OUTCOMES:
        raise NotEnoughOutcomes(f"{len(ordered)} outcomes with features; training needs {MIN_OUTCOMES}")
    cut = int(len(ordered) * (1 - HOLDOUT_SHARE))
    training, holdout = ordered[:cut], ordered[cut:]
    for part, name in ((training, "training"), (holdout, "held-out")):
        if len({e.positive for e in part}) < 2:
            raise NotEnoughOutcomes(f"the {name} slice needs both positive and negative outcomes")
    model: LearnedModel
    if all(isinstance(e.features, OpportunityMoment) for e in training):
        names = OPPORTUNITY_FEATURE_NAMES + category_vocabulary(
            [e.features for e in training if isinstance(e.features, OpportunityMoment)])
        model = _fit_opportunity(version, names, training)
    else:
        names = FEATURE_NAMES + attribute_vocabulary([e.features for e in training
                                                      if isinstance(e.features, LeadFeatures)])
        x = np.array([vectorise(e.features, names) for e in training])
        y = np.array([e.positive for e in training])
        model = _fit_trees(version, names, x, y)
    truth = [e.positive for e in holdout]
    predicted = [model.probability(e.features) for e in holdout]
    evaluation = Evaluation(
        auc=_auc(truth, predicted),
        brier=float(brier_score_loss(truth, predicted)),
        current_auc=_auc(truth, [current(e) for e in holdout]),
        n_train=len(training),
        n_holdout=len(holdout),
        window_from=ordered[0].observed_at,
        window_to=ordered[-1].observed_at,
    )
    return model, evaluation
