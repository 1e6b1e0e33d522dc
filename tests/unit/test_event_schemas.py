"""The event-data schemas in shared/events/schemas/ against the catalogue and the contract.

Every catalogue entry has a draft 2020-12 schema whose $id is its `dataschema`;
realistic payloads pass, and payloads breaking the contract's conventions (missing
fields, float amounts, bad grades, non-RFC 3339 or non-UTC times ...) fail.
"""

import copy
import json

import pytest
from jsonschema import Draft202012Validator

from shared.events.catalog import EVENT_TYPES, SCHEMA_DIR

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"

# The minimum data fields of CONTRACT.md, section "Event envelope".
CONTRACT_MINIMUM = {
    "sales.lead.captured.v1": {
        "lead_id", "source", "grade", "owner_id", "campaign_id", "region", "contact", "captured_at",
    },
    "sales.lead.engaged.v1": {"lead_id", "visits", "time_on_site_s", "page_views", "activity"},
    "sales.opportunity.stage_changed.v1": {
        "opportunity_id", "from_stage", "to_stage", "probability", "amount", "currency", "owner_id", "changed_by",
    },
    "sales.contract.signed.v1": {
        "contract_id", "opportunity_id", "account_id", "amount", "currency", "owner_id", "signed_at",
    },
    "sales.lead.scored.v1": {"lead_id", "score", "model_version", "factors"},
}

AMOUNT_FIELDS = {
    "amount", "list_total", "subtotal", "total",
    "budget", "actual_cost", "open_amount", "weighted_pipeline", "best_case", "commit", "closed_won", "quota",
}

FACTORS = [
    {"feature": "grade", "contribution": 22.5, "label_en": "Intent grade H", "label_zh": "意向等级 H"},
    {"feature": "source", "contribution": -3, "label_en": "Came from a trade show", "label_zh": "来自展会"},
]

QUOTE = {
    "quote_id": "quo-7", "opportunity_id": "opp-204", "account_id": "acc-51", "owner_id": "rep-1",
    "currency": "CNY", "discount": "5.00", "list_total": "250000.00", "subtotal": "237500.00",
    "total": "225625.00", "effective_discount": "9.75", "valid_until": "2026-12-31",
    "lines": [{"product": "数据平台 license", "quantity": "10", "unit_price": "25000.00", "discount": "5.00",
               "net": "237500.00"}],
}

