"""The opportunities domain (services/opportunities/domain.py): pipelines, moves, status, money, credit."""

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from services.opportunities.domain import (
    DEFAULT_PIPELINE,
    Assessment,
    CloseSummary,
    CreditLimitExceeded,
    Money,
    Opportunity,
    OpportunityEdit,
    Pipeline,
    Stage,
    StageNotAllowed,
    Status,
    StatusNotAllowed,
    check_credit,
    contract_transition,
    define_pipeline,
    normalise_name,
    owner_splits,
    parse_money,
)
from shared.errors import Unprocessable

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def opportunity(**changes: object) -> Opportunity:
    base = Opportunity("opp-1", "星河 CRM", "acc-1", "rep-1", Money(Decimal("1000.00")), stage_entered_at=T0)
    return base.__class__(**{**base.__dict__, **changes})


def test_the_default_pipeline_and_its_probabilities() -> None:
    assert (DEFAULT_PIPELINE.id, DEFAULT_PIPELINE.allow_skipping) == ("project_sales", True)
    assert [(s.key, s.label_zh, s.probability) for s in DEFAULT_PIPELINE.stages] == [
        ("prospecting", "潜在客户跟踪", 10),
        ("bidding", "项目投标", 30),
        ("negotiation", "商务洽谈", 60),
        ("contract", "签订合同", 80),
        ("won", "赢单", 100),
        ("lost", "输单", 0),
    ]
    assert opportunity().probability == 10


def test_a_move_records_from_to_and_time_in_the_previous_stage() -> None:
    moved, change = opportunity().move_to("bidding", T0 + timedelta(days=2))
    assert (moved.stage, moved.probability, moved.stage_entered_at) == ("bidding", 30, T0 + timedelta(days=2))
    assert (change.from_stage, change.to_stage, change.seconds_in_previous_stage) == ("prospecting", "bidding", 172800)
    back, _ = moved.move_to("prospecting", T0 + timedelta(days=3))  # a slipping deal may move back
    assert back.stage == "prospecting"


@pytest.mark.parametrize(
    ("stage", "message"),
    [("closing", "unknown stage 'closing'; the stages of pipeline project_sales are prospecting, bidding, "
                 "negotiation, contract"), ("won", "only by being closed"), ("lost", "only by being closed"),
     ("prospecting", "already in stage")],
)
def test_moves_the_pipeline_refuses(stage: str, message: str) -> None:
    with pytest.raises(StageNotAllowed, match=message):
        opportunity().move_to(stage, T0)


@pytest.mark.parametrize(
    ("status", "why"),
    [(Status.SUSPENDED, "suspended"), (Status.TERMINATED, "terminated"), (Status.WON, "closed won"),
     (Status.LOST, "closed lost"), (Status.ARCHIVED, "archived")],
)
def test_only_an_open_opportunity_moves(status: Status, why: str) -> None:
    with pytest.raises(StatusNotAllowed, match=why):
        opportunity(status=status).move_to("bidding", T0)


def test_closing_needs_a_summary() -> None:
    with pytest.raises(Unprocessable, match="reason"):
        CloseSummary.of("won", " ", None)
    with pytest.raises(Unprocessable, match="competitor"):
        CloseSummary.of("lost", "price", None)
    with pytest.raises(Unprocessable, match="outcome"):
        CloseSummary.of("maybe", "price", None)
    won, change = opportunity(stage="contract").close(CloseSummary.of("won", "best fit", None), T0)
    assert (won.stage, won.status, won.probability, change.to_stage) == ("won", Status.WON, 100, "won")
    lost, _ = opportunity().close(CloseSummary.of("lost", "price", "Acme"), T0)
    assert (lost.stage, lost.status, lost.probability) == ("lost", Status.LOST, 0)
    with pytest.raises(StatusNotAllowed, match="closed lost"):
        lost.close(CloseSummary.of("won", "changed our mind", None), T0)


