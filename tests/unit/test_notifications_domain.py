"""The notifications service's pure rules: rule validation and matching, recipients, templates,
quiet hours, the webhook retry schedule, signatures and the address policy."""

import base64
import hashlib
import hmac
import random
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from services.notifications.defaults import DEFAULT_RULES, SYSTEM_TEMPLATES
from services.notifications.domain import (
    Digest,
    InvalidRule,
    NetworkPolicy,
    Preferences,
    RetrySchedule,
    TokenBucket,
    classify_address,
    next_digest_at,
    parse_preferences,
    parse_rule,
    render,
    resolve_recipients,
    secret_key,
    sign,
    template_context,
    template_fault,
)
from shared.events.catalog import EVENT_TYPES
from shared.org import load_organisation

ORG = load_organisation()
TYPES = list(EVENT_TYPES)


def rule(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": "stage-to-manager",
        "event_type": "sales.opportunity.stage_changed.v1",
        "conditions": [{"field": "to_stage", "op": "in", "value": ["negotiation", "contract"]}],
        "recipients": [{"kind": "owner_manager"}],
        "channels": ["inbox", "push"],
        "templates": {"zh-CN": {"title": "阶段：{to_stage}", "body": "{owner_name}的商机{opportunity_id}"},
                      "en": {"title": "Stage: {to_stage}", "body": "{owner_name}'s opportunity {opportunity_id}"}},
    }
    raw.update(overrides)
    return raw


def test_every_default_rule_is_valid_and_names_a_catalogued_event() -> None:
    parsed = [parse_rule(raw, TYPES) for raw in DEFAULT_RULES]
    assert {r.id for r in parsed} >= {"h-lead-assigned", "lead-assigned", "opportunity-stage-changed",
                                      "opportunity-won", "opportunity-lost", "contract-signed",
                                      "quote-needs-approval"}
    for r in parsed:
        assert set(r.templates) == {"zh-CN", "en"}


def test_an_h_grade_assignment_matches_the_h_rule_only_and_reaches_the_owner() -> None:
    h_rule, any_rule = (parse_rule(r, TYPES) for r in DEFAULT_RULES[:2])
    data = {"lead_id": "l1", "owner_id": "rep-1", "grade": "H", "follow_up_due_at": "2026-11-24T08:00:00Z"}
    assert h_rule.applies_to("sales.lead.assigned.v1", data)
    assert not any_rule.applies_to("sales.lead.assigned.v1", data)
    assert any_rule.applies_to("sales.lead.assigned.v1", {**data, "grade": "B"})
    assert any_rule.applies_to("sales.lead.assigned.v1", {**data, "grade": None})
    assert not h_rule.applies_to("sales.lead.captured.v1", data)
    assert resolve_recipients(h_rule, data, ORG) == ["rep-1"]


def test_a_quote_needing_approval_reaches_the_approver_named_in_the_event() -> None:
    [quote_rule] = [parse_rule(r, TYPES) for r in DEFAULT_RULES if r["id"] == "quote-needs-approval"]
    data = {"quote_id": "q1", "owner_id": "rep-1", "approval_required": True, "approver_id": "mgr-1"}
    assert quote_rule.applies_to("sales.quote.submitted.v1", data)
    assert resolve_recipients(quote_rule, data, ORG) == ["mgr-1"]
    assert not quote_rule.applies_to("sales.quote.submitted.v1", {**data, "approval_required": False})
    assert resolve_recipients(quote_rule, {**data, "approver_id": None}, ORG) == []
    with pytest.raises(InvalidRule, match="recipients"):
        parse_rule(rule(recipients=[{"kind": "field", "value": "a b"}]), TYPES)


def test_a_disabled_rule_matches_nothing() -> None:
    disabled = parse_rule(rule(enabled=False), TYPES)
    assert not disabled.applies_to("sales.opportunity.stage_changed.v1", {"to_stage": "contract"})


