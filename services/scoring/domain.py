"""Lead scores and opportunity win probabilities by documented rules, with no I/O.

Both scores explain themselves: every rule that moved the score is a `Factor` with its signed
contribution in score points and a label in English and Chinese that a rep understands; the top
factors (largest effect first) travel with the score. `MODEL_VERSION` names the rule set, so a
score always says what produced it.

Lead score (0-100), `rules-v1`: a base of 30 points, plus
- intent grade (tracking card): H buys within 5 days +30, A within 15 days +20, B within a month +8,
  C in about two months -5, no grade 0;
- source: referral +12, walk-in +10, trade show / event +6, phone +6, web form +4, campaign +3,
  e-mail / SMS / IM +2, API 0, CSV import -4;
- contact completeness: company +4, phone +4, e-mail +2;
- touches logged: one +4, two +7, three or more +10;
- recency of contact: last touch within 7 days 0, 8-30 days ago -5, over 30 days -10; never touched
  and captured over 3 days ago -8;
- engagement: site visits 2 points each, at most +8; time on site 10 minutes or more +10, 3 minutes
  +5, any +2; page views 10 or more +5, 3 or more +2; each marketing activity (webinar, download ...)
  +2, at most +6;
clamped to 0-100. Engagement reports add up: each `sales.lead.engaged.v1` reports the activity since
the last report.

Opportunity win probability (percent), `rules-v1`: the stage's default probability (as the
opportunities service announces it in its events: prospecting 10, bidding 30, negotiation 60,
contract 80) adjusted by
- maturity assessment (成熟度评估): (maturity % - 50) x 0.3, so -15 .. +15;
- age in stage: longer than the stage's usual time (prospecting 30 days, bidding 30, negotiation 21,
  contract 14; 30 in a stage of a configured pipeline, whose key is also its label) -5, longer than twice
  that -10;
- competitor presence: a named competitor (a `competitor` field on an opportunity event) -8;
clamped to 1-99 while open; closed won is 100 and closed lost 0.

Account value tier (`tiers-v1`): amount, frequency and recency of the account's signed contracts,
see the table above `account_tier`.
"""

from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

MODEL_VERSION = "rules-v1"
TOP_FACTORS = 5
LEAD_BASE = 30


@dataclass(frozen=True)
class Factor:
    feature: str
    contribution: float
    label_en: str
    label_zh: str

    def as_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "contribution": self.contribution, "label_en": self.label_en,
                "label_zh": self.label_zh}


@dataclass(frozen=True)
class Score:
    score: int
    model_version: str
    factors: tuple[Factor, ...]


def _fields(instance: Any) -> dict[str, Any]:
    return {f.name: getattr(instance, f.name) for f in fields(instance)}


def _top(factors: list[Factor]) -> tuple[Factor, ...]:
    moving = [f for f in factors if f.contribution != 0]
    return tuple(sorted(moving, key=lambda f: abs(f.contribution), reverse=True)[:TOP_FACTORS])


def _clamp(value: float, low: int, high: int) -> int:
    return int(max(low, min(high, round(value))))


# --- leads ------------------------------------------------------------------------------------

GRADE_POINTS: dict[str, tuple[int, str, str]] = {
    "H": (30, "Intent grade H: plans to buy within 5 days", "意向等级 H：5天内购买"),
    "A": (20, "Intent grade A: plans to buy within 15 days", "意向等级 A：15天内购买"),
    "B": (8, "Intent grade B: plans to buy within a month", "意向等级 B：1个月内购买"),
    "C": (-5, "Intent grade C: about two months from buying", "意向等级 C：约2个月后购买"),
}

SOURCE_POINTS: dict[str, tuple[int, str, str]] = {
    "referral": (12, "Came by referral", "转介绍来源"),
    "walk_in": (10, "Walked into the showroom", "到店来访"),
    "event": (6, "Met at a trade show or event", "展会/活动获取"),
    "phone": (6, "Called in by phone", "电话来电"),
    "web_form": (4, "Filled in the web form", "网站表单留资"),
    "campaign": (3, "Came from a campaign", "市场活动获取"),
    "email": (2, "Wrote by e-mail", "邮件来源"),
    "sms": (2, "Came by SMS", "短信来源"),
    "im": (2, "Came by instant message", "即时通讯来源"),
    "api": (0, "Entered by an integration", "系统接口录入"),
    "import": (-4, "Imported from a list", "名单导入"),
}