def test_suspend_reactivate_terminate_archive() -> None:
    suspended = opportunity().suspend()
    assert suspended.status is Status.SUSPENDED
    with pytest.raises(StatusNotAllowed, match="suspended"):
        suspended.suspend()
    assert suspended.reactivate().status is Status.OPEN
    with pytest.raises(StatusNotAllowed, match="only a suspended"):
        opportunity().reactivate()
    terminated = suspended.terminate()
    assert terminated.status is Status.TERMINATED
    for action in (terminated.reactivate, terminated.terminate, terminated.suspend):
        with pytest.raises(StatusNotAllowed):
            action()
    with pytest.raises(StatusNotAllowed, match="only a closed"):
        opportunity().archive()
    lost, _ = opportunity().close(CloseSummary.of("lost", "price", "Acme"), T0)
    assert lost.archive().status is Status.ARCHIVED


# --- configured pipelines -------------------------------------------------------------------

STRICT = Pipeline(
    "channel_sales", "渠道销售", "Channel sales",
    (Stage("lead_in", "线索", "Lead in", 5), Stage("demo", "演示", "Demo", 25),
     Stage("proposal", "方案", "Proposal", 50), Stage("signing", "签约", "Signing", 90)),
    allow_skipping=False,
)


def in_strict(stage: str = "lead_in", **changes: object) -> Opportunity:
    return opportunity(pipeline=STRICT, stage=stage, probability=STRICT.stage(stage).probability,  # type: ignore[union-attr]
                       **changes)


def test_a_move_takes_its_pipelines_stages_and_probabilities() -> None:
    moved, change = in_strict().move_to("demo", T0)
    assert (moved.stage, moved.probability, change.from_stage) == ("demo", 25, "lead_in")
    with pytest.raises(StageNotAllowed, match="stages of pipeline channel_sales are lead_in, demo, proposal, signing"):
        in_strict().move_to("bidding", T0)  # the default pipeline's stage is not this one's


def test_without_skipping_forwards_goes_one_stage_at_a_time_and_back_anywhere() -> None:
    with pytest.raises(StageNotAllowed, match="from lead_in the next stage is demo, not proposal"):
        in_strict().move_to("proposal", T0)
    back, _ = in_strict("signing").move_to("lead_in", T0)  # a deal that slips may go back further
    assert (back.stage, back.probability) == ("lead_in", 5)
    assert opportunity().move_to("contract", T0)[0].stage == "contract"  # the default pipeline allows skipping


def test_without_skipping_a_deal_is_won_from_the_last_open_stage_and_lost_from_any() -> None:
    with pytest.raises(StageNotAllowed, match="closed won from signing, not from demo"):
        in_strict("demo").close(CloseSummary.of("won", "signed", None), T0)
    won, _ = in_strict("signing").close(CloseSummary.of("won", "signed", None), T0)
    lost, _ = in_strict("demo").close(CloseSummary.of("lost", "price", "Acme"), T0)
    assert (won.status, won.probability, lost.status, lost.probability) == (Status.WON, 100, Status.LOST, 0)


def test_a_deal_moves_into_any_open_stage_of_another_pipeline() -> None:
    later = T0 + timedelta(days=2)
    moved, change = opportunity(stage="bidding", probability=30).move_to_pipeline(STRICT, "proposal", later)
    assert (moved.pipeline.id, moved.stage, moved.probability, moved.stage_entered_at) == (
        "channel_sales", "proposal", 50, later)  # skipping is a rule of moves within STRICT, not into it
    assert (change.from_stage, change.to_stage, change.seconds_in_previous_stage) == ("bidding", "proposal", 172800)
    assert opportunity().move_to_pipeline(STRICT, None, T0)[0].stage == "lead_in"
    with pytest.raises(StageNotAllowed, match="project_sales already"):
        opportunity().move_to_pipeline(DEFAULT_PIPELINE, "bidding", T0)
    for stage in ("bidding", "won"):
        with pytest.raises(StageNotAllowed, match="open stages, lead_in, demo, proposal, signing"):
            opportunity().move_to_pipeline(STRICT, stage, T0)
    with pytest.raises(StatusNotAllowed, match="suspended"):
        opportunity(status=Status.SUSPENDED).move_to_pipeline(STRICT, None, T0)


