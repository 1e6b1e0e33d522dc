"""Evaluate the scoring service through the event path, on real data.

    python -m services.scoring.evaluate_events [--leads CSV] [--deals DIR] [--train-share 0.7]
                                               [--limit-leads N] [--limit-deals N]

Starts what it needs with the embedded runtime's `Stack`, as `funnelcast up` would, but on free ports
in a scratch directory: its own Postgres, Tansu broker and one scoring service process. Then, for
each data set, the events go to the broker and the running service consumes, stores, trains and
scores them; nothing is computed in this process but the ROC AUC of the scores the service published.

- Leads: ../shared/data/lead_scoring_x_education/Leads.csv with the offline evaluation's mapping
  (`evaluate.lead_event_data`: the columns that leak the outcome are left out), in Lead Number order.
  The first part (`--train-share`) as `sales.lead.captured.v1`, `sales.lead.engaged.v1` and the
  outcome (`converted` when Converted is 1, else `disqualified`); once the service has applied every
  outcome (its `funnelcast_events_consumed_total`), `POST /v1/models/lead/train`: the service's own
  training, held-out check and promotion. Then the rest as they would arrive (capture, engagement,
  outcome), each score read from its `sales.lead.scored.v1`: the one caused by the capture is the score
  at capture, the one caused by the engagement the score once engagement is known.
- Opportunities: ../shared/data/crm_sales_opportunities, the deals as the forecasting backtest turns
  them into events (`backtest.deal_events`: created on the engage date, moved to bidding, won / lost on
  the close date; while open a deal's amount is its product's list price, since the close value is
  only known at the close, and its region its agent's regional office). The closed ones, in
  close-date order: the first part with their outcomes, then `POST /v1/models/opportunity/train`,
  then the rest. Each part goes in time order, and at the start of every month, once the events
  before it were applied, the service re-scores its open deals as of that moment
  (`POST /v1/opportunities/rescore?as_of=`, the periodic re-scoring's own code with its clock set).
  The scores of the held-out deals: at creation, in bidding, and as of each month start while they
  were open (each deal's current score read over the API after that re-scoring).

The AUC is of the published scores (integers 0-100, as every consumer sees them), beside the model
that produced them. Progress goes to stderr, the figures to stdout.
"""

import argparse
import asyncio
import secrets
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from services.forecasting.backtest import deal_events
from services.scoring.evaluate import DEFAULT_PATH as DEFAULT_LEADS
from services.scoring.evaluate import captured_at, lead_event_data, read_leads, roc_auc, timestamp
from shared import kafka
from shared.auth import issue_token
from shared.events.caused import CausedEventReader
from shared.events.envelope import CONTENT_TYPE_HEADER, CloudEvent, validate
from shared.runtime.processes import free_port
from shared.runtime.supervisor import ServiceInstance, Stack
from shared.settings import Settings

DEFAULT_DEALS = Path("..") / "shared" / "data" / "crm_sales_opportunities"
LEADS_SOURCE = "/funnelcast/leads"
SCORING_GROUP = "funnelcast-scoring"
LEAD_OUTCOMES = ("sales.lead.converted.v1", "sales.lead.disqualified.v1")
DEAL_OUTCOMES = ("sales.opportunity.won.v1", "sales.opportunity.lost.v1")
DEAL_TYPES = ("sales.opportunity.created.v1", "sales.opportunity.stage_changed.v1", *DEAL_OUTCOMES)
REPLAY_USER = "svc-erp"  # the sample organisation's integration user
ADMIN = "admin-1"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _wait_s(events: int) -> float:
    """How long the service may take for `events` (generous: the machine may be busy)."""
    return 120.0 + events / 10