def test_conditions_on_missing_and_nested_fields() -> None:
    r = parse_rule(rule(conditions=[{"field": "contact.city", "op": "eq", "value": "上海"},
                                    {"field": "campaign_id", "op": "absent"}]), TYPES)
    assert r.applies_to(r.event_type, {"contact": {"city": "上海"}, "campaign_id": None})
    assert not r.applies_to(r.event_type, {"contact": {"city": "北京"}})
    assert not r.applies_to(r.event_type, {"contact": {"city": "上海"}, "campaign_id": "c1"})


def test_recipient_kinds_resolve_through_the_organisation() -> None:
    def reach(*recipients: dict[str, Any], owner: str = "rep-1") -> list[str]:
        parsed = parse_rule(rule(recipients=list(recipients)), TYPES, ORG.users)
        return resolve_recipients(parsed, {"owner_id": owner}, ORG)

    assert reach({"kind": "owner"}) == ["rep-1"]
    assert reach({"kind": "owner_manager"}) == ["mgr-1"]
    assert reach({"kind": "managers"}) == ["mgr-1", "dir-1"]
    assert reach({"kind": "team"}) == ["rep-1", "rep-2", "mgr-1"]
    assert reach({"kind": "team"}, owner="rep-3") == ["rep-3", "mgr-2"]
    assert reach({"kind": "role", "value": "director"}) == ["dir-1"]
    assert reach({"kind": "user", "value": "admin-1"}, {"kind": "owner"}, {"kind": "team"}) == [
        "admin-1", "rep-1", "rep-2", "mgr-1"]  # each once, in the rule's order
    parsed = parse_rule(rule(recipients=[{"kind": "owner"}]), TYPES)
    assert resolve_recipients(parsed, {"owner_id": None}, ORG) == []
    assert resolve_recipients(parsed, {"owner_id": "someone-who-left"}, ORG) == []


def test_an_invalid_rule_names_every_problem() -> None:
    with pytest.raises(InvalidRule) as caught:
        parse_rule({
            "id": "Bad Id!", "event_type": "sales.nothing.v1",
            "conditions": [{"field": "grade", "op": "like", "value": "H"}, {"field": "a", "op": "in", "value": "H"}],
            "recipients": [{"kind": "boss"}, {"kind": "user", "value": "nobody"}, {"kind": "role", "value": "king"}],
            "channels": ["sms"],
            "templates": {"en": {"title": "x", "body": "y"}},
            "priority": "urgent",
        }, TYPES, ORG.users)
    text = " | ".join(caught.value.problems)
    for fragment in ("id:", "event_type:", "conditions[0].op", "conditions[1].value", "recipients[0].kind",
                     "recipients[1].value", "recipients[2].value", "channels:", "templates:", "priority:"):
        assert fragment in text, fragment


def test_templates_allow_plain_names_only() -> None:
    assert template_fault("线索{lead_id}已分配") is None
    assert template_fault("{lead_id.__class__}") is not None
    assert template_fault("{amount:>10}") is not None
    assert template_fault("{0}") is not None
    assert template_fault("unbalanced {") is not None
    with pytest.raises(InvalidRule, match="templates.en.title"):
        parse_rule(rule(templates={"zh-CN": {"title": "a", "body": "b"},
                                   "en": {"title": "{x.y}", "body": "b"}}), TYPES)


def test_rendering_flattens_data_names_users_and_blanks_what_is_missing() -> None:
    r = parse_rule(rule(), TYPES)
    data = {"opportunity_id": "opp-9", "to_stage": "contract", "owner_id": "rep-1", "contact": {"name": "王先生"}}
    context = template_context("sales.opportunity.stage_changed.v1", "opp-9", data, ORG)
    assert context["contact_name"] == "王先生" and context["owner_name"] == "王芳" and context["subject"] == "opp-9"
    assert render(r.template("zh-CN"), context) == ("阶段：contract", "王芳的商机opp-9")
    assert render(r.template("en"), context) == ("Stage: contract", "王芳's opportunity opp-9")
    assert render(r.template("fr"), context)[0] == "阶段：contract"  # unknown language: zh-CN
    title, _ = render(SYSTEM_TEMPLATES["follow-up-reminder"]["en"], {"lead_id": "l1"})
    assert title == "Follow-up due: lead l1"
    _, body = render(SYSTEM_TEMPLATES["follow-up-reminder"]["en"], {"lead_id": "l1"})
    assert "grade —" in body