def test_a_retired_pipeline_takes_no_deal_but_its_own_carry_on() -> None:
    retired = replace(STRICT, retired=True)
    with pytest.raises(StageNotAllowed, match="channel_sales is retired"):
        retired.check_entry()
    with pytest.raises(StageNotAllowed, match="retired"):
        opportunity().move_to_pipeline(retired, None, T0)
    in_retired = opportunity(pipeline=retired, stage="lead_in", probability=5)
    assert in_retired.move_to("demo", T0)[0].stage == "demo"
    assert in_retired.move_to_pipeline(DEFAULT_PIPELINE, None, T0)[0].pipeline.id == "project_sales"
    stages = [{"key": "a", "label": {"zh-CN": "甲", "en": "A"}, "probability": 10}]
    assert define_pipeline("renewals", {"zh-CN": "续约", "en": "Renewals"}, stages, True, retired=True).retired
    with pytest.raises(Unprocessable, match="default pipeline project_sales cannot be retired"):
        define_pipeline("project_sales", {"zh-CN": "项目销售", "en": "Project sales"}, stages, True, retired=True)


def test_a_contract_is_drawn_up_in_the_pipelines_last_open_stage() -> None:
    in_strict("signing").may_take_contract()
    with pytest.raises(StatusNotAllowed, match="the signing stage"):
        in_strict("proposal").may_take_contract()


def definition(**changes: object) -> dict[str, object]:
    stages = [{"key": "lead_in", "label": {"zh-CN": "线索", "en": "Lead in"}, "probability": 5},
              {"key": "demo", "label": {"zh-CN": "演示", "en": "Demo"}, "probability": 25}]
    values: dict[str, object] = {"pipeline_id": "channel_sales", "names": {"zh-CN": "渠道销售", "en": "Channel sales"},
                                 "stages": stages, "allow_skipping": False}
    return {**values, **changes}


def test_a_defined_pipeline_ends_with_won_and_lost() -> None:
    pipeline = define_pipeline(**definition())  # type: ignore[arg-type]
    assert [(s.key, s.probability, s.closed) for s in pipeline.stages] == [
        ("lead_in", 5, False), ("demo", 25, False), ("won", 100, True), ("lost", 0, True)]
    assert (pipeline.names, pipeline.first_stage.key, pipeline.allow_skipping) == (
        {"zh-CN": "渠道销售", "en": "Channel sales"}, "lead_in", False)
    assert pipeline.stage("demo").labels == {"zh-CN": "演示", "en": "Demo"}  # type: ignore[union-attr]


@pytest.mark.parametrize(("changes", "message"), [
    ({"stages": []}, "at least one open stage"),
    ({"stages": [{"key": "won", "label": {"zh-CN": "赢", "en": "Won"}, "probability": 100}]},
     "won is a closed stage every pipeline has"),
    ({"stages": [{"key": "demo", "label": {"zh-CN": "演示", "en": "Demo"}, "probability": 25}] * 2},
     "the key demo is used twice"),
    ({"stages": [{"key": "Demo Day", "label": {"zh-CN": "演示", "en": "Demo"}, "probability": 25}]}, "must be a slug"),
    ({"stages": [{"key": "demo", "label": {"zh-CN": "演示", "en": "Demo"}, "probability": 101}]},
     "whole percent from 0 to 100, not 101"),
    ({"stages": [{"key": "demo", "label": {"zh-CN": "演示", "en": "Demo"}, "probability": -1}]}, "not -1"),
    ({"stages": [{"key": "demo", "label": {"zh-CN": " ", "en": "Demo"}, "probability": 20}]},
     r"stage 1 \(demo\) label zh-CN is required"),
    ({"names": {"zh-CN": "渠道销售"}}, "name en is required"),
    ({"pipeline_id": "Channel Sales"}, "must be a slug"),
])
def test_a_pipeline_definition_is_refused_naming_the_problem(changes: dict[str, object], message: str) -> None:
    with pytest.raises(Unprocessable, match=message):
        define_pipeline(**definition(**changes))  # type: ignore[arg-type]


