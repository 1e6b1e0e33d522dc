"""Accounts, opportunities, pipelines and contracts: the rules, with no I/O (contacts: contacts/domain.py).

The default project-sales pipeline (`project_sales`) is the funnel of the source material:

| stage         | label (zh-CN) | label (en)   | default win probability |
|---------------|---------------|--------------|-------------------------|
| `prospecting` | 潜在客户跟踪  | Prospecting  | 10 %                    |
| `bidding`     | 项目投标      | Bidding      | 30 %                    |
| `negotiation` | 商务洽谈      | Negotiation  | 60 %                    |
| `contract`    | 签订合同      | Contract     | 80 %                    |
| `won`         | 赢单          | Closed won   | 100 %                   |
| `lost`        | 输单          | Closed lost  | 0 %                     |

An admin may define further pipelines (their own open stages, labels and probabilities; won and lost
close every pipeline), change them and retire them (no deal enters a retired pipeline; the deals in it
carry on to their close). An opportunity moves between its pipeline's open stages (forwards, or back when
a deal slips; forwards one stage at a time when the pipeline forbids skipping), or into an open stage of
another pipeline; it reaches `won` / `lost` only by being closed, with a summary.
"""

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, ClassVar

from shared.errors import DomainError, Unprocessable

DEFAULT_CURRENCY = "CNY"
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_CENT = Decimal("0.01")


class StageNotAllowed(DomainError):
    """A move the pipeline refuses (409)."""


# --- pipelines ------------------------------------------------------------------------------

# Stage keys travel in events and URLs' filters: lower-case snake_case. Pipeline ids may also hold hyphens.
STAGE_KEY = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
PIPELINE_ID = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
MAX_OPEN_STAGES = 20
MAX_TEXT = 100


@dataclass(frozen=True)
class Stage:
    key: str
    label_zh: str
    label_en: str
    probability: int  # the default win probability of a deal in this stage, percent
    closed: bool = False

    @property
    def labels(self) -> dict[str, str]:
        return {"zh-CN": self.label_zh, "en": self.label_en}


WON = Stage("won", "赢单", "Closed won", 100, closed=True)
LOST = Stage("lost", "输单", "Closed lost", 0, closed=True)
CLOSED_STAGES = (WON, LOST)


