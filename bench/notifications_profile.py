"""Where the notifications consumer's time goes: CPU per event, without HTTP or a broker.

Starts its own embedded Postgres with the notifications tables, an organisation of `--reps` reps
(bench/notifications.py's), the default rules, `--subscriptions` webhook subscriptions to
sales.lead.captured.v1 (deliveries are queued, not sent) and the push hub listening (so rules,
subscriptions and preferences are cached as in the service, and every NOTIFY is heard and parsed).
Then it applies `--leads` captures' events (sales.lead.captured.v1 and sales.lead.assigned.v1 of an
H-grade lead, each lead owned by the next rep) through the shared consumer's
`EventProcessor.process_batch`, `--batch` events a transaction, as the service's agent does under
load, and prints this process's CPU and the Postgres server's CPU per event, and the events applied
per second of wall time. `--profile FILE` writes a cProfile of the applying to FILE (pstats).

Run: .venv/bin/python -m bench.notifications_profile [--leads 2000] [--batch 100] [--profile out.pstats]
"""

import argparse
import asyncio
import cProfile
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from bench.harness import server_cpu_s
from bench.notifications import write_org
from services.notifications import handlers, store
from services.notifications.push import PushHub
from shared.db import SHARED_MIGRATIONS, Database, migrate
from shared.events.envelope import CloudEvent
from shared.inbox import DeadLetters, EventProcessor, Message, Outcome
from shared.org import load_organisation
from shared.runtime.postgres import EmbeddedPostgres
from shared.settings import with_database
from tests.support.waiting import free_port

MIGRATIONS = Path(handlers.__file__).parent / "migrations"


def lead_events(n: int, reps: int) -> list[CloudEvent]:
    lead, owner = f"lead-{uuid.uuid4()}", f"rep-{n % reps}"
    now = datetime.now(UTC)
    at = now.isoformat().replace("+00:00", "Z")
    captured = {"lead_id": lead, "source": "web_form", "grade": "H", "owner_id": owner, "campaign_id": None,
                "region": "华东", "contact": {"name": f"访客{n}", "company": f"公司{n}", "phone": f"139{n:08d}"},
                "captured_at": at}
    assigned = {"lead_id": lead, "owner_id": owner, "previous_owner_id": None, "grade": "H", "method": "explicit",
                "assigned_by": "admin-1", "assigned_at": at,
                "follow_up_due_at": (now + timedelta(days=1)).isoformat().replace("+00:00", "Z")}
    return [CloudEvent(type="sales.lead.captured.v1", source="/funnelcast/leads", subject=lead, data=captured),
            CloudEvent(type="sales.lead.assigned.v1", source="/funnelcast/leads", subject=lead, data=assigned)]


async def run(postgres: EmbeddedPostgres, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    url = with_database(postgres.url, "funnelcast_notifications_bench")
    admin = await Database.open(postgres.url, "bench", pool_size=1)
    await admin.pool.execute("CREATE DATABASE funnelcast_notifications_bench")
    await admin.close()
    db = await Database.open(url, "/funnelcast/notifications", pool_size=4)
    org_file = home / "org.toml"
    write_org(org_file, args.reps)
    ctx = handlers.Context(org=load_organisation(org_file))
    hub = PushHub(url, ctx.cache)
    try:
        async with db.transaction() as tx:
            await migrate(tx.conn, SHARED_MIGRATIONS, MIGRATIONS)
            await store.seed_rules(tx.conn, handlers.default_rules())
            for i in range(args.subscriptions):
                await store.add_subscription(tx.conn, "admin-1", f"http://127.0.0.1:9/hook-{i}",
                                             ["sales.lead.captured.v1"], f"whsec_bench{i}")
        handlers.configure(ctx)
        hub.start()
        await hub.listening.wait()
        group = "funnelcast-notifications-bench"
        processor = EventProcessor(db, group, dict(handlers.HANDLERS), DeadLetters(None, group))
        events = [e for n in range(args.leads) for e in lead_events(n, args.reps)]
        messages = [Message("sales.leads", 0, i, e.subject.encode(), e.to_bytes()) for i, e in enumerate(events)]
        await processor.process_batch(messages[:2 * args.batch])  # warm-up: caches, prepared statements
        measured = messages[2 * args.batch:]
        assert postgres.pid is not None
        postmaster = psutil.Process(postgres.pid)
        profile = cProfile.Profile() if args.profile else None
        server_before, cpu_before, started = server_cpu_s(postmaster), time.process_time(), time.perf_counter()
        if profile:
            profile.enable()
        outcomes = []
        for start in range(0, len(measured), args.batch):
            outcomes += await processor.process_batch(measured[start:start + args.batch])
        await asyncio.sleep(0.2)  # the hub hears the last NOTIFYs
        if profile:
            profile.disable()
            profile.dump_stats(args.profile)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_before
        server = server_cpu_s(postmaster) - server_before
        assert all(o is Outcome.APPLIED for o in outcomes), set(outcomes)
        notified = await db.pool.fetchval("SELECT count(*) FROM notifications")
        queued = await db.pool.fetchval("SELECT count(*) FROM webhook_deliveries")
    finally:
        await hub.stop()
        await db.close()
    return {"events": len(measured), "cpu_ms": cpu * 1000 / len(measured), "server_ms": server * 1000 / len(measured),
            "per_s": len(measured) / wall, "notified": notified, "queued": queued}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=500)
    parser.add_argument("--leads", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--subscriptions", type=int, default=4)
    parser.add_argument("--profile", help="write a cProfile of the applying here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="funnelcast-bench-") as root:
        home = Path(root)
        postgres = EmbeddedPostgres(home / "postgres", free_port(), home / "postgres.log")
        postgres.start()
        try:
            result = asyncio.run(run(postgres, home, args))
        finally:
            postgres.stop()
    print(f"{result['events']} events ({args.leads} H-grade captures: captured + assigned), {args.batch} a batch, "
          f"{args.subscriptions} webhook subscriptions to captured, {args.reps} reps: "
          f"{result['cpu_ms']:.3f} ms CPU an event in the consumer's process, {result['server_ms']:.3f} ms in "
          f"Postgres; {result['per_s']:,.0f} events/s (wall); {result['notified']} notifications, "
          f"{result['queued']} deliveries queued")


if __name__ == "__main__":
    main()
