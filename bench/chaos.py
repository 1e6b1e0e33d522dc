"""The long fault run: the whole flow under each fault in turn, then all of them mixed; prints the table.

    python -m bench.chaos --events 100000          # the long run (>= 100,000 events)
    python -m bench.chaos --events 5000 --concurrency 8

A Postgres, a broker and the five services of its own, and a webhook receiver subscribed to a few event
types (tests/support/chaos.py), all on 127.0.0.1. Each scenario drives its share of the events through
the API (captures, touches, grades, conversions, opportunities to signed contracts; scores, forecasts,
notifications and webhook deliveries follow), applies its faults while the load runs, then reconciles
every effect against its cause across the services' stores and the webhook receiver: events in, effects
expected, effects seen, lost, applied twice, seconds from the end of the last fault until nothing was
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
from pathlib import Path

from shared.settings import Settings
from shared.topology import TOPICS
from tests.support.chaos import (
    ChaosStack,
    Fault,
    OutageCaptures,
    Reconciliation,
    capture_while_broker_unreachable,
    count_dead_letters,
    dead_letters_expected,
    inject_poison,
    reconcile,
    run_scenario,
    table,
)
from tests.support.waiting import eventually

# Events a flow publishes across the services, measured: 25 a flow at 23 flows a scenario, 31 at 595
# (more forecast updates). The lower figure, so that --events is a floor.
EVENTS_PER_FLOW = 24
OUTAGE_S = 30.0
SETTLE_TIMEOUT_S = 600.0


class Faults:
    """The faults of the run, on one stack; which service a restart kills is drawn from the seed."""

    def __init__(self, stack: ChaosStack, rng: random.Random, flows: int) -> None:
        self.stack = stack
        self.rng = rng
        self.flows = flows  # per scenario
        self.outages: list[OutageCaptures] = []
        self.poison: dict[str, dict[str, int]] = {}  # marker -> bad messages per topic

    async def nothing(self) -> None:
        return None

    async def broker_restart(self) -> None:
        self.stack.kill_broker()
        self.stack.start_broker()

    async def service_restart(self) -> None:
        name = self.rng.choice(["opportunities", "scoring", "forecasting", "notifications", "leads"])
        print(f"  SIGKILL {name}", file=sys.stderr)
        self.stack.kill_service(name)
        await asyncio.to_thread(self.stack.start_service, name)

    async def postgres_restart(self) -> None:
        await asyncio.to_thread(self.stack.stop_postgres)
        await asyncio.to_thread(self.stack.start_postgres)

    async def broker_unreachable(self) -> None:
        self.outages.append(await capture_while_broker_unreachable(self.stack, OUTAGE_S))

    async def bad_messages(self) -> None:
        """About 1 % of a scenario's events, spread over every topic, each carrying the injection's marker."""
        assert self.stack.settings is not None
        marker = f"poison-{uuid.uuid4().hex[:8]}"
        per_topic = max(2, self.flows * EVENTS_PER_FLOW // 100 // len(TOPICS))
        self.poison[marker] = await inject_poison(self.stack.settings, per_topic, marker)

    async def report_poison(self) -> None:
        assert self.stack.settings is not None
        settings = self.stack.settings
        for marker, injected in self.poison.items():
            wanted = dead_letters_expected(injected)
            with contextlib.suppress(AssertionError):  # reported below either way
                await eventually(functools.partial(_dead_letters_reach, settings, marker, wanted),
                                 timeout=120, interval=1)
            found = await count_dead_letters(settings, marker)
            print(f"  poison: {sum(injected.values())} bad messages, {found} of {wanted} dead letters expected",
                  file=sys.stderr)
        self.poison.clear()

    def report_outages(self) -> None:
        for outage in self.outages:
            print(f"  broker unreachable {OUTAGE_S:.0f} s: captures answered {dict(outage.statuses)}, slowest "
                  f"{outage.slowest_s:.2f} s", file=sys.stderr)
        self.outages.clear()


async def _dead_letters_reach(settings: Settings, marker: str, wanted: int) -> bool:
    return await count_dead_letters(settings, marker) >= wanted


# name, faults (methods of Faults) applied in turn while the scenario's flows run
SCENARIOS = [
    ("no fault", ["nothing"]),
    ("broker SIGKILL + restart", ["broker_restart"]),
    ("service SIGKILL + restart", ["service_restart"]),
    ("Postgres stop + start", ["postgres_restart"]),
    (f"broker unreachable {OUTAGE_S:.0f} s", ["broker_unreachable"]),
    ("poison 1% on every topic", ["bad_messages"]),
    ("mixed", ["broker_restart", "service_restart", "broker_unreachable", "postgres_restart", "service_restart",
               "bad_messages"]),
]


async def main(events: int, concurrency: int, seed: int) -> list[Reconciliation]:
    flows = max(1, events // EVENTS_PER_FLOW // len(SCENARIOS))
    rows: list[Reconciliation] = []
    with tempfile.TemporaryDirectory(prefix="funnelcast-chaos-") as root:
        stack = ChaosStack(Path(root))
        faults = Faults(stack, random.Random(seed), flows)  # noqa: S311 - picks the service a fault kills; no secret
        try:
            started = time.monotonic()
            await asyncio.to_thread(stack.start)  # it runs its own event loop to create the topics
            print(f"stack ready in {time.monotonic() - started:.0f} s; {flows} flows per scenario", file=sys.stderr)
            for n, (name, fault_names) in enumerate(SCENARIOS):
                began = time.monotonic()
                scenario_faults: list[Fault] = [getattr(faults, fault) for fault in fault_names]
                row = await run_scenario(stack, name, scenario_faults, flows, n * 1_000_000, concurrency,
                                         SETTLE_TIMEOUT_S)
                rows.append(row)
                print(f"{name}: {time.monotonic() - began:.0f} s\n{table([row])}", file=sys.stderr)
                faults.report_outages()
                await faults.report_poison()
            assert stack.settings is not None
            rows.append(await reconcile(stack.settings.server_url, "all scenarios", stack.consumed,
                                        webhooks=stack.webhooks))
        finally:
            stack.stop()
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events to drive in total (approximate)")
    parser.add_argument("--concurrency", type=int, default=8, help="flows in flight at once")
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args()
    started = time.monotonic()
    results = asyncio.run(main(args.events, args.concurrency, args.seed))
    print(table(results))
    print(f"{time.monotonic() - started:.0f} s in all", file=sys.stderr)
    sys.exit(0 if all(r.clean for r in results) else 1)
