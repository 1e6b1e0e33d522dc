"""Campaigns (市场活动) over HTTP against the real Postgres and Tansu: plan, update, attribution of
leads, cost per lead, the status rule and the events on sales.campaigns."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.leads.main import service
from shared.auth import issue_token
from shared.events.envelope import parse_and_validate
from shared.service import create_service_app
from shared.settings import Settings
from tests.support.topics import read_topic

ROLES = {"mgr-1": "manager", "rep-1": "rep", "dir-1": "director", "admin-1": "admin"}


@pytest.fixture(scope="module")
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app(service, settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


def auth(settings: Settings, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(user, ROLES[user], settings.signing_secret, 600)}"}


def plan(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "2026 秋季展会", "channel": "event", "budget": "50000", "starts_on": "2026-10-20",
        "ends_on": "2026-11-30", "owner_id": "mgr-1",
    }
    body.update(overrides)
    return body


async def test_a_campaign_is_planned_run_and_completed_with_its_events(client, settings):
    manager = auth(settings, "mgr-1")
    created = await client.post("/v1/campaigns", json=plan(), headers=manager)
    assert created.status_code == 201, created.text
    campaign = created.json()
    cid = campaign["id"]
    assert campaign["status"] == "planned" and campaign["budget"] == "50000.00" and campaign["actual_cost"] == "0.00"
    assert campaign["currency"] == "CNY" and campaign["version"] == 1

    start = {"status": "running", "actual_cost": "12000.50"}
    running = await client.patch(f"/v1/campaigns/{cid}", json=start, headers=manager)
    assert running.status_code == 200, running.text
    assert running.json()["status"] == "running" and running.json()["version"] == 2
    unchanged = await client.patch(f"/v1/campaigns/{cid}", json={"status": "running"}, headers=manager)
    assert unchanged.json()["version"] == 2  # nothing changed, nothing published
    back = await client.patch(f"/v1/campaigns/{cid}", json={"status": "planned"}, headers=manager)
    assert back.status_code == 409 and "can only become completed" in back.json()["detail"]
    done = await client.patch(f"/v1/campaigns/{cid}", json={"status": "completed"}, headers=manager)
    assert done.json()["status"] == "completed"
    rename = await client.patch(f"/v1/campaigns/{cid}", json={"name": "x"}, headers=manager)
    assert rename.status_code == 409
    final_bill = await client.patch(f"/v1/campaigns/{cid}", json={"actual_cost": "48000"}, headers=manager)
    assert final_bill.status_code == 200 and final_bill.json()["actual_cost"] == "48000.00"

    records = await read_topic(settings, "sales.campaigns", count=4, match=cid.encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [(e.type, e.sequence) for e in events] == [
        ("sales.campaign.created.v1", 1),
        ("sales.campaign.updated.v1", 2),
        ("sales.campaign.updated.v1", 3),
        ("sales.campaign.updated.v1", 4),
    ]
    assert sorted(events[1].data["changed_fields"]) == ["actual_cost", "status"]
    assert events[1].data["actual_cost"] == "12000.50"
    assert events[3].data["changed_fields"] == ["actual_cost"]


async def test_leads_are_attributed_and_counted_with_the_cost_per_lead(client, settings):
    planned = await client.post("/v1/campaigns", json=plan(actual_cost="900"), headers=auth(settings, "dir-1"))
    cid = planned.json()["id"]
    admin = auth(settings, "admin-1")
    for n in range(3):
        body = {"contact": {"name": f"访客{n}", "email": f"{cid}-{n}@expo.cn"}, "campaign_id": cid, "source": "event"}
        assert (await client.post("/v1/leads", json=body, headers=admin)).status_code == 201
    seen = await client.get(f"/v1/campaigns/{cid}", headers=auth(settings, "rep-1"))
    assert seen.status_code == 200
    assert seen.json()["leads"] == 3 and seen.json()["converted_leads"] == 0
    assert seen.json()["cost_per_lead"] == "300.00"
    listed = await client.get("/v1/campaigns", params={"status": "planned", "limit": 500}, headers=admin)
    assert cid in {c["id"] for c in listed.json()["items"]}


@pytest.mark.parametrize(
    ("change", "field"),
    [({"budget": "-1"}, "budget"), ({"name": " "}, "name"), ({"ends_on": "2026-10-01"}, "ends_on"),
      ({"currency": "rmb"}, "currency"), ({"budget": "1.234"}, "budget")],
)
async def test_an_invalid_campaign_field_is_a_422_naming_it(client, settings, change, field):
    response = await client.post("/v1/campaigns", json=plan(**change), headers=auth(settings, "mgr-1"))
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]


async def test_reps_read_campaigns_but_do_not_plan_them(client, settings):
    assert (await client.post("/v1/campaigns", json=plan(), headers=auth(settings, "rep-1"))).status_code == 403
    assert (await client.get("/v1/campaigns/cmp-none", headers=auth(settings, "rep-1"))).status_code == 404