@dataclass(frozen=True)
class Pipeline:
    """A sales pipeline: its ordered open stages, then won and lost, which every pipeline ends with."""

    id: str
    name_zh: str
    name_en: str
    open_stages: tuple[Stage, ...]
    allow_skipping: bool = True
    version: int = 1
    retired: bool = False
    _by_key: dict[str, Stage] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_key", {s.key: s for s in self.stages})

    @property
    def stages(self) -> tuple[Stage, ...]:
        return (*self.open_stages, *CLOSED_STAGES)

    @property
    def names(self) -> dict[str, str]:
        return {"zh-CN": self.name_zh, "en": self.name_en}

    @property
    def first_stage(self) -> Stage:
        return self.open_stages[0]

    @property
    def last_open_stage(self) -> Stage:
        return self.open_stages[-1]

    def stage(self, key: str) -> Stage | None:
        return self._by_key.get(key)

    def labels(self, key: str) -> dict[str, str]:
        """The stage's labels; a key the pipeline no longer has (a terminated deal's, after the stage was
        removed) is its own label."""
        stage = self.stage(key)
        return stage.labels if stage is not None else {"zh-CN": key, "en": key}

    def check_entry(self, stage_key: str | None = None) -> Stage:
        """The open stage a deal enters this pipeline in (a new deal, or one moved from another pipeline;
        None: the first stage), or why not (409): the pipeline is retired, or the stage is not an open one.
        Any open stage will do, whether or not the pipeline allows skipping: a deal moved in keeps the
        progress it made elsewhere."""
        if self.retired:
            raise StageNotAllowed(f"pipeline {self.id} is retired: no opportunity opens in it or moves into it")
        target = self.first_stage if stage_key is None else self.stage(stage_key)
        if target is None or target.closed:
            open_keys = ", ".join(s.key for s in self.open_stages)
            raise StageNotAllowed(f"an opportunity enters pipeline {self.id} in one of its open stages, "
                                  f"{open_keys}; not {stage_key!r}")
        return target

    def check_move(self, from_key: str, to_key: str) -> Stage:
        """The stage a deal in `from_key` may move to, or why not (409)."""
        target = self.stage(to_key)
        if target is None:
            open_keys = ", ".join(s.key for s in self.open_stages)
            raise StageNotAllowed(f"unknown stage {to_key!r}; the stages of pipeline {self.id} are {open_keys}")
        if target.closed:
            raise StageNotAllowed(
                f"an opportunity reaches {to_key} only by being closed: POST .../close with a summary")
        if to_key == from_key:
            raise StageNotAllowed(f"the opportunity is already in stage {to_key}")
        if not self.allow_skipping:
            keys = [s.key for s in self.open_stages]
            if from_key in keys and keys.index(to_key) > keys.index(from_key) + 1:
                following = keys[keys.index(from_key) + 1]
                raise StageNotAllowed(
                    f"pipeline {self.id} does not allow skipping stages: from {from_key} the next stage is "
                    f"{following}, not {to_key}"
                )
        return target

    def check_win(self, from_key: str) -> None:
        """Without skipping, a deal is won only from the last open stage (lost from any)."""
        last = self.last_open_stage.key
        if not self.allow_skipping and from_key != last:
            raise StageNotAllowed(
                f"pipeline {self.id} does not allow skipping stages: a deal is closed won from {last}, "
                f"not from {from_key}"
            )

    def removed_keys(self, changed: "Pipeline") -> list[str]:
        """The open stage keys of this pipeline that `changed` no longer has (removed, or renamed)."""
        kept = {s.key for s in changed.open_stages}
        return [s.key for s in self.open_stages if s.key not in kept]

    def check_removal(self, deals_held: Mapping[str, int]) -> None:
        """Refuse (409) a change removing or renaming stages that open or suspended deals are in, naming each
        such stage and how many deals it holds (`deals_held`, by the stage keys the change removes)."""
        held = {stage: count for stage, count in deals_held.items() if count}
        if held:
            raise StageNotAllowed(
                f"pipeline {self.id} cannot lose stages that open or suspended opportunities are in: "
                + ", ".join(f"{stage} holds {count}" for stage, count in sorted(held.items()))
                + "; move them to another stage first (or keep the stage's key and change its labels)"
            )

    def changed_probabilities(self, changed: "Pipeline") -> dict[str, int]:
        """The open stages kept by `changed` whose probability it changes, with the new probability."""
        return {s.key: new.probability for s in self.open_stages
                if (new := changed.stage(s.key)) is not None and new.probability != s.probability}


DEFAULT_PIPELINE_ID = "project_sales"
# What migrations/0008_pipelines.sql seeds (a test compares them); admins may change it since.
DEFAULT_PIPELINE = Pipeline(
    DEFAULT_PIPELINE_ID, "项目销售", "Project sales",
    (
        Stage("prospecting", "潜在客户跟踪", "Prospecting", 10),
        Stage("bidding", "项目投标", "Bidding", 30),
        Stage("negotiation", "商务洽谈", "Negotiation", 60),
        Stage("contract", "签订合同", "Contract", 80),
    ),
)


def _text(value: Any, what: str, problems: list[str]) -> str:
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{what} is required")
        return ""
    if len(value.strip()) > MAX_TEXT:
        problems.append(f"{what} is longer than {MAX_TEXT} characters")
    return value.strip()


def _localised(values: Any, what: str, problems: list[str]) -> tuple[str, str]:
    """zh-CN and en, both required."""
    values = values if isinstance(values, Mapping) else {}
    return _text(values.get("zh-CN"), f"{what} zh-CN", problems), _text(values.get("en"), f"{what} en", problems)