@dataclass
class Replay:
    """The way in (the broker) and out (sales.scores, the service's HTTP API) of the running service."""

    producer: AIOKafkaProducer
    scores: CausedEventReader  # sales.scores from its start
    http: httpx.AsyncClient

    async def publish(self, events: Sequence[CloudEvent]) -> None:
        for event in events:
            validate(event)  # a mapping mistake fails here, not as a dead letter the replay would wait for
        acks = [await self.producer.send(e.topic, e.to_bytes(), key=e.subject.encode(), headers=[CONTENT_TYPE_HEADER])
                for e in events]
        await asyncio.gather(*acks)

    async def consumed(self, types: Sequence[str]) -> int:
        """How many events of `types` the scoring consumer has applied (its metrics)."""
        text = (await self.http.get("/metrics")).text
        return int(sum(sample.value for family in text_string_to_metric_families(text)
                       if family.name == "funnelcast_events_consumed" for sample in family.samples
                       if sample.name.endswith("_total") and sample.labels.get("group") == SCORING_GROUP
                       and sample.labels.get("type") in types))

    async def await_consumed(self, types: Sequence[str], count: int) -> None:
        timeout = _wait_s(count)
        done = 0
        try:
            async with asyncio.timeout(timeout):
                while True:  # the count is read over HTTP: there is nothing to wait on but time
                    done = await self.consumed(types)
                    if done >= count:
                        return
                    await asyncio.sleep(0.5)
        except TimeoutError:
            raise RuntimeError(f"the service applied {done} of {count} {'/'.join(types)} within {timeout:.0f} s"
                               ) from None

    async def scores_of(self, ids: Sequence[str]) -> list[tuple[int, str]]:
        """The (score, model_version) of the scored event each of `ids` caused, once all have arrived."""
        timeout = _wait_s(len(ids))
        try:
            await self.scores.wait_for(ids, timeout)
        except TimeoutError:
            raise RuntimeError(f"{len(self.scores.awaited)} of {len(ids)} events were not scored within"
                               f" {timeout:.0f} s") from None
        return [(int(self.scores.caused[i]["score"]), str(self.scores.caused[i]["model_version"])) for i in ids]

    async def rescore(self, as_of: datetime) -> None:
        """The service's periodic re-scoring of its open opportunities, with its clock set to `as_of`."""
        response = await self.http.post("/v1/opportunities/rescore", params={"as_of": as_of.isoformat()},
                                        timeout=600)
        if response.status_code != 200:
            raise RuntimeError(f"re-scoring as of {as_of:%Y-%m-%d} answered {response.status_code}: {response.text}")

    async def win_probability(self, opportunity_id: str) -> int:
        response = await self.http.get(f"/v1/opportunities/{opportunity_id}/score")
        response.raise_for_status()
        return int(response.json()["score"])

    async def train(self, kind: str) -> dict[str, Any]:
        response = await self.http.post(f"/v1/models/{kind}/train", timeout=600)
        if response.status_code != 201:
            raise RuntimeError(f"training the {kind} model answered {response.status_code}: {response.text}")
        model: dict[str, Any] = response.json()
        return model


def _versions(scores: Sequence[tuple[int, str]]) -> str:
    return ", ".join(sorted({version for _, version in scores}))


# --- leads ------------------------------------------------------------------------------------


def lead_events(row: dict[str, str], index: int) -> tuple[CloudEvent, CloudEvent, CloudEvent]:
    """A lead's capture, engagement and outcome (a day after capture), as the leads service publishes them."""
    at = captured_at(index)
    captured, engaged = lead_event_data(row, at)
    lead_id = captured["lead_id"]
    decided = timestamp(at + timedelta(days=1))
    if row["Converted"] == "1":
        outcome = CloudEvent(type="sales.lead.converted.v1", source=LEADS_SOURCE, subject=lead_id, sequence=3, data={
            "lead_id": lead_id, "contact": captured["contact"], "account_name": row["Prospect ID"], "account_id": None,
            "owner_id": REPLAY_USER, "region": None, "campaign_id": None,
            "opportunity": {"name": "X Education course", "amount": None, "currency": "USD",
                            "expected_close_date": None},
            "converted_by": REPLAY_USER, "converted_at": decided})
    else:
        outcome = CloudEvent(type="sales.lead.disqualified.v1", source=LEADS_SOURCE, subject=lead_id, sequence=3,
                             data={"lead_id": lead_id, "reason": "not_converted", "disqualified_by": REPLAY_USER,
                                   "disqualified_at": decided})
    return (CloudEvent(type="sales.lead.captured.v1", source=LEADS_SOURCE, subject=lead_id, data=captured, sequence=1),
            CloudEvent(type="sales.lead.engaged.v1", source=LEADS_SOURCE, subject=lead_id,
                       data=engaged | {"observed_at": timestamp(at)}, sequence=2),
            outcome)


def lead_subjects(path: Path, limit: int | None) -> tuple[list[tuple[CloudEvent, ...]], list[bool]]:
    """Each lead's events in Lead Number order, and whether it converted."""
    rows = read_leads(path, limit)
    return [lead_events(row, i) for i, row in enumerate(rows)], [row["Converted"] == "1" for row in rows]


# --- opportunities ----------------------------------------------------------------------------


def closed_deals(data: Path, limit: int | None) -> list[list[CloudEvent]]:
    """Each closed deal's events (created, to bidding, won / lost), the deals in the order they closed."""
    by_deal: dict[str, list[CloudEvent]] = {}
    for event in deal_events(data):
        by_deal.setdefault(event.subject, []).append(event)
    closed = [events for events in by_deal.values() if events[-1].type in DEAL_OUTCOMES]
    closed.sort(key=lambda events: (events[-1].time, events[-1].subject))
    return closed[:limit] if limit else closed


