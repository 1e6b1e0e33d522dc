"""The long fault run: the whole flow under each fault in turn, then all of them mixed; prints the table.

    python -m bench.chaos --events 100000          # the long run (>= 100,000 events)
    python -m bench.chaos --events 5000 --concurrency 8

A Postgres, a broker and the five services of its own (tests/support/chaos.py), all on 127.0.0.1. Each
scenario drives its share of the events through the API (captures, touches, grades, conversions,
opportunities to signed contracts; scores, forecasts and notifications follow), applies its fault while
the load runs, then reconciles every effect against its cause across the services' stores: events in,
effects expected, effects seen, lost, applied twice, seconds from the end of the fault until nothing was
missing, each on the events published during the scenario; the last row reconciles the whole run.
"""

import argparse
import asyncio
import contextlib
import functools
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from tests.support.chaos import (
    ChaosStack,
    Reconciliation,
    Workload,
    count_dead_letters,
    dead_letters_expected,
    inject_poison,
    reconcile,
    settle,
    table,
)
from tests.support.waiting import eventually

EVENTS_PER_FLOW = 24  # measured: a flow publishes about this many events across the services
Fault = Callable[[ChaosStack, random.Random], Awaitable[None]]


async def broker_restart(stack: ChaosStack, _: random.Random) -> None:
    stack.kill_broker()
    stack.start_broker()


async def service_restart(stack: ChaosStack, rng: random.Random) -> None:
    name = rng.choice(["opportunities", "scoring", "forecasting", "notifications", "leads"])
    stack.kill_service(name)
    await asyncio.to_thread(stack.start_service, name)


async def postgres_restart(stack: ChaosStack, _: random.Random) -> None:
    await asyncio.to_thread(stack.stop_postgres)
    await asyncio.to_thread(stack.start_postgres)


async def no_fault(stack: ChaosStack, _: random.Random) -> None:
    return None


async def run_scenario(stack: ChaosStack, name: str, faults: list[Fault], flows: int, first: int,
                       concurrency: int, rng: random.Random, poison_marker: str | None) -> Reconciliation:
    assert stack.settings is not None
    settings = stack.settings
    started = datetime.now(UTC)
    async with Workload(stack, concurrency=concurrency) as workload:
        load = asyncio.create_task(workload.flows(first, flows))
        fault_over = time.monotonic()
        for k, fault in enumerate(faults, start=1):
            # spread the faults over the scenario: the k-th when k/(n+1) of its requests were made
            target = int(flows * 13 * k / (len(faults) + 1))
            await eventually(functools.partial(_reached, workload, load, target), timeout=3600, interval=0.05)
            await fault(stack, rng)
            fault_over = time.monotonic()
        injected: dict[str, int] = {}
        if poison_marker is not None:
            injected = await inject_poison(settings, max(2, flows * EVENTS_PER_FLOW // 100 // 8), poison_marker)
        await load
    result = await settle(stack, name, fault_over, timeout=600, started=started)
    if poison_marker is not None:
        wanted = dead_letters_expected(injected)
        with contextlib.suppress(AssertionError):  # reported below either way
            await eventually(lambda: _at_least(count_dead_letters(settings, poison_marker), wanted), timeout=120,
                             interval=1)
        found = await count_dead_letters(settings, poison_marker)
        print(f"  poison: {sum(injected.values())} bad messages, {found} of {wanted} dead letters expected",
              file=sys.stderr)
    return result


async def _reached(workload: Workload, load: "asyncio.Task[None]", requests: int) -> bool:
    return workload.requests >= requests or load.done()


async def _at_least(count: Awaitable[int], wanted: int) -> bool:
    return await count >= wanted


async def main(events: int, concurrency: int, seed: int) -> list[Reconciliation]:
    rng = random.Random(seed)  # noqa: S311 - picks which service a fault kills; no secret
    scenarios: list[tuple[str, list[Fault], bool]] = [
        ("no fault", [no_fault], False),
        ("broker SIGKILL + restart", [broker_restart], False),
        ("service SIGKILL + restart", [service_restart], False),
        ("Postgres stop + start", [postgres_restart], False),
        ("poison 1% on every topic", [no_fault], True),
        ("mixed", [broker_restart, service_restart, postgres_restart, service_restart], True),
    ]
    flows = max(1, events // EVENTS_PER_FLOW // len(scenarios))
    rows: list[Reconciliation] = []
    with tempfile.TemporaryDirectory(prefix="funnelcast-chaos-") as root:
        stack = ChaosStack(Path(root))
        try:
            started = time.monotonic()
            await asyncio.to_thread(stack.start)  # it runs its own event loop to create the topics
            print(f"stack ready in {time.monotonic() - started:.0f} s; {flows} flows per scenario", file=sys.stderr)
            for n, (name, faults, poison) in enumerate(scenarios):
                began = time.monotonic()
                marker = f"poison-{uuid.uuid4().hex[:8]}" if poison else None
                row = await run_scenario(stack, name, faults, flows, n * 1_000_000, concurrency, rng, marker)
                rows.append(row)
                print(f"{name}: {time.monotonic() - began:.0f} s\n{table([row])}", file=sys.stderr)
            assert stack.settings is not None
            total = await reconcile(stack.settings.server_url, "all scenarios", stack.consumed)
            rows.append(total)
        finally:
            stack.stop()
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events to drive in total (approximate)")
    parser.add_argument("--concurrency", type=int, default=8, help="flows in flight at once")
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args()
    results = asyncio.run(main(args.events, args.concurrency, args.seed))
    print(table(results))
    sys.exit(0 if all(r.clean for r in results) else 1)
