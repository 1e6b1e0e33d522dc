"""The rules that ship (seeded once: an admin may change or delete them) and the templates of the
notifications this service raises itself (reminders, escalations, a disabled webhook).

The leads service publishes `sales.lead.assigned.v1` right after `sales.lead.captured.v1` whenever a
captured lead gets an owner, so "an H-grade lead captured with an owner or assigned" is one rule on
the assignment (grade H), and "any lead assigned" covers the other grades: one notification per
assignment, never two for one capture.
"""

from typing import Any

from services.notifications.domain import Template

_OWNER = [{"kind": "owner"}]

DEFAULT_RULES: list[dict[str, Any]] = [
    {
        "id": "h-lead-assigned",
        "description": "An H-grade lead (buy within 5 days) got an owner: push to that rep now.",
        "event_type": "sales.lead.assigned.v1",
        "conditions": [{"field": "grade", "op": "eq", "value": "H"}],
        "recipients": _OWNER,
        "channels": ["inbox", "push", "email"],
        "priority": "high",
        "templates": {
            "zh-CN": {"title": "新的H级线索：{lead_id}",
                      "body": "H级线索（5天内购买）已分配给您，请在{follow_up_due_at}前跟进。"},
            "en": {"title": "New H-grade lead: {lead_id}",
                   "body": "An H-grade lead (buying within 5 days) is yours; follow up before {follow_up_due_at}."},
        },
    },
    {
        "id": "lead-assigned",
        "description": "Any other lead assigned or reassigned: tell its rep.",
        "event_type": "sales.lead.assigned.v1",
        "conditions": [{"field": "grade", "op": "ne", "value": "H"}],
        "recipients": _OWNER,
        "channels": ["inbox", "push"],
        "templates": {
            "zh-CN": {"title": "线索已分配给您：{lead_id}", "body": "意向等级{grade}，请在{follow_up_due_at}前跟进。"},
            "en": {"title": "Lead assigned to you: {lead_id}",
                   "body": "Intent grade {grade}; follow up before {follow_up_due_at}."},
        },
    },
    {
        "id": "opportunity-stage-changed",
        "description": "An opportunity moved stage: its owner and the owner's manager.",
        "event_type": "sales.opportunity.stage_changed.v1",
        "recipients": [{"kind": "owner"}, {"kind": "owner_manager"}],
        "channels": ["inbox", "push"],
        "templates": {
            "zh-CN": {"title": "商机阶段变更：{from_stage} → {to_stage}",
                      "body": "商机{opportunity_id}（{amount} {currency}）进入{to_stage}，赢单概率{probability}%。"},
            "en": {"title": "Opportunity stage: {from_stage} → {to_stage}",
                   "body": "Opportunity {opportunity_id} ({amount} {currency}) is now in {to_stage}, "
                           "win probability {probability}%."},
        },
    },
    {
        "id": "opportunity-won",
        "description": "An opportunity was won: the owner's team.",
        "event_type": "sales.opportunity.won.v1",
        "recipients": [{"kind": "team"}],
        "channels": ["inbox", "push"],
        "templates": {
            "zh-CN": {"title": "赢单：{opportunity_id}", "body": "{owner_name}赢得商机，金额{amount} {currency}。"},
            "en": {"title": "Won: {opportunity_id}", "body": "{owner_name} won the deal: {amount} {currency}."},
        },
    },
    {
        "id": "opportunity-lost",
        "description": "An opportunity was lost: the owner's team.",
        "event_type": "sales.opportunity.lost.v1",
        "recipients": [{"kind": "team"}],
        "channels": ["inbox", "push"],
        "templates": {
            "zh-CN": {"title": "丢单：{opportunity_id}", "body": "原因：{reason}；竞争对手：{competitor}。"},
            "en": {"title": "Lost: {opportunity_id}", "body": "Reason: {reason}; competitor: {competitor}."},
        },
    },
    {
        "id": "contract-signed",
        "description": "A contract was signed: the owner's team and the managers above the owner.",
        "event_type": "sales.contract.signed.v1",
        "recipients": [{"kind": "team"}, {"kind": "managers"}],
        "channels": ["inbox", "push", "email"],
        "templates": {
            "zh-CN": {"title": "合同已签订：{contract_id}", "body": "{owner_name}签订合同，金额{amount} {currency}。"},
            "en": {"title": "Contract signed: {contract_id}",
                   "body": "{owner_name} signed a contract for {amount} {currency}."},
        },
    },
    {
        "id": "quote-needs-approval",
        "description": "A quote past the discount limit waits for a manager: its approver.",
        "event_type": "sales.quote.submitted.v1",
        "conditions": [{"field": "approval_required", "op": "eq", "value": True}],
        "recipients": [{"kind": "field", "value": "approver_id"}],
        "channels": ["inbox", "push", "email"],
        "priority": "high",
        "templates": {
            "zh-CN": {"title": "报价待审批：{quote_id}",
                      "body": "{owner_name}提交的报价（{total} {currency}，折扣{effective_discount}%）需要您审批。"},
            "en": {"title": "Quote awaiting approval: {quote_id}",
                   "body": "{owner_name}'s quote ({total} {currency}, {effective_discount}% off) needs your approval."},
        },
    },
    {
        "id": "quote-rejected",
        "description": "A manager rejected a quote: its rep.",
        "event_type": "sales.quote.rejected.v1",
        "recipients": [{"kind": "owner"}],
        "channels": ["inbox", "push"],
        "templates": {
            "zh-CN": {"title": "报价被驳回：{quote_id}", "body": "原因：{reason}"},
            "en": {"title": "Quote rejected: {quote_id}", "body": "Reason: {reason}"},
        },
    },
]