# One realistic payload per event type.
EXAMPLES = {
    "sales.lead.captured.v1": {
        "lead_id": "lead-8f3a",
        "source": "web_form",
        "grade": "H",
        "owner_id": None,
        "campaign_id": "cmp-2026-autumn",
        "region": "华东",
        "contact": {"name": "王伟", "company": "上海星河科技有限公司", "phone": "+86 138 0013 8000", "email": None},
        "captured_at": "2026-11-03T02:15:00Z",
        "attributes": {"utm_source": "baidu", "utm_campaign": "autumn", "landing_page": "/pricing"},
    },
    "sales.lead.engaged.v1": {
        "lead_id": "lead-8f3a", "visits": 4, "time_on_site_s": 612.5, "page_views": 17, "activity": "webinar_attended",
    },
    "sales.lead.assigned.v1": {
        "lead_id": "lead-8f3a", "owner_id": "rep-1", "previous_owner_id": None, "team": "east", "grade": "H",
        "method": "territory", "assigned_by": "system", "reason": None, "assigned_at": "2026-11-03T02:15:01Z",
        "follow_up_due_at": "2026-11-03T03:15:01+00:00",
    },
    "sales.lead.contacted.v1": {
        "lead_id": "lead-8f3a", "touch_id": "touch-1", "channel": "sms", "contacted_at": "2026-11-03T02:40:00Z",
        "contacted_by": "rep-1", "touch_number": 1, "note": "发送了产品资料",
    },
    "sales.lead.grade_changed.v1": {
        "lead_id": "lead-8f3a", "from_grade": "B", "to_grade": "A", "follow_up_due_at": "2026-11-05T02:40:00Z",
        "changed_by": "rep-1", "changed_at": "2026-11-03T02:41:00Z",
    },
    "sales.lead.qualified.v1": {
        "lead_id": "lead-8f3a", "owner_id": "rep-1", "grade": "A", "qualified_by": "rep-1",
        "qualified_at": "2026-11-04T08:00:00Z",
    },
    "sales.lead.disqualified.v1": {
        "lead_id": "lead-77c1", "reason": "no_budget", "disqualified_by": "rep-2",
        "disqualified_at": "2026-11-04T08:00:00Z", "note": None,
    },
    "sales.lead.converted.v1": {
        "lead_id": "lead-8f3a",
        "contact": {"name": "王伟", "company": "上海星河科技有限公司", "phone": "+86 138 0013 8000", "email": None},
        "account_name": "上海星河科技有限公司",
        "account_id": None,
        "owner_id": "rep-1",
        "region": "华东",
        "campaign_id": "cmp-2026-autumn",
        "opportunity": {
            "name": "星河科技 CRM 项目", "amount": "380000.00", "currency": "CNY", "expected_close_date": "2027-01-31",
        },
        "converted_by": "rep-1",
        "converted_at": "2026-11-05T09:30:00Z",
    },
    "sales.lead.merged.v1": {
        "lead_id": "lead-8f3a", "merged_lead_id": "lead-9b02", "matched_on": ["phone"], "merged_by": "system",
        "merged_at": "2026-11-03T02:16:00Z",
    },
    "sales.campaign.created.v1": {
        "campaign_id": "cmp-2026-autumn", "name": "2026 秋季展会", "channel": "event", "status": "planned",
        "budget": "50000", "actual_cost": "0", "currency": "CNY", "starts_on": "2026-10-20", "ends_on": "2026-11-30",
        "created_by": "mgr-1", "created_at": "2026-09-01T00:00:00Z",
    },
    "sales.campaign.updated.v1": {
        "campaign_id": "cmp-2026-autumn", "name": "2026 秋季展会", "channel": "event", "status": "running",
        "budget": "50000", "actual_cost": "21000.50", "currency": "CNY", "starts_on": "2026-10-20",
        "ends_on": "2026-11-30", "changed_fields": ["status", "actual_cost"], "updated_at": "2026-10-21T00:00:00Z",
    },
    "sales.account.created.v1": {
        "account_id": "acc-51", "name": "上海星河科技有限公司", "region": "华东", "owner_id": "rep-1",
        "parent_account_id": None, "key_account": False, "value_tier": None, "lead_id": "lead-8f3a",
        "created_at": "2026-11-05T09:30:01Z",
    },
    "sales.account.updated.v1": {
        "account_id": "acc-51", "name": "上海星河科技有限公司", "region": "华东", "owner_id": "rep-1",
        "parent_account_id": None, "key_account": True, "value_tier": "high", "changed_fields": ["key_account"],
        "updated_at": "2026-12-01T00:00:00Z",
    },
    "sales.contact.created.v1": {
        "contact_id": "con-9", "account_id": "acc-51", "name": "李娜", "title": "采购经理", "role": "decision_maker",
        "phone": "+8613800138000", "email": "li.na@xinghe.cn", "is_primary": True, "lead_id": None,
        "created_by": "rep-1", "created_at": "2026-12-02T03:00:00Z",
    },
    "sales.contact.updated.v1": {
        "contact_id": "con-9", "account_id": "acc-51", "name": "李娜", "title": "采购总监", "role": "decision_maker",
        "phone": "+8613800138000", "email": None, "is_primary": False, "lead_id": None,
        "changed_fields": ["email", "title"], "updated_by": "mgr-1", "updated_at": "2026-12-03T03:00:00Z",
    },
    "sales.contact.archived.v1": {
        "contact_id": "con-9", "account_id": "acc-51", "name": "李娜", "archived_by": "rep-1",
        "archived_at": "2026-12-04T03:00:00Z",
    },
    "sales.opportunity.created.v1": {
        "opportunity_id": "opp-204", "name": "星河科技 CRM 项目", "account_id": "acc-51", "stage": "prospecting",
        "status": "open", "probability": 10, "amount": "380000.00", "currency": "CNY", "owner_id": "rep-1",
        "expected_close_date": "2027-01-31", "created_at": "2026-11-05T09:30:01Z", "lead_id": "lead-8f3a",
        "campaign_id": "cmp-2026-autumn",
    },
    "sales.opportunity.stage_changed.v1": {
        "opportunity_id": "opp-204", "from_stage": "prospecting", "to_stage": "bidding", "probability": 30,
        "amount": "380000.00", "currency": "CNY", "owner_id": "rep-1", "account_id": "acc-51",
        "changed_by": "rep-1", "changed_at": "2026-11-20T06:00:00Z",
    },
    "sales.opportunity.won.v1": {
        "opportunity_id": "opp-204", "amount": "365000.00", "currency": "CNY", "owner_id": "rep-1",
        "reason": "best fit and price", "closed_at": "2027-01-15T06:00:00Z", "closed_by": "rep-1",
    },
    "sales.opportunity.lost.v1": {
        "opportunity_id": "opp-205", "amount": "120000", "currency": "CNY", "owner_id": "rep-2",
        "reason": "price", "competitor": "ACME", "closed_at": "2027-01-15T06:00:00Z", "closed_by": "rep-2",
    },
    "sales.opportunity.suspended.v1": {
        "opportunity_id": "opp-206", "owner_id": "rep-3", "by": "rep-3", "reason": "customer froze the budget",
        "at": "2026-12-01T00:00:00Z",
    },
    "sales.opportunity.reactivated.v1": {
        "opportunity_id": "opp-206", "owner_id": "rep-3", "by": "mgr-2", "reason": None, "at": "2027-02-01T00:00:00Z",
    },
    "sales.opportunity.terminated.v1": {
        "opportunity_id": "opp-207", "owner_id": "rep-3", "by": "mgr-2", "reason": "project cancelled",
        "at": "2027-02-01T00:00:00Z",
    },
    "sales.opportunity.assessed.v1": {
        "opportunity_id": "opp-204", "owner_id": "rep-1", "stage": "bidding", "maturity": 71,
        "assessment": {"need": "decided", "budget": "preliminary", "urgency": "driving", "timing": "flexible",
                       "decision_maker_trust": "high", "decision_process_knowledge": "medium", "leverage": "medium"},
        "assessed_by": "rep-1", "assessed_at": "2026-11-20T09:00:00Z",
    },
    "sales.opportunity.owners_changed.v1": {
        "opportunity_id": "opp-204", "owner_id": "rep-2", "previous_owner_id": "rep-1",
        "owners": [{"owner_id": "rep-2", "split": 60}, {"owner_id": "rep-1", "split": 40}],
        "amount": "365000.00", "currency": "CNY", "stage": "negotiation", "changed_by": "mgr-1",
        "changed_at": "2026-11-20T09:00:00Z",
    },
    "sales.opportunity.updated.v1": {
        "opportunity_id": "opp-204", "name": "Smart campus phase 2", "owner_id": "rep-1", "account_id": "acc-51",
        "stage": "negotiation", "probability": 60, "amount": "420000.00", "currency": "CNY",
        "expected_close_date": "2027-02-28", "product": "GTX Pro", "changed_fields": ["amount", "expected_close_date"],
        "changes": {"amount": "420000.00", "expected_close_date": "2027-02-28"},
        "previous": {"amount": "365000.00", "expected_close_date": "2027-01-31"},
        "changed_by": "rep-1", "changed_at": "2026-11-21T09:00:00Z",
    },
    "sales.opportunity.repriced.v1": {
        "opportunity_id": "opp-204", "pipeline_id": "project_sales", "stage": "bidding", "status": "open",
        "probability": 35, "previous_probability": 30, "owner_id": "rep-1", "account_id": "acc-51",
        "amount": "365000.00", "currency": "CNY", "product": None, "changed_by": "admin-1",
        "changed_at": "2026-11-22T09:00:00Z",
    },
    "sales.opportunity.archived.v1": {
        "opportunity_id": "opp-205", "owner_id": "rep-2", "outcome": "lost", "stage": "lost", "amount": "120000",
        "currency": "CNY", "by": "mgr-1", "reason": None, "at": "2027-03-01T00:00:00Z",
    },
    "sales.contract.created.v1": {
        "contract_id": "ctr-88", "opportunity_id": "opp-204", "account_id": "acc-51", "amount": "365000.00",
        "currency": "CNY", "owner_id": "rep-1", "campaign_id": "cmp-2026-autumn", "status": "draft",
        "created_by": "rep-1", "created_at": "2027-01-15T08:00:00Z",
    },
    "sales.contract.executed.v1": {
        "contract_id": "ctr-88", "opportunity_id": "opp-204", "account_id": "acc-51", "amount": "365000.00",
        "currency": "CNY", "owner_id": "rep-1", "executed_by": "rep-1", "executed_at": "2027-06-30T00:00:00Z",
    },
    "sales.contract.terminated.v1": {
        "contract_id": "ctr-89", "opportunity_id": "opp-204", "account_id": "acc-51", "amount": "10000.00",
        "currency": "CNY", "owner_id": "rep-1", "reason": "customer withdrew", "was_signed": True,
        "terminated_by": "mgr-1", "terminated_at": "2027-01-10T00:00:00Z",
    },
    "sales.contract.signed.v1": {
        "contract_id": "ctr-88", "opportunity_id": "opp-204", "account_id": "acc-51", "amount": "365000.00",
        "currency": "CNY", "owner_id": "rep-1", "signed_at": "2027-01-20T03:00:00Z",
    },
    "sales.quote.created.v1": {
        **QUOTE, "status": "draft", "created_by": "rep-1", "created_at": "2026-12-01T02:00:00Z",
    },
    "sales.quote.revised.v1": {
        **QUOTE, "status": "draft", "revised_by": "rep-1", "revised_at": "2026-12-01T02:30:00Z",
    },
    "sales.quote.submitted.v1": {
        **QUOTE, "status": "pending_approval", "submitted_by": "rep-1", "submitted_at": "2026-12-01T03:00:00Z",
        "approval_required": True, "approval_threshold": "10.00", "approver_id": "mgr-1",
    },
    "sales.quote.approved.v1": {
        **QUOTE, "status": "approved", "approved_by": "mgr-1", "approved_at": "2026-12-01T04:00:00Z",
        "automatic": False, "reason": None,
    },
    "sales.quote.rejected.v1": {
        **QUOTE, "status": "rejected", "rejected_by": "mgr-1", "rejected_at": "2026-12-01T04:00:00Z",
        "reason": "折扣过大",
    },
    "sales.lead.scored.v1": {
        "lead_id": "lead-8f3a", "score": 83.4, "model_version": "rules-1", "factors": FACTORS,
        "scored_at": "2026-11-03T02:15:02Z",
    },
    "sales.opportunity.scored.v1": {
        "opportunity_id": "opp-204", "score": 41, "model_version": "tree-2026-11-01", "factors": FACTORS,
    },
    "sales.account.tiered.v1": {
        "account_id": "acc-51", "value_tier": "high", "buyer_type": "frequent", "previous_value_tier": "medium",
        "previous_buyer_type": "occasional", "model_version": "tiers-v1", "amount_12m": "1250000.00",
        "currency": "CNY", "contracts_12m": 3, "contracts_total": 5, "last_signed_at": "2026-11-20T06:00:00Z",
        "factors": FACTORS, "tiered_at": "2026-11-20T06:00:01Z", "cause_contract_id": "con-88",
    },
    "sales.forecast.updated.v1": {
        "period": "2026-Q4", "by": "owner", "key": "rep-1", "open_amount": "380000.00",
        "weighted_pipeline": "114000.00", "best_case": "380000.00", "commit": "0", "closed_won": "0",
        "quota": "1500000", "currency": "CNY",
    },
}

