"""The scoring service's schedule, in a process as `funnelcast up` runs it, with a re-scoring interval of one
second: time passing alone re-tiers an account, with no event. A first-time buyer's contract of 1,200,000
signed 91 days ago less a few seconds makes a high-value account (3 + 1 + 3 points, the contract 90 days
old); seconds later the contract is 91 days old (recency 2 points) and the schedule publishes the account
as medium value. A Postgres and a broker of the module's own: the consumer group reads from the start."""

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from shared import kafka
from shared.auth import issue_token
from shared.events.envelope import CloudEvent, parse_and_validate
from shared.org import Role
from shared.runtime.broker import TansuBroker
from shared.runtime.postgres import EmbeddedPostgres
from shared.settings import Settings
from tests.conftest import own_servers, settings_for
from tests.integration.test_scoring_service import contract_event, send
from tests.support.processes import ServiceProcess
from tests.support.topics import read_topic
from tests.support.waiting import eventually

GRACE_S = 10
CROSSING_S = 5  # from the contract's event to its 91st day: the consumer tiers it well before


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedPostgres, TansuBroker]]:
    yield from own_servers(tmp_path_factory, "scoring-schedule")


@pytest.fixture
async def settings(servers: tuple[EmbeddedPostgres, TansuBroker], tmp_path: Path) -> Settings:
    configured = settings_for(*servers, tmp_path / "home")
    await kafka.ensure_topics(configured)
    return configured


@pytest.fixture
def scoring(settings: Settings, tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess("scoring", settings.server_url, settings.kafka_bootstrap_servers, tmp_path, GRACE_S,
                             {"FUNNELCAST_SCORING_RESCORE_INTERVAL_S": "1"})
    process.start()
    yield process
    process.kill()


async def test_the_schedule_re_tiers_an_account_once_its_newest_contract_turns_91_days_old(
    scoring: ServiceProcess, settings: Settings, producer: AIOKafkaProducer
) -> None:
    await scoring.ready()
    admin = {"Authorization": f"Bearer {issue_token('admin-1', Role.ADMIN, settings.signing_secret, 600)}"}
    async with httpx.AsyncClient(base_url=scoring.url, headers=admin, timeout=10) as http:
        async def tier(account: str) -> dict[str, Any] | None:
            response = await http.get(f"/v1/accounts/{account}/tier")
            return dict(response.json()) if response.status_code == 200 else None

        def signed(account: str, at: datetime) -> CloudEvent:
            return contract_event("sales.contract.signed.v1", f"con-{uuid.uuid4()}", account, "1200000.00",
                                  signed_at=at.isoformat().replace("+00:00", "Z"))

        # The consumer's group joined and fetching: the next contract is tiered in milliseconds.
        warm_up = f"acc-{uuid.uuid4()}"
        await send(producer, signed(warm_up, datetime.now(UTC)))
        await eventually(lambda: tier(warm_up), timeout=60)

        account = f"acc-{uuid.uuid4()}"
        await send(producer, signed(account, datetime.now(UTC) + timedelta(seconds=CROSSING_S) - timedelta(days=91)))
        first = await eventually(lambda: tier(account), timeout=CROSSING_S)
        assert (first["value_tier"], [f["contribution"] for f in first["factors"]]) == ("high", [3, 1, 3])

        async def moved() -> dict[str, Any] | None:
            answer = await tier(account)
            return answer if answer and answer["value_tier"] == "medium" else None

        later = await eventually(moved, timeout=CROSSING_S + 30)
        assert [f["contribution"] for f in later["factors"]] == [3, 1, 2]
    events = [parse_and_validate(r.value) for r in await read_topic(settings, "sales.scores", count=2,
                                                                     match=account.encode())]
    assert [(e.sequence, e.data["value_tier"], "cause_contract_id" in e.data) for e in events] == [
        (1, "high", True), (2, "medium", False)]
    assert "re-tiered" in scoring.log()