def define_pipeline(
    pipeline_id: str, names: Mapping[str, Any], stages: Sequence[Mapping[str, Any]], allow_skipping: bool,
    version: int = 1, retired: bool = False,
) -> Pipeline:
    """A pipeline from an admin's definition, or 422 naming every problem: an id and stage keys that are
    slugs, names and labels in zh-CN and en, at least one open stage, unique keys other than won / lost
    (those close every pipeline), probabilities whole percents 0-100; the default pipeline never retired
    (converted leads open in it)."""
    problems: list[str] = []
    if retired and pipeline_id == DEFAULT_PIPELINE_ID:
        problems.append(f"the default pipeline {DEFAULT_PIPELINE_ID} cannot be retired: converted leads open in it")
    if not isinstance(pipeline_id, str) or not PIPELINE_ID.match(pipeline_id):
        problems.append(f"id {pipeline_id!r} must be a slug: lower-case letters, digits, _ or -, starting with a "
                        "letter, at most 40 characters")
    name_zh, name_en = _localised(names, "name", problems)
    if not stages:
        problems.append("a pipeline needs at least one open stage (won and lost are added to every pipeline)")
    if len(stages) > MAX_OPEN_STAGES:
        problems.append(f"a pipeline has at most {MAX_OPEN_STAGES} open stages, not {len(stages)}")
    defined: list[Stage] = []
    seen: set[str] = set()
    for position, given in enumerate(stages, start=1):
        key = given.get("key")
        what = f"stage {position} ({key})" if isinstance(key, str) else f"stage {position}"
        if not isinstance(key, str) or not STAGE_KEY.match(key):
            problems.append(f"{what}: the key must be a slug: lower-case letters, digits or _, starting with a "
                            "letter, at most 40 characters")
        elif key in (WON.key, LOST.key):
            problems.append(f"{what}: {key} is a closed stage every pipeline has; name the open stages only")
        elif key in seen:
            problems.append(f"{what}: the key {key} is used twice; stage keys are unique in a pipeline")
        seen.add(str(key))
        label_zh, label_en = _localised(given.get("label"), f"{what} label", problems)
        probability = given.get("probability")
        if isinstance(probability, bool) or not isinstance(probability, int) or not 0 <= probability <= 100:
            problems.append(f"{what}: the probability must be a whole percent from 0 to 100, not {probability!r}")
            probability = 0
        defined.append(Stage(str(key), label_zh, label_en, probability))
    if problems:
        raise Unprocessable("invalid pipeline: " + "; ".join(problems))
    return Pipeline(pipeline_id, name_zh, name_en, tuple(defined), allow_skipping, version, retired)


class Status(StrEnum):
    OPEN = "open"
    SUSPENDED = "suspended"  # 中止: can be reactivated
    TERMINATED = "terminated"  # 终止: never tracked again
    WON = "won"
    LOST = "lost"
    ARCHIVED = "archived"


class Outcome(StrEnum):
    WON = "won"
    LOST = "lost"


class StatusNotAllowed(DomainError):
    """A status change the opportunity's current status refuses (409)."""


class CreditLimitExceeded(DomainError):
    """Signing would take the customer's signed total past its credit limit (409)."""


# --- money -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str = DEFAULT_CURRENCY

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"


def parse_money(amount: str | int | Decimal | None, currency: str | None) -> Money:
    """A non-negative decimal amount with at most two decimals, and an ISO 4217 code.

    Floats are refused: their binary rounding has no place in an amount.
    """
    if isinstance(amount, float):
        raise Unprocessable("amount must be a decimal string such as \"120000.00\", not a floating-point number")
    code = currency or DEFAULT_CURRENCY
    if not _CURRENCY.match(code):
        raise Unprocessable(f"currency must be an ISO 4217 code such as CNY, not {code!r}")
    if amount is None or amount == "":
        return Money(Decimal("0.00"), code)
    try:
        value = Decimal(str(amount).strip())
    except InvalidOperation:
        raise Unprocessable(f"amount must be a decimal number, not {amount!r}") from None
    if not value.is_finite():
        raise Unprocessable(f"amount must be a finite decimal number, not {amount!r}")
    if value < 0:
        raise Unprocessable("amount must not be negative")
    if value != value.quantize(_CENT):
        raise Unprocessable("amount has more than two decimal places")
    return Money(value.quantize(_CENT), code)


def normalise_name(name: str) -> str:
    """The key two spellings of one company share: width-folded, case-folded, no spaces or punctuation.

    `北京 星河科技有限公司`, `北京星河科技有限公司` and `（北京）星河科技有限公司` all match;
    so do `Acme, Inc.` and `ACME Inc`.
    """
    folded = unicodedata.normalize("NFKC", name).casefold()
    kept = "".join(ch for ch in folded if not (ch.isspace() or unicodedata.category(ch).startswith("P")))
    return kept


# --- opportunities ------------------------------------------------------------------------


@dataclass(frozen=True)
class StageChange:
    from_stage: str
    to_stage: str
    seconds_in_previous_stage: int


