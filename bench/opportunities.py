"""Benchmark: opportunity stage changes through the HTTP API (each one a transaction with its event in
the outbox, relayed to the broker), beside the bare Postgres outbox-transaction rate of the same run.

Starts its own embedded Postgres and Tansu and `--processes` service processes (uvicorn, loopback),
opens `--opportunities` opportunities, then:
- throughput: `--changes` stage changes, `--concurrency` in flight, as fast as they are answered (after
  a warm-up), with the CPU each change cost in the service processes and in the load client (aiohttp:
  it shares the machine's cores with the service, Postgres and the broker);
- latency: once the relay has published the burst, stage changes sent open-loop at `--rate`/s for
  `--seconds`, p50 / p95 / p99;
- the bare rate: one-event outbox transactions (Database.transaction + publish) on `--concurrency`
  connections, no HTTP;
and checks that the relay published every event.

Run: .venv/bin/python -m bench.opportunities [--processes 2] [--changes 20000] [--rate 500]
"""

import argparse
import asyncio
import itertools
import time
from typing import Any

import aiohttp
import asyncpg
import httpx

from bench.harness import (
    embedded_stack,
    load_sessions,
    open_loop,
    outbox_drained,
    percentiles,
    ready_clients,
    service_cpu_s,
    service_processes,
)
from shared import kafka
from shared.db import SHARED_MIGRATIONS, Database, migrate
from shared.settings import Settings, with_database
from tests.support.waiting import eventually

STAGES = ("bidding", "prospecting")  # back and forth: every change is a real move


class Opportunities:
    """The benchmark's opportunities, each changed by one request at a time, moving back and forth."""

    def __init__(self, ids: list[str]) -> None:
        self.free: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        for opportunity_id in ids:
            self.free.put_nowait((opportunity_id, 0))

    async def change(self, client: aiohttp.ClientSession) -> float:
        opportunity_id, moves = await self.free.get()
        started = time.perf_counter()
        path = f"/v1/opportunities/{opportunity_id}/stage"
        async with client.post(path, json={"stage": STAGES[moves % 2]}) as response:
            answer = await response.read()
        elapsed = time.perf_counter() - started
        self.free.put_nowait((opportunity_id, moves + 1))
        if response.status != 200:
            raise RuntimeError(f"stage change answered {response.status}: {answer.decode()}")
        return elapsed


async def open_opportunities(client: httpx.AsyncClient, count: int) -> list[str]:
    async def one(n: int) -> str:
        response = await client.post(
            "/v1/opportunities",
            json={
                "name": f"bench {n}",
                "account_name": f"bench account {n % 50}",
                "amount": "1000.00",
                "owner_id": "rep-1",
            },
        )
        response.raise_for_status()
        return str(response.json()["id"])

    ids: list[str] = []
    for start in range(0, count, 50):
        ids += await asyncio.gather(*(one(n) for n in range(start, min(count, start + 50))))
    return ids


async def throughput(
    pool: Opportunities, http: list[aiohttp.ClientSession], changes: int, concurrency: int
) -> dict[str, float]:
    """Changes/s, and the CPU the service processes and this client spent per change."""
    spread = itertools.cycle(http)
    remaining = iter(range(changes))

    async def worker() -> None:
        for _ in remaining:
            await pool.change(next(spread))

    service_cpu, client_cpu = service_cpu_s("opportunities"), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "changes_per_s": changes / elapsed,
        "service_cpu_ms": (service_cpu_s("opportunities") - service_cpu) / changes * 1000,
        "client_cpu_ms": (time.process_time() - client_cpu) / changes * 1000,
    }


async def bare_outbox_rate(settings: Settings, seconds: float, connections: int) -> float:
    """One-event outbox transactions through shared.db, no HTTP: the ceiling of the API's path."""
    admin = await asyncpg.connect(with_database(settings.server_url, "postgres"))
    await admin.execute("DROP DATABASE IF EXISTS bench_bare_outbox")
    await admin.execute("CREATE DATABASE bench_bare_outbox")
    await admin.close()
    db = await Database.open(
        with_database(settings.server_url, "bench_bare_outbox"), "/funnelcast/opportunities", pool_size=connections
    )
    async with db.pool.acquire() as conn:
        await migrate(conn, SHARED_MIGRATIONS)
    data: dict[str, Any] = {
        "opportunity_id": "opp-bare",
        "from_stage": "prospecting",
        "to_stage": "bidding",
        "probability": 30,
        "amount": "1000.00",
        "currency": "CNY",
        "owner_id": "rep-1",
        "changed_by": "rep-1",
        "changed_at": "2026-11-23T09:00:00Z",
    }
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            async with db.transaction() as tx:
                await tx.conn.execute("SELECT 1")
                tx.publish("sales.opportunity.stage_changed.v1", "opp-bare", data, sequence=count + 1)
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    rate = count / (time.perf_counter() - started)
    await db.close()
    return rate


async def run(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    await kafka.ensure_topics(settings)
    director = {"user": "dir-1", "role": "director"}
    with service_processes(settings, "opportunities", args.processes) as urls:
        async with (
            ready_clients(urls, settings, 50, **director) as opening,
            load_sessions(urls, settings, args.concurrency, **director) as http,
        ):
            pool = Opportunities(await open_opportunities(opening[0], args.opportunities))
            await throughput(pool, http, min(args.changes, 500), args.concurrency)  # warm-up: connections, statements
            measured = await throughput(pool, http, args.changes, args.concurrency)
            # the latency at a steady rate starts once the relay has caught up with the burst
            await eventually(lambda: outbox_drained(settings, "opportunities"), timeout=120, interval=0.5)
            spread = itertools.cycle(http)
            latencies = await open_loop(args.rate, args.seconds, lambda: pool.change(next(spread)))
        await eventually(lambda: outbox_drained(settings, "opportunities"), timeout=120, interval=0.5)
    bare = await bare_outbox_rate(settings, 3.0, args.concurrency)
    return {**measured, "latency": percentiles(latencies), "samples": len(latencies), "bare": bare}


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    p = result["latency"]
    return "\n".join(
        [
            f"stage changes via API:   {result['changes_per_s']:8,.0f} /s   ({args.changes:,} changes, "
            f"{args.concurrency} in flight, {args.processes} service processes; target >= 1,500/s)",
            f"CPU per change:          {result['service_cpu_ms']:8.2f} ms in the service processes,"
            f" {result['client_cpu_ms']:.2f} ms in the load client",
            f"latency at {args.rate:,.0f}/s:        p50 {p['p50']:.1f} ms  p95 {p['p95']:.1f} ms  p99 {p['p99']:.1f} ms"
            f"  ({result['samples']:,} changes; target p99 <= 50 ms)",
            f"bare outbox transactions: {result['bare']:8,.0f} /s   "
            f"(shared.db, {args.concurrency} connections, no HTTP)",
            "every event was relayed to the broker (outbox drained)",
        ]
    )


def parser() -> argparse.ArgumentParser:
    parsed = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parsed.add_argument("--processes", type=int, default=2)
    parsed.add_argument("--opportunities", type=int, default=1000)
    parsed.add_argument("--changes", type=int, default=20_000)
    parsed.add_argument("--concurrency", type=int, default=32)
    parsed.add_argument("--rate", type=float, default=500.0)
    parsed.add_argument("--seconds", type=float, default=10.0)
    return parsed


def main() -> None:
    args = parser().parse_args()
    with embedded_stack() as stack:
        result = asyncio.run(run(stack.settings, args))
    print(report(result, args))


if __name__ == "__main__":
    main()