@dataclass(frozen=True)
class LeadFeatures:
    """What the events have told about a lead so far."""

    owner_id: str | None = None
    grade: str | None = None
    source: str | None = None
    has_company: bool = False
    has_phone: bool = False
    has_email: bool = False
    captured_at: datetime | None = None
    touches: int = 0
    last_contacted_at: datetime | None = None
    visits: int = 0
    time_on_site_s: float = 0.0
    page_views: int = 0
    activities: tuple[str, ...] = field(default_factory=tuple)
    # the lead's attributes (UTM parameters, form answers ...) as sorted pairs: features for the learned model
    attributes: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def captured(self, data: dict[str, Any], at: datetime) -> "LeadFeatures":
        return replace(self, **self._described(data), source=data.get("source"), captured_at=at)

    def engaged(self, visits: int, time_on_site_s: float, page_views: int, activity: Any) -> "LeadFeatures":
        if isinstance(activity, str):
            new: tuple[str, ...] = (activity,)
        elif isinstance(activity, list):
            new = tuple(str(a) for a in activity)
        else:
            new = ()
        return replace(
            self,
            visits=self.visits + max(0, visits),
            time_on_site_s=self.time_on_site_s + max(0.0, time_on_site_s),
            page_views=self.page_views + max(0, page_views),
            activities=self.activities + new,
        )

    def contacted(self, at: datetime, touch_number: int | None) -> "LeadFeatures":
        latest = at if self.last_contacted_at is None else max(at, self.last_contacted_at)
        touches = max(self.touches + 1, touch_number or 0)
        return replace(self, touches=touches, last_contacted_at=latest)

    def merged(
        self, duplicate: "LeadFeatures", data: dict[str, Any], last_contacted_at: datetime | None
    ) -> "LeadFeatures":
        """The survivor of a merge, from the merge event's account of it (`data`: its grade, contact, attributes,
        owner and touches after the merge, the moved ones included) and the engagement the merged lead's events
        told, which the survivor now holds too. Its source and capture time stay its own."""
        return replace(
            self,
            **self._described(data),
            touches=int(data.get("touch_count") or 0),
            last_contacted_at=last_contacted_at,
            visits=self.visits + duplicate.visits,
            time_on_site_s=self.time_on_site_s + duplicate.time_on_site_s,
            page_views=self.page_views + duplicate.page_views,
            activities=self.activities + duplicate.activities,
        )

    def _described(self, data: dict[str, Any]) -> dict[str, Any]:
        """What an event describing the whole lead (its capture, a merge's survivor) sets: owner (unless it
        names none), grade, which contact details it has, attributes."""
        contact = data.get("contact") or {}
        return {
            "owner_id": data.get("owner_id") or self.owner_id,
            "grade": data.get("grade"),
            "has_company": bool(contact.get("company")),
            "has_phone": bool(contact.get("phone")),
            "has_email": bool(contact.get("email")),
            "attributes": tuple(sorted((str(k), str(v)) for k, v in (data.get("attributes") or {}).items())),
        }

    def regraded(self, grade: str | None) -> "LeadFeatures":
        return replace(self, grade=grade)

    def assigned(self, owner_id: str, grade: str | None) -> "LeadFeatures":
        return replace(self, owner_id=owner_id, grade=grade if grade is not None else self.grade)

    def to_json(self) -> dict[str, Any]:
        values = _fields(self)  # shallow: dataclasses.asdict deep-copies every value, on every event
        for name in ("captured_at", "last_contacted_at"):
            values[name] = None if values[name] is None else values[name].isoformat()
        values["activities"] = list(self.activities)
        values["attributes"] = dict(self.attributes)
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "LeadFeatures":
        values = dict(values)
        for name in ("captured_at", "last_contacted_at"):
            if values.get(name) is not None:
                values[name] = datetime.fromisoformat(values[name])
        values["activities"] = tuple(values.get("activities") or ())
        values["attributes"] = tuple(sorted((values.get("attributes") or {}).items()))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})


def _grade(features: LeadFeatures) -> Factor | None:
    if features.grade not in GRADE_POINTS:
        return None
    points, en, zh = GRADE_POINTS[features.grade]
    return Factor("grade", points, en, zh)


def _source(features: LeadFeatures) -> Factor | None:
    if features.source not in SOURCE_POINTS:
        return None
    points, en, zh = SOURCE_POINTS[features.source]
    return Factor("source", points, en, zh)