@dataclass(frozen=True)
class CloseSummary:
    outcome: Outcome
    reason: str
    competitor: str | None = None

    @classmethod
    def of(cls, outcome: str, reason: str | None, competitor: str | None) -> "CloseSummary":
        try:
            result = Outcome(outcome)
        except ValueError:
            raise Unprocessable(f"outcome must be won or lost, not {outcome!r}") from None
        if not reason or not reason.strip():
            raise Unprocessable("closing needs a summary: give the reason it was won or lost")
        competitor = competitor.strip() if competitor and competitor.strip() else None
        if result is Outcome.LOST and competitor is None:
            raise Unprocessable("closing as lost needs the competitor that won (or 'none' if no one did)")
        return cls(result, reason.strip(), competitor)


@dataclass(frozen=True)
class Opportunity:
    id: str
    name: str
    account_id: str
    owner_id: str
    money: Money
    stage: str = DEFAULT_PIPELINE.first_stage.key
    status: Status = Status.OPEN
    expected_close_date: date | None = None
    stage_entered_at: datetime | None = None
    version: int = 1
    product: str | None = None
    # The stage's probability when the deal entered it, or as an admin changed it since (stored).
    probability: int = DEFAULT_PIPELINE.first_stage.probability
    pipeline: Pipeline = DEFAULT_PIPELINE

    def _require_open(self, action: str) -> None:
        if self.status is Status.OPEN:
            return
        why = {
            Status.SUSPENDED: "it is suspended (中止); reactivate it first",
            Status.TERMINATED: "it is terminated (终止) and is never tracked again",
            Status.WON: "it is closed won",
            Status.LOST: "it is closed lost",
            Status.ARCHIVED: "it is archived",
        }[self.status]
        raise StatusNotAllowed(f"cannot {action} opportunity {self.id}: {why}")

    def move_to(self, stage: str, at: datetime) -> tuple["Opportunity", StageChange]:
        """Another open stage of its pipeline, with that stage's probability."""
        self._require_open(f"move to {stage}")
        target = self.pipeline.check_move(self.stage, stage)
        change = StageChange(self.stage, stage, self._seconds_in_stage(at))
        return replace(self, stage=stage, probability=target.probability, stage_entered_at=at), change

    def move_to_pipeline(
        self, pipeline: Pipeline, stage: str | None, at: datetime
    ) -> tuple["Opportunity", StageChange]:
        """Into an open stage of another pipeline (None: its first), with that stage's probability."""
        self._require_open(f"move to pipeline {pipeline.id}")
        if pipeline.id == self.pipeline.id:
            raise StageNotAllowed(f"opportunity {self.id} is in pipeline {pipeline.id} already; "
                                  "POST .../stage moves it between its stages")
        target = pipeline.check_entry(stage)
        change = StageChange(self.stage, target.key, self._seconds_in_stage(at))
        return replace(self, pipeline=pipeline, stage=target.key, probability=target.probability,
                       stage_entered_at=at), change

    def close(self, summary: CloseSummary, at: datetime) -> tuple["Opportunity", StageChange]:
        self._require_open(f"close as {summary.outcome}")
        if summary.outcome is Outcome.WON:
            self.pipeline.check_win(self.stage)
        closed_stage = WON if summary.outcome is Outcome.WON else LOST
        change = StageChange(self.stage, closed_stage.key, self._seconds_in_stage(at))
        status = Status.WON if summary.outcome is Outcome.WON else Status.LOST
        return replace(self, stage=closed_stage.key, status=status, probability=closed_stage.probability,
                       stage_entered_at=at), change

    def suspend(self) -> "Opportunity":
        self._require_open("suspend")
        return replace(self, status=Status.SUSPENDED)

    def reactivate(self) -> "Opportunity":
        if self.status is not Status.SUSPENDED:
            raise StatusNotAllowed(f"only a suspended opportunity can be reactivated; {self.id} is {self.status}")
        return replace(self, status=Status.OPEN)

    def terminate(self) -> "Opportunity":
        if self.status not in (Status.OPEN, Status.SUSPENDED):
            raise StatusNotAllowed(
                f"only an open or suspended opportunity can be terminated; {self.id} is {self.status}"
            )
        return replace(self, status=Status.TERMINATED)

    def archive(self) -> "Opportunity":
        if self.status not in (Status.WON, Status.LOST):
            raise StatusNotAllowed(
                f"only a closed (won or lost) opportunity can be archived; {self.id} is {self.status}"
            )
        return replace(self, status=Status.ARCHIVED)

    def assess(self, assessment: "Assessment") -> "Opportunity":
        """Assessing is part of working an open opportunity; the assessment itself is stored beside it."""
        self._require_open("assess")
        return self

    def may_quote(self) -> None:
        """Quotes are drawn up, revised and submitted while the opportunity is open."""
        self._require_open("quote on")

    def change_owners(self, owners: "tuple[OwnerSplit, ...]") -> "Opportunity":
        """New owners and splits; the first is the primary owner (a transfer is one owner at 100 %)."""
        if self.status in (Status.TERMINATED, Status.ARCHIVED):
            raise StatusNotAllowed(f"cannot change the owners of opportunity {self.id}: it is {self.status}")
        return replace(self, owner_id=owners[0].owner_id)

    def edit(self, edit: "OpportunityEdit") -> tuple["Opportunity", dict[str, Any]]:
        """The opportunity with the edit's fields, and those that changed with their new values (nothing
        changed: the same opportunity and an empty dict). An open or suspended deal only: a closed one
        keeps the figures it was closed with, a terminated one is never tracked again."""
        if self.status not in (Status.OPEN, Status.SUSPENDED):
            raise StatusNotAllowed(f"cannot edit opportunity {self.id}: it is {self.status}")
        money = parse_money(edit.amount if edit.amount is not None else self.money.amount,
                            edit.currency or self.money.currency)
        edited = replace(
            self,
            name=self.name if edit.name is None else edit.name,
            money=money,
            expected_close_date=edit.expected_close_date if "expected_close_date" in edit.given
            else self.expected_close_date,
            product=edit.product if "product" in edit.given else self.product,
        )
        before, after = self.editable_values(), edited.editable_values()
        changes = {name: value for name, value in after.items() if before[name] != value}
        return (edited, changes) if changes else (self, {})

    def editable_values(self) -> dict[str, Any]:
        """The fields an edit may change, by name."""
        return {"name": self.name, "amount": self.money.amount, "currency": self.money.currency,
                "expected_close_date": self.expected_close_date, "product": self.product}

    def may_take_contract(self) -> None:
        """A contract is drawn up for a won opportunity or an open one in its pipeline's last open stage
        (`contract` in the default pipeline)."""
        last = self.pipeline.last_open_stage.key
        if self.status is Status.WON or (self.status is Status.OPEN and self.stage == last):
            return
        raise StatusNotAllowed(
            f"a contract needs a won opportunity or one in the {last} stage (the last of pipeline "
            f"{self.pipeline.id}); {self.id} is {self.status} in {self.stage}"
        )

    def _seconds_in_stage(self, at: datetime) -> int:
        if self.stage_entered_at is None:
            return 0
        return max(0, int((at - self.stage_entered_at).total_seconds()))