def month_starts(events: Sequence[CloudEvent]) -> list[datetime]:
    """The first of every month after the first event, up to the first after the last one."""
    first, last = min(e.time for e in events), max(e.time for e in events)
    moment = datetime(first.year, first.month, 1, tzinfo=UTC)
    starts = []
    while moment <= last:
        moment = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
        starts.append(moment)
    return starts


# --- the run ----------------------------------------------------------------------------------


async def replay_outcomes(replay: Replay, kind: str, subjects: Sequence[Sequence[CloudEvent]],
                          positive: Sequence[bool], outcome_types: Sequence[str], train_share: float) -> dict[str, Any]:
    """`subjects`: each one's first event (capture / creation), the next (engagement / to bidding) and its
    outcome. The first part goes in whole and the service trains; the rest is scored as it arrives."""
    cut = int(len(subjects) * train_share)
    training, rest = subjects[:cut], subjects[cut:]
    _say(f"{kind}: replaying {cut:,} with their outcomes")
    await replay.publish([e for events in training for e in events])
    await replay.await_consumed(outcome_types, len(training))
    model = await replay.train(kind)
    _say(f"{kind}: model {model['version']} held-out AUC {model['auc']:.3f} (current {model['current_auc']:.3f}),"
         f" promoted {model['promoted']}; scoring the other {len(rest):,} as they arrive")
    await replay.publish([e for events in rest for e in events])
    first = await replay.scores_of([events[0].id for events in rest])
    second = await replay.scores_of([events[1].id for events in rest])
    truth = positive[cut:]
    return {"subjects": len(subjects), "trained_on": cut, "scored": len(rest), "model": model,
            "auc_first": roc_auc(truth, [s for s, _ in first]), "auc_second": roc_auc(truth, [s for s, _ in second]),
            "versions": _versions(first + second)}


async def replay_by_month(replay: Replay, deals: Sequence[Sequence[CloudEvent]],
                          at_month_start: Callable[[datetime], Awaitable[None]] | None = None) -> None:
    """The deals' events in time order; before each month start's events, once the service applied every
    earlier one, it re-scores its open deals as of that moment, then `at_month_start` runs."""
    events = sorted((e for d in deals for e in d), key=lambda e: (e.time, e.sequence or 0))
    before = await replay.consumed(DEAL_TYPES)
    sent = 0
    for start in month_starts(events):
        month = [e for e in events[sent:] if e.time < start]
        await replay.publish(month)
        sent += len(month)
        await replay.await_consumed(DEAL_TYPES, before + sent)
        await replay.rescore(start)
        if at_month_start is not None:
            await at_month_start(start)


async def replay_deals(replay: Replay, closed: Sequence[Sequence[CloudEvent]], train_share: float) -> dict[str, Any]:
    """The first part of the closed deals goes in with their outcomes and the service trains; the rest are
    scored as they arrive and as of every month start while they are open."""
    cut = int(len(closed) * train_share)
    training, rest = closed[:cut], closed[cut:]
    _say(f"opportunity: replaying {cut:,} with their outcomes, month by month")
    await replay_by_month(replay, training)
    model = await replay.train("opportunity")
    _say(f"opportunity: model {model['version']} held-out AUC {model['auc']:.3f} (current"
         f" {model['current_auc']:.3f}), promoted {model['promoted']}; scoring the other {len(rest):,} as they"
         " arrive and at every month start")
    snapshots: dict[datetime, list[tuple[bool, int]]] = {}

    async def read_open_deals(start: datetime) -> None:
        open_deals = [d for d in rest if d[0].time < start < d[-1].time]
        snapshots[start] = [(d[-1].type == "sales.opportunity.won.v1", await replay.win_probability(d[0].subject))
                            for d in open_deals]

    await replay_by_month(replay, rest, read_open_deals)
    first = await replay.scores_of([d[0].id for d in rest])
    second = await replay.scores_of([d[1].id for d in rest])
    truth = [d[-1].type == "sales.opportunity.won.v1" for d in rest]
    by_month = {start: (len(scored), roc_auc([w for w, _ in scored], [s for _, s in scored]))
                for start, scored in snapshots.items() if len({w for w, _ in scored}) == 2}
    pooled = [pair for scored in snapshots.values() for pair in scored]
    return {"subjects": len(closed), "trained_on": cut, "scored": len(rest), "model": model,
            "auc_first": roc_auc(truth, [s for s, _ in first]), "auc_second": roc_auc(truth, [s for s, _ in second]),
            "versions": _versions(first + second), "auc_by_month": by_month,
            "auc_open": roc_auc([w for w, _ in pooled], [s for _, s in pooled]) if by_month else None,
            "open_scores": len(pooled)}


