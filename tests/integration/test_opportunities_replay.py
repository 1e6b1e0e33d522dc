"""The replay tool (services/opportunities/replay.py) loads the CRM export through the real API."""

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from services.opportunities.main import service
from services.opportunities.replay import (
    NO_COMPETITOR,
    UNKNOWN_ACCOUNT,
    Deal,
    agent_id,
    load_deals,
    organisation_toml,
    replay,
)
from shared.auth import issue_token
from shared.org import load_organisation
from shared.service import create_service_app
from shared.settings import Settings

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "crm_sales_opportunities"
pytestmark = pytest.mark.skipif(not (DATA / "sales_pipeline.csv").exists(), reason="the CRM export is not here")


@pytest.fixture(scope="module")
async def replay_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    org_file = tmp_path_factory.mktemp("replay") / "maventech.toml"
    org_file.write_text(organisation_toml(DATA), encoding="utf-8")
    return settings.model_copy(update={"org_file": org_file})


@pytest.fixture(scope="module")
async def http(replay_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app(service, replay_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def test_the_data_and_its_organisation(tmp_path: Path) -> None:
    deals = load_deals(DATA)
    assert len(deals) == 8800
    assert Counter(d.stage for d in deals) == {"Won": 4238, "Lost": 2473, "Engaging": 1589, "Prospecting": 500}
    assert sum(d.account == UNKNOWN_ACCOUNT for d in deals) == 1425
    assert all("." in d.amount and float(d.amount) > 0 for d in deals)
    assert {d.product for d in deals} >= {"GTX Pro"} and "GTXPro" not in {d.product for d in deals}
    org_file = tmp_path / "org.toml"
    org_file.write_text(organisation_toml(DATA), encoding="utf-8")
    org = load_organisation(org_file)
    agents = [u for u in org.users.values() if u.id.startswith("agent-")]
    assert len(agents) == 35 and {u.region for u in agents} == {"Central", "East", "West"}
    assert len([u for u in org.users.values() if u.id.startswith("mgr-") and u.manager == "dir-1"]) == 8
    assert all(org.user(agent_id(d.agent)) for d in deals)


async def test_replaying_deals_of_every_stage(http: httpx.AsyncClient, replay_settings: Settings) -> None:
    org = load_organisation(replay_settings.org_file)
    assert org.user("agent-moses-frase") and org.user("rep-1")  # the sample's users stay
    by_stage: dict[str, list[Deal]] = {}
    for deal in load_deals(DATA):
        by_stage.setdefault(deal.stage, [])
        if len(by_stage[deal.stage]) < 15:
            by_stage[deal.stage].append(deal)
    deals = [d for group in by_stage.values() for d in group]
    token = issue_token("svc-erp", "integration", replay_settings.signing_secret, 600)
    http.headers["Authorization"] = f"Bearer {token}"
    assert await replay(http, deals, concurrency=8) == {"Won": 15, "Lost": 15, "Engaging": 15, "Prospecting": 15}

    expected = {"Won": ("won", "won"), "Lost": ("lost", "lost"), "Engaging": ("bidding", "open"),
                "Prospecting": ("prospecting", "open")}
    for deal in deals:
        owner = agent_id(deal.agent)
        items = (await http.get(f"/v1/opportunities?owner_id={owner}&limit=500")).json()["items"]
        [opp] = [o for o in items if f"({deal.source_id})" in o["name"]]
        assert (opp["stage"], opp["status"]) == expected[deal.stage], deal
        assert (opp["amount"], opp["currency"], opp["region"]) == (deal.amount, "USD", deal.region)
        assert opp["expected_close_date"] == deal.close_date
        assert opp["product"] == deal.product  # carried in its events: the forecast rolls up by it
        if deal.stage == "Lost":
            assert opp["competitor"] == NO_COMPETITOR