@dataclass(frozen=True)
class OpportunityEdit:
    """The fields a PATCH may change; `given` names those the caller sent (expected_close_date and product
    may be cleared with null; name, amount and currency may not)."""

    given: frozenset[str]
    name: str | None = None
    amount: str | None = None
    currency: str | None = None
    expected_close_date: date | None = None
    product: str | None = None

    EDITABLE: ClassVar[tuple[str, ...]] = ("name", "amount", "currency", "expected_close_date", "product")

    @classmethod
    def of(cls, values: dict[str, Any]) -> "OpportunityEdit":
        """From the fields sent (absent ones unchanged); 422 naming the field that cannot be taken."""
        for required in ("name", "amount", "currency"):
            if required in values and values[required] is None:
                raise Unprocessable(f"{required} cannot be null")
        name = values.get("name")
        if name is not None and not name.strip():
            raise Unprocessable("name must not be blank")
        product = values.get("product")
        product = product.strip() if isinstance(product, str) and product.strip() else None
        return cls(
            given=frozenset(f for f in cls.EDITABLE if f in values),
            name=None if name is None else name.strip(),
            amount=values.get("amount"),
            currency=values.get("currency"),
            expected_close_date=values.get("expected_close_date"),
            product=product,
        )


# --- owners and splits ----------------------------------------------------------------------


@dataclass(frozen=True)
class OwnerSplit:
    owner_id: str
    split: int  # percent of the amount credited to this owner


