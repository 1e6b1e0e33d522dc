"""The public web-to-lead form and the leads metrics, on the real app against Postgres and Tansu."""

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from services.leads.main import service
from services.leads.web_form import PER_MINUTE, RateLimiter
from shared.auth import issue_token
from shared.events.envelope import parse_and_validate
from shared.service import create_service_app
from shared.settings import Settings
from tests.support.topics import read_topic


@pytest.fixture(scope="module")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_service_app(service, settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="module")
async def leads_db(settings: Settings, app: FastAPI) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.database_url_for("leads"))
    yield conn
    await conn.close()


def visitor(app: FastAPI, ip: str | None = None) -> httpx.AsyncClient:
    """A browser at its own IP address (each test gets a fresh one, so rate limits do not interfere)."""
    ip = ip or f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def fresh_email() -> str:
    return f"visitor.{uuid.uuid4().hex[:12]}@Example.cn"


def form(**overrides: str) -> dict[str, str]:
    fields = {
        "name": "李娜",
        "company": "杭州云帆网络",
        "email": fresh_email(),
        "region": "华东",
        "utm_source": "wechat",
        "landing_page": "/demo",
        "website": "",
    }
    fields.update(overrides)
    return fields


async def lead_by_email(conn: asyncpg.Connection, email: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, source, owner_id, attributes FROM leads WHERE email = $1", email.lower())


async def test_a_form_post_captures_a_web_lead_and_thanks_the_visitor(app, settings, leads_db):
    fields = form()
    async with visitor(app) as browser:
        response = await browser.post("/v1/web-to-lead", data=fields)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "感谢" in response.text
    row = await lead_by_email(leads_db, fields["email"])
    assert row is not None and row["source"] == "web_form" and row["owner_id"] in {"rep-1", "rep-2"}
    records = await read_topic(settings, "sales.leads", count=2, match=row["id"].encode())
    events = [parse_and_validate(r.value) for r in records]
    assert [(e.type, e.sequence) for e in events] == [("sales.lead.captured.v1", 1), ("sales.lead.assigned.v1", 2)]
    captured = events[0].data
    assert captured["source"] == "web_form" and captured["captured_by"] is None
    assert captured["attributes"] == {"utm_source": "wechat", "landing_page": "/demo"}


async def test_the_form_redirects_only_to_its_own_site(app, leads_db):
    async with visitor(app) as browser:
        ok = await browser.post(
            "/v1/web-to-lead",
            data=form(redirect="https://www.example.cn/thanks"),
            headers={"Origin": "https://www.example.cn"},
        )
        assert ok.status_code == 303 and ok.headers["location"] == "https://www.example.cn/thanks"
        path = await browser.post("/v1/web-to-lead", data=form(redirect="/thanks"))
        assert path.status_code == 303 and path.headers["location"] == "/thanks"
        elsewhere = await browser.post(
            "/v1/web-to-lead", data=form(redirect="https://evil.example/x"), headers={"Origin": "https://www.example.cn"}
        )
        assert elsewhere.status_code == 200 and "感谢" in elsewhere.text


async def test_a_filled_honeypot_is_rejected_and_creates_nothing(app, leads_db):
    fields = form(website="http://spam.example")
    async with visitor(app) as browser:
        response = await browser.post("/v1/web-to-lead", data=fields)
    assert response.status_code == 422 and "website" in response.json()["detail"]
    assert await lead_by_email(leads_db, fields["email"]) is None


@pytest.mark.parametrize(
    ("change", "field"),
    [({"name": ""}, "contact.name"), ({"phone": "12"}, "contact.phone"), ({"email": "nope"}, "contact.email"),
     ({"grade": "X"}, "grade")],
)
async def test_a_bad_form_field_is_a_422_naming_it(app, change: dict[str, Any], field: str):
    async with visitor(app) as browser:
        response = await browser.post("/v1/web-to-lead", data=form(**change))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in response.json()["detail"]


async def test_posts_past_the_per_ip_limit_get_429_with_retry_after(app, leads_db):
    ip = "203.0.113.77"
    async with visitor(app, ip) as browser:
        answers = [await browser.post("/v1/web-to-lead", data=form()) for _ in range(PER_MINUTE)]
        assert [a.status_code for a in answers] == [200] * PER_MINUTE
        refused_fields = form()
        refused = await browser.post("/v1/web-to-lead", data=refused_fields)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert await lead_by_email(leads_db, refused_fields["email"]) is None
    async with visitor(app, "203.0.113.78") as neighbour:
        assert (await neighbour.post("/v1/web-to-lead", data=form())).status_code == 200


async def test_the_form_needs_no_token_but_a_form_body(app):
    async with visitor(app) as browser:
        response = await browser.post("/v1/web-to-lead", json={"name": "x"})
    assert response.status_code == 415


def test_the_rate_limiter_slides_its_window():
    now = [0.0]
    limiter = RateLimiter(2, 60.0, clock=lambda: now[0])
    assert limiter.retry_after("a") is None and limiter.retry_after("a") is None
    assert limiter.retry_after("a") == 60.0
    assert limiter.retry_after("b") is None
    now[0] = 60.0
    assert limiter.retry_after("a") is None


def metric(text: str, name: str, labels: dict[str, str]) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def test_metrics_count_captures_by_source_and_grade_and_duplicates(app, settings):
    token = issue_token("admin-1", "admin", settings.signing_secret, 600)
    email = fresh_email()
    async with visitor(app) as http:
        before = (await http.get("/metrics")).text
        body = {"contact": {"name": "周杰", "email": email}, "source": "event", "grade": "B"}
        headers = {"Authorization": f"Bearer {token}"}
        assert (await http.post("/v1/leads", json=body, headers=headers)).status_code == 201
        assert (await http.post("/v1/leads", json=body, headers=headers)).status_code == 200
        after = (await http.get("/metrics")).text
    captured = {"source": "event", "grade": "B"}
    assert metric(after, "funnelcast_leads_captured_total", captured) == metric(
        before, "funnelcast_leads_captured_total", captured
    ) + 1
    duplicate = {"source": "event", "matched_on": "email"}
    assert metric(after, "funnelcast_lead_duplicates_total", duplicate) == metric(
        before, "funnelcast_lead_duplicates_total", duplicate
    ) + 1