def _completeness(features: LeadFeatures) -> Factor:
    points = 4 * features.has_company + 4 * features.has_phone + 2 * features.has_email
    missing_en = [n for n, has in (("company", features.has_company), ("phone", features.has_phone),
                                   ("e-mail", features.has_email)) if not has]
    missing_zh = [n for n, has in (("公司", features.has_company), ("电话", features.has_phone),
                                   ("邮箱", features.has_email)) if not has]
    if not missing_en:
        return Factor("completeness", points, "Complete contact details (company, phone, e-mail)",
                      "联系信息完整（公司、电话、邮箱）")
    return Factor("completeness", points, f"Contact details lack: {', '.join(missing_en)}",
                  f"联系信息缺少：{'、'.join(missing_zh)}")


def _touches(features: LeadFeatures) -> Factor | None:
    if features.touches <= 0:
        return None
    points = 4 if features.touches == 1 else 7 if features.touches == 2 else 10
    return Factor("touches", points, f"Contacted {features.touches} time(s)", f"已跟进 {features.touches} 次")


def _recency(features: LeadFeatures, now: datetime) -> Factor | None:
    if features.last_contacted_at is None:
        if features.captured_at is not None and now - features.captured_at > timedelta(days=3):
            days = (now - features.captured_at).days
            return Factor("recency", -8, f"Not contacted in the {days} days since capture",
                          f"录入后 {days} 天未跟进")
        return None
    days = (now - features.last_contacted_at).days
    if days > 30:
        return Factor("recency", -10, f"Last contacted {days} days ago", f"最近一次跟进在 {days} 天前")
    if days > 7:
        return Factor("recency", -5, f"Last contacted {days} days ago", f"最近一次跟进在 {days} 天前")
    return None


def _engagement(features: LeadFeatures) -> list[Factor]:
    factors = []
    if features.visits > 0:
        factors.append(Factor("visits", min(8, 2 * features.visits), f"Visited the site {features.visits} time(s)",
                              f"访问网站 {features.visits} 次"))
    minutes = features.time_on_site_s / 60
    if minutes > 0:
        points = 10 if minutes >= 10 else 5 if minutes >= 3 else 2
        factors.append(Factor("time_on_site", points, f"Spent {minutes:.0f} minute(s) on the site",
                              f"网站停留 {minutes:.0f} 分钟"))
    if features.page_views >= 3:
        points = 5 if features.page_views >= 10 else 2
        factors.append(Factor("page_views", points, f"Viewed {features.page_views} pages",
                              f"浏览 {features.page_views} 个页面"))
    if features.activities:
        count = len(features.activities)
        factors.append(Factor("activity", min(6, 2 * count), f"Took part in {count} marketing activit(ies)",
                              f"参与 {count} 次营销活动"))
    return factors


def score_lead(features: LeadFeatures, now: datetime) -> Score:
    """The rule-based lead score (see the module's table) as of `now`."""
    factors = [f for f in (_grade(features), _source(features), _completeness(features), _touches(features),
                           _recency(features, now)) if f is not None]
    factors += _engagement(features)
    total = LEAD_BASE + sum(f.contribution for f in factors)
    return Score(_clamp(total, 0, 100), MODEL_VERSION, _top(factors))


# --- opportunities ----------------------------------------------------------------------------

# The opportunities service's default pipeline; its events carry the probability it uses, which wins.
STAGE_PROBABILITY = {"prospecting": 10, "bidding": 30, "negotiation": 60, "contract": 80, "won": 100, "lost": 0}
STAGE_LABELS = {"prospecting": ("Prospecting", "潜在客户跟踪"), "bidding": ("Bidding", "项目投标"),
                "negotiation": ("Negotiation", "商务洽谈"), "contract": ("Contract", "签订合同"),
                "won": ("Closed won", "赢单"), "lost": ("Closed lost", "输单")}
USUAL_DAYS_IN_STAGE = {"prospecting": 30, "bidding": 30, "negotiation": 21, "contract": 14}
USUAL_DAYS_IN_OTHER_STAGES = 30  # the open stages of pipelines an admin configured, which this table does not know


_OPPORTUNITY_MOMENTS = ("stage_entered_at", "created_at", "last_event_at")


