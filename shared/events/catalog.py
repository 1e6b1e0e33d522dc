"""The one registry of event types: each type's topic, schema and meaning.

Producers, consumers, schema validation, the AsyncAPI document and the README's
event catalogue all read this list; add an event here and its schema beside it, then run
`funnelcast asyncapi` to regenerate docs/asyncapi.yaml and docs/events.md (a test checks).
"""

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).parent / "schemas"


@dataclass(frozen=True)
class EventType:
    type: str
    topic: str
    summary: str

    @property
    def aggregate(self) -> str:
        return self.type.split(".")[1]

    @property
    def version(self) -> int:
        return int(self.type.rsplit(".v", 1)[1])

    @property
    def schema_file(self) -> Path:
        return SCHEMA_DIR / f"{self.type}.json"

    @property
    def dataschema(self) -> str:
        return f"urn:funnelcast:schema:{self.type}"

    def schema(self) -> dict[str, Any]:
        return _load_schema(self.schema_file)


@cache
def _load_schema(path: Path) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


_EVENTS = (
    # leads service
    EventType("sales.lead.captured.v1", "sales.leads", "A lead was captured from a channel."),
    EventType("sales.lead.engaged.v1", "sales.leads", "Web tracking or marketing automation reported engagement."),
    EventType("sales.lead.assigned.v1", "sales.leads", "A lead was assigned or reassigned to a rep."),
    EventType("sales.lead.contacted.v1", "sales.leads", "A touch (contact) was logged on a lead."),
    EventType("sales.lead.grade_changed.v1", "sales.leads", "A lead's intent grade (H/A/B/C) changed."),
    EventType("sales.lead.qualified.v1", "sales.leads", "A lead was qualified."),
    EventType("sales.lead.disqualified.v1", "sales.leads", "A lead was disqualified, with a reason."),
    EventType(
        "sales.lead.converted.v1", "sales.leads", "A qualified lead converted into account, contact and opportunity."
    ),
    EventType("sales.lead.merged.v1", "sales.leads", "A duplicate lead was merged into another."),
    EventType("sales.campaign.created.v1", "sales.campaigns", "A campaign was planned."),
    EventType("sales.campaign.updated.v1", "sales.campaigns", "A campaign's budget, cost, period or status changed."),
    # opportunities service
    EventType("sales.account.created.v1", "sales.accounts", "An account was created."),
    EventType("sales.account.updated.v1", "sales.accounts", "An account's details changed."),
    EventType("sales.contact.created.v1", "sales.accounts", "A contact was added to an account."),
    EventType("sales.contact.updated.v1", "sales.accounts", "A contact's details changed."),
    EventType("sales.contact.archived.v1", "sales.accounts", "A contact was archived (deleted from its account)."),
    EventType("sales.opportunity.created.v1", "sales.opportunities", "An opportunity was opened."),
    EventType("sales.opportunity.stage_changed.v1", "sales.opportunities", "An opportunity moved to another stage."),
    EventType("sales.opportunity.won.v1", "sales.opportunities", "An opportunity was closed won."),
    EventType("sales.opportunity.lost.v1", "sales.opportunities", "An opportunity was closed lost."),
    EventType("sales.opportunity.suspended.v1", "sales.opportunities", "An opportunity was suspended (中止)."),
    EventType("sales.opportunity.reactivated.v1", "sales.opportunities", "A suspended opportunity was reactivated."),
    EventType(
        "sales.opportunity.terminated.v1", "sales.opportunities", "An opportunity was terminated (终止) for good."
    ),
    EventType(
        "sales.opportunity.assessed.v1",
        "sales.opportunities",
        "An opportunity's maturity assessment (成熟度评估) changed.",
    ),
    EventType(
        "sales.opportunity.owners_changed.v1",
        "sales.opportunities",
        "An opportunity's owners or their splits changed, or it was transferred.",
    ),
    EventType(
        "sales.opportunity.updated.v1",
        "sales.opportunities",
        "An open opportunity's name, amount, currency, expected close date or product was edited.",
    ),
    EventType(
        "sales.opportunity.repriced.v1",
        "sales.opportunities",
        "An open opportunity took its stage's new default win probability, changed by an admin.",
    ),
    EventType("sales.opportunity.archived.v1", "sales.opportunities", "A closed opportunity was archived."),
    EventType("sales.quote.created.v1", "sales.opportunities", "A draft quote was drawn up for an opportunity."),
    EventType("sales.quote.revised.v1", "sales.opportunities", "A draft or rejected quote was revised."),
    EventType(
        "sales.quote.submitted.v1",
        "sales.opportunities",
        "A quote was submitted; approval_required and approver_id say whether a manager must decide.",
    ),
    EventType(
        "sales.quote.approved.v1", "sales.opportunities", "A quote was approved (by a manager or automatically)."
    ),
    EventType("sales.quote.rejected.v1", "sales.opportunities", "A quote pending approval was rejected."),
    EventType("sales.contract.created.v1", "sales.contracts", "A draft contract was drawn up for an opportunity."),
    EventType("sales.contract.signed.v1", "sales.contracts", "A contract was signed."),
    EventType("sales.contract.executed.v1", "sales.contracts", "A signed contract was executed (fulfilled)."),
    EventType("sales.contract.terminated.v1", "sales.contracts", "A contract was terminated before execution."),
    # scoring service
    EventType("sales.lead.scored.v1", "sales.scores", "A lead's score was (re)computed."),
    EventType("sales.opportunity.scored.v1", "sales.scores", "An opportunity's win probability was (re)computed."),
    EventType("sales.account.tiered.v1", "sales.scores", "An account's value tier and buyer type were (re)computed."),
    # forecasting service
    EventType("sales.forecast.updated.v1", "sales.forecasts", "A forecast figure moved."),
)

EVENT_TYPES: dict[str, EventType] = {e.type: e for e in _EVENTS}


class UnknownEventType(LookupError):
    pass


def event_type(type_: str) -> EventType:
    try:
        return EVENT_TYPES[type_]
    except KeyError:
        raise UnknownEventType(f"no event type {type_!r} in the catalogue") from None