def test_a_pipeline_definition_names_every_problem_at_once() -> None:
    stages = [{"key": "lost", "label": {}, "probability": 200}]
    with pytest.raises(Unprocessable) as refused:
        define_pipeline("ok", {"zh-CN": "好", "en": "OK"}, stages, True)
    assert all(part in str(refused.value) for part in ("lost is a closed stage", "label zh-CN", "label en", "200"))


def test_a_change_names_the_stages_it_removes_and_the_probabilities_it_moves() -> None:
    changed = Pipeline(STRICT.id, STRICT.name_zh, STRICT.name_en, (
        Stage("lead_in", "线索", "Lead in", 5), Stage("demo_done", "演示", "Demo", 25),  # demo renamed
        Stage("proposal", "方案", "Proposal", 40), Stage("signing", "签约", "Signing", 90)))
    assert STRICT.removed_keys(changed) == ["demo"]
    assert STRICT.changed_probabilities(changed) == {"proposal": 40}


def test_stages_deals_are_in_are_not_removed() -> None:
    STRICT.check_removal({})
    STRICT.check_removal({"demo": 0})
    with pytest.raises(StageNotAllowed, match="cannot lose stages .*: demo holds 3, lead_in holds 1; move them"):
        STRICT.check_removal({"lead_in": 1, "demo": 3})


def test_a_stage_the_pipeline_no_longer_has_is_its_own_label() -> None:
    assert STRICT.labels("demo") == {"zh-CN": "演示", "en": "Demo"}
    assert STRICT.labels("old_stage") == {"zh-CN": "old_stage", "en": "old_stage"}


def test_contracts_need_a_won_or_contract_stage_opportunity() -> None:
    opportunity(stage="contract").may_take_contract()
    opportunity(stage="won", status=Status.WON).may_take_contract()
    with pytest.raises(StatusNotAllowed, match="contract stage"):
        opportunity(stage="negotiation").may_take_contract()
    with pytest.raises(StatusNotAllowed):
        opportunity(stage="contract", status=Status.SUSPENDED).may_take_contract()


def test_money_is_decimal_with_a_currency_never_a_float() -> None:
    assert parse_money("120000", None) == Money(Decimal("120000.00"), "CNY")
    assert parse_money("99.5", "USD") == Money(Decimal("99.50"), "USD")
    assert parse_money(None, None) == Money(Decimal("0.00"), "CNY")
    for bad_amount, currency in [(0.1, None), ("-1", None), ("1.001", None), ("abc", None), ("NaN", None),
                                 ("1", "cny"), ("1", "RMB1")]:
        with pytest.raises(Unprocessable):
            parse_money(bad_amount, currency)  # type: ignore[arg-type]


def test_account_names_match_when_normalised() -> None:
    expected = "北京星河科技有限公司"
    assert normalise_name("北京 星河科技有限公司") == normalise_name("（北京）星河科技有限公司") == expected
    assert normalise_name("Acme, Inc.") == normalise_name("ACME Inc")
    assert normalise_name("Acme") != normalise_name("Acme Two")


def test_credit_limit_blocks_signing_past_it() -> None:
    limit = Money(Decimal("1000.00"))
    check_credit(account_id="a", credit_limit=None, signed_total=Decimal("5000"), contract=Money(Decimal("1")))
    check_credit(account_id="a", credit_limit=limit, signed_total=Decimal("600"), contract=Money(Decimal("400")))
    with pytest.raises(CreditLimitExceeded, match="past its credit limit of 1000.00 CNY"):
        check_credit(account_id="a", credit_limit=limit, signed_total=Decimal("600"), contract=Money(Decimal("400.01")))
    with pytest.raises(CreditLimitExceeded, match="in USD"):
        check_credit(account_id="a", credit_limit=limit, signed_total=Decimal("0"), contract=Money(Decimal("1"), "USD"))


