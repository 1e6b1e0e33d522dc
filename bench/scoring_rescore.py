"""CPU per pass of the periodic re-scoring of open opportunities or leads, or of the re-tiering of accounts
(services/scoring/schedule.py).

A Postgres of its own holds `--deals` open opportunities (features as the handlers keep them: bidding,
entered 0-90 days ago, 30 owners with win tallies), or with `--kind lead` as many open leads (captured
0-40 days ago, half of them contacted within 5 days of their capture, grades, sources and engagement
drawn at random); each pass calls `handlers.rescore_open` as the schedule does,
`FUNNELCAST_SCORING_RESCORE_BATCH` (500) per transaction, as of a moment one day later than the pass
before, so some subjects cross a threshold of age or recency and are published, most are not. Once
with the rules, once with a learned model of the kind (trees, trained on synthetic outcomes) active.
With `--kind account`, as many accounts with 1-4 contracts each (signed 0-400 days before, amounts
drawn at random), tiered then; each pass calls `handlers.retier_accounts` a day later than the one before.
Prints, per pass, the CPU time of this process (the scoring service's share) and of the Postgres
server, per pass and per open subject: medians and ranges of `--runs` passes.

Run: .venv/bin/python -m bench.scoring_rescore [--kind opportunity|lead|account] [--deals 10000] [--runs 5]
"""

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psutil

from bench.harness import server_cpu_s
from services.scoring import handlers, store
from services.scoring.domain import (
    GRADE_POINTS,
    SOURCE_POINTS,
    Contract,
    LeadFeatures,
    OpportunityFeatures,
    OpportunityMoment,
    account_tier,
    score_lead,
    score_opportunity,
)
from services.scoring.learning import Example, train
from shared.db import SHARED_MIGRATIONS, Database, ensure_database, migrate
from shared.runtime.postgres import EmbeddedPostgres
from shared.settings import get_settings, with_database
from tests.support.waiting import free_port

MIGRATIONS = Path(handlers.__file__).parent / "migrations"
OWNERS = [f"rep-{i}" for i in range(30)]
START = datetime(2026, 1, 1, tzinfo=UTC)


def open_deal(rng: random.Random, i: int) -> OpportunityFeatures:
    entered = START - timedelta(days=rng.uniform(0, 90))
    return OpportunityFeatures(owner_id=OWNERS[i % len(OWNERS)], stage="bidding", stage_probability=30,
                               stage_entered_at=entered, created_at=entered - timedelta(days=rng.uniform(0, 20)),
                               last_event_at=entered, amount=rng.choice([550.0, 1096.0, 4821.0, 26768.0]),
                               product="GTX Pro", region="East")


async def fill(db: Database, deals: int) -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test data, no secret
    computed = []
    for i in range(deals):
        features = open_deal(rng, i)
        moment = OpportunityMoment(features, features.last_event_at or START, None)
        computed.append(store.Computed(f"opp-{i:06d}", features.to_json(), features.owner_id,
                                       score_opportunity(features, moment.as_of), moment.as_of, 1, f"fill-{i}",
                                       "sales.opportunity.created.v1", moment))
    async with db.transaction() as tx:
        await store.save_opportunities(tx.conn, computed)
        for owner in OWNERS:
            await store.count_opportunity_outcome(tx.conn, owner, rng.randint(5, 40), rng.randint(5, 40))


def open_lead(rng: random.Random, i: int) -> LeadFeatures:
    captured = START - timedelta(days=rng.uniform(0, 40))
    lead = LeadFeatures(owner_id=OWNERS[i % len(OWNERS)], grade=rng.choice([*GRADE_POINTS, None]),
                        source=rng.choice(list(SOURCE_POINTS)), has_company=rng.random() < 0.6, has_phone=True,
                        has_email=rng.random() < 0.5, captured_at=captured, visits=rng.randint(0, 6),
                        time_on_site_s=rng.uniform(0, 900), page_views=rng.randint(0, 15))
    return lead.contacted(captured + timedelta(days=rng.uniform(0, 5)), 1) if rng.random() < 0.5 else lead


def last_moment(lead: LeadFeatures) -> datetime:
    """When its last event was scored: its last touch, else its capture."""
    return lead.last_contacted_at or lead.captured_at or START


async def fill_leads(db: Database, leads: int) -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test data, no secret
    computed = []
    for i in range(leads):
        features = open_lead(rng, i)
        scored_at = last_moment(features)
        computed.append(store.Computed(f"lead-{i:06d}", features.to_json(), features.owner_id,
                                       score_lead(features, scored_at), scored_at, 1, f"fill-{i}",
                                       "sales.lead.captured.v1"))
    async with db.transaction() as tx:
        await store.save_leads(tx.conn, computed, {})


async def fill_accounts(db: Database, accounts: int) -> None:
    rng = random.Random(7)  # noqa: S311 - reproducible test data, no secret
    async with db.transaction() as tx:
        for i in range(accounts):
            contracts = [Contract(f"con-{i:06d}-{n}", Decimal(rng.choice(["50000", "180000", "450000", "1200000"])),
                                  "CNY", START - timedelta(days=rng.uniform(0, 400))) for n in range(rng.randint(1, 4))]
            await store.save_account(tx.conn, f"acc-{i:06d}", OWNERS[i % len(OWNERS)], contracts,
                                     account_tier(contracts, START), START, 1)


