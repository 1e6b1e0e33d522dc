"""Funnel analytics over a cohort of deals (those opened in a period). No I/O.

A deal has reached a stage when it entered it or any later one (closing won counts as having gone
through every open stage, as a deal may be closed from any of them); conversion from one stage to
the next is the share of the deals that reached the first that also reached the next. Win rate is
won / (won + lost) among the cohort's closed deals; the sales cycle runs from opening to the close
of a won deal; time in stage is how long deals stayed in a stage before their next move.
"""

import statistics
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal

from services.forecasting.domain import OwnerSplit, percent_per_key

OPEN_STAGES = ("prospecting", "bidding", "negotiation", "contract")
_RANK = {**{s: i for i, s in enumerate(OPEN_STAGES)}, "won": len(OPEN_STAGES)}


@dataclass(frozen=True)
class CohortDeal:
    opportunity_id: str
    amount: Decimal
    opened_on: date | None
    closed_on: date | None
    status: str
    owners: tuple[OwnerSplit, ...] = ()  # who is credited what share of it (empty: nobody)

    def share(self, percent: int) -> "CohortDeal":
        """The deal as counted for owners holding `percent` of it: that part of its amount."""
        return replace(self, amount=self.amount * percent / 100)


@dataclass(frozen=True)
class Transition:
    opportunity_id: str
    to_stage: str
    at: datetime


@dataclass(frozen=True)
class StageFigures:
    stage: str
    reached: int
    amount: Decimal
    conversion_to_next: float | None
    median_days_in_stage: float | None


@dataclass(frozen=True)
class Funnel:
    deals: int
    stages: list[StageFigures]
    won: int
    lost: int
    won_amount: Decimal
    win_rate: float | None
    median_sales_cycle_days: float | None


def funnel(deals: Sequence[CohortDeal], transitions: Mapping[str, Sequence[Transition]]) -> Funnel:
    reached_rank: dict[str, int] = {}
    days_in: dict[str, list[float]] = {s: [] for s in OPEN_STAGES}
    for deal in deals:
        moves = sorted(transitions.get(deal.opportunity_id, ()), key=lambda t: t.at)
        ranks = [_RANK[t.to_stage] for t in moves if t.to_stage in _RANK]
        if deal.status == "won":
            ranks.append(_RANK["won"])
        reached_rank[deal.opportunity_id] = max(ranks, default=0)
        for current, following in zip(moves, moves[1:], strict=False):
            if current.to_stage in days_in:
                days_in[current.to_stage].append((following.at - current.at).total_seconds() / 86400)
    stages = []
    for index, stage in enumerate(OPEN_STAGES):
        at_least = [d for d in deals if reached_rank[d.opportunity_id] >= index]
        beyond = [d for d in at_least if reached_rank[d.opportunity_id] >= index + 1]
        stages.append(StageFigures(
            stage=stage, reached=len(at_least), amount=sum((d.amount for d in at_least), Decimal(0)),
            conversion_to_next=len(beyond) / len(at_least) if at_least else None,
            median_days_in_stage=statistics.median(days_in[stage]) if days_in[stage] else None,
        ))
    won = [d for d in deals if d.status == "won"]
    lost = [d for d in deals if d.status == "lost"]
    cycles = [(d.closed_on - d.opened_on).days for d in won if d.closed_on and d.opened_on]
    return Funnel(
        deals=len(deals), stages=stages, won=len(won), lost=len(lost),
        won_amount=sum((d.amount for d in won), Decimal(0)),
        win_rate=len(won) / (len(won) + len(lost)) if won or lost else None,
        median_sales_cycle_days=statistics.median(cycles) if cycles else None,
    )


def credited_to(deals: Sequence[CohortDeal], owners: Collection[str]) -> list[CohortDeal]:
    """The deals these owners hold a share of, each counted once with their shares of its amount."""
    credited = []
    for deal in deals:
        percent = sum(credit.split for credit in deal.owners if credit.owner_id in owners)
        if percent:
            credited.append(deal.share(percent))
    return credited


def funnels_by(
    deals: Sequence[CohortDeal], transitions: Mapping[str, Sequence[Transition]],
    key_of: Callable[[str | None], str | None],
) -> dict[str, Funnel]:
    """One funnel per key (an owner, their team or region, as `key_of` places an owner; None: left out).
    A deal shared by several owners counts once under each key holding a share, with the key's shares
    of its amount; a deal of nobody under the key of None."""
    grouped: dict[str, list[CohortDeal]] = {}
    for deal in deals:
        for key, percent in percent_per_key(deal.owners, key_of).items():
            grouped.setdefault(key, []).append(deal.share(percent))
    return {key: funnel(members, transitions) for key, members in sorted(grouped.items())}