SYSTEM_TEMPLATES: dict[str, dict[str, Template]] = {
    "follow-up-reminder": {
        "zh-CN": Template("跟进提醒：线索{lead_id}", "线索{lead_id}（{grade}级）已到跟进时限{due_at}，尚未联系。"),
        "en": Template("Follow-up due: lead {lead_id}",
                       "Lead {lead_id} (grade {grade}) was due for contact at {due_at} and has not been contacted."),
    },
    "follow-up-escalation": {
        "zh-CN": Template("升级提醒：{owner_name}的线索{lead_id}未跟进",
                          "线索{lead_id}（{grade}级）跟进时限{due_at}已过，{owner_name}仍未联系。"),
        "en": Template("Escalation: {owner_name} has not contacted lead {lead_id}",
                       "Lead {lead_id} (grade {grade}) was due at {due_at}; {owner_name} has not contacted it."),
    },
    "opportunity-idle": {
        "zh-CN": Template("商机{opportunity_id}已{idle_days}天无进展", "请更新商机{opportunity_id}的跟进情况。"),
        "en": Template("Opportunity {opportunity_id}: no activity for {idle_days} days",
                       "Please update opportunity {opportunity_id}."),
    },
    "daily-digest": {
        "zh-CN": Template("每日摘要：{overdue_count}条逾期跟进，{closing_count}个商机本周预计成交，"
                          "{hot_count}条高分线索",
                          "逾期未跟进的线索：{overdue}\n本周预计成交的商机：{closing}\n新的高分线索：{hot}"),
        "en": Template("Daily digest: {overdue_count} overdue follow-ups, {closing_count} deals closing this week, "
                       "{hot_count} high-score leads",
                       "Leads overdue for follow-up: {overdue}\nDeals closing this week: {closing}\n"
                       "New high-score leads: {hot}"),
    },
    "webhook-disabled": {
        "zh-CN": Template("Webhook已停用：{url}", "连续{failures}次投递失败，订阅{subscription_id}已自动停用。"),
        "en": Template("Webhook disabled: {url}",
                       "Subscription {subscription_id} was disabled after {failures} failed deliveries in a row."),
    },
}