def test_the_maturity_assessment_and_its_scales() -> None:
    best = Assessment.of({"need": "decided", "budget": "in_place", "urgency": "driving", "timing": "fixed",
                          "decision_maker_trust": "high", "decision_process_knowledge": "high", "leverage": "high"})
    assert best.maturity == 100
    middling = Assessment.of({**best.factors, "need": "planned", "budget": "none", "urgency": "none"})
    assert middling.maturity == round(100 * 9 / 14)
    with pytest.raises(Unprocessable, match="budget must be one of in_place, preliminary, none; leverage"):
        Assessment.of({**best.factors, "budget": "lots", "leverage": None})
    assert opportunity().assess(best).status is Status.OPEN
    with pytest.raises(StatusNotAllowed, match="suspended"):
        opportunity(status=Status.SUSPENDED).assess(best)


def test_owners_and_splits() -> None:
    splits = owner_splits([("rep-2", 60), ("rep-1", 40)])
    assert opportunity().change_owners(splits).owner_id == "rep-2"
    for entries, message in [([], "at least one"), ([("a", 50), ("a", 50)], "once"),
                             ([("a", 0), ("b", 100)], "between"), ([("a", 50), ("b", 40)], "sum to 100, not 90")]:
        with pytest.raises(Unprocessable, match=message):
            owner_splits(entries)
    with pytest.raises(StatusNotAllowed, match="terminated"):
        opportunity(status=Status.TERMINATED).change_owners(splits)


def test_the_contract_lifecycle() -> None:
    assert contract_transition("c", "draft", "sign") == "signed"
    assert contract_transition("c", "signed", "execute") == "executed"
    assert contract_transition("c", "draft", "terminate") == contract_transition("c", "signed", "terminate")
    for status, action in [("draft", "execute"), ("executed", "terminate"), ("terminated", "sign")]:
        with pytest.raises(StatusNotAllowed, match=f"it is {status}"):
            contract_transition("c", status, action)


# --- edits ----------------------------------------------------------------------------------


def test_an_edit_changes_the_fields_given_and_names_those_that_moved() -> None:
    current = opportunity(expected_close_date=date(2026, 12, 1), product="GTX Basic")
    edited, changes = current.edit(OpportunityEdit.of(
        {"amount": "1500", "name": " 星河 CRM ", "expected_close_date": None, "product": "GTX Pro"}))
    assert changes == {"amount": Decimal("1500.00"), "expected_close_date": None, "product": "GTX Pro"}
    assert (edited.money, edited.name, edited.stage, edited.owner_id) == (
        Money(Decimal("1500.00")), "星河 CRM", "prospecting", "rep-1")
    moved_currency, changes = current.edit(OpportunityEdit.of({"currency": "USD"}))
    assert (moved_currency.money, changes) == (Money(Decimal("1000.00"), "USD"), {"currency": "USD"})


def test_an_edit_that_changes_nothing_names_no_field() -> None:
    current = opportunity(product="GTX Basic")
    assert current.edit(OpportunityEdit.of({"amount": "1000.00", "product": "GTX Basic"})) == (current, {})
    assert current.edit(OpportunityEdit.of({})) == (current, {})


@pytest.mark.parametrize(("values", "field"), [
    ({"amount": None}, "amount"), ({"currency": None}, "currency"), ({"name": None}, "name"),
    ({"name": "   "}, "name"), ({"amount": "12.345"}, "amount"), ({"amount": "-1"}, "amount"),
    ({"currency": "rmb"}, "currency"),
])
def test_an_edit_refuses_what_cannot_be_taken_naming_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(Unprocessable, match=field):
        opportunity().edit(OpportunityEdit.of(values))


@pytest.mark.parametrize("status", [Status.WON, Status.LOST, Status.TERMINATED, Status.ARCHIVED])
def test_only_an_open_or_suspended_opportunity_is_edited(status: Status) -> None:
    with pytest.raises(StatusNotAllowed, match=str(status)):
        opportunity(status=status).edit(OpportunityEdit.of({"amount": "5.00"}))
    edited, _ = opportunity(status=Status.SUSPENDED).edit(OpportunityEdit.of({"amount": "5.00"}))
    assert edited.money.amount == Decimal("5.00") and edited.status is Status.SUSPENDED