@dataclass(frozen=True)
class OpportunityFeatures:
    """What the events have told about an opportunity so far."""

    owner_id: str | None = None
    stage: str = "prospecting"
    stage_probability: float | None = None
    stage_entered_at: datetime | None = None
    status: str = "open"
    maturity: int | None = None
    competitor: str | None = None
    amount: float | None = None  # the expected amount its latest event carried (any currency)
    product: str | None = None
    region: str | None = None
    created_at: datetime | None = None
    last_event_at: datetime | None = None  # activity recency: the time of its latest event

    def moved(self, stage: str, probability: float | None, at: datetime) -> "OpportunityFeatures":
        return replace(self, stage=stage, stage_probability=probability, stage_entered_at=at)

    def told(self, data: dict[str, Any], at: datetime) -> "OpportunityFeatures":
        """The facts any opportunity event may carry (amount, product, region), and its time as the latest activity."""
        amount = data.get("amount")
        product, region = data.get("product"), data.get("region")
        return replace(
            self,
            amount=float(amount) if isinstance(amount, str | int | float) and not isinstance(amount, bool)
            else self.amount,
            product=product if isinstance(product, str) and product else self.product,
            region=region if isinstance(region, str) and region else self.region,
            last_event_at=max(at, self.last_event_at) if self.last_event_at else at,
        )

    def to_json(self) -> dict[str, Any]:
        values = _fields(self)
        for name in _OPPORTUNITY_MOMENTS:
            if values[name] is not None:
                values[name] = values[name].isoformat()
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "OpportunityFeatures":
        values = dict(values)
        for name in _OPPORTUNITY_MOMENTS:
            if values.get(name) is not None:
                values[name] = datetime.fromisoformat(values[name])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in values.items() if k in known})


WIN_RATE_PRIOR_DEALS = 20  # an owner's observed win rate counts as this many deals at the overall rate


def smoothed_win_rate(won: int, lost: int, overall_won: int, overall_lost: int) -> float | None:
    """An owner's win rate so far, pulled toward the overall rate while they have few outcomes (None: no
    outcome recorded yet at all)."""
    overall = overall_won + overall_lost
    if overall == 0:
        return None
    prior = overall_won / overall
    return (won + WIN_RATE_PRIOR_DEALS * prior) / (won + lost + WIN_RATE_PRIOR_DEALS)


@dataclass(frozen=True)
class OpportunityMoment:
    """An open opportunity as of one moment: what a win probability is computed from. `owner_win_rate` is
    the owner's smoothed win rate from the outcomes recorded before that moment."""

    features: OpportunityFeatures
    as_of: datetime
    owner_win_rate: float | None

    def to_json(self) -> dict[str, Any]:
        return {"features": self.features.to_json(), "as_of": self.as_of.isoformat(),
                "owner_win_rate": self.owner_win_rate}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "OpportunityMoment":
        rate = values.get("owner_win_rate")
        return cls(OpportunityFeatures.from_json(values["features"]), datetime.fromisoformat(values["as_of"]),
                   None if rate is None else float(rate))


def score_opportunity(features: OpportunityFeatures, now: datetime) -> Score:
    """The rule-based win probability (see the module's table) as of `now`."""
    stage = features.stage
    en, zh = STAGE_LABELS.get(stage, (stage, stage))
    if features.status == "won" or stage == "won":
        return Score(100, MODEL_VERSION, (Factor("stage", 100, "Closed won", "已赢单"),))
    if features.status == "lost" or stage == "lost":
        return Score(0, MODEL_VERSION, (Factor("stage", 0, "Closed lost", "已输单"),))
    base = features.stage_probability
    if base is None:
        base = STAGE_PROBABILITY.get(stage, 10)
    factors = [Factor("stage", base, f"Stage {en}: {base:g}% by default", f"阶段「{zh}」默认赢率 {base:g}%")]
    if features.maturity is not None:
        points = round((features.maturity - 50) * 0.3, 1)
        word_en = "strong" if points > 0 else "weak"
        word_zh = "较高" if points > 0 else "较低"
        factors.append(Factor("maturity", points, f"Presales maturity {features.maturity}% is {word_en}",
                              f"售前成熟度 {features.maturity}%，{word_zh}"))
    usual = USUAL_DAYS_IN_STAGE.get(stage, USUAL_DAYS_IN_OTHER_STAGES)
    if features.stage_entered_at is not None:
        days = (now - features.stage_entered_at).days
        if days > usual:
            points = -10 if days > 2 * usual else -5
            factors.append(Factor("age_in_stage", points, f"{days} days in {en}, usually {usual}",
                                  f"在「{zh}」阶段已 {days} 天（通常 {usual} 天）"))
    if features.competitor:
        factors.append(Factor("competitor", -8, f"Competing against {features.competitor}",
                              f"存在竞争对手：{features.competitor}"))
    total = sum(f.contribution for f in factors)
    return Score(_clamp(total, 1, 99), MODEL_VERSION, _top(factors))


