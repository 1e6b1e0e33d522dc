"""The lead and campaign side of the funnel: lead-to-opportunity conversion by source and grade,
cost per lead, customer acquisition cost and ROI per campaign. No I/O.

Leads count in the period they were captured; a lead converted at any time since counts as
converted. Cost per lead = cost / leads; acquisition cost = cost / deals won; ROI = (won amount -
cost) / cost. A campaign's figures are over its whole life (all its leads, all the deals attributed
to it that were won), or over a window (a period): its leads captured and its deals won in the
window, and the share of its cost that falls in it (`cost_in_window`).

Split by owner (and so by team or region), a campaign's cost follows its leads: an owner is charged
the share of the campaign's leads (in the window) that they hold; its won deals count under the
deal's primary owner.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal


@dataclass(frozen=True)
class LeadFact:
    source: str | None
    grade: str | None
    converted: bool
    owner_id: str | None = None


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


Window = tuple[date, date]  # first and last day, inclusive


@dataclass(frozen=True)
class Campaign:
    campaign_id: str
    name: str
    cost: Decimal | None  # in the reporting currency; None: its currency has no rate
    starts_on: date | None
    ends_on: date | None
    leads_lifetime: int  # all its leads, whenever captured


@dataclass(frozen=True)
class CampaignActivity:
    """One owner's part of a campaign (in the window): its leads they hold, its deals they won."""

    campaign_id: str
    owner_id: str | None
    leads: int
    deals_won: int
    won_amount: Decimal


def cost_in_window(campaign: Campaign, window: Window | None, leads_in_window: int) -> Decimal | None:
    """The part of the campaign's cost that falls in the window (None: its whole life, all of it): by the
    days of its run inside the window when the run is known, else by the share of all its leads that
    were captured in the window; None when neither is known (no run, no lead)."""
    if campaign.cost is None or window is None:
        return campaign.cost
    first, last = window
    if campaign.starts_on and campaign.ends_on and campaign.ends_on >= campaign.starts_on:
        run_days = (campaign.ends_on - campaign.starts_on).days + 1
        days_inside = (min(last, campaign.ends_on) - max(first, campaign.starts_on)).days + 1
        return campaign.cost * max(days_inside, 0) / run_days
    if campaign.leads_lifetime:
        return campaign.cost * leads_in_window / campaign.leads_lifetime
    return None


def _grouped(activity: Sequence[CampaignActivity]) -> dict[str, list[CampaignActivity]]:
    grouped: dict[str, list[CampaignActivity]] = {}
    for part in activity:
        grouped.setdefault(part.campaign_id, []).append(part)
    return grouped


def company_economics(
    campaigns: Sequence[Campaign], activity: Sequence[CampaignActivity], window: Window | None
) -> list[CampaignFigures]:
    """Every campaign over everyone's leads and deals, with its whole cost (in the window)."""
    grouped = _grouped(activity)
    figures = []
    for campaign in campaigns:
        parts = grouped.get(campaign.campaign_id, [])
        leads = sum(p.leads for p in parts)
        figures.append(CampaignFigures(
            campaign.campaign_id, campaign.name, cost_in_window(campaign, window, leads), leads,
            sum(p.deals_won for p in parts), sum((p.won_amount for p in parts), Decimal(0))))
    return figures


def economics_by(
    campaigns: Sequence[Campaign], activity: Sequence[CampaignActivity], window: Window | None,
    key_of: Callable[[str | None], str | None],
) -> dict[str, list[CampaignFigures]]:
    """Each key's campaigns (those with leads or won deals under it): the owners `key_of` places under a
    key (None: left out) are charged the share of the campaign's cost that their leads are of all its
    leads in the window; with no lead in the window, nobody is charged."""
    grouped = _grouped(activity)
    by_key: dict[str, list[CampaignFigures]] = {}
    for campaign in campaigns:
        parts = grouped.get(campaign.campaign_id, [])
        all_leads = sum(p.leads for p in parts)
        cost = cost_in_window(campaign, window, all_leads)
        sums: dict[str, tuple[Decimal | None, int, int, Decimal]] = {}
        for part in parts:
            key = key_of(part.owner_id)
            if key is None:
                continue
            charged = None if cost is None else (cost * part.leads / all_leads if all_leads else Decimal(0))
            before = sums.get(key, (Decimal(0), 0, 0, Decimal(0)))
            sums[key] = (None if charged is None or before[0] is None else before[0] + charged,
                         before[1] + part.leads, before[2] + part.deals_won, before[3] + part.won_amount)
        for key, (charged, leads, won, amount) in sums.items():
            by_key.setdefault(key, []).append(
                CampaignFigures(campaign.campaign_id, campaign.name, charged, leads, won, amount))
    return by_key
