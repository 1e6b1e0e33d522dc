"""Faults against the real embedded stack, one at a time and then mixed; after each, every effect reconciled
with its cause.

The stack (tests/support/chaos.py) is a Postgres and a broker of this module's own, so they can be killed,
and the five services as `funnelcast up` runs them, plus a webhook receiver on 127.0.0.1 subscribed to a
few event types. Each scenario runs the whole flow (captures, touches, grades, conversions, opportunities
to signed contracts, with scores, forecasts, notifications and webhook deliveries following), injects its
faults mid-flow, and then waits until every published event is applied by every service that consumes it
and every subscribed one delivered: 0 lost, 0 applied twice and no webhook delivery of an event no outbox
holds, or the test fails with the table. Each scenario is reconciled on the events published during it.
"""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.chaos import (
    ChaosStack,
    Fault,
    OutageCaptures,
    Reconciliation,
    Workload,
    capture_while_broker_unreachable,
    count_dead_letters,
    dead_letters_expected,
    inject_poison,
    run_scenario,
    settle,
    table,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

FLOWS = 8  # per scenario; each is 13 requests and about 28 events across the services
SETTLE_TIMEOUT_S = 120.0
# Longer than the consumers' session timeout (6 s), so the groups lose their members meanwhile.
# bench/chaos.py holds the broker unreachable for 30 s.
OUTAGE_S = 10.0
RESULTS: list[Reconciliation] = []


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    stack = ChaosStack(Path(tmp_path_factory.mktemp("chaos")))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        if RESULTS:
            print("\n" + table(RESULTS))


async def run_with_faults(chaos: ChaosStack, scenario: str, faults: list[Fault], first: int) -> Reconciliation:
    result = await run_scenario(chaos, scenario, faults, FLOWS, first, concurrency=4,
                                settle_timeout=SETTLE_TIMEOUT_S)
    RESULTS.append(result)
    assert result.clean, "\n" + table([result])
    assert result.webhooks_expected > 0
    return result


async def test_baseline_without_faults(chaos: ChaosStack) -> None:
    async def nothing() -> None:
        return None

    result = await run_with_faults(chaos, "no fault", [nothing], 0)
    assert result.expected > FLOWS * 10


def broker_restart(chaos: ChaosStack) -> Fault:
    async def kill_broker() -> None:
        chaos.kill_broker()
        await asyncio.sleep(0)  # a crash, then a new, empty broker at once
        chaos.start_broker()

    return kill_broker


def service_restart(chaos: ChaosStack, service: str) -> Fault:
    async def kill_service() -> None:
        chaos.kill_service(service)
        await asyncio.to_thread(chaos.start_service, service)

    return kill_service


def postgres_restart(chaos: ChaosStack) -> Fault:
    async def restart_postgres() -> None:
        await asyncio.to_thread(chaos.stop_postgres)
        await asyncio.to_thread(chaos.start_postgres)

    return restart_postgres


def poison(chaos: ChaosStack, marker: str, injected: dict[str, int]) -> Fault:
    async def inject() -> None:
        assert chaos.settings is not None
        # one bad message per topic (8 in the scenario's ~220 events): 4 not JSON, 4 failing their schema
        injected.update(await inject_poison(chaos.settings, 1, marker))

    return inject


async def assert_dead_lettered(chaos: ChaosStack, marker: str, injected: dict[str, int]) -> None:
    assert chaos.settings is not None
    wanted = dead_letters_expected(injected)
    settings = chaos.settings
    assert await eventually(lambda: _at_least(count_dead_letters(settings, marker), wanted), timeout=60) >= wanted


async def test_the_broker_killed_and_restarted_mid_flow(chaos: ChaosStack) -> None:
    await run_with_faults(chaos, "broker SIGKILL + restart", [broker_restart(chaos)], 1000)


@pytest.mark.parametrize("service", ["scoring", "opportunities"])
async def test_a_service_killed_mid_batch_and_restarted(chaos: ChaosStack, service: str) -> None:
    await run_with_faults(chaos, f"{service} SIGKILL + restart", [service_restart(chaos, service)],
                          2000 + 100 * len(service))


async def test_postgres_stopped_and_restarted_under_load(chaos: ChaosStack) -> None:
    await run_with_faults(chaos, "Postgres stop + start", [postgres_restart(chaos)], 3000)


async def test_poison_and_schema_invalid_messages_on_every_topic(chaos: ChaosStack) -> None:
    marker, injected = f"poison-{uuid.uuid4().hex[:8]}", dict[str, int]()
    await run_with_faults(chaos, "bad messages on every topic", [poison(chaos, marker, injected)], 4000)
    await assert_dead_lettered(chaos, marker, injected)


async def test_the_broker_unreachable_while_the_services_take_requests(chaos: ChaosStack) -> None:
    """The broker stopped (SIGSTOP) for longer than a consumer session: captures keep answering 201 at
    once (their events wait in the outbox), and afterwards everything is delivered."""
    outage: list[OutageCaptures] = []

    async def unreachable() -> None:
        outage.append(await capture_while_broker_unreachable(chaos, OUTAGE_S))

    await run_with_faults(chaos, f"broker unreachable {OUTAGE_S:.0f} s", [unreachable], 5000)
    [captures] = outage
    answered = sum(captures.statuses.values())
    assert captures.statuses == {201: answered} and answered >= OUTAGE_S, captures
    assert captures.slowest_s < 2.0, captures


async def test_mixed_faults(chaos: ChaosStack) -> None:
    """The broker and a consumer killed together, then Postgres restarted, then bad messages."""
    marker, injected = f"poison-{uuid.uuid4().hex[:8]}", dict[str, int]()
    broker, notifications = broker_restart(chaos), service_restart(chaos, "notifications")

    async def broker_and_consumer() -> None:
        await asyncio.gather(broker(), notifications())

    await run_with_faults(chaos, "mixed: broker + notifications, Postgres, bad messages",
                          [broker_and_consumer, postgres_restart(chaos), poison(chaos, marker, injected)], 6000)
    await assert_dead_lettered(chaos, marker, injected)


async def test_concurrent_updates_of_the_same_lead_and_opportunity(chaos: ChaosStack) -> None:
    began, started = datetime.now(UTC), time.monotonic()
    async with Workload(chaos) as workload:
        touches, moves = await workload.contend(clients=16)
    assert (touches, moves) == (16, 3)
    result = await settle(chaos, "16 clients on one lead + one deal", started, SETTLE_TIMEOUT_S, began)
    RESULTS.append(result)
    assert result.clean, "\n" + table([result])


async def _at_least(count: Awaitable[int], wanted: int) -> int:
    found = await count
    return found if found >= wanted else 0