# --- account value tiers ----------------------------------------------------------------------
# From an account's signed contracts (sales.contract.signed.v1; terminated ones no longer count):
#   monetary: the amount signed in the last 365 days, in the currency of the newest contract
#     (contracts in other currencies count for frequency and recency only):
#     1,000,000 or more 3 points, 200,000 or more 2, anything 1;
#   frequency: the buyer type: one contract ever "first_time" (1 point), three or more in the last
#     365 days "frequent" (3), else "occasional" (2);
#   recency: the newest contract within 90 days 3 points, within 365 days 2, older 1;
# total 7-9 "high", 5-6 "medium", 3-4 "low" (`tiers-v1`). An account with no counting contract
# has no tier.

TIER_VERSION = "tiers-v1"
TIER_AMOUNTS = ((Decimal("1000000"), 3), (Decimal("200000"), 2))
FREQUENT_CONTRACTS = 3
TIER_LABELS = {"high": ("High value", "高价值"), "medium": ("Medium value", "中等价值"), "low": ("Low value", "低价值")}
BUYER_LABELS = {"frequent": ("Frequent buyer", "常购客户"), "occasional": ("Occasional buyer", "偶购客户"),
                "first_time": ("First-time buyer", "首购客户")}


@dataclass(frozen=True)
class Contract:
    contract_id: str
    amount: Decimal
    currency: str
    signed_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"contract_id": self.contract_id, "amount": str(self.amount), "currency": self.currency,
                "signed_at": self.signed_at.isoformat()}

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "Contract":
        return cls(str(values["contract_id"]), Decimal(values["amount"]), str(values["currency"]),
                   datetime.fromisoformat(values["signed_at"]))


@dataclass(frozen=True)
class AccountTier:
    value_tier: str  # high / medium / low
    buyer_type: str  # frequent / occasional / first_time
    amount_12m: Decimal
    currency: str
    contracts_12m: int
    contracts_total: int
    last_signed_at: datetime
    recency_days: int
    factors: tuple[Factor, ...]


def account_tier(contracts: list[Contract], now: datetime) -> AccountTier | None:
    """The account's value tier and buyer type from the contracts that count (see the table above)."""
    if not contracts:
        return None
    newest = max(contracts, key=lambda c: c.signed_at)
    year_ago = now - timedelta(days=365)
    recent = [c for c in contracts if c.signed_at >= year_ago]
    amount = sum((c.amount for c in recent if c.currency == newest.currency), Decimal(0))
    money = next((points for threshold, points in TIER_AMOUNTS if amount >= threshold), 1)
    if len(contracts) == 1:
        buyer, frequency = "first_time", 1
    elif len(recent) >= FREQUENT_CONTRACTS:
        buyer, frequency = "frequent", 3
    else:
        buyer, frequency = "occasional", 2
    days = max(0, (now - newest.signed_at).days)
    recency = 3 if days <= 90 else 2 if days <= 365 else 1
    total = money + frequency + recency
    tier = "high" if total >= 7 else "medium" if total >= 5 else "low"
    buyer_en, buyer_zh = BUYER_LABELS[buyer]
    factors = (
        Factor("amount_12m", money, f"Signed {amount:,.2f} {newest.currency} in the last 12 months",
               f"近 12 个月签约 {amount:,.2f} {newest.currency}"),
        Factor("frequency", frequency, f"{buyer_en}: {len(recent)} contracts in 12 months, {len(contracts)} in all",
               f"{buyer_zh}：近 12 个月 {len(recent)} 份合同，共 {len(contracts)} 份"),
        Factor("recency", recency, f"Last contract signed {days} days ago", f"最近一次签约在 {days} 天前"),
    )
    return AccountTier(tier, buyer, amount, newest.currency, len(recent), len(contracts), newest.signed_at, days,
                       factors)


def tier_as_time_passed(contracts: list[Contract], tiered_at: datetime, as_of: datetime) -> AccountTier | None:
    """The account's tier as of `as_of` when time alone moved it since it was tiered at `tiered_at`: a contract
    passed 90 or 365 days, so a factor's points, the amount or count of the last 12 months, the buyer type or
    the tier changed. None when only the day count in the recency label moved (the label kept is true as of
    `tiered_at`: re-tiering for it would publish every account every day) or `as_of` is not later."""
    if as_of <= tiered_at:
        return None
    before, after = account_tier(contracts, tiered_at), account_tier(contracts, as_of)
    if before is None or after is None or _standing(before) == _standing(after):
        return None
    return after


def _standing(tier: AccountTier) -> tuple[object, ...]:
    return (tier.value_tier, tier.buyer_type, tier.amount_12m, tier.contracts_12m,
            tuple(f.contribution for f in tier.factors))