async def activate_lead_trees(db: Database) -> str:
    rng = random.Random(11)  # noqa: S311 - reproducible test data, no secret
    examples = []
    for i in range(2_000):
        features = open_lead(rng, i)
        converts = rng.random() < (0.7 if features.grade in ("H", "A") or features.page_views > 8 else 0.25)
        examples.append(Example(features, converts, START + timedelta(minutes=i)))
    model, evaluation = train(examples, "gb-bench", lambda _example: 0.5)
    async with db.transaction() as tx:
        await store.save_model(tx.conn, model.version, "lead", model.algorithm, model.to_json(), START,
                               evaluation.__dict__, "rules-v1", True)
    return model.version


async def activate_trees(db: Database) -> str:
    rng = random.Random(11)  # noqa: S311 - reproducible test data, no secret
    examples = []
    for i in range(2_000):
        features = open_deal(rng, i)
        as_of = START + timedelta(days=rng.uniform(0, 60))
        won = rng.random() < (0.8 if (as_of - (features.stage_entered_at or START)).days > 30 else 0.45)
        examples.append(Example(OpportunityMoment(features, as_of, rng.uniform(0.4, 0.8)), won,
                                START + timedelta(minutes=i)))
    model, evaluation = train(examples, "opp-bench", lambda _example: 0.5)
    async with db.transaction() as tx:
        await store.save_model(tx.conn, model.version, "opportunity", model.algorithm, model.to_json(), START,
                               evaluation.__dict__, "rules-v1", True)
    return model.version


async def passes(one_pass: Callable[[datetime], Awaitable[handlers.Rescoring]], server: psutil.Process, runs: int,
                 first_as_of: datetime) -> list[dict[str, float]]:
    measured = []
    for run in range(runs):
        cpu, server_cpu, wall = time.process_time(), server_cpu_s(server), time.monotonic()
        done = await one_pass(first_as_of + timedelta(days=run))
        measured.append({"cpu_ms": (time.process_time() - cpu) * 1e3,
                         "server_ms": (server_cpu_s(server) - server_cpu) * 1e3,
                         "wall_ms": (time.monotonic() - wall) * 1e3, "examined": done.examined,
                         "rescored": done.rescored})
    return measured


def summary(name: str, kind: str, measured: list[dict[str, float]]) -> str:
    noun, walked = {"lead": ("a lead", "open leads"), "opportunity": ("a deal", "open deals"),
                    "account": ("an account", "accounts with a tier")}[kind]

    def spread(key: str, per_deal: bool = False) -> str:
        values = [m[key] / (m["examined"] if per_deal else 1) for m in measured]
        unit, scale = ("µs", 1e3) if per_deal else ("ms", 1)
        return f"{statistics.median(values) * scale:.1f} {unit} ({min(values) * scale:.1f}-{max(values) * scale:.1f})"

    return (f"{name}: {int(measured[0]['examined']):,} {walked} a pass, published"
            f" {', '.join(str(int(m['rescored'])) for m in measured)}; service process CPU {spread('cpu_ms')} a pass,"
            f" {spread('cpu_ms', True)} {noun}; Postgres CPU {spread('server_ms')} a pass; wall {spread('wall_ms')}")


async def measure(postgres: EmbeddedPostgres, kind: str, deals: int, runs: int) -> None:
    await ensure_database(postgres.url, "funnelcast_scoring_bench")
    db = await Database.open(with_database(postgres.url, "funnelcast_scoring_bench"), "/funnelcast/scoring")
    try:
        async with db.transaction() as tx:
            await migrate(tx.conn, SHARED_MIGRATIONS, MIGRATIONS)
        server = psutil.Process(postgres.pid)
        batch = get_settings().scoring_rescore_batch
        if kind == "account":
            await fill_accounts(db, deals)
            print(summary("tiers-v1", kind, await passes(
                lambda as_of: handlers.retier_accounts(db, as_of, batch), server, runs, START + timedelta(days=1))))
        else:
            subjects = handlers.OPEN_LEADS if kind == "lead" else handlers.OPEN_OPPORTUNITIES

            def rescore(as_of: datetime) -> Awaitable[handlers.Rescoring]:
                return handlers.rescore_open(db, subjects, as_of, batch)

            await (fill_leads if kind == "lead" else fill)(db, deals)
            print(summary("rules-v1", kind, await passes(rescore, server, runs, START)))
            version = await (activate_lead_trees if kind == "lead" else activate_trees)(db)
            print(summary(f"learned ({version})", kind,
                          await passes(rescore, server, runs, START + timedelta(days=runs))))
        print(json.dumps({"kind": kind, "subjects": deals, "runs": runs}))
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["opportunity", "lead", "account"], default="opportunity")
    parser.add_argument("--deals", type=int, default=10_000, help="open subjects (accounts) of the kind")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="funnelcast-bench-") as root:
        postgres = EmbeddedPostgres(Path(root) / "postgres", free_port(), Path(root) / "postgres.log")
        postgres.start()
        try:
            asyncio.run(measure(postgres, args.kind, args.deals, args.runs))
        finally:
            postgres.stop()


if __name__ == "__main__":
    main()