def owner_splits(entries: list[tuple[str, int]]) -> tuple[OwnerSplit, ...]:
    """Owners with whole-percent splits that sum to 100, each owner once; the first is the primary."""
    if not entries:
        raise Unprocessable("an opportunity needs at least one owner")
    owners = [owner for owner, _ in entries]
    if len(set(owners)) != len(owners):
        raise Unprocessable("each owner may appear once")
    if any(not 1 <= split <= 100 for _, split in entries):
        raise Unprocessable("each split is a whole percent between 1 and 100")
    total = sum(split for _, split in entries)
    if total != 100:
        raise Unprocessable(f"the splits must sum to 100, not {total}")
    return tuple(OwnerSplit(owner, split) for owner, split in entries)


# --- presales maturity assessment (成熟度评估) ---------------------------------------------------

# Each factor's scale, best first, with its points (2 best, 0 worst). `maturity` is the points
# scored out of the maximum, in percent; scoring uses the factors themselves.
ASSESSMENT_SCALES: dict[str, dict[str, int]] = {
    "need": {"decided": 2, "planned": 1, "latent": 0},  # decided project / planned / latent need
    "budget": {"in_place": 2, "preliminary": 1, "none": 0},
    "urgency": {"driving": 2, "none": 0},  # a driving mechanism (deadline, mandate) or not
    "timing": {"fixed": 2, "flexible": 1, "none": 0},  # fixed schedule / flexible / none
    "decision_maker_trust": {"high": 2, "medium": 1, "low": 0},  # competitive position ...
    "decision_process_knowledge": {"high": 2, "medium": 1, "low": 0},
    "leverage": {"high": 2, "medium": 1, "low": 0},
}


@dataclass(frozen=True)
class Assessment:
    factors: dict[str, str]

    @classmethod
    def of(cls, values: dict[str, str | None]) -> "Assessment":
        problems = []
        for factor, scale in ASSESSMENT_SCALES.items():
            if values.get(factor) not in scale:
                problems.append(f"{factor} must be one of {', '.join(scale)}")
        if problems:
            raise Unprocessable("; ".join(problems))
        return cls({factor: str(values[factor]) for factor in ASSESSMENT_SCALES})

    @property
    def maturity(self) -> int:
        points = sum(ASSESSMENT_SCALES[f][v] for f, v in self.factors.items())
        return round(100 * points / (2 * len(ASSESSMENT_SCALES)))


def required_reason(reason: str | None, action: str) -> str:
    if not reason or not reason.strip():
        raise Unprocessable(f"{action} needs a reason")
    return reason.strip()


# --- contracts ----------------------------------------------------------------------------


class ContractStatus(StrEnum):
    DRAFT = "draft"
    SIGNED = "signed"  # booked; counts against the customer's credit limit
    EXECUTED = "executed"  # fulfilled; no longer counts against the credit limit
    TERMINATED = "terminated"  # ended before execution; no longer counts either


def contract_transition(contract_id: str, status: str, action: str) -> ContractStatus:
    """draft -> signed -> executed; draft or signed -> terminated. The new status, or why not."""
    allowed = {
        "sign": ({ContractStatus.DRAFT}, ContractStatus.SIGNED),
        "execute": ({ContractStatus.SIGNED}, ContractStatus.EXECUTED),
        "terminate": ({ContractStatus.DRAFT, ContractStatus.SIGNED}, ContractStatus.TERMINATED),
    }
    sources, target = allowed[action]
    if ContractStatus(status) not in sources:
        raise StatusNotAllowed(
            f"cannot {action} contract {contract_id}: it is {status}; only a {' or '.join(sorted(sources))} one can"
        )
    return target


def check_credit(
    *, account_id: str, credit_limit: Money | None, signed_total: Decimal, contract: Money
) -> None:
    """Refuse a signature that takes the account's signed total past its credit limit (None: no limit)."""
    if credit_limit is None:
        return
    if contract.currency != credit_limit.currency:
        raise CreditLimitExceeded(
            f"account {account_id} has a credit limit in {credit_limit.currency}; "
            f"a contract in {contract.currency} cannot be checked against it"
        )
    after = signed_total + contract.amount
    if after > credit_limit.amount:
        raise CreditLimitExceeded(
            f"signing would take account {account_id}'s signed contracts to {after} {contract.currency}, "
            f"past its credit limit of {credit_limit.amount} {credit_limit.currency} "
            f"(already signed: {signed_total} {contract.currency})"
        )
