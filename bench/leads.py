"""Benchmark: lead captures through the HTTP API (each two statements, group-committed with those of
the captures in flight: the duplicate check with the team's round-robin turn, then the lead with
`captured` + `assigned` in the outbox; relayed to the broker), beside the bare Postgres
outbox-transaction rate of the same run.

Starts its own embedded Postgres and Tansu and `--processes` leads service processes (uvicorn,
loopback), then:
- throughput: `--captures` new leads (fresh phone numbers), `--concurrency` in flight, regions
  alternating 华东 / 华北 (two teams, so two round-robin cursors), as fast as they are answered;
- latency: once the relay has published the burst, captures sent open-loop at `--rate`/s for
  `--seconds`, p50 / p95 / p99;
- the bare rate: two-event outbox transactions (Database.transaction + publish) on `--concurrency`
  connections, no HTTP;
and checks that the relay published every event.

Run: .venv/bin/python -m bench.leads [--processes 2] [--captures 20000] [--rate 500]
"""

import argparse
import asyncio
import itertools
import time
from typing import Any

import aiohttp
import asyncpg
import psutil

from bench.harness import (
    embedded_stack,
    load_sessions,
    open_loop,
    outbox_drained,
    percentiles,
    ready_clients,
    server_cpu_s,
    service_cpu_s,
    service_processes,
)
from shared import kafka
from shared.db import SHARED_MIGRATIONS, Database, migrate
from shared.settings import Settings, with_database
from tests.support.waiting import eventually

REGIONS = ("华东", "华北")


_serial = itertools.count(10_000_000)


async def capture(client: aiohttp.ClientSession) -> float:
    n = next(_serial)
    body = {
        "contact": {"name": f"访客{n}", "company": f"公司{n % 500}", "phone": f"139{n:08d}"},
        "source": "web_form",
        "grade": "HABC"[n % 4],
        "region": REGIONS[n % 2],
        "attributes": {"utm_source": "bench"},
    }
    started = time.perf_counter()
    async with client.post("/v1/leads", json=body) as response:
        answer = await response.read()
    elapsed = time.perf_counter() - started
    if response.status != 201:
        raise RuntimeError(f"capture answered {response.status}: {answer.decode()}")
    return elapsed


async def throughput(
    http: list[aiohttp.ClientSession], captures: int, concurrency: int, postgres: psutil.Process
) -> dict[str, float]:
    """Captures/s, and the CPU the service processes (relay included), Postgres and this client spent
    per capture."""
    spread = itertools.cycle(http)
    remaining = iter(range(captures))

    async def worker() -> None:
        for _ in remaining:
            await capture(next(spread))

    service_cpu, server_cpu, client_cpu = service_cpu_s("leads"), server_cpu_s(postgres), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "rate": captures / elapsed,
        "service_cpu_ms": (service_cpu_s("leads") - service_cpu) / captures * 1000,
        "postgres_cpu_ms": (server_cpu_s(postgres) - server_cpu) / captures * 1000,
        "client_cpu_ms": (time.process_time() - client_cpu) / captures * 1000,
    }


async def bare_outbox_rate(settings: Settings, seconds: float, connections: int) -> float:
    """Two-event outbox transactions through shared.db, no HTTP: the ceiling of the capture path."""
    admin = await asyncpg.connect(with_database(settings.server_url, "postgres"))
    await admin.execute("DROP DATABASE IF EXISTS bench_bare_lead_outbox")
    await admin.execute("CREATE DATABASE bench_bare_lead_outbox")
    await admin.close()
    db = await Database.open(
        with_database(settings.server_url, "bench_bare_lead_outbox"), "/funnelcast/leads", pool_size=connections
    )
    async with db.pool.acquire() as conn:
        await migrate(conn, SHARED_MIGRATIONS)
    captured: dict[str, Any] = {
        "lead_id": "lead-bare",
        "source": "web_form",
        "grade": "H",
        "owner_id": "rep-1",
        "campaign_id": None,
        "region": "华东",
        "contact": {"name": "王伟", "company": None, "phone": "+8613900000000", "email": None},
        "captured_at": "2026-11-23T09:00:00Z",
    }
    assigned: dict[str, Any] = {
        "lead_id": "lead-bare",
        "owner_id": "rep-1",
        "previous_owner_id": None,
        "grade": "H",
        "assigned_by": "system",
        "assigned_at": "2026-11-23T09:00:00Z",
    }
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            async with db.transaction() as tx:
                await tx.conn.execute("SELECT 1")
                tx.publish("sales.lead.captured.v1", "lead-bare", captured, sequence=1)
                tx.publish("sales.lead.assigned.v1", "lead-bare", assigned, sequence=2)
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    rate = count / (time.perf_counter() - started)
    await db.close()
    return rate


async def run(settings: Settings, args: argparse.Namespace, postgres: psutil.Process) -> dict[str, Any]:
    await kafka.ensure_topics(settings)
    with service_processes(settings, "leads", args.processes) as urls:
        async with ready_clients(urls, settings, 1), load_sessions(urls, settings, args.concurrency) as http:
            await throughput(http, min(args.captures, 500), args.concurrency, postgres)  # warm-up
            measured = await throughput(http, args.captures, args.concurrency, postgres)
            # the latency at a steady rate starts once the relay has caught up with the burst
            await eventually(lambda: outbox_drained(settings, "leads"), timeout=180, interval=0.5)
            spread = itertools.cycle(http)
            latencies = await open_loop(args.rate, args.seconds, lambda: capture(next(spread)))
        await eventually(lambda: outbox_drained(settings, "leads"), timeout=180, interval=0.5)
    bare = await bare_outbox_rate(settings, 3.0, args.concurrency)
    return {**measured, "latency": percentiles(latencies), "samples": len(latencies), "bare": bare}


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    p = result["latency"]
    return "\n".join(
        [
            f"lead captures via API:    {result['rate']:8,.0f} /s   ({args.captures:,} captures, "
            f"{args.concurrency} in flight, {args.processes} service processes; target >= 1,500/s)",
            f"CPU per capture:          {result['service_cpu_ms']:8.2f} ms in the service processes,"
            f" {result['postgres_cpu_ms']:.2f} ms in Postgres, {result['client_cpu_ms']:.2f} ms in the load client",
            f"latency at {args.rate:,.0f}/s:         p50 {p['p50']:.1f} ms  p95 {p['p95']:.1f} ms"
            f"  p99 {p['p99']:.1f} ms"
            f"  ({result['samples']:,} captures; target p99 <= 50 ms)",
            f"bare outbox transactions: {result['bare']:8,.0f} /s   (2 events each, shared.db, {args.concurrency}"
            " connections, no HTTP)",
            "every event was relayed to the broker (outbox drained)",
        ]
    )


def parser() -> argparse.ArgumentParser:
    parsed = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parsed.add_argument("--processes", type=int, default=2)
    parsed.add_argument("--captures", type=int, default=20_000)
    parsed.add_argument("--concurrency", type=int, default=32)
    parsed.add_argument("--rate", type=float, default=500.0)
    parsed.add_argument("--seconds", type=float, default=10.0)
    return parsed


def main() -> None:
    args = parser().parse_args()
    with embedded_stack() as stack:
        assert stack.postgres.pid is not None
        result = asyncio.run(run(stack.settings, args, psutil.Process(stack.postgres.pid)))
    print(report(result, args))


if __name__ == "__main__":
    main()
