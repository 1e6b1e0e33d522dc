"""The lead and campaign side of the funnel: lead-to-opportunity conversion by source and grade,
cost per lead, customer acquisition cost and ROI per campaign. No I/O.

Leads count in the period they were captured; a lead converted at any time since counts as
converted. A campaign's figures are over all its leads and all the deals attributed to it: cost per
lead = actual cost / leads; acquisition cost = actual cost / deals won; ROI = (won amount - cost) /
cost.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class LeadFact:
    source: str | None
    grade: str | None
    converted: bool


@dataclass(frozen=True)
class Conversion:
    source: str
    grade: str
    leads: int
    converted: int

    @property
    def rate(self) -> float | None:
        return self.converted / self.leads if self.leads else None


def conversion_by_source_and_grade(leads: Sequence[LeadFact]) -> list[Conversion]:
    counts: dict[tuple[str, str], list[int]] = {}
    for lead in leads:
        key = (lead.source or "unknown", lead.grade or "none")
        entry = counts.setdefault(key, [0, 0])
        entry[0] += 1
        entry[1] += lead.converted
    return [Conversion(source, grade, n, won) for (source, grade), (n, won) in sorted(counts.items())]


@dataclass(frozen=True)
class CampaignFigures:
    campaign_id: str
    name: str
    cost: Decimal | None  # None: the campaign's cost is in another currency without a rate
    leads: int
    deals_won: int
    won_amount: Decimal

    @property
    def cost_per_lead(self) -> Decimal | None:
        return None if self.cost is None or not self.leads else self.cost / self.leads

    @property
    def acquisition_cost(self) -> Decimal | None:
        return None if self.cost is None or not self.deals_won else self.cost / self.deals_won

    @property
    def roi(self) -> Decimal | None:
        return None if not self.cost else (self.won_amount - self.cost) / self.cost
