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

from services.forecasting.domain import OwnerSplit, percent_per_key


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
class CampaignLeads:
    """A campaign's leads (captured in the window) that one owner holds (None: nobody)."""

    campaign_id: str
    owner_id: str | None
    leads: int


@dataclass(frozen=True)
class WonDeal:
    """A deal attributed to a campaign and won (in the window), with its owners' splits (empty: nobody's)."""

    campaign_id: str
    amount: Decimal
    owners: tuple[OwnerSplit, ...]


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


def _per_campaign(
    leads: Sequence[CampaignLeads], won: Sequence[WonDeal]
) -> tuple[dict[str, list[CampaignLeads]], dict[str, list[WonDeal]]]:
    leads_of: dict[str, list[CampaignLeads]] = {}
    for part in leads:
        leads_of.setdefault(part.campaign_id, []).append(part)
    won_of: dict[str, list[WonDeal]] = {}
    for deal in won:
        won_of.setdefault(deal.campaign_id, []).append(deal)
    return leads_of, won_of


def company_economics(
    campaigns: Sequence[Campaign], leads: Sequence[CampaignLeads], won: Sequence[WonDeal], window: Window | None
) -> list[CampaignFigures]:
    """Every campaign over everyone's leads and won deals (each deal once, whole), with its whole cost
    (in the window)."""
    leads_of, won_of = _per_campaign(leads, won)
    figures = []
    for campaign in campaigns:
        brought = sum(p.leads for p in leads_of.get(campaign.campaign_id, []))
        deals = won_of.get(campaign.campaign_id, [])
        figures.append(CampaignFigures(
            campaign.campaign_id, campaign.name, cost_in_window(campaign, window, brought), brought, len(deals),
            sum((d.amount for d in deals), Decimal(0))))
    return figures


def economics_by(
    campaigns: Sequence[Campaign], leads: Sequence[CampaignLeads], won: Sequence[WonDeal], window: Window | None,
    key_of: Callable[[str | None], str | None],
) -> dict[str, list[CampaignFigures]]:
    """Each key's campaigns (those with leads or won deals under it), as `key_of` places owners (None: left
    out). A key is charged the share of the campaign's cost (in the window) that its leads are of all the
    campaign's leads (no lead in the window: nobody is charged); a won deal counts once under each key
    holding a share of it, with that share of its amount."""
    leads_of, won_of = _per_campaign(leads, won)
    by_key: dict[str, list[CampaignFigures]] = {}
    for campaign in campaigns:
        parts = leads_of.get(campaign.campaign_id, [])
        all_leads = sum(p.leads for p in parts)
        cost = cost_in_window(campaign, window, all_leads)
        charged: dict[str, Decimal] = {}
        brought: dict[str, int] = {}
        deals_won: dict[str, int] = {}
        won_amount: dict[str, Decimal] = {}
        for part in parts:
            key = key_of(part.owner_id)
            if key is not None:
                brought[key] = brought.get(key, 0) + part.leads
                if cost is not None and all_leads:
                    charged[key] = charged.get(key, Decimal(0)) + cost * part.leads / all_leads
        for deal in won_of.get(campaign.campaign_id, []):
            for key, percent in percent_per_key(deal.owners, key_of).items():
                deals_won[key] = deals_won.get(key, 0) + 1
                won_amount[key] = won_amount.get(key, Decimal(0)) + deal.amount * percent / 100
        for key in sorted(set(brought) | set(deals_won)):
            by_key.setdefault(key, []).append(CampaignFigures(
                campaign.campaign_id, campaign.name, None if cost is None else charged.get(key, Decimal(0)),
                brought.get(key, 0), deals_won.get(key, 0), won_amount.get(key, Decimal(0))))
    return by_key