def test_quiet_hours_across_midnight_in_the_users_time_zone() -> None:
    prefs = Preferences(quiet_start=time(22, 0), quiet_end=time(8, 0), timezone="Asia/Shanghai")
    # 23:30 in Shanghai is 15:30 UTC: quiet until 08:00 Shanghai = 00:00 UTC the next day
    assert prefs.quiet_until(datetime(2026, 11, 23, 15, 30, tzinfo=UTC)) == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
    # 07:00 Shanghai (23:00 UTC the day before): quiet for one more hour
    assert prefs.quiet_until(datetime(2026, 11, 22, 23, 0, tzinfo=UTC)) == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    assert prefs.quiet_until(datetime(2026, 11, 23, 4, 0, tzinfo=UTC)) is None  # 12:00 Shanghai
    lunch = Preferences(quiet_start=time(12, 0), quiet_end=time(13, 30), timezone="UTC")
    assert lunch.quiet_until(datetime(2026, 11, 23, 12, 15, tzinfo=UTC)) == datetime(2026, 11, 23, 13, 30, tzinfo=UTC)
    assert lunch.quiet_until(datetime(2026, 11, 23, 13, 30, tzinfo=UTC)) is None
    assert Preferences().quiet_until(datetime(2026, 11, 23, 15, 30, tzinfo=UTC)) is None


def test_opting_out_keeps_the_inbox() -> None:
    prefs = parse_preferences({"opted_out": ["email", "push"], "quiet_hours": {"start": "22:00", "end": "07:00"}})
    assert prefs.channels(["inbox", "push", "email"]) == ["inbox"]
    with pytest.raises(InvalidRule):
        parse_preferences({"opted_out": ["inbox"]})
    with pytest.raises(InvalidRule):
        parse_preferences({"timezone": "Mars/Olympus"})


def test_the_retry_schedule_backs_off_exponentially_with_jitter_and_ends() -> None:
    schedule = RetrySchedule(base_s=5, cap_s=60, max_attempts=6)
    rng = random.Random(7)  # noqa: S311 - jitter, not cryptography
    delays = [schedule.delay_after(n, rng) for n in range(1, 7)]
    assert delays[-1] is None  # the sixth try was the last: dead-letter
    bounds = [5, 10, 20, 40, 60]
    for delay, full in zip(delays[:-1], bounds, strict=True):
        assert delay is not None and timedelta(seconds=full / 2) <= delay <= timedelta(seconds=full)
    draws = {schedule.delay_after(3, rng) for _ in range(20)}
    assert len(draws) > 15  # jittered: failing endpoints are not retried in step


def test_signatures_follow_standard_webhooks() -> None:
    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode()
    body = b'{"specversion":"1.0"}'
    expected = base64.b64encode(hmac.new(key, b"msg_1.1700000000." + body, hashlib.sha256).digest()).decode()
    assert sign(secret, "msg_1", 1700000000, body) == f"v1,{expected}"
    # the specification's published example
    example = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                   b'{"test": 2432232314}')
    assert example == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    short = "whsec_" + base64.b64encode(b"short").decode()
    for bad in ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", short):
        with pytest.raises(ValueError):
            secret_key(bad)


def test_webhook_targets_must_be_public_unless_allowed() -> None:
    strict = NetworkPolicy.parse("")
    for private in ("127.0.0.1", "10.1.2.3", "192.168.1.1", "169.254.169.254", "::1", "fc00::1", "0.0.0.0"):
        assert not strict.permits(private), private
    assert strict.permits("8.8.8.8") and strict.permits("2001:4860:4860::8888")
    loopback = NetworkPolicy.parse("127.0.0.0/8, 10.0.0.0/8")
    assert loopback.permits("127.0.0.1") and loopback.permits("10.9.9.9") and not loopback.permits("192.168.0.1")


