"""Faults against the real embedded stack, one at a time; after each, every effect reconciled with its cause.

The stack (tests/support/chaos.py) is a Postgres and a broker of this module's own, so they can be killed,
and the five services as `funnelcast up` runs them. Each scenario runs the whole flow (captures, touches,
grades, conversions, opportunities to signed contracts, with scores, forecasts and notifications
following), injects its fault mid-flow, and then waits until every published event is applied by every
service that consumes it: 0 lost and 0 applied twice, or the test fails with the table. Each scenario
is reconciled on the events published during it.
"""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.chaos import (
    ChaosStack,
    Reconciliation,
    Workload,
    count_dead_letters,
    dead_letters_expected,
    inject_poison,
    settle,
    table,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

FLOWS = 8  # per scenario; each is 13 requests and about 28 events across the services
SETTLE_TIMEOUT_S = 120.0
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


async def run_with_fault(
    chaos: ChaosStack, scenario: str, fault: Callable[[], Awaitable[None]], first: int
) -> Reconciliation:
    """Run FLOWS flows; once a third have started, apply `fault` (an async callable) alongside."""
    started = datetime.now(UTC)
    async with Workload(chaos, concurrency=4) as workload:
        flows = asyncio.create_task(workload.flows(first, FLOWS))
        await eventually(lambda: _is(workload.requests >= FLOWS * 4), timeout=120, interval=0.05)
        await fault()
        fault_over = time.monotonic()
        await flows
    result = await settle(chaos, scenario, fault_over, SETTLE_TIMEOUT_S, started)
    RESULTS.append(result)
    assert result.clean, "\n" + table([result])
    return result


async def test_baseline_without_faults(chaos: ChaosStack) -> None:
    async def nothing() -> None:
        return None

    result = await run_with_fault(chaos, "no fault", nothing, 0)
    assert result.expected > FLOWS * 10


async def test_the_broker_killed_and_restarted_mid_flow(chaos: ChaosStack) -> None:
    async def kill_broker() -> None:
        chaos.kill_broker()
        await asyncio.sleep(0)  # a crash, then a new, empty broker at once
        chaos.start_broker()

    await run_with_fault(chaos, "broker SIGKILL + restart", kill_broker, 1000)


@pytest.mark.parametrize("service", ["scoring", "opportunities"])
async def test_a_service_killed_mid_batch_and_restarted(chaos: ChaosStack, service: str) -> None:
    async def kill_service() -> None:
        chaos.kill_service(service)
        await asyncio.to_thread(chaos.start_service, service)

    await run_with_fault(chaos, f"{service} SIGKILL + restart", kill_service, 2000 + 100 * len(service))


async def test_postgres_stopped_and_restarted_under_load(chaos: ChaosStack) -> None:
    async def restart_postgres() -> None:
        await asyncio.to_thread(chaos.stop_postgres)
        await asyncio.to_thread(chaos.start_postgres)

    await run_with_fault(chaos, "Postgres stop + start", restart_postgres, 3000)


async def test_poison_and_schema_invalid_messages_on_every_topic(chaos: ChaosStack) -> None:
    marker = f"poison-{uuid.uuid4().hex[:8]}"
    injected: dict[str, int] = {}

    async def poison() -> None:
        assert chaos.settings is not None
        # one bad message per topic (8 in the scenario's ~220 events): 4 not JSON, 4 failing their schema
        injected.update(await inject_poison(chaos.settings, 1, marker))

    await run_with_fault(chaos, "bad messages on every topic", poison, 4000)
    assert chaos.settings is not None
    wanted = dead_letters_expected(injected)
    settings = chaos.settings
    assert await eventually(lambda: _at_least(count_dead_letters(settings, marker), wanted), timeout=60) >= wanted


async def test_concurrent_updates_of_the_same_lead_and_opportunity(chaos: ChaosStack) -> None:
    began, started = datetime.now(UTC), time.monotonic()
    async with Workload(chaos) as workload:
        touches, moves = await workload.contend(clients=16)
    assert (touches, moves) == (16, 3)
    result = await settle(chaos, "16 clients on one lead + one deal", started, SETTLE_TIMEOUT_S, began)
    RESULTS.append(result)
    assert result.clean, "\n" + table([result])


async def _is(value: bool) -> bool:
    return value


async def _at_least(count: Awaitable[int], wanted: int) -> int:
    found = await count
    return found if found >= wanted else 0