ALL_TYPES = sorted(EVENT_TYPES)


def required_fields(type_: str) -> list[str]:
    """For parametrising at collection time; a missing file is reported by the catalogue test."""
    try:
        return EVENT_TYPES[type_].schema()["required"]
    except (OSError, ValueError, KeyError):
        return []


def validator(type_: str) -> Draft202012Validator:
    return Draft202012Validator(EVENT_TYPES[type_].schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def is_valid(type_: str, data: dict) -> bool:
    return validator(type_).is_valid(data)


def with_(type_: str, **changes) -> dict:
    data = copy.deepcopy(EXAMPLES[type_])
    data.update(changes)
    return data


def without(type_: str, field: str) -> dict:
    data = copy.deepcopy(EXAMPLES[type_])
    del data[field]
    return data


def refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


# --- catalogue <-> files ---------------------------------------------------------------


def test_every_catalogue_entry_has_a_schema_file():
    missing = sorted(t for t, e in EVENT_TYPES.items() if not e.schema_file.is_file())
    assert missing == []


def test_every_schema_file_has_a_catalogue_entry():
    files = {p.name.removesuffix(".json") for p in SCHEMA_DIR.iterdir()}
    assert sorted(files - set(EVENT_TYPES)) == []


def test_every_type_has_an_example_here():
    assert set(EXAMPLES) == set(EVENT_TYPES)


# --- every schema ----------------------------------------------------------------------


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_schema_is_valid_draft_2020_12(type_):
    schema = json.loads(EVENT_TYPES[type_].schema_file.read_text(encoding="utf-8"))
    assert schema["$schema"] == DRAFT_2020_12
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_schema_id_is_the_dataschema(type_):
    assert EVENT_TYPES[type_].schema()["$id"] == EVENT_TYPES[type_].dataschema


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_schema_describes_an_open_object(type_):
    schema = EVENT_TYPES[type_].schema()
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is True
    assert schema["title"].strip() and schema["description"].strip()
    assert schema["required"], "no required fields"
    assert set(schema["required"]) <= set(schema["properties"])


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_every_property_is_described(type_):
    schema = EVENT_TYPES[type_].schema()
    defs = schema.get("$defs", {})
    undescribed = []
    for name, prop in schema["properties"].items():
        ref = prop.get("$ref", "")
        if "description" not in prop and "description" not in defs.get(ref.removeprefix("#/$defs/"), {}):
            undescribed.append(name)
    assert undescribed == []


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_refs_stay_inside_the_file_and_resolve(type_):
    schema = EVENT_TYPES[type_].schema()
    for ref in refs(schema):
        assert ref.startswith("#/$defs/"), ref
        assert ref.removeprefix("#/$defs/") in schema.get("$defs", {}), ref


@pytest.mark.parametrize("type_", sorted(CONTRACT_MINIMUM))
def test_contract_minimum_fields_are_required(type_):
    assert CONTRACT_MINIMUM[type_] <= set(EVENT_TYPES[type_].schema()["required"])


@pytest.mark.parametrize("type_", [t for t in ALL_TYPES if EVENT_TYPES[t].aggregate != "forecast"])
def test_aggregate_id_is_required_and_non_empty(type_):
    id_field = f"{EVENT_TYPES[type_].aggregate}_id"
    assert id_field in EVENT_TYPES[type_].schema()["required"]
    assert not is_valid(type_, with_(type_, **{id_field: ""}))
    assert not is_valid(type_, with_(type_, **{id_field: None}))
    assert not is_valid(type_, with_(type_, **{id_field: 42}))


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_example_is_valid(type_):
    errors = [e.message for e in validator(type_).iter_errors(EXAMPLES[type_])]
    assert errors == []


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_unknown_fields_are_accepted(type_):
    assert is_valid(type_, with_(type_, x_added_in_a_later_release={"anything": [1, 2.5, None]}))


@pytest.mark.parametrize(
    ("type_", "field"),
    [(t, f) for t in ALL_TYPES for f in required_fields(t)],
)
def test_missing_required_field_fails(type_, field):
    assert field in EXAMPLES[type_], f"example of {type_} lacks required {field}"
    assert not is_valid(type_, without(type_, field))


@pytest.mark.parametrize(
    ("type_", "field"),
    [(t, f) for t in ALL_TYPES for f in sorted(AMOUNT_FIELDS & set(EXAMPLES[t]))],
)
def test_amounts_are_decimal_strings_never_numbers(type_, field):
    assert not is_valid(type_, with_(type_, **{field: 1234.5}))
    assert not is_valid(type_, with_(type_, **{field: 1234}))
    assert not is_valid(type_, with_(type_, **{field: "1,234.50"}))
    assert not is_valid(type_, with_(type_, **{field: "1234.5 CNY"}))
    assert is_valid(type_, with_(type_, **{field: "1234.50"}))


@pytest.mark.parametrize("type_", [t for t in ALL_TYPES if "currency" in EXAMPLES[t]])
def test_currency_is_an_iso_4217_code(type_):
    assert is_valid(type_, with_(type_, currency="USD"))
    for bad in ("cny", "CN", "RMB1", "¥", None):
        assert not is_valid(type_, with_(type_, currency=bad)), bad


@pytest.mark.parametrize(
    ("type_", "field"),
    [(t, f) for t in ALL_TYPES for f in EXAMPLES[t] if f == "at" or f.endswith("_at")],
)
def test_times_are_rfc3339_utc(type_, field):
    for bad in ("yesterday", "2026-11-03", "2026-13-45T10:00:00Z", "2026-11-03T10:00:00+08:00", 1762135200):
        assert not is_valid(type_, with_(type_, **{field: bad})), bad
    assert is_valid(type_, with_(type_, **{field: "2026-11-03T10:00:00.123456+00:00"}))


def test_format_checking_really_checks_date_time():
    # Without rfc3339-validator installed, jsonschema silently accepts any "date-time" string.
    checker = Draft202012Validator.FORMAT_CHECKER
    assert "date-time" in checker.checkers
    assert not checker.conforms("2026-02-30T25:61:00Z", "date-time")
    assert checker.conforms("2026-11-03T10:00:00Z", "date-time")


# --- key types, in detail --------------------------------------------------------------

CAPTURED = "sales.lead.captured.v1"


@pytest.mark.parametrize("grade", ["H", "A", "B", "C", None])
def test_captured_lead_accepts_every_grade_and_null(grade):
    assert is_valid(CAPTURED, with_(CAPTURED, grade=grade))


@pytest.mark.parametrize("grade", ["D", "h", "", "HOT", 1])
def test_captured_lead_rejects_a_bad_grade(grade):
    assert not is_valid(CAPTURED, with_(CAPTURED, grade=grade))


@pytest.mark.parametrize(
    "source", ["web_form", "phone", "email", "sms", "im", "walk_in", "event", "referral", "campaign", "import", "api"]
)
def test_captured_lead_accepts_every_channel(source):
    assert is_valid(CAPTURED, with_(CAPTURED, source=source))


@pytest.mark.parametrize("source", ["fax", "Web_Form", "", None])
def test_captured_lead_rejects_an_unknown_channel(source):
    assert not is_valid(CAPTURED, with_(CAPTURED, source=source))


def test_captured_lead_contact_needs_a_name_and_a_phone_or_an_email():
    contact = EXAMPLES[CAPTURED]["contact"]
    assert is_valid(CAPTURED, with_(CAPTURED, contact={"name": "李娜", "email": "li.na@example.com"}))
    assert is_valid(CAPTURED, with_(CAPTURED, contact={"name": "李娜", "phone": "13900000000", "company": None}))
    assert not is_valid(CAPTURED, with_(CAPTURED, contact={k: v for k, v in contact.items() if k != "name"}))
    assert not is_valid(CAPTURED, with_(CAPTURED, contact={**contact, "name": ""}))
    assert not is_valid(CAPTURED, with_(CAPTURED, contact={"name": "李娜", "phone": None, "email": None}))
    assert not is_valid(CAPTURED, with_(CAPTURED, contact={"name": "李娜", "company": "某公司"}))
    assert not is_valid(CAPTURED, with_(CAPTURED, contact={"name": "李娜", "email": "not-an-address"}))


def test_captured_lead_attributes_are_a_flat_map_of_strings():
    assert is_valid(CAPTURED, with_(CAPTURED, attributes={}))
    assert not is_valid(CAPTURED, with_(CAPTURED, attributes={"visits": 3}))
    assert not is_valid(CAPTURED, with_(CAPTURED, attributes={"utm": {"source": "baidu"}}))
    assert not is_valid(CAPTURED, with_(CAPTURED, attributes=["utm_source=baidu"]))


STAGE_CHANGED = "sales.opportunity.stage_changed.v1"


# The default pipeline's stages, and a configured pipeline's own keys (slugs).
@pytest.mark.parametrize("stage", ["prospecting", "bidding", "negotiation", "contract", "won", "lost", "site_visit2"])
def test_stage_change_accepts_every_stage(stage):
    assert is_valid(STAGE_CHANGED, with_(STAGE_CHANGED, to_stage=stage))
    assert is_valid(STAGE_CHANGED, with_(STAGE_CHANGED, from_stage=stage))


@pytest.mark.parametrize("stage", ["Bidding", "site visit", "2nd_call", "x" * 41, "", None, 3])
def test_stage_change_rejects_what_is_no_stage_key(stage):
    assert not is_valid(STAGE_CHANGED, with_(STAGE_CHANGED, to_stage=stage))


@pytest.mark.parametrize(("pipeline_id", "ok"), [("project_sales", True), ("channel-sales", True), ("Sales", False),
                                                 ("", False), (None, False)])
def test_stage_change_names_its_pipeline_optionally(pipeline_id, ok):
    assert is_valid(STAGE_CHANGED, with_(STAGE_CHANGED, pipeline_id=pipeline_id)) is ok
    assert "pipeline_id" not in EXAMPLES[STAGE_CHANGED] and is_valid(STAGE_CHANGED, with_(STAGE_CHANGED))


@pytest.mark.parametrize(("probability", "ok"), [(0, True), (55.5, True), (100, True), (-1, False), (101, False),
                                                 ("30", False), (None, False)])
def test_stage_change_probability_is_a_percentage(probability, ok):
    assert is_valid(STAGE_CHANGED, with_(STAGE_CHANGED, probability=probability)) is ok


SIGNED = "sales.contract.signed.v1"


def test_contract_signed_rejects_a_float_amount_and_a_local_time():
    assert not is_valid(SIGNED, with_(SIGNED, amount=365000.0))
    assert not is_valid(SIGNED, with_(SIGNED, signed_at="2027-01-20T11:00:00+08:00"))
    assert not is_valid(SIGNED, with_(SIGNED, signed_at="2027-01-20 03:00:00"))
    assert is_valid(SIGNED, with_(SIGNED, amount="-500.25"))  # credit notes may be negative


SCORED = "sales.lead.scored.v1"


@pytest.mark.parametrize(("score", "ok"), [(0, True), (100, True), (83.4, True), (-0.1, False), (100.5, False),
                                           ("83", False)])
def test_lead_score_is_between_0_and_100(score, ok):
    assert is_valid(SCORED, with_(SCORED, score=score)) is ok


@pytest.mark.parametrize("missing", ["feature", "contribution", "label_en", "label_zh"])
def test_lead_score_factor_needs_all_its_fields(missing):
    factor = {k: v for k, v in FACTORS[0].items() if k != missing}
    assert not is_valid(SCORED, with_(SCORED, factors=[factor]))


def test_lead_score_factors_are_typed():
    assert is_valid(SCORED, with_(SCORED, factors=[]))
    assert not is_valid(SCORED, with_(SCORED, factors={"grade": 22.5}))
    assert not is_valid(SCORED, with_(SCORED, factors=[{**FACTORS[0], "contribution": "22.5"}]))
    assert not is_valid(SCORED, with_(SCORED, factors=[{**FACTORS[0], "feature": ""}]))
    assert not is_valid(SCORED, with_(SCORED, model_version=""))


FORECAST = "sales.forecast.updated.v1"


@pytest.mark.parametrize("period", ["2026-11", "2026-01", "2026-Q4", "2027-Q1", "2026"])
def test_forecast_accepts_months_quarters_and_years(period):
    assert is_valid(FORECAST, with_(FORECAST, period=period))


@pytest.mark.parametrize("period", ["2026-13", "2026-00", "2026-Q5", "2026-q4", "Nov 2026", "26", "2026-11-01",
                                    "2026-"])
def test_forecast_rejects_other_periods(period):
    assert not is_valid(FORECAST, with_(FORECAST, period=period))


@pytest.mark.parametrize(("by", "ok"), [("owner", True), ("team", True), ("region", True), ("product", True),
                                        ("rep", False)])
def test_forecast_rolls_up_by_owner_team_region_or_product(by, ok):
    assert is_valid(FORECAST, with_(FORECAST, by=by)) is ok


@pytest.mark.parametrize("type_", sorted(t for t in ALL_TYPES if t.startswith("sales.opportunity.")
                                         and t != "sales.opportunity.scored.v1"))
def test_opportunity_events_may_name_a_product_or_none(type_):
    assert is_valid(type_, EXAMPLES[type_])  # events of earlier releases carry none
    assert is_valid(type_, with_(type_, product="GTX Pro"))
    assert is_valid(type_, with_(type_, product=None))
    assert not is_valid(type_, with_(type_, product=""))
    assert not is_valid(type_, with_(type_, product=7))


def test_forecast_quota_may_be_null_but_never_a_number():
    assert is_valid(FORECAST, with_(FORECAST, quota=None))
    assert not is_valid(FORECAST, with_(FORECAST, quota=1500000))
    assert not is_valid(FORECAST, with_(FORECAST, weighted_pipeline=114000.0))


@pytest.mark.parametrize(("role", "ok"), [("decision_maker", True), ("evaluator", True), (None, True),
                                          ("boss", False), ("Decision maker", False)])
def test_a_contacts_buying_role_is_one_of_the_roles_or_null(role, ok):
    assert is_valid("sales.contact.created.v1", {**EXAMPLES["sales.contact.created.v1"], "role": role}) is ok


MERGED = "sales.lead.merged.v1"
MERGED_SURVIVOR = {
    "owner_id": "rep-1", "merged_lead_owner_id": "rep-2",
    "filled": ["contact.email", "grade", "campaign_id", "attributes.utm_term"],
    "touches_moved": 2, "notes_moved": 1, "engagements_moved": 0, "status": "contacted", "grade": "H",
    "campaign_id": "cmp-2026-autumn", "region": "华东",
    "contact": {"name": "王伟", "company": "星河科技", "phone": "+8613800138000", "email": "wang@xh.cn"},
    "attributes": {"utm_source": "baidu", "utm_term": "crm"}, "touch_count": 3,
    "first_response_at": "2026-11-03T03:00:00Z", "last_contacted_at": "2026-11-04T09:00:00Z",
    "follow_up_due_at": "2026-11-08T02:15:00Z",
}


def test_a_merge_may_carry_the_survivor_as_it_left_it_and_older_merges_without_it_still_pass():
    assert is_valid(MERGED, EXAMPLES[MERGED])  # published before the survivor's fields existed
    assert is_valid(MERGED, with_(MERGED, **MERGED_SURVIVOR))
    assert is_valid(MERGED, with_(MERGED, **{**MERGED_SURVIVOR, "first_response_at": None, "grade": None}))


@pytest.mark.parametrize(("change", "ok"), [
    ({"filled": ["contact.name"]}, False), ({"filled": ["owner_id"]}, False), ({"filled": ["attributes."]}, False),
    ({"status": "merged"}, False), ({"touches_moved": -1}, False),
    ({"first_response_at": "2026-11-03T11:00:00+08:00"}, False),
    ({"filled": []}, True),
])
def test_a_merges_survivor_fields_are_typed(change, ok):
    assert is_valid(MERGED, with_(MERGED, **{**MERGED_SURVIVOR, **change})) is ok
