"""The opportunities service shows the scoring service's account tier (sales.account.tiered.v1) on the
account, without counting it as an edit of the account."""

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from services.opportunities.main import service
from shared.auth import issue_token
from shared.events.envelope import CONTENT_TYPE_HEADER, CloudEvent
from shared.org import Role
from shared.service import create_service_app
from shared.settings import Settings
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
async def http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app(service, settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def tiered(account_id: str, value_tier: str | None, buyer_type: str | None, sequence: int) -> CloudEvent:
    data = {
        "account_id": account_id, "value_tier": value_tier, "buyer_type": buyer_type,
        "previous_value_tier": None, "previous_buyer_type": None, "model_version": "tiers-v1",
        "amount_12m": "1250000.00", "currency": "CNY", "contracts_12m": 3, "contracts_total": 3,
        "last_signed_at": "2026-11-20T06:00:00Z", "factors": [], "tiered_at": "2026-11-20T06:00:01Z",
    }
    return CloudEvent(type="sales.account.tiered.v1", source="/funnelcast/scoring", subject=account_id, data=data,
                      sequence=sequence)


async def test_the_account_answer_shows_the_tier_from_scoring(
    http: httpx.AsyncClient, settings: Settings, producer: AIOKafkaProducer
) -> None:
    token = issue_token("rep-1", Role.REP, settings.signing_secret, 600)
    headers = {"Authorization": f"Bearer {token}"}
    created = await http.post("/v1/accounts", json={"name": f"客户 {uuid.uuid4().hex[:10]}", "owner_id": "rep-1"},
                              headers=headers)
    assert created.status_code == 201, created.text
    account = created.json()
    assert (account["value_tier"], account["buyer_type"]) == (None, None)

    async def shown(value_tier: str, buyer_type: str) -> dict[str, Any] | None:
        body = (await http.get(f"/v1/accounts/{account['id']}", headers=headers)).json()
        return body if (body["value_tier"], body["buyer_type"]) == (value_tier, buyer_type) else None

    for event in (tiered(account["id"], "high", "frequent", 1), tiered(f"acc-{uuid.uuid4()}", "low", "first_time", 1)):
        await producer.send_and_wait(event.topic, event.to_bytes(), key=event.subject.encode(),
                                     headers=[CONTENT_TYPE_HEADER])
    body = await eventually(lambda: shown("high", "frequent"), timeout=60)
    assert body["version"] == account["version"]  # not an edit of the account

    event = tiered(account["id"], "medium", "occasional", 2)
    await producer.send_and_wait(event.topic, event.to_bytes(), key=event.subject.encode(),
                                 headers=[CONTENT_TYPE_HEADER])
    await eventually(lambda: shown("medium", "occasional"), timeout=30)