async def evaluate(settings: Settings, service_url: str, leads: Path | None, deals: Path | None,
                   train_share: float = 0.7, limit_leads: int | None = None,
                   limit_deals: int | None = None) -> dict[str, dict[str, Any]]:
    """Replay the data sets given through a running scoring service that nothing else feeds."""
    token = issue_token(ADMIN, "admin", settings.signing_secret, 24 * 3600)
    producer = kafka.producer(settings)
    reader = CausedEventReader(settings, "sales.scores", from_start=True)
    await producer.start()
    await reader.start()
    results: dict[str, dict[str, Any]] = {}
    try:
        async with httpx.AsyncClient(base_url=service_url, headers={"Authorization": f"Bearer {token}"},
                                     timeout=30) as http:
            replay = Replay(producer, reader, http)
            if leads is not None:
                subjects, converted = lead_subjects(leads, limit_leads)
                results["leads"] = await replay_outcomes(replay, "lead", subjects, converted, LEAD_OUTCOMES,
                                                         train_share)
            if deals is not None:
                closed = closed_deals(deals, limit_deals)
                results["opportunities"] = await replay_deals(replay, closed, train_share)
    finally:
        await reader.stop()
        await producer.stop()
    return results


def run(leads: Path | None, deals: Path | None, train_share: float = 0.7, limit_leads: int | None = None,
        limit_deals: int | None = None) -> dict[str, dict[str, Any]]:
    """Start a stack of its own (Postgres, broker, one scoring process), evaluate, stop it."""
    with tempfile.TemporaryDirectory(prefix="funnelcast-scoring-evaluation-") as scratch:
        settings = Settings(home=Path(scratch), database_url=None, kafka_bootstrap=None,
                            kafka_idempotence=False,  # Tansu does not implement InitProducerId
                            auth_secret=secrets.token_hex(32), embedded_postgres_port=free_port(),
                            embedded_kafka_port=free_port())
        service = ServiceInstance("scoring", 0, free_port())
        # Training happens when the replay asks for it, never on the service's own schedule meanwhile.
        # Re-scoring only as of the replay's month starts: the service's own clock is years after the data.
        never = str(365 * 24 * 3600)
        extra_env = {"FUNNELCAST_AUTH_SECRET": settings.signing_secret, "FUNNELCAST_LOG_LEVEL": "WARNING",
                     "FUNNELCAST_SCORING_TRAIN_INTERVAL_S": never, "FUNNELCAST_SCORING_RESCORE_INTERVAL_S": never}
        stack = Stack(settings, Path(scratch), [service], out=_say, extra_env=extra_env)
        try:
            stack.start(ready_timeout=120)
            return asyncio.run(evaluate(settings, f"http://127.0.0.1:{service.port}", leads, deals, train_share,
                                        limit_leads, limit_deals))
        finally:
            stack.stop()


def report(results: dict[str, dict[str, Any]]) -> str:
    stages = {"leads": ("at capture", "with engagement"), "opportunities": ("at creation", "in bidding")}
    lines = []
    for name, result in results.items():
        model = result["model"]
        early, late = stages[name]
        lines.append(f"{name}: {result['subjects']:,}, outcomes of the first {result['trained_on']:,} replayed;"
                     f" model {model['version']} ({model['algorithm']}), held-out AUC {model['auc']:.3f} against"
                     f" {model['current_version']} {model['current_auc']:.3f}, promoted {model['promoted']}")
        lines.append(f"  ROC AUC of the published scores of the other {result['scored']:,}: {early}"
                     f" {result['auc_first']:.3f}, {late} {result['auc_second']:.3f}"
                     f" (scored by {result['versions']})")
        if result.get("auc_open") is not None:
            lines.append(f"  while open, as of each month start: {result['auc_open']:.3f} over"
                         f" {result['open_scores']:,} scores of open deals")
            lines.extend(f"    {start:%Y-%m-%d}: {auc:.3f} ({count:,} open)"
                         for start, (count, auc) in result["auc_by_month"].items())
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.scoring.evaluate_events", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=Path, default=DEFAULT_LEADS, help="Leads.csv of X Education")
    parser.add_argument("--deals", type=Path, default=DEFAULT_DEALS, help="the CRM export's directory")
    parser.add_argument("--train-share", type=float, default=0.7)
    parser.add_argument("--limit-leads", type=int, help="only the first N leads (Lead Number order)")
    parser.add_argument("--limit-deals", type=int, help="only the first N closed deals (close-date order)")
    parser.add_argument("--only", choices=("leads", "opportunities"), help="one data set")
    args = parser.parse_args(argv)
    results = run(None if args.only == "opportunities" else args.leads, None if args.only == "leads" else args.deals,
                  args.train_share, args.limit_leads, args.limit_deals)
    print(report(results))


if __name__ == "__main__":
    main(sys.argv[1:])