@pytest.mark.parametrize(("address", "kind"), [
    ("8.8.8.8", "public"), ("2001:4860:4860::8888", "public"), ("223.5.5.5", "public"),
    ("127.0.0.1", "loopback"), ("127.0.0.2", "loopback"), ("::1", "loopback"),
    ("10.0.0.5", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fc00::1", "private"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local"),
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("100.100.100.200", "metadata"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("100.64.0.1", "reserved"),  # carrier-grade NAT: not private, not global either
    # IPv6 forms that reach an IPv4 address are judged as that address
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:8.8.8.8", "public"), ("2002:7f00:1::1", "loopback"),
    ("64:ff9b::a9fe:a9fe", "metadata"), ("64:ff9b::808:808", "public"),
])
def test_addresses_are_classified(address: str, kind: str) -> None:
    assert classify_address(address) == kind
    assert NetworkPolicy.parse("").refusal(address) == (None if kind == "public" else kind)


def test_allowed_networks_are_exact_and_keep_the_metadata_address_out() -> None:
    policy = NetworkPolicy.parse("127.0.0.1/32, 169.254.0.0/16")
    assert policy.refusal("127.0.0.1") is None and policy.refusal("::ffff:127.0.0.1") is None
    assert policy.refusal("127.0.0.2") == "loopback" and policy.refusal("::1") == "loopback"
    assert policy.refusal("169.254.7.7") is None
    assert policy.refusal("169.254.169.254") == "metadata"  # inside an allowed network, but not allowed by name
    assert NetworkPolicy.parse("169.254.169.254/32").refusal("169.254.169.254") is None


def test_a_token_bucket_allows_a_burst_then_its_rate() -> None:
    bucket = TokenBucket.full(rate=10, now=100.0)
    assert bucket.available(100.0) == 10
    bucket.take(10, 100.0)
    assert bucket.available(100.0) == 0
    with pytest.raises(ValueError):
        bucket.take(1, 100.0)
    assert bucket.available(100.25) == 2  # 2.5 tokens back: whole ones count
    bucket.take(2, 100.25)
    assert bucket.available(150.0) == 10  # never more than the burst
    slow = TokenBucket.full(rate=0.5, now=0.0)
    assert slow.available(0.0) == 1  # a rate below 1/s still lets one through
    slow.take(1, 0.0)
    assert slow.available(1.0) == 0 and slow.available(2.0) == 1


def test_the_digest_is_due_at_eight_in_the_morning_local_time() -> None:
    # 2026-11-23 23:30 UTC is 07:30 on the 24th in Shanghai: 08:00 Shanghai = 00:00 UTC the 24th
    assert next_digest_at(datetime(2026, 11, 23, 23, 30, tzinfo=UTC), 8, "Asia/Shanghai") == datetime(
        2026, 11, 24, 0, 0, tzinfo=UTC)
    # exactly at 08:00 Shanghai: the next is tomorrow's
    assert next_digest_at(datetime(2026, 11, 24, 0, 0, tzinfo=UTC), 8, "Asia/Shanghai") == datetime(
        2026, 11, 25, 0, 0, tzinfo=UTC)


def test_a_digest_says_what_it_holds_and_is_empty_when_there_is_nothing() -> None:
    assert not Digest()
    digest = Digest(overdue=tuple(f"l{i}" for i in range(12)), closing=("o1",))
    context = digest.context()
    assert context["overdue_count"] == "12" and context["overdue"].endswith("l9 (+2)") and context["hot"] == "—"
    title, _ = render(SYSTEM_TEMPLATES["daily-digest"]["zh-CN"], context)
    assert title == "每日摘要：12条逾期跟进，1个商机本周预计成交，0条高分线索"
